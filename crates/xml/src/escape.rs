//! Escaping for output and unescaping of character data (XML 1.0 §2.4, §3.3.3, §4.1, §4.6),
//! plus the character classes the tokenizers share.
//!
//! Only the five predefined entities and character references are understood; any other
//! entity reference is restricted XML (RFC 6120 §11.1).

use std::borrow::Cow;

use crate::XmlError;

/// Escapes character data for use as element text: `&`, `<`, `>` and `\r` (the latter as
/// a character reference, so it survives line-end normalisation on the receiving side).
pub fn escape_text(s: &str) -> Cow<'_, str> {
    escape(s, |b| matches!(b, b'&' | b'<' | b'>' | b'\r'))
}

/// Escapes an attribute value for use inside either kind of quotes: `&`, `<`, `>`, `"`,
/// `'`, and the whitespace characters attribute-value normalisation would otherwise turn
/// into spaces (`\t`, `\n`, `\r`).
pub fn escape_attr(s: &str) -> Cow<'_, str> {
    escape(s, |b| matches!(b, b'&' | b'<' | b'>' | b'"' | b'\'' | b'\t' | b'\n' | b'\r'))
}

fn escape(s: &str, special: impl Fn(u8) -> bool) -> Cow<'_, str> {
    let Some(first) = s.bytes().position(&special) else {
        return Cow::Borrowed(s);
    };
    let mut out = String::with_capacity(s.len() + 16);
    out.push_str(&s[..first]);
    let mut start = first;
    for (i, b) in s.bytes().enumerate().skip(first) {
        if !special(b) {
            continue;
        }
        out.push_str(&s[start..i]);
        out.push_str(match b {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            b'\'' => "&apos;",
            b'\t' => "&#x9;",
            b'\n' => "&#xA;",
            _ => "&#xD;",
        });
        start = i + 1;
    }
    out.push_str(&s[start..]);
    Cow::Owned(out)
}

/// Longest reference body (between `&` and `;`) worth scanning: `#x10FFFF` / `#1114111`
/// with a few leading zeros. Longer ones are rejected rather than buffered.
pub(crate) const MAX_REF_LEN: usize = 12;

/// Decodes the body of a reference (the bytes between `&` and `;`).
pub(crate) fn decode_ref(body: &[u8]) -> Result<char, XmlError> {
    match body {
        b"amp" => return Ok('&'),
        b"lt" => return Ok('<'),
        b"gt" => return Ok('>'),
        b"quot" => return Ok('"'),
        b"apos" => return Ok('\''),
        _ => {}
    }
    let Some(num) = body.strip_prefix(b"#") else {
        return match body.first() {
            Some(&b) if is_name_start(b) && body.iter().all(|&c| is_name_char(c)) => {
                Err(XmlError::Restricted("entity reference"))
            }
            _ => Err(XmlError::NotWellFormed("malformed reference")),
        };
    };
    let (digits, radix) = match num.strip_prefix(b"x") {
        Some(hex) => (hex, 16),
        None => (num, 10),
    };
    if digits.is_empty() || digits.len() > 8 {
        return Err(XmlError::NotWellFormed("malformed character reference"));
    }
    let mut value: u32 = 0;
    for &d in digits {
        let v = (d as char).to_digit(radix).ok_or(XmlError::NotWellFormed("malformed character reference"))?;
        value = value * radix + v;
    }
    match char::from_u32(value) {
        Some(c) if is_xml_char(c) => Ok(c),
        _ => Err(XmlError::NotWellFormed("character reference to an illegal character")),
    }
}

/// XML 1.0 `Char` production.
pub(crate) fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// ASCII bytes that may start a name; every non-ASCII byte is accepted as part of a name.
pub(crate) const fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b':' || b >= 0x80
}

pub(crate) const fn is_name_char(b: u8) -> bool {
    is_name_start(b) || b.is_ascii_digit() || b == b'-' || b == b'.'
}

pub(crate) const fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Whether a complete name is acceptable: non-empty, legal first byte, and (namespaces)
/// at most one colon, not at either end.
pub(crate) fn check_qname(name: &[u8]) -> Result<Option<usize>, XmlError> {
    match name.first() {
        Some(&b) if is_name_start(b) && b != b':' => {}
        _ => return Err(XmlError::NotWellFormed("bad name")),
    }
    let Some(colon) = name.iter().position(|&b| b == b':') else {
        return Ok(None);
    };
    if colon + 1 == name.len() || name[colon + 1..].contains(&b':') {
        return Err(XmlError::NotWellFormed("bad qualified name"));
    }
    match name[colon + 1] {
        b if is_name_start(b) => Ok(Some(colon)),
        _ => Err(XmlError::NotWellFormed("bad qualified name")),
    }
}

/// Replaces references and applies line-end normalisation (`\r\n` and `\r` become `\n`);
/// in attribute values also attribute-value normalisation (`\t`, `\n`, `\r` become spaces,
/// references excepted). The input must already be valid UTF-8.
pub(crate) fn unescape(raw: &str, attr: bool) -> Result<Cow<'_, str>, XmlError> {
    let special = |b: u8| b == b'&' || b == b'\r' || (attr && (b == b'\t' || b == b'\n'));
    let bytes = raw.as_bytes();
    let Some(first) = bytes.iter().position(|&b| special(b)) else {
        return Ok(Cow::Borrowed(raw));
    };
    let mut out = String::with_capacity(raw.len());
    out.push_str(&raw[..first]);
    let mut i = first;
    let mut start = first;
    while i < bytes.len() {
        let b = bytes[i];
        if !special(b) {
            i += 1;
            continue;
        }
        out.push_str(&raw[start..i]);
        match b {
            b'&' => {
                let body_end = bytes[i + 1..]
                    .iter()
                    .take(MAX_REF_LEN + 1)
                    .position(|&c| c == b';')
                    .ok_or(XmlError::NotWellFormed("unterminated reference"))?;
                out.push(decode_ref(&bytes[i + 1..i + 1 + body_end])?);
                i += body_end + 2;
            }
            b'\r' => {
                out.push(if attr { ' ' } else { '\n' });
                i += 1;
                if bytes.get(i) == Some(&b'\n') {
                    i += 1;
                }
            }
            _ => {
                out.push(' ');
                i += 1;
            }
        }
        start = i;
    }
    out.push_str(&raw[start..]);
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn escapes_only_when_needed() {
        assert!(matches!(escape_text("plain"), Cow::Borrowed("plain")));
        assert_eq!(escape_text("a<b>&c\r"), "a&lt;b&gt;&amp;c&#xD;");
        assert_eq!(escape_attr("'x\"\n"), "&apos;x&quot;&#xA;");
        assert_eq!(escape_text("é&"), "é&amp;");
    }

    #[test]
    fn unescapes_references_and_normalises() {
        assert_eq!(unescape("a&amp;b&lt;&#65;&#x42;", false).unwrap(), "a&b<AB");
        assert_eq!(unescape("a\r\nb\rc", false).unwrap(), "a\nb\nc");
        assert_eq!(unescape("a\tb\r\nc&#xA;", true).unwrap(), "a b c\n");
        assert_eq!(unescape("&foo;", false), Err(XmlError::Restricted("entity reference")));
        assert!(matches!(unescape("&#0;", false), Err(XmlError::NotWellFormed(_))));
        assert!(matches!(unescape("&#xD800;", false), Err(XmlError::NotWellFormed(_))));
        assert!(matches!(unescape("&amp", false), Err(XmlError::NotWellFormed(_))));
        assert!(matches!(unescape("&amp x;", false), Err(XmlError::NotWellFormed(_))));
    }

    #[test]
    fn round_trips() {
        for s in ["", "x", "<&>\"'\t\n\r", "ünï<code>"] {
            assert_eq!(unescape(&escape_attr(s), true).unwrap(), s);
            assert_eq!(unescape(&escape_text(s), false).unwrap(), s);
        }
    }

    #[test]
    fn qnames() {
        assert_eq!(check_qname(b"a").unwrap(), None);
        assert_eq!(check_qname(b"stream:stream").unwrap(), Some(6));
        for bad in [&b""[..], b":a", b"a:", b"a:b:c", b"1a", b"-a", b"a:1"] {
            assert!(check_qname(bad).is_err(), "{bad:?}");
        }
    }
}
