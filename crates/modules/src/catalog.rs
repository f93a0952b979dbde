//! The modules a node runs, each built from its own typed section of the configuration
//! (`rookery_config::Config`). This is the one place that lists them: a new module is one
//! line here, plus its config section (DESIGN §3).
//!
//! Owns: which modules run and how each reads its settings.
//! Must not touch: what the modules do.

use crate::{ContactAddresses, Mam, MamConfig, OfflineStore, offline::OfflineConfig};
use rookery_config::{ArchivePolicy, Config};
use rookery_core::Registrar;
use std::sync::Arc;

/// What the node is, as far as modules care.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeInfo {
    /// This router's number in a cluster (0 on a single node); part of archive ids.
    pub node: u16,
}

/// Registers every module the configuration enables.
pub fn from_config(cfg: &Config, node: NodeInfo) -> impl FnOnce(&mut Registrar) + use<> {
    let mam = cfg.mam.enabled.then(|| mam_config(&cfg.mam, node));
    let offline = OfflineConfig { max_per_user: cfg.limits.offline_max_per_user };
    let contact = ContactAddresses::from_config(&cfg.contact);
    move |r: &mut Registrar| {
        crate::register_all(r);
        r.add(Arc::new(OfflineStore::new(offline)));
        if let Some(m) = mam {
            r.add(Arc::new(Mam::new(m)));
        }
        r.add(Arc::new(contact));
    }
}

fn mam_config(c: &rookery_config::Mam, node: NodeInfo) -> MamConfig {
    MamConfig {
        max_page: c.max_page,
        default_page: c.default_page,
        count_cap: c.count_limit,
        queries_per_sec: c.queries_per_sec,
        default_policy: archive_default(c.default_policy),
        node: node.node,
        ..MamConfig::default()
    }
}

/// The store's form of the configured default archiving policy.
pub fn archive_default(p: ArchivePolicy) -> rookery_storage::ArchiveDefault {
    match p {
        ArchivePolicy::Always => rookery_storage::ArchiveDefault::Always,
        ArchivePolicy::Never => rookery_storage::ArchiveDefault::Never,
        ArchivePolicy::Roster => rookery_storage::ArchiveDefault::Roster,
    }
}
