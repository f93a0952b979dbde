//! Opening the configured store: memory, the embedded fjall store under `data_dir`, a
//! SQLite file shared by the processes of one host, or a ScyllaDB/Cassandra cluster, and
//! the `rookery migrate` step the cluster (and SQLite) schemas need.
//!
//! Owns: the mapping from `[storage]` configuration to a backend (DESIGN §2: backends are
//! chosen in `services/` only), and the rule that a node never starts on a cluster whose
//! schema is missing or of another version.
//! Must not touch: the backends' layouts and the schema itself (each storage crate owns its
//! own), XMPP logic.

use anyhow::Context;
use rookery_config::{Config, StorageBackend};
use rookery_storage::Stores;
use rookery_storage_scylla::{MigrationReport, ScyllaConfig, ScyllaStore, replication_for};
use std::sync::Arc;
use std::time::Duration;

/// Opens the configured store. For ScyllaDB the keyspace must already hold the schema
/// version this binary expects (`rookery migrate` creates or upgrades it).
pub async fn open_stores(cfg: &Config) -> anyhow::Result<Stores> {
    Ok(match cfg.storage.backend {
        StorageBackend::Memory => rookery_storage::memory_stores(),
        StorageBackend::Embedded => {
            let dir = cfg.data_dir.join("store");
            let durability = match cfg.storage.durability {
                rookery_config::Durability::Os => rookery_storage_embedded::Durability::Os,
                rookery_config::Durability::Fsync => rookery_storage_embedded::Durability::Fsync,
            };
            let store = rookery_storage_embedded::EmbeddedStore::open(&dir, durability).with_context(|| {
                format!("cannot open the store in {} (is another rookery using it?)", dir.display())
            })?;
            rookery_storage_embedded::embedded_stores(Arc::new(store))
        }
        StorageBackend::Sqlite => {
            let path = cfg.sqlite_path();
            let durability = sqlite_durability(cfg.storage.durability);
            // Opening switches the file to WAL mode and applies pending migrations.
            let store = tokio::task::spawn_blocking(move || {
                rookery_storage_sqlite::SqliteStore::open(&path, durability)
                    .with_context(|| format!("storage.backend = \"sqlite\" ({})", path.display()))
            })
            .await??;
            rookery_storage_sqlite::sqlite_stores(Arc::new(store))
        }
        StorageBackend::Scylla => {
            // Boxed: the driver's connect future nests deep enough that every caller
            // awaiting the node's start-up inline would hit rustc's layout depth limit.
            let open: std::pin::Pin<Box<dyn Future<Output = anyhow::Result<ScyllaStore>> + Send + '_>> =
                Box::pin(async move {
                    let store = connect_scylla(cfg).await?;
                    store.check_schema().await.with_context(|| format!("ScyllaDB keyspace {}", store.keyspace()))?;
                    Ok(store)
                });
            rookery_storage_scylla::scylla_stores(Arc::new(open.await?))
        }
    })
}

fn sqlite_durability(d: rookery_config::Durability) -> rookery_storage_sqlite::Durability {
    match d {
        rookery_config::Durability::Os => rookery_storage_sqlite::Durability::Os,
        rookery_config::Durability::Fsync => rookery_storage_sqlite::Durability::Fsync,
    }
}

/// The storage crate's settings from `[storage.scylla]`.
pub fn scylla_config(cfg: &rookery_config::Scylla) -> ScyllaConfig {
    ScyllaConfig {
        nodes: cfg.nodes.clone(),
        keyspace: cfg.keyspace.clone(),
        replication: replication_for(cfg.local_dc.as_deref(), cfg.replication_factor),
        local_dc: cfg.local_dc.clone(),
        username: cfg.username.clone(),
        password: cfg.password.clone(),
        request_timeout: Duration::from_millis(cfg.request_timeout_ms),
        offline_ttl_days: cfg.offline_ttl_days,
    }
}

async fn connect_scylla(cfg: &Config) -> anyhow::Result<ScyllaStore> {
    let s = &cfg.storage.scylla;
    ScyllaStore::connect(&scylla_config(s))
        .await
        .with_context(|| format!("storage.backend = \"scylla\" ({})", s.nodes.join(", ")))
}

/// What `rookery migrate` did, for the operator.
#[derive(Debug)]
pub enum MigrateOutcome {
    /// The backend keeps no schema outside the binary.
    NothingToDo(StorageBackend),
    Scylla(MigrationReport),
    /// The SQLite file and what was applied to it.
    Sqlite(std::path::PathBuf, rookery_storage_sqlite::MigrationReport),
}

impl std::fmt::Display for MigrateOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MigrateOutcome::NothingToDo(backend) => write!(
                f,
                "storage backend \"{}\" has no schema to migrate (its layout is created when the store opens)",
                backend.as_str()
            ),
            MigrateOutcome::Scylla(r) => {
                if r.keyspace_created {
                    writeln!(f, "created keyspace {}", r.keyspace)?;
                }
                for (version, name) in &r.applied {
                    writeln!(f, "applied migration {version} ({name})")?;
                }
                if r.applied.is_empty() {
                    write!(f, "keyspace {} is up to date at schema version {}", r.keyspace, r.version)
                } else {
                    write!(f, "keyspace {} is now at schema version {}", r.keyspace, r.version)
                }
            }
            MigrateOutcome::Sqlite(path, r) => {
                for (version, name) in &r.applied {
                    writeln!(f, "applied migration {version} ({name})")?;
                }
                if r.applied.is_empty() {
                    write!(f, "SQLite database {} is up to date at schema version {}", path.display(), r.to)
                } else {
                    write!(f, "SQLite database {} is now at schema version {}", path.display(), r.to)
                }
            }
        }
    }
}

/// Creates or upgrades the cluster (or SQLite) schema; a no-op for the other backends.
pub async fn migrate(cfg: &Config) -> anyhow::Result<MigrateOutcome> {
    match cfg.storage.backend {
        StorageBackend::Memory | StorageBackend::Embedded => Ok(MigrateOutcome::NothingToDo(cfg.storage.backend)),
        StorageBackend::Scylla => {
            let store = connect_scylla(cfg).await?;
            let report = store.migrate().await.with_context(|| format!("migrating keyspace {}", store.keyspace()))?;
            Ok(MigrateOutcome::Scylla(report))
        }
        StorageBackend::Sqlite => {
            let path = cfg.sqlite_path();
            let report = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || rookery_storage_sqlite::migrate(&path)).await?
            }
            .with_context(|| format!("migrating SQLite database {}", path.display()))?;
            Ok(MigrateOutcome::Sqlite(path, report))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn scylla_settings_map_onto_the_driver_config() {
        let c = rookery_config::Scylla {
            nodes: vec!["10.0.0.1:9042".into()],
            local_dc: Some("dc1".into()),
            replication_factor: 2,
            request_timeout_ms: 1500,
            offline_ttl_days: 7,
            ..Default::default()
        };
        let s = scylla_config(&c);
        assert_eq!(s.nodes, ["10.0.0.1:9042"]);
        assert_eq!(s.keyspace, "rookery");
        assert_eq!(s.replication, replication_for(Some("dc1"), 2));
        assert_eq!(s.request_timeout, Duration::from_millis(1500));
        assert_eq!(s.offline_ttl_days, 7);
        s.validate().unwrap();
        assert_eq!(scylla_config(&rookery_config::Scylla::default()).replication, replication_for(None, 3));
    }

    #[tokio::test]
    async fn migrate_is_a_no_op_without_a_cluster() {
        for backend in [StorageBackend::Memory, StorageBackend::Embedded] {
            let mut cfg = Config::default();
            cfg.storage.backend = backend;
            let out = migrate(&cfg).await.unwrap();
            assert!(matches!(out, MigrateOutcome::NothingToDo(b) if b == backend));
            assert!(out.to_string().contains("has no schema to migrate"), "{out}");
        }
    }

    #[tokio::test]
    async fn sqlite_opens_under_data_dir_and_migrate_applies_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.storage.backend = StorageBackend::Sqlite;
        cfg.data_dir = dir.path().join("data");
        let first = migrate(&cfg).await.unwrap();
        let path = dir.path().join("data/rookery.sqlite3");
        assert_eq!(
            first.to_string(),
            format!("applied migration 1 (initial)\nSQLite database {} is now at schema version 1", path.display())
        );
        let again = migrate(&cfg).await.unwrap().to_string();
        assert_eq!(again, format!("SQLite database {} is up to date at schema version 1", path.display()));

        // Two nodes of one host share the file: what one writes, the other reads.
        let a = open_stores(&cfg).await.unwrap();
        let b = open_stores(&cfg).await.unwrap();
        let alice = rookery_jid::BareJid::parse("alice@localhost").unwrap();
        a.vcard.set(&alice, bytes::Bytes::from_static(b"<vCard/>")).await.unwrap();
        assert_eq!(b.vcard.get(&alice).await.unwrap().as_deref(), Some(&b"<vCard/>"[..]));
    }

    #[test]
    fn migrate_report_wording() {
        let created = MigrateOutcome::Scylla(MigrationReport {
            keyspace: "rookery".into(),
            keyspace_created: true,
            applied: vec![(1, "0001_initial")],
            version: 1,
        });
        assert_eq!(
            created.to_string(),
            "created keyspace rookery\napplied migration 1 (0001_initial)\nkeyspace rookery is now at schema version 1"
        );
        let current = MigrateOutcome::Scylla(MigrationReport {
            keyspace: "rookery".into(),
            keyspace_created: false,
            applied: vec![],
            version: 1,
        });
        assert_eq!(current.to_string(), "keyspace rookery is up to date at schema version 1");
    }
}
