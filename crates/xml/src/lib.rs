//! rookery-xml: XML for XMPP streams.
//!
//! Owns two things:
//! - **Stream framing** ([`Framer`]): an incremental, allocation-light tokenizer over the
//!   connection's read buffer that yields the stream header, each complete top-level element
//!   as a zero-copy [`bytes::Bytes`] slice with its routing header (name, namespace, `to`,
//!   `from`, `type`, `id`, `xml:lang`), whitespace keepalives and the stream close, while
//!   enforcing well-formedness, namespace well-formedness, the RFC 6120 §11.1 restrictions
//!   and size/depth/attribute limits.
//! - **A small element tree** ([`Element`], [`parse_element`]) for payloads a module decodes
//!   on demand; the routing path never builds one.
//!
//! It must not touch sockets, TLS, or XMPP semantics (stanza kinds, stream features, JIDs,
//! error vocabulary): callers map [`XmlError`] to stream errors.
//!
//! Specifications: RFC 6120 §4.2 (opening a stream), §4.3 (negotiation, restarts),
//! §11.1-§11.6 (restrictions, namespace well-formedness, well-formedness, declaration,
//! language, UTF-8); a subset of XML 1.0 well-formedness and Namespaces in XML 1.0 (no DTDs,
//! no entities beyond the five predefined ones, no comments or processing instructions).
//!
//! ```
//! use rookery_xml::{Frame, Framer, Limits};
//!
//! let mut framer = Framer::new(Limits::default());
//! // In the edge: `stream.read_buf(framer.read_buf()).await?`
//! framer.read_buf().extend_from_slice(
//!     b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
//!       to='example.com' version='1.0'><message to='romeo@example.net'><body>hi</body></message>",
//! );
//! let mut kinds = Vec::new();
//! while let Some(frame) = framer.next_frame()? {
//!     match frame {
//!         Frame::StreamOpen(h) => assert_eq!(h.to.as_deref(), Some("example.com")),
//!         Frame::Element(e) => {
//!             assert_eq!(e.to.as_deref(), Some("romeo@example.net"));
//!             let stamped = e.rewrite_attrs(&[("from", Some("juliet@example.com/balcony"))]);
//!             assert!(stamped.starts_with(b"<message to='romeo@example.net' from=\"juliet@"));
//!             kinds.push(e.name);
//!         }
//!         Frame::Whitespace | Frame::StreamClose => {}
//!     }
//! }
//! assert_eq!(kinds, ["message"]);
//! # Ok::<(), rookery_xml::XmlError>(())
//! ```

mod element;
mod error;
mod escape;
mod framer;
mod parser;

pub use element::{Element, Node};
pub use error::XmlError;
pub use escape::{escape_attr, escape_text};
pub use framer::{Frame, Framer, Limits, RawElement, StreamHeader};
pub use parser::parse_element;
