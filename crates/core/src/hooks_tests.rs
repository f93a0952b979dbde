#![allow(clippy::unwrap_used)]
use super::*;
use crate::module::{Features, Module, ModuleInfo, Registrar, ServerApi};
use rookery_stanza::Envelope;
use std::sync::Mutex;

/// An event that records which handlers saw it.
type Trace = RemoteChange;

struct Step {
    name: &'static str,
    outcome: &'static str,
    seen: Arc<Mutex<Vec<&'static str>>>,
}

#[async_trait]
impl Handler<Trace> for Step {
    async fn handle(&self, _ctx: &Ctx, ev: &mut Trace) -> HookResult {
        assert!(!self.outcome.starts_with("quick-"), "handle ran although quick answered");
        self.seen.lock().unwrap().push(self.name);
        ev.topic.push_str(self.name);
        match self.outcome {
            "stop" => Ok(Flow::Stop),
            "error" => Err(HookError("disk on fire".into())),
            "panic" => panic!("handler {} panicked", self.name),
            _ => Ok(Flow::Continue),
        }
    }

    /// Outcomes `quick-*` answer on the fast path, the others wait for `handle`.
    fn quick(&self, _ctx: &Ctx, ev: &mut Trace) -> Option<HookResult> {
        let outcome = self.outcome.strip_prefix("quick-")?;
        self.seen.lock().unwrap().push(self.name);
        ev.topic.push_str(self.name);
        match outcome {
            "stop" => Some(Ok(Flow::Stop)),
            "panic" => panic!("quick path of {} panicked", self.name),
            _ => Some(Ok(Flow::Continue)),
        }
    }
}

struct NoServer;

#[async_trait]
impl ServerApi for NoServer {
    fn domains(&self) -> &[String] {
        &[]
    }
    fn is_local_domain(&self, _: &str) -> bool {
        false
    }
    async fn send_to_resource(&self, _: &FullJid, _: Bytes) -> bool {
        false
    }
    fn send_to_session(&self, _: &SessionEntry, _: Bytes) -> bool {
        false
    }
    fn queue_capacity(&self, _: &SessionEntry) -> usize {
        0
    }
    async fn resources(&self, _: &BareJid, _: Option<&'static str>) -> Vec<FullJid> {
        Vec::new()
    }
    async fn sessions(&self, _: &BareJid) -> Vec<SessionEntry> {
        Vec::new()
    }
    async fn set_session_ext(&self, _: &FullJid, _: &'static str, _: Option<Bytes>) -> bool {
        false
    }
    async fn is_online(&self, _: &BareJid) -> bool {
        false
    }
    fn uptime_secs(&self) -> u64 {
        0
    }
    fn registration_allowed(&self) -> bool {
        false
    }
    fn min_password_len(&self) -> usize {
        0
    }
    fn publish_change(&self, _: &'static str, _: &BareJid) {}
    async fn presence_to(&self, _: &BareJid, _: &Jid, _: bool) {}
    async fn account_deleted(&self, _: &BareJid) {}
    async fn route_from_component(&self, _: Envelope) {}
}

fn ctx() -> Ctx {
    Ctx {
        stores: Arc::new(rookery_storage::memory_stores()),
        server: Arc::new(NoServer),
        features: Arc::new(Features::default()),
    }
}

struct Steps(Vec<(&'static str, i32, &'static str)>, Arc<Mutex<Vec<&'static str>>>);

impl Module for Steps {
    fn info(&self) -> ModuleInfo {
        ModuleInfo { name: "steps", specs: &[], depends: &[] }
    }
    fn register(self: Arc<Self>, r: &mut Registrar) {
        for (name, prio, outcome) in &self.0 {
            let h = Arc::new(Step { name, outcome, seen: self.1.clone() });
            r.hook(REMOTE_CHANGE, Priority(*prio), h);
        }
    }
}

async fn run(steps: Vec<(&'static str, i32, &'static str)>) -> (Flow, Vec<&'static str>, (u64, u64), String) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut r = Registrar::new();
    r.add(Arc::new(Steps(steps, seen.clone())));
    let built = r.finish().unwrap();
    let mut ev = Trace { topic: String::new(), user: None };
    let flow = built.hooks.run(REMOTE_CHANGE, &ctx(), &mut ev).await;
    let seen = seen.lock().unwrap().clone();
    (flow, seen, built.hooks.failures(), ev.topic)
}

#[tokio::test]
async fn handlers_run_in_priority_order_not_registration_order() {
    let (flow, seen, failures, topic) = run(vec![("c", 300, ""), ("a", 100, ""), ("b", 200, "")]).await;
    assert_eq!(flow, Flow::Continue);
    assert_eq!(seen, ["a", "b", "c"]);
    assert_eq!(topic, "abc", "each handler sees the changes of the ones before");
    assert_eq!(failures, (0, 0));
}

#[tokio::test]
async fn equal_priorities_keep_registration_order() {
    let (_, seen, _, _) = run(vec![("x", 5, ""), ("y", 5, ""), ("w", 1, "")]).await;
    assert_eq!(seen, ["w", "x", "y"]);
}

#[tokio::test]
async fn stop_ends_the_chain() {
    let (flow, seen, _, _) = run(vec![("a", 1, ""), ("b", 2, "stop"), ("c", 3, "")]).await;
    assert_eq!(flow, Flow::Stop);
    assert_eq!(seen, ["a", "b"]);
}

#[tokio::test]
async fn an_error_or_a_panic_is_counted_and_the_chain_goes_on() {
    let (flow, seen, failures, _) = run(vec![("a", 1, "error"), ("b", 2, "panic"), ("c", 3, "")]).await;
    assert_eq!(flow, Flow::Continue, "a failing handler does not stop the pipeline");
    assert_eq!(seen, ["a", "b", "c"]);
    assert_eq!(failures, (1, 1));
}

#[tokio::test]
async fn a_quick_answer_takes_the_place_of_handle() {
    // `handle` of a quick step panics if it runs: the failure count would show it.
    let (flow, seen, failures, topic) =
        run(vec![("a", 1, "quick-continue"), ("b", 2, ""), ("c", 3, "quick-continue")]).await;
    assert_eq!((flow, failures), (Flow::Continue, (0, 0)));
    assert_eq!(seen, ["a", "b", "c"]);
    assert_eq!(topic, "abc");
    let (flow, seen, failures, _) = run(vec![("a", 1, "quick-stop"), ("b", 2, "")]).await;
    assert_eq!((flow, seen, failures), (Flow::Stop, vec!["a"], (0, 0)));
}

#[tokio::test]
async fn a_panic_on_the_quick_path_is_counted_and_the_chain_goes_on() {
    let (flow, seen, failures, _) = run(vec![("a", 1, "quick-panic"), ("b", 2, "")]).await;
    assert_eq!(flow, Flow::Continue);
    assert_eq!(seen, ["a", "b"]);
    assert_eq!(failures, (0, 1));
}

#[tokio::test]
async fn table_names_each_handler_with_its_module() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut r = Registrar::new();
    r.add(Arc::new(Steps(vec![("b", 2, ""), ("a", 1, "")], seen)));
    let built = r.finish().unwrap();
    assert!(built.hooks.is_empty(MESSAGE_OUT));
    assert!(!built.hooks.is_empty(REMOTE_CHANGE));
    assert_eq!(built.hooks.table(), [("remote_change", "steps", 1), ("remote_change", "steps", 2)]);
}

struct Needs;
impl Module for Needs {
    fn info(&self) -> ModuleInfo {
        ModuleInfo { name: "needs", specs: &[], depends: &["steps"] }
    }
    fn register(self: Arc<Self>, _: &mut Registrar) {}
}

#[test]
fn a_missing_dependency_is_refused_at_start_up() {
    let mut r = Registrar::new();
    r.add(Arc::new(Needs));
    let err = r.finish().err().unwrap();
    assert_eq!(err.to_string(), "module `needs` needs module `steps`, which is not enabled");
    let mut r = Registrar::new();
    r.add(Arc::new(Needs));
    r.add(Arc::new(Steps(vec![], Arc::default())));
    assert!(r.finish().is_ok());
}
