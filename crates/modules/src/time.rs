//! XEP-0202: Entity Time, for the server (§2, §3): `<tzo>+00:00</tzo>` and the current
//! UTC time in the XEP-0082 dateTime profile (`CCYY-MM-DDThh:mm:ssZ`). The server always
//! reports UTC, so its local zone never leaks. Feature `urn:xmpp:time` (§4).

use async_trait::async_trait;
use rookery_core::{
    Ctx, IqHandler, IqRequest, IqResult, IqType, Module, ModuleInfo, Registrar, Support, Target, XepSupport,
};
use rookery_stanza::ns;
use rookery_xml::Element;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Answers `urn:xmpp:time` queries to the server.
pub struct Time;

impl Module for Time {
    fn info(&self) -> ModuleInfo {
        ModuleInfo {
            depends: &[],
            name: "time",
            specs: &[XepSupport {
                spec: "XEP-0202",
                version: "2.0",
                support: Support::Full,
                note: "server only; always UTC",
            }],
        }
    }

    fn register(self: Arc<Self>, r: &mut Registrar) {
        r.host_feature(ns::TIME);
        r.iq("time", ns::TIME, IqType::Get, &[Target::Host], self);
    }
}

#[async_trait]
impl IqHandler for Time {
    async fn handle(&self, _ctx: &Ctx, _req: IqRequest) -> IqResult {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Ok(Some(
            Element::new("time", ns::TIME)
                .child(Element::new("tzo", ns::TIME).text("+00:00"))
                .child(Element::new("utc", ns::TIME).text(rookery_stanza::datetime(now))),
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testutil::*;

    #[tokio::test]
    async fn answers_with_utc_and_zero_offset() {
        let h = Harness::new(|r| r.add(Arc::new(Time)));
        let t = h.get("alice@example.com/a", "example.com", "<time xmlns='urn:xmpp:time'/>").await.unwrap().unwrap();
        assert_eq!(t.get_child("tzo", ns::TIME).unwrap().text_content(), "+00:00");
        let utc = t.get_child("utc", ns::TIME).unwrap().text_content();
        assert_eq!(utc.len(), 20);
        assert!(utc.ends_with('Z') && utc.as_bytes()[10] == b'T');
        assert!(h.features.host.contains(&ns::TIME));
    }
}
