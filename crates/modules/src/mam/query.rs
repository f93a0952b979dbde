//! Reading a MAM query (XEP-0313 §4): the optional data form (§4.1) and RSM `<set/>`
//! (XEP-0059 §2, as profiled by XEP-0313 §4.3) and `<flip-page/>` (§4.3.4), reduced to
//! [`Request`]: id bounds, a `with` filter, an id list and a page request.
//!
//! Owns: field validation and the error each bad field gets, XEP-0082 DateTime parsing.
//! Must not touch: the store, the wire form of results (see `results.rs`).
//!
//! Error mapping, following the specs where they say something:
//! - a field the server does not know: `feature-not-implemented` (§4.1.5);
//! - an id in `before-id`, `after-id`, `ids` or RSM `<after/>`/`<before/>` that is not in
//!   the archive: `item-not-found` (§4.1.3, §4.3.2) (ids that cannot even be parsed are
//!   refused here, the others by the caller once it has asked the store);
//! - RSM `<index/>`: `feature-not-implemented` (XEP-0059 §2.6 allows it);
//! - anything malformed (form type, `FORM_TYPE`, dates, JIDs, `max`, several values for a
//!   single-valued field): `bad-request`.
//!
//! Every error text names the field, so a client developer can see what to fix.

use super::Version;
use crate::forms::{DataForm, FORM_TYPE, FormError, FormKind};
use rookery_jid::Jid;
use rookery_stanza::{Condition, StanzaError};
use rookery_storage::{ArchiveId, WithFilter};
use rookery_xml::Element;

pub(super) use rookery_stanza::ns::RSM;

/// A parsed query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Request {
    pub queryid: Option<String>,
    pub with: Option<WithFilter>,
    /// Exclusive lower bound from `start` and `after-id`.
    pub after: Option<ArchiveId>,
    /// Exclusive upper bound from `end` and `before-id`.
    pub before: Option<ArchiveId>,
    pub ids: Option<Vec<ArchiveId>>,
    /// RSM `<max/>` as given.
    pub max: Option<usize>,
    /// RSM `<after/>`.
    pub rsm_after: Option<ArchiveId>,
    /// RSM `<before/>`: `Some(None)` when empty (the last page, XEP-0059 §2.5).
    pub rsm_before: Option<Option<ArchiveId>>,
    pub flip: bool,
    /// Ids the client named that must exist in the archive, with the field that named
    /// them (§4.1.3, §4.3.2).
    pub must_exist: Vec<(ArchiveId, IdField)>,
}

/// The fields and RSM elements that carry archive ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IdField {
    AfterId,
    BeforeId,
    Ids,
    RsmAfter,
    RsmBefore,
}

impl IdField {
    pub fn not_found(self) -> StanzaError {
        let text = match self {
            IdField::AfterId => "after-id: no message with this id in the archive",
            IdField::BeforeId => "before-id: no message with this id in the archive",
            IdField::Ids => "ids: no message with this id in the archive",
            IdField::RsmAfter => "RSM after: no message with this id in the archive",
            IdField::RsmBefore => "RSM before: no message with this id in the archive",
        };
        StanzaError::new(Condition::ItemNotFound).with_text(text)
    }
}

fn bad(text: &'static str) -> StanzaError {
    StanzaError::new(Condition::BadRequest).with_text(text)
}

/// Parses `<query/>` (already known to be in `version`'s namespace).
pub(super) fn parse(query: &Element, version: Version) -> Result<Request, StanzaError> {
    let mut req = Request { queryid: query.get_attr("queryid").map(str::to_owned), ..Request::default() };
    if let Some(x) = query.elements().find(|e| e.ns == rookery_stanza::ns::DATA_FORMS) {
        apply_form(&mut req, x, version)?;
    }
    if let Some(set) = query.get_child("set", RSM) {
        apply_rsm(&mut req, set)?;
    }
    // Flipped pages came with the #extended feature set (§4.3.4, §7), which only the
    // mam:2 namespace advertises.
    req.flip = version == Version::V2 && query.get_child("flip-page", version.ns()).is_some();
    Ok(req)
}

fn apply_form(req: &mut Request, x: &Element, version: Version) -> Result<(), StanzaError> {
    let form = DataForm::parse(x).map_err(|e| match e {
        FormError::NotAForm => bad("x: not a data form"),
        FormError::BadFormType => bad("x: the data form type must be 'submit'"),
        FormError::MissingVar => bad("x: a form field has no var"),
        FormError::DuplicateVar(_) => bad("x: a form field appears more than once"),
        FormError::MultipleValues(var) => several_values(&var),
    })?;
    if form.kind != FormKind::Submit {
        return Err(bad("x: the data form type must be 'submit'"));
    }
    for field in &form.fields {
        let value = || single(field);
        match field.var.as_str() {
            FORM_TYPE => {
                if form.form_type() != Some(version.ns()) {
                    return Err(bad(match version {
                        Version::V2 => "FORM_TYPE: must be urn:xmpp:mam:2",
                        Version::V1 => "FORM_TYPE: must be urn:xmpp:mam:1",
                    }));
                }
            }
            "with" => {
                if let Some(v) = value()? {
                    let jid = Jid::parse(v).map_err(|_| bad("with: not a valid JID"))?;
                    let resource = jid.resource().map(str::to_owned);
                    req.with = Some(WithFilter { bare: jid.bare_str().to_owned(), resource });
                }
            }
            "start" => {
                if let Some(v) = value()? {
                    let micros = parse_datetime(v).ok_or(bad("start: not a XEP-0082 DateTime"))?;
                    // Inclusive: everything minted at or after `start`.
                    if let Ok(m) = u64::try_from(micros)
                        && let Some(prev) = ArchiveId::first_at(m).0.checked_sub(1)
                    {
                        req.after = max_bound(req.after, ArchiveId(prev));
                    }
                }
            }
            "end" => {
                if let Some(v) = value()? {
                    let micros = parse_datetime(v).ok_or(bad("end: not a XEP-0082 DateTime"))?;
                    // Inclusive: everything minted at or before `end`; before 1970 nothing.
                    let bound = match u64::try_from(micros) {
                        Ok(m) => ArchiveId::last_at(m).0.checked_add(1).map(ArchiveId),
                        Err(_) => Some(ArchiveId(0)),
                    };
                    if let Some(b) = bound {
                        req.before = min_bound(req.before, b);
                    }
                }
            }
            "after-id" | "before-id" | "ids" if version == Version::V1 => return Err(unknown_field(version)),
            "after-id" => {
                if let Some(v) = value()? {
                    let id = parse_id(v, IdField::AfterId)?;
                    req.after = max_bound(req.after, id);
                    req.must_exist.push((id, IdField::AfterId));
                }
            }
            "before-id" => {
                if let Some(v) = value()? {
                    let id = parse_id(v, IdField::BeforeId)?;
                    req.before = min_bound(req.before, id);
                    req.must_exist.push((id, IdField::BeforeId));
                }
            }
            "ids" => {
                let mut ids: Vec<ArchiveId> = Vec::new();
                for v in field.values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()) {
                    let id = parse_id(v, IdField::Ids)?;
                    if !ids.contains(&id) {
                        ids.push(id);
                        req.must_exist.push((id, IdField::Ids));
                    }
                }
                if !ids.is_empty() {
                    req.ids = Some(ids);
                }
            }
            _ => return Err(unknown_field(version)),
        }
    }
    Ok(())
}

fn unknown_field(version: Version) -> StanzaError {
    StanzaError::new(Condition::FeatureNotImplemented).with_text(match version {
        Version::V2 => "x: unsupported form field; supported: FORM_TYPE, with, start, end, after-id, before-id, ids",
        Version::V1 => "x: unsupported form field; supported: FORM_TYPE, with, start, end",
    })
}

/// The trimmed value of a single-valued field; an absent or blank value is no value.
fn single(field: &crate::forms::Field) -> Result<Option<&str>, StanzaError> {
    let v = field.single().map_err(|_| several_values(&field.var))?;
    Ok(v.map(str::trim).filter(|v| !v.is_empty()))
}

fn several_values(var: &str) -> StanzaError {
    bad(match var {
        "with" => "with: more than one value",
        "start" => "start: more than one value",
        "end" => "end: more than one value",
        "after-id" => "after-id: more than one value",
        "before-id" => "before-id: more than one value",
        FORM_TYPE => "FORM_TYPE: more than one value",
        _ => "x: a single-valued form field has several values",
    })
}

fn parse_id(v: &str, field: IdField) -> Result<ArchiveId, StanzaError> {
    // Ids are opaque to clients; one we could never have minted is not in the archive.
    ArchiveId::parse(v.trim()).ok_or_else(|| field.not_found())
}

fn max_bound(cur: Option<ArchiveId>, new: ArchiveId) -> Option<ArchiveId> {
    Some(cur.map_or(new, |c| c.max(new)))
}

fn min_bound(cur: Option<ArchiveId>, new: ArchiveId) -> Option<ArchiveId> {
    Some(cur.map_or(new, |c| c.min(new)))
}

fn apply_rsm(req: &mut Request, set: &Element) -> Result<(), StanzaError> {
    if set.get_child("index", RSM).is_some() {
        return Err(StanzaError::new(Condition::FeatureNotImplemented)
            .with_text("RSM index: paging by index is not supported; use after/before"));
    }
    if let Some(max) = set.get_child("max", RSM) {
        let n = max.text_content().trim().parse::<usize>().map_err(|_| bad("RSM max: not a non-negative integer"))?;
        req.max = Some(n);
    }
    if let Some(after) = set.get_child("after", RSM) {
        let text = after.text_content();
        if !text.trim().is_empty() {
            let id = parse_id(&text, IdField::RsmAfter)?;
            req.rsm_after = Some(id);
            req.must_exist.push((id, IdField::RsmAfter));
        }
    }
    if let Some(before) = set.get_child("before", RSM) {
        let text = before.text_content();
        if text.trim().is_empty() {
            req.rsm_before = Some(None);
        } else {
            let id = parse_id(&text, IdField::RsmBefore)?;
            req.rsm_before = Some(Some(id));
            req.must_exist.push((id, IdField::RsmBefore));
        }
    }
    Ok(())
}

/// XEP-0082 §3.3 DateTime `CCYY-MM-DDThh:mm:ss[.sss]TZD` as microseconds since the Unix
/// epoch (negative before 1970). Fractions beyond microseconds are truncated.
pub(super) fn parse_datetime(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        if part.iter().all(u8::is_ascii_digit) { std::str::from_utf8(part).ok()?.parse().ok() } else { None }
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut i = 19;
    let mut micros = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        let digits = &s[start..i.min(start + 6)];
        micros = digits.parse::<i64>().ok()? * 10i64.pow(6 - digits.len() as u32);
    }
    let offset_secs = match &b[i..] {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            let off = h * 3600 + m * 60;
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(secs * 1_000_000 + micros)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the inverse of
/// `rookery_stanza::datetime`'s calendar conversion).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// XEP-0082 DateTime in UTC with microseconds, for `<delay stamp=''/>` and metadata.
pub(super) fn format_micros(micros: u64) -> String {
    let base = rookery_stanza::datetime(micros / 1_000_000);
    let date_time = base.strip_suffix('Z').unwrap_or(&base);
    format!("{date_time}.{:06}Z", micros % 1_000_000)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn datetimes() {
        assert_eq!(parse_datetime("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_datetime("2010-07-10T23:08:25Z"), Some(1_278_803_305_000_000));
        assert_eq!(parse_datetime("2010-07-10T23:08:25.5Z"), Some(1_278_803_305_500_000));
        assert_eq!(parse_datetime("2010-07-10T23:08:25.1234567Z"), Some(1_278_803_305_123_456));
        assert_eq!(parse_datetime("2010-07-11T01:08:25+02:00"), Some(1_278_803_305_000_000));
        assert_eq!(parse_datetime("2010-07-10T18:38:25-04:30"), Some(1_278_803_305_000_000));
        assert_eq!(parse_datetime("2000-02-29T00:00:00Z"), Some(951_782_400_000_000));
        assert_eq!(parse_datetime("1969-12-31T23:59:59Z"), Some(-1_000_000));
        for bad in [
            "",
            "2010-07-10",
            "2010-07-10T23:08:25",
            "2010-07-10 23:08:25Z",
            "2010-13-10T23:08:25Z",
            "2001-02-29T00:00:00Z",
            "2010-07-10T24:00:00Z",
            "2010-07-10T23:60:00Z",
            "2010-07-10T23:08:25.Z",
            "2010-07-10T23:08:25+0200",
            "2010-07-10T23:08:25+25:00",
            "2010-07-10T23:08:25ZZ",
            "+010-07-10T23:08:25Z",
            "2010-07-10T23:08:2xZ",
        ] {
            assert_eq!(parse_datetime(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_with_microseconds_and_round_trips() {
        assert_eq!(format_micros(1_278_803_305_000_001), "2010-07-10T23:08:25.000001Z");
        for m in [0u64, 1, 999_999, 1_278_803_305_123_456, 4_107_542_400_000_000] {
            assert_eq!(parse_datetime(&format_micros(m)), Some(m as i64));
        }
    }
}
