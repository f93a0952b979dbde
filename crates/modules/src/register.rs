//! XEP-0077: In-Band Registration, for accounts on this server.
//!
//! - Before authentication (no `from`; §3.1, §3.1.1): a get returns the instructions and
//!   the `<username/>`/`<password/>` fields, or `service-unavailable` when registration is
//!   disabled; a set creates the account: `not-allowed` when disabled, `not-acceptable`
//!   for a missing field, a username that is not a valid localpart or a password under
//!   the configured minimum, `conflict` when the name is taken.
//! - After authentication: a get answers `<registered/>` with the username (§3.1); a set
//!   with username and password changes the password (§3.3: the username must be the
//!   sender's own, an empty password never replaces the current one); a set with
//!   `<remove/>` deletes the account and all its data, then has the server close its
//!   sessions (§3.2).
//!
//! Not implemented: Data Forms extensibility (§4, RECOMMENDED only), redirection (§5) and
//! legacy error codes (§9). The stream feature (§8) is advertised by the edge.

use crate::accounts::{AccountError, create_account, set_password};
use crate::util::{TargetedHandler, register_at, store_failed};
use async_trait::async_trait;
use rookery_core::{Ctx, IqRequest, IqResult, IqType, Module, ModuleInfo, Registrar, Support, Target, XepSupport};
use rookery_jid::{BareJid, FullJid};
use rookery_stanza::{Condition, ErrorType, StanzaError, ns};
use rookery_xml::Element;
use std::sync::Arc;

const MODULE: &str = "register";

const INSTRUCTIONS: &str = "Choose a username and password for use with this service.";

/// In-band registration, password change and account removal.
pub struct Register;

impl Module for Register {
    fn info(&self) -> ModuleInfo {
        ModuleInfo {
            depends: &[],
            name: MODULE,
            specs: &[XepSupport {
                spec: "XEP-0077",
                version: "2.4",
                support: Support::Partial,
                note: "register, change password, cancel (§3); no data forms (§4) or legacy \
                       error codes (§9)",
            }],
        }
    }

    fn register(self: Arc<Self>, r: &mut Registrar) {
        r.host_feature(ns::REGISTER);
        let targets = [Target::Host, Target::Own];
        register_at(r, &self, "query", ns::REGISTER, IqType::Get, &targets);
        register_at(r, &self, "query", ns::REGISTER, IqType::Set, &targets);
    }
}

#[async_trait]
impl TargetedHandler for Register {
    async fn handle_at(&self, ctx: &Ctx, req: IqRequest, _target: Target) -> IqResult {
        match (&req.from, req.kind) {
            (None, IqType::Get) => {
                if !ctx.server.registration_allowed() {
                    return Err(StanzaError::new(Condition::ServiceUnavailable));
                }
                Ok(Some(
                    query()
                        .child(Element::new("instructions", ns::REGISTER).text(INSTRUCTIONS))
                        .child(Element::new("username", ns::REGISTER))
                        .child(Element::new("password", ns::REGISTER)),
                ))
            }
            (None, IqType::Set) => register_new(ctx, &req).await,
            (Some(from), IqType::Get) => {
                let mut q = query().child(Element::new("registered", ns::REGISTER));
                if let Some(local) = from.node() {
                    q.push_child(Element::new("username", ns::REGISTER).text(local));
                }
                Ok(Some(q))
            }
            (Some(from), IqType::Set) => {
                if req.payload.get_child("remove", ns::REGISTER).is_some() {
                    remove(ctx, &req.payload, from).await
                } else {
                    change_password(ctx, &req.payload, from).await
                }
            }
        }
    }
}

fn query() -> Element {
    Element::new("query", ns::REGISTER)
}

fn field(q: &Element, name: &str) -> Option<String> {
    q.get_child(name, ns::REGISTER).map(Element::text_content)
}

fn not_acceptable(text: &'static str) -> StanzaError {
    StanzaError::new(Condition::NotAcceptable).with_type(ErrorType::Modify).with_text(text)
}

fn too_short(ctx: &Ctx, password: &str) -> bool {
    password.chars().count() < ctx.server.min_password_len()
}

fn account_failed(e: &AccountError) -> StanzaError {
    match e {
        AccountError::InvalidPassword => not_acceptable("password not acceptable"),
        AccountError::Store(e) => store_failed(MODULE, e),
        AccountError::Internal(_) => {
            tracing::warn!(event = "credential_derivation_failed", error = %e);
            StanzaError::new(Condition::InternalServerError)
        }
    }
}

/// §3.1: a set before authentication creates an account.
async fn register_new(ctx: &Ctx, req: &IqRequest) -> IqResult {
    if !ctx.server.registration_allowed() {
        return Err(StanzaError::new(Condition::NotAllowed));
    }
    if req.payload.get_child("remove", ns::REGISTER).is_some() {
        // §3.2 table: nothing to cancel on an unauthenticated stream.
        return Err(StanzaError::new(Condition::UnexpectedRequest));
    }
    let (Some(username), Some(password)) = (field(&req.payload, "username"), field(&req.payload, "password")) else {
        return Err(not_acceptable("username and password are required"));
    };
    if username.is_empty() || password.is_empty() {
        return Err(not_acceptable("username and password are required"));
    }
    let Ok(user) = BareJid::from_parts(Some(&username), req.to.domain()) else {
        return Err(not_acceptable("username is not valid"));
    };
    if too_short(ctx, &password) {
        return Err(not_acceptable("password too short"));
    }
    match create_account(&ctx.stores, &user, &password).await {
        Ok(true) => {
            tracing::info!(event = "account_registered", user = %user);
            Ok(None)
        }
        Ok(false) => Err(StanzaError::new(Condition::Conflict)),
        Err(e) => Err(account_failed(&e)),
    }
}

/// §3.3: a set with username and password from an authenticated user.
async fn change_password(ctx: &Ctx, q: &Element, from: &FullJid) -> IqResult {
    let own = from.to_bare();
    let (Some(username), Some(password)) = (field(q, "username"), field(q, "password")) else {
        return Err(StanzaError::new(Condition::BadRequest));
    };
    // §3.3: an empty password keeps the current one; the request is incomplete.
    if password.is_empty() {
        return Err(StanzaError::new(Condition::BadRequest));
    }
    // Compared after localpart enforcement, so `Alice` names the account `alice`.
    let named = BareJid::from_parts(Some(&username), own.domain()).ok();
    if named.as_ref() != Some(&own) {
        return Err(StanzaError::new(Condition::NotAllowed));
    }
    if too_short(ctx, &password) {
        return Err(not_acceptable("password too short"));
    }
    match set_password(&ctx.stores, &own, &password).await {
        Ok(true) => {
            tracing::info!(event = "password_changed", user = %own);
            Ok(None)
        }
        Ok(false) => Err(StanzaError::new(Condition::RegistrationRequired)),
        Err(e) => Err(account_failed(&e)),
    }
}

/// §3.2: `<remove/>` deletes the sender's account and everything stored for it.
async fn remove(ctx: &Ctx, q: &Element, from: &FullJid) -> IqResult {
    if q.elements().count() != 1 {
        return Err(StanzaError::new(Condition::BadRequest));
    }
    let user = from.to_bare();
    let existed = ctx.stores.delete_user(&user).await.map_err(|e| store_failed(MODULE, &e))?;
    if !existed {
        return Err(StanzaError::new(Condition::RegistrationRequired));
    }
    tracing::info!(event = "account_removed", user = %user);
    ctx.server.account_deleted(&user).await;
    Ok(None)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testutil::*;
    use rookery_storage::{LastActivity, RosterItem};
    use std::sync::atomic::Ordering;

    const GET: &str = "<query xmlns='jabber:iq:register'/>";

    fn creds(user: &str, pass: &str) -> String {
        format!("<query xmlns='jabber:iq:register'><username>{user}</username><password>{pass}</password></query>")
    }

    async fn pre_auth(h: &Harness, kind: IqType, payload: &str) -> IqResult {
        h.call(None, "example.com", kind, Target::Host, payload).await
    }

    async fn verifies(h: &Harness, user: &str, pass: &str) -> bool {
        let acct = h.ctx.stores.accounts.get(&bare(user)).await.unwrap().unwrap();
        rookery_sasl::verify_password(&acct.credentials[0], pass)
    }

    #[tokio::test]
    async fn fields_then_registration() {
        let h = Harness::new(|r| r.add(Arc::new(Register)));
        let q = pre_auth(&h, IqType::Get, GET).await.unwrap().unwrap();
        assert!(q.get_child("instructions", ns::REGISTER).is_some());
        assert!(q.get_child("username", ns::REGISTER).is_some());
        assert!(q.get_child("password", ns::REGISTER).is_some());
        assert!(q.get_child("registered", ns::REGISTER).is_none());

        assert_eq!(pre_auth(&h, IqType::Set, &creds("Bill", "Calliope")).await.unwrap(), None);
        // The localpart is stored enforced (case-folded).
        assert!(verifies(&h, "bill@example.com", "Calliope").await);
        assert!(h.features.host.contains(&ns::REGISTER));
    }

    #[tokio::test]
    async fn taken_name_is_conflict() {
        let h = Harness::new(|r| r.add(Arc::new(Register)));
        h.account("bill@example.com").await;
        let e = pre_auth(&h, IqType::Set, &creds("bill", "m1cro$oft")).await.unwrap_err();
        assert_eq!(e.condition, Condition::Conflict);
        assert_eq!(e.kind, ErrorType::Cancel);
    }

    #[tokio::test]
    async fn bad_input_is_not_acceptable() {
        let h = Harness::new(|r| r.add(Arc::new(Register)));
        for payload in [
            creds("bad@name", "Calliope"),
            creds("", "Calliope"),
            creds("bill", ""),
            creds("bill", "abc"), // below the fake server's minimum of 4
            "<query xmlns='jabber:iq:register'><username>bill</username></query>".to_owned(),
        ] {
            let e = pre_auth(&h, IqType::Set, &payload).await.unwrap_err();
            assert_eq!(e.condition, Condition::NotAcceptable, "{payload}");
            assert_eq!(e.kind, ErrorType::Modify);
        }
        assert!(h.ctx.stores.accounts.list("example.com").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn registration_disabled() {
        let h = Harness::new(|r| r.add(Arc::new(Register)));
        h.server.registration.store(false, Ordering::SeqCst);
        let e = pre_auth(&h, IqType::Get, GET).await.unwrap_err();
        assert_eq!(e.condition, Condition::ServiceUnavailable);
        let e = pre_auth(&h, IqType::Set, &creds("bill", "Calliope")).await.unwrap_err();
        assert_eq!(e.condition, Condition::NotAllowed);
        assert_eq!(e.kind, ErrorType::Cancel);
        assert!(h.ctx.stores.accounts.get(&bare("bill@example.com")).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn registered_user_sees_registered() {
        let h = Harness::new(|r| r.add(Arc::new(Register)));
        h.account("bill@example.com").await;
        let q = h.get("bill@example.com/globe", "example.com", GET).await.unwrap().unwrap();
        assert!(q.get_child("registered", ns::REGISTER).is_some());
        assert_eq!(q.get_child("username", ns::REGISTER).unwrap().text_content(), "bill");
        let q = h.get_own("bill@example.com/globe", GET).await.unwrap().unwrap();
        assert!(q.get_child("registered", ns::REGISTER).is_some());
    }

    #[tokio::test]
    async fn password_change() {
        let h = Harness::new(|r| r.add(Arc::new(Register)));
        pre_auth(&h, IqType::Set, &creds("bill", "Calliope")).await.unwrap();
        // Someone else's account.
        let e = h.set("bill@example.com/globe", "example.com", &creds("romeo", "newpass")).await.unwrap_err();
        assert_eq!(e.condition, Condition::NotAllowed);
        // Empty password keeps the current one.
        let e = h.set("bill@example.com/globe", "example.com", &creds("bill", "")).await.unwrap_err();
        assert_eq!(e.condition, Condition::BadRequest);
        let e = h.set("bill@example.com/globe", "example.com", &creds("bill", "ab")).await.unwrap_err();
        assert_eq!(e.condition, Condition::NotAcceptable);
        assert!(verifies(&h, "bill@example.com", "Calliope").await);

        assert_eq!(h.set("bill@example.com/globe", "example.com", &creds("Bill", "newpass")).await.unwrap(), None);
        assert!(verifies(&h, "bill@example.com", "newpass").await);
        assert!(!verifies(&h, "bill@example.com", "Calliope").await);
    }

    #[tokio::test]
    async fn removal_purges_everything() {
        let h = Harness::new(|r| r.add(Arc::new(Register)));
        let bill = bare("bill@example.com");
        h.account("bill@example.com").await;
        h.account("romeo@example.com").await;
        h.subscription("bill@example.com", "romeo@example.com", Subscription::Both).await;
        let s = &h.ctx.stores;
        s.vcard.set(&bill, bytes::Bytes::from_static(b"<vCard xmlns='vcard-temp'/>")).await.unwrap();
        s.offline.push(&bill, bytes::Bytes::from_static(b"<message/>")).await.unwrap();
        s.blocking.block(&bill, &["iago@example.com".to_owned()]).await.unwrap();
        s.last.set(&bill, LastActivity { at: 1, status: String::new() }).await.unwrap();
        h.server.connect("bill@example.com/globe", true, true);

        // <remove/> must be the only child.
        let e = h
            .set_own(
                "bill@example.com/globe",
                "<query xmlns='jabber:iq:register'><remove/><username>bill</username></query>",
            )
            .await
            .unwrap_err();
        assert_eq!(e.condition, Condition::BadRequest);
        assert!(s.accounts.get(&bill).await.unwrap().is_some());

        let ok = h.set_own("bill@example.com/globe", "<query xmlns='jabber:iq:register'><remove/></query>").await;
        assert_eq!(ok.unwrap(), None);
        assert!(s.accounts.get(&bill).await.unwrap().is_none());
        assert_eq!(s.roster.get(&bill).await.unwrap().items, Vec::<RosterItem>::new());
        assert!(s.vcard.get(&bill).await.unwrap().is_none());
        assert_eq!(s.offline.count(&bill).await.unwrap(), 0);
        assert!(s.blocking.list(&bill).await.unwrap().is_empty());
        assert!(s.last.get(&bill).await.unwrap().is_none());
        assert!(s.accounts.get(&bare("romeo@example.com")).await.unwrap().is_some());
        assert_eq!(*h.server.deleted.lock().unwrap(), vec![bill.clone()]);

        // Unauthenticated removal makes no sense.
        let e = pre_auth(&h, IqType::Set, "<query xmlns='jabber:iq:register'><remove/></query>").await.unwrap_err();
        assert_eq!(e.condition, Condition::UnexpectedRequest);
    }
}
