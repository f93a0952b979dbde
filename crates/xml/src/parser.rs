//! Whole-element parser producing an [`Element`] tree (XML 1.0 well-formedness subset,
//! Namespaces in XML 1.0, RFC 6120 §11.1 restrictions). Used for payloads a module asks
//! for; the framer has already checked stanzas read from a stream, but this parser repeats
//! every check because its input may come from anywhere (storage, the cluster).

use std::borrow::Cow;

use crate::XmlError;
use crate::element::Element;
use crate::escape::{check_qname, is_name_char, is_name_start, is_ws, is_xml_char, unescape};

/// Nesting bound for the tree: dropping, cloning and comparing a tree recurse, so the
/// depth is capped even for input that did not come through a framer.
pub(crate) const MAX_TREE_DEPTH: usize = 256;
const MAX_TREE_ATTRS: usize = 1024;
pub(crate) const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

/// Parses one complete element (optionally surrounded by whitespace). `default_ns` is the
/// namespace an element without `xmlns` inherits, e.g. `jabber:client` for a c2s stanza.
pub fn parse_element(raw: &[u8], default_ns: &str) -> Result<Element, XmlError> {
    let scope = [(String::new(), default_ns.to_owned())];
    parse_scoped(raw, &scope)
}

/// Parses with inherited declarations `(prefix, uri)`; the prefix `""` is the default
/// namespace.
pub(crate) fn parse_scoped(raw: &[u8], inherited: &[(String, String)]) -> Result<Element, XmlError> {
    let s = std::str::from_utf8(raw).map_err(|_| XmlError::BadEncoding)?;
    let mut p = Parser {
        s,
        b: raw,
        i: 0,
        scope: inherited.iter().map(|(p, u)| (p.as_str(), Cow::Borrowed(u.as_str()))).collect(),
    };
    p.skip_ws();
    if !p.eat(b'<') {
        return Err(XmlError::NotWellFormed("expected an element"));
    }
    let mut stack: Vec<(Element, usize, &str)> = Vec::new();
    loop {
        let (el, qname, mark, self_closing) = p.start_tag()?;
        if self_closing {
            p.scope.truncate(mark);
            match stack.last_mut() {
                Some(parent) => parent.0.push_child(el),
                None => return p.finish(el),
            }
        } else {
            if stack.len() >= MAX_TREE_DEPTH {
                return Err(XmlError::TooDeep);
            }
            stack.push((el, mark, qname));
        }
        // Content until the next start tag.
        loop {
            let Some(top) = stack.last_mut() else {
                return Err(XmlError::NotWellFormed("unbalanced"));
            };
            let lt = p.b[p.i..]
                .iter()
                .position(|&c| c == b'<')
                .map(|off| p.i + off)
                .ok_or(XmlError::NotWellFormed("unclosed element"))?;
            if lt > p.i {
                let text = &p.s[p.i..lt];
                if text.contains("]]>") {
                    return Err(XmlError::NotWellFormed("']]>' in text"));
                }
                check_chars(text)?;
                top.0.push_text(unescape(text, false)?);
            }
            p.i = lt + 1;
            match p.b.get(p.i) {
                Some(b'/') => {
                    p.i += 1;
                    let name = p.name()?;
                    p.skip_ws();
                    if !p.eat(b'>') {
                        return Err(XmlError::NotWellFormed("bad end tag"));
                    }
                    let Some((el, mark, qname)) = stack.pop() else {
                        return Err(XmlError::NotWellFormed("unbalanced"));
                    };
                    if qname != name {
                        return Err(XmlError::NotWellFormed("mismatched end tag"));
                    }
                    p.scope.truncate(mark);
                    match stack.last_mut() {
                        Some(parent) => parent.0.push_child(el),
                        None => return p.finish(el),
                    }
                }
                Some(b'!') => {
                    let rest = &p.s[p.i..];
                    let Some(body) = rest.strip_prefix("![CDATA[") else {
                        return Err(XmlError::Restricted("comment or declaration"));
                    };
                    let end = body.find("]]>").ok_or(XmlError::NotWellFormed("unterminated CDATA"))?;
                    let text = &body[..end];
                    check_chars(text)?;
                    let text = if text.contains('\r') {
                        Cow::Owned(text.replace("\r\n", "\n").replace('\r', "\n"))
                    } else {
                        Cow::Borrowed(text)
                    };
                    top.0.push_text(text);
                    p.i += "![CDATA[".len() + end + "]]>".len();
                }
                Some(b'?') => return Err(XmlError::Restricted("processing instruction")),
                _ => break,
            }
        }
    }
}

fn check_chars(s: &str) -> Result<(), XmlError> {
    if s.chars().all(is_xml_char) { Ok(()) } else { Err(XmlError::NotWellFormed("illegal character")) }
}

struct Parser<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
    scope: Vec<(&'a str, Cow<'a, str>)>,
}

impl<'a> Parser<'a> {
    fn skip_ws(&mut self) -> bool {
        let start = self.i;
        while self.b.get(self.i).is_some_and(|&c| is_ws(c)) {
            self.i += 1;
        }
        self.i > start
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// A name; it ends at an ASCII delimiter, so the slice is on a char boundary.
    fn name(&mut self) -> Result<&'a str, XmlError> {
        let start = self.i;
        while self.b.get(self.i).is_some_and(|&c| is_name_char(c)) {
            self.i += 1;
        }
        let name = &self.s[start..self.i];
        check_qname(name.as_bytes())?;
        Ok(name)
    }

    fn finish(&mut self, el: Element) -> Result<Element, XmlError> {
        self.skip_ws();
        if self.i == self.b.len() { Ok(el) } else { Err(XmlError::NotWellFormed("content after the element")) }
    }

    fn lookup(&self, prefix: &str) -> Option<&str> {
        if prefix == "xml" {
            return Some(XML_NS);
        }
        self.scope.iter().rev().find(|(p, _)| *p == prefix).map(|(_, u)| u.as_ref())
    }

    /// Parses a start tag after its `<`; returns the element (no children yet), its
    /// qualified name, the scope mark to restore at its end, and whether it was `/>`.
    fn start_tag(&mut self) -> Result<(Element, &'a str, usize, bool), XmlError> {
        let qname = self.name()?;
        let mut attrs: Vec<(&'a str, Cow<'a, str>)> = Vec::new();
        let self_closing = loop {
            let had_ws = self.skip_ws();
            match self.b.get(self.i) {
                Some(b'>') => {
                    self.i += 1;
                    break false;
                }
                Some(b'/') => {
                    self.i += 1;
                    if !self.eat(b'>') {
                        return Err(XmlError::NotWellFormed("bad empty-element tag"));
                    }
                    break true;
                }
                Some(&c) if had_ws && is_name_start(c) => {
                    let name = self.name()?;
                    self.skip_ws();
                    if !self.eat(b'=') {
                        return Err(XmlError::NotWellFormed("attribute without '='"));
                    }
                    self.skip_ws();
                    let quote = match self.b.get(self.i) {
                        Some(&q @ (b'"' | b'\'')) => q,
                        _ => return Err(XmlError::NotWellFormed("unquoted attribute value")),
                    };
                    self.i += 1;
                    let len = self.b[self.i..]
                        .iter()
                        .position(|&c| c == quote)
                        .ok_or(XmlError::NotWellFormed("unterminated attribute value"))?;
                    let raw = &self.s[self.i..self.i + len];
                    self.i += len + 1;
                    if raw.contains('<') {
                        return Err(XmlError::NotWellFormed("'<' in attribute value"));
                    }
                    check_chars(raw)?;
                    if attrs.iter().any(|(n, _)| *n == name) {
                        return Err(XmlError::NotWellFormed("duplicate attribute"));
                    }
                    if attrs.len() >= MAX_TREE_ATTRS {
                        return Err(XmlError::TooManyAttributes);
                    }
                    attrs.push((name, unescape(raw, true)?));
                }
                _ => return Err(XmlError::NotWellFormed("bad start tag")),
            }
        };
        let mark = self.scope.len();
        for (name, value) in &attrs {
            if *name == "xmlns" {
                self.scope.push(("", value.clone()));
            } else if let Some(prefix) = name.strip_prefix("xmlns:") {
                if value.is_empty() {
                    return Err(XmlError::NotWellFormed("empty prefix declaration"));
                }
                self.scope.push((prefix, value.clone()));
            }
        }
        let (local, ns) = match qname.split_once(':') {
            Some((prefix, local)) => (local, self.lookup(prefix).ok_or(XmlError::UndeclaredPrefix)?),
            None => (qname, self.lookup("").unwrap_or("")),
        };
        let mut el = Element::new(local, ns);
        el.attrs.reserve(attrs.len());
        for (name, value) in attrs {
            if let Some((prefix, _)) = name.split_once(':')
                && prefix != "xmlns"
                && self.lookup(prefix).is_none()
            {
                return Err(XmlError::UndeclaredPrefix);
            }
            if name != "xmlns" {
                el.attrs.push((name.to_owned(), value.into_owned()));
            }
        }
        Ok((el, qname, mark, self_closing))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::Node;

    #[test]
    fn parses_tree_with_namespaces() {
        let e = parse_element(
            b"<message to='a@b' xml:lang='en' xmlns:p='urn:p'><body>hi &amp; <![CDATA[<raw>]]></body>\
<p:x p:attr='1'><y/></p:x><z xmlns='urn:z'><w/></z></message>",
            "jabber:client",
        )
        .unwrap();
        assert!(e.is("message", "jabber:client"));
        assert_eq!(e.get_attr("to"), Some("a@b"));
        assert_eq!(e.get_attr("xml:lang"), Some("en"));
        assert_eq!(e.get_attr("xmlns:p"), Some("urn:p"));
        let body = e.get_child("body", "jabber:client").unwrap();
        assert_eq!(body.text_content(), "hi & <raw>");
        assert_eq!(body.children.len(), 1);
        let x = e.get_child("x", "urn:p").unwrap();
        assert_eq!(x.get_attr("p:attr"), Some("1"));
        assert!(x.get_child("y", "jabber:client").is_some());
        let z = e.get_child("z", "urn:z").unwrap();
        assert!(z.get_child("w", "urn:z").is_some());
        assert!(matches!(&e.children[0], Node::Element(_)));
    }

    #[test]
    fn rejects_bad_input() {
        let cases: &[(&[u8], XmlError)] = &[
            (b"<a><!-- c --></a>", XmlError::Restricted("comment or declaration")),
            (b"<a><?pi x?></a>", XmlError::Restricted("processing instruction")),
            (b"<a>&ent;</a>", XmlError::Restricted("entity reference")),
            (b"<p:a/>", XmlError::UndeclaredPrefix),
            (b"<a q:b='1'/>", XmlError::UndeclaredPrefix),
            (b"<a>\xff</a>", XmlError::BadEncoding),
        ];
        for (input, want) in cases {
            assert_eq!(&parse_element(input, "").unwrap_err(), want, "{input:?}");
        }
        for bad in [
            &b"<a></b>"[..],
            b"<a b='1' b='2'/>",
            b"<a b='<'/>",
            b"<a>]]></a>",
            b"<a/><b/>",
            b"<a>",
            b"text",
            b"<a b='1'c='2'/>",
            b"<a>\x01</a>",
            b"<a>&#1;</a>",
            b"<1a/>",
        ] {
            assert!(
                matches!(parse_element(bad, ""), Err(XmlError::NotWellFormed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn depth_is_bounded() {
        let mut s = String::new();
        for _ in 0..MAX_TREE_DEPTH + 1 {
            s.push_str("<a>");
        }
        assert_eq!(parse_element(s.as_bytes(), ""), Err(XmlError::TooDeep));
    }
}
