//! XEP-0352 client state indication against the real single-node server: what an inactive
//! client is spared, what flushes it, and in which order things then arrive.
#![allow(clippy::unwrap_used)]

use rookery_tests::TestServer;
use rookery_tests::raw::{Incoming, RawClient};
use rookery_xml::Element;
use std::future::Future;
use std::time::Duration;

const CSI: &str = "urn:xmpp:csi:0";

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f).await.expect("test took longer than 20 s")
}

/// Everything that arrives within `wait`, as short labels.
async fn arrivals(c: &mut RawClient, wait: Duration) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(Incoming::Element(e)) = c.recv_timeout(wait).await {
        got.push(label(&e));
    }
    got
}

fn label(e: &Element) -> String {
    let from = e.get_attr("from").unwrap_or_default().split('@').next().unwrap_or_default().to_owned();
    match e.name.as_str() {
        "presence" => {
            let show = e.get_child("show", "jabber:client").map(|s| s.text_content()).unwrap_or_default();
            format!("presence {from} {show}").trim_end().to_owned()
        }
        "message" => match e.get_child("body", "jabber:client") {
            Some(b) => format!("body {from} {}", b.text_content()),
            None => {
                let what = e.elements().next().map(|c| c.name.clone()).unwrap_or_default();
                format!("{what} {from}")
            }
        },
        other => other.to_owned(),
    }
}

#[tokio::test]
async fn an_inactive_client_gets_only_what_matters_and_the_rest_coalesced_later() {
    within(async {
        let s = TestServer::start().await;
        for u in ["alice", "bob", "carol"] {
            s.add_user(u, "secret-pw").await;
        }
        let mut alice = RawClient::connect(s.c2s).await;
        alice.open().await;
        alice.starttls().await;
        alice.open().await;
        assert_eq!(alice.auth_plain("alice", "secret-pw").await.name, "success");
        let features = alice.open().await;
        assert!(features.get_child("csi", CSI).is_some(), "offered: {features:?}");
        alice.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>phone</resource></bind></iq>").await;
        alice.recv_until(|e| e.get_attr("id") == Some("b")).await;
        let mut bob = RawClient::login(s.c2s, "bob", "secret-pw", "desk").await;
        let mut carol = RawClient::login(s.c2s, "carol", "secret-pw", "desk").await;

        alice.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
        // A ping answered proves the nonza was read before what follows is routed.
        alice.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
        alice.recv_until(|e| e.get_attr("id") == Some("p")).await;

        let to = "alice@localhost/phone";
        bob.send(&format!("<presence to='{to}'><show>away</show></presence>")).await;
        carol.send(&format!("<presence to='{to}'/>")).await;
        bob.send(&format!("<presence to='{to}'><show>dnd</show></presence>")).await;
        for state in ["composing", "paused", "composing"] {
            bob.send(&format!(
                "<message type='chat' to='{to}'><{state} xmlns='http://jabber.org/protocol/chatstates'/></message>"
            ))
            .await;
        }
        carol.send(&format!("<message to='{to}'><received xmlns='urn:xmpp:receipts' id='r1'/></message>")).await;
        // Nothing of this wakes alice.
        assert_eq!(arrivals(&mut alice, Duration::from_millis(600)).await, Vec::<String>::new());

        // A message with a body flushes the held ones first, coalesced, then itself. (Bob's
        // and carol's stanzas travel on different connections: their relative order is not
        // fixed, each one's own order is.)
        bob.send(&format!("<message type='chat' to='{to}'><body>wake up</body></message>")).await;
        let mut got = arrivals(&mut alice, Duration::from_millis(600)).await;
        assert_eq!(got.pop().as_deref(), Some("body bob wake up"), "{got:?}");
        let bobs: Vec<&String> = got.iter().filter(|l| l.contains("bob")).collect();
        assert_eq!(bobs, ["presence bob dnd", "composing bob"], "bob's first presence and chat states were replaced");
        got.sort();
        assert_eq!(
            got,
            ["composing bob", "presence bob dnd", "presence carol", "received carol"],
            "one of each, nothing more"
        );

        // Still inactive: held again; <active/> flushes.
        carol.send(&format!("<presence to='{to}'><show>xa</show></presence>")).await;
        assert_eq!(arrivals(&mut alice, Duration::from_millis(400)).await, Vec::<String>::new());
        alice.send("<active xmlns='urn:xmpp:csi:0'/>").await;
        assert_eq!(arrivals(&mut alice, Duration::from_millis(400)).await, ["presence carol xa"]);
        // Active: straight through.
        bob.send(&format!("<presence to='{to}'/>")).await;
        assert_eq!(arrivals(&mut alice, Duration::from_millis(400)).await, ["presence bob"]);
    })
    .await;
}

/// Switched off: not offered, and the nonzas change nothing (nor end the stream).
#[tokio::test]
async fn switched_off_nothing_is_held() {
    within(async {
        let s = TestServer::start_with(|c| c.csi.enabled = false).await;
        s.add_user("alice", "secret-pw").await;
        s.add_user("bob", "secret-pw").await;
        let mut alice = RawClient::login(s.c2s, "alice", "secret-pw", "phone").await;
        let mut bob = RawClient::login(s.c2s, "bob", "secret-pw", "desk").await;
        alice.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
        alice.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
        alice.recv_until(|e| e.get_attr("id") == Some("p")).await;
        bob.send("<presence to='alice@localhost/phone'/>").await;
        assert_eq!(arrivals(&mut alice, Duration::from_millis(400)).await, ["presence bob"]);
    })
    .await;
}
