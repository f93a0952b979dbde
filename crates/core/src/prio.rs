//! Every hook handler's priority, in one place (DESIGN §3). Lower runs first; a handler
//! without a reason to be elsewhere uses `DEFAULT`. Each other value says why it is where
//! it is, relative to its neighbours on the same hook point.

use crate::hooks::Priority;

/// No ordering need.
pub const DEFAULT: Priority = Priority(500);

// MESSAGE_OUT
/// First: a blocked message is refused before anything else looks at it (XEP-0191 §3.6).
pub const BLOCKING: Priority = Priority(100);
/// Before anything copies or stores the message: a carbon wrapper sent by a client is
/// refused (XEP-0280 §11).
pub const CARBONS_FORGERY: Priority = Priority(200);
/// After the refusals: spoofed stanza-ids are removed before the message is stored or
/// copied anywhere (XEP-0359 §3).
pub const STANZA_ID_SPOOF: Priority = Priority(300);

// DELIVERY
/// Before the archive: a message the offline store would refuse (quota) is refused
/// before it is archived, so the archive never holds a message nobody got.
pub const OFFLINE_QUOTA: Priority = Priority(400);
/// The archive writes the rows and stamps the stanza-ids before anything is delivered
/// (XEP-0313 §3.5: what a client sees with a stanza-id is in the archive).
pub const MAM_ARCHIVE: Priority = Priority(500);

// DELIVERED
/// Carbon copies go out once the message was accepted, and carry the stanza-id the
/// archive stamped in DELIVERY (XEP-0313 §3.5).
pub const CARBONS: Priority = Priority(500);
