//! Incremental XML stream framer (RFC 6120 §4.2, §4.3.3, §11).
//!
//! The framer owns the connection's read buffer. Each call to [`Framer::next_frame`] scans
//! only bytes it has not scanned before: the scan position and the tokenizer state (a byte
//! state machine, the open-element stack, namespace prefixes in scope, the UTF-8 decoder
//! state) live in the framer, so input split anywhere costs O(1) work per byte overall.
//! Names and attribute values are recorded as spans into the buffer rather than copied;
//! the only allocations per stanza are the few header strings of [`RawElement`] and the
//! shared, zero-copy `Bytes` slice of the element itself.
//!
//! It must not touch sockets or XMPP semantics: it does not check that the header uses the
//! streams namespace or that a stanza is a known kind, it only frames well-formed,
//! namespace-well-formed, RFC 6120 §11.1-restricted XML and enforces size limits.

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};

use crate::XmlError;
use crate::element::Element;
use crate::escape::{MAX_REF_LEN, check_qname, decode_ref, escape_attr, is_name_char, is_name_start, is_ws, unescape};
use crate::parser::{XML_NS, parse_scoped};

#[cfg(test)]
mod tests;

/// Resource limits; exceeding one is a `<policy-violation/>` (RFC 6120 §4.9.3.14, §13.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest top-level element, start tag to end tag, in bytes.
    pub max_stanza_bytes: usize,
    /// Deepest nesting inside a stanza; the stanza itself is level 1.
    pub max_depth: usize,
    /// Most attributes (namespace declarations included) on one start tag.
    pub max_attrs: usize,
    /// Largest stream header start tag (and XML declaration), in bytes.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_stanza_bytes: 262_144, max_depth: 48, max_attrs: 64, max_header_bytes: 8192 }
    }
}

/// One unit of the stream, in order of arrival.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The stream header start tag was read; the root element stays open.
    StreamOpen(StreamHeader),
    /// One complete top-level element (a stanza, or a nonza such as `<starttls/>`).
    Element(RawElement),
    /// The root end tag was read.
    StreamClose,
    /// Whitespace between top-level elements (a keepalive, RFC 6120 §4.6.1); runs may be
    /// reported in several frames or coalesced into one.
    Whitespace,
}

/// The stream header (RFC 6120 §4.7), attribute values unescaped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamHeader {
    pub local_name: String,
    /// Resolved namespace of the header element.
    pub ns: Option<String>,
    pub prefix: Option<String>,
    /// The `xmlns` declaration: the content namespace (e.g. `jabber:client`).
    pub default_ns: Option<String>,
    pub to: Option<String>,
    pub from: Option<String>,
    pub id: Option<String>,
    pub version: Option<String>,
    /// `xml:lang`.
    pub lang: Option<String>,
    /// Every `xmlns:prefix` declaration, as (prefix, uri).
    pub ns_decls: Vec<(String, String)>,
}

/// A complete top-level element as bytes plus its parsed header (DESIGN §4: the routing path
/// carries this, never a tree).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawElement {
    /// The exact bytes of the element, start tag to end tag.
    pub raw: Bytes,
    pub name: String,
    /// Resolved namespace: own `xmlns`, a prefix declared on the element or the stream
    /// header, else the stream's default namespace, else `""`.
    pub ns: String,
    pub prefix: Option<String>,
    pub to: Option<String>,
    pub from: Option<String>,
    /// The `type` attribute.
    pub kind: Option<String>,
    pub id: Option<String>,
    /// `xml:lang` of the element itself (not inherited from the stream).
    pub lang: Option<String>,
    /// Length of the start tag within `raw` (`raw.len()` when self-closing).
    pub start_tag_len: usize,
    pub self_closing: bool,
    /// Namespace declarations inherited from the stream header, as (prefix, uri); the
    /// prefix `""` is the stream's default namespace. Shared by all elements of a stream.
    pub inherited_ns: Arc<[(String, String)]>,
}

impl RawElement {
    /// Frames one complete element that did not come from a stream (e.g. bytes received
    /// from the cluster), with `default_ns` as the namespace in scope. Surrounding
    /// whitespace is allowed; anything else besides exactly one element is an error.
    pub fn from_bytes(raw: Bytes, default_ns: &str) -> Result<RawElement, XmlError> {
        let limits = Limits { max_stanza_bytes: raw.len(), ..Limits::default() };
        let mut f = Framer::new(limits);
        f.enter_stream(Arc::from(vec![(String::new(), default_ns.to_owned())]));
        f.buf.extend_from_slice(&raw);
        let mut found = None;
        loop {
            match f.next_frame()? {
                Some(Frame::Whitespace) => {}
                Some(Frame::Element(e)) if found.is_none() => found = Some(e),
                Some(_) => return Err(XmlError::NotWellFormed("more than one element")),
                None => break,
            }
        }
        if f.buffered_len() != 0 {
            return Err(XmlError::NotWellFormed("incomplete element"));
        }
        let mut e = found.ok_or(XmlError::NotWellFormed("no element"))?;
        if e.raw.len() == raw.len() {
            e.raw = raw;
        }
        Ok(e)
    }

    /// Returns `raw` with attributes of the top-level start tag set (`Some`, escaped) or
    /// removed (`None`). Other attributes are copied byte for byte, a replaced one keeps its
    /// position, new ones are appended; children are copied unchanged. If `raw` is not a
    /// well-formed start tag (only possible for a hand-built value) it is returned as is.
    pub fn rewrite_attrs(&self, set: &[(&str, Option<&str>)]) -> Bytes {
        let raw = &self.raw[..];
        let Some(tag) = raw.get(..self.start_tag_len) else {
            return self.raw.clone();
        };
        let Some(out) = rewrite_start_tag(tag, set, raw.len() - tag.len()) else {
            return self.raw.clone();
        };
        let mut out = out;
        out.extend_from_slice(&raw[tag.len()..]);
        Bytes::from(out)
    }

    /// Parses the whole element into a tree, namespaces resolved with the declarations
    /// inherited from the stream header.
    pub fn parse(&self) -> Result<Element, XmlError> {
        parse_scoped(&self.raw, &self.inherited_ns)
    }
}

/// Rewrites a start tag `<name attrs...>` or `<name attrs.../>`; `None` if malformed.
fn rewrite_start_tag(tag: &[u8], set: &[(&str, Option<&str>)], rest: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(tag.len() + rest + 64);
    if tag.first() != Some(&b'<') {
        return None;
    }
    let mut i = 1;
    while tag.get(i).is_some_and(|&c| is_name_char(c)) {
        i += 1;
    }
    out.extend_from_slice(&tag[..i]);
    let mut applied = vec![false; set.len()];
    let tail = loop {
        let ws_start = i;
        while tag.get(i).is_some_and(|&c| is_ws(c)) {
            i += 1;
        }
        match tag.get(i)? {
            b'>' | b'/' => break ws_start,
            _ => {}
        }
        let name_start = i;
        while tag.get(i).is_some_and(|&c| is_name_char(c)) {
            i += 1;
        }
        let name_end = i;
        if name_end == name_start {
            return None;
        }
        while tag.get(i).is_some_and(|&c| is_ws(c)) {
            i += 1;
        }
        if tag.get(i) != Some(&b'=') {
            return None;
        }
        i += 1;
        while tag.get(i).is_some_and(|&c| is_ws(c)) {
            i += 1;
        }
        let quote = *tag.get(i).filter(|&&q| q == b'"' || q == b'\'')?;
        i += 1;
        i += tag.get(i..)?.iter().position(|&c| c == quote)? + 1;
        let name = &tag[name_start..name_end];
        match set.iter().position(|(k, _)| k.as_bytes() == name) {
            Some(n) => {
                applied[n] = true;
                if let Some(v) = set[n].1 {
                    out.extend_from_slice(&tag[ws_start..name_end]);
                    push_attr_value(&mut out, v);
                }
            }
            None => out.extend_from_slice(&tag[ws_start..i]),
        }
    };
    for (n, (k, v)) in set.iter().enumerate() {
        if applied[n] || set[..n].iter().any(|(k2, _)| k2 == k) {
            continue;
        }
        if let Some(v) = v {
            out.push(b' ');
            out.extend_from_slice(k.as_bytes());
            push_attr_value(&mut out, v);
        }
    }
    out.extend_from_slice(&tag[tail..]);
    Some(out)
}

fn push_attr_value(out: &mut Vec<u8>, v: &str) {
    out.extend_from_slice(b"=\"");
    out.extend_from_slice(escape_attr(v).as_bytes());
    out.push(b'"');
}

const fn table(kind: u8) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 128 {
        let b = i as u8;
        let ctl_ok = b >= 0x20 || is_ws(b);
        t[i] = match kind {
            // ASCII name characters
            0 => is_name_char(b),
            // text needing no action
            1 => ctl_ok && b != b'<' && b != b'&' && b != b']',
            // attribute value bytes needing no action (tab/newline/cr need normalising)
            2 => b >= 0x20 && b != b'<' && b != b'&' && b != b'"' && b != b'\'',
            // CDATA content needing no action
            3 => ctl_ok && b != b']',
            // reference body
            _ => is_name_char(b) || b == b'#',
        };
        i += 1;
    }
    t
}

static NAME_ASCII: [bool; 256] = table(0);
static TEXT_PLAIN: [bool; 256] = table(1);
static ATTR_PLAIN: [bool; 256] = table(2);
static CDATA_PLAIN: [bool; 256] = table(3);
static REF_CHAR: [bool; 256] = table(4);

const CDATA_OPEN: &[u8] = b"[CDATA[";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the stream header: whitespace, an XML declaration, or the header.
    Prolog,
    /// At depth 0 inside the stream: whitespace, a stanza, or the stream end tag.
    Between,
    /// After the stream end tag.
    Closed,
    /// After `<`.
    Lt,
    /// Inside `<?...`; `true` when the previous byte was `?`.
    Decl(bool),
    /// After `<!`, this many bytes of `[CDATA[` matched.
    Bang(u8),
    /// Inside CDATA, this many (at most 2) trailing `]` seen.
    Cdata(u8),
    StartName,
    /// Inside a start tag after the name or an attribute; `true` after whitespace.
    InTag(bool),
    AttrName,
    AttrEq,
    AttrQuote,
    AttrValue,
    /// After `/` in a start tag.
    EmptyClose,
    EndName,
    EndTail,
    /// Character data inside a stanza, this many (at most 2) trailing `]` seen.
    Text(u8),
    /// After `&`.
    Ref,
}

#[derive(Debug, Clone, Copy, Default)]
struct Span {
    start: usize,
    end: usize,
}

#[derive(Debug, Clone, Copy)]
struct AttrSpan {
    name: Span,
    value: Span,
    /// Value contains references or whitespace to normalise.
    escaped: bool,
}

#[derive(Debug, Clone, Copy)]
struct Open {
    name: Span,
    ns_mark: usize,
}

/// Header fields of the top-level element being scanned, taken from its start tag.
#[derive(Debug)]
struct Top {
    name: String,
    prefix: Option<String>,
    ns: String,
    to: Option<String>,
    from: Option<String>,
    kind: Option<String>,
    id: Option<String>,
    lang: Option<String>,
    start_tag_len: usize,
}

/// The XML stream framer. See the module documentation.
#[derive(Debug)]
pub struct Framer {
    limits: Limits,
    /// `buf[..pos]` is the scanned part of the current, incomplete token (XML declaration,
    /// stream header, top-level element or whitespace run); earlier bytes were handed out
    /// or dropped, so spans are offsets from the token start.
    buf: BytesMut,
    pos: usize,
    state: State,
    /// `pos` may not exceed this while a token is in progress.
    token_limit: usize,
    /// No stream header read yet (since creation or the last restart).
    in_prolog: bool,
    decl_seen: bool,
    utf8_need: u8,
    utf8_lo: u8,
    utf8_hi: u8,
    utf8_cp: u32,
    name: Span,
    attrs: Vec<AttrSpan>,
    attr_name: Span,
    attr_value_start: usize,
    quote: u8,
    escaped: bool,
    ref_start: usize,
    ref_in_attr: bool,
    open: Vec<Open>,
    /// Prefixes declared by the open elements of the current stanza.
    ns_prefixes: Vec<Span>,
    top: Option<Top>,
    header: Option<StreamHeader>,
    header_qname: Vec<u8>,
    inherited: Arc<[(String, String)]>,
    pending_close: bool,
    failed: Option<XmlError>,
    /// Adaptive read size, between [`MIN_READ`] and [`READ_CHUNK`]: see [`Framer::read_buf`].
    chunk: usize,
    /// Bytes handed out or dropped from the front of `buf`, ever (wrapping).
    consumed: usize,
    /// `(buf.len(), consumed, spare capacity)` when `read_buf` was last called.
    offer: Option<(usize, usize, usize)>,
}

impl Default for Framer {
    fn default() -> Self {
        Framer::new(Limits::default())
    }
}

/// Largest spare capacity [`Framer::read_buf`] offers, so a busy stream reads in useful chunks.
const READ_CHUNK: usize = 8192;
/// Smallest: what an idle connection keeps allocated for its next read.
const MIN_READ: usize = 512;

impl Framer {
    pub fn new(limits: Limits) -> Self {
        Framer {
            limits,
            buf: BytesMut::new(),
            pos: 0,
            state: State::Prolog,
            token_limit: usize::MAX,
            in_prolog: true,
            decl_seen: false,
            utf8_need: 0,
            utf8_lo: 0,
            utf8_hi: 0,
            utf8_cp: 0,
            name: Span::default(),
            attrs: Vec::new(),
            attr_name: Span::default(),
            attr_value_start: 0,
            quote: 0,
            escaped: false,
            ref_start: 0,
            ref_in_attr: false,
            open: Vec::new(),
            ns_prefixes: Vec::new(),
            top: None,
            header: None,
            header_qname: Vec::new(),
            inherited: Arc::from(Vec::new()),
            pending_close: false,
            failed: None,
            chunk: 2048,
            consumed: 0,
            offer: None,
        }
    }

    /// The buffer to read into. Only append to it (e.g. `stream.read_buf(framer.read_buf())`);
    /// it always has some spare capacity.
    ///
    /// The spare capacity adapts to the stream: a read that filled what was offered doubles
    /// the next offer (up to 8 KiB); one that used less than a quarter halves it (down to
    /// 512 bytes); a call with nothing read since the last one (a read future dropped by a
    /// `select!`) changes nothing. An emptied buffer much larger than the offer is let go, so an idle
    /// connection, whose last reads were a presence or a ping, holds about 512 bytes here
    /// instead of a full chunk (docs/benchmarks.md, memory per connection).
    pub fn read_buf(&mut self) -> &mut BytesMut {
        if let Some((len, consumed, offered)) = self.offer.take() {
            let read = (self.buf.len() + self.consumed.wrapping_sub(consumed)).saturating_sub(len);
            // Nothing read (the read was dropped or is pending) says nothing about sizes.
            if read > 0 && read >= offered {
                self.chunk = (self.chunk * 2).min(READ_CHUNK);
            } else if read > 0 && read < self.chunk / 4 {
                self.chunk = (self.chunk / 2).max(MIN_READ);
            }
        }
        if self.buf.is_empty() && self.buf.capacity() > 2 * self.chunk {
            self.buf = BytesMut::new();
        }
        if self.buf.capacity() - self.buf.len() < self.chunk / 2 {
            self.buf.reserve(self.chunk);
        }
        self.offer = Some((self.buf.len(), self.consumed, self.buf.capacity() - self.buf.len()));
        &mut self.buf
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed. After an error the
    /// framer keeps returning that error; the caller sends the stream error and closes.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, XmlError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.pending_close {
            self.pending_close = false;
            return Ok(Some(Frame::StreamClose));
        }
        self.run().inspect_err(|e| self.failed = Some(e.clone()))
    }

    /// Stream restart (RFC 6120 §4.3.3): the next thing expected is a new stream header,
    /// optionally preceded by an XML declaration. Bytes not yet returned are kept and will be
    /// scanned as part of the new stream.
    pub fn restart(&mut self) {
        self.pos = 0;
        self.state = State::Prolog;
        self.token_limit = usize::MAX;
        self.in_prolog = true;
        self.decl_seen = false;
        self.utf8_need = 0;
        self.attrs.clear();
        self.open.clear();
        self.ns_prefixes.clear();
        self.top = None;
        self.header = None;
        self.header_qname.clear();
        self.inherited = Arc::from(Vec::new());
        self.pending_close = false;
    }

    /// Bytes buffered but not yet returned in a frame.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// The current stream's header, once read.
    pub fn stream_header(&self) -> Option<&StreamHeader> {
        self.header.as_ref()
    }

    /// Puts the framer inside a stream whose header declared `inherited`.
    fn enter_stream(&mut self, inherited: Arc<[(String, String)]>) {
        self.in_prolog = false;
        self.state = State::Between;
        self.inherited = inherited;
    }

    fn run(&mut self) -> Result<Option<Frame>, XmlError> {
        if self.pos > self.buf.len() {
            return Err(XmlError::NotWellFormed("read buffer shrank"));
        }
        while self.pos < self.buf.len() {
            if self.pos > self.token_limit {
                return Err(XmlError::TooLarge);
            }
            if self.utf8_need > 0 {
                let b = self.buf[self.pos];
                self.utf8_cont(b)?;
                self.pos += 1;
                continue;
            }
            if let Some(frame) = self.step()? {
                return Ok(Some(frame));
            }
        }
        if self.pos > self.token_limit {
            return Err(XmlError::TooLarge);
        }
        Ok(None)
    }

    /// The unscanned bytes a fast scan may look at: never past the token's size limit, so
    /// a byte beyond it is not judged before `run` reports the token too large, however
    /// the stream was cut into reads (found by fuzz/framer).
    #[inline]
    fn scannable(&self) -> &[u8] {
        let end = self.buf.len().min(self.token_limit.saturating_add(1));
        self.buf.get(self.pos..end).unwrap_or_default()
    }

    /// Advances `pos` past bytes for which `plain` holds; `false` if the buffer (or the
    /// token's size limit) ran out.
    #[inline]
    fn skip(&mut self, plain: &[bool; 256]) -> bool {
        let rest = self.scannable();
        match rest.iter().position(|&c| !plain[usize::from(c)]) {
            Some(n) => {
                self.pos += n;
                true
            }
            None => {
                self.pos += rest.len();
                false
            }
        }
    }

    #[inline]
    fn skip_ws(&mut self) -> bool {
        let rest = self.scannable();
        match rest.iter().position(|&c| !is_ws(c)) {
            Some(n) => {
                self.pos += n;
                true
            }
            None => {
                self.pos += rest.len();
                false
            }
        }
    }

    fn begin_token(&mut self, limit: usize) {
        self.token_limit = limit;
        self.pos += 1;
        self.state = State::Lt;
    }

    /// Drops the scanned bytes (whitespace or a finished prolog token).
    fn drop_scanned(&mut self) {
        self.consumed = self.consumed.wrapping_add(self.pos);
        self.buf.advance(self.pos);
        self.pos = 0;
        self.token_limit = usize::MAX;
    }

    /// Handles the byte at `pos` (and possibly a run after it) in the current state.
    fn step(&mut self) -> Result<Option<Frame>, XmlError> {
        let b = self.buf[self.pos];
        match self.state {
            State::Prolog => {
                if is_ws(b) {
                    self.skip_ws();
                    self.drop_scanned();
                } else if b == b'<' {
                    self.begin_token(self.limits.max_header_bytes);
                } else {
                    return Err(XmlError::NotWellFormed("expected a stream header"));
                }
            }
            State::Between => {
                if is_ws(b) {
                    self.skip_ws();
                    self.drop_scanned();
                    return Ok(Some(Frame::Whitespace));
                } else if b == b'<' {
                    self.begin_token(self.limits.max_stanza_bytes);
                } else {
                    return Err(XmlError::NotWellFormed("text outside stanzas"));
                }
            }
            State::Closed => {
                if !is_ws(b) {
                    return Err(XmlError::NotWellFormed("data after the stream end"));
                }
                self.skip_ws();
                self.drop_scanned();
            }
            State::Lt => match b {
                b'/' if !self.in_prolog => {
                    self.pos += 1;
                    self.name.start = self.pos;
                    self.state = State::EndName;
                }
                b'!' => {
                    self.pos += 1;
                    self.state = State::Bang(0);
                }
                b'?' if self.in_prolog && !self.decl_seen => {
                    self.pos += 1;
                    self.state = State::Decl(false);
                }
                b'?' => return Err(XmlError::Restricted("processing instruction")),
                _ if is_name_start(b) => {
                    self.name.start = self.pos;
                    self.attrs.clear();
                    self.state = State::StartName;
                }
                _ => return Err(XmlError::NotWellFormed("bad markup")),
            },
            State::Decl(question) => {
                if question && b == b'>' {
                    return self.finish_decl();
                }
                self.state = State::Decl(b == b'?');
                if b >= 0x80 {
                    self.utf8_lead(b)?;
                } else if b < 0x20 && !is_ws(b) {
                    return Err(XmlError::NotWellFormed("illegal character"));
                }
                self.pos += 1;
            }
            State::Bang(matched) => {
                if CDATA_OPEN.get(usize::from(matched)) != Some(&b) {
                    return Err(XmlError::Restricted("comment or document type declaration"));
                }
                self.pos += 1;
                if usize::from(matched) + 1 == CDATA_OPEN.len() {
                    if self.open.is_empty() {
                        return Err(XmlError::NotWellFormed("CDATA outside a stanza"));
                    }
                    self.state = State::Cdata(0);
                } else {
                    self.state = State::Bang(matched + 1);
                }
            }
            State::Cdata(brackets) => {
                if brackets > 0 {
                    if b == b']' {
                        self.state = State::Cdata(2);
                        self.pos += 1;
                        return Ok(None);
                    }
                    self.state = State::Cdata(0);
                    if b == b'>' && brackets >= 2 {
                        self.state = State::Text(0);
                        self.pos += 1;
                        return Ok(None);
                    }
                }
                if !self.skip(&CDATA_PLAIN) {
                    return Ok(None);
                }
                let c = self.buf[self.pos];
                self.char_data_special(c, State::Cdata(1))?;
            }
            State::Text(brackets) => {
                if brackets > 0 {
                    if b == b']' {
                        self.state = State::Text(2);
                        self.pos += 1;
                        return Ok(None);
                    }
                    if b == b'>' && brackets >= 2 {
                        return Err(XmlError::NotWellFormed("']]>' in text"));
                    }
                    self.state = State::Text(0);
                }
                if !self.skip(&TEXT_PLAIN) {
                    return Ok(None);
                }
                let c = self.buf[self.pos];
                match c {
                    b'<' => {
                        self.pos += 1;
                        self.state = State::Lt;
                    }
                    b'&' => {
                        self.pos += 1;
                        self.ref_start = self.pos;
                        self.ref_in_attr = false;
                        self.state = State::Ref;
                    }
                    _ => self.char_data_special(c, State::Text(1))?,
                }
            }
            State::Ref => {
                let found = self.skip(&REF_CHAR);
                if self.pos - self.ref_start > MAX_REF_LEN {
                    let body = &self.buf[self.ref_start..self.ref_start + MAX_REF_LEN + 1];
                    return Err(ref_error(body));
                }
                if !found {
                    return Ok(None);
                }
                let body = &self.buf[self.ref_start..self.pos];
                match self.buf[self.pos] {
                    b';' => {}
                    // A name with non-ASCII characters: an entity other than the five.
                    0x80.. => return Err(ref_error(body)),
                    _ => return Err(XmlError::NotWellFormed("unterminated reference")),
                }
                decode_ref(body)?;
                self.pos += 1;
                self.state = if self.ref_in_attr {
                    self.escaped = true;
                    State::AttrValue
                } else {
                    State::Text(0)
                };
            }
            State::StartName => {
                if let Some(c) = self.scan_name()? {
                    self.name.end = self.pos;
                    check_qname(&self.buf[self.name.start..self.name.end])?;
                    return self.after_tag_token(c);
                }
            }
            State::InTag(ws) => {
                if is_ws(b) {
                    self.skip_ws();
                    self.state = State::InTag(true);
                } else if is_name_start(b) {
                    if !ws {
                        return Err(XmlError::NotWellFormed("attributes not separated"));
                    }
                    self.attr_name.start = self.pos;
                    self.state = State::AttrName;
                } else {
                    return self.after_tag_token(b);
                }
            }
            State::AttrName => {
                if let Some(c) = self.scan_name()? {
                    self.attr_name.end = self.pos;
                    check_qname(&self.buf[self.attr_name.start..self.attr_name.end])?;
                    self.state = State::AttrEq;
                    if c != b'=' && !is_ws(c) {
                        return Err(XmlError::NotWellFormed("attribute without '='"));
                    }
                }
            }
            State::AttrEq => {
                if is_ws(b) {
                    self.skip_ws();
                } else if b == b'=' {
                    self.pos += 1;
                    self.state = State::AttrQuote;
                } else {
                    return Err(XmlError::NotWellFormed("attribute without '='"));
                }
            }
            State::AttrQuote => {
                if is_ws(b) {
                    self.skip_ws();
                } else if b == b'"' || b == b'\'' {
                    self.quote = b;
                    self.pos += 1;
                    self.attr_value_start = self.pos;
                    self.escaped = false;
                    self.state = State::AttrValue;
                } else {
                    return Err(XmlError::NotWellFormed("unquoted attribute value"));
                }
            }
            State::AttrValue => {
                if !self.skip(&ATTR_PLAIN) {
                    return Ok(None);
                }
                let c = self.buf[self.pos];
                match c {
                    _ if c == self.quote => {
                        if self.attrs.len() >= self.limits.max_attrs {
                            return Err(XmlError::TooManyAttributes);
                        }
                        self.attrs.push(AttrSpan {
                            name: self.attr_name,
                            value: Span { start: self.attr_value_start, end: self.pos },
                            escaped: self.escaped,
                        });
                        self.pos += 1;
                        self.state = State::InTag(false);
                    }
                    b'"' | b'\'' => self.pos += 1,
                    b'&' => {
                        self.pos += 1;
                        self.ref_start = self.pos;
                        self.ref_in_attr = true;
                        self.state = State::Ref;
                    }
                    b'<' => return Err(XmlError::NotWellFormed("'<' in attribute value")),
                    b'\t' | b'\n' | b'\r' => {
                        self.escaped = true;
                        self.pos += 1;
                    }
                    0x80.. => {
                        self.utf8_lead(c)?;
                        self.pos += 1;
                    }
                    _ => return Err(XmlError::NotWellFormed("illegal character")),
                }
            }
            State::EmptyClose => {
                if b != b'>' {
                    return Err(XmlError::NotWellFormed("'/' not followed by '>'"));
                }
                return self.finish_start_tag(true);
            }
            State::EndName => {
                if let Some(c) = self.scan_name()? {
                    self.name.end = self.pos;
                    self.state = State::EndTail;
                    if c != b'>' && !is_ws(c) {
                        return Err(XmlError::NotWellFormed("bad end tag"));
                    }
                }
            }
            State::EndTail => {
                if is_ws(b) {
                    self.skip_ws();
                } else if b == b'>' {
                    return self.finish_end_tag();
                } else {
                    return Err(XmlError::NotWellFormed("bad end tag"));
                }
            }
        }
        Ok(None)
    }

    /// Scans name bytes; returns the terminating ASCII byte (not consumed) once the name
    /// ends, `None` if the buffer ran out or a multi-byte character began.
    fn scan_name(&mut self) -> Result<Option<u8>, XmlError> {
        if !self.skip(&NAME_ASCII) {
            return Ok(None);
        }
        let c = self.buf[self.pos];
        if c >= 0x80 {
            self.utf8_lead(c)?;
            self.pos += 1;
            return Ok(None);
        }
        Ok(Some(c))
    }

    /// After a start tag name or attribute: whitespace, `>`, `/>`.
    fn after_tag_token(&mut self, c: u8) -> Result<Option<Frame>, XmlError> {
        match c {
            b'>' => self.finish_start_tag(false),
            b'/' => {
                self.pos += 1;
                self.state = State::EmptyClose;
                Ok(None)
            }
            _ if is_ws(c) => {
                self.state = State::InTag(true);
                Ok(None)
            }
            _ => Err(XmlError::NotWellFormed("bad start tag")),
        }
    }

    /// A byte in text or CDATA that is not plain ASCII: `]`, a UTF-8 lead byte, or a
    /// control character.
    fn char_data_special(&mut self, c: u8, bracket: State) -> Result<(), XmlError> {
        match c {
            b']' => self.state = bracket,
            0x80.. => self.utf8_lead(c)?,
            _ => return Err(XmlError::NotWellFormed("illegal character")),
        }
        self.pos += 1;
        Ok(())
    }

    fn utf8_lead(&mut self, c: u8) -> Result<(), XmlError> {
        let (need, lo, hi, bits) = match c {
            0xC2..=0xDF => (1, 0x80, 0xBF, c & 0x1F),
            0xE0 => (2, 0xA0, 0xBF, c & 0x0F),
            0xE1..=0xEC | 0xEE..=0xEF => (2, 0x80, 0xBF, c & 0x0F),
            0xED => (2, 0x80, 0x9F, c & 0x0F),
            0xF0 => (3, 0x90, 0xBF, c & 0x07),
            0xF1..=0xF3 => (3, 0x80, 0xBF, c & 0x07),
            0xF4 => (3, 0x80, 0x8F, c & 0x07),
            _ => return Err(XmlError::BadEncoding),
        };
        self.utf8_need = need;
        self.utf8_lo = lo;
        self.utf8_hi = hi;
        self.utf8_cp = u32::from(bits);
        Ok(())
    }

    fn utf8_cont(&mut self, c: u8) -> Result<(), XmlError> {
        if c < self.utf8_lo || c > self.utf8_hi {
            return Err(XmlError::BadEncoding);
        }
        self.utf8_cp = (self.utf8_cp << 6) | u32::from(c & 0x3F);
        self.utf8_lo = 0x80;
        self.utf8_hi = 0xBF;
        self.utf8_need -= 1;
        if self.utf8_need == 0 && (self.utf8_cp == 0xFFFE || self.utf8_cp == 0xFFFF) {
            return Err(XmlError::NotWellFormed("illegal character"));
        }
        Ok(())
    }

    /// `<?...?>` complete (`pos` at the `>`): only an XML declaration is allowed.
    fn finish_decl(&mut self) -> Result<Option<Frame>, XmlError> {
        let body = &self.buf[2..self.pos - 1];
        let target_len = body.iter().position(|&c| !is_name_char(c)).unwrap_or(body.len());
        if &body[..target_len] != b"xml" {
            return Err(XmlError::Restricted("processing instruction"));
        }
        if let Some(enc) = pseudo_attr(&body[target_len..], b"encoding")
            && !enc.eq_ignore_ascii_case(b"UTF-8")
        {
            return Err(XmlError::BadEncoding);
        }
        self.decl_seen = true;
        self.pos += 1;
        self.drop_scanned();
        self.state = State::Prolog;
        Ok(None)
    }

    fn prefix_declared(&self, prefix: &[u8]) -> bool {
        prefix == b"xml"
            || self.ns_prefixes.iter().any(|s| &self.buf[s.start..s.end] == prefix)
            || self.inherited.iter().any(|(p, _)| !p.is_empty() && p.as_bytes() == prefix)
    }

    /// Checks a complete start tag's attributes and prefixes and pushes its prefix
    /// declarations; returns the namespace mark to restore at its end.
    fn check_start_tag(&mut self) -> Result<usize, XmlError> {
        let buf = &self.buf;
        for (i, a) in self.attrs.iter().enumerate() {
            let name = &buf[a.name.start..a.name.end];
            if self.attrs[..i].iter().any(|o| &buf[o.name.start..o.name.end] == name) {
                return Err(XmlError::NotWellFormed("duplicate attribute"));
            }
        }
        let mark = self.ns_prefixes.len();
        for a in &self.attrs {
            if buf[a.name.start..a.name.end].starts_with(b"xmlns:") {
                if a.value.start == a.value.end {
                    return Err(XmlError::NotWellFormed("empty prefix declaration"));
                }
                self.ns_prefixes.push(Span { start: a.name.start + 6, end: a.name.end });
            }
        }
        let name = &self.buf[self.name.start..self.name.end];
        if let Some(colon) = name.iter().position(|&c| c == b':') {
            let prefix = &name[..colon];
            if prefix == b"xmlns" {
                return Err(XmlError::NotWellFormed("element with the xmlns prefix"));
            }
            if !self.prefix_declared(prefix) {
                return Err(XmlError::UndeclaredPrefix);
            }
        }
        for a in &self.attrs {
            let name = &self.buf[a.name.start..a.name.end];
            if let Some(colon) = name.iter().position(|&c| c == b':') {
                let prefix = &name[..colon];
                if prefix != b"xmlns" && !self.prefix_declared(prefix) {
                    return Err(XmlError::UndeclaredPrefix);
                }
            }
        }
        Ok(mark)
    }

    fn span_str(&self, s: Span) -> Result<&str, XmlError> {
        std::str::from_utf8(&self.buf[s.start..s.end]).map_err(|_| XmlError::BadEncoding)
    }

    fn attr_value(&self, a: &AttrSpan) -> Result<String, XmlError> {
        let raw = self.span_str(a.value)?;
        Ok(if a.escaped { unescape(raw, true)?.into_owned() } else { raw.to_owned() })
    }

    /// `(prefix, local)` of the current tag name.
    fn split_name(&self) -> Result<(Option<&str>, &str), XmlError> {
        let qname = self.span_str(self.name)?;
        Ok(match qname.split_once(':') {
            Some((p, l)) => (Some(p), l),
            None => (None, qname),
        })
    }

    /// Start tag complete; `pos` at its `>`.
    fn finish_start_tag(&mut self, self_closing: bool) -> Result<Option<Frame>, XmlError> {
        let end = self.pos + 1;
        if self.in_prolog {
            return self.finish_header(self_closing, end);
        }
        if self.open.len() >= self.limits.max_depth {
            return Err(XmlError::TooDeep);
        }
        let mark = self.check_start_tag()?;
        if self.open.is_empty() {
            self.top = Some(self.read_top(end)?);
        }
        self.pos = end;
        self.state = State::Text(0);
        if self_closing {
            self.ns_prefixes.truncate(mark);
            if self.open.is_empty() {
                return self.emit_element(true);
            }
        } else {
            self.open.push(Open { name: self.name, ns_mark: mark });
        }
        Ok(None)
    }

    fn read_top(&self, start_tag_len: usize) -> Result<Top, XmlError> {
        let (prefix, local) = self.split_name()?;
        let mut top = Top {
            name: local.to_owned(),
            prefix: prefix.map(str::to_owned),
            ns: String::new(),
            to: None,
            from: None,
            kind: None,
            id: None,
            lang: None,
            start_tag_len,
        };
        let mut own_ns = None;
        for a in &self.attrs {
            let name = &self.buf[a.name.start..a.name.end];
            let slot = match name {
                b"to" => &mut top.to,
                b"from" => &mut top.from,
                b"type" => &mut top.kind,
                b"id" => &mut top.id,
                b"xml:lang" => &mut top.lang,
                b"xmlns" if prefix.is_none() => &mut own_ns,
                _ => match (prefix, name.strip_prefix(b"xmlns:")) {
                    (Some(p), Some(declared)) if p.as_bytes() == declared => &mut own_ns,
                    _ => continue,
                },
            };
            *slot = Some(self.attr_value(a)?);
        }
        let wanted = prefix.unwrap_or("");
        top.ns = match own_ns {
            Some(ns) => ns,
            None if wanted == "xml" => XML_NS.to_owned(),
            None => match self.inherited.iter().find(|(p, _)| p == wanted) {
                Some((_, uri)) => uri.clone(),
                None if prefix.is_none() => String::new(),
                None => return Err(XmlError::UndeclaredPrefix),
            },
        };
        Ok(top)
    }

    /// Hands out the top-level element ending at `pos`.
    fn emit_element(&mut self, self_closing: bool) -> Result<Option<Frame>, XmlError> {
        if self.pos > self.limits.max_stanza_bytes {
            return Err(XmlError::TooLarge);
        }
        let top = self.top.take().ok_or(XmlError::NotWellFormed("element without a start tag"))?;
        self.consumed = self.consumed.wrapping_add(self.pos);
        let raw = self.buf.split_to(self.pos).freeze();
        self.pos = 0;
        self.token_limit = usize::MAX;
        self.state = State::Between;
        Ok(Some(Frame::Element(RawElement {
            raw,
            name: top.name,
            ns: top.ns,
            prefix: top.prefix,
            to: top.to,
            from: top.from,
            kind: top.kind,
            id: top.id,
            lang: top.lang,
            start_tag_len: top.start_tag_len,
            self_closing,
            inherited_ns: self.inherited.clone(),
        })))
    }

    /// End tag complete; `pos` at its `>`.
    fn finish_end_tag(&mut self) -> Result<Option<Frame>, XmlError> {
        let name = &self.buf[self.name.start..self.name.end];
        let Some(open) = self.open.pop() else {
            if name != self.header_qname.as_slice() {
                return Err(XmlError::NotWellFormed("end tag does not match the stream"));
            }
            self.pos += 1;
            self.drop_scanned();
            self.state = State::Closed;
            return Ok(Some(Frame::StreamClose));
        };
        if name != &self.buf[open.name.start..open.name.end] {
            return Err(XmlError::NotWellFormed("mismatched end tag"));
        }
        self.ns_prefixes.truncate(open.ns_mark);
        self.pos += 1;
        if self.open.is_empty() {
            return self.emit_element(false);
        }
        self.state = State::Text(0);
        Ok(None)
    }

    fn finish_header(&mut self, self_closing: bool, end: usize) -> Result<Option<Frame>, XmlError> {
        if end > self.limits.max_header_bytes {
            return Err(XmlError::TooLarge);
        }
        self.check_start_tag()?;
        let (prefix, local) = self.split_name()?;
        let mut h =
            StreamHeader { local_name: local.to_owned(), prefix: prefix.map(str::to_owned), ..StreamHeader::default() };
        for a in &self.attrs {
            let name = &self.buf[a.name.start..a.name.end];
            let slot = match name {
                b"to" => &mut h.to,
                b"from" => &mut h.from,
                b"id" => &mut h.id,
                b"version" => &mut h.version,
                b"xml:lang" => &mut h.lang,
                b"xmlns" => &mut h.default_ns,
                _ => {
                    if let Some(p) = name.strip_prefix(b"xmlns:") {
                        let p = std::str::from_utf8(p).map_err(|_| XmlError::BadEncoding)?;
                        h.ns_decls.push((p.to_owned(), self.attr_value(a)?));
                    }
                    continue;
                }
            };
            *slot = Some(self.attr_value(a)?);
        }
        h.ns = match &h.prefix {
            None => h.default_ns.clone(),
            Some(p) if p == "xml" => Some(XML_NS.to_owned()),
            Some(p) => h.ns_decls.iter().find(|(d, _)| d == p).map(|(_, u)| u.clone()),
        };
        let mut inherited = h.ns_decls.clone();
        if let Some(d) = &h.default_ns {
            inherited.push((String::new(), d.clone()));
        }
        self.header_qname.clear();
        self.header_qname.extend_from_slice(&self.buf[self.name.start..self.name.end]);
        self.ns_prefixes.clear();
        self.pos = end;
        self.drop_scanned();
        self.enter_stream(Arc::from(inherited));
        self.header = Some(h.clone());
        if self_closing {
            self.pending_close = true;
            self.state = State::Closed;
        }
        Ok(Some(Frame::StreamOpen(h)))
    }
}

fn ref_error(body: &[u8]) -> XmlError {
    match body.first() {
        Some(&c) if c != b'#' && is_name_start(c) => XmlError::Restricted("entity reference"),
        _ => XmlError::NotWellFormed("malformed reference"),
    }
}

/// Value of a pseudo-attribute in an XML declaration body.
fn pseudo_attr<'a>(body: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let at = body.windows(name.len()).position(|w| w == name)?;
    let mut rest = &body[at + name.len()..];
    rest = rest.trim_ascii_start().strip_prefix(b"=")?.trim_ascii_start();
    let (&quote, rest) = rest.split_first()?;
    if quote != b'"' && quote != b'\'' {
        return None;
    }
    let end = rest.iter().position(|&c| c == quote)?;
    Some(&rest[..end])
}
