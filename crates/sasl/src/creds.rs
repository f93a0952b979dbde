//! SCRAM credential derivation and the hash primitives the mechanisms share.
//!
//! Owns: the `Hi()`/`HMAC()`/`H()` functions of RFC 5802 §2.2 for SHA-1, SHA-256 and
//! SHA-512, turning a password into the stored `StoredKey`/`ServerKey` pair (RFC 5802 §3),
//! and checking a plaintext password against that pair (used by PLAIN, RFC 4616).
//! Passwords are prepared with the PRECIS OpaqueString profile (RFC 8265 §4.2), which
//! replaces SASLprep (RFC 4013) as RFC 6120 §6.4.2 recommends.
//!
//! Must not touch: storage, I/O. Callers persist [`StoredCredentials`] however they like;
//! nothing here holds a password-equivalent (SaltedPassword and ClientKey are never kept).

use hmac::{Hmac, KeyInit, Mac};
use precis_core::profile::PrecisFastInvocation;
use precis_profiles::OpaqueString;
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::digest::block_api::EagerHash;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use crate::SaslError;

/// Iteration count for newly created credentials (RFC 7677 §4 asks for at least 4096).
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// Salt length for newly created credentials.
pub(crate) const SALT_LEN: usize = 16;

/// The hash function a SCRAM mechanism is built on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HashAlg {
    /// SHA-1 (SCRAM-SHA-1, RFC 5802).
    Sha1,
    /// SHA-256 (SCRAM-SHA-256, RFC 7677).
    Sha256,
    /// SHA-512 (SCRAM-SHA-512, draft-melnikov-scram-sha-512).
    Sha512,
}

impl HashAlg {
    /// Every supported algorithm, in the order credentials are created.
    pub const ALL: [HashAlg; 3] = [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha512];

    /// Digest (and therefore key and proof) length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha256 => 32,
            HashAlg::Sha512 => 64,
        }
    }

    /// `H(data)`.
    pub(crate) fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            HashAlg::Sha1 => Sha1::digest(data).to_vec(),
            HashAlg::Sha256 => Sha256::digest(data).to_vec(),
            HashAlg::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// `HMAC(key, data_1 || data_2 || ...)`.
    pub(crate) fn hmac(self, key: &[u8], data: &[&[u8]]) -> Vec<u8> {
        match self {
            HashAlg::Sha1 => hmac_with::<Sha1>(key, data),
            HashAlg::Sha256 => hmac_with::<Sha256>(key, data),
            HashAlg::Sha512 => hmac_with::<Sha512>(key, data),
        }
    }

    /// `Hi(password, salt, iterations)`: PBKDF2 with HMAC of this hash.
    fn hi(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0u8; self.output_len()];
        match self {
            HashAlg::Sha1 => pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out),
            HashAlg::Sha256 => pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out),
            HashAlg::Sha512 => pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out),
        }
        out
    }
}

fn hmac_with<D: EagerHash>(key: &[u8], data: &[&[u8]]) -> Vec<u8> {
    // HMAC hashes long keys and pads short ones, so construction cannot fail.
    #[allow(clippy::expect_used)]
    let mut mac = <Hmac<D> as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in data {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// What the server stores per account and hash: never the password or SaltedPassword.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCredentials {
    /// Hash the keys were derived with; must match the mechanism's hash.
    pub alg: HashAlg,
    /// Salt sent to the client in server-first-message.
    pub salt: Vec<u8>,
    /// PBKDF2 iteration count sent to the client.
    pub iterations: u32,
    /// `H(ClientKey)`.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Vec<u8>,
}

impl StoredCredentials {
    /// Whether the record is internally consistent for its algorithm.
    pub(crate) fn is_usable(&self) -> bool {
        let len = self.alg.output_len();
        self.iterations > 0 && !self.salt.is_empty() && self.stored_key.len() == len && self.server_key.len() == len
    }
}

/// Applies the OpaqueString profile; a password it rejects (empty, control characters,
/// unassigned code points) can never authenticate.
fn prepare_password(password: &str) -> Result<String, SaslError> {
    OpaqueString::enforce(password)
        .map(|p| p.into_owned())
        .map_err(|_| SaslError::MalformedRequest("password rejected by the OpaqueString profile"))
}

/// The SaltedPassword → (StoredKey, ServerKey) step of RFC 5802 §3.
fn keys_from_prepared(alg: HashAlg, prepared: &[u8], salt: &[u8], iterations: u32) -> (Vec<u8>, Vec<u8>) {
    let salted = alg.hi(prepared, salt, iterations);
    let client_key = alg.hmac(&salted, &[b"Client Key"]);
    let stored_key = alg.hash(&client_key);
    let server_key = alg.hmac(&salted, &[b"Server Key"]);
    (stored_key, server_key)
}

/// Derives the stored keys for `password` with the given salt and iteration count.
///
/// The password is prepared with the PRECIS OpaqueString profile first. Errors when the
/// profile rejects the password or `iterations` is zero.
pub fn derive_credentials(
    alg: HashAlg,
    password: &str,
    salt: &[u8],
    iterations: u32,
) -> Result<StoredCredentials, SaslError> {
    if iterations == 0 {
        return Err(SaslError::Internal("iteration count must be at least 1"));
    }
    if salt.is_empty() {
        return Err(SaslError::Internal("salt must not be empty"));
    }
    let prepared = prepare_password(password)?;
    let (stored_key, server_key) = keys_from_prepared(alg, prepared.as_bytes(), salt, iterations);
    Ok(StoredCredentials { alg, salt: salt.to_vec(), iterations, stored_key, server_key })
}

/// Creates credentials for every [`HashAlg`], each with its own fresh 16-byte salt.
pub fn new_credentials(password: &str, iterations: u32) -> Result<Vec<StoredCredentials>, SaslError> {
    HashAlg::ALL
        .iter()
        .map(|&alg| {
            let mut salt = [0u8; SALT_LEN];
            getrandom::fill(&mut salt).map_err(|_| SaslError::Internal("random source failed"))?;
            derive_credentials(alg, password, &salt, iterations)
        })
        .collect()
}

/// Checks a plaintext password (from PLAIN) against stored credentials.
///
/// The StoredKey comparison is constant time; the PBKDF2 cost is that of the stored
/// iteration count, as for SCRAM.
pub fn verify_password(creds: &StoredCredentials, password: &str) -> bool {
    if !creds.is_usable() {
        return false;
    }
    let Ok(prepared) = prepare_password(password) else {
        return false;
    };
    let (stored_key, _) = keys_from_prepared(creds.alg, prepared.as_bytes(), &creds.salt, creds.iterations);
    stored_key.ct_eq(&creds.stored_key).into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;

    #[test]
    fn rfc5802_keys() {
        let salt = B64.decode("QSXCR+Q6sek8bf92").unwrap();
        let c = derive_credentials(HashAlg::Sha1, "pencil", &salt, 4096).unwrap();
        assert_eq!(c.stored_key.len(), 20);
        assert_eq!(c.server_key.len(), 20);
        assert!(verify_password(&c, "pencil"));
        assert!(!verify_password(&c, "pencil "));
        assert!(!verify_password(&c, "Pencil"));
        assert!(!verify_password(&c, ""));
    }

    #[test]
    fn new_credentials_cover_all_algs_with_distinct_salts() {
        let all = new_credentials("correct horse", 16).unwrap();
        assert_eq!(all.iter().map(|c| c.alg).collect::<Vec<_>>(), HashAlg::ALL.to_vec());
        for c in &all {
            assert_eq!(c.salt.len(), SALT_LEN);
            assert_eq!(c.iterations, 16);
            assert_eq!(c.stored_key.len(), c.alg.output_len());
            assert!(c.is_usable());
            assert!(verify_password(c, "correct horse"));
            assert!(!verify_password(c, "wrong horse"));
        }
        assert_ne!(all[0].salt, all[1].salt);
        assert_ne!(all[1].salt, all[2].salt);
    }

    #[test]
    fn opaque_string_preparation_applies() {
        // Non-ASCII spaces map to U+0020 and the result is NFC.
        let salt = b"saltsaltsaltsalt";
        let c = derive_credentials(HashAlg::Sha256, "a\u{00A0}b", salt, 8).unwrap();
        assert!(verify_password(&c, "a b"));
        let c = derive_credentials(HashAlg::Sha256, "e\u{0301}", salt, 8).unwrap();
        assert!(verify_password(&c, "\u{00E9}"));
    }

    #[test]
    fn rejected_inputs() {
        let salt = b"salt";
        assert!(derive_credentials(HashAlg::Sha256, "", salt, 8).is_err());
        assert!(derive_credentials(HashAlg::Sha256, "a\u{0007}b", salt, 8).is_err());
        assert!(derive_credentials(HashAlg::Sha256, "pw", salt, 0).is_err());
        assert!(derive_credentials(HashAlg::Sha256, "pw", b"", 8).is_err());
    }

    #[test]
    fn unusable_credentials_never_verify() {
        let mut c = derive_credentials(HashAlg::Sha256, "pw", b"salt", 8).unwrap();
        c.stored_key.pop();
        assert!(!verify_password(&c, "pw"));
        let mut c = derive_credentials(HashAlg::Sha256, "pw", b"salt", 8).unwrap();
        c.iterations = 0;
        assert!(!verify_password(&c, "pw"));
    }

    #[test]
    fn serde_round_trip() {
        let c = derive_credentials(HashAlg::Sha512, "pw", b"salt", 8).unwrap();
        let json = serde_json::to_string(&c).unwrap();
        let back: StoredCredentials = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
    }
}
