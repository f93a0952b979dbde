//! The `rookery` binary's library: wires configuration, storage, router and edge into a
//! running node (`serve`: edge and router in one process on embedded defaults), and the
//! local admin HTTP API used by `rookery user …` against a running server.
//!
//! Owns: the choice of backends and transports (DESIGN §2: only `services/` chooses),
//! start-up and graceful shutdown, data-directory secrets (admin token, SCRAM fake-salt
//! secret), the admin API.
//! Must not touch: XMPP semantics (router), stream handling (edge).

pub mod admin;
pub mod cluster;
pub mod node;
pub mod retention;
pub mod stores;

pub use node::{Server, start};

/// The supported-specifications table (docs/compliance.md), generated from what the
/// router and the modules declare, so what we claim is what the code registers.
pub fn compliance() -> Result<String, rookery_core::SetupError> {
    let cfg = rookery_config::Config::default();
    let router = rookery_router::LocalRouter::new(
        node::router_config(&cfg),
        std::sync::Arc::new(rookery_core::MemoryRegistry::new()),
        std::sync::Arc::new(rookery_core::LocalHub::new()),
        rookery_storage::memory_stores(),
        node::modules(&cfg, 0),
    )?;
    let mut infos = router.features().modules.clone();
    infos.push(rookery_edge::SPECS);
    Ok(rookery_modules::compliance_markdown(&infos))
}
