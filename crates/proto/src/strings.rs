//! Names on the wire back to the RFC 6120 vocabulary: stream error conditions (§4.9.3),
//! stanza error conditions (§8.3.3) and error types (§8.3.2), plus a bounded interner for
//! the fixed texts a `StanzaError` carries as `&'static str`.
//!
//! Must not touch: anything but strings.

use rookery_stanza::{Condition, ErrorType, StreamCondition};
use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

/// RFC 6120 §4.9.3: the stream error condition with this element name.
pub fn stream_condition_from_name(name: &str) -> Option<StreamCondition> {
    StreamCondition::from_name(name)
}

/// RFC 6120 §8.3.3: the stanza error condition with this element name.
pub fn condition_from_name(name: &str) -> Option<Condition> {
    Condition::from_name(name)
}

/// RFC 6120 §8.3.2: the error type with this name.
pub fn error_type_from_name(name: &str) -> Option<ErrorType> {
    ErrorType::from_name(name)
}

/// Most distinct texts kept; they come from fixed strings in the router's code, so a real
/// cluster stays far below this.
const MAX_INTERNED: usize = 512;
const MAX_TEXT_LEN: usize = 512;

/// A `'static` copy of `s`. `StanzaError` holds texts as `&'static str` because the server
/// only ever uses literals; a text received from a router is one of those literals, so
/// each distinct one is leaked once and reused. The table is bounded: past the bound (a
/// misbehaving peer) the text is dropped and the error goes out without it.
pub(crate) fn intern(s: &str) -> Option<&'static str> {
    static TABLE: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut table = TABLE.get_or_init(Default::default).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(found) = table.get(s) {
        return Some(found);
    }
    if table.len() >= MAX_INTERNED || s.len() > MAX_TEXT_LEN {
        return None;
    }
    let leaked: &'static str = Box::leak(s.to_owned().into_boxed_str());
    table.insert(leaked);
    Some(leaked)
}
