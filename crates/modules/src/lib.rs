//! The XEP modules the router runs: each implements [`rookery_core::Module`], declares the
//! specifications it covers (`ModuleInfo`, from which docs/compliance.md is generated)
//! and the modules it needs, and registers its IQ handlers, hook handlers and disco
//! features once, at start-up (DESIGN §3). `catalog` lists which modules a node runs,
//! each built from its own configuration section.
//!
//! Owns: every feature beyond the RFC 6120/6121 core: service discovery (XEP-0030) with
//! extended information (XEP-0128), contact addresses (XEP-0157), ping (XEP-0199),
//! software version (XEP-0092), entity time (XEP-0202), last activity (XEP-0012),
//! vcard-temp (XEP-0054), in-band registration (XEP-0077), blocking (XEP-0191, protocol and
//! enforcement), message carbons (XEP-0280), offline storage (XEP-0160), stanza-ids
//! (XEP-0359) and message archives (XEP-0313 writing and queries, XEP-0441 preferences),
//! plus account creation helpers shared with the admin tools and a small data forms
//! reader/writer (XEP-0004) the modules share.
//! Must not touch: sockets, concrete storage backends, the router's internals. Modules see
//! only the `rookery_storage` traits, the hook events and the `ServerApi`.

pub mod accounts;
pub mod blocking;
pub mod carbons;
pub mod catalog;
pub mod contact;
pub mod disco;
pub mod forms;
pub mod last;
pub mod mam;
pub mod offline;
pub mod ping;
pub mod register;
pub mod stanza_id;
pub mod time;
pub mod vcard;
pub mod version;

mod util;

#[cfg(test)]
mod testutil;

pub use accounts::{AccountError, create_account, set_password};
pub use blocking::Blocking;
pub use carbons::Carbons;
pub use contact::ContactAddresses;
pub use disco::Disco;
pub use last::LastActivity;
pub use mam::{Mam, MamConfig};
pub use offline::OfflineStore;
pub use ping::Ping;
pub use register::Register;
pub use stanza_id::StanzaIds;
pub use time::Time;
pub use vcard::Vcard;
pub use version::Version;

use rookery_core::{ModuleInfo, Registrar, Support};
use std::sync::Arc;

/// Adds every module of this crate that needs no settings to `r` (`catalog::from_config`
/// adds the others from the configuration).
pub fn register_all(r: &mut Registrar) {
    r.add(Arc::new(Disco));
    r.add(Arc::new(Ping));
    r.add(Arc::new(Version));
    r.add(Arc::new(Time));
    r.add(Arc::new(LastActivity));
    r.add(Arc::new(Vcard));
    r.add(Arc::new(Register));
    r.add(Arc::new(Blocking::new()));
    r.add(Arc::new(Carbons));
    r.add(Arc::new(StanzaIds));
}

/// docs/compliance.md from the modules' declarations: one table row per specification and
/// module, sorted by specification (RFCs before XEPs, then by number), then module name.
pub fn compliance_markdown(infos: &[ModuleInfo]) -> String {
    let mut rows: Vec<(&str, &str, &str, &str, &str)> = infos
        .iter()
        .flat_map(|m| {
            m.specs.iter().map(move |s| {
                let support = match s.support {
                    Support::Full => "full",
                    Support::Partial => "partial",
                };
                (s.spec, s.version, support, m.name, s.note)
            })
        })
        .collect();
    rows.sort_by(|a, b| spec_key(a.0).cmp(&spec_key(b.0)).then(a.3.cmp(b.3)));

    let mut out = String::from(
        "# Compliance\n\n\
         Generated from the `ModuleInfo` each module declares; do not edit by hand.\n\n\
         | Specification | Version | Support | Module | Notes |\n\
         |---|---|---|---|---|\n",
    );
    for (spec, version, support, module, note) in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            cell(spec),
            cell(version),
            support,
            cell(module),
            cell(note)
        ));
    }
    out
}

/// Sort key: the family ("RFC", "XEP", ...) then the number numerically, so "RFC 6120"
/// precedes "RFC 6121" and "XEP-0030" precedes "XEP-0199".
fn spec_key(spec: &str) -> (String, u64, String) {
    let split = spec.find(|c: char| c.is_ascii_digit()).unwrap_or(spec.len());
    let (family, rest) = spec.split_at(split);
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let family = family.trim_end_matches([' ', '-']).to_owned();
    (family, digits.parse().unwrap_or(u64::MAX), spec.to_owned())
}

/// Escapes a table cell: pipes would split it, newlines would end the row.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rookery_core::XepSupport;
    use rookery_stanza::ns;

    #[test]
    fn register_all_advertises_every_feature() {
        let mut r = Registrar::new();
        register_all(&mut r);
        let (dispatch, features) = r.build();
        for var in [
            ns::DISCO_INFO,
            ns::DISCO_ITEMS,
            ns::PING,
            ns::VERSION,
            ns::TIME,
            ns::LAST,
            ns::VCARD,
            ns::REGISTER,
            ns::BLOCKING,
        ] {
            assert!(features.host.contains(&var), "{var}");
            assert!(dispatch.knows_namespace(var), "{var}");
        }
        for var in [ns::DISCO_INFO, ns::LAST, ns::BLOCKING] {
            assert!(features.account.contains(&var), "{var}");
        }
        assert_eq!(features.modules.len(), 10);
        assert_eq!(features.identities.len(), 1);
    }

    #[test]
    fn compliance_table_is_sorted_and_escaped() {
        let infos = [
            ModuleInfo {
                depends: &[],
                name: "b",
                specs: &[XepSupport { spec: "XEP-0199", version: "2.0.1", support: Support::Full, note: "" }],
            },
            ModuleInfo {
                depends: &[],
                name: "a",
                specs: &[
                    XepSupport { spec: "XEP-0030", version: "2.5.0", support: Support::Partial, note: "a|b" },
                    XepSupport { spec: "RFC 6121", version: "-", support: Support::Full, note: "x\ny" },
                ],
            },
        ];
        let md = compliance_markdown(&infos);
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| Spec")).collect();
        assert_eq!(
            rows,
            [
                "| RFC 6121 | - | full | a | x y |",
                "| XEP-0030 | 2.5.0 | partial | a | a\\|b |",
                "| XEP-0199 | 2.0.1 | full | b |  |",
            ]
        );
    }

    #[test]
    fn compliance_of_all_modules() {
        let mut r = Registrar::new();
        register_all(&mut r);
        let (_, features) = r.build();
        let md = compliance_markdown(&features.modules);
        let specs: Vec<&str> = md
            .lines()
            .skip_while(|l| !l.starts_with("|---"))
            .skip(1)
            .map(|l| l.split(" | ").next().unwrap().trim_start_matches("| "))
            .collect();
        assert_eq!(
            specs,
            [
                "XEP-0012", "XEP-0030", "XEP-0054", "XEP-0077", "XEP-0092", "XEP-0191", "XEP-0199", "XEP-0202",
                "XEP-0280", "XEP-0359"
            ]
        );
    }
}
