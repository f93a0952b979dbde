//! The per-connection task and the run-wide context it reports to.
//!
//! Owns [`Ctx`] (client settings, the run's epoch, connection-level instruments), [`Live`]
//! (one scenario's counters and latency recorder), and [`run_actor`]: one tokio task per
//! connection that logs in, then multiplexes socket input, commands from a dispatcher and the
//! keepalive timer, and re-establishes the session after an unexpected loss. What a stanza or
//! a command means is up to a [`Handler`]; the actor must not interpret stanzas itself.
//!
//! Big, rarely used futures (logins) are boxed so the state of an idle task stays small.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rookery_xml::Element;
use tokio::sync::{mpsc, oneshot};

use crate::client::{self, ClientSettings, Event, Login, LoginError, OpenGuard, ResumeToken, Session, SmSupport};
use crate::metrics::{Counters, Hist, LatencyRecorder};
use crate::report::ScenarioSample;
use crate::scenario::Kind;
use crate::users::Account;

/// Connection-level instruments shared by every scenario.
pub struct ConnMetrics {
    pub connect: LatencyRecorder,
    pub tls: LatencyRecorder,
    pub auth: LatencyRecorder,
    pub bind: LatencyRecorder,
    pub counters: Counters,
    pub open: Arc<AtomicI64>,
    pub peak_open: AtomicI64,
    /// Logins since the sampler last looked.
    pub logins: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
    warned: AtomicU64,
}

pub const CONN_COUNTERS: &[&str] = &["attempts", "established", "failed", "stream_errors", "disconnects"];

impl Default for ConnMetrics {
    fn default() -> Self {
        ConnMetrics {
            connect: LatencyRecorder::new(),
            tls: LatencyRecorder::new(),
            auth: LatencyRecorder::new(),
            bind: LatencyRecorder::new(),
            counters: Counters::new(CONN_COUNTERS),
            open: Arc::new(AtomicI64::new(0)),
            peak_open: AtomicI64::new(0),
            logins: AtomicU64::new(0),
            failures: Mutex::new(BTreeMap::new()),
            warned: AtomicU64::new(0),
        }
    }
}

impl ConnMetrics {
    pub fn failures(&self) -> BTreeMap<String, u64> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn phases(&self) -> BTreeMap<String, Hist> {
        [("connect", &self.connect), ("tls", &self.tls), ("auth", &self.auth), ("bind", &self.bind)]
            .into_iter()
            .map(|(n, r)| (n.to_owned(), Hist(r.total())))
            .collect()
    }
}

/// Everything the tasks of one run share.
pub struct Ctx {
    pub settings: ClientSettings,
    /// t = 0 of the run; every intended time is an offset from it.
    pub epoch: Instant,
    pub conn: ConnMetrics,
    sm: Mutex<Option<SmSupport>>,
    /// Set to end the load early (Ctrl-C): dispatchers and holds stop, the run reports.
    stop: tokio::sync::watch::Sender<bool>,
}

/// Warnings logged per failure step before switching to debug level.
const WARN_LIMIT: u64 = 5;

impl Ctx {
    pub fn new(settings: ClientSettings, epoch: Instant) -> Self {
        Ctx {
            settings,
            epoch,
            conn: ConnMetrics::default(),
            sm: Mutex::new(None),
            stop: tokio::sync::watch::channel(false).0,
        }
    }

    /// Ends the load early.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    pub fn is_stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Completes once [`Ctx::stop`] was called.
    pub async fn stopped(&self) {
        let mut rx = self.stop.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Sleeps for `d`, or less if the load is stopped meanwhile.
    pub async fn sleep(&self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.stopped() => {}
        }
    }

    /// Time since the epoch.
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Stream management as seen by the logins so far.
    pub fn sm_support(&self) -> Option<SmSupport> {
        *self.sm.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Logs in and records the connection phases, failures and the open gauge.
    pub async fn login(
        &self,
        acct: &Account,
        resource: &str,
        resume: Option<&ResumeToken>,
    ) -> Result<Login, LoginError> {
        let c = &self.conn;
        c.counters.inc("attempts");
        match client::login(&self.settings, acct, resource, resume).await {
            Ok(mut l) => {
                c.connect.record(l.timings.connect);
                if let Some(t) = l.timings.tls {
                    c.tls.record(t);
                }
                c.auth.record(l.timings.auth);
                if let Some(t) = l.timings.bind {
                    c.bind.record(t);
                }
                c.counters.inc("established");
                c.logins.fetch_add(1, Ordering::Relaxed);
                l.session.set_guard(OpenGuard::new(c.open.clone()));
                c.peak_open.fetch_max(c.open.load(Ordering::Relaxed), Ordering::Relaxed);
                let mut sm = self.sm.lock().unwrap_or_else(|e| e.into_inner());
                if *sm != Some(SmSupport::Supported) {
                    *sm = Some(l.sm);
                }
                Ok(l)
            }
            Err(e) => {
                c.counters.inc("failed");
                *c.failures.lock().unwrap_or_else(|e| e.into_inner()).entry(e.step().to_owned()).or_default() += 1;
                if c.warned.fetch_add(1, Ordering::Relaxed) < WARN_LIMIT {
                    tracing::warn!(event = "login_failed", user = %acct.jid, step = e.step(), error = %e);
                } else {
                    tracing::debug!(event = "login_failed", user = %acct.jid, step = e.step(), error = %e);
                }
                Err(e)
            }
        }
    }
}

/// One scenario's live instruments.
pub struct Live {
    pub kind: Kind,
    pub counters: Counters,
    pub latency: LatencyRecorder,
    prev: Mutex<(u64, u64, u64)>,
    frozen: std::sync::atomic::AtomicBool,
}

impl Live {
    pub fn new(kind: Kind) -> Self {
        Live {
            kind,
            counters: Counters::new(kind.counters()),
            latency: LatencyRecorder::new(),
            prev: Mutex::new((0, 0, 0)),
            frozen: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Ends the grace period: from now on arrivals are too late to count as delivered.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::Relaxed);
    }

    pub fn frozen(&self) -> bool {
        self.frozen.load(Ordering::Relaxed)
    }

    /// Counters whose sum is "actions started" for the time series.
    fn offered(&self) -> u64 {
        let c = &self.counters;
        match self.kind {
            Kind::Login | Kind::Idle => c.get("attempts"),
            Kind::Chat | Kind::Presence => c.get("sent"),
            Kind::Mam => c.get("queries"),
            Kind::Reconnect => c.get("reconnects"),
            Kind::Muc => 0,
        }
    }

    /// Counters whose sum is "actions completed" for the time series.
    fn completed(&self) -> u64 {
        let c = &self.counters;
        match self.kind {
            Kind::Login | Kind::Idle => c.get("established"),
            Kind::Chat | Kind::Presence => c.get("delivered"),
            Kind::Mam => c.get("answered"),
            Kind::Reconnect => c.get("resumed") + c.get("fresh"),
            Kind::Muc => 0,
        }
    }

    /// What happened since the previous sample.
    pub fn sample(&self) -> ScenarioSample {
        let (o, d, e) = (self.offered(), self.completed(), self.counters.get("errors"));
        let mut p = self.prev.lock().unwrap_or_else(|e| e.into_inner());
        let s = ScenarioSample {
            offered: o.saturating_sub(p.0),
            completed: d.saturating_sub(p.1),
            errors: e.saturating_sub(p.2),
            latency: self.latency.take_interval(),
        };
        *p = (o, d, e);
        s
    }
}

/// What a handler wants after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// Drop the connection abruptly and log in again (resuming when allowed); the value is
    /// the intended time of the reconnect.
    Reconnect(Duration),
    /// End the stream cleanly and stop.
    Close,
}

/// Why a login happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The first login of the task.
    Initial,
    /// A reconnect asked for by a command.
    Reconnect,
    /// After the connection was lost unexpectedly.
    Recovery,
}

/// A finished login attempt, as a handler sees it.
#[derive(Debug)]
pub struct LoginEvent<'a> {
    pub cause: Cause,
    pub intended: Duration,
    pub now: Duration,
    /// `Ok(resumed)` or the error.
    pub outcome: Result<bool, &'a LoginError>,
}

/// The meaning of a connection's traffic for one scenario kind.
pub trait Handler: Send + 'static {
    type Cmd: Send + 'static;

    fn on_login(&mut self, _ev: &LoginEvent<'_>, _session: Option<&mut Session>) {}
    fn on_stanza(&mut self, el: &Element, now: Duration, session: &mut Session);
    fn on_cmd(&mut self, cmd: Self::Cmd, now: Duration, session: &mut Session) -> Action;
    /// A command that could not be carried out (no connection, or the task is ending).
    fn on_unsent(&mut self, _cmd: Self::Cmd) {}
    /// The connection was lost: `Some(condition)` for a stream error.
    fn on_lost(&mut self, _stream_error: Option<&str>) {}
    /// The task is ending.
    fn on_end(&mut self) {}
}

/// How to run one connection task.
pub struct ActorSpec<H: Handler> {
    pub account: Account,
    pub resource: String,
    pub handler: H,
    pub rx: mpsc::Receiver<H::Cmd>,
    /// Intended time of the first login.
    pub intended: Duration,
    /// Told whether the first login succeeded.
    pub ready: Option<oneshot::Sender<bool>>,
    /// Resume with XEP-0198 on reconnects and recoveries when the server allows it.
    pub resume: bool,
}

/// Longest wait for the server's `</stream:stream>` when closing.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

enum Step<C> {
    Readable(std::io::Result<()>),
    Cmd(Option<C>),
    Keepalive,
}

/// Runs one connection until its command channel closes.
pub async fn run_actor<H: Handler>(ctx: Arc<Ctx>, spec: ActorSpec<H>) {
    let ActorSpec { account, resource, mut handler, mut rx, intended, ready, resume } = spec;
    let first = Box::pin(ctx.login(&account, &resource, None)).await;
    let mut session = match first {
        Ok(l) => {
            let mut s = l.session;
            let ev = LoginEvent { cause: Cause::Initial, intended, now: ctx.now(), outcome: Ok(l.resumed) };
            handler.on_login(&ev, Some(&mut s));
            Some(s)
        }
        Err(e) => {
            let ev = LoginEvent { cause: Cause::Initial, intended, now: ctx.now(), outcome: Err(&e) };
            handler.on_login(&ev, None);
            None
        }
    };
    if let Some(r) = ready {
        let _ = r.send(session.is_some());
    }
    if session.is_none() {
        rx.close();
        while let Some(c) = rx.recv().await {
            handler.on_unsent(c);
        }
        handler.on_end();
        return;
    }

    let keepalive = ctx.settings.keepalive;
    let mut token: Option<ResumeToken> = None;
    let mut backoff = Duration::from_secs(1);
    let mut events = Vec::new();
    let mut last_write = Instant::now();
    // After a login, elements may already sit in the framer or the TLS layer (read along
    // with the last negotiation reply); handle them before waiting for the socket.
    let mut check_buffered = true;
    loop {
        let Some(sess) = session.as_mut() else {
            // Lost: wait, then log in again; commands meanwhile cannot be carried out.
            let wake = tokio::time::sleep(backoff);
            tokio::pin!(wake);
            loop {
                tokio::select! {
                    _ = &mut wake => break,
                    c = rx.recv() => match c {
                        Some(c) => handler.on_unsent(c),
                        None => { handler.on_end(); return; }
                    }
                }
            }
            let t = ctx.now();
            let r = Box::pin(ctx.login(&account, &resource, token.as_ref().filter(|_| resume))).await;
            let now = ctx.now();
            match r {
                Ok(l) => {
                    let mut s = l.session;
                    handler.on_login(
                        &LoginEvent { cause: Cause::Recovery, intended: t, now, outcome: Ok(l.resumed) },
                        Some(&mut s),
                    );
                    session = Some(s);
                    backoff = Duration::from_secs(1);
                    last_write = Instant::now();
                    check_buffered = true;
                }
                Err(e) => {
                    handler.on_login(&LoginEvent { cause: Cause::Recovery, intended: t, now, outcome: Err(&e) }, None);
                    token = None;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
            continue;
        };

        let ka_at = tokio::time::Instant::from_std(last_write + keepalive);
        // Unbiased: a connection flooded with input must still take its commands.
        let step = tokio::select! {
            _ = std::future::ready(()), if check_buffered => Step::Readable(Ok(())),
            r = sess.readable() => Step::Readable(r),
            c = rx.recv() => Step::Cmd(c),
            _ = tokio::time::sleep_until(ka_at), if !keepalive.is_zero() => Step::Keepalive,
        };
        let mut lost: Option<Option<String>> = None;
        match step {
            Step::Readable(Err(_)) => lost = Some(None),
            Step::Readable(Ok(())) => {
                check_buffered = false;
                sess.drain(&mut events);
                let now = ctx.now();
                for ev in events.drain(..) {
                    match ev {
                        Event::Stanza(el) => {
                            client::answer_iq(&el, sess, ctx.settings.ack_every);
                            handler.on_stanza(&el, now, sess);
                        }
                        Event::StreamError(cond) => lost = Some(Some(cond)),
                        Event::Closed | Event::Failed(_) => lost = Some(lost.take().flatten()),
                    }
                }
            }
            Step::Cmd(None) => {
                if let Some(s) = session.take() {
                    Box::pin(s.close(CLOSE_WAIT)).await;
                }
                handler.on_end();
                return;
            }
            Step::Cmd(Some(c)) => match handler.on_cmd(c, ctx.now(), sess) {
                Action::Continue => {}
                Action::Close => {
                    if let Some(s) = session.take() {
                        Box::pin(s.close(CLOSE_WAIT)).await;
                    }
                    rx.close();
                    while let Some(c) = rx.recv().await {
                        handler.on_unsent(c);
                    }
                    handler.on_end();
                    return;
                }
                Action::Reconnect(intended) => {
                    let _ = sess.flush().await;
                    let tok = sess.resume_token().filter(|_| resume);
                    // Abrupt: no </stream:stream>, as when a client loses its network.
                    drop(session.take());
                    let r = Box::pin(ctx.login(&account, &resource, tok.as_ref())).await;
                    let now = ctx.now();
                    match r {
                        Ok(l) => {
                            let mut s = l.session;
                            let ev = LoginEvent { cause: Cause::Reconnect, intended, now, outcome: Ok(l.resumed) };
                            handler.on_login(&ev, Some(&mut s));
                            session = Some(s);
                            last_write = Instant::now();
                            check_buffered = true;
                        }
                        Err(e) => {
                            let ev = LoginEvent { cause: Cause::Reconnect, intended, now, outcome: Err(&e) };
                            handler.on_login(&ev, None);
                            token = None;
                        }
                    }
                    continue;
                }
            },
            Step::Keepalive => sess.raw(" "),
        }
        if lost.is_none() && sess.has_output() {
            if sess.flush().await.is_err() {
                lost = Some(None);
            } else {
                last_write = Instant::now();
            }
        }
        if let Some(cond) = lost {
            token = sess.resume_token();
            match &cond {
                Some(c) => {
                    ctx.conn.counters.inc("stream_errors");
                    tracing::debug!(event = "stream_error", user = %account.jid, condition = %c);
                }
                None => {
                    ctx.conn.counters.inc("disconnects");
                    tracing::debug!(event = "connection_lost", user = %account.jid);
                }
            }
            handler.on_lost(cond.as_deref());
            session = None;
        }
    }
}

/// A handler that only keeps the connection alive (idle connections, held logins).
pub struct KeepAlive {
    pub live: Arc<Live>,
    /// Counts its open sessions (for `open_at_end`).
    pub open: Arc<AtomicI64>,
    /// Record the first login's latency (from its intended time) and success counters.
    pub count_logins: bool,
    up: bool,
}

impl KeepAlive {
    pub fn new(live: Arc<Live>, open: Arc<AtomicI64>, count_logins: bool) -> Self {
        KeepAlive { live, open, count_logins, up: false }
    }
}

impl Handler for KeepAlive {
    type Cmd = ();

    fn on_login(&mut self, ev: &LoginEvent<'_>, _s: Option<&mut Session>) {
        if ev.outcome.is_ok() {
            self.up = true;
            self.open.fetch_add(1, Ordering::Relaxed);
        }
        if self.count_logins && ev.cause == Cause::Initial {
            match ev.outcome {
                Ok(_) => {
                    self.live.counters.inc("established");
                    self.live.latency.record(crate::metrics::charged_latency(ev.intended, ev.now));
                }
                Err(_) => self.live.counters.inc("failed"),
            }
        }
    }

    fn on_stanza(&mut self, el: &Element, _now: Duration, _s: &mut Session) {
        if el.get_attr("type") == Some("error") {
            self.live.counters.inc("errors");
        }
    }

    fn on_cmd(&mut self, _cmd: (), _now: Duration, _s: &mut Session) -> Action {
        Action::Continue
    }

    fn on_lost(&mut self, stream_error: Option<&str>) {
        self.live.counters.inc(if stream_error.is_some() { "stream_errors" } else { "disconnects" });
        if self.up {
            self.up = false;
            self.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn on_end(&mut self) {
        if self.up {
            self.up = false;
            self.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
