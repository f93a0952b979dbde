//! Accounts, rosters, offline messages, vCards, block lists and last activity on ScyllaDB.
//!
//! Owns: how each trait call maps onto the prepared statements, and the retry loop of the
//! roster's compare-and-set.
//! Must not touch: the archive (see `archive_store`), schema changes.
//!
//! RFC 6121 §2 and XEP-0237 (roster and its version), XEP-0160 (offline), XEP-0054,
//! XEP-0191, XEP-0012.

use crate::codec::{
    account_bucket, all_account_buckets, bigint_to_u64, from_cql, from_json, to_cql, to_json, u64_to_bigint,
};
use crate::{ScyllaStore, applied, backend, backoff, cas_contention};
use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use rookery_jid::BareJid;
use rookery_sasl::StoredCredentials;
use rookery_storage::{
    Account, AccountStore, BlockStore, LastActivity, LastActivityStore, OfflineMessage, OfflineStore, Result, Roster,
    RosterItem, RosterStore, StoreError, VcardStore,
};
use scylla::statement::batch::{Batch, BatchType};

/// Attempts of one roster change before giving up under contention.
const ROSTER_CAS_ATTEMPTS: u32 = 200;
/// Statements per block-list batch (one partition, so the batch stays cheap).
const BLOCK_BATCH: usize = 100;

fn account_key(user: &BareJid) -> (&str, i32, &str) {
    let local = user.node().unwrap_or_default();
    (user.domain(), account_bucket(local), local)
}

#[async_trait]
impl AccountStore for ScyllaStore {
    async fn create(&self, user: &BareJid, account: Account) -> Result<bool> {
        let st = self.stmts()?;
        let (domain, bucket, local) = account_key(user);
        let creds = to_json("credentials", &account.credentials)?;
        let created = u64_to_bigint("created_at", account.created_at)?;
        // IF NOT EXISTS: two routers registering the same name concurrently must not both
        // succeed, and the loser must not overwrite the winner's credentials.
        let result = self
            .session
            .execute_unpaged(&st.account_insert, (domain, bucket, local, creds, created))
            .await
            .map_err(backend("creating account"))?;
        applied("creating account", result)
    }

    async fn get(&self, user: &BareJid) -> Result<Option<Account>> {
        let st = self.stmts()?;
        let row: Option<(Option<String>, Option<i64>)> =
            self.first("reading account", &st.account_get, account_key(user)).await?;
        let Some((creds, created)) = row else { return Ok(None) };
        let credentials: Vec<StoredCredentials> = from_json("account credentials", creds.as_deref().unwrap_or("[]"))?;
        Ok(Some(Account { credentials, created_at: bigint_to_u64("account created_at", created.unwrap_or(0))? }))
    }

    async fn set_credentials(&self, user: &BareJid, creds: Vec<StoredCredentials>) -> Result<bool> {
        let st = self.stmts()?;
        let (domain, bucket, local) = account_key(user);
        // IF EXISTS: a plain UPDATE would create the row (CQL writes are upserts).
        let result = self
            .session
            .execute_unpaged(&st.account_set_credentials, (to_json("credentials", &creds)?, domain, bucket, local))
            .await
            .map_err(backend("setting credentials"))?;
        applied("setting credentials", result)
    }

    async fn delete(&self, user: &BareJid) -> Result<bool> {
        let st = self.stmts()?;
        // IF EXISTS tells whether there was an account, and orders the delete after any
        // concurrent create of the same name.
        let result = self
            .session
            .execute_unpaged(&st.account_delete, account_key(user))
            .await
            .map_err(backend("deleting account"))?;
        applied("deleting account", result)
    }

    async fn list(&self, domain: &str) -> Result<Vec<String>> {
        let st = self.stmts()?;
        let parts: Vec<Vec<(String,)>> = futures::stream::iter(all_account_buckets())
            .map(|bucket| self.rows("listing accounts", &st.account_list, (domain, bucket)))
            .buffer_unordered(16)
            .try_collect()
            .await?;
        let mut out: Vec<String> = parts.into_iter().flatten().map(|(l,)| l).filter(|l| !l.is_empty()).collect();
        out.sort_unstable();
        Ok(out)
    }
}

enum RosterChange<'a> {
    Put(&'a str, String),
    Remove(&'a str),
}

impl ScyllaStore {
    /// One roster change as a conditional batch on the roster's partition: compare-and-set
    /// the static version cell from the version read, and write or delete the item. A
    /// concurrent change makes the condition fail; the loop then re-reads and tries again,
    /// so every applied change gets its own, larger version.
    async fn roster_change(&self, user: &str, change: RosterChange<'_>) -> Result<Option<u64>> {
        let st = self.stmts()?;
        let mut batch = Batch::new(BatchType::Logged);
        batch.append_statement(st.roster_cas_version.clone());
        batch.append_statement(match change {
            RosterChange::Put(..) => st.roster_put.clone(),
            RosterChange::Remove(_) => st.roster_remove.clone(),
        });
        for attempt in 0..ROSTER_CAS_ATTEMPTS {
            // Version first, then the item: a change between the two reads moves the
            // version, so the condition below catches it.
            let current: Option<i64> = self
                .first::<(Option<i64>,)>("reading roster version", &st.roster_version, (user,))
                .await?
                .and_then(|r| r.0);
            if let RosterChange::Remove(contact) = change {
                let item: Option<(Option<String>,)> =
                    self.first("reading roster item", &st.roster_get_item, (user, contact)).await?;
                if item.and_then(|r| r.0).is_none() {
                    return Ok(None);
                }
            }
            let next = current
                .unwrap_or(0)
                .checked_add(1)
                .ok_or_else(|| StoreError::Corrupt(format!("roster version of {user} overflowed")))?;
            let result = match &change {
                RosterChange::Put(contact, item) => {
                    self.session.batch(&batch, ((next, user, current), (user, *contact, item.as_str()))).await
                }
                RosterChange::Remove(contact) => {
                    self.session.batch(&batch, ((next, user, current), (user, *contact))).await
                }
            };
            match result {
                Ok(r) => {
                    if applied("roster change", r)? {
                        return bigint_to_u64("roster version", next).map(Some);
                    }
                }
                Err(e) if cas_contention(&e) => {
                    tracing::debug!(event = "roster_cas_contention", user, attempt, error = %e);
                }
                Err(e) => return Err(backend("roster change")(e)),
            }
            backoff(attempt).await;
        }
        Err(StoreError::Backend(format!(
            "roster of {user}: version still contended after {ROSTER_CAS_ATTEMPTS} attempts"
        )))
    }
}

#[async_trait]
impl RosterStore for ScyllaStore {
    async fn get(&self, user: &BareJid) -> Result<Roster> {
        let st = self.stmts()?;
        let rows: Vec<(Option<String>, Option<String>, Option<i64>)> =
            self.rows("reading roster", &st.roster_get, (user.as_str(),)).await?;
        let mut version = 0;
        let mut items = Vec::with_capacity(rows.len());
        for (contact, item, v) in rows {
            if let Some(v) = v {
                version = bigint_to_u64("roster version", v)?;
            }
            // A partition whose items were all removed still has its static version row,
            // which comes back with a null contact.
            if contact.is_some()
                && let Some(item) = item
            {
                items.push(from_json::<RosterItem>("roster item", &item)?);
            }
        }
        items.sort_by(|a, b| a.jid.cmp(&b.jid));
        Ok(Roster { version, items })
    }

    async fn get_item(&self, user: &BareJid, contact: &str) -> Result<Option<RosterItem>> {
        let st = self.stmts()?;
        let row: Option<(Option<String>,)> =
            self.first("reading roster item", &st.roster_get_item, (user.as_str(), contact)).await?;
        row.and_then(|r| r.0).map(|item| from_json("roster item", &item)).transpose()
    }

    async fn put_item(&self, user: &BareJid, item: RosterItem) -> Result<u64> {
        let json = to_json("roster item", &item)?;
        let v = self.roster_change(user.as_str(), RosterChange::Put(&item.jid, json)).await?;
        v.ok_or_else(|| StoreError::Backend("roster put reported no version".into()))
    }

    async fn remove_item(&self, user: &BareJid, contact: &str) -> Result<Option<u64>> {
        self.roster_change(user.as_str(), RosterChange::Remove(contact)).await
    }

    async fn delete_all(&self, user: &BareJid) -> Result<()> {
        let st = self.stmts()?;
        self.exec("deleting roster", &st.roster_delete_all, (user.as_str(),)).await
    }
}

#[async_trait]
impl OfflineStore for ScyllaStore {
    async fn push(&self, user: &BareJid, stanza: Bytes) -> Result<u64> {
        let st = self.stmts()?;
        let seq = self.offline_ids.next().0;
        self.exec(
            "storing offline message",
            &st.offline_insert,
            (user.as_str(), to_cql(seq), stanza, self.offline_ttl_secs),
        )
        .await?;
        Ok(seq)
    }

    async fn list(&self, user: &BareJid) -> Result<Vec<OfflineMessage>> {
        let st = self.stmts()?;
        let rows: Vec<(i64, Option<Bytes>)> =
            self.rows("listing offline messages", &st.offline_list, (user.as_str(),)).await?;
        Ok(rows
            .into_iter()
            .map(|(seq, stanza)| OfflineMessage { seq: from_cql(seq), stanza: stanza.unwrap_or_default() })
            .collect())
    }

    async fn count(&self, user: &BareJid) -> Result<usize> {
        let st = self.stmts()?;
        let n: Option<(i64,)> = self.first("counting offline messages", &st.offline_count, (user.as_str(),)).await?;
        let n = n.map_or(0, |r| r.0);
        usize::try_from(n).map_err(|_| StoreError::Corrupt(format!("offline count {n}")))
    }

    async fn remove_up_to(&self, user: &BareJid, up_to: u64) -> Result<()> {
        let st = self.stmts()?;
        self.exec("removing offline messages", &st.offline_remove_up_to, (user.as_str(), to_cql(up_to))).await
    }

    async fn delete_all(&self, user: &BareJid) -> Result<()> {
        let st = self.stmts()?;
        self.exec("deleting offline messages", &st.offline_delete_all, (user.as_str(),)).await
    }
}

#[async_trait]
impl VcardStore for ScyllaStore {
    async fn get(&self, user: &BareJid) -> Result<Option<Bytes>> {
        let st = self.stmts()?;
        let row: Option<(Option<Bytes>,)> = self.first("reading vcard", &st.vcard_get, (user.as_str(),)).await?;
        Ok(row.and_then(|r| r.0))
    }

    async fn set(&self, user: &BareJid, vcard: Bytes) -> Result<()> {
        let st = self.stmts()?;
        self.exec("storing vcard", &st.vcard_set, (user.as_str(), vcard)).await
    }

    async fn delete(&self, user: &BareJid) -> Result<()> {
        let st = self.stmts()?;
        self.exec("deleting vcard", &st.vcard_delete, (user.as_str(),)).await
    }
}

impl ScyllaStore {
    /// The same statement for each JID, as unlogged batches on the user's one partition.
    async fn block_batches(
        &self,
        what: &'static str,
        stmt: &scylla::statement::prepared::PreparedStatement,
        user: &BareJid,
        jids: &[String],
    ) -> Result<()> {
        let mut jids: Vec<&str> = jids.iter().map(String::as_str).collect();
        jids.sort_unstable();
        jids.dedup();
        for chunk in jids.chunks(BLOCK_BATCH) {
            let mut batch = Batch::new(BatchType::Unlogged);
            for _ in chunk {
                batch.append_statement(stmt.clone());
            }
            let values: Vec<(&str, &str)> = chunk.iter().map(|j| (user.as_str(), *j)).collect();
            self.session.batch(&batch, values).await.map_err(backend(what))?;
        }
        Ok(())
    }
}

#[async_trait]
impl BlockStore for ScyllaStore {
    async fn list(&self, user: &BareJid) -> Result<Vec<String>> {
        let st = self.stmts()?;
        let rows: Vec<(String,)> = self.rows("listing blocked JIDs", &st.block_list, (user.as_str(),)).await?;
        let mut out: Vec<String> = rows.into_iter().map(|(j,)| j).collect();
        // Clustering order is already byte order; sorting again keeps the contract
        // independent of the server's comparator.
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    async fn block(&self, user: &BareJid, jids: &[String]) -> Result<()> {
        let st = self.stmts()?;
        self.block_batches("blocking JIDs", &st.block_add, user, jids).await
    }

    async fn unblock(&self, user: &BareJid, jids: &[String]) -> Result<()> {
        let st = self.stmts()?;
        self.block_batches("unblocking JIDs", &st.block_remove, user, jids).await
    }

    async fn unblock_all(&self, user: &BareJid) -> Result<()> {
        let st = self.stmts()?;
        self.exec("clearing block list", &st.block_remove_all, (user.as_str(),)).await
    }
}

#[async_trait]
impl LastActivityStore for ScyllaStore {
    async fn get(&self, user: &BareJid) -> Result<Option<LastActivity>> {
        let st = self.stmts()?;
        let row: Option<(Option<i64>, Option<String>)> =
            self.first("reading last activity", &st.last_get, (user.as_str(),)).await?;
        let Some((at, status)) = row else { return Ok(None) };
        Ok(Some(LastActivity {
            at: bigint_to_u64("last activity", at.unwrap_or(0))?,
            status: status.unwrap_or_default(),
        }))
    }

    async fn set(&self, user: &BareJid, last: LastActivity) -> Result<()> {
        let st = self.stmts()?;
        let at = u64_to_bigint("last activity", last.at)?;
        self.exec("storing last activity", &st.last_set, (user.as_str(), at, last.status)).await
    }

    async fn delete(&self, user: &BareJid) -> Result<()> {
        let st = self.stmts()?;
        self.exec("deleting last activity", &st.last_delete, (user.as_str(),)).await
    }
}
