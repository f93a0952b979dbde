//! XML namespaces used across the server, in one place.

pub const CLIENT: &str = "jabber:client";
pub const SERVER: &str = "jabber:server";
pub const STREAM: &str = "http://etherx.jabber.org/streams";
pub const STREAMS_ERR: &str = "urn:ietf:params:xml:ns:xmpp-streams";
pub const STANZAS_ERR: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
pub const ROSTER: &str = "jabber:iq:roster";
pub const ROSTER_VER: &str = "urn:xmpp:features:rosterver";
pub const PRE_APPROVAL: &str = "urn:xmpp:features:pre-approval";
pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
pub const PING: &str = "urn:xmpp:ping";
pub const VERSION: &str = "jabber:iq:version";
pub const VCARD: &str = "vcard-temp";
pub const REGISTER: &str = "jabber:iq:register";
pub const REGISTER_FEATURE: &str = "http://jabber.org/features/iq-register";
pub const BLOCKING: &str = "urn:xmpp:blocking";
pub const BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";
pub const LAST: &str = "jabber:iq:last";
pub const DELAY: &str = "urn:xmpp:delay";
pub const OFFLINE: &str = "msgoffline";
pub const CHANNEL_BINDING: &str = "urn:xmpp:sasl-cb:0";
pub const DATA_FORMS: &str = "jabber:x:data";
pub const TIME: &str = "urn:xmpp:time";
pub const SID: &str = "urn:xmpp:sid:0";
pub const HINTS: &str = "urn:xmpp:hints";
pub const CARBONS: &str = "urn:xmpp:carbons:2";
pub const FORWARD: &str = "urn:xmpp:forward:0";
pub const OMEMO_LEGACY: &str = "eu.siacs.conversations.axolotl";
pub const OMEMO: &str = "urn:xmpp:omemo:2";
pub const OPENPGP: &str = "urn:xmpp:openpgp:0";
pub const RECEIPTS: &str = "urn:xmpp:receipts";
pub const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
pub const MARKERS: &str = "urn:xmpp:chat-markers:0";
pub const CONFERENCE: &str = "jabber:x:conference";
pub const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
/// Every MAM version's namespace starts with this (`urn:xmpp:mam:2`, `:1`, ...).
pub const MAM_PREFIX: &str = "urn:xmpp:mam:";
pub const MAM2: &str = "urn:xmpp:mam:2";
pub const MAM2_EXTENDED: &str = "urn:xmpp:mam:2#extended";
pub const MAM1: &str = "urn:xmpp:mam:1";
pub const RSM: &str = "http://jabber.org/protocol/rsm";
pub const XDATA_VALIDATE: &str = "http://jabber.org/protocol/xdata-validate";
/// XEP-0157 form type of the contact-address extension.
pub const SERVERINFO: &str = "http://jabber.org/network/serverinfo";
/// XEP-0198 stream management.
pub const SM: &str = "urn:xmpp:sm:3";
/// XEP-0352 client state indication.
pub const CSI: &str = "urn:xmpp:csi:0";
