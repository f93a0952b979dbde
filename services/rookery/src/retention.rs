//! Archive retention (XEP-0313 archives kept per domain for `mam.retention_days`, or per
//! `mam.retention_days_by_domain`): a periodic sweep that deletes, for every account of a
//! domain with a retention, the archived messages older than the cut-off. Both backends
//! delete through `ArchiveStore::remove_before`, so the policy is the same on the embedded
//! store and on ScyllaDB.
//!
//! Owns: when sweeps run and which cut-off each domain gets.
//! Must not touch: how a backend deletes (ranges, partitions), archive contents.

use rookery_config::Mam;
use rookery_storage::{ArchiveId, Stores};
use std::time::Duration;
use tokio::sync::watch;

/// Microseconds in a day.
const DAY_MICROS: u64 = 86_400 * 1_000_000;

/// The oldest archive id a domain keeps at `now_micros`, or None when it keeps all.
pub fn cutoff(mam: &Mam, domain: &str, now_micros: u64) -> Option<ArchiveId> {
    match mam.retention_for(domain) {
        0 => None,
        days => Some(ArchiveId::first_at(now_micros.saturating_sub(u64::from(days) * DAY_MICROS))),
    }
}

/// The exclusive upper id of an operator's purge: everything, or what is older than
/// `older_than_days`.
pub fn purge_bound(older_than_days: Option<u32>) -> ArchiveId {
    match older_than_days {
        None => ArchiveId(u64::MAX),
        Some(days) => {
            ArchiveId::first_at(rookery_storage::archive::now_micros().saturating_sub(u64::from(days) * DAY_MICROS))
        }
    }
}

/// One sweep over every served domain; returns how many messages were deleted. A
/// failing user is logged and skipped so one bad partition cannot stall the rest.
pub async fn sweep(stores: &Stores, mam: &Mam, domains: &[String], now_micros: u64) -> u64 {
    let mut removed = 0;
    for domain in domains {
        let Some(before) = cutoff(mam, domain, now_micros) else { continue };
        let users = match stores.accounts.list(domain).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(event = "archive_retention_failed", domain = %domain, error = %e);
                continue;
            }
        };
        for local in users {
            let Ok(owner) = rookery_jid::BareJid::parse(&format!("{local}@{domain}")) else { continue };
            match stores.archive.remove_before(&owner, before).await {
                Ok(n) => removed += n,
                Err(e) => tracing::warn!(event = "archive_retention_failed", user = %owner, error = %e),
            }
        }
    }
    removed
}

/// Runs sweeps every `mam.retention_interval_secs` (the first a minute after start)
/// until shutdown. Returns at once when no domain has a retention.
pub async fn run(stores: Stores, mam: Mam, domains: Vec<String>, mut shutdown: watch::Receiver<bool>) {
    if domains.iter().all(|d| mam.retention_for(d) == 0) {
        return;
    }
    let mut wait = Duration::from_secs(60.min(mam.retention_interval_secs));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        let removed = sweep(&stores, &mam, &domains, rookery_storage::archive::now_micros()).await;
        tracing::info!(event = "archive_retention_sweep", removed);
        wait = Duration::from_secs(mam.retention_interval_secs);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Bytes;
    use rookery_storage::{ArchiveEntry, ArchiveQuery, ArchiveRow};

    fn row(owner: &str, micros: u64) -> ArchiveRow {
        ArchiveRow {
            owner: rookery_jid::BareJid::parse(owner).unwrap(),
            entry: ArchiveEntry {
                id: ArchiveId::first_at(micros),
                with: "x@a.example".into(),
                with_resource: String::new(),
                outgoing: false,
                stanza: Bytes::from_static(b"<message xmlns='jabber:client'><body>hi</body></message>"),
            },
        }
    }

    #[tokio::test]
    async fn sweep_applies_each_domains_retention() {
        let stores = rookery_storage::memory_stores();
        let domains = vec!["a.example".to_owned(), "b.example".to_owned(), "c.example".to_owned()];
        let mam = Mam {
            retention_days: 10,
            retention_days_by_domain: [("b.example".to_owned(), 2), ("c.example".to_owned(), 0)].into(),
            ..Mam::default()
        };
        let now = 100 * DAY_MICROS;
        for user in ["u@a.example", "u@b.example", "u@c.example"] {
            let jid = rookery_jid::BareJid::parse(user).unwrap();
            rookery_modules::create_account(&stores, &jid, "pw").await.unwrap();
            // 1, 5 and 50 days old
            let rows: Vec<_> = [99, 95, 50].iter().map(|d| row(user, d * DAY_MICROS)).collect();
            stores.archive.append(&rows).await.unwrap();
        }
        let removed = sweep(&stores, &mam, &domains, now).await;
        // a: 10 days keeps 1 and 5 days old; b: 2 days keeps 1 day old; c keeps all.
        assert_eq!(removed, 1 + 2);
        let left = |u: &'static str| {
            let stores = stores.clone();
            async move {
                let q = ArchiveQuery { limit: 10, ..Default::default() };
                let jid = rookery_jid::BareJid::parse(u).unwrap();
                stores.archive.query(&jid, &q).await.unwrap().items.len()
            }
        };
        assert_eq!(left("u@a.example").await, 2);
        assert_eq!(left("u@b.example").await, 1);
        assert_eq!(left("u@c.example").await, 3);
        // A second sweep at the same time finds nothing more.
        assert_eq!(sweep(&stores, &mam, &domains, now).await, 0);
    }

    #[test]
    fn no_retention_means_no_cutoff() {
        let mam = Mam::default();
        assert_eq!(cutoff(&mam, "a.example", 10 * DAY_MICROS), None);
        let mam = Mam { retention_days: 1, ..Mam::default() };
        assert_eq!(cutoff(&mam, "a.example", 10 * DAY_MICROS), Some(ArchiveId::first_at(9 * DAY_MICROS)));
    }
}
