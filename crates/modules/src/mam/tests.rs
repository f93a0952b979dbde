//! MAM module tests against the in-memory archive and the fake server: paging in both
//! directions, every filter, error conditions, preferences, metadata, the mam:1
//! namespace, the wire form of result stanzas, and failing or hanging stores.
#![allow(clippy::unwrap_used)]

use super::query::format_micros;
use super::*;
use crate::testutil::*;
use bytes::Bytes;
use rookery_storage::{ArchiveDefault, ArchiveEntry, ArchiveIdGen, ArchivePrefs, ArchiveRow, ArchiveStore, StoreError};
use std::time::Instant;

const JULIET: &str = "juliet@example.com";
const ME: &str = "juliet@example.com/chamber";
/// 2020-09-13T12:26:40Z.
const BASE_MICROS: u64 = 1_600_000_000_000_000;

fn harness_with(config: MamConfig) -> Harness {
    let h = Harness::new(|r| {
        r.add(Arc::new(crate::StanzaIds));
        r.add(Arc::new(Mam::new(config)));
    });
    h.server.connect(ME, true, true);
    h.server.connect("juliet@example.com/balcony", true, true);
    h
}

fn harness() -> Harness {
    harness_with(MamConfig::default())
}

/// The other party of message `i`: romeo's orchard and garden resources take turns,
/// every third message is with the nurse.
fn party(i: usize) -> (&'static str, &'static str) {
    if i % 3 == 2 {
        ("nurse@example.com", "kitchen")
    } else if i.is_multiple_of(2) {
        ("romeo@example.com", "orchard")
    } else {
        ("romeo@example.com", "garden")
    }
}

/// Archives `n` messages for juliet, one per second from [`BASE_MICROS`]; returns their
/// ids, oldest first.
async fn seed(h: &Harness, n: usize) -> Vec<ArchiveId> {
    let gen_ = ArchiveIdGen::new(0);
    let mut rows = Vec::new();
    for i in 0..n {
        let id = gen_.next_at(BASE_MICROS + i as u64 * 1_000_000);
        let (with, res) = party(i);
        let stanza = format!(
            "<message from='{with}/{res}' to='{ME}' type='chat' id='m{i}'><body>msg {i} &amp; &lt;3</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='{JULIET}' id='{}'/></message>",
            id.encode()
        );
        let entry = ArchiveEntry {
            id,
            with: with.to_owned(),
            with_resource: res.to_owned(),
            outgoing: false,
            stanza: Bytes::from(stanza),
        };
        rows.push(ArchiveRow { owner: bare(JULIET), entry });
    }
    h.ctx.stores.archive.append(&rows).await.unwrap();
    rows.iter().map(|r| r.entry.id).collect()
}

/// One result message, checked for the envelope every result must have.
#[derive(Debug)]
struct Item {
    id: ArchiveId,
    queryid: Option<String>,
    stamp: String,
    /// The forwarded stanza, if any.
    message: Option<Element>,
}

/// Takes what the fake server sent so far and checks each is a §4.2 result message to
/// the requester.
fn take_results(h: &Harness, ns: &str) -> Vec<Item> {
    let sent: Vec<(FullJid, Bytes)> = h.server.sent.lock().unwrap().drain(..).collect();
    sent.iter()
        .map(|(to, bytes)| {
            assert_eq!(to.as_str(), ME);
            let msg = rookery_xml::parse_element(bytes, "jabber:client").unwrap();
            assert!(msg.is("message", "jabber:client"));
            assert_eq!(msg.get_attr("to"), Some(ME));
            assert_eq!(msg.get_attr("from"), Some(JULIET));
            assert!(msg.get_attr("id").is_some_and(|i| !i.is_empty()));
            let result = msg.get_child("result", ns).unwrap();
            let fwd = result.get_child("forwarded", "urn:xmpp:forward:0").unwrap();
            let delay = fwd.get_child("delay", "urn:xmpp:delay").unwrap();
            Item {
                id: ArchiveId::parse(result.get_attr("id").unwrap()).unwrap(),
                queryid: result.get_attr("queryid").map(str::to_owned),
                stamp: delay.get_attr("stamp").unwrap().to_owned(),
                message: fwd.elements().find(|e| e.name == "message").cloned(),
            }
        })
        .collect()
}

/// What a `<fin/>` said.
#[derive(Debug, PartialEq, Eq)]
struct FinInfo {
    complete: bool,
    first: Option<String>,
    index: Option<u64>,
    last: Option<String>,
    count: Option<u64>,
}

fn fin_info(el: &Element, ns: &str) -> FinInfo {
    assert!(el.is("fin", ns), "{el:?}");
    let set = el.get_child("set", query::RSM).unwrap();
    let first = set.get_child("first", query::RSM);
    FinInfo {
        complete: match el.get_attr("complete") {
            Some("true") => true,
            Some("false") => false,
            other => panic!("complete={other:?}"),
        },
        first: first.map(|f| f.text_content()),
        index: first.and_then(|f| f.get_attr("index")).map(|i| i.parse().unwrap()),
        last: set.get_child("last", query::RSM).map(|l| l.text_content()),
        count: set.get_child("count", query::RSM).map(|c| c.text_content().parse().unwrap()),
    }
}

/// Runs a mam:2 query with the given children of `<query/>`; returns the fin and results.
async fn query(h: &Harness, children: &str) -> (FinInfo, Vec<Item>) {
    query_ns(h, NS_MAM2, children).await
}

async fn query_ns(h: &Harness, ns: &str, children: &str) -> (FinInfo, Vec<Item>) {
    let xml = format!("<query xmlns='{ns}' queryid='q1'>{children}</query>");
    let fin = h.set_own(ME, &xml).await.unwrap().unwrap();
    let items = take_results(h, ns);
    for it in &items {
        assert_eq!(it.queryid.as_deref(), Some("q1"));
    }
    (fin_info(&fin, ns), items)
}

async fn query_err(h: &Harness, children: &str) -> StanzaError {
    let xml = format!("<query xmlns='urn:xmpp:mam:2'>{children}</query>");
    let e = h.set_own(ME, &xml).await.unwrap_err();
    assert!(h.server.sent().is_empty(), "no results may be sent before an error");
    e
}

fn form(fields: &str) -> String {
    format!(
        "<x xmlns='jabber:x:data' type='submit'>\
           <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>{fields}</x>"
    )
}

fn field(var: &str, value: &str) -> String {
    format!("<field var='{var}'><value>{value}</value></field>")
}

fn rsm(inner: &str) -> String {
    format!("<set xmlns='http://jabber.org/protocol/rsm'>{inner}</set>")
}

fn ids_of(items: &[Item]) -> Vec<ArchiveId> {
    items.iter().map(|i| i.id).collect()
}

#[tokio::test]
async fn paging_forwards_visits_every_message_once() {
    let h = harness();
    let all = seed(&h, 120).await;
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let a = after.as_ref().map(|a| format!("<after>{a}</after>")).unwrap_or_default();
        let (fin, items) = query(&h, &rsm(&format!("<max>50</max>{a}"))).await;
        assert_eq!(fin.first, items.first().map(|i| i.id.encode()));
        assert_eq!(fin.last, items.last().map(|i| i.id.encode()));
        assert_eq!(fin.count, Some(120));
        assert_eq!(fin.index, Some(seen.len() as u64));
        pages.push((items.len(), fin.complete));
        seen.extend(ids_of(&items));
        after = fin.last.clone();
        if fin.complete {
            break;
        }
        assert!(pages.len() < 5, "paging does not end");
    }
    assert_eq!(pages, [(50, false), (50, false), (20, true)]);
    assert_eq!(seen, all);
}

#[tokio::test]
async fn paging_backwards_from_the_last_page_visits_every_message_once() {
    let h = harness();
    let all = seed(&h, 120).await;
    let mut pages: Vec<Vec<ArchiveId>> = Vec::new();
    let mut before = String::new();
    let mut flags = Vec::new();
    loop {
        let (fin, items) = query(&h, &rsm(&format!("<max>50</max><before>{before}</before>"))).await;
        let ids = ids_of(&items);
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "each page is in chronological order");
        assert_eq!(fin.count, Some(120));
        let seen_before: usize = pages.iter().map(Vec::len).sum();
        assert_eq!(fin.index, Some((120 - seen_before - ids.len()) as u64));
        flags.push((ids.len(), fin.complete));
        before = fin.first.clone().unwrap();
        pages.push(ids);
        if fin.complete {
            break;
        }
        assert!(pages.len() < 5, "paging does not end");
    }
    assert_eq!(flags, [(50, false), (50, false), (20, true)]);
    let seen: Vec<ArchiveId> = pages.into_iter().rev().flatten().collect();
    assert_eq!(seen, all);
}

#[tokio::test]
async fn with_filter_bare_matches_any_resource_and_full_only_that_one() {
    let h = harness();
    let all = seed(&h, 30).await;
    let expect = |pred: &dyn Fn(usize) -> bool| -> Vec<ArchiveId> {
        all.iter().enumerate().filter(|(i, _)| pred(*i)).map(|(_, id)| *id).collect()
    };

    let (fin, items) = query(&h, &form(&field("with", "Romeo@Example.COM"))).await;
    assert_eq!(ids_of(&items), expect(&|i| party(i).0 == "romeo@example.com"));
    assert_eq!(fin.count, Some(20));
    assert!(fin.complete);

    let (_, items) = query(&h, &form(&field("with", "romeo@example.com/garden"))).await;
    assert_eq!(ids_of(&items), expect(&|i| party(i) == ("romeo@example.com", "garden")));
    assert!(!items.is_empty());

    let (fin, items) = query(&h, &form(&field("with", "stranger@example.com"))).await;
    assert!(items.is_empty());
    assert_eq!(fin, FinInfo { complete: true, first: None, index: None, last: None, count: Some(0) });

    // Paging within a filtered set: index and count refer to the filtered set.
    let (fin, items) =
        query(&h, &format!("{}{}", form(&field("with", "nurse@example.com")), rsm("<max>4</max>"))).await;
    assert_eq!((items.len(), fin.count, fin.complete), (4, Some(10), false));
    let after = fin.last.unwrap();
    let (fin, items) = query(
        &h,
        &format!(
            "{}{}",
            form(&field("with", "nurse@example.com")),
            rsm(&format!("<max>4</max><after>{after}</after>"))
        ),
    )
    .await;
    assert_eq!((items.len(), fin.index, fin.count, fin.complete), (4, Some(4), Some(10), false));
    assert!(items.iter().all(|i| i.message.as_ref().unwrap().get_attr("from").unwrap().starts_with("nurse@")));
}

#[tokio::test]
async fn start_and_end_are_inclusive() {
    let h = harness();
    let all = seed(&h, 40).await;
    let at = |i: usize| format_micros(all[i].micros());

    let f = form(&format!("{}{}", field("start", &at(10)), field("end", &at(20))));
    let (fin, items) = query(&h, &f).await;
    assert_eq!(ids_of(&items), all[10..=20]);
    assert_eq!(fin.count, Some(11));
    assert!(fin.complete);

    // Whole-second form and a time zone offset name the same instants.
    let f = form(&format!(
        "{}{}",
        field("start", "2020-09-13T12:26:50Z"),
        field("end", "2020-09-13T14:27:00+02:00") // 12:27:00Z, message 20
    ));
    let (_, items) = query(&h, &f).await;
    assert_eq!(ids_of(&items), all[10..=20]);

    // One microsecond later excludes the message at the boundary.
    let later = format_micros(all[10].micros() + 1);
    let (_, items) = query(&h, &form(&field("start", &later))).await;
    assert_eq!(items.first().unwrap().id, all[11]);
    let earlier = format_micros(all[20].micros() - 1);
    let (_, items) = query(&h, &form(&field("end", &earlier))).await;
    assert_eq!(items.last().unwrap().id, all[19]);

    // end before start, and a range before 1970: nothing, still a successful query.
    let f = form(&format!("{}{}", field("start", &at(20)), field("end", &at(10))));
    let (fin, items) = query(&h, &f).await;
    assert!(items.is_empty() && fin.complete);
    let (fin, items) = query(&h, &form(&field("end", "1969-01-01T00:00:00Z"))).await;
    assert!(items.is_empty() && fin.complete && fin.count == Some(0));
    let (_, items) = query(&h, &form(&field("start", "1969-01-01T00:00:00Z"))).await;
    assert_eq!(ids_of(&items), all);
}

#[tokio::test]
async fn after_id_and_before_id_are_exclusive_and_combine_with_rsm() {
    let h = harness();
    let all = seed(&h, 40).await;
    let f = form(&format!("{}{}", field("after-id", &all[10].encode()), field("before-id", &all[20].encode())));
    let (fin, items) = query(&h, &f).await;
    assert_eq!(ids_of(&items), all[11..20]);
    assert!(fin.complete);
    assert_eq!(fin.count, Some(9));

    // before-id does not page backwards (§9): the first page of the range comes first.
    let (fin, items) =
        query(&h, &format!("{}{}", form(&field("before-id", &all[20].encode())), rsm("<max>5</max>"))).await;
    assert_eq!(ids_of(&items), all[0..5]);
    assert_eq!((fin.complete, fin.index, fin.count), (false, Some(0), Some(20)));

    // RSM <before/> within an after-id range pages from the range's end.
    let (fin, items) =
        query(&h, &format!("{}{}", form(&field("after-id", &all[30].encode())), rsm("<max>3</max><before/>"))).await;
    assert_eq!(ids_of(&items), all[37..40]);
    assert_eq!((fin.complete, fin.index, fin.count), (false, Some(6), Some(9)));
}

#[tokio::test]
async fn ids_fetch_exactly_those_messages_in_archive_order() {
    let h = harness();
    let all = seed(&h, 60).await;
    let f = form(&format!(
        "<field var='ids'><value>{}</value><value>{}</value><value>{}</value><value>{}</value></field>",
        all[50].encode(),
        all[5].encode(),
        all[7].encode(),
        all[5].encode()
    ));
    let (fin, items) = query(&h, &f).await;
    assert_eq!(ids_of(&items), [all[5], all[7], all[50]]);
    assert_eq!(fin.count, Some(3));
    assert!(fin.complete);

    // One id that is not in the archive fails the whole query (§4.1.3).
    let missing = ArchiveId(all[59].0 + 1).encode();
    let f = form(&format!("<field var='ids'><value>{}</value><value>{missing}</value></field>", all[5].encode()));
    let e = query_err(&h, &f).await;
    assert_eq!(e.condition, Condition::ItemNotFound);
    assert!(e.text.unwrap().starts_with("ids:"));
}

#[tokio::test]
async fn max_is_clamped_and_defaults_apply() {
    let h = harness_with(MamConfig { max_page: 10, default_page: 7, ..MamConfig::default() });
    let all = seed(&h, 30).await;
    let (fin, items) = query(&h, &rsm("<max>1000</max>")).await;
    assert_eq!(ids_of(&items), all[..10]);
    assert!(!fin.complete);
    let (fin, items) = query(&h, "").await;
    assert_eq!(ids_of(&items), all[..7]);
    assert_eq!((fin.complete, fin.count, fin.index), (false, Some(30), Some(0)));
    // A default larger than the clamp is clamped too.
    let h = harness_with(MamConfig { max_page: 4, default_page: 50, ..MamConfig::default() });
    seed(&h, 30).await;
    let (_, items) = query(&h, "").await;
    assert_eq!(items.len(), 4);
}

#[tokio::test]
async fn max_zero_returns_only_the_count() {
    let h = harness();
    let (fin, items) = query(&h, &rsm("<max>0</max>")).await;
    assert!(items.is_empty());
    assert_eq!(fin, FinInfo { complete: true, first: None, index: None, last: None, count: Some(0) });

    seed(&h, 120).await;
    let (fin, items) = query(&h, &rsm("<max>0</max>")).await;
    assert!(items.is_empty());
    assert_eq!(fin, FinInfo { complete: false, first: None, index: None, last: None, count: Some(120) });
}

#[tokio::test]
async fn count_is_omitted_beyond_the_cap() {
    let h = harness_with(MamConfig { count_cap: 100, ..MamConfig::default() });
    let all = seed(&h, 120).await;
    let (fin, items) = query(&h, &rsm("<max>10</max>")).await;
    assert_eq!(items.len(), 10);
    assert_eq!((fin.count, fin.index), (None, Some(0)));
    let (fin, _) = query(&h, &rsm(&format!("<max>10</max><after>{}</after>", all[9].encode()))).await;
    assert_eq!((fin.count, fin.index), (None, None));
    // A filtered set under the cap is counted again.
    let (fin, _) = query(&h, &form(&field("with", "nurse@example.com"))).await;
    assert_eq!(fin.count, Some(40));

    let h = harness_with(MamConfig { count_cap: 0, ..MamConfig::default() });
    let all = seed(&h, 20).await;
    let (fin, _) = query(&h, &rsm(&format!("<max>5</max><after>{}</after>", all[4].encode()))).await;
    assert_eq!((fin.count, fin.index, fin.complete), (None, None, false));
}

#[tokio::test]
async fn flipped_pages_arrive_newest_first() {
    let h = harness();
    let all = seed(&h, 20).await;
    let (fin, items) = query(&h, &format!("{}<flip-page/>", rsm("<max>5</max><before/>"))).await;
    let mut expect = all[15..].to_vec();
    expect.reverse();
    assert_eq!(ids_of(&items), expect);
    // The page itself is unchanged (§4.3.4): first/last still in archive order.
    assert_eq!(fin.first, Some(all[15].encode()));
    assert_eq!(fin.last, Some(all[19].encode()));
}

#[tokio::test]
async fn bad_requests_name_their_field() {
    let h = harness();
    let all = seed(&h, 5).await;
    let missing = ArchiveId(all[4].0 + 1).encode();
    let cases: Vec<(String, Condition, &str)> = vec![
        (form(&field("with", "@bad")), Condition::BadRequest, "with:"),
        (form(&field("with", "a@b/c</value><value>d@e")), Condition::BadRequest, "with:"),
        (form(&field("start", "yesterday")), Condition::BadRequest, "start:"),
        (form(&field("start", "2010-02-30T00:00:00Z")), Condition::BadRequest, "start:"),
        (form(&field("end", "2010-07-10T23:08:25")), Condition::BadRequest, "end:"),
        (form("").replace("urn:xmpp:mam:2</value>", "urn:xmpp:mam:1</value>"), Condition::BadRequest, "FORM_TYPE:"),
        (form("").replace("type='submit'", "type='form'"), Condition::BadRequest, "x:"),
        (form("").replace(" type='submit'", ""), Condition::BadRequest, "x:"),
        (form(&format!("{}{}", field("with", "a@b"), field("with", "c@d"))), Condition::BadRequest, "x:"),
        (rsm("<max>ten</max>"), Condition::BadRequest, "RSM max:"),
        (rsm("<max>-1</max>"), Condition::BadRequest, "RSM max:"),
        (form(&field("{urn:x}search", "hi")), Condition::FeatureNotImplemented, "x:"),
        (form(&field("include-groupchat", "true")), Condition::FeatureNotImplemented, "x:"),
        (rsm("<max>5</max><index>3</index>"), Condition::FeatureNotImplemented, "RSM index:"),
        (form(&field("after-id", &missing)), Condition::ItemNotFound, "after-id:"),
        (form(&field("before-id", "not-an-id")), Condition::ItemNotFound, "before-id:"),
        (rsm(&format!("<after>{missing}</after>")), Condition::ItemNotFound, "RSM after:"),
        (rsm("<before>28482-98726-73623</before>"), Condition::ItemNotFound, "RSM before:"),
    ];
    for (children, condition, prefix) in cases {
        let e = query_err(&h, &children).await;
        assert_eq!(e.condition, condition, "{children}");
        let text = e.text.unwrap_or_default();
        assert!(text.starts_with(prefix), "{children}: {text:?} should name {prefix:?}");
    }
}

#[tokio::test]
async fn another_users_archive_is_forbidden() {
    let h = harness();
    seed(&h, 3).await;
    h.server.connect("romeo@example.com/orchard", true, true);
    for (set, payload) in [
        (true, "<query xmlns='urn:xmpp:mam:2'/>"),
        (false, "<query xmlns='urn:xmpp:mam:2'/>"),
        (true, "<query xmlns='urn:xmpp:mam:1'/>"),
        (false, "<prefs xmlns='urn:xmpp:mam:2'/>"),
        (true, "<prefs xmlns='urn:xmpp:mam:2' default='never'/>"),
        (false, "<metadata xmlns='urn:xmpp:mam:2'/>"),
    ] {
        let r = if set {
            h.set("romeo@example.com/orchard", JULIET, payload).await
        } else {
            h.get("romeo@example.com/orchard", JULIET, payload).await
        };
        assert_eq!(r.unwrap_err().condition, Condition::Forbidden, "{payload}");
    }
    assert!(h.server.sent().is_empty());
    assert!(h.ctx.stores.archive.get_prefs(&bare(JULIET)).await.unwrap().is_none());
}

#[tokio::test]
async fn unauthenticated_requests_are_refused() {
    let h = harness();
    let e = h.call(None, JULIET, IqType::Set, Target::Own, "<query xmlns='urn:xmpp:mam:2'/>").await.unwrap_err();
    assert_eq!(e.condition, Condition::NotAuthorized);
}

#[tokio::test]
async fn results_go_only_to_the_requesting_resource() {
    let h = harness();
    seed(&h, 3).await;
    let (_, items) = query(&h, "").await;
    assert_eq!(items.len(), 3);
    // take_results checked every stanza was addressed to ME; balcony got nothing.
}

#[tokio::test]
async fn preferences_round_trip() {
    let h = harness();
    let got = h.get_own(ME, "<prefs xmlns='urn:xmpp:mam:2'/>").await.unwrap().unwrap();
    assert_eq!(got, prefs::to_element(NS_MAM2, &ArchivePrefs::default()));
    assert_eq!(got.get_attr("default"), Some("always"));
    assert!(got.get_child("always", NS_MAM2).unwrap().children.is_empty());
    assert!(got.get_child("never", NS_MAM2).unwrap().children.is_empty());

    let set = "<prefs xmlns='urn:xmpp:mam:2' default='roster'>\
                 <always><jid>Romeo@Montague.LIT</jid><jid>romeo@montague.lit</jid><jid>nurse@capulet.lit/Kitchen</jid>\
                   <jid>tybalt@capulet.lit</jid></always>\
                 <never><jid> tybalt@capulet.lit </jid><jid>montague.lit</jid></never>\
               </prefs>";
    let applied = h.set_own(ME, set).await.unwrap().unwrap();
    let expect = ArchivePrefs {
        default: ArchiveDefault::Roster,
        always: vec!["romeo@montague.lit".into(), "nurse@capulet.lit/Kitchen".into()],
        never: vec!["tybalt@capulet.lit".into(), "montague.lit".into()],
    };
    assert_eq!(applied, prefs::to_element(NS_MAM2, &expect));
    let jids: Vec<String> =
        applied.get_child("always", NS_MAM2).unwrap().elements().map(|j| j.text_content()).collect();
    assert_eq!(jids, ["romeo@montague.lit", "nurse@capulet.lit/Kitchen"]);
    assert_eq!(h.ctx.stores.archive.get_prefs(&bare(JULIET)).await.unwrap(), Some(expect.clone()));
    assert_eq!(h.server.published_for(super::PREFS_TOPIC), [bare(JULIET)]);

    let got = h.get_own(ME, "<prefs xmlns='urn:xmpp:mam:2'/>").await.unwrap().unwrap();
    assert_eq!(got, applied);
    // The same preferences through the mam:1 namespace.
    let got = h.get_own(ME, "<prefs xmlns='urn:xmpp:mam:1'/>").await.unwrap().unwrap();
    assert_eq!(got, prefs::to_element(NS_MAM1, &expect));
    // Missing lists are empty lists.
    let applied = h.set_own(ME, "<prefs xmlns='urn:xmpp:mam:1' default='never'/>").await.unwrap().unwrap();
    assert_eq!(
        applied,
        prefs::to_element(NS_MAM1, &ArchivePrefs { default: ArchiveDefault::Never, ..Default::default() })
    );
    assert_eq!(h.server.published_for(super::PREFS_TOPIC).len(), 2);
}

#[tokio::test]
async fn invalid_preferences_change_nothing() {
    let h = harness();
    for (set, condition) in [
        ("<prefs xmlns='urn:xmpp:mam:2'/>", Condition::BadRequest),
        ("<prefs xmlns='urn:xmpp:mam:2' default='sometimes'/>", Condition::BadRequest),
        (
            "<prefs xmlns='urn:xmpp:mam:2' default='always'><never><jid>@bad</jid></never></prefs>",
            Condition::JidMalformed,
        ),
        ("<prefs xmlns='urn:xmpp:mam:2' default='always'><always><jid/></always></prefs>", Condition::JidMalformed),
    ] {
        let e = h.set_own(ME, set).await.unwrap_err();
        assert_eq!(e.condition, condition, "{set}");
        assert!(e.text.unwrap().starts_with("prefs"));
    }
    let many: String = (0..=prefs::MAX_PREFS_JIDS).map(|i| format!("<jid>u{i}@example.com</jid>")).collect();
    let e =
        h.set_own(ME, &format!("<prefs xmlns='urn:xmpp:mam:2' default='always'><never>{many}</never></prefs>")).await;
    assert_eq!(e.unwrap_err().condition, Condition::NotAcceptable);
    assert!(h.ctx.stores.archive.get_prefs(&bare(JULIET)).await.unwrap().is_none());
    assert!(h.server.published_for(super::PREFS_TOPIC).is_empty());
}

#[tokio::test]
async fn metadata_of_empty_and_filled_archive() {
    let h = harness();
    let md = h.get_own(ME, "<metadata xmlns='urn:xmpp:mam:2'/>").await.unwrap().unwrap();
    assert!(md.is("metadata", NS_MAM2));
    assert!(md.children.is_empty());

    let all = seed(&h, 12).await;
    let md = h.get_own(ME, "<metadata xmlns='urn:xmpp:mam:2'/>").await.unwrap().unwrap();
    let start = md.get_child("start", NS_MAM2).unwrap();
    let end = md.get_child("end", NS_MAM2).unwrap();
    assert_eq!(start.get_attr("id"), Some(all[0].encode().as_str()));
    assert_eq!(start.get_attr("timestamp"), Some("2020-09-13T12:26:40.000000Z"));
    assert_eq!(end.get_attr("id"), Some(all[11].encode().as_str()));
    assert_eq!(end.get_attr("timestamp"), Some("2020-09-13T12:26:51.000000Z"));
    // Metadata came with mam:2 #extended; mam:1 has none.
    let e = h.get_own(ME, "<metadata xmlns='urn:xmpp:mam:1'/>").await.unwrap_err();
    assert_eq!(e.condition, Condition::FeatureNotImplemented);
}

#[tokio::test]
async fn mam1_queries_answer_in_mam1() {
    let h = harness();
    let all = seed(&h, 12).await;
    let form1 = "<x xmlns='jabber:x:data' type='submit'>\
                   <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:1</value></field>\
                   <field var='with'><value>nurse@example.com</value></field></x>";
    let (fin, items) = query_ns(&h, NS_MAM1, &format!("{form1}{}", rsm("<max>2</max>"))).await;
    assert_eq!(ids_of(&items), [all[2], all[5]]);
    assert_eq!((fin.complete, fin.count, fin.index), (false, Some(4), Some(0)));
    let (fin, items) = query_ns(&h, NS_MAM1, &rsm(&format!("<after>{}</after>", all[9].encode()))).await;
    assert_eq!(ids_of(&items), all[10..]);
    assert!(fin.complete);

    // The #extended fields belong to mam:2.
    let ext = form1
        .replace("<field var='with'><value>nurse@example.com</value></field>", &field("after-id", &all[0].encode()));
    let e = h.set_own(ME, &format!("<query xmlns='urn:xmpp:mam:1'>{ext}</query>")).await.unwrap_err();
    assert_eq!(e.condition, Condition::FeatureNotImplemented);
    let e = h.set_own(ME, &format!("<query xmlns='urn:xmpp:mam:1'>{}</query>", form(""))).await.unwrap_err();
    assert_eq!(e.condition, Condition::BadRequest);
}

#[tokio::test]
async fn query_forms_list_the_supported_fields() {
    let h = harness();
    let fields = |el: &Element, ns: &str| -> Vec<(String, String)> {
        let x = DataForm::parse(el.get_child("x", "jabber:x:data").unwrap()).unwrap();
        assert_eq!(x.kind, FormKind::Form);
        assert_eq!(x.form_type(), Some(ns));
        assert!(el.is("query", ns));
        for f in &x.fields {
            assert!(!f.extra.iter().any(|e| e.name == "required"), "§4.1: no field is required");
        }
        x.fields.iter().map(|f| (f.var.clone(), f.kind.unwrap().name().to_owned())).collect()
    };
    let v2 = h.get_own(ME, "<query xmlns='urn:xmpp:mam:2'/>").await.unwrap().unwrap();
    let vars = fields(&v2, NS_MAM2);
    let expect = [
        ("FORM_TYPE", "hidden"),
        ("with", "jid-single"),
        ("start", "text-single"),
        ("end", "text-single"),
        ("before-id", "text-single"),
        ("after-id", "text-single"),
        ("ids", "list-multi"),
    ];
    assert_eq!(vars, expect.map(|(a, b)| (a.to_owned(), b.to_owned())));
    let ids = DataForm::parse(v2.get_child("x", "jabber:x:data").unwrap()).unwrap();
    let validate = &ids.get("ids").unwrap().extra[0];
    assert!(validate.is("validate", XDATA_VALIDATE));
    assert!(validate.get_child("open", XDATA_VALIDATE).is_some());

    let v1 = h.get_own(ME, "<query xmlns='urn:xmpp:mam:1'/>").await.unwrap().unwrap();
    assert_eq!(
        fields(&v1, NS_MAM1),
        expect[..4].iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn features_are_advertised_on_the_account() {
    let h = harness();
    for f in [NS_MAM2, NS_MAM2_EXTENDED, NS_MAM1] {
        assert!(h.features.account.contains(&f), "{f}");
        assert!(!h.features.host.contains(&f), "{f}");
    }
    assert!(h.dispatch.handler("metadata", NS_MAM2, IqType::Get, Target::Own).is_some());
    assert!(h.dispatch.handler("query", NS_MAM2, IqType::Set, Target::Host).is_none());
}

#[tokio::test]
async fn result_stanzas_forward_the_stored_message_in_jabber_client() {
    let h = harness();
    let ids = ArchiveIdGen::new(0);
    let stored = [
        // As a c2s client sent it: no xmlns.
        "<message to='romeo@example.com' type='chat' id='a&amp;b'><body>1 &lt; 2</body>\
         <x xmlns='urn:other'><y/></x></message>",
        // With its own namespace declaration (e.g. from a WebSocket client): kept as is.
        "<message xmlns=\"jabber:client\" from='romeo@example.com/x' type='chat'><body>hi</body></message>",
        // Corrupt bytes: the result keeps id and timestamp, without the message (§3.2).
        "<message><body>unterminated",
    ];
    let rows: Vec<ArchiveRow> = stored
        .iter()
        .enumerate()
        .map(|(i, s)| ArchiveRow {
            owner: bare(JULIET),
            entry: ArchiveEntry {
                id: ids.next_at(BASE_MICROS + i as u64 * 1_500_001),
                with: "romeo@example.com".into(),
                with_resource: String::new(),
                outgoing: i == 0,
                stanza: Bytes::from_static(s.as_bytes()),
            },
        })
        .collect();
    h.ctx.stores.archive.append(&rows).await.unwrap();

    let queryid = "q'\"<&>";
    let xml = "<query xmlns='urn:xmpp:mam:2' queryid='q&apos;&quot;&lt;&amp;&gt;'/>";
    h.set_own(ME, xml).await.unwrap().unwrap();
    let raw = h.server.sent();
    let items = take_results(&h, NS_MAM2);
    assert_eq!(items.len(), 3);
    for (it, row) in items.iter().zip(&rows) {
        assert_eq!(it.queryid.as_deref(), Some(queryid));
        assert_eq!(it.id, row.entry.id);
        assert_eq!(it.stamp, format_micros(row.entry.id.micros()));
    }
    assert_eq!(items[1].stamp, "2020-09-13T12:26:41.500001Z");

    let m0 = items[0].message.as_ref().unwrap();
    assert!(m0.is("message", "jabber:client"));
    assert_eq!(m0.get_attr("id"), Some("a&b"));
    assert_eq!(m0.get_child("body", "jabber:client").unwrap().text_content(), "1 < 2");
    assert!(m0.get_child("x", "urn:other").unwrap().get_child("y", "urn:other").is_some());
    // The stored bytes are copied, only gaining the namespace declaration.
    assert!(raw[0].1.contains(
        "<message to='romeo@example.com' type='chat' id='a&amp;b' xmlns=\"jabber:client\"><body>1 &lt; 2</body>"
    ));

    let m1 = items[1].message.as_ref().unwrap();
    assert!(m1.is("message", "jabber:client"));
    assert!(raw[1].1.contains(stored[1]));

    assert!(items[2].message.is_none());
    let ids: Vec<&str> = raw.iter().map(|(_, x)| x.split("id=\"").nth(1).unwrap().split('"').next().unwrap()).collect();
    assert!(ids[0] != ids[1] && ids[1] != ids[2], "fresh message ids: {ids:?}");
}

#[test]
fn forwardable_adds_the_namespace_only_where_missing() {
    let f = |s: &'static str| results::forwardable(&Bytes::from_static(s.as_bytes())).map(|b| b.to_vec());
    assert_eq!(f("<message/>").unwrap(), b"<message xmlns=\"jabber:client\"/>");
    assert_eq!(f("<message xmlns='jabber:client'/>").unwrap(), b"<message xmlns='jabber:client'/>");
    assert_eq!(
        f("<message xmlns='jabber:server'><body/></message>").unwrap(),
        b"<message xmlns='jabber:server'><body/></message>"
    );
    assert_eq!(f("<c:message xmlns:c='jabber:client'/>").unwrap(), b"<c:message xmlns:c='jabber:client'/>");
    assert_eq!(f("<c:message/>"), None, "undeclared prefix");
    assert_eq!(f("<message>"), None);
    assert_eq!(f("<a/><b/>"), None);
    assert_eq!(f(""), None);
}

/// A store whose every call fails.
struct FailingStore;

#[async_trait]
impl ArchiveStore for FailingStore {
    async fn append(&self, _: &[ArchiveRow]) -> rookery_storage::Result<()> {
        Err(StoreError::Backend("disk on fire".into()))
    }
    async fn query(&self, _: &BareJid, _: &ArchiveQuery) -> rookery_storage::Result<ArchivePage> {
        Err(StoreError::Backend("disk on fire".into()))
    }
    async fn bounds(&self, _: &BareJid) -> rookery_storage::Result<Option<(ArchiveId, ArchiveId)>> {
        Err(StoreError::Backend("disk on fire".into()))
    }
    async fn remove_before(&self, _: &BareJid, _: ArchiveId) -> rookery_storage::Result<u64> {
        Err(StoreError::Backend("disk on fire".into()))
    }
    async fn delete_all(&self, _: &BareJid) -> rookery_storage::Result<()> {
        Err(StoreError::Backend("disk on fire".into()))
    }
    async fn get_prefs(&self, _: &BareJid) -> rookery_storage::Result<Option<ArchivePrefs>> {
        Err(StoreError::Corrupt("bad prefs".into()))
    }
    async fn set_prefs(&self, _: &BareJid, _: &ArchivePrefs) -> rookery_storage::Result<()> {
        Err(StoreError::Backend("disk on fire".into()))
    }
}

/// A store whose every call never completes.
struct HangingStore;

#[async_trait]
impl ArchiveStore for HangingStore {
    async fn append(&self, _: &[ArchiveRow]) -> rookery_storage::Result<()> {
        std::future::pending().await
    }
    async fn query(&self, _: &BareJid, _: &ArchiveQuery) -> rookery_storage::Result<ArchivePage> {
        std::future::pending().await
    }
    async fn bounds(&self, _: &BareJid) -> rookery_storage::Result<Option<(ArchiveId, ArchiveId)>> {
        std::future::pending().await
    }
    async fn remove_before(&self, _: &BareJid, _: ArchiveId) -> rookery_storage::Result<u64> {
        std::future::pending().await
    }
    async fn delete_all(&self, _: &BareJid) -> rookery_storage::Result<()> {
        std::future::pending().await
    }
    async fn get_prefs(&self, _: &BareJid) -> rookery_storage::Result<Option<ArchivePrefs>> {
        std::future::pending().await
    }
    async fn set_prefs(&self, _: &BareJid, _: &ArchivePrefs) -> rookery_storage::Result<()> {
        std::future::pending().await
    }
}

/// Every store-backed request of the module fails with a bare `internal-server-error`.
async fn assert_all_internal_errors(h: &Harness) {
    let requests: [(bool, &str); 6] = [
        (true, "<query xmlns='urn:xmpp:mam:2'/>"),
        (true, "<query xmlns='urn:xmpp:mam:1'><set xmlns='http://jabber.org/protocol/rsm'><before/></set></query>"),
        (
            true,
            "<query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'><after>0000000000000001</after></set></query>",
        ),
        (false, "<prefs xmlns='urn:xmpp:mam:2'/>"),
        (true, "<prefs xmlns='urn:xmpp:mam:2' default='never'/>"),
        (false, "<metadata xmlns='urn:xmpp:mam:2'/>"),
    ];
    for (set, payload) in requests {
        let r = if set { h.set_own(ME, payload).await } else { h.get_own(ME, payload).await };
        let e = r.unwrap_err();
        assert_eq!(e, StanzaError::new(Condition::InternalServerError), "{payload}");
    }
    assert!(h.server.sent().is_empty());
    assert!(h.server.published_for(super::PREFS_TOPIC).is_empty());
}

#[tokio::test]
async fn failing_store_is_an_internal_server_error() {
    let mut h = harness();
    Arc::make_mut(&mut h.ctx.stores).archive = Arc::new(FailingStore);
    assert_all_internal_errors(&h).await;
}

#[tokio::test]
async fn hanging_store_times_out_as_an_internal_server_error() {
    let mut h = harness_with(MamConfig { store_timeout: Duration::from_millis(50), ..MamConfig::default() });
    Arc::make_mut(&mut h.ctx.stores).archive = Arc::new(HangingStore);
    let started = Instant::now();
    assert_all_internal_errors(&h).await;
    // Six requests, each bounded by the 50 ms timeout.
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn a_requester_that_is_gone_still_gets_the_fin() {
    let h = harness();
    seed(&h, 3).await;
    h.server.sessions.lock().unwrap().retain(|s| s.jid.as_str() != ME);
    let fin = h.set_own(ME, "<query xmlns='urn:xmpp:mam:2'/>").await.unwrap().unwrap();
    assert!(fin_info(&fin, NS_MAM2).complete);
    assert!(h.server.sent().is_empty());
}

#[tokio::test]
async fn prefs_get_reports_the_configured_default_before_the_user_sets_any() {
    let h = harness_with(MamConfig { default_policy: rookery_storage::ArchiveDefault::Roster, ..MamConfig::default() });
    let got = h.get_own(ME, "<prefs xmlns='urn:xmpp:mam:2'/>").await.unwrap().unwrap();
    assert_eq!(got.get_attr("default"), Some("roster"), "{got:?}");
}

#[test]
fn the_pacer_lets_a_burst_through_then_spaces_queries_per_user() {
    let p = super::Pacer::new(5);
    let t0 = tokio::time::Instant::now();
    let alice = bare("alice@example.com");
    // A burst of twice the rate goes through at once.
    for _ in 0..10 {
        assert_eq!(p.delay(&alice, t0), Duration::ZERO);
    }
    // Then one query per 1/5 s.
    assert_eq!(p.delay(&alice, t0), Duration::from_millis(200));
    assert_eq!(p.delay(&alice, t0), Duration::from_millis(400));
    // Another user has a budget of its own.
    assert_eq!(p.delay(&bare("bob@example.com"), t0), Duration::ZERO);
    // Time refills the bucket.
    let later = t0 + Duration::from_secs(10);
    assert_eq!(p.delay(&alice, later), Duration::ZERO);
    // No limit.
    assert_eq!(super::Pacer::new(0).delay(&alice, t0), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn queries_over_the_budget_wait_instead_of_failing() {
    let h = harness_with(MamConfig { queries_per_sec: 2, ..MamConfig::default() });
    seed(&h, 3).await;
    let start = tokio::time::Instant::now();
    for _ in 0..6 {
        let (fin, items) = query(&h, &rsm("<max>10</max>")).await;
        assert!(fin.complete && items.len() == 3, "every query is answered in full");
    }
    // 4 go through at once (twice the rate), the 5th and 6th wait 1/2 s each.
    assert!(start.elapsed() >= Duration::from_millis(1000), "{:?}", start.elapsed());
}
