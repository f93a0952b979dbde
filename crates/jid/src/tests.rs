#![allow(clippy::unwrap_used)]

use super::*;
use std::collections::HashSet;

fn parse(s: &str) -> Jid {
    Jid::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
}

fn parts(j: &Jid) -> (Option<&str>, &str, Option<&str>) {
    (j.node(), j.domain(), j.resource())
}

// RFC 7622 §3.5, table 1.
#[test]
fn rfc7622_valid_examples() {
    let cases: &[(&str, Option<&str>, &str, Option<&str>)] = &[
        ("juliet@example.com", Some("juliet"), "example.com", None),
        ("juliet@example.com/foo", Some("juliet"), "example.com", Some("foo")),
        ("juliet@example.com/foo bar", Some("juliet"), "example.com", Some("foo bar")),
        ("juliet@example.com/foo@bar", Some("juliet"), "example.com", Some("foo@bar")),
        (r"foo\20bar@example.com", Some(r"foo\20bar"), "example.com", None),
        ("fussball@example.com", Some("fussball"), "example.com", None),
        ("fu\u{DF}ball@example.com", Some("fu\u{DF}ball"), "example.com", None),
        ("\u{3C0}@example.com", Some("\u{3C0}"), "example.com", None),
        // Example 9: capital sigma is case-mapped to small sigma.
        ("\u{3A3}@example.com/foo", Some("\u{3C3}"), "example.com", Some("foo")),
        ("\u{3C3}@example.com/foo", Some("\u{3C3}"), "example.com", Some("foo")),
        ("\u{3C2}@example.com/foo", Some("\u{3C2}"), "example.com", Some("foo")),
        ("king@example.com/\u{265A}", Some("king"), "example.com", Some("\u{265A}")),
        ("example.com", None, "example.com", None),
        ("example.com/foobar", None, "example.com", Some("foobar")),
        ("a.example.com/b@example.net", None, "a.example.com", Some("b@example.net")),
    ];
    for &(input, node, domain, resource) in cases {
        let j = parse(input);
        assert_eq!(parts(&j), (node, domain, resource), "{input}");
    }
}

#[test]
fn rfc7622_examples_6_7_and_9_10_11_comparisons() {
    assert_ne!(parse("fussball@example.com"), parse("fu\u{DF}ball@example.com"));
    assert_eq!(parse("\u{3A3}@example.com/foo"), parse("\u{3C3}@example.com/foo"));
    assert_ne!(parse("\u{3A3}@example.com/foo"), parse("\u{3C2}@example.com/foo"));
    assert_ne!(parse("\u{3C3}@example.com/foo"), parse("\u{3C2}@example.com/foo"));
}

// RFC 7622 §3.5, table 2.
#[test]
fn rfc7622_invalid_examples() {
    let cases: &[(&str, JidError)] = &[
        ("\"juliet\"@example.com", JidError::InvalidNode),
        ("foo bar@example.com", JidError::InvalidNode),
        ("@example.com/", JidError::EmptyNode),
        ("henry\u{2163}@example.com", JidError::InvalidNode),
        ("\u{265A}@example.com", JidError::InvalidNode),
        ("juliet@", JidError::EmptyDomain),
        ("/foobar", JidError::EmptyDomain),
    ];
    for (input, err) in cases {
        assert_eq!(Jid::parse(input).as_ref(), Err(err), "{input:?}");
    }
}

// RFC 7622 §3.5 example 18: listed as invalid, but OpaqueString allows spaces and no rule
// forbids a leading one; accepted on purpose (see the crate documentation).
#[test]
fn rfc7622_example_18_leading_space_in_resource_is_accepted() {
    let j = parse("juliet@example.com/ foo");
    assert_eq!(j.resource(), Some(" foo"));
}

#[test]
fn localpart_case_mapping() {
    let j = parse("Juliet@Example.COM/Balcony");
    assert_eq!(j.as_str(), "juliet@example.com/Balcony");
    assert_eq!(parts(&j), (Some("juliet"), "example.com", Some("Balcony")));
    assert_eq!(j, parse("juliet@example.com/Balcony"));
    assert_ne!(j, parse("juliet@example.com/balcony"));
}

#[test]
fn localpart_excluded_characters() {
    for c in ['"', '&', '\'', '/', ':', '<', '>', '@'] {
        let r = Jid::from_parts(Some(&format!("a{c}b")), "example.com", None);
        assert_eq!(r, Err(JidError::InvalidNode), "{c:?}");
    }
    // Fullwidth commercial at becomes '@' through width mapping.
    assert_eq!(Jid::parse("a\u{FF20}b@example.com"), Err(JidError::InvalidNode));
    // Other printable ASCII is fine.
    let j = parse("a!#$%*+-.=?^_`{|}~b@example.com");
    assert_eq!(j.node(), Some("a!#$%*+-.=?^_`{|}~b"));
}

#[test]
fn localpart_unicode() {
    let j = parse("\u{D6}STERREICH@example.com");
    assert_eq!(j.node(), Some("\u{F6}sterreich"));
    // Fullwidth letters are width-mapped, then case-mapped.
    let j = parse("\u{FF2A}uliet@example.com");
    assert_eq!(j.node(), Some("juliet"));
    // NFC: 'e' + combining acute composes.
    let j = parse("caf\u{65}\u{301}@example.com");
    assert_eq!(j.node(), Some("caf\u{E9}"));
    assert_eq!(j, parse("CAF\u{C9}@example.com"));
    // Control characters are disallowed.
    assert_eq!(Jid::parse("a\u{7}b@example.com"), Err(JidError::InvalidNode));
}

#[test]
fn resourcepart_opaque_string() {
    // No case folding, non-ASCII spaces mapped to U+0020, NFC applied.
    let j = parse("a@example.com/Caf\u{65}\u{301}\u{A0}Bar");
    assert_eq!(j.resource(), Some("Caf\u{E9} Bar"));
    assert_eq!(j.as_str(), "a@example.com/Caf\u{E9} Bar");
    // '/' and '@' inside the resource are ordinary characters.
    let j = parse("a@example.com/x/y@z");
    assert_eq!(j.resource(), Some("x/y@z"));
    assert_eq!(Jid::parse("a@example.com/a\u{0}b"), Err(JidError::InvalidResource));
    assert_eq!(Jid::parse("a@example.com/a\u{7F}b"), Err(JidError::InvalidResource));
}

#[test]
fn domain_lowercase_and_idn() {
    assert_eq!(parse("EXAMPLE.com").domain(), "example.com");
    let j = parse("juliet@B\u{DC}CHER.example");
    assert_eq!(j.domain(), "b\u{FC}cher.example");
    // A-labels are stored as U-labels.
    let j = parse("juliet@xn--bcher-kva.example/r");
    assert_eq!(j.as_str(), "juliet@b\u{FC}cher.example/r");
    assert_eq!(j, parse("juliet@b\u{FC}cher.example/r"));
    // Fullwidth characters and ideographic full stops are mapped.
    assert_eq!(parse("\u{FF45}xample\u{3002}com").domain(), "example.com");
    assert_eq!(Jid::parse("a@xn--a.example"), Err(JidError::InvalidDomain));
}

#[test]
fn domain_trailing_dot() {
    let j = parse("juliet@example.com./res");
    assert_eq!(j.as_str(), "juliet@example.com/res");
    assert_eq!(j, parse("juliet@example.com/res"));
    assert_eq!(parse("Example.COM.").as_str(), "example.com");
    assert_eq!(parse("example.com\u{3002}").as_str(), "example.com");
    // Only one separator is stripped.
    assert_eq!(Jid::parse("example.com.."), Err(JidError::InvalidDomain));
    assert_eq!(Jid::parse("."), Err(JidError::EmptyDomain));
    assert_eq!(Jid::parse("a@./r"), Err(JidError::EmptyDomain));
}

#[test]
fn domain_ip_literals() {
    let j = parse("a@127.0.0.1/r");
    assert_eq!(j.domain(), "127.0.0.1");
    let j = parse("a@[::1]/r");
    assert_eq!(parts(&j), (Some("a"), "[::1]", Some("r")));
    let j = parse("[2001:DB8:0:0::1]");
    assert_eq!(j.domain(), "[2001:db8::1]");
    assert_eq!(j, parse("[2001:db8::1]"));
    assert_eq!(parse("[::1].").domain(), "[::1]");
    for bad in ["[::1", "::1", "[]", "[not:an:ip]", "[::1]x", "[fe80::1%eth0]"] {
        assert_eq!(Jid::parse(bad), Err(JidError::InvalidDomain), "{bad}");
    }
}

#[test]
fn domain_invalid() {
    for bad in [
        "a..b",
        ".example.com",
        "exa mple.com",
        "a@b@c",
        "ex_ample.com",
        "-example.com",
        "example-.com",
        "exa\u{0}mple",
    ] {
        assert_eq!(Jid::parse(bad), Err(JidError::InvalidDomain), "{bad:?}");
    }
    for bad in ["a/b", "a@b", "exa\u{FF0F}mple", "exa\u{FF20}mple"] {
        assert_eq!(Jid::from_parts(None, bad, None), Err(JidError::InvalidDomain), "{bad:?}");
    }
}

#[test]
fn empty_parts() {
    assert_eq!(Jid::parse(""), Err(JidError::EmptyDomain));
    assert_eq!(Jid::parse("@d"), Err(JidError::EmptyNode));
    assert_eq!(Jid::parse("d/"), Err(JidError::EmptyResource));
    assert_eq!(Jid::parse("a@"), Err(JidError::EmptyDomain));
    assert_eq!(Jid::parse("a@/r"), Err(JidError::EmptyDomain));
    assert_eq!(Jid::parse("@"), Err(JidError::EmptyDomain));
    assert_eq!(Jid::from_parts(Some(""), "d", None), Err(JidError::EmptyNode));
    assert_eq!(Jid::from_parts(None, "", None), Err(JidError::EmptyDomain));
    assert_eq!(Jid::from_parts(None, "d", Some("")), Err(JidError::EmptyResource));
    // A part that enforcement maps to nothing is invalid as well.
    assert_eq!(Jid::parse("a@\u{AD}"), Err(JidError::InvalidDomain));
}

#[test]
fn too_long_parts() {
    let max = "a".repeat(MAX_PART_LEN);
    let over = "a".repeat(MAX_PART_LEN + 1);
    let max_domain = format!("{}.{}", "b".repeat(511), "c".repeat(511));
    assert_eq!(max_domain.len(), MAX_PART_LEN);

    let j = parse(&format!("{max}@{max_domain}/{max}"));
    assert_eq!(j.as_str().len(), 3 * MAX_PART_LEN + 2);
    assert_eq!(j.node().map(str::len), Some(MAX_PART_LEN));
    assert_eq!(j.resource().map(str::len), Some(MAX_PART_LEN));
    assert_eq!(j.domain(), max_domain);

    assert_eq!(Jid::parse(&format!("{over}@d")), Err(JidError::TooLong));
    assert_eq!(Jid::parse(&format!("d/{over}")), Err(JidError::TooLong));
    assert_eq!(Jid::parse(&format!("{max_domain}b")), Err(JidError::TooLong));
    // Limits apply after enforcement: uppercase and non-ASCII take the slow path.
    assert_eq!(Jid::parse(&format!("A{max}@d")), Err(JidError::TooLong));
    assert_eq!(Jid::parse(&format!("d/\u{E9}{max}")), Err(JidError::TooLong));
    assert_eq!(Jid::parse(&format!("B{max_domain}")), Err(JidError::TooLong));
    // Fullwidth 'a' is three octets but maps to one: 1023 of them fit.
    let wide = "\u{FF41}".repeat(MAX_PART_LEN);
    assert_eq!(parse(&format!("{wide}@d")).node(), Some(max.as_str()));
    // Absurd input is refused before Unicode processing.
    let huge = "\u{FF41}".repeat(MAX_RAW_PART_LEN);
    assert_eq!(Jid::parse(&format!("{huge}@d")), Err(JidError::TooLong));
}

#[test]
fn bare_full_conversions() {
    let full = FullJid::parse("Juliet@Example.com/Balcony").unwrap();
    assert_eq!(full.node(), Some("juliet"));
    assert_eq!(full.domain(), "example.com");
    assert_eq!(full.resource(), "Balcony");
    assert_eq!(full.bare_str(), "juliet@example.com");

    let bare = full.to_bare();
    assert_eq!(bare.as_str(), "juliet@example.com");
    assert_eq!(bare, BareJid::parse("juliet@example.com").unwrap());
    assert_eq!(bare.domain_jid().as_str(), "example.com");
    assert_eq!(full.domain_jid(), bare.domain_jid());
    assert_eq!(bare.domain_jid().domain_jid().as_str(), "example.com");

    let other = bare.with_resource("Orchard\u{A0}1").unwrap();
    assert_eq!(other.as_str(), "juliet@example.com/Orchard 1");
    assert_eq!(other.to_bare(), bare);
    assert_eq!(full.with_resource("x").unwrap().as_str(), "juliet@example.com/x");
    assert_eq!(bare.with_resource(""), Err(JidError::EmptyResource));
    assert_eq!(bare.with_resource("a\u{0}"), Err(JidError::InvalidResource));
    let domain_full = parse("example.com").with_resource("r").unwrap();
    assert_eq!((domain_full.node(), domain_full.as_str()), (None, "example.com/r"));

    assert_eq!(BareJid::parse("a@b/c"), Err(JidError::NotBare));
    assert_eq!(FullJid::parse("a@b"), Err(JidError::NotFull));
    assert_eq!(BareJid::try_from(full.clone().into_jid()), Err(JidError::NotBare));
    assert_eq!(FullJid::try_from(bare.clone().into_jid()), Err(JidError::NotFull));

    let j: Jid = full.clone().into();
    assert!(j.is_full() && !j.is_bare());
    assert_eq!(FullJid::try_from(j.clone()).unwrap(), full);
    assert_eq!(j.clone().into_bare(), bare);
    let j: Jid = bare.clone().into();
    assert!(j.is_bare() && !j.is_full());
    assert_eq!(j.to_bare(), bare);
    assert_eq!(j.clone().into_bare(), bare);
    assert_eq!(BareJid::try_from(j).unwrap(), bare);

    assert_eq!(BareJid::from_parts(Some("Romeo"), "Example.NET").unwrap().as_str(), "romeo@example.net");
    assert_eq!(FullJid::from_parts(None, "example.net", "r/s").unwrap().resource(), "r/s");
    assert_eq!(full.as_jid().as_str(), full.as_str());
    assert_eq!(bare.as_jid().as_str(), bare.as_str());
}

#[test]
fn from_parts_matches_parse() {
    for s in [
        "juliet@example.com/Balcony",
        "JULIET@EXAMPLE.COM./Balcony",
        "\u{3A3}@b\u{FC}cher.example/\u{265A}",
        "example.com",
        "example.com/r",
        "n@[::1]",
    ] {
        let j = parse(s);
        let k = Jid::from_parts(j.node(), j.domain(), j.resource()).unwrap();
        assert_eq!(j, k, "{s}");
        assert_eq!(parts(&j), parts(&k), "{s}");
        // Enforcement is idempotent.
        assert_eq!(parse(j.as_str()), j, "{s}");
    }
    // from_parts takes parts literally.
    assert_eq!(Jid::from_parts(Some("a@b"), "c", None), Err(JidError::InvalidNode));
    let j = Jid::from_parts(None, "c", Some("d@e/f")).unwrap();
    assert_eq!(parts(&j), (None, "c", Some("d@e/f")));
}

#[test]
fn equality_ordering_hashing_of_normalised_forms() {
    let a = parse("Juliet@Example.COM/Balcony");
    let b = parse("juliet@example.com./Balcony");
    let c = Jid::from_parts(Some("JULIET"), "EXAMPLE.com", Some("Balcony")).unwrap();
    assert_eq!(a, b);
    assert_eq!(b, c);
    assert_eq!(a.cmp(&c), std::cmp::Ordering::Equal);
    let set: HashSet<Jid> = [a.clone(), b, c].into_iter().collect();
    assert_eq!(set.len(), 1);

    let mut v = [parse("b@example.com"), parse("A@example.com/z"), parse("example.com"), parse("a@example.com")];
    v.sort();
    let sorted: Vec<&str> = v.iter().map(Jid::as_str).collect();
    assert_eq!(sorted, ["a@example.com", "a@example.com/z", "b@example.com", "example.com"]);

    let bare: HashSet<BareJid> = ["Romeo@Example.net", "romeo@example.net", "ROMEO@EXAMPLE.NET."]
        .into_iter()
        .map(|s| BareJid::parse(s).unwrap())
        .collect();
    assert_eq!(bare.len(), 1);
    assert!(BareJid::parse("a@x").unwrap() < BareJid::parse("b@x").unwrap());
    assert!(FullJid::parse("a@x/1").unwrap() < FullJid::parse("a@x/2").unwrap());
}

#[test]
fn display_debug_fromstr() {
    let j: Jid = "Juliet@Example.com/R".parse().unwrap();
    assert_eq!(j.to_string(), "juliet@example.com/R");
    assert_eq!(format!("{j:?}"), "Jid(juliet@example.com/R)");
    let b: BareJid = "Juliet@Example.com".parse().unwrap();
    assert_eq!(format!("{b} {b:?}"), "juliet@example.com BareJid(juliet@example.com)");
    let f: FullJid = "Juliet@Example.com/R".parse().unwrap();
    assert_eq!(format!("{f} {f:?}"), "juliet@example.com/R FullJid(juliet@example.com/R)");
    assert_eq!("a@".parse::<Jid>(), Err(JidError::EmptyDomain));
    assert_eq!(AsRef::<str>::as_ref(&f), f.as_str());
}

#[test]
fn canonical_input_shares_input_form() {
    let s = "juliet@example.com/balcony";
    let j = parse(s);
    assert_eq!(j.as_str(), s);
    assert_eq!(parts(&j), (Some("juliet"), "example.com", Some("balcony")));
    let clone = j.clone();
    assert!(Arc::ptr_eq(&j.s, &clone.s));
    let bare = parse("juliet@example.com");
    assert!(Arc::ptr_eq(&bare.s, &bare.to_bare().as_jid().s));
}

// The fast paths claim that enforcement leaves certain ASCII strings unchanged; check that
// claim against the full algorithms for every printable ASCII character.
#[test]
fn fast_paths_agree_with_full_enforcement() {
    for b in 0x20u8..=0x7E {
        let c = char::from(b);
        let s = format!("a{c}b");

        let full =
            stabilize(s.as_str(), username_case_mapped).ok().filter(|o| !o.bytes().any(|b| NODE_EXCLUDED.contains(&b)));
        if node_is_canonical(&s) {
            assert_eq!(full.as_deref(), Some(s.as_str()), "node {c:?}");
        }
        assert_eq!(enforce_node(&s).ok().as_deref(), full.as_deref(), "node {c:?}");

        let full = stabilize(s.as_str(), opaque_string).ok();
        assert!(resource_is_canonical(&s), "resource {c:?}");
        assert_eq!(full.as_deref(), Some(s.as_str()), "resource {c:?}");

        let (idna, result) = Uts46::new().to_unicode(s.as_bytes(), AsciiDenyList::STD3, Hyphens::CheckFirstLast);
        if domain_is_canonical(&s) {
            assert!(result.is_ok(), "domain {c:?}");
            assert_eq!(idna, s, "domain {c:?}");
        }
    }
    for s in ["example.com", "a-b.c-d", "ab--cd.example", "127.0.0.1", "1.2.3", "localhost", "0"] {
        assert!(domain_is_canonical(s), "{s}");
        let (idna, result) = Uts46::new().to_unicode(s.as_bytes(), AsciiDenyList::STD3, Hyphens::CheckFirstLast);
        assert!(result.is_ok(), "{s}");
        assert_eq!(idna, s, "{s}");
    }
    for s in ["xn--bcher-kva.example", "-a.b", "a-.b", "a..b", "a.", "A.b"] {
        assert!(!domain_is_canonical(s), "{s}");
    }
}

#[test]
fn size_of_jid() {
    assert!(std::mem::size_of::<Jid>() <= 24);
    assert_eq!(std::mem::size_of::<Option<Jid>>(), std::mem::size_of::<Jid>());
}
