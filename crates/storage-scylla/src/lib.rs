//! ScyllaDB (or Apache Cassandra) backend: every `rookery-storage` trait on one keyspace,
//! for the clustered deployment where several routers share the data.
//!
//! Owns: the keyspace layout (tables in `src/migrations/`, one numbered CQL file per schema
//! version), schema migrations and the schema-version check, the prepared statements,
//! and the consistency choices (which writes are lightweight transactions and why).
//! Must not touch: XML (stanzas and vCards are opaque blobs), XMPP rules beyond the trait
//! contracts, and TLS: the driver is built without its `rustls-023` feature (it would pull a
//! second crypto provider into the binary), so traffic to the cluster is protected by the
//! network (service mesh mTLS, private network), as docs/storage.md explains.
//!
//! Layout, partitioning and the reasons behind them are documented table by table in
//! docs/storage.md; the short version:
//!
//! - accounts are partitioned by (domain, bucket) so a domain is listed without a table scan,
//!   and written only with lightweight transactions (create must never overwrite);
//! - a roster is one partition whose static `version` cell is compare-and-set together with
//!   the item in one conditional batch, so versions increase even with concurrent writers;
//! - offline messages and archive entries are ordered by time-ordered 64-bit ids;
//! - the archive is partitioned by (owner, week), with a bucket list per owner and a
//!   body-less `with` index, so every query reads only the partitions it needs.
//!
//! Specs whose data lives here: RFC 6121 §2 (rosters), XEP-0237 (roster versions),
//! XEP-0160 (offline), XEP-0054, XEP-0191, XEP-0012, XEP-0313 and XEP-0359 (archive).

use futures::TryStreamExt;
use rookery_storage::archive::ArchiveIdGen;
use rookery_storage::{StoreError, Stores};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError, WriteType};
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlTimestamp, CqlValue, Row};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub mod archive;
mod archive_store;
pub mod codec;
pub mod schema;
mod statements;
mod stores;

pub use schema::{Replication, SCHEMA_VERSION, SchemaProblem};
use statements::Statements;

/// Connection and keyspace settings.
#[derive(Clone, PartialEq, Eq)]
pub struct ScyllaConfig {
    /// Contact points, `host:port` (the driver discovers the rest of the cluster).
    pub nodes: Vec<String>,
    /// Keyspace holding every table; a plain CQL identifier.
    pub keyspace: String,
    /// Replication used when `migrate` creates the keyspace (an existing keyspace is left
    /// as it is).
    pub replication: Replication,
    /// Data center whose nodes serve requests (`LOCAL_QUORUM`, `LOCAL_SERIAL`); None: the
    /// cluster is treated as one data center (`QUORUM`, `SERIAL`).
    pub local_dc: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Per-request timeout (also the connection timeout).
    pub request_timeout: Duration,
    /// Offline messages expire after this many days; 0 keeps them until delivered.
    pub offline_ttl_days: u32,
}

impl std::fmt::Debug for ScyllaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaConfig")
            .field("nodes", &self.nodes)
            .field("keyspace", &self.keyspace)
            .field("replication", &self.replication)
            .field("local_dc", &self.local_dc)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("request_timeout", &self.request_timeout)
            .field("offline_ttl_days", &self.offline_ttl_days)
            .finish()
    }
}

impl ScyllaConfig {
    /// Defaults for everything but the contact points: keyspace `rookery`, replication
    /// factor 3, no data center, 5 s timeout, offline messages kept until delivered.
    pub fn new(nodes: Vec<String>) -> Self {
        ScyllaConfig {
            nodes,
            keyspace: "rookery".to_owned(),
            replication: Replication::Simple(3),
            local_dc: None,
            username: None,
            password: None,
            request_timeout: Duration::from_secs(5),
            offline_ttl_days: 0,
        }
    }

    /// Checks what ends up in CQL text or the driver's builder.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.nodes.is_empty() {
            return bad("no contact points (nodes) given".to_owned());
        }
        if let Some(why) = schema::identifier_error(&self.keyspace) {
            return bad(format!("keyspace {:?} is not a valid name: {why}", self.keyspace));
        }
        match &self.replication {
            Replication::Simple(0) => return bad("replication factor must be at least 1".to_owned()),
            Replication::Simple(_) => {}
            Replication::Network(dcs) => {
                if dcs.is_empty() {
                    return bad("NetworkTopologyStrategy needs at least one data center".to_owned());
                }
                for (dc, rf) in dcs {
                    if let Some(why) = schema::datacenter_error(dc) {
                        return bad(format!("data center {dc:?} is not a valid name: {why}"));
                    }
                    if *rf == 0 {
                        return bad(format!("replication factor of {dc} must be at least 1"));
                    }
                }
            }
        }
        if let Some(dc) = &self.local_dc
            && let Some(why) = schema::datacenter_error(dc)
        {
            return bad(format!("local data center {dc:?} is not a valid name: {why}"));
        }
        if self.request_timeout.is_zero() {
            return bad("request timeout must be greater than 0".to_owned());
        }
        if self.offline_ttl_secs().is_none() {
            return bad(format!("offline TTL of {} days is too long", self.offline_ttl_days));
        }
        Ok(())
    }

    /// The offline TTL in seconds as CQL takes it (0 = none); None when it overflows.
    fn offline_ttl_secs(&self) -> Option<i32> {
        i32::try_from(u64::from(self.offline_ttl_days) * 86_400).ok()
    }
}

/// Errors of connecting, migrating and checking the schema. Store operations return
/// [`StoreError`] like every backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid ScyllaDB settings: {0}")]
    Config(String),
    #[error("cannot connect to ScyllaDB at {nodes}: {message}")]
    Connect { nodes: String, message: String },
    #[error("{0}")]
    Schema(#[from] SchemaProblem),
    #[error("{what}: {message}")]
    Query { what: String, message: String },
}

impl From<Error> for StoreError {
    fn from(e: Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

fn query_error(what: impl Into<String>) -> impl FnOnce(StoreError) -> Error {
    let what = what.into();
    move |e| Error::Query { what, message: e.to_string() }
}

/// Maps any driver error to a [`StoreError`] naming the operation.
pub(crate) fn backend<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> StoreError {
    move |e| StoreError::Backend(format!("{what}: {e}"))
}

/// What `migrate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    pub keyspace: String,
    /// The keyspace did not exist and was created.
    pub keyspace_created: bool,
    /// Migrations applied by this run, in order: (version, file name).
    pub applied: Vec<(u32, &'static str)>,
    /// Schema version after the run.
    pub version: u32,
}

/// The ScyllaDB-backed store; implements every store trait.
pub struct ScyllaStore {
    session: Session,
    keyspace: String,
    replication: Replication,
    offline_ttl_secs: i32,
    /// Prepared at connect when the schema is current, otherwise by `migrate` /
    /// `check_schema`; store operations before that fail with "run `rookery migrate`".
    stmts: OnceLock<Statements>,
    /// Offline seqs: time-ordered ids, strictly increasing within this process.
    offline_ids: ArchiveIdGen,
}

/// A [`Stores`] whose members all share `store`.
pub fn scylla_stores(store: Arc<ScyllaStore>) -> Stores {
    Stores {
        accounts: store.clone(),
        roster: store.clone(),
        offline: store.clone(),
        vcard: store.clone(),
        blocking: store.clone(),
        last: store.clone(),
        archive: store,
    }
}

/// A random u64 from the standard library's per-process hash keys (no RNG dependency;
/// used for jitter and the offline id node number, neither of which is secret).
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

impl ScyllaStore {
    /// Connects to the cluster. When the keyspace holds the schema this binary expects,
    /// the statements are prepared right away; otherwise only [`ScyllaStore::migrate`] and
    /// [`ScyllaStore::check_schema`] are usable until a migration ran.
    pub async fn connect(cfg: &ScyllaConfig) -> Result<ScyllaStore> {
        cfg.validate()?;
        let (consistency, serial) = match cfg.local_dc {
            Some(_) => (Consistency::LocalQuorum, SerialConsistency::LocalSerial),
            None => (Consistency::Quorum, SerialConsistency::Serial),
        };
        let mut policy = DefaultPolicy::builder().token_aware(true);
        if let Some(dc) = &cfg.local_dc {
            policy = policy.prefer_datacenter(dc.clone()).permit_dc_failover(false);
        }
        let profile = ExecutionProfile::builder()
            .consistency(consistency)
            .serial_consistency(Some(serial))
            .request_timeout(Some(cfg.request_timeout))
            .load_balancing_policy(policy.build())
            .build();
        let mut builder = SessionBuilder::new()
            .known_nodes(&cfg.nodes)
            .default_execution_profile_handle(profile.into_handle())
            .connection_timeout(cfg.request_timeout)
            .keyspaces_to_fetch([cfg.keyspace.clone()]);
        if let Some(user) = &cfg.username {
            builder = builder.user(user, cfg.password.clone().unwrap_or_default());
        }
        let session =
            builder.build().await.map_err(|e| Error::Connect { nodes: cfg.nodes.join(","), message: e.to_string() })?;
        let store = ScyllaStore {
            session,
            keyspace: cfg.keyspace.clone(),
            replication: cfg.replication.clone(),
            offline_ttl_secs: cfg.offline_ttl_secs().unwrap_or(0),
            stmts: OnceLock::new(),
            // Only the low 10 bits are used: two routers collide only if they draw the same
            // number and push to the same user in the same microsecond.
            offline_ids: ArchiveIdGen::new(u16::try_from(random_u64() & 0x3ff).unwrap_or(0)),
        };
        match store.schema_state().await.map(|s| schema::check(&store.keyspace, &s)) {
            Ok(Ok(())) => store.ensure_prepared().await?,
            Ok(Err(problem)) => {
                tracing::info!(event = "scylla_schema_not_ready", keyspace = %store.keyspace, problem = %problem);
            }
            Err(e) => return Err(e),
        }
        tracing::info!(event = "scylla_connected", nodes = ?cfg.nodes, keyspace = %cfg.keyspace);
        Ok(store)
    }

    /// The driver session (administration and tests).
    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    /// Fails unless the keyspace holds exactly the schema version this binary expects;
    /// on success the statements are prepared.
    pub async fn check_schema(&self) -> Result<()> {
        let state = self.schema_state().await?;
        schema::check(&self.keyspace, &state)?;
        self.ensure_prepared().await
    }

    /// Creates the keyspace if needed and applies pending migrations in order. Safe to run
    /// again after an interruption, and a no-op when the schema is current. Run it from one
    /// place at a time (a deploy job), not from every pod at start-up.
    pub async fn migrate(&self) -> Result<MigrationReport> {
        let ks = self.keyspace.clone();
        let keyspace_created = if self.keyspace_exists().await? {
            false
        } else {
            self.create_keyspace().await?;
            true
        };
        self.ddl(&schema::schema_version_table(&ks)).await?;
        let applied_before = self.applied_versions().await?;
        let mut applied = Vec::new();
        for m in schema::pending(&applied_before)? {
            tracing::info!(event = "scylla_migration_started", keyspace = %ks, version = m.version, name = m.name);
            for stmt in schema::statements(m.cql, &ks) {
                self.ddl(&stmt).await?;
            }
            let now_ms = i64::try_from(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis()),
            )
            .unwrap_or(i64::MAX);
            let version = i32::try_from(m.version).unwrap_or(i32::MAX);
            self.session
                .query_unpaged(
                    format!(
                        "INSERT INTO {ks}.schema_version (component, version, name, applied_at) VALUES (?, ?, ?, ?)"
                    ),
                    (schema::SCHEMA_COMPONENT, version, m.name, CqlTimestamp(now_ms)),
                )
                .await
                .map_err(|e| Error::Query {
                    what: format!("recording migration {}", m.name),
                    message: e.to_string(),
                })?;
            applied.push((m.version, m.name));
        }
        self.session
            .await_schema_agreement()
            .await
            .map_err(|e| Error::Query { what: "waiting for schema agreement".into(), message: e.to_string() })?;
        self.check_schema().await?;
        Ok(MigrationReport { keyspace: ks, keyspace_created, applied, version: SCHEMA_VERSION })
    }

    async fn ddl(&self, cql: &str) -> Result<()> {
        self.session
            .query_unpaged(cql, &[])
            .await
            .map(|_| ())
            .map_err(|e| Error::Query { what: format!("running `{cql}`"), message: e.to_string() })
    }

    async fn keyspace_exists(&self) -> Result<bool> {
        let rows: Vec<(String,)> = self
            .query_rows("SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = ?", (&self.keyspace,))
            .await
            .map_err(query_error("reading system_schema.keyspaces"))?;
        Ok(!rows.is_empty())
    }

    async fn create_keyspace(&self) -> Result<()> {
        // ScyllaDB releases that put new keyspaces on tablets by default have this table;
        // Cassandra does not (and would reject the option).
        let scylla_with_tablets = self
            .session
            .query_unpaged("SELECT keyspace_name FROM system_schema.scylla_keyspaces LIMIT 1", &[])
            .await
            .is_ok();
        if scylla_with_tablets {
            let cql = schema::create_keyspace(&self.keyspace, &self.replication, true);
            match self.ddl(&cql).await {
                Ok(()) => return Ok(()),
                Err(e) => tracing::warn!(
                    event = "scylla_keyspace_tablets_option_refused",
                    keyspace = %self.keyspace,
                    error = %e,
                    "creating the keyspace without disabling tablets; lightweight transactions need a vnode keyspace"
                ),
            }
        }
        self.ddl(&schema::create_keyspace(&self.keyspace, &self.replication, false)).await
    }

    async fn applied_versions(&self) -> Result<Vec<u32>> {
        let rows: Vec<(i32,)> = self
            .query_rows(
                &format!("SELECT version FROM {}.schema_version WHERE component = ?", self.keyspace),
                (schema::SCHEMA_COMPONENT,),
            )
            .await
            .map_err(query_error("reading schema_version"))?;
        Ok(rows.into_iter().filter_map(|(v,)| u32::try_from(v).ok()).collect())
    }

    async fn schema_state(&self) -> Result<schema::SchemaState> {
        if !self.keyspace_exists().await? {
            return Ok(schema::SchemaState::NoKeyspace);
        }
        let tables: Vec<(String,)> = self
            .query_rows(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ? AND table_name = ?",
                (&self.keyspace, "schema_version"),
            )
            .await
            .map_err(query_error("reading system_schema.tables"))?;
        if tables.is_empty() {
            return Ok(schema::SchemaState::NoVersionTable);
        }
        Ok(schema::SchemaState::Applied(self.applied_versions().await?))
    }

    async fn ensure_prepared(&self) -> Result<()> {
        if self.stmts.get().is_some() {
            return Ok(());
        }
        let stmts = Statements::prepare(&self.session, &self.keyspace)
            .await
            .map_err(|(cql, e)| Error::Query { what: format!("preparing `{cql}`"), message: e.to_string() })?;
        // Another task may have prepared concurrently; either set is equivalent.
        let _ = self.stmts.set(stmts);
        Ok(())
    }

    pub(crate) fn stmts(&self) -> rookery_storage::Result<&Statements> {
        self.stmts.get().ok_or_else(|| {
            StoreError::Backend(format!("keyspace {} has no usable schema: run `rookery migrate`", self.keyspace))
        })
    }

    /// All rows of an unprepared query (system tables, schema_version), paged.
    async fn query_rows<R>(&self, cql: &str, values: impl SerializeRow) -> rookery_storage::Result<Vec<R>>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm> + Send + 'static,
    {
        let pager = self.session.query_iter(cql, values).await.map_err(backend("query"))?;
        pager.rows_stream::<R>().map_err(backend("row type"))?.try_collect().await.map_err(backend("reading rows"))
    }

    /// All rows of a prepared statement, paged.
    pub(crate) async fn rows<R>(
        &self,
        what: &'static str,
        stmt: &PreparedStatement,
        values: impl SerializeRow,
    ) -> rookery_storage::Result<Vec<R>>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm> + Send + 'static,
    {
        let pager = self.session.execute_iter(stmt.clone(), values).await.map_err(backend(what))?;
        pager.rows_stream::<R>().map_err(backend(what))?.try_collect().await.map_err(backend(what))
    }

    /// The first row of a prepared statement, if any.
    pub(crate) async fn first<R>(
        &self,
        what: &'static str,
        stmt: &PreparedStatement,
        values: impl SerializeRow,
    ) -> rookery_storage::Result<Option<R>>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let result = self.session.execute_unpaged(stmt, values).await.map_err(backend(what))?;
        let rows = result.into_rows_result().map_err(backend(what))?;
        rows.maybe_first_row::<R>().map_err(backend(what))
    }

    /// Runs a statement that returns no rows.
    pub(crate) async fn exec(
        &self,
        what: &'static str,
        stmt: &PreparedStatement,
        values: impl SerializeRow,
    ) -> rookery_storage::Result<()> {
        self.session.execute_unpaged(stmt, values).await.map(|_| ()).map_err(backend(what))
    }
}

/// The `[applied]` column of a lightweight transaction's result. ScyllaDB always returns the
/// old row next to it (Cassandra only on failure), so the column is found by name.
pub(crate) fn applied(what: &'static str, result: QueryResult) -> rookery_storage::Result<bool> {
    let rows = result.into_rows_result().map_err(backend(what))?;
    let index = rows
        .column_specs()
        .get_by_name("[applied]")
        .map(|(i, _)| i)
        .ok_or_else(|| StoreError::Backend(format!("{what}: no [applied] column in a conditional result")))?;
    let row: Row = rows.first_row().map_err(backend(what))?;
    match row.columns.get(index) {
        Some(Some(CqlValue::Boolean(b))) => Ok(*b),
        other => Err(StoreError::Backend(format!("{what}: [applied] is {other:?}"))),
    }
}

/// A lightweight transaction lost a Paxos round to a concurrent one (the outcome is
/// unknown); callers that re-read and retry may continue.
pub(crate) fn cas_contention(e: &ExecutionError) -> bool {
    matches!(
        e,
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::WriteTimeout { write_type: WriteType::Cas, .. },
            _
        ))
    )
}

/// Sleeps a jittered, growing delay before retry `attempt` of a contended transaction.
pub(crate) async fn backoff(attempt: u32) {
    let ceiling = 2u64 << attempt.min(6);
    tokio::time::sleep(Duration::from_millis(1 + random_u64() % ceiling)).await;
}

/// Replication from the configuration's shape: a data center name means
/// `NetworkTopologyStrategy` with `rf` replicas there, none means `SimpleStrategy`.
pub fn replication_for(local_dc: Option<&str>, rf: u32) -> Replication {
    match local_dc {
        Some(dc) => Replication::Network(BTreeMap::from([(dc.to_owned(), rf)])),
        None => Replication::Simple(rf),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn config_validation() {
        let ok = ScyllaConfig::new(vec!["127.0.0.1:9042".into()]);
        ok.validate().unwrap();
        let check = |edit: fn(&mut ScyllaConfig), needle: &str| {
            let mut c = ok.clone();
            edit(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        };
        check(|c| c.nodes.clear(), "no contact points");
        check(|c| c.keyspace = "rookery; DROP KEYSPACE x".into(), "not a valid name");
        check(|c| c.replication = Replication::Simple(0), "at least 1");
        check(|c| c.replication = Replication::Network(BTreeMap::new()), "at least one data center");
        check(|c| c.replication = replication_for(Some("dc'1"), 3), "not a valid name");
        check(|c| c.local_dc = Some("a b".into()), "local data center");
        check(|c| c.request_timeout = Duration::ZERO, "timeout");
        check(|c| c.offline_ttl_days = u32::MAX, "too long");
    }

    #[test]
    fn ttl_and_replication_from_settings() {
        let mut c = ScyllaConfig::new(vec!["n:9042".into()]);
        assert_eq!(c.offline_ttl_secs(), Some(0));
        c.offline_ttl_days = 30;
        assert_eq!(c.offline_ttl_secs(), Some(30 * 86_400));
        assert_eq!(replication_for(None, 3), Replication::Simple(3));
        assert_eq!(replication_for(Some("dc1"), 2), Replication::Network(BTreeMap::from([("dc1".to_owned(), 2)])));
    }

    #[test]
    fn debug_output_hides_the_password() {
        let mut c = ScyllaConfig::new(vec!["n:9042".into()]);
        c.username = Some("rookery".into());
        c.password = Some("hunter2".into());
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("<redacted>") && s.contains("rookery"), "{s}");
    }
}
