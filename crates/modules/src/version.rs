//! XEP-0092: Software Version, for the server (§2, §3): name "Rookery" and the crate
//! version. The operating system is never sent: §5 asks that it can be withheld, and
//! withholding it by default gives attackers one fact less. Feature `jabber:iq:version` (§4).

use async_trait::async_trait;
use rookery_core::{
    Ctx, IqHandler, IqRequest, IqResult, IqType, Module, ModuleInfo, Registrar, Support, Target, XepSupport,
};
use rookery_stanza::ns;
use rookery_xml::Element;
use std::sync::Arc;

/// The software name the server reports.
pub const SOFTWARE_NAME: &str = "Rookery";

/// Answers `jabber:iq:version` queries to the server.
pub struct Version;

impl Module for Version {
    fn info(&self) -> ModuleInfo {
        ModuleInfo {
            depends: &[],
            name: "version",
            specs: &[XepSupport {
                spec: "XEP-0092",
                version: "1.1",
                support: Support::Full,
                note: "server only; <os/> withheld (§5)",
            }],
        }
    }

    fn register(self: Arc<Self>, r: &mut Registrar) {
        r.host_feature(ns::VERSION);
        r.iq("query", ns::VERSION, IqType::Get, &[Target::Host], self);
    }
}

#[async_trait]
impl IqHandler for Version {
    async fn handle(&self, _ctx: &Ctx, _req: IqRequest) -> IqResult {
        Ok(Some(
            Element::new("query", ns::VERSION)
                .child(Element::new("name", ns::VERSION).text(SOFTWARE_NAME))
                .child(Element::new("version", ns::VERSION).text(env!("CARGO_PKG_VERSION"))),
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testutil::*;

    #[tokio::test]
    async fn reports_name_and_version_without_os() {
        let h = Harness::new(|r| r.add(Arc::new(Version)));
        let q =
            h.get("alice@example.com/a", "example.com", "<query xmlns='jabber:iq:version'/>").await.unwrap().unwrap();
        assert_eq!(q.get_child("name", ns::VERSION).unwrap().text_content(), "Rookery");
        assert_eq!(q.get_child("version", ns::VERSION).unwrap().text_content(), env!("CARGO_PKG_VERSION"));
        assert!(q.get_child("os", ns::VERSION).is_none());
        assert!(h.features.host.contains(&ns::VERSION));
    }
}
