//! XEP-0160 offline storage: a chat/normal message with content for a user with no
//! available resource is stored (durably, before the sender's stanza counts as handled)
//! and delivered with a XEP-0203 `<delay/>` when the user next sends available presence
//! with non-negative priority. XEP-0334 `no-store`/`no-permanent-store` hints are honoured
//! and a `<store/>` hint (§4.4) makes a message worth storing. A message that is archived
//! is written to the archive here, after the quota check and before it is stored, so the
//! stored copy carries its stanza-id (XEP-0313 §3.5) and a refused one is not archived.

use crate::LocalRouter;
use crate::archive::Outgoing;
use crate::message::Origin;
use bytes::Bytes;
use rookery_core::SessionEntry;
use rookery_jid::{BareJid, FullJid, Jid};
use rookery_stanza::{Condition, Envelope, Kind, StanzaError};
use rookery_xml::RawElement;

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
        if (c.ns != CHATSTATES && c.ns != HINTS) || (c.ns == HINTS && c.name == "store") {
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
    /// Stores a message for a user with no resource to take it, writing its pending
    /// archive rows first. When this returns without bouncing, the message is durable.
    /// Returns false when the message was bounced.
    pub(crate) async fn store_offline(&self, env: &Envelope, user: &BareJid, out: &mut Outgoing) -> bool {
        if !worth_storing(env) {
            return true;
        }
        let _serial = self.offline_lock(user).await;
        match self.stores.offline.count(user).await {
            Ok(n) if n >= self.cfg.offline_max_per_user => {
                self.bounce(env, StanzaError::new(Condition::ServiceUnavailable).with_text("offline storage is full"))
                    .await;
                return false;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(event = "offline_count_failed", user = %user, error = %e);
            }
        }
        self.commit_archive(out).await;
        let wire = out.delivered.clone();
        // A message coming back from a session that ended already has its stamp.
        let bytes = if contains(&wire, b"urn:xmpp:delay") {
            wire
        } else {
            with_delay(&wire, user.domain(), rookery_storage::now_secs())
        };
        if let Err(e) = self.stores.offline.push(user, bytes).await {
            tracing::warn!(event = "offline_write_failed", user = %user, error = %e);
            self.bounce(env, StanzaError::new(Condition::InternalServerError)).await;
            return false;
        }
        // The user may have come online while this message was on its way here; its
        // flush has then already run, so deliver now rather than at the next login.
        let sessions = self.registry.sessions(user).await;
        if let Some(s) = crate::message::pick_resources(&sessions, false).first() {
            self.flush_locked(s).await;
        }
        true
    }

    /// Delivers stored messages to a resource that just became available with
    /// non-negative priority, then removes them.
    pub(crate) async fn flush_offline(&self, entry: &SessionEntry) {
        let _serial = self.offline_lock(&entry.jid.to_bare()).await;
        self.flush_locked(entry).await;
    }

    /// The flush itself; the caller holds the user's offline lock, so two resources
    /// never get the same stored message and storing and flushing do not interleave.
    async fn flush_locked(&self, entry: &SessionEntry) {
        let user = entry.jid.to_bare();
        let msgs = match self.stores.offline.list(&user).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(event = "offline_read_failed", user = %user, error = %e);
                return;
            }
        };
        let mut last = None;
        let deadline = tokio::time::Instant::now() + FLUSH_PATIENCE;
        for m in msgs {
            // Pace with the connection's queue: overflowing it would close the stream.
            while self.link.free_capacity(entry.loc) <= QUEUE_HEADROOM {
                if tokio::time::Instant::now() >= deadline {
                    tracing::info!(event = "offline_flush_paused", user = %user);
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            if self.link.free_capacity(entry.loc) <= QUEUE_HEADROOM || !self.send(entry, m.stanza) {
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

    /// See `Router::undelivered`.
    pub(crate) async fn reroute_undelivered(&self, to: &FullJid, stanza: Bytes) {
        let Ok(el) = RawElement::from_bytes(stanza, rookery_stanza::ns::CLIENT) else { return };
        let Some(kind) = Kind::from_name(&el.name) else { return };
        let Some(from) = el.from.as_deref().and_then(|f| Jid::parse(f).ok()) else { return };
        let dest = el.to.as_deref().and_then(|t| Jid::parse(t).ok()).unwrap_or_else(|| to.as_jid().clone());
        let env = Envelope { kind, from, to: dest, el };
        match kind {
            Kind::Message => self.route_message_as(env, Origin::Requeued).await,
            Kind::Iq if matches!(env.stanza_type(), Some("get") | Some("set")) => {
                self.bounce(&env, StanzaError::new(Condition::ServiceUnavailable)).await;
            }
            _ => {}
        }
    }
}

/// Offline flushes wait at most this long for a slow client's queue.
const FLUSH_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);
/// Queue slots left free for live traffic during a flush.
const QUEUE_HEADROOM: usize = 8;

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
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
