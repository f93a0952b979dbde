//! XEP-0160 offline storage: a chat/normal message with content for a user with no
//! available resource is stored (durably, before the sender's stanza counts as handled)
//! and delivered with a XEP-0203 `<delay/>` when the user next sends available presence
//! with non-negative priority. XEP-0334 `no-store`/`no-permanent-store` hints are honoured.

use crate::LocalRouter;
use bytes::Bytes;
use rookery_core::SessionEntry;
use rookery_jid::BareJid;
use rookery_stanza::{Condition, Envelope, StanzaError};

const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
const HINTS: &str = "urn:xmpp:hints";

/// Whether a message is worth storing: it has a child other than chat states, and no
/// storage-forbidding hint.
fn worth_storing(env: &Envelope) -> bool {
    if env.el.self_closing {
        return false;
    }
    let Ok(el) = env.el.parse() else { return false };
    let mut content = false;
    for c in el.elements() {
        if c.ns == HINTS && (c.name == "no-store" || c.name == "no-permanent-store") {
            return false;
        }
        if c.ns != CHATSTATES && c.ns != HINTS {
            content = true;
        }
    }
    content
}

/// Inserts `<delay xmlns='urn:xmpp:delay' from=… stamp=…/>` before the closing tag.
pub(crate) fn with_delay(stanza: &[u8], from: &str, stamp_secs: u64) -> Bytes {
    let stamp = rookery_stanza::datetime(stamp_secs);
    let Some(close) = stanza.iter().rposition(|&b| b == b'<') else { return Bytes::copy_from_slice(stanza) };
    let mut out = Vec::with_capacity(stanza.len() + 96);
    out.extend_from_slice(&stanza[..close]);
    out.extend_from_slice(b"<delay xmlns=\"urn:xmpp:delay\"");
    rookery_stanza::push_attr(&mut out, "from", from);
    rookery_stanza::push_attr(&mut out, "stamp", &stamp);
    out.extend_from_slice(b"/>");
    out.extend_from_slice(&stanza[close..]);
    Bytes::from(out)
}

impl LocalRouter {
    pub(crate) async fn store_offline(&self, env: &Envelope, user: &BareJid) {
        if !worth_storing(env) {
            return;
        }
        match self.stores.offline.count(user).await {
            Ok(n) if n >= self.cfg.offline_max_per_user => {
                self.bounce(env, StanzaError::new(Condition::ServiceUnavailable).with_text("offline storage is full"));
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(event = "offline_count_failed", user = %user, error = %e);
            }
        }
        let bytes = with_delay(&env.wire(), user.domain(), rookery_storage::now_secs());
        if let Err(e) = self.stores.offline.push(user, bytes).await {
            tracing::warn!(event = "offline_write_failed", user = %user, error = %e);
            self.bounce(env, StanzaError::new(Condition::InternalServerError));
        }
    }

    /// Delivers stored messages to a resource that just became available with
    /// non-negative priority, then removes them.
    pub(crate) async fn flush_offline(&self, entry: &SessionEntry) {
        let user = entry.jid.to_bare();
        let msgs = match self.stores.offline.list(&user).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(event = "offline_read_failed", user = %user, error = %e);
                return;
            }
        };
        let mut last = None;
        for m in msgs {
            if !self.send(entry, m.stanza) {
                break;
            }
            last = Some(m.seq);
        }
        if let Some(seq) = last
            && let Err(e) = self.stores.offline.remove_up_to(&user, seq).await
        {
            tracing::warn!(event = "offline_remove_failed", user = %user, error = %e);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn delay_goes_before_closing_tag() {
        let out = with_delay(b"<message to=\"a@b\"><body>x</body></message>", "b", 0);
        assert_eq!(
            &out[..],
            &b"<message to=\"a@b\"><body>x</body><delay xmlns=\"urn:xmpp:delay\" from=\"b\" stamp=\"1970-01-01T00:00:00Z\"/></message>"[..]
        );
    }
}
