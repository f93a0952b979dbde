//! Durable data of a Rookery node: the store traits every backend implements, the
//! in-memory backend (tests, ephemeral runs) and the conformance suite all backends pass.
//!
//! Owns: the *shape* of durable data (accounts with SCRAM credentials, rosters with their
//! version counter, offline messages, vCards, block lists, last activity).
//! Must not touch: sockets, XML parsing, XMPP routing rules. Values that are XML (offline
//! stanzas, vCards) are opaque bytes here.
//!
//! Specs whose data lives here: RFC 6121 §2 (roster items, `ver` per XEP-0237),
//! XEP-0160 (offline), XEP-0054 (vcard-temp), XEP-0191 (blocking), XEP-0012 (last activity),
//! XEP-0313/XEP-0359 (message archive, see [`archive`]).

use async_trait::async_trait;
use bytes::Bytes;
use rookery_jid::BareJid;
use rookery_sasl::StoredCredentials;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub mod archive;
/// The conformance suite; test code only, so production builds do not compile it.
#[cfg(feature = "test-util")]
pub mod conformance;
pub mod memory;

/// Errors a backend may return. Callers map every variant to `internal-server-error`
/// on the wire; the text is for logs only.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage backend I/O failure: {0}")]
    Backend(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// An account: one set of SCRAM credentials per hash algorithm, never a password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub credentials: Vec<StoredCredentials>,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Creates the account; returns false (and changes nothing) when it already exists.
    async fn create(&self, user: &BareJid, account: Account) -> Result<bool>;
    async fn get(&self, user: &BareJid) -> Result<Option<Account>>;
    /// Replaces the credentials; returns false when the account does not exist.
    async fn set_credentials(&self, user: &BareJid, creds: Vec<StoredCredentials>) -> Result<bool>;
    /// Deletes the account record only (the caller purges the user's other data);
    /// returns false when it did not exist.
    async fn delete(&self, user: &BareJid) -> Result<bool>;
    /// Local parts of all accounts of a domain, sorted.
    async fn list(&self, domain: &str) -> Result<Vec<String>>;
}

/// RFC 6121 §2.1.2.5 subscription states, from the roster owner's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Subscription {
    #[default]
    None,
    To,
    From,
    Both,
}

impl Subscription {
    /// The contact is subscribed to the owner's presence (`from` or `both`, RFC 6121
    /// §2.1.2.5): it gets the owner's presence and may see the owner's resources.
    pub fn contact_sees_presence(self) -> bool {
        matches!(self, Subscription::From | Subscription::Both)
    }
}

/// Whether `contact` may see `user`'s presence: `contact` is `user`, or holds a `from` or
/// `both` subscription in `user`'s roster.
pub async fn sees_presence(roster: &dyn RosterStore, user: &BareJid, contact: &str) -> Result<bool> {
    if user.as_str() == contact {
        return Ok(true);
    }
    Ok(roster.get_item(user, contact).await?.is_some_and(|i| i.subscription.contact_sees_presence()))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterItem {
    pub jid: BareJidString,
    pub name: Option<String>,
    pub subscription: Subscription,
    /// Outbound subscription request pending (`ask="subscribe"`).
    pub ask: bool,
    /// Inbound subscription request pending approval (RFC 6121 §3.1.3), with the stanza
    /// to re-deliver on next login.
    pub pending_in: Option<Vec<u8>>,
    /// Pre-approved inbound subscription (RFC 6121 §3.4).
    pub approved: bool,
    pub groups: Vec<String>,
    /// Kept only to remember a pending inbound request or pre-approval state for a JID
    /// the user has not put in the roster: never shown in roster results or pushes
    /// (RFC 6121 §3.1.3: the contact is not added to the roster by a request).
    #[serde(default)]
    pub hidden: bool,
}

/// A bare JID in its normalised string form (roster items are keyed by it).
pub type BareJidString = String;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Roster {
    /// Monotonic version (XEP-0237); bumped on every change.
    pub version: u64,
    pub items: Vec<RosterItem>,
}

#[async_trait]
pub trait RosterStore: Send + Sync {
    async fn get(&self, user: &BareJid) -> Result<Roster>;
    async fn get_item(&self, user: &BareJid, contact: &str) -> Result<Option<RosterItem>>;
    /// Inserts or replaces the item; returns the new roster version.
    async fn put_item(&self, user: &BareJid, item: RosterItem) -> Result<u64>;
    /// Removes the item; returns the new version, or None when it did not exist.
    async fn remove_item(&self, user: &BareJid, contact: &str) -> Result<Option<u64>>;
    /// Items changed after version `since` (for roster versioning diffs) are not tracked:
    /// callers send the full roster when versions differ (XEP-0237 §4 allows this).
    async fn delete_all(&self, user: &BareJid) -> Result<()>;
}

/// One stored offline message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineMessage {
    /// Ordering key, strictly increasing per user.
    pub seq: u64,
    pub stanza: Bytes,
}

#[async_trait]
pub trait OfflineStore: Send + Sync {
    /// Appends a message; when this returns Ok the message is durable (survives kill -9).
    async fn push(&self, user: &BareJid, stanza: Bytes) -> Result<u64>;
    /// All stored messages, oldest first.
    async fn list(&self, user: &BareJid) -> Result<Vec<OfflineMessage>>;
    async fn count(&self, user: &BareJid) -> Result<usize>;
    /// Removes messages with seq <= `up_to` (after they were delivered).
    async fn remove_up_to(&self, user: &BareJid, up_to: u64) -> Result<()>;
    async fn delete_all(&self, user: &BareJid) -> Result<()>;
}

#[async_trait]
pub trait VcardStore: Send + Sync {
    async fn get(&self, user: &BareJid) -> Result<Option<Bytes>>;
    async fn set(&self, user: &BareJid, vcard: Bytes) -> Result<()>;
    async fn delete(&self, user: &BareJid) -> Result<()>;
}

#[async_trait]
pub trait BlockStore: Send + Sync {
    /// Blocked JIDs (any JID form, normalised strings), sorted.
    async fn list(&self, user: &BareJid) -> Result<Vec<String>>;
    async fn block(&self, user: &BareJid, jids: &[String]) -> Result<()>;
    async fn unblock(&self, user: &BareJid, jids: &[String]) -> Result<()>;
    async fn unblock_all(&self, user: &BareJid) -> Result<()>;
}

/// XEP-0012: when a user's last session ended, and its status text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastActivity {
    pub at: u64,
    pub status: String,
}

#[async_trait]
pub trait LastActivityStore: Send + Sync {
    async fn get(&self, user: &BareJid) -> Result<Option<LastActivity>>;
    async fn set(&self, user: &BareJid, last: LastActivity) -> Result<()>;
    async fn delete(&self, user: &BareJid) -> Result<()>;
}

/// The set of stores a node runs with; cheap to clone.
#[derive(Clone)]
pub struct Stores {
    pub accounts: Arc<dyn AccountStore>,
    pub roster: Arc<dyn RosterStore>,
    pub offline: Arc<dyn OfflineStore>,
    pub vcard: Arc<dyn VcardStore>,
    pub blocking: Arc<dyn BlockStore>,
    pub last: Arc<dyn LastActivityStore>,
    pub archive: Arc<dyn ArchiveStore>,
}

impl Stores {
    /// Deletes an account and everything stored for it.
    pub async fn delete_user(&self, user: &BareJid) -> Result<bool> {
        let existed = self.accounts.delete(user).await?;
        self.roster.delete_all(user).await?;
        self.offline.delete_all(user).await?;
        self.vcard.delete(user).await?;
        self.blocking.unblock_all(user).await?;
        self.last.delete(user).await?;
        self.archive.delete_all(user).await?;
        Ok(existed)
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub use archive::{
    ArchiveDefault, ArchiveEntry, ArchiveId, ArchiveIdGen, ArchivePage, ArchivePrefs, ArchiveQuery, ArchiveRow,
    ArchiveStore, WithFilter,
};
pub use memory::{MemoryStore, memory_stores};
