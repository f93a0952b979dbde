//! Helpers the modules share: per-target handler registration, the sender and target
//! accounts of a request, the presence-authorisation check several specs defer to
//! (RFC 6121 §3: a contact may see a user's presence when the user's roster item for it
//! has a subscription of `from` or `both`), and the one place a store failure becomes
//! `internal-server-error` on the wire (DESIGN §6.3: internal text never goes out).

use async_trait::async_trait;
use rookery_core::{Ctx, IqHandler, IqRequest, IqResult, IqType, Registrar, Target};
use rookery_jid::BareJid;
use rookery_stanza::{Condition, StanzaError};
use rookery_storage::StoreError;
use std::sync::Arc;

/// A handler that is told which [`Target`] it was dispatched for. `IqRequest` does not
/// carry the target, so each registration gets its own adapter that remembers it.
#[async_trait]
pub(crate) trait TargetedHandler: Send + Sync + 'static {
    async fn handle_at(&self, ctx: &Ctx, req: IqRequest, target: Target) -> IqResult;
}

struct At<H> {
    inner: Arc<H>,
    target: Target,
}

#[async_trait]
impl<H: TargetedHandler> IqHandler for At<H> {
    async fn handle(&self, ctx: &Ctx, req: IqRequest) -> IqResult {
        self.inner.handle_at(ctx, req, self.target).await
    }
}

/// Registers `h` for `<name xmlns='ns'/>` of type `kind` once per target.
pub(crate) fn register_at<H: TargetedHandler>(
    r: &mut Registrar,
    h: &Arc<H>,
    name: &'static str,
    ns: &'static str,
    kind: IqType,
    targets: &[Target],
) {
    for &target in targets {
        let adapter = At { inner: h.clone(), target };
        r.iq(name, ns, kind, &[target], Arc::new(adapter));
    }
}

/// The authenticated sender's account. Handlers that serve only bound sessions call this;
/// an unauthenticated request reaching them is refused rather than trusted.
pub(crate) fn sender(req: &IqRequest) -> Result<BareJid, StanzaError> {
    req.from.as_ref().map(|f| f.to_bare()).ok_or_else(|| StanzaError::new(Condition::NotAuthorized))
}

/// Logs a store failure and returns the condition the client sees.
pub(crate) fn store_failed(module: &'static str, e: &StoreError) -> StanzaError {
    tracing::warn!(event = "module_store_failed", module, error = %e);
    StanzaError::new(Condition::InternalServerError)
}

/// Whether `user` exists. Store failures become `internal-server-error`.
pub(crate) async fn account_exists(ctx: &Ctx, module: &'static str, user: &BareJid) -> Result<bool, StanzaError> {
    ctx.stores.accounts.get(user).await.map(|a| a.is_some()).map_err(|e| store_failed(module, &e))
}

/// Whether `requester` may see `user`'s presence: it is the user, or the user's roster
/// item for the requester's bare JID has a subscription of `from` or `both`.
pub(crate) async fn may_see_presence(
    ctx: &Ctx,
    module: &'static str,
    user: &BareJid,
    requester: &BareJid,
) -> Result<bool, StanzaError> {
    rookery_storage::sees_presence(ctx.stores.roster.as_ref(), user, requester.as_str())
        .await
        .map_err(|e| store_failed(module, &e))
}
