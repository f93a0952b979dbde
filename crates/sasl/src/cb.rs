//! Channel binding data for the SCRAM -PLUS mechanisms.
//!
//! Owns: the per-connection binding data handed in by the TLS layer ([`ChannelBindings`]),
//! the type names advertised with XEP-0440, and the computation of `tls-server-end-point`
//! data from the server certificate (RFC 5929 §4.1), which needs only a few bytes of DER.
//!
//! Must not touch: TLS itself. `tls-exporter` data (RFC 9266: the 32-byte exporter with label
//! "EXPORTER-Channel-Binding" and no context) comes from the TLS library; this module only
//! carries it.

use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

/// Name of the RFC 9266 channel binding type.
pub const TLS_EXPORTER: &str = "tls-exporter";
/// Name of the RFC 5929 §4 channel binding type.
pub const TLS_SERVER_END_POINT: &str = "tls-server-end-point";

/// Channel binding data available on one connection; `None` when the TLS layer cannot
/// provide a type (no TLS, TLS 1.2 without extended master secret for tls-exporter, an
/// Ed25519 certificate for tls-server-end-point, ...).
#[derive(Debug, Clone, Default)]
pub struct ChannelBindings {
    /// RFC 9266 `tls-exporter` data.
    pub tls_exporter: Option<Vec<u8>>,
    /// RFC 5929 `tls-server-end-point` data, see [`tls_server_end_point`].
    pub tls_server_end_point: Option<Vec<u8>>,
}

impl ChannelBindings {
    /// Names of the types with data, strongest first, for the XEP-0440
    /// `<sasl-channel-binding/>` stream feature.
    pub fn types(&self) -> Vec<&'static str> {
        let mut out = Vec::with_capacity(2);
        if self.tls_exporter.is_some() {
            out.push(TLS_EXPORTER);
        }
        if self.tls_server_end_point.is_some() {
            out.push(TLS_SERVER_END_POINT);
        }
        out
    }

    /// Whether any type has data, i.e. whether -PLUS mechanisms can be offered.
    pub fn any(&self) -> bool {
        self.tls_exporter.is_some() || self.tls_server_end_point.is_some()
    }

    /// Data for a channel binding type name. `Err(())` for a name this server does not
    /// know, `Ok(None)` for a known type without data on this connection.
    pub(crate) fn lookup(&self, name: &str) -> Result<Option<&[u8]>, ()> {
        match name {
            TLS_EXPORTER => Ok(self.tls_exporter.as_deref()),
            TLS_SERVER_END_POINT => Ok(self.tls_server_end_point.as_deref()),
            _ => Err(()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CertHash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl CertHash {
    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            CertHash::Sha224 => Sha224::digest(data).to_vec(),
            CertHash::Sha256 => Sha256::digest(data).to_vec(),
            CertHash::Sha384 => Sha384::digest(data).to_vec(),
            CertHash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

// Content octets of the OIDs involved (DER tag and length stripped).
const OID_MD5_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x04];
const OID_SHA1_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x05];
const OID_RSA_PSS: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0A];
const OID_SHA256_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0B];
const OID_SHA384_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0C];
const OID_SHA512_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0D];
const OID_SHA224_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0E];
const OID_ECDSA_SHA1: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x01];
const OID_ECDSA_SHA224: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x01];
const OID_ECDSA_SHA256: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02];
const OID_ECDSA_SHA384: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x03];
const OID_ECDSA_SHA512: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x04];
const OID_DSA_SHA1: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x38, 0x04, 0x03];
const OID_DSA_SHA224: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x01];
const OID_DSA_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x02];
// Digest algorithm OIDs, as found inside RSASSA-PSS-params.
const OID_SHA1: &[u8] = &[0x2B, 0x0E, 0x03, 0x02, 0x1A];
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OID_SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
const OID_SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];
const OID_SHA224: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x04];

const TAG_SEQUENCE: u8 = 0x30;
const TAG_OID: u8 = 0x06;
const TAG_CTX0: u8 = 0xA0;

/// Reads one DER TLV from the front of `input`: (tag, content, rest).
fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    // Multi-byte tags never occur in the structures read here.
    if tag & 0x1F == 0x1F {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for _ in 0..n {
            let (&b, r) = rest.split_first()?;
            len = (len << 8) | usize::from(b);
            rest = r;
        }
        len
    };
    if rest.len() < len {
        return None;
    }
    let (content, rest) = rest.split_at(len);
    Some((tag, content, rest))
}

/// Hash named in RSASSA-PSS-params (RFC 4055 §3.1); absent means the SHA-1 default.
fn pss_hash(params: &[u8]) -> Option<&[u8]> {
    let Some((TAG_SEQUENCE, fields, _)) = read_tlv(params) else {
        return Some(OID_SHA1);
    };
    match read_tlv(fields) {
        Some((TAG_CTX0, hash_alg, _)) => {
            let (tag, alg_id, _) = read_tlv(hash_alg)?;
            if tag != TAG_SEQUENCE {
                return None;
            }
            let (tag, oid, _) = read_tlv(alg_id)?;
            (tag == TAG_OID).then_some(oid)
        }
        _ => Some(OID_SHA1),
    }
}

/// The hash RFC 5929 §4.1 prescribes for a signature algorithm, or `None` when the
/// algorithm uses no single hash (EdDSA) or is unknown.
fn cert_hash(sig_oid: &[u8], sig_params: &[u8]) -> Option<CertHash> {
    // MD5 and SHA-1 are replaced by SHA-256 (RFC 5929 §4.1).
    Some(match sig_oid {
        OID_MD5_RSA | OID_SHA1_RSA | OID_ECDSA_SHA1 | OID_DSA_SHA1 => CertHash::Sha256,
        OID_SHA224_RSA | OID_ECDSA_SHA224 | OID_DSA_SHA224 => CertHash::Sha224,
        OID_SHA256_RSA | OID_ECDSA_SHA256 | OID_DSA_SHA256 => CertHash::Sha256,
        OID_SHA384_RSA | OID_ECDSA_SHA384 => CertHash::Sha384,
        OID_SHA512_RSA | OID_ECDSA_SHA512 => CertHash::Sha512,
        OID_RSA_PSS => match pss_hash(sig_params)? {
            OID_SHA224 => CertHash::Sha224,
            OID_SHA384 => CertHash::Sha384,
            OID_SHA512 => CertHash::Sha512,
            OID_SHA1 | OID_SHA256 => CertHash::Sha256,
            // An unrecognised digest in PSS params: SHA-256 is what every client
            // implementation falls back to.
            _ => CertHash::Sha256,
        },
        _ => return None,
    })
}

/// Computes tls-server-end-point channel binding data (RFC 5929 §4.1) from the server
/// certificate DER.
///
/// The hash is the one of the certificate's signature algorithm, with MD5 and SHA-1
/// upgraded to SHA-256. Supports RSA (PKCS#1 v1.5 and PSS), ECDSA and DSA signatures.
/// Returns `None` for EdDSA (Ed25519/Ed448), for which no binding is defined, for unknown
/// algorithms, and for input that is not a certificate.
pub fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
    let (tag, cert, _) = read_tlv(cert_der)?;
    if tag != TAG_SEQUENCE {
        return None;
    }
    let (tag, _tbs, rest) = read_tlv(cert)?;
    if tag != TAG_SEQUENCE {
        return None;
    }
    // AlgorithmIdentifier ::= SEQUENCE { algorithm OBJECT IDENTIFIER, parameters ANY OPTIONAL }
    let (tag, alg_id, _) = read_tlv(rest)?;
    if tag != TAG_SEQUENCE {
        return None;
    }
    let (tag, oid, params) = read_tlv(alg_id)?;
    if tag != TAG_OID {
        return None;
    }
    Some(cert_hash(oid, params)?.digest(cert_der))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;

    /// Self-signed P-256 certificate, CN=rookery.test, signed with ecdsa-with-SHA256.
    const EC_P256_SHA256_CERT: &str = "MIIBgzCCASmgAwIBAgIUNzz619xnf9EZ5VlnbvT8EmxzxWowCgYIKoZIzj0EAwIwFzEVMBMGA1UEAwwMcm9va2VyeS50ZXN0MB4XDTI2MTEyNDA2MzYzOFoXDTM2MTEyMTA2MzYzOFowFzEVMBMGA1UEAwwMcm9va2VyeS50ZXN0MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE/xkcqmEpJKelg6r/iDKoJXvMmzkxdH482qavpX1MVk/4dJjikzuXxDuKbud0Edbf3diyG404+q2OqVK/13EQ/aNTMFEwHQYDVR0OBBYEFHMXQOPXjcJSLz/P6hnd6y6jDCaMMB8GA1UdIwQYMBaAFHMXQOPXjcJSLz/P6hnd6y6jDCaMMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIhANtsBqRfBBfAwJZw3+TD/nMEwVmHzdBeCCrLm6Kp8r5oAiBtK9uzYe4OP+8fJ8CH9p8c2YaJuDMUJb2IYgWXde2Etw==";
    /// `sha256sum` of the DER above.
    const EC_P256_SHA256_CERT_DIGEST: &str = "7943f515f3a86cde1e95bf0a5dd7f5ac0d5473c6efa1f65f70ec24c0c9b6e3ea";
    /// Same shape, signed with ecdsa-with-SHA384.
    const EC_P256_SHA384_CERT: &str = "MIIBgzCCASmgAwIBAgIUDzl8uKd6+0hkbJIjqXHDT521nO8wCgYIKoZIzj0EAwMwFzEVMBMGA1UEAwwMcm9va2VyeS50ZXN0MB4XDTI2MTEyNDA2MzYzOFoXDTM2MTEyMTA2MzYzOFowFzEVMBMGA1UEAwwMcm9va2VyeS50ZXN0MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE/7JubWJDMsneJZeQSHx49aFc5QbxSi2hBXRYOTlC0uwD9O4dDmulxjW7/kFJ2gsPoYm8YaQ4Jx7jgHCjW+VE9aNTMFEwHQYDVR0OBBYEFMgAdAkZ8pcSZsxxEgydiefcnEtjMB8GA1UdIwQYMBaAFMgAdAkZ8pcSZsxxEgydiefcnEtjMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwMDSAAwRQIhAP6KC32Os0Of4POgkY6RPqfUNUhiWUpmuasFC9mkoIBlAiBLFrnDHbTAF3ADcxpaZ43KaqlNLocuA/nnbUfXLwc2qQ==";
    /// `sha384sum` of the DER above.
    const EC_P256_SHA384_CERT_DIGEST: &str =
        "6230ce5ed00200182ca03cb52169397703adad503b121396dd4adf39fbe37449b2c236461eacee4a5dc8846310009582";
    /// Self-signed Ed25519 certificate.
    const ED25519_CERT: &str = "MIIBQjCB9aADAgECAhQbTwkTKVE98ExZA36WWg3DEk8BjTAFBgMrZXAwFzEVMBMGA1UEAwwMcm9va2VyeS50ZXN0MB4XDTI2MTEyNDA2MzYzOFoXDTM2MTEyMTA2MzYzOFowFzEVMBMGA1UEAwwMcm9va2VyeS50ZXN0MCowBQYDK2VwAyEAE/uy8+R/45uMgD4pd/W1YuU2U2oF7p4PUvfl1meoNgKjUzBRMB0GA1UdDgQWBBRrt+CM41D6ZYMbKiW44xOV7r64zzAfBgNVHSMEGDAWgBRrt+CM41D6ZYMbKiW44xOV7r64zzAPBgNVHRMBAf8EBTADAQH/MAUGAytlcANBAPGFh+zSDAXrIutIlblwt65ojSqz6X0RTlVYaH5N2zfIiXn+C6g6cla8Pef0OekX+L4TLcMEBs9l7PeX40cBWg0=";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(u8::try_from(len).unwrap());
        } else if len < 0x100 {
            out.extend([0x81, u8::try_from(len).unwrap()]);
        } else {
            out.extend([0x82, u8::try_from(len >> 8).unwrap(), (len & 0xFF) as u8]);
        }
        out.extend_from_slice(content);
        out
    }

    /// A certificate-shaped DER with the given signatureAlgorithm content.
    fn fake_cert(alg_id_content: &[u8]) -> Vec<u8> {
        let tbs = tlv(TAG_SEQUENCE, &[0x02, 0x01, 0x01]);
        let alg = tlv(TAG_SEQUENCE, alg_id_content);
        let sig = tlv(0x03, &[0x00, 0xAA, 0xBB]);
        tlv(TAG_SEQUENCE, &[tbs, alg, sig].concat())
    }

    fn with_oid(oid: &[u8], params: &[u8]) -> Vec<u8> {
        [tlv(TAG_OID, oid), params.to_vec()].concat()
    }

    #[test]
    fn ecdsa_sha256_certificate() {
        let der = B64.decode(EC_P256_SHA256_CERT).unwrap();
        let cb = tls_server_end_point(&der).unwrap();
        assert_eq!(hex(&cb), EC_P256_SHA256_CERT_DIGEST);
        assert_eq!(cb, Sha256::digest(&der).to_vec());
    }

    #[test]
    fn ecdsa_sha384_certificate() {
        let der = B64.decode(EC_P256_SHA384_CERT).unwrap();
        let cb = tls_server_end_point(&der).unwrap();
        assert_eq!(hex(&cb), EC_P256_SHA384_CERT_DIGEST);
    }

    #[test]
    fn ed25519_has_no_binding() {
        let der = B64.decode(ED25519_CERT).unwrap();
        assert_eq!(tls_server_end_point(&der), None);
    }

    #[test]
    fn algorithm_table() {
        let null = [0x05, 0x00];
        let cases: &[(&[u8], usize)] = &[
            (OID_MD5_RSA, 32),
            (OID_SHA1_RSA, 32),
            (OID_SHA224_RSA, 28),
            (OID_SHA256_RSA, 32),
            (OID_SHA384_RSA, 48),
            (OID_SHA512_RSA, 64),
            (OID_ECDSA_SHA1, 32),
            (OID_ECDSA_SHA512, 64),
            (OID_DSA_SHA1, 32),
            (OID_DSA_SHA256, 32),
        ];
        for &(oid, len) in cases {
            let der = fake_cert(&with_oid(oid, &null));
            let cb = tls_server_end_point(&der).unwrap();
            assert_eq!(cb.len(), len, "oid {}", hex(oid));
            if len == 32 {
                assert_eq!(cb, Sha256::digest(&der).to_vec());
            }
        }
    }

    #[test]
    fn rsa_pss_uses_params_hash() {
        // No params / empty params: SHA-1 default, upgraded to SHA-256.
        let der = fake_cert(&with_oid(OID_RSA_PSS, &[]));
        assert_eq!(tls_server_end_point(&der).unwrap().len(), 32);
        let der = fake_cert(&with_oid(OID_RSA_PSS, &tlv(TAG_SEQUENCE, &[])));
        assert_eq!(tls_server_end_point(&der).unwrap().len(), 32);
        for (hash_oid, len) in [(OID_SHA256, 32), (OID_SHA384, 48), (OID_SHA512, 64)] {
            let hash_alg = tlv(TAG_SEQUENCE, &tlv(TAG_OID, hash_oid));
            let params = tlv(TAG_SEQUENCE, &tlv(TAG_CTX0, &hash_alg));
            let der = fake_cert(&with_oid(OID_RSA_PSS, &params));
            let cb = tls_server_end_point(&der).unwrap();
            assert_eq!(cb.len(), len);
        }
    }

    #[test]
    fn unknown_or_garbage() {
        // Ed448
        assert_eq!(tls_server_end_point(&fake_cert(&with_oid(&[0x2B, 0x65, 0x71], &[]))), None);
        assert_eq!(tls_server_end_point(&[]), None);
        assert_eq!(tls_server_end_point(&[0x30]), None);
        assert_eq!(tls_server_end_point(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]), None);
        assert_eq!(tls_server_end_point(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(tls_server_end_point(b"not a certificate"), None);
        // Truncated real certificate.
        let der = B64.decode(EC_P256_SHA256_CERT).unwrap();
        assert_eq!(tls_server_end_point(&der[..100]), None);
        // Long-form length on a large certificate still parses.
        let big_tbs = tlv(TAG_SEQUENCE, &[0u8; 300]);
        let alg = tlv(TAG_SEQUENCE, &with_oid(OID_SHA256_RSA, &[0x05, 0x00]));
        let der = tlv(TAG_SEQUENCE, &[big_tbs, alg].concat());
        assert_eq!(tls_server_end_point(&der).unwrap(), Sha256::digest(&der).to_vec());
    }

    #[test]
    fn advertised_types() {
        let mut cb = ChannelBindings::default();
        assert!(cb.types().is_empty());
        assert!(!cb.any());
        cb.tls_server_end_point = Some(vec![1]);
        assert_eq!(cb.types(), vec![TLS_SERVER_END_POINT]);
        cb.tls_exporter = Some(vec![2]);
        assert_eq!(cb.types(), vec![TLS_EXPORTER, TLS_SERVER_END_POINT]);
        assert!(cb.any());
        assert_eq!(cb.lookup("tls-exporter"), Ok(Some(&[2u8][..])));
        assert_eq!(cb.lookup("tls-unique"), Err(()));
    }
}
