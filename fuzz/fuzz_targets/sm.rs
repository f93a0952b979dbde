//! XEP-0198 counters under any sequence of sends, acks (any `h`, wrap-around included),
//! requests and hand-backs: no panic, and the unacknowledged queue always holds exactly
//! the stanzas sent and not acknowledged (§4, h modulo 2^32).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rookery_edge::sm::SmState;

fuzz_target!(|data: &[u8]| {
    let mut s = SmState::default();
    // Start near the wrap-around point half of the time.
    if data.first().is_some_and(|b| b & 1 == 1) {
        for _ in 0..3 {
            s.sent(Bytes::from_static(b"<m/>"));
        }
        let _ = s.take_unacked();
    }
    let mut i = 1;
    while i < data.len() {
        let op = data[i];
        i += 1;
        match op % 5 {
            0 => s.sent(Bytes::from_static(b"<m/>")),
            1 => {
                let mut h = [0u8; 4];
                for (k, b) in h.iter_mut().enumerate() {
                    *b = data.get(i + k).copied().unwrap_or(0);
                }
                i += 4;
                // Mostly near what was sent, sometimes anywhere.
                let h = if op & 0x80 == 0 {
                    s.acked().wrapping_add(u32::from_le_bytes(h) % 8)
                } else {
                    u32::from_le_bytes(h)
                };
                let before = s.pending();
                let outstanding = s.sent_count().wrapping_sub(s.acked());
                match s.ack(h) {
                    Ok(n) => assert!(n <= before, "released {n} of {before}"),
                    Err(e) => {
                        let ahead = h.wrapping_sub(s.acked());
                        assert!(ahead > outstanding && ahead < 1 << 31, "refused {e:?}");
                        assert_eq!(s.pending(), before, "a refused ack releases nothing");
                    }
                }
            }
            2 => {
                let n = s.pending();
                assert_eq!(s.take_unacked().len(), n);
                assert_eq!(s.sent_count(), s.acked());
            }
            3 => {
                let _ = s.request();
            }
            _ => s.received(),
        }
        assert_eq!(s.pending() as u32, s.sent_count().wrapping_sub(s.acked()), "queue and counters agree");
    }
});
