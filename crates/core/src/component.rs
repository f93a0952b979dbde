//! Components: a module that serves a whole domain of its own, such as a group chat
//! service at `conference.example.org` or an upload service at `upload.example.org`
//! (DESIGN §3, "components"). The kernel hands it every stanza addressed to that domain
//! or to any JID in it, instead of applying the RFC 6121 user rules.
//!
//! A component also declares its placement: how a cluster picks the router that handles
//! a stanza for it. `Placement::ByTo` sends everything for one JID of the component (one
//! room) to one router, whoever sends it, so that router owns the room; `BySender` keeps
//! the default, the sender's bare JID. Either way the order of one sender's stanzas to one
//! JID holds (RFC 6120 §10.1): they travel on one edge→router stream.
//!
//! Owns: the component table and the placement key. Must not touch: what a component
//! does with its stanzas (its module), how the cluster routes (crates/cluster reads the
//! key from here).

use crate::module::Ctx;
use async_trait::async_trait;
use rookery_stanza::Envelope;
use std::collections::HashMap;
use std::sync::Arc;

/// How a cluster places the stanzas of a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Placement {
    /// By the bare `to` JID: one router owns each JID of the component (a room).
    ByTo,
    /// By the sender's bare JID, like stanzas between users.
    BySender,
}

/// What a component does with the stanzas addressed to its domain. `env.from` is the
/// stamped sender, `env.to` a JID of the component's domain.
#[async_trait]
pub trait Component: Send + Sync + 'static {
    async fn handle(&self, ctx: &Ctx, env: Envelope);
}

/// One registered component.
#[derive(Clone)]
pub struct ComponentEntry {
    pub domain: String,
    pub placement: Placement,
    /// The disco#items name of the service, if it is listed.
    pub name: Option<&'static str>,
    pub module: &'static str,
    pub handler: Arc<dyn Component>,
}

/// The components by domain, built at start-up.
#[derive(Clone, Default)]
pub struct Components {
    by_domain: HashMap<String, ComponentEntry>,
}

impl Components {
    pub(crate) fn add(&mut self, entry: ComponentEntry) -> Result<(), String> {
        if let Some(old) = self.by_domain.get(&entry.domain) {
            return Err(format!(
                "domain {} is served by both module `{}` and module `{}`",
                entry.domain, old.module, entry.module
            ));
        }
        self.by_domain.insert(entry.domain.clone(), entry);
        Ok(())
    }

    pub fn get(&self, domain: &str) -> Option<&ComponentEntry> {
        if self.by_domain.is_empty() {
            return None;
        }
        self.by_domain.get(domain)
    }

    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &ComponentEntry> {
        self.by_domain.values()
    }

    /// The placement table alone (domain → placement), for the edges of a cluster.
    pub fn placements(&self) -> PlacementTable {
        PlacementTable(self.by_domain.iter().map(|(d, e)| (d.clone(), e.placement)).collect())
    }
}

/// Domain → placement: what an edge needs to pick the router for a stanza.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlacementTable(HashMap<String, Placement>);

impl PlacementTable {
    pub fn new(entries: impl IntoIterator<Item = (String, Placement)>) -> Self {
        PlacementTable(entries.into_iter().collect())
    }

    /// The key a cluster hashes to pick the router for `env`: the bare `to` for a
    /// component placed `ByTo`, the sender's bare JID otherwise.
    pub fn key<'e>(&self, env: &'e Envelope) -> &'e str {
        if !self.0.is_empty() && self.0.get(env.to.domain()) == Some(&Placement::ByTo) {
            return env.to.bare_str();
        }
        env.from.bare_str()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Bytes;
    use rookery_jid::Jid;
    use rookery_stanza::Kind;

    fn env(from: &str, to: &str) -> Envelope {
        let el = rookery_xml::RawElement::from_bytes(Bytes::from_static(b"<message/>"), "jabber:client").unwrap();
        Envelope { kind: Kind::Message, from: Jid::parse(from).unwrap(), to: Jid::parse(to).unwrap(), el }
    }

    #[test]
    fn rooms_are_placed_by_their_jid_and_everything_else_by_the_sender() {
        let t = PlacementTable::new([
            ("conference.example.org".to_owned(), Placement::ByTo),
            ("upload.example.org".to_owned(), Placement::BySender),
        ]);
        assert_eq!(
            t.key(&env("alice@example.org/a", "room@conference.example.org/nick")),
            "room@conference.example.org"
        );
        assert_eq!(t.key(&env("bob@example.org/b", "room@conference.example.org")), "room@conference.example.org");
        assert_eq!(t.key(&env("alice@example.org/a", "upload.example.org")), "alice@example.org");
        assert_eq!(t.key(&env("alice@example.org/a", "bob@example.org")), "alice@example.org");
        assert_eq!(PlacementTable::default().key(&env("a@x/r", "room@conference.example.org")), "a@x");
    }
}
