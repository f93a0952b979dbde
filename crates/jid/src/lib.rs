//! XMPP addresses (JIDs): parsing, enforcement and canonical storage.
//!
//! Owns the address format of RFC 7622: splitting a string into localpart, domainpart and
//! resourcepart (§3.1, §3.2), and enforcing each part so that two JIDs naming the same entity
//! compare equal byte for byte:
//!
//! - domainpart (§3.2): one trailing label separator stripped, IPv4 and bracketed IPv6
//!   literals accepted, everything else through IDNA2008 / UTS #46 (STD3 rules) and stored as
//!   lowercase U-labels, never A-labels;
//! - localpart (§3.3): the PRECIS `UsernameCaseMapped` profile (RFC 8265 §3.3) plus the
//!   characters RFC 7622 §3.3.1 excludes (`" & ' / : < > @`);
//! - resourcepart (§3.4): the PRECIS `OpaqueString` profile (RFC 8265 §4.2), no case folding.
//!
//! Each part is 1 to 1023 octets after enforcement. A [`Jid`] is one `Arc<str>` plus two
//! offsets, so cloning never copies and the canonical string is available without formatting.
//! Parts that are printable ASCII without uppercase (nearly all real traffic) are provably
//! unchanged by enforcement, so they skip PRECIS and IDNA entirely.
//!
//! Every [`JidError`] is a `jid-malformed` condition (RFC 6120 §8.3.3.8); the mapping to the
//! wire happens in the stanza layer, not here.
//!
//! Must not touch: I/O, XML, DNS resolution, XEP-0106 escaping (a `\20` is just three
//! ordinary localpart characters here).
//!
//! Deliberate deviation: RFC 7622 §3.5 example 18 (`juliet@example.com/ foo`) is accepted.
//! The table calls it invalid, but no rule forbids it: `OpaqueString` allows spaces anywhere,
//! and refusing an address other servers consider valid would lose stanzas.

use std::borrow::Cow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::Ipv6Addr;
use std::str::FromStr;
use std::sync::Arc;

use idna::uts46::{AsciiDenyList, Hyphens, Uts46};
use precis_core::profile::{PrecisFastInvocation, stabilize};
use precis_profiles::{OpaqueString, UsernameCaseMapped};

#[cfg(test)]
mod tests;

/// Largest size of each enforced part in octets (RFC 7622 §3.2, §3.3, §3.4).
pub const MAX_PART_LEN: usize = 1023;

/// Raw input above this is refused before any Unicode processing. Enforcement can shrink a
/// part (width mapping turns three-octet fullwidth forms into ASCII), so the raw limit is
/// looser than [`MAX_PART_LEN`]; it only bounds the work an attacker can cause.
const MAX_RAW_PART_LEN: usize = 4 * MAX_PART_LEN;

/// Characters RFC 7622 §3.3.1 forbids in a localpart although `IdentifierClass` allows them.
const NODE_EXCLUDED: &[u8] = b"\"&'/:<>@";

/// Why a string is not a JID. Every variant is the `jid-malformed` condition
/// (RFC 6120 §8.3.3.8).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JidError {
    /// The domainpart is missing or empty (also after stripping a trailing dot).
    #[error("empty domainpart")]
    EmptyDomain,
    /// An `@` with nothing before it.
    #[error("empty localpart")]
    EmptyNode,
    /// A `/` with nothing after it.
    #[error("empty resourcepart")]
    EmptyResource,
    /// A part exceeds 1023 octets after enforcement.
    #[error("part too long")]
    TooLong,
    /// The localpart violates `UsernameCaseMapped` or contains an excluded character.
    #[error("invalid localpart")]
    InvalidNode,
    /// The domainpart is neither an IP literal nor a valid IDNA2008 domain name.
    #[error("invalid domainpart")]
    InvalidDomain,
    /// The resourcepart violates `OpaqueString`.
    #[error("invalid resourcepart")]
    InvalidResource,
    /// A full JID was given where a bare one is required.
    #[error("expected a bare JID")]
    NotBare,
    /// A bare JID was given where a full one is required.
    #[error("expected a full JID")]
    NotFull,
}

/// Any JID, bare or full, in canonical (enforced) form.
///
/// Equality, ordering and hashing are those of the canonical string, so `Juliet@Example.com`
/// and `juliet@example.com` are the same key.
#[derive(Clone)]
pub struct Jid {
    s: Arc<str>,
    /// Offset of the `@` separating localpart and domainpart.
    at: Option<u16>,
    /// Offset of the `/` separating domainpart and resourcepart.
    slash: Option<u16>,
}

// Jids sit in every routed stanza header and in session tables.
const _: () = assert!(std::mem::size_of::<Jid>() <= 24);
const _: () = assert!(std::mem::size_of::<BareJid>() == std::mem::size_of::<Jid>());
const _: () = assert!(std::mem::size_of::<FullJid>() == std::mem::size_of::<Jid>());
// Offsets are u16: three maximal parts plus two separators must fit.
const _: () = assert!(3 * MAX_PART_LEN + 2 <= u16::MAX as usize);

impl Jid {
    /// Parses and enforces a JID string (RFC 7622 §3.1–§3.4).
    pub fn parse(s: &str) -> Result<Jid, JidError> {
        let (node, domain, resource) = split(s);
        if node.is_none_or(node_is_canonical)
            && domain_is_canonical(domain)
            && resource.is_none_or(resource_is_canonical)
        {
            // The input already is the canonical form: share it, one allocation.
            return Ok(Jid {
                s: Arc::from(s),
                at: node.map(|n| offset(n.len())),
                slash: resource.map(|r| offset(s.len() - r.len() - 1)),
            });
        }
        Self::from_parts(node, domain, resource)
    }

    /// Builds a JID from separate parts, enforcing each one. Unlike [`Jid::parse`], the parts
    /// are taken as given: a `/` in `resource` is part of the resource, an `@` in `node` is an
    /// error.
    pub fn from_parts(node: Option<&str>, domain: &str, resource: Option<&str>) -> Result<Jid, JidError> {
        let domain = enforce_domain(domain)?;
        let node = node.map(enforce_node).transpose()?;
        let resource = resource.map(enforce_resource).transpose()?;
        Ok(assemble(node.as_deref(), &domain, resource.as_deref()))
    }

    /// The localpart, if any.
    pub fn node(&self) -> Option<&str> {
        self.at.map(|i| &self.s[..usize::from(i)])
    }

    /// The domainpart (never empty).
    pub fn domain(&self) -> &str {
        let start = self.at.map_or(0, |i| usize::from(i) + 1);
        let end = self.slash.map_or(self.s.len(), usize::from);
        &self.s[start..end]
    }

    /// The resourcepart, if any.
    pub fn resource(&self) -> Option<&str> {
        self.slash.map(|i| &self.s[usize::from(i) + 1..])
    }

    /// The canonical string form.
    pub fn as_str(&self) -> &str {
        &self.s
    }

    /// The canonical string form without the resourcepart.
    pub fn bare_str(&self) -> &str {
        &self.s[..self.slash.map_or(self.s.len(), usize::from)]
    }

    /// True when there is no resourcepart.
    pub fn is_bare(&self) -> bool {
        self.slash.is_none()
    }

    /// True when there is a resourcepart.
    pub fn is_full(&self) -> bool {
        self.slash.is_some()
    }

    /// The bare JID; shares the allocation when `self` is already bare.
    pub fn to_bare(&self) -> BareJid {
        if self.slash.is_none() {
            return BareJid(self.clone());
        }
        BareJid(Jid { s: Arc::from(self.bare_str()), at: self.at, slash: None })
    }

    /// Like [`Jid::to_bare`] but consumes `self`, avoiding a reference count bump.
    pub fn into_bare(self) -> BareJid {
        if self.slash.is_none() { BareJid(self) } else { self.to_bare() }
    }

    /// The JID of the domain alone (the server or service hosting this address).
    pub fn domain_jid(&self) -> BareJid {
        if self.at.is_none() && self.slash.is_none() {
            return BareJid(self.clone());
        }
        BareJid(Jid { s: Arc::from(self.domain()), at: None, slash: None })
    }

    /// The same localpart and domainpart with `resource` (enforced) as resourcepart,
    /// replacing any existing one.
    pub fn with_resource(&self, resource: &str) -> Result<FullJid, JidError> {
        let resource = enforce_resource(resource)?;
        let (bare, at) = (self.bare_str(), self.at);
        let mut jid = assemble_raw(&[bare, "/", &resource]);
        jid.at = at;
        jid.slash = Some(offset(bare.len()));
        Ok(FullJid(jid))
    }
}

impl PartialEq for Jid {
    fn eq(&self, other: &Self) -> bool {
        // Offsets follow from the canonical string: enforced localparts and domainparts
        // never contain '@' or '/'.
        Arc::ptr_eq(&self.s, &other.s) || self.s == other.s
    }
}
impl Eq for Jid {}
impl Hash for Jid {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.s.hash(state);
    }
}
impl PartialOrd for Jid {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Jid {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.s.cmp(&other.s)
    }
}

impl fmt::Display for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.s)
    }
}
impl fmt::Debug for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Jid({})", &self.s)
    }
}
impl FromStr for Jid {
    type Err = JidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Jid::parse(s)
    }
}
impl AsRef<str> for Jid {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// A JID without resourcepart: an account, a room, a server.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BareJid(Jid);

impl BareJid {
    /// Parses a JID and requires it to be bare.
    pub fn parse(s: &str) -> Result<BareJid, JidError> {
        Jid::parse(s)?.try_into()
    }

    /// Builds a bare JID from separate parts, enforcing each one.
    pub fn from_parts(node: Option<&str>, domain: &str) -> Result<BareJid, JidError> {
        Jid::from_parts(node, domain, None).map(BareJid)
    }

    /// The localpart, if any.
    pub fn node(&self) -> Option<&str> {
        self.0.node()
    }

    /// The domainpart.
    pub fn domain(&self) -> &str {
        self.0.domain()
    }

    /// The canonical string form.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The JID of the domain alone.
    pub fn domain_jid(&self) -> BareJid {
        self.0.domain_jid()
    }

    /// This JID with `resource` (enforced) as resourcepart.
    pub fn with_resource(&self, resource: &str) -> Result<FullJid, JidError> {
        self.0.with_resource(resource)
    }

    /// The underlying [`Jid`].
    pub fn as_jid(&self) -> &Jid {
        &self.0
    }

    /// Converts into the underlying [`Jid`] without copying.
    pub fn into_jid(self) -> Jid {
        self.0
    }
}

/// A JID with resourcepart: a connected client, a room occupant.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FullJid(Jid);

impl FullJid {
    /// Parses a JID and requires it to be full.
    pub fn parse(s: &str) -> Result<FullJid, JidError> {
        Jid::parse(s)?.try_into()
    }

    /// Builds a full JID from separate parts, enforcing each one.
    pub fn from_parts(node: Option<&str>, domain: &str, resource: &str) -> Result<FullJid, JidError> {
        Jid::from_parts(node, domain, Some(resource)).map(FullJid)
    }

    /// The localpart, if any.
    pub fn node(&self) -> Option<&str> {
        self.0.node()
    }

    /// The domainpart.
    pub fn domain(&self) -> &str {
        self.0.domain()
    }

    /// The resourcepart (never empty).
    pub fn resource(&self) -> &str {
        self.0.resource().unwrap_or_default()
    }

    /// The canonical string form.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The bare JID (one allocation).
    pub fn to_bare(&self) -> BareJid {
        self.0.to_bare()
    }

    /// The canonical string form without the resourcepart.
    pub fn bare_str(&self) -> &str {
        self.0.bare_str()
    }

    /// The JID of the domain alone.
    pub fn domain_jid(&self) -> BareJid {
        self.0.domain_jid()
    }

    /// The same bare JID with another resource (enforced).
    pub fn with_resource(&self, resource: &str) -> Result<FullJid, JidError> {
        self.0.with_resource(resource)
    }

    /// The underlying [`Jid`].
    pub fn as_jid(&self) -> &Jid {
        &self.0
    }

    /// Converts into the underlying [`Jid`] without copying.
    pub fn into_jid(self) -> Jid {
        self.0
    }
}

impl TryFrom<Jid> for BareJid {
    type Error = JidError;
    fn try_from(j: Jid) -> Result<Self, JidError> {
        if j.is_bare() { Ok(BareJid(j)) } else { Err(JidError::NotBare) }
    }
}
impl TryFrom<Jid> for FullJid {
    type Error = JidError;
    fn try_from(j: Jid) -> Result<Self, JidError> {
        if j.is_full() { Ok(FullJid(j)) } else { Err(JidError::NotFull) }
    }
}
impl From<BareJid> for Jid {
    fn from(b: BareJid) -> Jid {
        b.0
    }
}
impl From<FullJid> for Jid {
    fn from(f: FullJid) -> Jid {
        f.0
    }
}
macro_rules! common {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($t), self.as_str())
            }
        }
        impl FromStr for $t {
            type Err = JidError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <$t>::parse(s)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }
    };
}
common!(BareJid);
common!(FullJid);

/// Splits per RFC 7622 §3.1: the resourcepart starts at the first '/', the localpart ends at
/// the first '@' before it. Parts are returned raw, possibly empty.
fn split(s: &str) -> (Option<&str>, &str, Option<&str>) {
    let (head, resource) = match s.split_once('/') {
        Some((h, r)) => (h, Some(r)),
        None => (s, None),
    };
    match head.split_once('@') {
        Some((n, d)) => (Some(n), d, resource),
        None => (None, head, resource),
    }
}

/// Offsets are bounded by the const assertion on `MAX_PART_LEN`.
fn offset(i: usize) -> u16 {
    debug_assert!(i <= usize::from(u16::MAX));
    i as u16
}

/// Concatenates enforced parts into one `Arc<str>`.
fn assemble(node: Option<&str>, domain: &str, resource: Option<&str>) -> Jid {
    let n = node.unwrap_or_default();
    let r = resource.unwrap_or_default();
    let at_sep = if node.is_some() { "@" } else { "" };
    let slash_sep = if resource.is_some() { "/" } else { "" };
    let mut jid = assemble_raw(&[n, at_sep, domain, slash_sep, r]);
    jid.at = node.map(|n| offset(n.len()));
    jid.slash = resource.map(|_| offset(n.len() + at_sep.len() + domain.len()));
    jid
}

/// Builds the shared string with a single heap allocation when it is short, which it almost
/// always is; longer strings pay for an intermediate `String`.
fn assemble_raw(pieces: &[&str]) -> Jid {
    const STACK: usize = 256;
    let len: usize = pieces.iter().map(|p| p.len()).sum();
    let s: Arc<str> = if len <= STACK {
        let mut buf = [0u8; STACK];
        let mut pos = 0;
        for p in pieces {
            buf[pos..pos + p.len()].copy_from_slice(p.as_bytes());
            pos += p.len();
        }
        // Concatenated UTF-8 is UTF-8; the fallback only exists to avoid a panic path.
        match std::str::from_utf8(&buf[..len]) {
            Ok(s) => Arc::from(s),
            Err(_) => Arc::from(pieces.concat()),
        }
    } else {
        Arc::from(pieces.concat())
    };
    Jid { s, at: None, slash: None }
}

/// True when `s` is a non-empty localpart that `UsernameCaseMapped` leaves unchanged and
/// §3.3.1 allows: printable ASCII (PVALID in `IdentifierClass`) is already NFC, has no
/// width mapping and no right-to-left characters, and without uppercase needs no case mapping.
fn node_is_canonical(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_PART_LEN
        && s.bytes().all(|b| matches!(b, b'!'..=b'~') && !b.is_ascii_uppercase() && !NODE_EXCLUDED.contains(&b))
}

/// True when `s` is a non-empty resourcepart that `OpaqueString` leaves unchanged: printable
/// ASCII and ASCII space are valid in `FreeformClass` and untouched by its mappings.
fn resource_is_canonical(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_PART_LEN && s.bytes().all(|b| matches!(b, b' '..=b'~'))
}

/// True when `s` is a domainpart that UTS #46 with the options of [`enforce_domain`] leaves
/// unchanged: lowercase LDH labels, none empty (so no trailing dot to strip), none starting or
/// ending with '-', none an A-label candidate (`xn--`, which must become a U-label).
fn domain_is_canonical(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_PART_LEN
        && s.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && !label.starts_with("xn--")
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// One pass of `UsernameCaseMapped` enforcement (RFC 8265 §3.3.3).
fn username_case_mapped(s: &str) -> Result<Cow<'_, str>, precis_core::Error> {
    <UsernameCaseMapped as PrecisFastInvocation>::enforce(s)
}

/// One pass of `OpaqueString` enforcement (RFC 8265 §4.2.3).
fn opaque_string(s: &str) -> Result<Cow<'_, str>, precis_core::Error> {
    <OpaqueString as PrecisFastInvocation>::enforce(s)
}

/// RFC 7622 §3.3: `UsernameCaseMapped`, then the §3.3.1 exclusions and the length limit.
fn enforce_node(s: &str) -> Result<Cow<'_, str>, JidError> {
    if s.is_empty() {
        return Err(JidError::EmptyNode);
    }
    if node_is_canonical(s) {
        return Ok(Cow::Borrowed(s));
    }
    if s.len() > MAX_RAW_PART_LEN {
        return Err(JidError::TooLong);
    }
    let out = stabilize(s, username_case_mapped).map_err(|_| JidError::InvalidNode)?;
    // Checked after enforcement: width mapping turns e.g. U+FF20 into '@'.
    if out.bytes().any(|b| NODE_EXCLUDED.contains(&b)) {
        return Err(JidError::InvalidNode);
    }
    if out.len() > MAX_PART_LEN {
        return Err(JidError::TooLong);
    }
    Ok(out)
}

/// RFC 7622 §3.4: `OpaqueString` and the length limit.
fn enforce_resource(s: &str) -> Result<Cow<'_, str>, JidError> {
    if s.is_empty() {
        return Err(JidError::EmptyResource);
    }
    if resource_is_canonical(s) {
        return Ok(Cow::Borrowed(s));
    }
    if s.len() > MAX_RAW_PART_LEN {
        return Err(JidError::TooLong);
    }
    let out = stabilize(s, opaque_string).map_err(|_| JidError::InvalidResource)?;
    if out.len() > MAX_PART_LEN {
        return Err(JidError::TooLong);
    }
    Ok(out)
}

/// RFC 7622 §3.2: strip one trailing label separator, accept IP literals, otherwise
/// IDNA2008-compatible UTS #46 processing to lowercase U-labels.
fn enforce_domain(s: &str) -> Result<Cow<'_, str>, JidError> {
    if domain_is_canonical(s) {
        return Ok(Cow::Borrowed(s));
    }
    if s.len() > MAX_RAW_PART_LEN {
        return Err(JidError::TooLong);
    }
    // RFC 1034 label separators, including the ones UTS #46 maps to '.'; stripped before any
    // other step, as §3.2 requires.
    let s = ['.', '\u{3002}', '\u{FF0E}', '\u{FF61}'].iter().find_map(|&dot| s.strip_suffix(dot)).unwrap_or(s);
    if s.is_empty() {
        return Err(JidError::EmptyDomain);
    }
    if let Some(inner) = s.strip_prefix('[') {
        let addr = inner.strip_suffix(']').and_then(|a| a.parse::<Ipv6Addr>().ok()).ok_or(JidError::InvalidDomain)?;
        // Canonical RFC 5952 text, so that [::1] and [0::1] compare equal.
        return Ok(Cow::Owned(format!("[{addr}]")));
    }
    if domain_is_canonical(s) {
        return Ok(Cow::Borrowed(s));
    }
    // STD3 rules reject every ASCII character outside LDH ('@', '/', ' ', '_', ...), also
    // when a non-ASCII character maps to one. IPv4 literals are plain LDH and pass unchanged.
    let (out, result) = Uts46::new().to_unicode(s.as_bytes(), AsciiDenyList::STD3, Hyphens::CheckFirstLast);
    if result.is_err() || out.split('.').any(str::is_empty) {
        return Err(JidError::InvalidDomain);
    }
    if out.len() > MAX_PART_LEN {
        return Err(JidError::TooLong);
    }
    Ok(out)
}
