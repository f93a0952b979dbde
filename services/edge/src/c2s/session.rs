//! The bound session of a client connection: the reader stamps `from` (RFC 6120 §8.1.2.1)
//! and routes; a writer task drains the outbound queues into the socket. With XEP-0198
//! stream management:
//!
//! - §3 `<enable/>` after binding, answered `<enabled/>` (with an id and `resume` when
//!   the client asked for resumption and the server allows it); a second one `<failed/>`;
//! - §4 acks: the reader counts handled stanzas and answers `<r/>`; the writer counts what
//!   it writes from the moment `<enabled/>` went out, keeps it until the client's `<a/>`,
//!   and asks for acks (`<r/>`) after writing while none is outstanding; an `h` above what
//!   was sent is a `handled-count-too-high` stream error (§6);
//! - §5 resumption: when the transport goes away (or stays silent past the idle timeout)
//!   a resumable session is *detached*, not ended: it stays bound, so peers see no change
//!   of presence, and what the router delivers queues for it, until the client resumes
//!   (`Takeover`, from the connection it resumes on) or the resumption time passes. A
//!   resume of a session that is still live closes the old stream with `conflict`.
//! - a session that ends for good hands every stanza not acknowledged, and everything
//!   still queued, back to the router (`Router::undelivered`: other resources or offline
//!   storage, with a XEP-0203 delay), so nothing acknowledged to a sender is dropped.
//!
//! Owns: the session loop, the writer, the detached wait. Must not touch: negotiation
//! (`negotiate.rs`), the SM arithmetic (`sm.rs`), routing.

use super::{CLOSE_TAG, Checked, Conn, End, RateLimit, WRITE_TIMEOUT, check_stanza, stream_err};
use crate::csi::{self, Held, Urgency};
use crate::resume::new_id;
use crate::sm::{self, SmState};
use crate::transport::Transport;
use bytes::{Bytes, BytesMut};
use rookery_core::hub::ControlTx;
use rookery_core::{Location, Outbound};
use rookery_jid::FullJid;
use rookery_stanza::{StreamCondition, StreamError, ns};
use rookery_xml::{Frame, RawElement};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

/// A resuming connection's request to the holder of a session: hand it over.
pub struct Takeover {
    pub(crate) reply: oneshot::Sender<Box<Bound>>,
}

/// A bound session apart from its transport; XEP-0198 §5: what moves to the connection
/// that resumes it.
pub struct Bound {
    pub(crate) jid: FullJid,
    pub(crate) loc: Location,
    pub(crate) data_tx: mpsc::Sender<Outbound>,
    pub(crate) data_rx: Option<mpsc::Receiver<Outbound>>,
    pub(crate) ctl_tx: ControlTx,
    pub(crate) ctl_rx: Option<oneshot::Receiver<Outbound>>,
    /// Stream management, once the client enabled it.
    pub(crate) sm: Option<Managed>,
    /// XEP-0352 state (kept by the writer while there is one).
    pub(crate) csi: Csi,
}

pub(crate) struct Managed {
    pub(crate) id: String,
    /// Outbound counters and the unacknowledged queue, shared with the writer.
    pub(crate) state: Arc<Mutex<SmState>>,
    /// How long a detached session waits for its client; `None`: not resumable.
    pub(crate) resume: Option<Duration>,
    /// Where takeover requests arrive (resumable sessions only).
    pub(crate) takeover: Option<mpsc::Receiver<Takeover>>,
}

impl Managed {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, SmState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Non-stanza elements for the writer (they are not counted, §4).
enum Nonza {
    Raw(Vec<u8>),
    /// `<enabled/>`: counting starts after these bytes.
    Enable(Vec<u8>, Arc<Mutex<SmState>>),
    /// XEP-0352: the client is inactive (true) or active again (false).
    Csi(bool),
}

/// What woke the reader.
enum Woke {
    /// Bytes read (0: end of stream or a read error), or the idle timeout.
    Read(Result<usize, tokio::time::error::Elapsed>),
    WriterGone,
    Shutdown,
    Takeover(Option<Takeover>),
}

/// Why the reader stopped.
enum Reason {
    End(End),
    Takeover(Takeover),
}

/// What the writer hands back when it stops.
struct WriterEnd {
    data: Option<mpsc::Receiver<Outbound>>,
    ctl: Option<oneshot::Receiver<Outbound>>,
    /// Stanzas taken from the queue and not written (without stream management; with it
    /// they are in the unacknowledged queue).
    unwritten: Vec<Bytes>,
    /// The writer wrote a stream close (a control message): the session is over.
    closed: bool,
    /// What is held for an inactive client (it moves with the session).
    csi: Csi,
}

/// Runs a bound (or just resumed) session on `conn`'s transport; `resend` goes out first
/// (the stanzas a resumed client did not acknowledge).
pub(super) async fn run(
    mut conn: Box<Conn>,
    mut b: Box<Bound>,
    mut shutdown: watch::Receiver<bool>,
    resend: Vec<Bytes>,
) {
    let edge = conn.edge.clone();
    let Some(transport) = conn.transport.take() else {
        return after_transport(&edge, b, Reason::End(End::Io), None, shutdown).await;
    };
    let (mut rd, wr) = tokio::io::split(transport);
    let (nonza_tx, nonza_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = oneshot::channel::<Vec<u8>>();
    let (done_tx, mut done_rx) = oneshot::channel::<()>();
    let lanes = (b.data_rx.take(), b.ctl_rx.take());
    let sm = b.sm.as_ref().map(|m| m.state.clone());
    let csi = (std::mem::take(&mut b.csi), edge.cfg.csi_max_held);
    let writer = tokio::spawn(writer(wr, lanes, nonza_rx, stop_rx, sm, csi, resend, done_tx));
    let reason = conn.read_loop(&mut rd, &mut b, &nonza_tx, &mut done_rx, &mut shutdown).await;
    drop(nonza_tx);
    let stop = Stop { tx: stop_tx, writer };
    after_transport(&edge, b, reason, Some(stop), shutdown).await;
}

/// The writer of a session whose reader stopped.
struct Stop {
    tx: oneshot::Sender<Vec<u8>>,
    writer: tokio::task::JoinHandle<WriterEnd>,
}

impl Stop {
    /// Stops the writer after writing `last` (nothing: just stop) and takes its lanes.
    async fn now(self, last: Vec<u8>) -> WriterEnd {
        let _ = self.tx.send(last);
        wait_writer(self.writer).await
    }

    /// Waits for the writer to end on its own (after a close it was sent). The stop lane
    /// stays open meanwhile: closing it would stop the writer before the close is written.
    async fn join(self) -> WriterEnd {
        let Stop { tx, writer } = self;
        let w = wait_writer(writer).await;
        drop(tx);
        w
    }
}

async fn wait_writer(writer: tokio::task::JoinHandle<WriterEnd>) -> WriterEnd {
    match tokio::time::timeout(WRITE_TIMEOUT + Duration::from_secs(5), writer).await {
        Ok(Ok(w)) => w,
        _ => WriterEnd { data: None, ctl: None, unwritten: Vec::new(), closed: true, csi: Csi::default() },
    }
}

/// The transport is gone (or being given up): detach, hand over, or end the session.
async fn after_transport(
    edge: &Arc<crate::Edge>,
    mut b: Box<Bound>,
    reason: Reason,
    stop: Option<Stop>,
    shutdown: watch::Receiver<bool>,
) {
    let resumable = b.sm.as_ref().is_some_and(|m| m.resume.is_some());
    match reason {
        Reason::Takeover(t) => {
            // §5: the old stream, still open, is closed with `conflict`.
            if let Some(stop) = stop {
                let bye = [&StreamError::new(StreamCondition::Conflict).to_bytes()[..], CLOSE_TAG].concat();
                let w = stop.now(bye).await;
                b.data_rx = w.data;
                b.ctl_rx = w.ctl;
                b.csi = w.csi;
            }
            tracing::debug!(event = "session_taken_over", jid = %b.jid, conn = b.loc.conn);
            if let Err(b) = t.reply.send(b) {
                // The resuming connection gave up waiting: nobody has the session now.
                end(edge, b, false, Vec::new()).await;
            }
        }
        Reason::End(e) if resumable && detaches(&e) => {
            let w = match stop {
                Some(stop) => stop.now(Vec::new()).await,
                None => WriterEnd {
                    data: b.data_rx.take(),
                    ctl: b.ctl_rx.take(),
                    unwritten: Vec::new(),
                    closed: false,
                    csi: std::mem::take(&mut b.csi),
                },
            };
            b.data_rx = w.data;
            b.ctl_rx = w.ctl;
            b.csi = w.csi;
            if w.closed {
                // The router closed the stream meanwhile (e.g. the resource was taken by
                // a new login): nothing to resume.
                return end(edge, b, false, w.unwritten).await;
            }
            detached(edge, b, shutdown).await;
        }
        Reason::End(e) => {
            // Unregister first so nothing new is queued, then say goodbye.
            edge.router.unbind(&b.jid, b.loc).await;
            edge.hub.unregister(b.loc.conn);
            let w = match (stop, e) {
                (None, _) => WriterEnd {
                    data: b.data_rx.take(),
                    ctl: None,
                    unwritten: Vec::new(),
                    closed: true,
                    csi: std::mem::take(&mut b.csi),
                },
                (Some(stop), End::Stream(err)) => {
                    let _ = b.ctl_tx.send(Outbound::Close(err.condition));
                    stop.join().await
                }
                (Some(stop), End::ClientClosed) => {
                    let _ = b.ctl_tx.send(Outbound::Stanza(Bytes::from_static(CLOSE_TAG)));
                    stop.join().await
                }
                (Some(stop), End::Raw(bytes)) => stop.now([&bytes[..], CLOSE_TAG].concat()).await,
                (Some(stop), End::Io | End::Aborted(_)) => stop.now(Vec::new()).await,
            };
            b.data_rx = w.data;
            b.csi = w.csi;
            end(edge, b, true, w.unwritten).await;
        }
    }
}

/// Ends that leave a resumable session waiting for its client: the transport went away,
/// or the client fell silent. (A close, a stream error or a shutdown end it.)
fn detaches(e: &End) -> bool {
    match e {
        End::Io => true,
        End::Stream(err) => err.condition == StreamCondition::ConnectionTimeout,
        _ => false,
    }
}

/// §5: a resumable session without a transport waits for its client, the end of the
/// resumption time, a close from the router, or the server's shutdown.
async fn detached(edge: &Arc<crate::Edge>, mut b: Box<Bound>, mut shutdown: watch::Receiver<bool>) {
    if *shutdown.borrow() {
        return end(edge, b, false, Vec::new()).await;
    }
    let Some(m) = b.sm.as_mut() else { return end(edge, b, false, Vec::new()).await };
    let wait = m.resume.unwrap_or_default();
    tracing::debug!(event = "session_detached", jid = %b.jid, conn = b.loc.conn, resume_secs = wait.as_secs());
    let mut takeover = m.takeover.take();
    let mut ctl = b.ctl_rx.take();
    let taken = tokio::select! {
        _ = tokio::time::sleep(wait) => None,
        _ = async { match ctl.as_mut() { Some(c) => { let _ = c.await; } None => std::future::pending().await } } => {
            ctl = None;
            None
        }
        t = async { match takeover.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => t,
        _ = shutdown.changed() => None,
    };
    if let Some(m) = b.sm.as_mut() {
        m.takeover = takeover;
    }
    b.ctl_rx = ctl;
    match taken {
        Some(t) => {
            if let Err(b) = t.reply.send(b) {
                end(edge, b, false, Vec::new()).await;
            }
        }
        None => end(edge, b, false, Vec::new()).await,
    }
}

/// The session ends for good: it leaves the router (unless `left_router` says it already
/// did), and every stanza it did not get through goes back to the router.
async fn end(edge: &Arc<crate::Edge>, mut b: Box<Bound>, left_router: bool, unwritten: Vec<Bytes>) {
    if !left_router {
        edge.router.unbind(&b.jid, b.loc).await;
        edge.hub.unregister(b.loc.conn);
    }
    let mut back = Vec::new();
    if let Some(m) = b.sm.take() {
        let h = {
            let mut s = m.lock();
            back.extend(s.take_unacked());
            s.inbound
        };
        if m.resume.is_some() {
            edge.resumable.ended(&m.id, &b.jid.to_bare(), h);
        }
    }
    back.extend(unwritten);
    back.extend(b.csi.held.take());
    if let Some(mut rx) = b.data_rx.take() {
        rx.close();
        while let Ok(o) = rx.try_recv() {
            if let Outbound::Stanza(s) = o
                && &s[..] != CLOSE_TAG
            {
                back.push(s);
            }
        }
    }
    // Queued but never acknowledged (or never written): the router treats them as arriving
    // after this session ended (other resources, offline storage, or an error).
    for stanza in back {
        edge.router.undelivered(&b.jid, stanza).await;
    }
    tracing::debug!(event = "session_closed", jid = %b.jid, conn = b.loc.conn);
}

impl Conn {
    /// Reads, checks and routes until the stream ends or a resuming connection takes the
    /// session over.
    async fn read_loop(
        &mut self,
        rd: &mut tokio::io::ReadHalf<Transport>,
        b: &mut Bound,
        nonza: &mpsc::UnboundedSender<Nonza>,
        done_rx: &mut oneshot::Receiver<()>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Reason {
        let edge = self.edge.clone();
        let mut rate = RateLimit::new(edge.cfg.stanza_rate_per_sec);
        let idle = edge.cfg.idle_timeout;
        loop {
            let frame = loop {
                match self.framer.next_frame() {
                    Ok(Some(f)) => break Ok(f),
                    Ok(None) => {}
                    Err(e) => break Err(End::from(e)),
                }
                let read = rd.read_buf(self.framer.read_buf());
                let takeover = b.sm.as_mut().and_then(|m| m.takeover.as_mut());
                let woke = tokio::select! {
                    r = async {
                        if idle.is_zero() { Ok(read.await) } else { tokio::time::timeout(idle, read).await }
                    } => Woke::Read(r.map(|r| r.unwrap_or(0))),
                    _ = &mut *done_rx => Woke::WriterGone,
                    _ = shutdown.changed() => Woke::Shutdown,
                    t = async { match takeover { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                        Woke::Takeover(t)
                    }
                };
                match woke {
                    Woke::Read(Err(_)) => break Err(End::Stream(StreamError::new(StreamCondition::ConnectionTimeout))),
                    Woke::Read(Ok(0)) | Woke::WriterGone => break Err(End::Io),
                    Woke::Read(Ok(_)) => {}
                    Woke::Shutdown => break Err(End::Stream(StreamError::new(StreamCondition::SystemShutdown))),
                    Woke::Takeover(Some(t)) => return Reason::Takeover(t),
                    // Every sender is gone: nobody can ask any more.
                    Woke::Takeover(None) => {
                        if let Some(m) = b.sm.as_mut() {
                            m.takeover = None;
                        }
                    }
                }
            };
            let el = match frame {
                Err(e) => return Reason::End(e),
                Ok(Frame::Whitespace) => continue,
                Ok(Frame::StreamClose) => return Reason::End(End::ClientClosed),
                Ok(Frame::StreamOpen(_)) => return Reason::End(stream_err(StreamCondition::NotWellFormed)),
                Ok(Frame::Element(el)) => el,
            };
            // Every element counts against the rate, acks and ack requests included.
            let wait = rate.take();
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            if el.ns == ns::SM {
                if let Err(e) = self.stream_management(b, &el, nonza) {
                    return Reason::End(e);
                }
                continue;
            }
            // XEP-0352 §4: nonzas; the writer holds back or flushes. Switched off (and
            // not offered), they are harmless and ignored.
            if el.ns == ns::CSI {
                if edge.cfg.csi_max_held > 0 {
                    match el.name.as_str() {
                        "inactive" => drop(nonza.send(Nonza::Csi(true))),
                        "active" => drop(nonza.send(Nonza::Csi(false))),
                        _ => {}
                    }
                }
                continue;
            }
            match check_stanza(&b.jid, el) {
                Ok(env) => edge.router.route(b.loc, env).await,
                Err(Checked::Reply(bytes)) => {
                    if b.data_tx.send(Outbound::Stanza(bytes)).await.is_err() {
                        return Reason::End(End::Io);
                    }
                }
                Err(Checked::Drop) => {}
                Err(Checked::End(e)) => return Reason::End(e),
            }
            // §4: handled (routed, answered or dropped as the RFC asks).
            if let Some(m) = &b.sm {
                let mut s = m.lock();
                s.inbound = s.inbound.wrapping_add(1);
            }
        }
    }

    /// XEP-0198 elements of a bound stream.
    fn stream_management(
        &self,
        b: &mut Bound,
        el: &RawElement,
        nonza: &mpsc::UnboundedSender<Nonza>,
    ) -> Result<(), End> {
        let cfg = &self.edge.cfg.sm;
        let tree = el.parse().ok();
        let attr = |n: &str| tree.as_ref().and_then(|t| t.get_attr(n)).map(str::to_owned);
        match el.name.as_str() {
            "enable" if b.sm.is_some() || !cfg.enabled => {
                // §3: one enable per stream; and none where it is not offered.
                let cond = if cfg.enabled { "unexpected-request" } else { "feature-not-implemented" };
                let _ = nonza.send(Nonza::Raw(sm::failed(cond, None)));
            }
            "enable" => {
                let asked = matches!(attr("resume").as_deref(), Some("true") | Some("1"));
                let resume = (asked && !cfg.resume_timeout.is_zero()).then(|| {
                    let max = attr("max").and_then(|m| m.trim().parse::<u64>().ok()).map(Duration::from_secs);
                    max.unwrap_or(cfg.resume_timeout).min(cfg.max_resume_timeout)
                });
                let id = new_id();
                let state = Arc::new(Mutex::new(SmState::default()));
                let mut enabled = format!("<enabled xmlns='{}'", ns::SM);
                let takeover = resume.map(|wait| {
                    enabled.push_str(&format!(" id='{id}' resume='true' max='{}'", wait.as_secs()));
                    let (tx, rx) = mpsc::channel(1);
                    self.edge.resumable.insert(&id, &b.jid.to_bare(), tx);
                    rx
                });
                enabled.push_str("/>");
                let _ = nonza.send(Nonza::Enable(enabled.into_bytes(), state.clone()));
                tracing::debug!(event = "sm_enabled", jid = %b.jid, resumable = resume.is_some());
                b.sm = Some(Managed { id, state, resume, takeover });
            }
            "r" => {
                if let Some(m) = &b.sm {
                    let _ = nonza.send(Nonza::Raw(m.lock().answer()));
                }
            }
            "a" => {
                let Some(m) = &b.sm else { return Ok(()) };
                let Some(h) = sm::parse_h(attr("h").as_deref()) else {
                    return Err(stream_err(StreamCondition::InvalidXml));
                };
                if let Err(too_high) = m.lock().ack(h) {
                    tracing::info!(event = "sm_handled_count_too_high", jid = %b.jid, h, sent = too_high.sent);
                    return Err(End::Raw(too_high.stream_error()));
                }
            }
            // §5: resumption happens instead of binding, not after it.
            "resume" => {
                let _ = nonza.send(Nonza::Raw(sm::failed("unexpected-request", None)));
            }
            _ => {}
        }
        Ok(())
    }
}

/// The batch the writer is building: the bytes, the stanzas in it (to hand back if the
/// write fails), stream management's counting and XEP-0352's held queue.
struct Batch {
    out: BytesMut,
    stanzas: Vec<Bytes>,
    sm: Option<Arc<Mutex<SmState>>>,
    csi: Csi,
    /// Held stanzas that reach this many are flushed.
    csi_limit: usize,
}

/// XEP-0352 state of a session: whether the client is inactive, and what is held for it.
#[derive(Debug, Default)]
pub(crate) struct Csi {
    pub(crate) inactive: bool,
    pub(crate) held: Held,
}

impl Batch {
    /// A stanza for the client: written now, or held while the client is inactive.
    fn stanza(&mut self, b: Bytes) {
        if !self.csi.inactive {
            return self.write_stanza(b);
        }
        match csi::urgency(&b) {
            Urgency::Now => {
                self.flush_held();
                self.write_stanza(b);
            }
            u => {
                if self.csi.held.hold(b, u, self.csi_limit) {
                    self.flush_held();
                }
            }
        }
    }

    fn flush_held(&mut self) {
        for b in self.csi.held.take() {
            self.write_stanza(b);
        }
    }

    /// Appends a stanza; counted and kept when stream management counts.
    fn write_stanza(&mut self, b: Bytes) {
        self.out.extend_from_slice(&b);
        match &self.sm {
            Some(cell) => {
                let mut s = cell.lock().unwrap_or_else(PoisonError::into_inner);
                if s.counting {
                    s.sent(b);
                } else {
                    self.stanzas.push(b);
                }
            }
            None => self.stanzas.push(b),
        }
    }

    fn nonza(&mut self, n: Nonza) {
        match n {
            Nonza::Raw(b) => self.out.extend_from_slice(&b),
            Nonza::Enable(b, state) => {
                self.out.extend_from_slice(&b);
                state.lock().unwrap_or_else(PoisonError::into_inner).counting = true;
                self.sm = Some(state);
            }
            Nonza::Csi(inactive) => {
                self.csi.inactive = inactive;
                if !inactive {
                    self.flush_held();
                }
            }
        }
    }
}

/// Drains the outbound queues into the socket, batching what is queued, until the stream
/// closes, a write fails, or `stop` asks it to (after writing the bytes it carries). A
/// close first writes everything queued (and held) before it. With stream management, each
/// stanza written after `<enabled/>` is counted and kept until acknowledged.
#[allow(clippy::too_many_arguments)]
async fn writer(
    mut wr: tokio::io::WriteHalf<Transport>,
    lanes: (Option<mpsc::Receiver<Outbound>>, Option<oneshot::Receiver<Outbound>>),
    mut nonza: mpsc::UnboundedReceiver<Nonza>,
    mut stop: oneshot::Receiver<Vec<u8>>,
    sm: Option<Arc<Mutex<SmState>>>,
    csi: (Csi, usize),
    resend: Vec<Bytes>,
    _done: oneshot::Sender<()>,
) -> WriterEnd {
    let (data, mut ctl) = lanes;
    let Some(mut data) = data else {
        return WriterEnd { data: None, ctl, unwritten: Vec::new(), closed: true, csi: csi.0 };
    };
    let mut b = Batch { out: BytesMut::new(), stanzas: Vec::new(), sm, csi: csi.0, csi_limit: csi.1 };
    let mut unwritten = Vec::new();
    let mut resend = Some(resend).filter(|r| !r.is_empty());
    let mut nonza_open = true;
    let mut closed = false;
    loop {
        // What to write now: re-sent stanzas first (never held: the client is back);
        // else wait for the first item.
        let mut closing: Option<Vec<u8>> = None;
        let mut stopping: Option<Vec<u8>> = None;
        if let Some(r) = resend.take() {
            for s in r {
                b.write_stanza(s);
            }
        } else {
            tokio::select! {
                biased;
                s = &mut stop => {
                    // Dropped without a word: the session goes on elsewhere or is gone.
                    stopping = Some(s.unwrap_or_default());
                }
                c = async { match ctl.as_mut() { Some(c) => c.await.ok(), None => std::future::pending().await } } => {
                    ctl = None;
                    closing = Some(match c {
                        Some(Outbound::Close(cond)) => StreamError::new(cond).to_bytes(),
                        _ => Vec::new(),
                    });
                }
                n = nonza.recv(), if nonza_open => match n {
                    Some(n) => b.nonza(n),
                    None => nonza_open = false,
                },
                d = data.recv() => match d {
                    Some(Outbound::Stanza(s)) if &s[..] == CLOSE_TAG => closing = Some(Vec::new()),
                    Some(Outbound::Stanza(s)) => b.stanza(s),
                    Some(Outbound::Close(c)) => closing = Some(StreamError::new(c).to_bytes()),
                    None => closing = Some(Vec::new()),
                },
            }
        }
        if let Some(last) = stopping {
            if !last.is_empty() {
                let _ = tokio::time::timeout(Duration::from_secs(5), wr.write_all(&last)).await;
                closed = true;
            }
            break;
        }
        // Batch what else is queued (up to 64 KiB); when closing, everything queued.
        while nonza_open {
            match nonza.try_recv() {
                Ok(n) => b.nonza(n),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => nonza_open = false,
            }
        }
        while closing.is_some() || b.out.len() < 65536 {
            match data.try_recv() {
                Ok(Outbound::Stanza(s)) if &s[..] == CLOSE_TAG => closing = closing.or(Some(Vec::new())),
                Ok(Outbound::Stanza(s)) => b.stanza(s),
                Ok(Outbound::Close(c)) => closing = Some(StreamError::new(c).to_bytes()),
                Err(_) => break,
            }
        }
        if closing.is_some() {
            b.flush_held();
        }
        if let Some(cell) = &b.sm {
            let mut s = cell.lock().unwrap_or_else(PoisonError::into_inner);
            if s.counting && closing.is_none() && s.request() {
                b.out.extend_from_slice(sm::REQUEST);
            }
        }
        if let Some(err) = &closing {
            b.out.extend_from_slice(err);
            b.out.extend_from_slice(CLOSE_TAG);
        }
        if b.out.is_empty() {
            continue;
        }
        // Nothing is kept between batches: an idle connection holds no write buffer.
        let bytes = std::mem::take(&mut b.out).freeze();
        let ok = tokio::select! {
            r = tokio::time::timeout(WRITE_TIMEOUT, async {
                wr.write_all(&bytes).await?;
                wr.flush().await
            }) => r.is_ok_and(|r| r.is_ok()),
            // Asked to stop while the socket does not take the bytes (a dead client).
            s = &mut stop => {
                let _ = s;
                false
            }
        };
        if !ok {
            // Part of it may have reached the client; handing it back risks a duplicate,
            // never a loss. (With stream management it is in the unacknowledged queue.)
            unwritten.append(&mut b.stanzas);
            break;
        }
        b.stanzas.clear();
        if closing.is_some() {
            closed = true;
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), wr.shutdown()).await;
    WriterEnd { data: Some(data), ctl, unwritten, closed, csi: b.csi }
}
