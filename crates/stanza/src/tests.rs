#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn stanza_error_wire_form() {
    let e = StanzaError::new(Condition::ServiceUnavailable);
    let mut out = Vec::new();
    e.write_to(&mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "<error type=\"cancel\"><service-unavailable xmlns=\"urn:ietf:params:xml:ns:xmpp-stanzas\"/></error>"
    );
}

#[test]
fn default_types_follow_rfc6120() {
    assert_eq!(Condition::BadRequest.default_type(), ErrorType::Modify);
    assert_eq!(Condition::Forbidden.default_type(), ErrorType::Auth);
    assert_eq!(Condition::ItemNotFound.default_type(), ErrorType::Cancel);
    assert_eq!(Condition::ResourceConstraint.default_type(), ErrorType::Wait);
}

#[test]
fn error_reply_swaps_addresses_and_skips_errors() {
    let mut f = rookery_xml::Framer::new(rookery_xml::Limits::default());
    f.read_buf().extend_from_slice(
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>\
          <message to='bob@example.com' id='m1'><body>hi &amp; bye</body></message>\
          <message to='bob@example.com' type='error' id='m2'/>",
    );
    let mut els = Vec::new();
    while let Some(fr) = f.next_frame().unwrap() {
        if let rookery_xml::Frame::Element(e) = fr {
            els.push(e);
        }
    }
    let env = Envelope {
        kind: Kind::Message,
        from: Jid::parse("alice@example.com/phone").unwrap(),
        to: Jid::parse("bob@example.com").unwrap(),
        el: els.remove(0),
    };
    let reply = env.error_reply(&StanzaError::new(Condition::ServiceUnavailable)).unwrap();
    let s = std::str::from_utf8(&reply).unwrap();
    assert!(
        s.starts_with("<message from=\"bob@example.com\" to=\"alice@example.com/phone\" id=\"m1\" type=\"error\">"),
        "{s}"
    );
    let wire = env.wire();
    let w = std::str::from_utf8(&wire).unwrap();
    assert!(w.contains("from=\"alice@example.com/phone\""), "{w}");
    assert!(w.contains("<body>hi &amp; bye</body>"), "{w}");
    let err_env = Envelope { el: els.remove(0), ..env };
    assert!(err_env.error_reply(&StanzaError::new(Condition::ServiceUnavailable)).is_none());
}
