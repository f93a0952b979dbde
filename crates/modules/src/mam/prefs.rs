//! Archiving preferences on the wire (XEP-0441 §2.1, formerly XEP-0313 §5, in the
//! `urn:xmpp:mam:2` and `urn:xmpp:mam:1` namespaces): reading a `<prefs/>` set and
//! writing the preferences back.
//!
//! Owns: the `<prefs default=''><always/><never/></prefs>` shape, JID normalisation of
//! the lists and the rules for contradictory input.
//! Must not touch: the store or the archiving decision itself (the router applies the
//! preferences when it archives, XEP-0441 §2.3).

use rookery_jid::Jid;
use rookery_stanza::{Condition, StanzaError};
use rookery_storage::{ArchiveDefault, ArchivePrefs};
use rookery_xml::Element;

/// Most JIDs accepted across both lists, so one account cannot grow its preferences
/// (which the router reads on every archived message) without bound.
pub(super) const MAX_PREFS_JIDS: usize = 1000;

/// Parses a `<prefs/>` set. §2.1.2/§2.1.3: a missing list is an empty one. A JID in both
/// lists is kept only in `never`: the server may apply preferences other than those
/// requested (§2.1) and answers with what it applied, and not archiving is the choice
/// that cannot leak.
pub(super) fn parse(el: &Element) -> Result<ArchivePrefs, StanzaError> {
    let default = match el.get_attr("default") {
        Some("always") => ArchiveDefault::Always,
        Some("never") => ArchiveDefault::Never,
        Some("roster") => ArchiveDefault::Roster,
        _ => {
            return Err(StanzaError::new(Condition::BadRequest)
                .with_text("prefs default: must be 'always', 'never' or 'roster'"));
        }
    };
    let never = jids(el.get_child("never", &el.ns))?;
    let mut always = jids(el.get_child("always", &el.ns))?;
    always.retain(|j| !never.contains(j));
    if always.len() + never.len() > MAX_PREFS_JIDS {
        return Err(StanzaError::new(Condition::NotAcceptable).with_text("prefs: too many JIDs (at most 1000)"));
    }
    Ok(ArchivePrefs { default, always, never })
}

/// The normalised JIDs of a list's `<jid/>` children, duplicates dropped, order kept.
fn jids(list: Option<&Element>) -> Result<Vec<String>, StanzaError> {
    let mut out: Vec<String> = Vec::new();
    let Some(list) = list else { return Ok(out) };
    for j in list.elements().filter(|e| e.is("jid", &list.ns)) {
        let jid = Jid::parse(j.text_content().trim())
            .map_err(|_| StanzaError::new(Condition::JidMalformed).with_text("prefs jid: not a valid JID"))?;
        let s = jid.as_str().to_owned();
        if !out.contains(&s) {
            out.push(s);
        }
        if out.len() > MAX_PREFS_JIDS {
            return Err(StanzaError::new(Condition::NotAcceptable).with_text("prefs: too many JIDs (at most 1000)"));
        }
    }
    Ok(out)
}

/// §2.1: `<prefs/>` with the default and both lists, present even when empty.
pub(super) fn to_element(ns: &str, prefs: &ArchivePrefs) -> Element {
    let default = match prefs.default {
        ArchiveDefault::Always => "always",
        ArchiveDefault::Never => "never",
        ArchiveDefault::Roster => "roster",
    };
    let list = |name: &str, jids: &[String]| {
        let mut el = Element::new(name, ns);
        for j in jids {
            el.push_child(Element::new("jid", ns).text(j.as_str()));
        }
        el
    };
    Element::new("prefs", ns)
        .attr("default", default)
        .child(list("always", &prefs.always))
        .child(list("never", &prefs.never))
}
