//! Account creation and password changes, shared by in-band registration (XEP-0077) and
//! the admin interfaces.
//!
//! Passwords become SCRAM credentials for every supported hash (DESIGN §5: never stored).
//! PBKDF2 is deliberately slow, so derivation runs on the blocking pool and never stalls
//! the async workers that route stanzas.
//!
//! Must not touch: policy (who may register, minimum length): callers decide that.

use rookery_jid::BareJid;
use rookery_sasl::{DEFAULT_ITERATIONS, SaslError, StoredCredentials};
use rookery_storage::{Account, StoreError, Stores};

/// Why an account operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The password is refused by the PRECIS OpaqueString profile (empty, control
    /// characters, unassigned code points) and could never be used to log in.
    #[error("password not acceptable")]
    InvalidPassword,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Key derivation failed (random source, a panicked worker).
    #[error("credential derivation failed: {0}")]
    Internal(String),
}

/// Creates `user` with `password`. Returns false (and changes nothing) when the account
/// already exists.
pub async fn create_account(stores: &Stores, user: &BareJid, password: &str) -> Result<bool, AccountError> {
    // Cheap check first so a taken name costs no key derivation; `create` below still
    // decides atomically.
    if stores.accounts.get(user).await?.is_some() {
        return Ok(false);
    }
    let credentials = derive(password).await?;
    let account = Account { credentials, created_at: rookery_storage::now_secs() };
    Ok(stores.accounts.create(user, account).await?)
}

/// Replaces `user`'s credentials with ones for `password`. Returns false when the account
/// does not exist.
pub async fn set_password(stores: &Stores, user: &BareJid, password: &str) -> Result<bool, AccountError> {
    if stores.accounts.get(user).await?.is_none() {
        return Ok(false);
    }
    let credentials = derive(password).await?;
    Ok(stores.accounts.set_credentials(user, credentials).await?)
}

/// Derives credentials for every hash on the blocking pool.
async fn derive(password: &str) -> Result<Vec<StoredCredentials>, AccountError> {
    let password = password.to_owned();
    let result = tokio::task::spawn_blocking(move || rookery_sasl::new_credentials(&password, DEFAULT_ITERATIONS))
        .await
        .map_err(|e| AccountError::Internal(e.to_string()))?;
    result.map_err(|e| match e {
        SaslError::MalformedRequest(_) => AccountError::InvalidPassword,
        other => AccountError::Internal(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testutil::bare;
    use rookery_storage::memory::memory_stores;

    fn verify(account: &Account, password: &str) -> bool {
        !account.credentials.is_empty()
            && account.credentials.iter().all(|c| rookery_sasl::verify_password(c, password))
    }

    #[tokio::test]
    async fn create_then_change_password() {
        let stores = memory_stores();
        let alice = bare("alice@example.com");
        assert!(create_account(&stores, &alice, "secret1").await.unwrap());
        assert!(!create_account(&stores, &alice, "other").await.unwrap());
        let acct = stores.accounts.get(&alice).await.unwrap().unwrap();
        assert!(verify(&acct, "secret1"));
        assert_eq!(acct.credentials.len(), rookery_sasl::HashAlg::ALL.len());

        assert!(set_password(&stores, &alice, "secret2").await.unwrap());
        let acct = stores.accounts.get(&alice).await.unwrap().unwrap();
        assert!(verify(&acct, "secret2"));
        assert!(!verify(&acct, "secret1"));

        assert!(!set_password(&stores, &bare("ghost@example.com"), "x").await.unwrap());
    }

    #[tokio::test]
    async fn unusable_password_is_refused() {
        let stores = memory_stores();
        let e = create_account(&stores, &bare("alice@example.com"), "").await.unwrap_err();
        assert!(matches!(e, AccountError::InvalidPassword));
        assert!(stores.accounts.get(&bare("alice@example.com")).await.unwrap().is_none());
    }
}
