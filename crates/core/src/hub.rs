//! In-process `EdgeLink`: a map from connection id to the connection's bounded outbound
//! queue. A connection whose queue is full is closed with `policy-violation` instead of
//! letting memory grow without limit.

use crate::{ConnId, EdgeLink, Location, Outbound};
use rookery_stanza::StreamCondition;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{mpsc, oneshot};

/// The two lanes of a connection: bounded data, and control (the one message that ends
/// it, ahead of any queued data).
#[derive(Clone)]
pub struct ConnQueues {
    pub data: mpsc::Sender<Outbound>,
    pub control: ControlTx,
}

/// Sending side of a connection's control lane: a stream error or a plain close. A
/// connection ends once, so the first send wins and later ones return false. A oneshot in
/// a shared slot rather than a channel: a tokio channel allocates a block of 32 slots per
/// connection up front, about 1.3 KiB that every idle connection would carry
/// (docs/benchmarks.md, memory per connection). When every sender is gone without a send,
/// the receiver sees the lane closed, as a channel's would.
#[derive(Clone)]
pub struct ControlTx(Arc<Mutex<Option<oneshot::Sender<Outbound>>>>);

impl ControlTx {
    /// Queues `out` unless a control message was already sent or the receiver is gone.
    pub fn send(&self, out: Outbound) -> bool {
        let Ok(mut slot) = self.0.lock() else { return false };
        slot.take().is_some_and(|tx| tx.send(out).is_ok())
    }
}

/// A new control lane.
pub fn control_lane() -> (ControlTx, oneshot::Receiver<Outbound>) {
    let (tx, rx) = oneshot::channel();
    (ControlTx(Arc::new(Mutex::new(Some(tx)))), rx)
}

#[derive(Default)]
pub struct LocalHub {
    conns: RwLock<HashMap<ConnId, ConnQueues>>,
}

impl LocalHub {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn register(&self, conn: ConnId, q: ConnQueues) {
        if let Ok(mut m) = self.conns.write() {
            m.insert(conn, q);
        }
    }
    pub fn unregister(&self, conn: ConnId) {
        if let Ok(mut m) = self.conns.write() {
            m.remove(&conn);
        }
    }
    /// Ends every connection with `condition` (the edge lost its place in the cluster:
    /// its sessions were purged, so its clients must reconnect).
    pub fn close_all(&self, condition: StreamCondition) -> usize {
        let conns: Vec<ConnQueues> = match self.conns.read() {
            Ok(m) => m.values().cloned().collect(),
            Err(_) => return 0,
        };
        conns.iter().filter(|q| q.control.send(Outbound::Close(condition))).count()
    }
    pub fn len(&self) -> usize {
        self.conns.read().map(|m| m.len()).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl EdgeLink for LocalHub {
    fn free_capacity(&self, loc: Location) -> usize {
        self.conns.read().ok().and_then(|m| m.get(&loc.conn).map(|q| q.data.capacity())).unwrap_or(0)
    }

    fn deliver(&self, loc: Location, out: Outbound) -> bool {
        let q = match self.conns.read() {
            Ok(m) => match m.get(&loc.conn) {
                Some(q) => q.clone(),
                None => return false,
            },
            Err(_) => return false,
        };
        match out {
            Outbound::Close(_) => q.control.send(out),
            Outbound::Stanza(_) => match q.data.try_send(out) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::info!(event = "outbound_queue_full", conn = loc.conn);
                    let _ = q.control.send(Outbound::Close(StreamCondition::PolicyViolation));
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn the_first_control_message_wins() {
        let (tx, rx) = control_lane();
        let other = tx.clone();
        assert!(tx.send(Outbound::Close(StreamCondition::PolicyViolation)));
        assert!(!other.send(Outbound::Stanza(Bytes::from_static(b"</stream:stream>"))), "a second close is refused");
        assert!(matches!(rx.await, Ok(Outbound::Close(StreamCondition::PolicyViolation))));
    }

    #[tokio::test]
    async fn the_lane_closes_when_every_sender_is_gone() {
        let (tx, rx) = control_lane();
        let other = tx.clone();
        drop(tx);
        drop(other);
        assert!(rx.await.is_err());
    }

    #[tokio::test]
    async fn a_full_data_queue_closes_the_connection_through_the_control_lane() {
        let hub = LocalHub::new();
        let (data, mut data_rx) = mpsc::channel(1);
        let (control, control_rx) = control_lane();
        hub.register(7, ConnQueues { data, control });
        let loc = Location { edge: 1, conn: 7 };
        assert!(hub.deliver(loc, Outbound::Stanza(Bytes::from_static(b"<a/>"))));
        assert!(!hub.deliver(loc, Outbound::Stanza(Bytes::from_static(b"<b/>"))), "the queue is full");
        assert!(matches!(control_rx.await, Ok(Outbound::Close(StreamCondition::PolicyViolation))));
        assert!(matches!(data_rx.recv().await, Some(Outbound::Stanza(_))));
        assert_eq!(hub.close_all(StreamCondition::SystemShutdown), 0, "already closing");
    }
}
