//! rookery-proto: the cluster wire contract (`proto/rookery/v1/cluster.proto`) and the
//! conversions between its generated types and Rookery's own types.
//!
//! Owns: the generated prost messages and tonic service (`pb`), the protocol version and
//! its compatibility rule, and the conversions `EdgeMsg` ⇄ `pb::EdgeFrame`,
//! `RouterMsg` ⇄ `pb::RouterFrame`, `(ConnId, Envelope)` ⇄ `pb::Route`.
//! Must not touch: sockets, tasks, routing decisions. `pb` is public only so that the
//! transport (`rookery-cluster`) can put frames on a stream; everything inward of the
//! transport gets parsed types (DESIGN §6.1), and a frame that does not convert is an
//! error value, never a panic.
//!
//! Envelopes cross the wire as their parsed header plus the raw bytes: the receiver
//! rebuilds `RawElement` from the header fields and never scans the XML again (DESIGN §4).
//! JIDs are parsed again (RFC 7622; cheap on the normalized ASCII fast path), so a peer
//! cannot smuggle an unnormalized address inward.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("rookery.v1");
}

mod strings;

use bytes::Bytes;
use rookery_core::{BindError, ConnId, Extensions, IqRequest, IqResult, IqType, Location, Outbound, SessionEntry};
use rookery_jid::{FullJid, Jid, JidError};
use rookery_stanza::{Envelope, Kind, StanzaError, StreamCondition};
use rookery_xml::{Element, RawElement, XmlError};
use std::sync::Arc;

pub use strings::{condition_from_name, error_type_from_name, stream_condition_from_name};

/// The version this build speaks. Bump it when a frame or field changes behaviour.
pub const PROTO_VERSION: u32 = 2;
/// The oldest edge version a router of this build accepts (N-1, never below 1).
pub const MIN_PROTO_VERSION: u32 = if PROTO_VERSION > 1 { PROTO_VERSION - 1 } else { 1 };

/// Whether a router of this build serves an edge speaking `version`.
pub fn accepts_version(version: u32) -> bool {
    (MIN_PROTO_VERSION..=PROTO_VERSION).contains(&version)
}

/// Why a frame could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The oneof was empty: a variant added by a newer peer (ignored by the receiver).
    #[error("frame of an unknown kind")]
    UnknownFrame,
    #[error("missing field {0}")]
    Missing(&'static str),
    #[error("invalid value in {0}")]
    Invalid(&'static str),
    #[error("malformed JID in {field}: {source}")]
    Jid { field: &'static str, source: JidError },
    #[error("malformed XML in {field}: {source}")]
    Xml { field: &'static str, source: XmlError },
}

fn jid_err(field: &'static str) -> impl FnOnce(JidError) -> ProtoError {
    move |source| ProtoError::Jid { field, source }
}

/// First frame of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub edge_id: u32,
    pub epoch: u64,
    pub proto_version: u32,
}

/// A live session as its edge knows it (for re-registering after a registry reset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionState {
    pub jid: FullJid,
    pub conn: ConnId,
    pub priority: i8,
    pub available: bool,
    pub presence: Option<Bytes>,
    pub directed: Vec<Jid>,
    /// The modules' extension slots, carried opaquely.
    pub ext: Extensions,
}

impl SessionState {
    /// The registry entry for this session on edge `edge`.
    pub fn into_entry(self, edge: u32) -> SessionEntry {
        SessionEntry {
            jid: self.jid,
            loc: Location { edge, conn: self.conn },
            priority: self.priority,
            available: self.available,
            presence: self.presence,
            directed: self.directed,
            ext: self.ext,
        }
    }
}

/// What an edge sends a router.
#[derive(Debug, Clone)]
pub enum EdgeMsg {
    Hello(Hello),
    Route { conn: ConnId, env: Envelope },
    Bind { req: u64, jid: FullJid, conn: ConnId },
    Unbind { jid: FullJid, conn: ConnId },
    PreauthIq { req: u64, iq: IqRequest },
    Undelivered { to: FullJid, raw: Bytes },
    SessionState(SessionState),
    Ping { seq: u64 },
}

/// What a router sends an edge.
#[derive(Debug, Clone)]
pub enum RouterMsg {
    Deliver { conn: ConnId, raw: Bytes },
    Close { conn: ConnId, condition: StreamCondition },
    BindResult { req: u64, result: Result<(), BindError> },
    PreauthResult { req: u64, result: IqResult },
    Drain,
    ResyncRequest,
    Pong { seq: u64 },
    SetSessionExt { conn: ConnId, key: String, value: Option<Bytes> },
}

impl RouterMsg {
    /// The frame carrying `out` for connection `conn`.
    pub fn from_outbound(conn: ConnId, out: Outbound) -> RouterMsg {
        match out {
            Outbound::Stanza(raw) => RouterMsg::Deliver { conn, raw },
            Outbound::Close(condition) => RouterMsg::Close { conn, condition },
        }
    }
}

/// Remembers the last `inherited_ns` list seen on a stream: every stanza of a client
/// stream carries the same one, so the receiver shares one allocation between them.
#[derive(Debug, Default)]
pub struct NsCache {
    last: Option<Arc<[(String, String)]>>,
}

impl NsCache {
    fn intern(&mut self, decls: Vec<pb::NsDecl>) -> Arc<[(String, String)]> {
        if let Some(last) = &self.last
            && last.len() == decls.len()
            && last.iter().zip(&decls).all(|(a, b)| a.0 == b.prefix && a.1 == b.uri)
        {
            return last.clone();
        }
        let list: Arc<[(String, String)]> = decls.into_iter().map(|d| (d.prefix, d.uri)).collect();
        self.last = Some(list.clone());
        list
    }
}

// ------------------------------------------------------------------ envelopes

fn kind_to_pb(kind: Kind) -> pb::StanzaKind {
    match kind {
        Kind::Message => pb::StanzaKind::Message,
        Kind::Presence => pb::StanzaKind::Presence,
        Kind::Iq => pb::StanzaKind::Iq,
    }
}

/// Encodes an envelope, moving its strings into the frame.
pub fn route_to_pb(conn: ConnId, env: Envelope) -> pb::Route {
    let Envelope { kind, from, to, el } = env;
    let header = pb::Header {
        kind: kind_to_pb(kind) as i32,
        from: from.as_str().to_owned(),
        to: to.as_str().to_owned(),
        name: el.name,
        ns: el.ns,
        prefix: el.prefix,
        attr_to: el.to,
        attr_from: el.from,
        r#type: el.kind,
        id: el.id,
        lang: el.lang,
        start_tag_len: u32::try_from(el.start_tag_len).unwrap_or(u32::MAX),
        self_closing: el.self_closing,
        inherited_ns: el.inherited_ns.iter().map(|(p, u)| pb::NsDecl { prefix: p.clone(), uri: u.clone() }).collect(),
    };
    pb::Route { conn, header: Some(header), raw: el.raw }
}

/// Decodes an envelope without scanning its bytes: only the header's consistency with
/// the byte length is checked, and the JIDs are parsed.
pub fn route_from_pb(route: pb::Route, ns: &mut NsCache) -> Result<(ConnId, Envelope), ProtoError> {
    let h = route.header.ok_or(ProtoError::Missing("route.header"))?;
    let kind = match pb::StanzaKind::try_from(h.kind) {
        Ok(pb::StanzaKind::Message) => Kind::Message,
        Ok(pb::StanzaKind::Presence) => Kind::Presence,
        Ok(pb::StanzaKind::Iq) => Kind::Iq,
        _ => return Err(ProtoError::Invalid("route.header.kind")),
    };
    if Kind::from_name(&h.name) != Some(kind) {
        return Err(ProtoError::Invalid("route.header.name"));
    }
    let from = Jid::parse(&h.from).map_err(jid_err("route.header.from"))?;
    let to = Jid::parse(&h.to).map_err(jid_err("route.header.to"))?;
    let len = route.raw.len();
    let start_tag_len = h.start_tag_len as usize;
    if start_tag_len == 0
        || start_tag_len > len
        || (h.self_closing && start_tag_len != len)
        || route.raw.first() != Some(&b'<')
    {
        return Err(ProtoError::Invalid("route.header.start_tag_len"));
    }
    let el = RawElement {
        raw: route.raw,
        name: h.name,
        ns: h.ns,
        prefix: h.prefix,
        to: h.attr_to,
        from: h.attr_from,
        kind: h.r#type,
        id: h.id,
        lang: h.lang,
        start_tag_len,
        self_closing: h.self_closing,
        inherited_ns: ns.intern(h.inherited_ns),
    };
    Ok((route.conn, Envelope { kind, from, to, el }))
}

impl From<(ConnId, Envelope)> for pb::Route {
    fn from((conn, env): (ConnId, Envelope)) -> Self {
        route_to_pb(conn, env)
    }
}

impl From<(ConnId, &Envelope)> for pb::Route {
    fn from((conn, env): (ConnId, &Envelope)) -> Self {
        route_to_pb(conn, env.clone())
    }
}

impl TryFrom<pb::Route> for (ConnId, Envelope) {
    type Error = ProtoError;
    fn try_from(route: pb::Route) -> Result<Self, ProtoError> {
        route_from_pb(route, &mut NsCache::default())
    }
}

// ------------------------------------------------------------------ stanza errors

fn stanza_error_to_pb(e: &StanzaError) -> pb::StanzaError {
    pb::StanzaError {
        condition: e.condition.name().to_owned(),
        r#type: e.kind.name().to_owned(),
        text: e.text.map(str::to_owned),
        app_name: e.app.map(|(n, _)| n.to_owned()),
        app_ns: e.app.map(|(_, ns)| ns.to_owned()),
    }
}

/// A condition this build does not know becomes `undefined-condition` (RFC 6120
/// §8.3.3.21), so a newer router's error still reaches the client as an error.
fn stanza_error_from_pb(e: pb::StanzaError) -> StanzaError {
    let condition = condition_from_name(&e.condition).unwrap_or(rookery_stanza::Condition::UndefinedCondition);
    let mut out = StanzaError::new(condition);
    if let Some(kind) = error_type_from_name(&e.r#type) {
        out = out.with_type(kind);
    }
    if let Some(text) = e.text.as_deref().and_then(strings::intern) {
        out = out.with_text(text);
    }
    if let (Some(name), Some(ns)) = (e.app_name.as_deref(), e.app_ns.as_deref())
        && let (Some(name), Some(ns)) = (strings::intern(name), strings::intern(ns))
    {
        out = out.with_app(name, ns);
    }
    out
}

fn element_from_bytes(raw: &[u8], field: &'static str) -> Result<Element, ProtoError> {
    rookery_xml::parse_element(raw, "").map_err(|source| ProtoError::Xml { field, source })
}

// ------------------------------------------------------------------ edge frames

impl From<EdgeMsg> for pb::EdgeFrame {
    fn from(msg: EdgeMsg) -> Self {
        use pb::edge_frame::Frame;
        let frame = match msg {
            EdgeMsg::Hello(h) => {
                Frame::Hello(pb::Hello { edge_id: h.edge_id, epoch: h.epoch, proto_version: h.proto_version })
            }
            EdgeMsg::Route { conn, env } => Frame::Route(route_to_pb(conn, env)),
            EdgeMsg::Bind { req, jid, conn } => Frame::Bind(pb::Bind { req, jid: jid.as_str().to_owned(), conn }),
            EdgeMsg::Unbind { jid, conn } => Frame::Unbind(pb::Unbind { jid: jid.as_str().to_owned(), conn }),
            EdgeMsg::PreauthIq { req, iq } => Frame::PreauthIq(pb::PreauthIq {
                req,
                from: iq.from.map(|f| f.as_str().to_owned()),
                to: iq.to.as_str().to_owned(),
                kind: match iq.kind {
                    IqType::Get => pb::IqKind::Get,
                    IqType::Set => pb::IqKind::Set,
                } as i32,
                id: iq.id,
                payload: iq.payload.to_bytes(""),
            }),
            EdgeMsg::Undelivered { to, raw } => Frame::Undelivered(pb::Undelivered { to: to.as_str().to_owned(), raw }),
            EdgeMsg::SessionState(s) => Frame::SessionState(pb::SessionState {
                jid: s.jid.as_str().to_owned(),
                conn: s.conn,
                priority: i32::from(s.priority),
                available: s.available,
                presence: s.presence,
                interested: false,
                blocklist: false,
                carbons: false,
                directed: s.directed.iter().map(|j| j.as_str().to_owned()).collect(),
                ext: s.ext.iter().map(|(k, v)| pb::SessionExt { key: k.to_owned(), value: v.clone() }).collect(),
            }),
            EdgeMsg::Ping { seq } => Frame::Ping(pb::Ping { seq }),
        };
        pb::EdgeFrame { frame: Some(frame) }
    }
}

impl EdgeMsg {
    /// Decodes a frame; `ns` shares namespace lists between the stanzas of one stream.
    pub fn decode(frame: pb::EdgeFrame, ns: &mut NsCache) -> Result<EdgeMsg, ProtoError> {
        use pb::edge_frame::Frame;
        Ok(match frame.frame.ok_or(ProtoError::UnknownFrame)? {
            Frame::Hello(h) => {
                EdgeMsg::Hello(Hello { edge_id: h.edge_id, epoch: h.epoch, proto_version: h.proto_version })
            }
            Frame::Route(r) => {
                let (conn, env) = route_from_pb(r, ns)?;
                EdgeMsg::Route { conn, env }
            }
            Frame::Bind(b) => {
                EdgeMsg::Bind { req: b.req, jid: FullJid::parse(&b.jid).map_err(jid_err("bind.jid"))?, conn: b.conn }
            }
            Frame::Unbind(u) => {
                EdgeMsg::Unbind { jid: FullJid::parse(&u.jid).map_err(jid_err("unbind.jid"))?, conn: u.conn }
            }
            Frame::PreauthIq(p) => {
                let kind = match pb::IqKind::try_from(p.kind) {
                    Ok(pb::IqKind::Get) => IqType::Get,
                    Ok(pb::IqKind::Set) => IqType::Set,
                    _ => return Err(ProtoError::Invalid("preauth_iq.kind")),
                };
                let from = match p.from {
                    Some(f) => Some(FullJid::parse(&f).map_err(jid_err("preauth_iq.from"))?),
                    None => None,
                };
                let iq = IqRequest {
                    from,
                    to: Jid::parse(&p.to).map_err(jid_err("preauth_iq.to"))?,
                    kind,
                    id: p.id,
                    payload: element_from_bytes(&p.payload, "preauth_iq.payload")?,
                };
                EdgeMsg::PreauthIq { req: p.req, iq }
            }
            Frame::Undelivered(u) => {
                EdgeMsg::Undelivered { to: FullJid::parse(&u.to).map_err(jid_err("undelivered.to"))?, raw: u.raw }
            }
            Frame::SessionState(s) => {
                let mut ext: Extensions = s.ext.into_iter().map(|e| (e.key, e.value)).collect();
                // A version-1 edge sends the three flags that are extension slots now.
                for (on, key) in [(s.interested, "roster"), (s.blocklist, "blocklist"), (s.carbons, "carbons")] {
                    if on {
                        ext.set_raw(key, Some(Bytes::new()));
                    }
                }
                EdgeMsg::SessionState(SessionState {
                    jid: FullJid::parse(&s.jid).map_err(jid_err("session_state.jid"))?,
                    conn: s.conn,
                    priority: i8::try_from(s.priority).map_err(|_| ProtoError::Invalid("session_state.priority"))?,
                    available: s.available,
                    presence: s.presence,
                    directed: s
                        .directed
                        .iter()
                        .map(|d| Jid::parse(d).map_err(jid_err("session_state.directed")))
                        .collect::<Result<_, _>>()?,
                    ext,
                })
            }
            Frame::Ping(p) => EdgeMsg::Ping { seq: p.seq },
        })
    }
}

impl TryFrom<pb::EdgeFrame> for EdgeMsg {
    type Error = ProtoError;
    fn try_from(frame: pb::EdgeFrame) -> Result<Self, ProtoError> {
        EdgeMsg::decode(frame, &mut NsCache::default())
    }
}

// ------------------------------------------------------------------ router frames

impl From<RouterMsg> for pb::RouterFrame {
    fn from(msg: RouterMsg) -> Self {
        use pb::router_frame::Frame;
        let frame = match msg {
            RouterMsg::Deliver { conn, raw } => Frame::Deliver(pb::Deliver { conn, raw }),
            RouterMsg::Close { conn, condition } => {
                Frame::Close(pb::Close { conn, condition: condition.name().to_owned() })
            }
            RouterMsg::BindResult { req, result } => {
                use pb::bind_result::Result as R;
                let result = match result {
                    Ok(()) => R::Ok(pb::Empty {}),
                    Err(e) => R::Err(match e {
                        BindError::Conflict => pb::BindErrorCode::Conflict,
                        BindError::ResourceConstraint => pb::BindErrorCode::ResourceConstraint,
                        BindError::Internal => pb::BindErrorCode::Internal,
                    } as i32),
                };
                Frame::BindResult(pb::BindResult { req, result: Some(result) })
            }
            RouterMsg::PreauthResult { req, result } => {
                use pb::preauth_result::Result as R;
                let result = match result {
                    Ok(payload) => {
                        R::Ok(pb::IqPayload { payload: payload.map(|p| p.to_bytes("")).unwrap_or_default() })
                    }
                    Err(e) => R::Error(stanza_error_to_pb(&e)),
                };
                Frame::PreauthResult(pb::PreauthResult { req, result: Some(result) })
            }
            RouterMsg::Drain => Frame::Drain(pb::Drain {}),
            RouterMsg::ResyncRequest => Frame::ResyncRequest(pb::ResyncRequest {}),
            RouterMsg::Pong { seq } => Frame::Pong(pb::Pong { seq }),
            RouterMsg::SetSessionExt { conn, key, value } => {
                Frame::SetSessionExt(pb::SetSessionExt { conn, key, value })
            }
        };
        pb::RouterFrame { frame: Some(frame) }
    }
}

impl TryFrom<pb::RouterFrame> for RouterMsg {
    type Error = ProtoError;
    fn try_from(frame: pb::RouterFrame) -> Result<Self, ProtoError> {
        use pb::router_frame::Frame;
        Ok(match frame.frame.ok_or(ProtoError::UnknownFrame)? {
            Frame::Deliver(d) => RouterMsg::Deliver { conn: d.conn, raw: d.raw },
            Frame::Close(c) => RouterMsg::Close {
                conn: c.conn,
                // A stream condition added later still closes the stream (RFC 6120 §4.9.3.21).
                condition: stream_condition_from_name(&c.condition).unwrap_or(StreamCondition::UndefinedCondition),
            },
            Frame::BindResult(b) => {
                use pb::bind_result::Result as R;
                let result = match b.result.ok_or(ProtoError::Missing("bind_result.result"))? {
                    R::Ok(_) => Ok(()),
                    R::Err(code) => Err(match pb::BindErrorCode::try_from(code) {
                        Ok(pb::BindErrorCode::Conflict) => BindError::Conflict,
                        Ok(pb::BindErrorCode::ResourceConstraint) => BindError::ResourceConstraint,
                        _ => BindError::Internal,
                    }),
                };
                RouterMsg::BindResult { req: b.req, result }
            }
            Frame::PreauthResult(p) => {
                use pb::preauth_result::Result as R;
                let result = match p.result.ok_or(ProtoError::Missing("preauth_result.result"))? {
                    R::Ok(ok) if ok.payload.is_empty() => Ok(None),
                    R::Ok(ok) => Ok(Some(element_from_bytes(&ok.payload, "preauth_result.payload")?)),
                    R::Error(e) => Err(stanza_error_from_pb(e)),
                };
                RouterMsg::PreauthResult { req: p.req, result }
            }
            Frame::Drain(_) => RouterMsg::Drain,
            Frame::ResyncRequest(_) => RouterMsg::ResyncRequest,
            Frame::Pong(p) => RouterMsg::Pong { seq: p.seq },
            Frame::SetSessionExt(e) => RouterMsg::SetSessionExt { conn: e.conn, key: e.key, value: e.value },
        })
    }
}

#[cfg(test)]
mod tests;
