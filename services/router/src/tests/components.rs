//! The component seam: a module serving a domain of its own gets every stanza for it
//! (messages, IQs, directed presence and the unavailable that ends it), answers through
//! `ServerApi::route_from_component`, and is listed in the server's disco#items.

use super::*;
use rookery_core::hooks::{MESSAGE_OUT, MessageOut};
use rookery_core::{
    Component, Flow, Handler, HookResult, IqHandler, IqRequest, IqResult, Module, ModuleInfo, Placement, Registrar,
};

/// A stand-in service at `echo.example.com`: echoes messages back from the addressed
/// JID, answers IQs with an empty result, and records the presence it gets.
#[derive(Default)]
pub(super) struct Echo {
    pub presence: Mutex<Vec<(String, String, Option<String>)>>,
}

impl Module for Echo {
    fn info(&self) -> ModuleInfo {
        ModuleInfo { name: "echo", specs: &[], depends: &["disco"] }
    }
    fn register(self: Arc<Self>, r: &mut Registrar) {
        r.component("echo.example.com".into(), Placement::ByTo, Some("Echo service"), self);
    }
}

#[async_trait]
impl Component for Echo {
    async fn handle(&self, ctx: &Ctx, env: Envelope) {
        match env.kind {
            Kind::Message => {
                let xml = format!(
                    "<message from='{}' to='{}' type='chat'><body>echo</body></message>",
                    env.to.as_str(),
                    env.from.as_str()
                );
                let el = rookery_xml::RawElement::from_bytes(Bytes::from(xml), rookery_stanza::ns::CLIENT).unwrap();
                let reply = Envelope { kind: Kind::Message, from: env.to.clone(), to: env.from.clone(), el };
                ctx.server.route_from_component(reply).await;
            }
            Kind::Iq => {
                let bytes = rookery_stanza::iq_result(Some(&env.to), &env.from, env.id().unwrap_or_default(), None);
                let el = rookery_xml::RawElement::from_bytes(bytes, rookery_stanza::ns::CLIENT).unwrap();
                ctx.server
                    .route_from_component(Envelope { kind: Kind::Iq, from: env.to.clone(), to: env.from.clone(), el })
                    .await;
            }
            Kind::Presence => self.presence.lock().unwrap().push((
                env.from.to_string(),
                env.to.to_string(),
                env.stanza_type().map(str::to_owned),
            )),
        }
    }
}

#[tokio::test]
async fn messages_and_iqs_to_a_component_reach_its_module_and_its_answers_reach_the_user() {
    let w = world(&["alice@example.com"]).await;
    w.online("alice@example.com/a", 1, 0).await;
    w.send("alice@example.com/a", "<message to='room@echo.example.com' type='chat' id='m1'><body>hi</body></message>")
        .await;
    let got = w.cap.take(1);
    assert!(
        got.iter().any(|s| s.contains("from=\"room@echo.example.com\"") && s.contains("<body>echo</body>")),
        "{got:?}"
    );
    w.send("alice@example.com/a", "<iq to='echo.example.com' type='get' id='q1'><query xmlns='urn:x:test'/></iq>")
        .await;
    let got = w.cap.take(1);
    assert!(got.iter().any(|s| s.contains("id=\"q1\"") && s.contains("type=\"result\"")), "{got:?}");
    // Nothing answered remote-server-not-found: the component took both.
    assert!(!got.iter().any(|s| s.contains("remote-server-not-found")));
}

#[tokio::test]
async fn directed_presence_to_a_component_is_remembered_and_ended_with_the_session() {
    let w = world(&["alice@example.com"]).await;
    w.online("alice@example.com/a", 1, 0).await;
    w.send("alice@example.com/a", "<presence to='room@echo.example.com/alice'/>").await;
    let entry = w.router.registry().get(&FullJid::parse("alice@example.com/a").unwrap()).await.unwrap();
    assert_eq!(entry.directed, [Jid::parse("room@echo.example.com/alice").unwrap()]);
    w.router.unbind(&FullJid::parse("alice@example.com/a").unwrap(), Location { edge: 0, conn: 1 }).await;
    let seen = w.echo.presence.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            ("alice@example.com/a".to_owned(), "room@echo.example.com/alice".to_owned(), None),
            (
                "alice@example.com/a".to_owned(),
                "room@echo.example.com/alice".to_owned(),
                Some("unavailable".to_owned())
            ),
        ],
        "joined, then left when the session ended (RFC 6121 §4.6.3)"
    );
}

#[tokio::test]
async fn the_service_is_listed_in_the_servers_disco_items() {
    let w = world(&["alice@example.com"]).await;
    w.online("alice@example.com/a", 1, 0).await;
    w.send(
        "alice@example.com/a",
        "<iq to='example.com' type='get' id='i1'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
    )
    .await;
    let got = w.cap.take(1);
    assert!(
        got.iter().any(|s| s.contains("jid=\"echo.example.com\"") && s.contains("name=\"Echo service\"")),
        "{got:?}"
    );
    let table = w.router.placements();
    let el = parse_one("<message to='room@echo.example.com'/>");
    let env = Envelope {
        kind: Kind::Message,
        from: Jid::parse("alice@example.com/a").unwrap(),
        to: Jid::parse("room@echo.example.com").unwrap(),
        el,
    };
    assert_eq!(table.key(&env), "room@echo.example.com", "the room's JID places it in a cluster");
}

/// A module whose IQ handler and `MESSAGE_OUT` handler panic on request.
pub(super) struct Panicky;

impl Module for Panicky {
    fn info(&self) -> ModuleInfo {
        ModuleInfo { name: "panicky", specs: &[], depends: &[] }
    }
    fn register(self: Arc<Self>, r: &mut Registrar) {
        r.iq("query", "urn:x:panic", rookery_core::IqType::Get, &[rookery_core::Target::Host], self.clone());
        r.hook(MESSAGE_OUT, rookery_core::prio::DEFAULT, self);
    }
}

#[async_trait]
impl IqHandler for Panicky {
    async fn handle(&self, _ctx: &Ctx, _req: IqRequest) -> IqResult {
        panic!("the IQ handler broke")
    }
}

#[async_trait]
impl Handler<MessageOut> for Panicky {
    async fn handle(&self, _ctx: &Ctx, ev: &mut MessageOut) -> HookResult {
        if ev.msg.env.id() == Some("boom") {
            panic!("the hook broke");
        }
        Ok(Flow::Continue)
    }
}

#[tokio::test]
async fn a_panicking_handler_is_contained_counted_and_answered() {
    let w = world(&["alice@example.com", "bob@example.com"]).await;
    w.online("alice@example.com/a", 1, 0).await;
    w.online("bob@example.com/b", 2, 0).await;
    w.send("alice@example.com/a", "<iq to='example.com' type='get' id='p1'><query xmlns='urn:x:panic'/></iq>").await;
    let got = w.cap.take(1);
    assert!(got.iter().any(|s| s.contains("id=\"p1\"") && s.contains("internal-server-error")), "{got:?}");
    // The hook panics; the pipeline goes on and the message is delivered.
    w.send("alice@example.com/a", "<message to='bob@example.com' type='chat' id='boom'><body>x</body></message>").await;
    let got = w.cap.take(2);
    assert!(got.iter().any(|s| s.contains("id=\"boom\"")), "{got:?}");
    assert_eq!(w.router.hook_failures(), (0, 2));
    // The same session goes on working.
    w.send("alice@example.com/a", "<message to='bob@example.com' type='chat' id='after'><body>y</body></message>")
        .await;
    assert!(w.cap.take(2).iter().any(|s| s.contains("id=\"after\"")));
}
