//! In-process `EdgeLink`: a map from connection id to the connection's bounded outbound
//! queue. A connection whose queue is full is closed with `policy-violation` instead of
//! letting memory grow without limit.

use crate::{ConnId, EdgeLink, Location, Outbound};
use rookery_stanza::StreamCondition;
use std::collections::HashMap;
use std::sync::RwLock;
use tokio::sync::mpsc;

/// The two queues of a connection: bounded data, unbounded (rare) control.
#[derive(Clone)]
pub struct ConnQueues {
    pub data: mpsc::Sender<Outbound>,
    pub control: mpsc::UnboundedSender<Outbound>,
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
        conns.iter().filter(|q| q.control.send(Outbound::Close(condition)).is_ok()).count()
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
            Outbound::Close(_) => q.control.send(out).is_ok(),
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
