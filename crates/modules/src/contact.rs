//! XEP-0157: Contact Addresses for XMPP Services (§3). The server's disco#info carries a
//! XEP-0128 form with FORM_TYPE `http://jabber.org/network/serverinfo` and one
//! `list-multi` field per role that has addresses (`abuse-addresses`, `admin-addresses`,
//! `feedback-addresses`, `sales-addresses`, `security-addresses`, `status-addresses`,
//! `support-addresses`, §7.1), configured per served domain in `[contact]`.
//!
//! Owns: building the form from the configuration. Must not touch: the disco answer
//! itself (the disco module adds registered forms), other modules' features.

use crate::forms::{DataForm, Field, FieldType, FormKind};
use rookery_config::ContactAddresses as Addresses;
use rookery_core::{DomainScope, Module, ModuleInfo, Registrar, Support, XepSupport};
use rookery_stanza::ns;
use std::sync::Arc;

/// The configured addresses: a default set and per-domain sets.
#[derive(Debug, Clone, Default)]
pub struct ContactAddresses {
    default: Addresses,
    by_domain: Vec<(String, Addresses)>,
}

impl ContactAddresses {
    pub fn from_config(c: &rookery_config::Contact) -> Self {
        ContactAddresses {
            default: c.default_set(),
            by_domain: c.domains.iter().map(|(d, a)| (d.clone(), a.clone())).collect(),
        }
    }
}

/// The XEP-0128 form for one set; `None` when it lists nothing.
fn form(set: &Addresses) -> Option<rookery_xml::Element> {
    if set.is_empty() {
        return None;
    }
    let mut f = DataForm::with_form_type(FormKind::Result, ns::SERVERINFO);
    for (role, list) in set.roles() {
        if list.is_empty() {
            continue;
        }
        let mut field = Field::new(&format!("{role}-addresses"), FieldType::ListMulti);
        for uri in list {
            field = field.value(uri.as_str());
        }
        f = f.field(field);
    }
    Some(f.to_element())
}

impl Module for ContactAddresses {
    fn info(&self) -> ModuleInfo {
        ModuleInfo {
            name: "contact",
            depends: &["disco"],
            specs: &[
                XepSupport {
                    spec: "XEP-0157",
                    version: "1.1.1",
                    support: Support::Full,
                    note: "all seven address roles, per served domain, in the server's disco#info",
                },
                XepSupport {
                    spec: "XEP-0128",
                    version: "1.0.1",
                    support: Support::Full,
                    note: "extended information forms in the server's disco#info (used by XEP-0157)",
                },
            ],
        }
    }

    fn register(self: Arc<Self>, r: &mut Registrar) {
        // A domain with its own set gets only that one; the others share the default.
        for (domain, set) in &self.by_domain {
            if let Some(f) = form(set) {
                r.host_info_form(DomainScope::Only(domain.clone()), f);
            }
        }
        if let Some(f) = form(&self.default) {
            let own: Vec<String> = self.by_domain.iter().map(|(d, _)| d.clone()).collect();
            r.host_info_form(DomainScope::AllBut(own), f);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::Disco;
    use crate::testutil::*;

    fn config(toml: &str) -> rookery_config::Contact {
        rookery_config::Config::from_toml_str(toml).unwrap().contact
    }

    async fn info_of(h: &Harness, domain: &str) -> rookery_xml::Element {
        h.get("alice@example.com/a", domain, "<query xmlns='http://jabber.org/protocol/disco#info'/>")
            .await
            .unwrap()
            .unwrap()
    }

    fn fields(q: &rookery_xml::Element) -> Vec<(String, Vec<String>)> {
        let forms: Vec<_> = q.elements().filter(|e| e.is("x", ns::DATA_FORMS)).collect();
        assert_eq!(forms.len(), 1, "one serverinfo form");
        let form = DataForm::parse(forms[0]).unwrap();
        assert_eq!(form.form_type(), Some(ns::SERVERINFO));
        assert_eq!(forms[0].get_attr("type"), Some("result"));
        form.fields.iter().filter(|f| f.var != "FORM_TYPE").map(|f| (f.var.clone(), f.values.clone())).collect()
    }

    #[tokio::test]
    async fn addresses_appear_in_the_servers_disco_info_per_domain() {
        let c = config(
            "domains = [\"example.com\", \"students.example.com\"]\n\
             [contact]\nabuse = [\"mailto:abuse@example.com\", \"xmpp:abuse@example.com\"]\n\
             status = [\"https://status.example.com\"]\n\
             [contact.domains.\"students.example.com\"]\nsupport = [\"https://help.example.com\"]\n",
        );
        let mut server = FakeServer::default();
        server.domains.push("students.example.com".into());
        let h = Harness::with_server(server, |r| {
            r.add(Arc::new(Disco));
            r.add(Arc::new(ContactAddresses::from_config(&c)));
        });
        assert_eq!(
            fields(&info_of(&h, "example.com").await),
            [
                (
                    "abuse-addresses".to_owned(),
                    vec!["mailto:abuse@example.com".to_owned(), "xmpp:abuse@example.com".to_owned()]
                ),
                ("status-addresses".to_owned(), vec!["https://status.example.com".to_owned()]),
            ]
        );
        assert_eq!(
            fields(&info_of(&h, "students.example.com").await),
            [("support-addresses".to_owned(), vec!["https://help.example.com".to_owned()])],
            "a domain with its own set gets only that set"
        );
        // The form follows the features (XEP-0128 §2).
        let q = info_of(&h, "example.com").await;
        let names: Vec<_> = q.elements().map(|e| e.name.clone()).collect();
        assert_eq!(names.last().map(String::as_str), Some("x"));
    }

    #[tokio::test]
    async fn nothing_configured_means_no_form() {
        let h = Harness::new(|r| {
            r.add(Arc::new(Disco));
            r.add(Arc::new(ContactAddresses::from_config(&rookery_config::Contact::default())));
        });
        let q = info_of(&h, "example.com").await;
        assert!(q.elements().all(|e| !e.is("x", ns::DATA_FORMS)));
    }

    #[test]
    fn it_needs_disco() {
        let mut r = Registrar::new();
        r.add(Arc::new(ContactAddresses::default()));
        assert!(r.finish().is_err());
    }
}
