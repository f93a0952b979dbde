#![allow(clippy::unwrap_used)]

use super::*;
use crate::parse_element;

const HEADER: &str = "<?xml version='1.0' encoding='UTF-8'?>\n<stream:stream to='example.com' \
xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0' \
xml:lang='en' from='juliet@example.com' id='s&amp;1'>";

const STANZAS: &str = "<message to='romeo@example.net/orchard' from='juliet@example.com/balcony' \
type='chat' id='m1' xml:lang='en'><body>Wherefore art thou, Romeo? &lt;3 &#x263A; &#9731;</body>\
<thread>e0ffe42b28561960c6b12b944a092794b9683a38</thread></message>\n \t\
<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>\
<presence/>\
<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>\
<message id=\"q\"><body><![CDATA[<not> & ]] markup]]></body><x xmlns:p='urn:p' p:a='1'><p:y/></x>\
<body xml:lang='fr'>caf\u{e9} \u{1F600} ]&gt; ]]&gt;</body></message>\
<r xmlns='urn:xmpp:sm:3'/>";

fn framer() -> Framer {
    Framer::new(Limits::default())
}

/// Feeds `input` split at the given chunk sizes (cycled), collecting frames until the
/// input is exhausted or an error occurs. Consecutive whitespace frames are merged, since
/// how whitespace runs are split depends on the chunking.
fn feed(f: &mut Framer, input: &[u8], chunks: &[usize]) -> Result<Vec<Frame>, XmlError> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut c = 0;
    loop {
        while let Some(frame) = f.next_frame()? {
            if !(frame == Frame::Whitespace && out.last() == Some(&Frame::Whitespace)) {
                out.push(frame);
            }
        }
        if i >= input.len() {
            return Ok(out);
        }
        let n = chunks[c % chunks.len()].max(1).min(input.len() - i);
        c += 1;
        f.read_buf().extend_from_slice(&input[i..i + n]);
        i += n;
    }
}

fn frames(input: &[u8]) -> Result<Vec<Frame>, XmlError> {
    feed(&mut framer(), input, &[usize::MAX])
}

fn err(input: &str) -> XmlError {
    frames(input.as_bytes()).unwrap_err()
}

fn stream(body: &str) -> String {
    format!("{HEADER}{body}")
}

fn elements(frames: &[Frame]) -> Vec<&RawElement> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Element(e) => Some(e),
            _ => None,
        })
        .collect()
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn frames_a_client_stream() {
    let input = stream(&format!("{STANZAS}\n</stream:stream>"));
    let fr = frames(input.as_bytes()).unwrap();
    let Frame::StreamOpen(h) = &fr[0] else { panic!("{fr:?}") };
    assert_eq!(h.local_name, "stream");
    assert_eq!(h.prefix.as_deref(), Some("stream"));
    assert_eq!(h.ns.as_deref(), Some("http://etherx.jabber.org/streams"));
    assert_eq!(h.default_ns.as_deref(), Some("jabber:client"));
    assert_eq!(h.to.as_deref(), Some("example.com"));
    assert_eq!(h.from.as_deref(), Some("juliet@example.com"));
    assert_eq!(h.id.as_deref(), Some("s&1"));
    assert_eq!(h.version.as_deref(), Some("1.0"));
    assert_eq!(h.lang.as_deref(), Some("en"));
    assert_eq!(h.ns_decls, vec![("stream".into(), "http://etherx.jabber.org/streams".into())]);
    assert_eq!(fr.last(), Some(&Frame::StreamClose));
    assert!(fr.contains(&Frame::Whitespace));

    let els = elements(&fr);
    assert_eq!(els.len(), 6);
    let m = els[0];
    assert_eq!((m.name.as_str(), m.ns.as_str()), ("message", "jabber:client"));
    assert_eq!(m.to.as_deref(), Some("romeo@example.net/orchard"));
    assert_eq!(m.from.as_deref(), Some("juliet@example.com/balcony"));
    assert_eq!(m.kind.as_deref(), Some("chat"));
    assert_eq!(m.id.as_deref(), Some("m1"));
    assert_eq!(m.lang.as_deref(), Some("en"));
    assert!(!m.self_closing);
    assert!(m.raw.starts_with(b"<message ") && m.raw.ends_with(b"</message>"));
    assert_eq!(&m.raw[m.start_tag_len - 1..m.start_tag_len], b">");
    assert!(STANZAS.as_bytes().starts_with(&m.raw));

    assert_eq!((els[1].name.as_str(), els[1].kind.as_deref()), ("iq", Some("get")));
    let p = els[2];
    assert!(p.self_closing);
    assert_eq!(&p.raw[..], b"<presence/>");
    assert_eq!(p.start_tag_len, p.raw.len());
    let feat = els[3];
    assert_eq!(feat.name, "features");
    assert_eq!(feat.prefix.as_deref(), Some("stream"));
    assert_eq!(feat.ns, "http://etherx.jabber.org/streams");
    assert_eq!(els[5].ns, "urn:xmpp:sm:3");

    // Frames concatenated give back the input minus whitespace and the header.
    let joined: Vec<u8> = els.iter().flat_map(|e| e.raw.iter().copied()).collect();
    let expected: String = STANZAS.replace("\n \t", "");
    assert_eq!(joined, expected.as_bytes());
}

#[test]
fn any_chunking_gives_the_same_frames() {
    let input = stream(&format!("{STANZAS} </stream:stream>"));
    let whole = frames(input.as_bytes()).unwrap();
    let bytewise = feed(&mut framer(), input.as_bytes(), &[1]).unwrap();
    assert_eq!(whole, bytewise);
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for _ in 0..300 {
        let chunks: Vec<usize> = (0..16).map(|_| 1 + rng.below(40)).collect();
        assert_eq!(feed(&mut framer(), input.as_bytes(), &chunks).unwrap(), whole);
    }
}

#[test]
fn parses_elements_into_trees() {
    let input = stream(STANZAS);
    let fr = frames(input.as_bytes()).unwrap();
    let els = elements(&fr);
    let m = els[0].parse().unwrap();
    assert!(m.is("message", "jabber:client"));
    assert_eq!(
        m.get_child("body", "jabber:client").unwrap().text_content(),
        "Wherefore art thou, Romeo? <3 \u{263A} \u{2603}"
    );
    let ping = els[1].parse().unwrap();
    assert!(ping.get_child("ping", "urn:xmpp:ping").is_some());
    let features = els[3].parse().unwrap();
    assert!(features.is("features", "http://etherx.jabber.org/streams"));
    let tls = features.get_child("starttls", "urn:ietf:params:xml:ns:xmpp-tls").unwrap();
    assert!(tls.get_child("required", "urn:ietf:params:xml:ns:xmpp-tls").is_some());
    let q = els[4].parse().unwrap();
    let bodies: Vec<String> = q.elements().map(Element::text_content).collect();
    assert_eq!(bodies[0], "<not> & ]] markup");
    assert_eq!(bodies[2], "caf\u{e9} \u{1F600} ]> ]]>");
    let x = q.get_child("x", "jabber:client").unwrap();
    assert!(x.get_child("y", "urn:p").is_some());
}

#[test]
fn multibyte_characters_split_anywhere() {
    let body = "<message><body>\u{e9}\u{20AC}\u{1F600}</body><\u{e9}l\u{e9}ment a\u{e9}='\u{1F600}'/></message>";
    let input = stream(body);
    let whole = frames(input.as_bytes()).unwrap();
    assert_eq!(elements(&whole)[0].raw, body.as_bytes());
    assert_eq!(feed(&mut framer(), input.as_bytes(), &[1]).unwrap(), whole);
    assert_eq!(feed(&mut framer(), input.as_bytes(), &[2, 3]).unwrap(), whole);
}

#[test]
fn invalid_utf8_is_rejected() {
    for bad in [
        &b"\xff"[..],
        b"\xc0\xaf",         // overlong
        b"\xe0\x80\xaf",     // overlong
        b"\xed\xa0\x80",     // surrogate
        b"\xf4\x90\x80\x80", // above U+10FFFF
        b"\xc3",             // truncated, then ASCII
        b"\x80",
    ] {
        let mut input = stream("<message><body>").into_bytes();
        input.extend_from_slice(bad);
        input.extend_from_slice(b"</body></message>");
        assert_eq!(frames(&input).unwrap_err(), XmlError::BadEncoding, "{bad:?}");
        assert_eq!(feed(&mut framer(), &input, &[1]).unwrap_err(), XmlError::BadEncoding);
    }
    let mut input = stream("<message to='").into_bytes();
    input.extend_from_slice(b"\xe2\x82'/>");
    assert_eq!(frames(&input).unwrap_err(), XmlError::BadEncoding);
    assert!(matches!(err(&stream("<a>\u{FFFF}</a>")), XmlError::NotWellFormed(_)));
}

#[test]
fn header_variants() {
    // Declaration optional; single quotes or double; a self-closing header opens and closes.
    let fr = frames(b"<stream:stream xmlns:stream=\"http://etherx.jabber.org/streams\" to=\"a&#x40;b\"/>").unwrap();
    let Frame::StreamOpen(h) = &fr[0] else { panic!() };
    assert_eq!(h.to.as_deref(), Some("a@b"));
    assert_eq!(h.default_ns, None);
    assert_eq!(fr[1], Frame::StreamClose);

    // Unprefixed header: its namespace is the default one.
    let fr = frames(b"<stream xmlns='urn:x'><a/></stream>").unwrap();
    let Frame::StreamOpen(h) = &fr[0] else { panic!() };
    assert_eq!(h.ns.as_deref(), Some("urn:x"));
    assert_eq!(elements(&fr)[0].ns, "urn:x");
    assert_eq!(fr.last(), Some(&Frame::StreamClose));

    // Whitespace before and after the declaration is tolerated and dropped.
    let fr = frames(b"  <?xml version='1.0'?>\n\n<s:s xmlns:s='u'>").unwrap();
    assert_eq!(fr.len(), 1);

    // Stanzas with no default namespace anywhere get "".
    let fr = frames(b"<s:s xmlns:s='u'><a/>").unwrap();
    assert_eq!(elements(&fr)[0].ns, "");
}

#[test]
fn stream_header_accessor_and_buffering() {
    let mut f = framer();
    assert!(f.stream_header().is_none());
    f.read_buf().extend_from_slice(HEADER.as_bytes());
    f.read_buf().extend_from_slice(b"<message><bo");
    assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamOpen(_)))));
    assert_eq!(f.stream_header().unwrap().to.as_deref(), Some("example.com"));
    assert_eq!(f.next_frame(), Ok(None));
    assert_eq!(f.buffered_len(), "<message><bo".len());
    f.read_buf().extend_from_slice(b"dy/></message>  ");
    assert!(matches!(f.next_frame(), Ok(Some(Frame::Element(_)))));
    assert_eq!(f.next_frame(), Ok(Some(Frame::Whitespace)));
    assert_eq!(f.next_frame(), Ok(None));
    assert_eq!(f.buffered_len(), 0);
}

#[test]
fn restart_expects_a_new_header_and_keeps_buffered_bytes() {
    let mut f = framer();
    let first = format!("{HEADER}<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGp1bGlldABy</auth>");
    let mut fr = feed(&mut f, first.as_bytes(), &[7]).unwrap();
    assert_eq!(fr.len(), 2);
    let Frame::Element(auth) = fr.pop().unwrap() else { panic!() };
    assert_eq!(auth.ns, "urn:ietf:params:xml:ns:xmpp-sasl");
    assert_eq!(auth.parse().unwrap().text_content(), "AGp1bGlldABy");
    // The client pipelines the new header; part of it was already scanned as if it were a
    // stanza of the old stream, and is scanned again as a header after the restart.
    f.read_buf().extend_from_slice(b"<stream:stream xmlns='jabber:client' ");
    assert_eq!(f.next_frame(), Ok(None));
    f.restart();
    assert!(f.stream_header().is_none());
    f.read_buf()
        .extend_from_slice(b"xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'><iq/>");
    let Some(Frame::StreamOpen(h)) = f.next_frame().unwrap() else { panic!() };
    assert_eq!(h.to.as_deref(), Some("example.com"));
    assert!(matches!(f.next_frame(), Ok(Some(Frame::Element(e))) if e.name == "iq" && e.ns == "jabber:client"));

    // A declaration may precede the new header when the restart comes before the bytes.
    f.restart();
    f.read_buf().extend_from_slice(b"<?xml version='1.0'?>\n<stream:stream xmlns:stream='u' xmlns='jabber:client'>");
    assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamOpen(_)))));

    // Without restart, a second header is just a (stream:stream) stanza that never ends.
    let mut f = framer();
    f.read_buf().extend_from_slice(format!("{HEADER}<?xml version='1.0'?>").as_bytes());
    assert!(f.next_frame().unwrap().is_some());
    assert_eq!(f.next_frame(), Err(XmlError::Restricted("processing instruction")));
}

#[test]
fn stream_close_must_match_the_header() {
    assert!(matches!(err(&stream("</stream>")), XmlError::NotWellFormed(_)));
    assert!(matches!(err(&stream("</stream:stream><a/>")), XmlError::NotWellFormed(_)));
    let fr = frames(stream("</stream:stream >\n").as_bytes()).unwrap();
    assert_eq!(fr.last(), Some(&Frame::StreamClose));
}

#[test]
fn well_formedness_errors() {
    let cases = [
        "text<a/>",
        "<a></b>",
        "<a><b></a></b>",
        "<a b='1' b='2'/>",
        "<a b='<'/>",
        "<a b=1/>",
        "<a b/>",
        "<a b='1'c='2'/>",
        "<a>]]></a>",
        "<a>x]]]></a>",
        "<1a/>",
        "<-a/>",
        "<.a/>",
        "<a:b:c xmlns:a='u'/>",
        "<a xmlns:p=''/>",
        "< a/>",
        "<a / >",
        "<a>&#0;</a>",
        "<a>&#xD800;</a>",
        "<a>&#x110000;</a>",
        "<a>&#;</a>",
        "<a>&#x;</a>",
        "<a>&#12a;</a>",
        "<a>& </a>",
        "<a>&amp </a>",
        "<a>\u{1}</a>",
        "<a b='\u{1}'/>",
        "<![CDATA[x]]>",
        "</>",
    ];
    for case in cases {
        let e = err(&stream(case));
        assert!(matches!(e, XmlError::NotWellFormed(_)), "{case}: {e:?}");
        let e = feed(&mut framer(), stream(case).as_bytes(), &[1]).unwrap_err();
        assert!(matches!(e, XmlError::NotWellFormed(_)), "{case} bytewise: {e:?}");
    }
    assert!(matches!(err("text"), XmlError::NotWellFormed(_)));
    assert!(matches!(err("</stream>"), XmlError::NotWellFormed(_)));
}

#[test]
fn restricted_xml() {
    let cases = [
        stream("<a><!-- comment --></a>"),
        stream("<!-- comment -->"),
        stream("<a><?pi data?></a>"),
        stream("<?pi data?>"),
        stream("<a>&nbsp;</a>"),
        stream("<a b='&ent;'/>"),
        stream("<a>&averyveryverylongentityname;</a>"),
        stream("<a><!ENTITY x 'y'></a>"),
        "<!DOCTYPE stream [<!ENTITY x 'y'>]><stream:stream/>".to_owned(),
        "<?xml-stylesheet href='x'?><s/>".to_owned(),
        "<?xml version='1.0'?><?xml version='1.0'?><s/>".to_owned(),
    ];
    for case in &cases {
        let e = err(case);
        assert!(matches!(e, XmlError::Restricted(_)), "{case}: {e:?}");
        let e = feed(&mut framer(), case.as_bytes(), &[1]).unwrap_err();
        assert!(matches!(e, XmlError::Restricted(_)), "{case} bytewise: {e:?}");
    }
    // The five predefined entities and character references are fine.
    let fr = frames(stream("<a b='&amp;&lt;&gt;&quot;&apos;&#60;'>&amp;&#x1F600;</a>").as_bytes()).unwrap();
    assert_eq!(elements(&fr).len(), 1);
}

#[test]
fn declaration_encoding() {
    assert_eq!(err("<?xml version='1.0' encoding='ISO-8859-1'?><s/>"), XmlError::BadEncoding);
    assert!(frames(b"<?xml version='1.0' encoding=\"utf-8\"?><s/>").is_ok());
}

#[test]
fn namespace_prefixes() {
    assert_eq!(err(&stream("<p:a/>")), XmlError::UndeclaredPrefix);
    assert_eq!(err(&stream("<a p:x='1'/>")), XmlError::UndeclaredPrefix);
    assert_eq!(err(&stream("<a><p:b/></a>")), XmlError::UndeclaredPrefix);
    assert_eq!(err(&stream("<a><b xmlns:p='u'/><p:c/></a>")), XmlError::UndeclaredPrefix);
    assert_eq!(err("<s:s/>"), XmlError::UndeclaredPrefix);
    // In scope: own declaration, an ancestor's, the header's, and xml:.
    let fr = frames(
        stream(
            "<a xmlns:p='u'><p:b p:x='1' xml:lang='en'><p:c/></p:b></a>\
<p:d xmlns:p='urn:d'/><stream:error/><a stream:x='1'/>",
        )
        .as_bytes(),
    )
    .unwrap();
    let els = elements(&fr);
    assert_eq!(els.len(), 4);
    assert_eq!((els[1].name.as_str(), els[1].ns.as_str()), ("d", "urn:d"));
    assert_eq!(els[2].ns, "http://etherx.jabber.org/streams");
    // An element overriding the default namespace.
    let fr = frames(stream("<a xmlns='urn:a'><b/></a>").as_bytes()).unwrap();
    let a = elements(&fr)[0];
    assert_eq!(a.ns, "urn:a");
    assert!(a.parse().unwrap().get_child("b", "urn:a").is_some());
}

#[test]
fn size_limit_is_enforced_before_the_element_ends() {
    let limits = Limits { max_stanza_bytes: 100, ..Limits::default() };
    let mut f = Framer::new(limits);
    f.read_buf().extend_from_slice(HEADER.as_bytes());
    assert!(matches!(f.next_frame(), Ok(Some(Frame::StreamOpen(_)))));
    let exact = format!("<message><body>{}</body></message>", "x".repeat(100 - 32));
    assert_eq!(exact.len(), 100);
    f.read_buf().extend_from_slice(exact.as_bytes());
    assert!(matches!(f.next_frame(), Ok(Some(Frame::Element(_)))));
    // No end tag ever arrives: the error comes once 101 bytes are buffered.
    f.read_buf().extend_from_slice(b"<message><body>");
    for _ in 0..85 {
        f.read_buf().extend_from_slice(b"x");
        assert_eq!(f.next_frame(), Ok(None));
    }
    f.read_buf().extend_from_slice(b"x");
    assert_eq!(f.next_frame(), Err(XmlError::TooLarge));
    // Errors are sticky.
    assert_eq!(f.next_frame(), Err(XmlError::TooLarge));

    // A large whitespace run between stanzas is not an element.
    let mut f = Framer::new(limits);
    let input = format!("{HEADER}{}<a/>", " ".repeat(1000));
    assert!(feed(&mut f, input.as_bytes(), &[usize::MAX]).is_ok());
}

#[test]
fn size_limit_wins_over_a_later_error_in_any_chunking() {
    // A long text run passes the limit and an illegal character follows beyond it: the
    // stanza is too large, whether it arrives in one read or byte by byte (fuzz/framer
    // found one read reporting the character instead).
    let limits = Limits { max_stanza_bytes: 100, ..Limits::default() };
    let input = format!("{HEADER}<message><body>{}\u{1}</body></message>", "x".repeat(200));
    for chunks in [&[usize::MAX][..], &[1], &[7, 64]] {
        let got = feed(&mut Framer::new(limits), input.as_bytes(), chunks);
        assert_eq!(got.unwrap_err(), XmlError::TooLarge, "chunks {chunks:?}");
    }
    // Same for a whitespace run inside a start tag and an attribute value.
    for body in [format!("<message{}\u{1}/>", " ".repeat(200)), format!("<message a='{}\u{1}'/>", "y".repeat(200))] {
        let input = format!("{HEADER}{body}");
        for chunks in [&[usize::MAX][..], &[1]] {
            let got = feed(&mut Framer::new(limits), input.as_bytes(), chunks);
            assert_eq!(got.unwrap_err(), XmlError::TooLarge, "{body:?} chunks {chunks:?}");
        }
    }
    // Below the limit the character is still reported.
    let input = format!("{HEADER}<message><body>x\u{1}</body></message>");
    assert!(matches!(feed(&mut Framer::new(limits), input.as_bytes(), &[usize::MAX]), Err(XmlError::NotWellFormed(_))));
}

#[test]
fn header_limit() {
    let limits = Limits { max_header_bytes: 64, ..Limits::default() };
    let long = format!("<stream:stream xmlns:stream='u' to='{}'>", "a".repeat(100));
    assert_eq!(feed(&mut Framer::new(limits), long.as_bytes(), &[usize::MAX]).unwrap_err(), XmlError::TooLarge);
    assert_eq!(feed(&mut Framer::new(limits), long.as_bytes(), &[1]).unwrap_err(), XmlError::TooLarge);
    let ok = "<stream:stream xmlns:stream='u'>";
    assert!(feed(&mut Framer::new(limits), ok.as_bytes(), &[1]).is_ok());
}

#[test]
fn depth_and_attribute_limits() {
    let limits = Limits { max_depth: 3, max_attrs: 3, ..Limits::default() };
    let run = |s: &str| {
        let input = format!("<s:s xmlns:s='u' xmlns='jabber:client'>{s}");
        feed(&mut Framer::new(limits), input.as_bytes(), &[usize::MAX])
    };
    assert!(run("<a><b><c/></b></a>").is_ok());
    assert!(run("<a><b><c></c></b></a>").is_ok());
    assert_eq!(run("<a><b><c><d/></c></b></a>"), Err(XmlError::TooDeep));
    assert!(run("<a x='1' y='2' z='3'/>").is_ok());
    assert_eq!(run("<a x='1' y='2' z='3' w=''/>"), Err(XmlError::TooManyAttributes));
    assert_eq!(run("<a><b x='1' y='2' z='3' w=''/></a>"), Err(XmlError::TooManyAttributes));
    // Header attributes count too.
    assert_eq!(feed(&mut Framer::new(limits), HEADER.as_bytes(), &[usize::MAX]), Err(XmlError::TooManyAttributes));
}

#[test]
fn rewrite_attrs_sets_removes_and_appends() {
    let input = stream("<message to = \"a@b\"  from='evil@x' type='chat'><body a='1'>hi</body></message><presence/>");
    let fr = frames(input.as_bytes()).unwrap();
    let els = elements(&fr);
    let m = els[0];
    let out = m.rewrite_attrs(&[("from", Some("juliet@example.com/b\"a'l&<>")), ("id", Some("new")), ("type", None)]);
    assert_eq!(
        &out[..],
        &b"<message to = \"a@b\"  from=\"juliet@example.com/b&quot;a&apos;l&amp;&lt;&gt;\" \
id=\"new\"><body a='1'>hi</body></message>"[..]
    );
    let again = RawElement::from_bytes(out.clone(), "jabber:client").unwrap();
    assert_eq!(again.from.as_deref(), Some("juliet@example.com/b\"a'l&<>"));
    assert_eq!(again.id.as_deref(), Some("new"));
    assert_eq!(again.kind, None);
    assert_eq!(again.to, m.to);
    let mut expected = m.parse().unwrap();
    expected.set_attr("from", "juliet@example.com/b\"a'l&<>");
    expected.remove_attr("type");
    expected.set_attr("id", "new");
    assert_eq!(again.parse().unwrap(), expected);

    let p = els[1].rewrite_attrs(&[("from", Some("x@y")), ("to", None)]);
    assert_eq!(&p[..], b"<presence from=\"x@y\"/>");
    assert_eq!(&els[1].rewrite_attrs(&[])[..], b"<presence/>");

    // Garbage in a hand-built value is passed through, never a panic.
    let mut bogus = els[1].clone();
    bogus.start_tag_len = 1000;
    assert_eq!(bogus.rewrite_attrs(&[("a", Some("b"))]), bogus.raw);
    bogus.start_tag_len = 3;
    assert_eq!(bogus.rewrite_attrs(&[("a", Some("b"))]), bogus.raw);
}

#[test]
fn rewrite_attrs_round_trips_random_values() {
    let fr =
        frames(stream("<iq type='set' id='1' to='a'><query xmlns='urn:q'><item/></query></iq>").as_bytes()).unwrap();
    let iq = elements(&fr)[0];
    let mut rng = XorShift(42);
    let alphabet: Vec<char> = "ab&<>\"' \t\n\r\u{e9}\u{1F600}".chars().collect();
    for _ in 0..200 {
        let v: String = (0..rng.below(12)).map(|_| alphabet[rng.below(alphabet.len())]).collect();
        let out = iq.rewrite_attrs(&[("from", Some(&v)), ("to", Some(&v))]);
        let re = RawElement::from_bytes(out, "jabber:client").unwrap();
        assert_eq!(re.from.as_deref(), Some(v.as_str()));
        assert_eq!(re.to.as_deref(), Some(v.as_str()));
        assert_eq!(re.kind.as_deref(), Some("set"));
        let tree = re.parse().unwrap();
        assert!(tree.get_child("query", "urn:q").is_some());
    }
}

#[test]
fn from_bytes_frames_a_single_element() {
    let e = RawElement::from_bytes(Bytes::from_static(b"<iq xmlns='jabber:server' id='x'/>"), "jabber:client").unwrap();
    assert_eq!((e.name.as_str(), e.ns.as_str()), ("iq", "jabber:server"));
    let e = RawElement::from_bytes(Bytes::from_static(b" <iq id='x'/>\n"), "jabber:client").unwrap();
    assert_eq!(e.ns, "jabber:client");
    assert_eq!(&e.raw[..], b"<iq id='x'/>");
    for bad in [&b"<a/><b/>"[..], b"<a>", b"", b"  ", b"<a/>x"] {
        assert!(RawElement::from_bytes(Bytes::copy_from_slice(bad), "").is_err(), "{bad:?}");
    }
}

#[test]
fn large_element_fed_bytewise_is_linear() {
    // Rescanning from the start on every byte would make this quadratic (~10^10 steps).
    let body = "<b>x &amp; y</b>".repeat(12_000);
    let input = stream(&format!("<message>{body}</message>"));
    let mut f = framer();
    let mut count = 0;
    for b in input.as_bytes() {
        f.read_buf().extend_from_slice(&[*b]);
        while let Some(frame) = f.next_frame().unwrap() {
            if let Frame::Element(e) = frame {
                assert_eq!(e.raw.len(), body.len() + 19);
                count += 1;
            }
        }
    }
    assert_eq!(count, 1);
}

#[test]
fn truncated_buffer_is_an_error_not_a_panic() {
    let mut f = framer();
    f.read_buf().extend_from_slice(HEADER.as_bytes());
    f.read_buf().extend_from_slice(b"<message><body>abc");
    f.next_frame().unwrap();
    assert_eq!(f.next_frame(), Ok(None));
    f.read_buf().clear();
    assert!(f.next_frame().is_err());
}

fn exercise(input: &[u8], chunks: &[usize]) {
    let mut f = framer();
    if let Ok(fr) = feed(&mut f, input, chunks) {
        for e in elements(&fr) {
            let _ = e.parse();
            let _ = e.rewrite_attrs(&[("from", Some("a@b/c")), ("id", None)]);
        }
    }
    let _ = parse_element(input, "jabber:client");
    let _ = RawElement::from_bytes(Bytes::copy_from_slice(input), "jabber:client");
}

#[test]
fn random_input_never_panics() {
    let mut rng = XorShift(0xDEAD_BEEF_CAFE_F00D);
    let tokens: &[&[u8]] = &[
        b"<",
        b">",
        b"/",
        b"/>",
        b"</",
        b"=",
        b"'",
        b"\"",
        b" ",
        b"\n",
        b"a",
        b"b:c",
        b"xmlns",
        b"xmlns:b",
        b"&",
        b";",
        b"&amp;",
        b"&#x",
        b"#",
        b"1",
        b"<![CDATA[",
        b"]]>",
        b"]",
        b"<?",
        b"?>",
        b"<!--",
        b"\xc3",
        b"\xa9",
        b"\xf0\x9f",
        b"\xff",
        b"\0",
        b"stream:stream",
        b"xml:lang",
        b"<?xml version='1.0'?>",
    ];
    for _ in 0..3000 {
        let mut input = Vec::new();
        if rng.below(2) == 0 {
            input.extend_from_slice(HEADER.as_bytes());
        }
        for _ in 0..rng.below(60) {
            if rng.below(4) == 0 {
                input.push(rng.next() as u8);
            } else {
                input.extend_from_slice(tokens[rng.below(tokens.len())]);
            }
        }
        let chunk = 1 + rng.below(9);
        exercise(&input, &[chunk, 1 + rng.below(5)]);
    }
}

#[test]
fn mutated_stanzas_never_panic() {
    let base = stream(&format!("{STANZAS}</stream:stream>")).into_bytes();
    let mut rng = XorShift(7);
    let mut ok = 0;
    for _ in 0..3000 {
        let mut input = base.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(input.len());
            match rng.below(4) {
                0 => input[at] = rng.next() as u8,
                1 => {
                    input.remove(at);
                }
                2 => {
                    let pick = b"<>/&;'\"]:x \xc3";
                    input.insert(at, pick[rng.below(pick.len())]);
                }
                _ => {
                    let end = (at + rng.below(20)).min(input.len());
                    input.drain(at..end);
                }
            }
        }
        let chunks = [1 + rng.below(30), 1 + rng.below(3)];
        let mut f = framer();
        let whole = feed(&mut framer(), &input, &[usize::MAX]);
        let split = feed(&mut f, &input, &chunks);
        // Chunking never changes the outcome, valid or not.
        match (&whole, &split) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a, b);
                ok += 1;
            }
            (Err(a), Err(b)) => assert_eq!(a, b),
            _ => panic!("{whole:?} vs {split:?} for {:?}", String::from_utf8_lossy(&input)),
        }
        exercise(&input, &chunks);
    }
    assert!(ok > 0);
}

/// Reads like a socket would: at most the spare capacity `read_buf` offers. Returns the
/// bytes read and the offer.
fn socket_read_offer(f: &mut Framer, input: &[u8]) -> (usize, usize) {
    let buf = f.read_buf();
    let offer = buf.capacity() - buf.len();
    let n = offer.min(input.len());
    buf.extend_from_slice(&input[..n]);
    (n, offer)
}

fn socket_read(f: &mut Framer, input: &[u8]) -> usize {
    socket_read_offer(f, input).0
}

#[test]
fn an_idle_stream_keeps_a_small_read_buffer() {
    let mut f = framer();
    let input = stream("").into_bytes();
    assert_eq!(socket_read(&mut f, &input), input.len());
    while f.next_frame().unwrap().is_some() {}
    // A login's worth of small stanzas, one per read.
    for i in 0..8 {
        let s = format!("<iq type='get' id='q{i}'><ping xmlns='urn:xmpp:ping'/></iq>");
        assert_eq!(socket_read(&mut f, s.as_bytes()), s.len());
        assert!(matches!(f.next_frame().unwrap(), Some(Frame::Element(_))));
        assert_eq!(f.next_frame().unwrap(), None);
    }
    // Waiting for the next read: this is what an idle connection holds.
    let cap = f.read_buf().capacity();
    assert!(cap <= 2 * MIN_READ, "idle read buffer is {cap} bytes");
    assert!(cap >= MIN_READ / 2, "a read still has room: {cap}");
}

#[test]
fn a_busy_stream_reads_in_large_chunks_and_frames_the_same() {
    let mut body = String::new();
    for i in 0..2000 {
        body.push_str(&format!("<message to='b@x' id='m{i}'><body>{}</body></message>", "y".repeat(i % 300)));
    }
    let input = stream(&body).into_bytes();
    let mut f = framer();
    let mut at = 0;
    let mut got = Vec::new();
    let mut largest_offer = 0;
    while at < input.len() {
        // A dropped read (select! picking another branch) in between changes nothing.
        let _ = f.read_buf();
        let (n, offer) = socket_read_offer(&mut f, &input[at..]);
        largest_offer = largest_offer.max(offer);
        at += n;
        while let Some(frame) = f.next_frame().unwrap() {
            got.push(frame);
        }
    }
    assert!(largest_offer >= READ_CHUNK / 2, "full reads grow the offer: {largest_offer}");
    assert_eq!(got, frames(&input).unwrap(), "adaptive reads frame like one big read");
}
