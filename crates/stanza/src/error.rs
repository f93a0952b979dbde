//! RFC 6120 error vocabulary: stream errors (§4.9.3) and stanza errors (§8.3.3), with
//! their default error types (§8.3.2) and wire form. Internal error text never goes on
//! the wire: callers pass only a condition and, at most, a fixed human-readable text.

use crate::ns;

/// RFC 6120 §8.3.2 error types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    Auth,
    Cancel,
    Continue,
    Modify,
    Wait,
}

impl ErrorType {
    /// Every variant, for reverse lookups (`from_name`).
    pub const ALL: [ErrorType; 5] =
        [ErrorType::Auth, ErrorType::Cancel, ErrorType::Continue, ErrorType::Modify, ErrorType::Wait];

    /// The variant whose `name()` is `name`.
    pub fn from_name(name: &str) -> Option<ErrorType> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            ErrorType::Auth => "auth",
            ErrorType::Cancel => "cancel",
            ErrorType::Continue => "continue",
            ErrorType::Modify => "modify",
            ErrorType::Wait => "wait",
        }
    }
}

/// RFC 6120 §8.3.3 defined stanza error conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    BadRequest,
    Conflict,
    FeatureNotImplemented,
    Forbidden,
    Gone,
    InternalServerError,
    ItemNotFound,
    JidMalformed,
    NotAcceptable,
    NotAllowed,
    NotAuthorized,
    PolicyViolation,
    RecipientUnavailable,
    Redirect,
    RegistrationRequired,
    RemoteServerNotFound,
    RemoteServerTimeout,
    ResourceConstraint,
    ServiceUnavailable,
    SubscriptionRequired,
    UndefinedCondition,
    UnexpectedRequest,
}

impl Condition {
    /// Every variant, for reverse lookups (`from_name`).
    pub const ALL: [Condition; 22] = {
        use Condition::*;
        [
            BadRequest,
            Conflict,
            FeatureNotImplemented,
            Forbidden,
            Gone,
            InternalServerError,
            ItemNotFound,
            JidMalformed,
            NotAcceptable,
            NotAllowed,
            NotAuthorized,
            PolicyViolation,
            RecipientUnavailable,
            Redirect,
            RegistrationRequired,
            RemoteServerNotFound,
            RemoteServerTimeout,
            ResourceConstraint,
            ServiceUnavailable,
            SubscriptionRequired,
            UndefinedCondition,
            UnexpectedRequest,
        ]
    };

    /// The variant whose `name()` is `name`.
    pub fn from_name(name: &str) -> Option<Condition> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    pub fn name(self) -> &'static str {
        use Condition::*;
        match self {
            BadRequest => "bad-request",
            Conflict => "conflict",
            FeatureNotImplemented => "feature-not-implemented",
            Forbidden => "forbidden",
            Gone => "gone",
            InternalServerError => "internal-server-error",
            ItemNotFound => "item-not-found",
            JidMalformed => "jid-malformed",
            NotAcceptable => "not-acceptable",
            NotAllowed => "not-allowed",
            NotAuthorized => "not-authorized",
            PolicyViolation => "policy-violation",
            RecipientUnavailable => "recipient-unavailable",
            Redirect => "redirect",
            RegistrationRequired => "registration-required",
            RemoteServerNotFound => "remote-server-not-found",
            RemoteServerTimeout => "remote-server-timeout",
            ResourceConstraint => "resource-constraint",
            ServiceUnavailable => "service-unavailable",
            SubscriptionRequired => "subscription-required",
            UndefinedCondition => "undefined-condition",
            UnexpectedRequest => "unexpected-request",
        }
    }

    /// The error type RFC 6120 §8.3.3 gives as the usual one for each condition.
    pub fn default_type(self) -> ErrorType {
        use Condition::*;
        match self {
            BadRequest | JidMalformed | NotAcceptable | PolicyViolation | Redirect => ErrorType::Modify,
            Forbidden | NotAuthorized | RegistrationRequired | SubscriptionRequired => ErrorType::Auth,
            RecipientUnavailable | RemoteServerTimeout | ResourceConstraint | UnexpectedRequest => ErrorType::Wait,
            Conflict
            | FeatureNotImplemented
            | Gone
            | InternalServerError
            | ItemNotFound
            | NotAllowed
            | RemoteServerNotFound
            | ServiceUnavailable
            | UndefinedCondition => ErrorType::Cancel,
        }
    }
}

/// A stanza error: condition, type, optional fixed text and optional application
/// condition element (e.g. `<blocked xmlns='urn:xmpp:blocking:errors'/>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StanzaError {
    pub condition: Condition,
    pub kind: ErrorType,
    pub text: Option<&'static str>,
    pub app: Option<(&'static str, &'static str)>,
}

impl StanzaError {
    pub fn new(condition: Condition) -> Self {
        StanzaError { condition, kind: condition.default_type(), text: None, app: None }
    }
    pub fn with_text(mut self, text: &'static str) -> Self {
        self.text = Some(text);
        self
    }
    pub fn with_type(mut self, kind: ErrorType) -> Self {
        self.kind = kind;
        self
    }
    pub fn with_app(mut self, name: &'static str, ns: &'static str) -> Self {
        self.app = Some((name, ns));
        self
    }
    /// Serialises the `<error/>` child.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"<error type=\"");
        out.extend_from_slice(self.kind.name().as_bytes());
        out.extend_from_slice(b"\"><");
        out.extend_from_slice(self.condition.name().as_bytes());
        out.extend_from_slice(b" xmlns=\"");
        out.extend_from_slice(ns::STANZAS_ERR.as_bytes());
        out.extend_from_slice(b"\"/>");
        if let Some(t) = self.text {
            out.extend_from_slice(b"<text xmlns=\"");
            out.extend_from_slice(ns::STANZAS_ERR.as_bytes());
            out.extend_from_slice(b"\" xml:lang=\"en\">");
            out.extend_from_slice(rookery_xml::escape_text(t).as_bytes());
            out.extend_from_slice(b"</text>");
        }
        if let Some((name, ns)) = self.app {
            out.push(b'<');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b" xmlns=\"");
            out.extend_from_slice(ns.as_bytes());
            out.extend_from_slice(b"\"/>");
        }
        out.extend_from_slice(b"</error>");
    }
}

impl From<Condition> for StanzaError {
    fn from(c: Condition) -> Self {
        StanzaError::new(c)
    }
}

/// RFC 6120 §4.9.3 stream error conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamCondition {
    BadFormat,
    BadNamespacePrefix,
    Conflict,
    ConnectionTimeout,
    HostGone,
    HostUnknown,
    ImproperAddressing,
    InternalServerError,
    InvalidFrom,
    InvalidNamespace,
    InvalidXml,
    NotAuthorized,
    NotWellFormed,
    PolicyViolation,
    RemoteConnectionFailed,
    Reset,
    ResourceConstraint,
    RestrictedXml,
    SeeOtherHost,
    SystemShutdown,
    UndefinedCondition,
    UnsupportedEncoding,
    UnsupportedFeature,
    UnsupportedStanzaType,
    UnsupportedVersion,
}

impl StreamCondition {
    /// Every variant, for reverse lookups (`from_name`).
    pub const ALL: [StreamCondition; 25] = {
        use StreamCondition::*;
        [
            BadFormat,
            BadNamespacePrefix,
            Conflict,
            ConnectionTimeout,
            HostGone,
            HostUnknown,
            ImproperAddressing,
            InternalServerError,
            InvalidFrom,
            InvalidNamespace,
            InvalidXml,
            NotAuthorized,
            NotWellFormed,
            PolicyViolation,
            RemoteConnectionFailed,
            Reset,
            ResourceConstraint,
            RestrictedXml,
            SeeOtherHost,
            SystemShutdown,
            UndefinedCondition,
            UnsupportedEncoding,
            UnsupportedFeature,
            UnsupportedStanzaType,
            UnsupportedVersion,
        ]
    };

    /// The variant whose `name()` is `name`.
    pub fn from_name(name: &str) -> Option<StreamCondition> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    pub fn name(self) -> &'static str {
        use StreamCondition::*;
        match self {
            BadFormat => "bad-format",
            BadNamespacePrefix => "bad-namespace-prefix",
            Conflict => "conflict",
            ConnectionTimeout => "connection-timeout",
            HostGone => "host-gone",
            HostUnknown => "host-unknown",
            ImproperAddressing => "improper-addressing",
            InternalServerError => "internal-server-error",
            InvalidFrom => "invalid-from",
            InvalidNamespace => "invalid-namespace",
            InvalidXml => "invalid-xml",
            NotAuthorized => "not-authorized",
            NotWellFormed => "not-well-formed",
            PolicyViolation => "policy-violation",
            RemoteConnectionFailed => "remote-connection-failed",
            Reset => "reset",
            ResourceConstraint => "resource-constraint",
            RestrictedXml => "restricted-xml",
            SeeOtherHost => "see-other-host",
            SystemShutdown => "system-shutdown",
            UndefinedCondition => "undefined-condition",
            UnsupportedEncoding => "unsupported-encoding",
            UnsupportedFeature => "unsupported-feature",
            UnsupportedStanzaType => "unsupported-stanza-type",
            UnsupportedVersion => "unsupported-version",
        }
    }
}

/// A stream error with an optional fixed explanatory text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamError {
    pub condition: StreamCondition,
    pub text: Option<&'static str>,
}

impl StreamError {
    pub fn new(condition: StreamCondition) -> Self {
        StreamError { condition, text: None }
    }
    pub fn with_text(mut self, text: &'static str) -> Self {
        self.text = Some(text);
        self
    }
    /// `<stream:error>…</stream:error>` (the caller follows it with `</stream:stream>`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(b"<stream:error><");
        out.extend_from_slice(self.condition.name().as_bytes());
        out.extend_from_slice(b" xmlns=\"");
        out.extend_from_slice(ns::STREAMS_ERR.as_bytes());
        out.extend_from_slice(b"\"/>");
        if let Some(t) = self.text {
            out.extend_from_slice(b"<text xmlns=\"");
            out.extend_from_slice(ns::STREAMS_ERR.as_bytes());
            out.extend_from_slice(b"\" xml:lang=\"en\">");
            out.extend_from_slice(rookery_xml::escape_text(t).as_bytes());
            out.extend_from_slice(b"</text>");
        }
        out.extend_from_slice(b"</stream:error>");
        out
    }
}
