//! A small owned element tree for payloads a module decodes on demand (DESIGN §6.2: the
//! routing path never builds one). Names are stored as local name plus resolved
//! namespace; prefixes are not preserved, `xmlns:prefix` declarations stay as attributes so
//! prefixed attributes keep a declaration when the whole tree is written back.

use bytes::Bytes;

use crate::escape::{escape_attr, escape_text};

/// An element: local name, namespace, attributes in document order, children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub ns: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Node>,
}

/// A child of an element. Adjacent character data (text, references, CDATA) is merged
/// into one `Text` node by the parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

impl Element {
    pub fn new(name: &str, ns: &str) -> Self {
        Element { name: name.to_owned(), ns: ns.to_owned(), attrs: Vec::new(), children: Vec::new() }
    }

    /// Builder form of [`Element::set_attr`].
    #[must_use]
    pub fn attr(mut self, k: &str, v: impl Into<String>) -> Self {
        self.set_attr(k, v);
        self
    }

    #[must_use]
    pub fn child(mut self, e: Element) -> Self {
        self.push_child(e);
        self
    }

    #[must_use]
    pub fn text(mut self, t: impl Into<String>) -> Self {
        self.push_text(t);
        self
    }

    /// Sets an attribute, replacing an existing one of the same name in place.
    pub fn set_attr(&mut self, k: &str, v: impl Into<String>) {
        let v = v.into();
        match self.attrs.iter_mut().find(|(name, _)| name == k) {
            Some((_, old)) => *old = v,
            None => self.attrs.push((k.to_owned(), v)),
        }
    }

    pub fn remove_attr(&mut self, k: &str) {
        self.attrs.retain(|(name, _)| name != k);
    }

    pub fn push_child(&mut self, e: Element) {
        self.children.push(Node::Element(e));
    }

    /// Appends text, merging with a trailing text node.
    pub fn push_text(&mut self, t: impl Into<String>) {
        let t = t.into();
        if t.is_empty() {
            return;
        }
        match self.children.last_mut() {
            Some(Node::Text(prev)) => prev.push_str(&t),
            _ => self.children.push(Node::Text(t)),
        }
    }

    pub fn get_attr(&self, k: &str) -> Option<&str> {
        self.attrs.iter().find(|(name, _)| name == k).map(|(_, v)| v.as_str())
    }

    pub fn get_child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.elements().find(|e| e.is(name, ns))
    }

    pub fn get_child_mut(&mut self, name: &str, ns: &str) -> Option<&mut Element> {
        self.children.iter_mut().find_map(|n| match n {
            Node::Element(e) if e.is(name, ns) => Some(e),
            _ => None,
        })
    }

    /// Child elements, in document order.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// Concatenation of the direct text children.
    pub fn text_content(&self) -> String {
        let mut out = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                out.push_str(t);
            }
        }
        out
    }

    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    /// Serialises the element. `xmlns` is written only where the namespace differs from
    /// `parent_ns` (the namespace in scope where the output is inserted, e.g. `jabber:client`
    /// for a stanza); an `xmlns` entry in `attrs` is ignored since `ns` governs.
    pub fn write_to(&self, out: &mut Vec<u8>, parent_ns: &str) {
        out.push(b'<');
        out.extend_from_slice(self.name.as_bytes());
        if self.ns != parent_ns {
            write_attr(out, "xmlns", &self.ns);
        }
        for (k, v) in &self.attrs {
            if k != "xmlns" {
                write_attr(out, k, v);
            }
        }
        if self.children.is_empty() {
            out.extend_from_slice(b"/>");
            return;
        }
        out.push(b'>');
        for n in &self.children {
            match n {
                Node::Element(e) => e.write_to(out, &self.ns),
                Node::Text(t) => out.extend_from_slice(escape_text(t).as_bytes()),
            }
        }
        out.extend_from_slice(b"</");
        out.extend_from_slice(self.name.as_bytes());
        out.push(b'>');
    }

    pub fn to_bytes(&self, parent_ns: &str) -> Bytes {
        let mut out = Vec::with_capacity(128);
        self.write_to(&mut out, parent_ns);
        Bytes::from(out)
    }
}

fn write_attr(out: &mut Vec<u8>, k: &str, v: &str) {
    out.push(b' ');
    out.extend_from_slice(k.as_bytes());
    out.extend_from_slice(b"=\"");
    out.extend_from_slice(escape_attr(v).as_bytes());
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::parse_element;

    #[test]
    fn builder_and_accessors() {
        let mut e = Element::new("iq", "jabber:client")
            .attr("type", "get")
            .attr("id", "1")
            .child(Element::new("ping", "urn:xmpp:ping"))
            .text("a")
            .text("b");
        assert_eq!(e.get_attr("type"), Some("get"));
        e.set_attr("type", "result");
        assert_eq!(e.attrs[0], ("type".into(), "result".into()));
        e.remove_attr("id");
        assert_eq!(e.get_attr("id"), None);
        assert!(e.get_child("ping", "urn:xmpp:ping").is_some());
        assert!(e.get_child("ping", "other").is_none());
        e.get_child_mut("ping", "urn:xmpp:ping").unwrap().set_attr("x", "y");
        assert_eq!(e.elements().count(), 1);
        assert_eq!(e.text_content(), "ab");
        assert_eq!(e.children.len(), 2);
    }

    #[test]
    fn writes_namespaces_only_when_changed() {
        let e = Element::new("message", "jabber:client")
            .attr("to", "a&b'\"")
            .child(Element::new("body", "jabber:client").text("1 < 2 & 3 > 2"))
            .child(Element::new("x", "urn:x").child(Element::new("y", "urn:x")))
            .child(Element::new("z", ""));
        let out = e.to_bytes("jabber:client");
        assert_eq!(
            &out[..],
            &b"<message to=\"a&amp;b&apos;&quot;\"><body>1 &lt; 2 &amp; 3 &gt; 2</body>\
<x xmlns=\"urn:x\"><y/></x><z xmlns=\"\"/></message>"[..]
        );
        assert_eq!(parse_element(&out, "jabber:client").unwrap(), e);
        let standalone = e.to_bytes("");
        assert!(standalone.starts_with(b"<message xmlns=\"jabber:client\""));
        assert_eq!(parse_element(&standalone, "").unwrap(), e);
    }
}
