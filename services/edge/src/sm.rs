//! XEP-0198 stream management: the counters and the unacknowledged queue of one stream,
//! with no I/O (the session loop in `c2s.rs` feeds it and writes what it returns).
//!
//! - §4: `<r/>` is answered with `<a h='…'/>`, the count of stanzas handled from the
//!   client; the client's `<a h='…'/>` releases the stanzas it has received, and an `h`
//!   above what was sent is a `handled-count-too-high` stream error (§6).
//! - §5: the counters (modulo 2^32, §4 "h") and the unacknowledged stanzas survive the
//!   transport, so that a resumed stream re-sends exactly what the client did not get.
//!
//! Owns: the arithmetic and the queue. Must not touch: sockets, the router, timers.

use bytes::Bytes;
use rookery_stanza::ns;
use std::collections::VecDeque;

/// The stanza counters and the unacknowledged queue of one stream-management session.
#[derive(Debug, Default)]
pub struct SmState {
    /// Stanzas handled from the client (the `h` we report), modulo 2^32.
    pub inbound: u32,
    /// Stanzas sent to the client, modulo 2^32.
    sent: u32,
    /// The client's last reported `h`.
    acked: u32,
    /// Sent and not yet acknowledged, oldest first: `sent - acked` of them.
    unacked: VecDeque<Bytes>,
    /// Outbound stanzas are counted: from the moment `<enabled/>` was written.
    pub counting: bool,
    /// An `<r/>` went out and its `<a/>` has not come back.
    requested: bool,
}

/// The client's `h` acknowledged stanzas that were never sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooHigh {
    pub h: u32,
    pub sent: u32,
}

impl TooHigh {
    /// §6: the stream error for it.
    pub fn stream_error(&self) -> Vec<u8> {
        format!(
            "<stream:error><undefined-condition xmlns='{}'/><handled-count-too-high xmlns='{}' h='{}' \
             send-count='{}'/><text xmlns='{}'>You acknowledged {} stanzas, but only {} were sent.</text>\
             </stream:error>",
            ns::STREAMS_ERR,
            ns::SM,
            self.h,
            self.sent,
            ns::STREAMS_ERR,
            self.h,
            self.sent
        )
        .into_bytes()
    }
}

impl SmState {
    /// One stanza from the client was handled.
    pub fn received(&mut self) {
        self.inbound = self.inbound.wrapping_add(1);
    }

    /// One stanza goes to the client; it is kept until acknowledged.
    pub fn sent(&mut self, stanza: Bytes) {
        self.sent = self.sent.wrapping_add(1);
        self.unacked.push_back(stanza);
    }

    /// Whether to ask the client for an ack now (§4): something is unacknowledged and no
    /// request is outstanding. Marks the request as sent.
    pub fn request(&mut self) -> bool {
        if self.requested || self.unacked.is_empty() {
            return false;
        }
        self.requested = true;
        true
    }

    /// How many stanzas are sent and not acknowledged.
    pub fn pending(&self) -> usize {
        self.unacked.len()
    }

    /// The client acknowledged `h` stanzas in all (§4): releases the newly acknowledged
    /// ones and returns how many. An `h` below the last one (a stale or reordered ack)
    /// releases nothing.
    pub fn ack(&mut self, h: u32) -> Result<usize, TooHigh> {
        // Modulo 2^32: how far `h` is ahead of the last ack. Half the number space ahead
        // is "ahead" (more than is outstanding: never sent, an error), the other half is
        // behind (a stale ack: nothing to release).
        let ahead = h.wrapping_sub(self.acked);
        let outstanding = self.sent.wrapping_sub(self.acked);
        if ahead > outstanding {
            if ahead < 1 << 31 {
                return Err(TooHigh { h, sent: self.sent });
            }
            return Ok(0);
        }
        let n = ahead as usize;
        self.unacked.drain(..n.min(self.unacked.len()));
        self.acked = h;
        self.requested = false;
        Ok(n)
    }

    /// `<a h='…'/>` for the client's `<r/>`.
    pub fn answer(&self) -> Vec<u8> {
        format!("<a xmlns='{}' h='{}'/>", ns::SM, self.inbound).into_bytes()
    }

    /// The stanzas still unacknowledged, oldest first (to re-send on resumption, or to
    /// hand back to the router when the session ends for good).
    pub fn take_unacked(&mut self) -> Vec<Bytes> {
        // Re-sent stanzas are counted again as they go out.
        self.sent = self.acked;
        self.unacked.drain(..).collect()
    }

    /// The client's last acknowledged count.
    pub fn acked(&self) -> u32 {
        self.acked
    }

    /// Stanzas sent so far (modulo 2^32).
    pub fn sent_count(&self) -> u32 {
        self.sent
    }
}

/// `<r/>` (§4).
pub const REQUEST: &[u8] = b"<r xmlns='urn:xmpp:sm:3'/>";

/// Parses an `h` attribute (an unsigned 32-bit integer, §4).
pub fn parse_h(v: Option<&str>) -> Option<u32> {
    v?.trim().parse().ok()
}

/// A `<failed/>` with a stanza error condition (§6), and `h` when known (§5).
pub fn failed(condition: &str, h: Option<u32>) -> Vec<u8> {
    let h = h.map(|h| format!(" h='{h}'")).unwrap_or_default();
    format!("<failed xmlns='{}'{h}><{condition} xmlns='{}'/></failed>", ns::SM, ns::STANZAS_ERR).into_bytes()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn acks_release_what_the_client_received() {
        let mut s = SmState::default();
        for m in ["<m1/>", "<m2/>", "<m3/>"] {
            s.sent(b(m));
        }
        assert_eq!(s.ack(2), Ok(2));
        assert_eq!(s.pending(), 1);
        // The same h again releases nothing.
        assert_eq!(s.ack(2), Ok(0));
        assert_eq!(s.take_unacked(), vec![b("<m3/>")]);
        assert_eq!(s.sent_count(), 2, "what is re-sent is counted again");
    }

    #[test]
    fn h_beyond_what_was_sent_is_refused() {
        let mut s = SmState::default();
        s.sent(b("<m/>"));
        assert_eq!(s.ack(5), Err(TooHigh { h: 5, sent: 1 }));
        let err = String::from_utf8(TooHigh { h: 5, sent: 1 }.stream_error()).unwrap();
        assert!(err.contains("<handled-count-too-high xmlns='urn:xmpp:sm:3' h='5' send-count='1'/>"), "{err}");
        assert!(err.contains("<undefined-condition"));
        // Nothing was released by the refused ack.
        assert_eq!(s.pending(), 1);
    }

    #[test]
    fn counters_wrap_at_two_to_the_32() {
        let mut s = SmState { inbound: u32::MAX, sent: u32::MAX - 1, acked: u32::MAX - 1, ..SmState::default() };
        s.received();
        assert_eq!(s.inbound, 0);
        assert_eq!(String::from_utf8(s.answer()).unwrap(), "<a xmlns='urn:xmpp:sm:3' h='0'/>");
        for m in ["<a1/>", "<a2/>", "<a3/>"] {
            s.sent(b(m));
        }
        assert_eq!(s.sent_count(), 1);
        // h = 0 after u32::MAX: two of three acknowledged across the wrap.
        assert_eq!(s.ack(0), Ok(2));
        assert_eq!(s.pending(), 1);
        assert_eq!(s.ack(1), Ok(1));
        assert_eq!(s.ack(2), Err(TooHigh { h: 2, sent: 1 }));
    }

    #[test]
    fn one_request_at_a_time() {
        let mut s = SmState::default();
        assert!(!s.request(), "nothing to acknowledge");
        s.sent(b("<m/>"));
        assert!(s.request());
        s.sent(b("<m/>"));
        assert!(!s.request(), "one is outstanding");
        assert_eq!(s.ack(1), Ok(1));
        assert!(s.request(), "the answer came; one is still unacknowledged");
    }

    #[test]
    fn a_stale_ack_from_behind_is_ignored() {
        let mut s = SmState::default();
        for _ in 0..10 {
            s.sent(b("<m/>"));
        }
        assert_eq!(s.ack(8), Ok(8));
        assert_eq!(s.ack(7), Ok(0));
        assert_eq!(s.pending(), 2);
    }

    #[test]
    fn h_attributes_parse_as_unsigned_32_bit() {
        assert_eq!(parse_h(Some("4294967295")), Some(u32::MAX));
        assert_eq!(parse_h(Some("4294967296")), None);
        assert_eq!(parse_h(Some("-1")), None);
        assert_eq!(parse_h(None), None);
        let f = String::from_utf8(failed("item-not-found", Some(3))).unwrap();
        assert_eq!(
            f,
            "<failed xmlns='urn:xmpp:sm:3' h='3'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
        );
    }
}
