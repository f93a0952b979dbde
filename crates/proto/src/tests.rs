#![allow(clippy::unwrap_used)]

use super::*;
use prost::Message as _;
use rookery_stanza::{Condition, ErrorType};
use rookery_xml::{Frame, Framer, Limits};

/// Frames stanzas the way the edge does: from a client stream, so the elements inherit the
/// stream header's namespace declarations.
fn framed(stanzas: &str) -> Vec<RawElement> {
    let mut f = Framer::new(Limits::default());
    f.read_buf().extend_from_slice(
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
          to='example.com' version='1.0'>",
    );
    f.read_buf().extend_from_slice(stanzas.as_bytes());
    let mut out = Vec::new();
    while let Some(frame) = f.next_frame().unwrap() {
        if let Frame::Element(e) = frame {
            out.push(e);
        }
    }
    out
}

fn envelope(el: RawElement, from: &str, to: &str) -> Envelope {
    let kind = Kind::from_name(&el.name).unwrap();
    Envelope { kind, from: Jid::parse(from).unwrap(), to: Jid::parse(to).unwrap(), el }
}

/// Through the real wire encoding, not just the Rust structs.
fn over_wire<M: prost::Message + Default>(m: &M) -> M {
    M::decode(m.encode_to_vec().as_slice()).unwrap()
}

#[test]
fn envelope_round_trip_keeps_every_header_field_and_the_bytes() {
    let els = framed(
        "<message to='romeo@example.net' id='m1' type='chat' xml:lang='en'><body>hi &amp; bye</body></message>\
         <presence/>\
         <iq type='get' id='r1' from='juliet@example.com'><query xmlns='jabber:iq:roster'/></iq>",
    );
    assert_eq!(els.len(), 3);
    for el in els {
        let env = envelope(el, "juliet@example.com/balcony", "romeo@example.net");
        let route = over_wire(&pb::Route::from((42, &env)));
        let (conn, back) = <(ConnId, Envelope)>::try_from(route).unwrap();
        assert_eq!(conn, 42);
        assert_eq!(back.kind, env.kind);
        assert_eq!(back.from, env.from);
        assert_eq!(back.to, env.to);
        // RawElement's equality covers raw, name, ns, prefix, to, from, type, id, lang,
        // start_tag_len, self_closing and the inherited declarations.
        assert_eq!(back.el, env.el);
        assert_eq!(back.wire(), env.wire());
    }
}

#[test]
fn header_values_survive_individually() {
    let el = framed("<message to='a@b' from='c@d/e' type='normal' id='x' xml:lang='de'/>").remove(0);
    assert!(el.self_closing);
    let env = envelope(el, "c@d/e", "a@b");
    let (_, back) = <(ConnId, Envelope)>::try_from(over_wire(&pb::Route::from((1, env)))).unwrap();
    assert_eq!(back.el.to.as_deref(), Some("a@b"));
    assert_eq!(back.el.from.as_deref(), Some("c@d/e"));
    assert_eq!(back.el.kind.as_deref(), Some("normal"));
    assert_eq!(back.el.id.as_deref(), Some("x"));
    assert_eq!(back.el.lang.as_deref(), Some("de"));
    assert_eq!(back.el.ns, "jabber:client");
    assert!(back.el.self_closing);
    assert_eq!(back.el.start_tag_len, back.el.raw.len());
    let mut decls = back.el.inherited_ns.to_vec();
    decls.sort();
    assert_eq!(
        decls,
        [
            ("".to_owned(), "jabber:client".to_owned()),
            ("stream".to_owned(), "http://etherx.jabber.org/streams".to_owned())
        ]
    );
}

#[test]
fn prefixed_element_keeps_its_prefix() {
    let el =
        RawElement::from_bytes(Bytes::from_static(b"<c:message xmlns:c='jabber:client' to='a@b'/>"), "jabber:server")
            .unwrap();
    assert_eq!(el.prefix.as_deref(), Some("c"));
    let env = envelope(el, "x@y/z", "a@b");
    let (_, back) = <(ConnId, Envelope)>::try_from(over_wire(&pb::Route::from((1, &env)))).unwrap();
    assert_eq!(back.el, env.el);
}

#[test]
fn stanzas_of_one_stream_share_the_namespace_list() {
    let els = framed("<message to='a@b'/><message to='c@d'/>");
    let mut cache = NsCache::default();
    let mut lists = Vec::new();
    for el in els {
        let (_, env) = route_from_pb(pb::Route::from((1, envelope(el, "x@y/z", "a@b"))), &mut cache).unwrap();
        lists.push(env.el.inherited_ns);
    }
    assert!(Arc::ptr_eq(&lists[0], &lists[1]));
}

fn good_route() -> pb::Route {
    let el = framed("<message to='a@b'><body>x</body></message>").remove(0);
    pb::Route::from((7, envelope(el, "x@y/z", "a@b")))
}

#[test]
fn malformed_jid_in_a_route_is_an_error() {
    for (field, bad) in [("route.header.from", "@nohost"), ("route.header.to", "a@b@c")] {
        let mut r = good_route();
        let h = r.header.as_mut().unwrap();
        if field.ends_with("from") {
            h.from = bad.to_owned();
        } else {
            h.to = bad.to_owned();
        }
        match <(ConnId, Envelope)>::try_from(r) {
            Err(ProtoError::Jid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected a JID error for {field}, got {other:?}"),
        }
    }
}

#[test]
fn inconsistent_headers_are_errors() {
    type Mutation = Box<dyn Fn(&mut pb::Route)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("no header", Box::new(|r| r.header = None)),
        ("unknown kind", Box::new(|r| r.header.as_mut().unwrap().kind = 9)),
        ("kind/name mismatch", Box::new(|r| r.header.as_mut().unwrap().name = "iq".into())),
        ("start tag past the end", Box::new(|r| r.header.as_mut().unwrap().start_tag_len = 10_000)),
        ("zero start tag", Box::new(|r| r.header.as_mut().unwrap().start_tag_len = 0)),
        ("self-closing but longer", Box::new(|r| r.header.as_mut().unwrap().self_closing = true)),
        ("empty bytes", Box::new(|r| r.raw = Bytes::new())),
    ];
    for (what, mutate) in cases {
        let mut r = good_route();
        mutate(&mut r);
        assert!(<(ConnId, Envelope)>::try_from(r).is_err(), "{what} must be rejected");
    }
    assert!(<(ConnId, Envelope)>::try_from(good_route()).is_ok());
}

#[test]
fn malformed_jids_in_other_frames_are_errors() {
    use pb::edge_frame::Frame;
    let frames = [
        Frame::Bind(pb::Bind { req: 1, jid: "user@host".into(), conn: 1 }), // bare: not a full JID
        Frame::Unbind(pb::Unbind { jid: "@@".into(), conn: 1 }),
        Frame::Undelivered(pb::Undelivered { to: "".into(), raw: Bytes::new() }),
        Frame::SessionState(pb::SessionState {
            jid: "a@b/c".into(),
            directed: vec!["a@@b".into()],
            ..Default::default()
        }),
        Frame::PreauthIq(pb::PreauthIq {
            req: 1,
            to: "@x".into(),
            kind: 1,
            payload: Bytes::from_static(b"<q/>"),
            ..Default::default()
        }),
    ];
    for f in frames {
        let r = EdgeMsg::try_from(pb::EdgeFrame { frame: Some(f.clone()) });
        assert!(matches!(r, Err(ProtoError::Jid { .. })), "{f:?} gave {r:?}");
    }
}

#[test]
fn unknown_variant_from_a_newer_peer_decodes_as_unknown_frame() {
    // Field 99 length-delimited, empty: what a frame added in a later version looks like.
    let edge = pb::EdgeFrame::decode(&[0x9a, 0x06, 0x00][..]).unwrap();
    assert!(edge.frame.is_none());
    assert_eq!(EdgeMsg::try_from(edge).unwrap_err(), ProtoError::UnknownFrame);
    let router = pb::RouterFrame::decode(&[0x9a, 0x06, 0x00][..]).unwrap();
    assert_eq!(RouterMsg::try_from(router).unwrap_err(), ProtoError::UnknownFrame);
}

#[test]
fn edge_frames_round_trip() {
    let payload = Element::new("query", "jabber:iq:register")
        .child(Element::new("username", "jabber:iq:register").text("al & ice"));
    let state = SessionState {
        jid: FullJid::parse("u@d/r").unwrap(),
        conn: 9,
        priority: -5,
        available: true,
        presence: Some(Bytes::from_static(b"<presence from='u@d/r'><priority>-5</priority></presence>")),
        directed: vec![Jid::parse("room@muc.d/nick").unwrap(), Jid::parse("d").unwrap()],
        ext: [("carbons".to_owned(), Bytes::new()), ("z".to_owned(), Bytes::from_static(&[0, 1, 255]))]
            .into_iter()
            .collect(),
    };
    let msgs = vec![
        EdgeMsg::Hello(Hello { edge_id: 3, epoch: 77, proto_version: PROTO_VERSION }),
        EdgeMsg::Bind { req: 5, jid: FullJid::parse("u@d/r").unwrap(), conn: 11 },
        EdgeMsg::Unbind { jid: FullJid::parse("u@d/r").unwrap(), conn: 11 },
        EdgeMsg::PreauthIq {
            req: 6,
            iq: IqRequest { from: None, to: Jid::parse("d").unwrap(), kind: IqType::Set, id: "reg1".into(), payload },
        },
        EdgeMsg::Undelivered { to: FullJid::parse("u@d/r").unwrap(), raw: Bytes::from_static(b"<message/>") },
        EdgeMsg::SessionState(state.clone()),
        EdgeMsg::Ping { seq: 12 },
    ];
    for m in msgs {
        let back = EdgeMsg::try_from(over_wire(&pb::EdgeFrame::from(m.clone()))).unwrap();
        assert_eq!(format!("{back:?}"), format!("{m:?}"));
    }
    let entry = state.clone().into_entry(4);
    assert_eq!(entry.loc, Location { edge: 4, conn: 9 });
    assert_eq!((entry.priority, entry.available), (-5, true));
    assert_eq!(entry.ext, state.ext, "extension slots come through byte for byte");
    assert_eq!(entry.directed, state.directed);
}

#[test]
fn a_version_1_session_state_has_its_flags_read_as_extension_slots() {
    let f = pb::SessionState { jid: "a@b/c".into(), interested: true, carbons: true, ..Default::default() };
    let EdgeMsg::SessionState(s) =
        EdgeMsg::try_from(pb::EdgeFrame { frame: Some(pb::edge_frame::Frame::SessionState(f)) }).unwrap()
    else {
        panic!("not a session state")
    };
    let keys: Vec<_> = s.ext.iter().map(|(k, _)| k.to_owned()).collect();
    assert_eq!(keys, ["carbons", "roster"]);
}

#[test]
fn set_session_ext_round_trips() {
    for value in [Some(Bytes::from_static(b"on")), None] {
        let m = RouterMsg::SetSessionExt { conn: 7, key: "carbons".into(), value };
        let back = RouterMsg::try_from(over_wire(&pb::RouterFrame::from(m.clone()))).unwrap();
        assert_eq!(format!("{back:?}"), format!("{m:?}"));
    }
}

#[test]
fn session_state_priority_out_of_range_is_an_error() {
    let f = pb::SessionState { jid: "a@b/c".into(), priority: 300, ..Default::default() };
    let r = EdgeMsg::try_from(pb::EdgeFrame { frame: Some(pb::edge_frame::Frame::SessionState(f)) });
    assert_eq!(r.unwrap_err(), ProtoError::Invalid("session_state.priority"));
}

#[test]
fn preauth_payload_that_is_not_xml_is_an_error() {
    let f =
        pb::PreauthIq { req: 1, to: "d".into(), kind: 1, payload: Bytes::from_static(b"<q>"), ..Default::default() };
    let r = EdgeMsg::try_from(pb::EdgeFrame { frame: Some(pb::edge_frame::Frame::PreauthIq(f)) });
    assert!(matches!(r, Err(ProtoError::Xml { field: "preauth_iq.payload", .. })), "{r:?}");
}

fn router_round_trip(m: RouterMsg) -> RouterMsg {
    RouterMsg::try_from(over_wire(&pb::RouterFrame::from(m))).unwrap()
}

#[test]
fn router_frames_round_trip() {
    let raw = Bytes::from_static(b"<message to='a@b/c'><body>x</body></message>");
    match router_round_trip(RouterMsg::from_outbound(3, Outbound::Stanza(raw.clone()))) {
        RouterMsg::Deliver { conn: 3, raw: r } => assert_eq!(r, raw),
        other => panic!("{other:?}"),
    }
    for c in rookery_stanza::StreamCondition::ALL {
        match router_round_trip(RouterMsg::from_outbound(4, Outbound::Close(c))) {
            RouterMsg::Close { conn: 4, condition } => assert_eq!(condition, c),
            other => panic!("{other:?}"),
        }
    }
    for result in [Ok(()), Err(BindError::Conflict), Err(BindError::ResourceConstraint), Err(BindError::Internal)] {
        match router_round_trip(RouterMsg::BindResult { req: 8, result }) {
            RouterMsg::BindResult { req: 8, result: r } => assert_eq!(r, result),
            other => panic!("{other:?}"),
        }
    }
    for m in [RouterMsg::Drain, RouterMsg::ResyncRequest, RouterMsg::Pong { seq: 5 }] {
        assert_eq!(format!("{:?}", router_round_trip(m.clone())), format!("{m:?}"));
    }
}

#[test]
fn preauth_results_round_trip() {
    let p = Element::new("query", "jabber:iq:register")
        .child(Element::new("instructions", "jabber:iq:register").text("go"));
    let results: Vec<IqResult> = vec![
        Ok(None),
        Ok(Some(p)),
        Err(StanzaError::new(Condition::NotAcceptable).with_text("password too short")),
        Err(StanzaError::new(Condition::ServiceUnavailable)),
        Err(StanzaError::new(Condition::Conflict)
            .with_type(ErrorType::Wait)
            .with_app("blocked", "urn:xmpp:blocking:errors")),
    ];
    for result in results {
        match router_round_trip(RouterMsg::PreauthResult { req: 2, result: result.clone() }) {
            RouterMsg::PreauthResult { req: 2, result: back } => match (&back, &result) {
                (Ok(Some(a)), Ok(Some(b))) => assert_eq!(a.to_bytes(""), b.to_bytes("")),
                _ => assert_eq!(back, result),
            },
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn unknown_condition_names_degrade_to_undefined_condition() {
    let f = pb::RouterFrame {
        frame: Some(pb::router_frame::Frame::Close(pb::Close { conn: 1, condition: "x-new".into() })),
    };
    assert!(matches!(
        RouterMsg::try_from(f).unwrap(),
        RouterMsg::Close { condition: StreamCondition::UndefinedCondition, .. }
    ));
    let e = pb::StanzaError { condition: "x-new".into(), r#type: "bogus".into(), ..Default::default() };
    let back = stanza_error_from_pb(e);
    assert_eq!(back.condition, Condition::UndefinedCondition);
    assert_eq!(back.kind, Condition::UndefinedCondition.default_type());
}

#[test]
fn name_tables_are_complete_and_distinct() {
    let mut names: Vec<_> = rookery_stanza::StreamCondition::ALL.iter().map(|c| c.name()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), rookery_stanza::StreamCondition::ALL.len());
    for c in rookery_stanza::Condition::ALL {
        assert_eq!(condition_from_name(c.name()), Some(c));
    }
    for t in rookery_stanza::ErrorType::ALL {
        assert_eq!(error_type_from_name(t.name()), Some(t));
    }
    assert_eq!(stream_condition_from_name("system-shutdown"), Some(StreamCondition::SystemShutdown));
    assert_eq!(condition_from_name("nope"), None);
}

#[test]
fn interned_texts_are_reused_and_bounded_in_length() {
    let a = strings::intern("some fixed text").unwrap();
    let b = strings::intern("some fixed text").unwrap();
    assert!(std::ptr::eq(a, b));
    assert_eq!(strings::intern(&"x".repeat(10_000)), None);
}

#[test]
fn version_window_is_current_and_previous() {
    assert!(accepts_version(PROTO_VERSION));
    assert!(!accepts_version(PROTO_VERSION + 1));
    assert!(!accepts_version(0));
    assert_eq!(accepts_version(PROTO_VERSION.saturating_sub(1)), PROTO_VERSION > 1);
}
