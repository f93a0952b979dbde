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
                .child(Element::new("utc", ns::TIME).text(rfc3339_utc(now))),
        ))
    }
}

/// Formats seconds since the Unix epoch as `CCYY-MM-DDThh:mm:ssZ` (XEP-0082 §3.3,
/// RFC 3339 §5.6).
pub fn rfc3339_utc(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`, restricted to non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testutil::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        // XEP-0202 §3 example instant.
        assert_eq!(rfc3339_utc(1_166_551_115), "2006-12-19T17:58:35Z");
        // Leap day and end of a leap year.
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_735_689_599), "2024-12-31T23:59:59Z");
        assert_eq!(rfc3339_utc(4_107_542_400), "2100-03-01T00:00:00Z");
    }

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
