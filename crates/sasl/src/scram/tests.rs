#![allow(clippy::unwrap_used)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::digest::block_api::EagerHash;
use sha2::{Digest, Sha256, Sha512};

use super::*;
use crate::derive_credentials;

const FAKE_SECRET: &[u8] = b"per-deployment secret";

// ---- an independent client implementation, straight from RFC 5802 §3 ----

fn c_hmac<D: EagerHash>(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<D> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn c_proof<D: EagerHash>(password: &str, salt: &[u8], iterations: u32, auth_message: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut salted = vec![0u8; <D as Digest>::output_size()];
    pbkdf2::pbkdf2_hmac::<D>(password.as_bytes(), salt, iterations, &mut salted);
    let client_key = c_hmac::<D>(&salted, b"Client Key");
    let stored_key = D::digest(&client_key).to_vec();
    let client_signature = c_hmac::<D>(&stored_key, auth_message);
    let proof = client_key.iter().zip(&client_signature).map(|(a, b)| a ^ b).collect();
    let server_key = c_hmac::<D>(&salted, b"Server Key");
    (proof, c_hmac::<D>(&server_key, auth_message))
}

struct TestClient {
    alg: HashAlg,
    password: String,
    gs2_header: String,
    cbind_data: Vec<u8>,
    bare: String,
}

impl TestClient {
    fn new(alg: HashAlg, user: &str, password: &str, gs2_header: &str, cbind: &[u8]) -> Self {
        Self {
            alg,
            password: password.to_owned(),
            gs2_header: gs2_header.to_owned(),
            cbind_data: cbind.to_vec(),
            bare: format!("n={user},r=clientnonce0123456789"),
        }
    }

    fn first(&self) -> Vec<u8> {
        format!("{}{}", self.gs2_header, self.bare).into_bytes()
    }

    /// Returns (client-final-message, expected server-final-message).
    fn finish(&self, server_first: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let sf = std::str::from_utf8(server_first).unwrap();
        let mut nonce = "";
        let mut salt = Vec::new();
        let mut iterations = 0;
        for attr in sf.split(',') {
            let (k, v) = attr.split_once('=').unwrap();
            match k {
                "r" => nonce = v,
                "s" => salt = B64.decode(v).unwrap(),
                "i" => iterations = v.parse().unwrap(),
                _ => panic!("unexpected attribute {k}"),
            }
        }
        let mut c = self.gs2_header.as_bytes().to_vec();
        c.extend_from_slice(&self.cbind_data);
        let without_proof = format!("c={},r={nonce}", B64.encode(c));
        let auth = format!("{},{sf},{without_proof}", self.bare);
        let (proof, sig) = match self.alg {
            HashAlg::Sha1 => c_proof::<Sha1>(&self.password, &salt, iterations, auth.as_bytes()),
            HashAlg::Sha256 => c_proof::<Sha256>(&self.password, &salt, iterations, auth.as_bytes()),
            HashAlg::Sha512 => c_proof::<Sha512>(&self.password, &salt, iterations, auth.as_bytes()),
        };
        (format!("{without_proof},p={}", B64.encode(proof)).into_bytes(), format!("v={}", B64.encode(sig)).into_bytes())
    }
}

fn creds(alg: HashAlg, password: &str) -> StoredCredentials {
    derive_credentials(alg, password, b"0123456789abcdef", 64).unwrap()
}

fn bindings() -> ChannelBindings {
    ChannelBindings { tls_exporter: Some(vec![0xE1; 32]), tls_server_end_point: Some(vec![0x5E; 32]) }
}

/// Runs a full exchange; returns the result of client_final and the expected server-final.
fn run(
    mech: Mechanism,
    cb: ChannelBindings,
    plus_advertised: bool,
    client: &TestClient,
    stored: Option<StoredCredentials>,
) -> (Result<Vec<u8>, SaslError>, Vec<u8>) {
    let mut server = ScramServer::new(mech, cb, plus_advertised).unwrap();
    server.client_first(&client.first()).unwrap();
    let sf = server.server_first(stored, FAKE_SECRET);
    let (cf, expected) = client.finish(&sf);
    (server.client_final(&cf), expected)
}

// ---- published test vectors ----

#[test]
fn rfc5802_sha1_example() {
    let salt = B64.decode("QSXCR+Q6sek8bf92").unwrap();
    let stored = derive_credentials(HashAlg::Sha1, "pencil", &salt, 4096).unwrap();
    let mut s = ScramServer::new(Mechanism::ScramSha1, ChannelBindings::default(), false).unwrap();
    s.set_server_nonce_for_test("3rfcNHYJY1ZVvWVs7j");
    let first = s.client_first(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL").unwrap();
    assert_eq!(first, ClientFirst { username: "user".into(), authzid: None });
    let sf = s.server_first(Some(stored), FAKE_SECRET);
    assert_eq!(sf, b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096");
    let v =
        s.client_final(b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=").unwrap();
    assert_eq!(v, b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=");
    assert!(s.is_done());
}

#[test]
fn rfc7677_sha256_example() {
    let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
    let stored = derive_credentials(HashAlg::Sha256, "pencil", &salt, 4096).unwrap();
    let mut s = ScramServer::new(Mechanism::ScramSha256, ChannelBindings::default(), false).unwrap();
    s.set_server_nonce_for_test("%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
    s.client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
    let sf = s.server_first(Some(stored), FAKE_SECRET);
    assert_eq!(sf, b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096");
    let v = s
        .client_final(
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
              p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        )
        .unwrap();
    assert_eq!(v, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
}

#[test]
fn rfc7677_wrong_proof_fails() {
    let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
    let stored = derive_credentials(HashAlg::Sha256, "pencil", &salt, 4096).unwrap();
    let mut s = ScramServer::new(Mechanism::ScramSha256, ChannelBindings::default(), false).unwrap();
    s.set_server_nonce_for_test("%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
    s.client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
    s.server_first(Some(stored), FAKE_SECRET);
    // Last proof byte flipped.
    let err = s
        .client_final(
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
              p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVU=",
        )
        .unwrap_err();
    assert_eq!(err, SaslError::NotAuthorized);
    assert!(!s.is_done());
}

// ---- round trips ----

#[test]
fn sha512_round_trip() {
    let client = TestClient::new(HashAlg::Sha512, "juliet", "r0m30myr0m30", "n,,", &[]);
    let (res, expected) = run(
        Mechanism::ScramSha512,
        ChannelBindings::default(),
        false,
        &client,
        Some(creds(HashAlg::Sha512, "r0m30myr0m30")),
    );
    assert_eq!(res.unwrap(), expected);
}

#[test]
fn all_hashes_round_trip() {
    for (mech, alg) in [
        (Mechanism::ScramSha1, HashAlg::Sha1),
        (Mechanism::ScramSha256, HashAlg::Sha256),
        (Mechanism::ScramSha512, HashAlg::Sha512),
    ] {
        let client = TestClient::new(alg, "romeo", "pw", "n,,", &[]);
        let (res, expected) = run(mech, ChannelBindings::default(), false, &client, Some(creds(alg, "pw")));
        assert_eq!(res.unwrap(), expected, "{mech}");
    }
}

#[test]
fn server_nonce_is_random_base64() {
    let mut a = ScramServer::new(Mechanism::ScramSha256, ChannelBindings::default(), false).unwrap();
    let mut b = ScramServer::new(Mechanism::ScramSha256, ChannelBindings::default(), false).unwrap();
    a.client_first(b"n,,n=u,r=abc").unwrap();
    b.client_first(b"n,,n=u,r=abc").unwrap();
    let sa = String::from_utf8(a.server_first(None, FAKE_SECRET)).unwrap();
    let sb = String::from_utf8(b.server_first(None, FAKE_SECRET)).unwrap();
    let na = sa.split(',').next().unwrap().strip_prefix("r=abc").unwrap();
    let nb = sb.split(',').next().unwrap().strip_prefix("r=abc").unwrap();
    assert_ne!(na, nb);
    assert_eq!(B64.decode(na).unwrap().len(), SERVER_NONCE_BYTES);
}

#[test]
fn wrong_password() {
    let client = TestClient::new(HashAlg::Sha256, "romeo", "wrong", "n,,", &[]);
    let (res, _) =
        run(Mechanism::ScramSha256, ChannelBindings::default(), false, &client, Some(creds(HashAlg::Sha256, "right")));
    assert_eq!(res.unwrap_err(), SaslError::NotAuthorized);
}

#[test]
fn opaque_string_applies_to_client_password() {
    // The client is expected to prepare the same way; NFC "é" on both sides works.
    let client = TestClient::new(HashAlg::Sha256, "u", "\u{00E9}", "n,,", &[]);
    let (res, expected) = run(
        Mechanism::ScramSha256,
        ChannelBindings::default(),
        false,
        &client,
        Some(creds(HashAlg::Sha256, "e\u{0301}")),
    );
    assert_eq!(res.unwrap(), expected);
}

#[test]
fn credentials_for_other_hash_fail() {
    let client = TestClient::new(HashAlg::Sha256, "romeo", "pw", "n,,", &[]);
    let (res, _) =
        run(Mechanism::ScramSha256, ChannelBindings::default(), false, &client, Some(creds(HashAlg::Sha1, "pw")));
    assert_eq!(res.unwrap_err(), SaslError::NotAuthorized);
}

// ---- unknown users ----

fn server_first_for(user: &str, mech: Mechanism, secret: &[u8]) -> String {
    let mut s = ScramServer::new(mech, ChannelBindings::default(), false).unwrap();
    s.set_server_nonce_for_test("SERVERNONCE");
    s.client_first(format!("n,,n={user},r=cn").as_bytes()).unwrap();
    String::from_utf8(s.server_first(None, secret)).unwrap()
}

#[test]
fn unknown_user_is_indistinguishable() {
    let a1 = server_first_for("ghost", Mechanism::ScramSha256, FAKE_SECRET);
    let a2 = server_first_for("ghost", Mechanism::ScramSha256, FAKE_SECRET);
    let b = server_first_for("phantom", Mechanism::ScramSha256, FAKE_SECRET);
    let other_secret = server_first_for("ghost", Mechanism::ScramSha256, b"other");
    let sha1 = server_first_for("ghost", Mechanism::ScramSha1, FAKE_SECRET);
    assert_eq!(a1, a2, "deterministic per username");
    assert_ne!(a1, b);
    assert_ne!(a1, other_secret);
    assert_ne!(a1, sha1);

    // Same shape as for a real account created with new_credentials().
    let real = crate::new_credentials("pw", DEFAULT_ITERATIONS).unwrap();
    let mut s = ScramServer::new(Mechanism::ScramSha256, ChannelBindings::default(), false).unwrap();
    s.set_server_nonce_for_test("SERVERNONCE");
    s.client_first(b"n,,n=real,r=cn").unwrap();
    let real_sf = String::from_utf8(s.server_first(Some(real[1].clone()), FAKE_SECRET)).unwrap();
    let shape = |sf: &str| -> (String, usize, String) {
        let parts: Vec<&str> = sf.split(',').collect();
        assert_eq!(parts.len(), 3);
        let salt = B64.decode(parts[1].strip_prefix("s=").unwrap()).unwrap();
        (parts[0].to_owned(), salt.len(), parts[2].to_owned())
    };
    assert_eq!(shape(&a1), shape(&real_sf));
    assert_eq!(shape(&a1).1, SALT_LEN);
}

#[test]
fn unknown_user_fails_at_final_step() {
    let client = TestClient::new(HashAlg::Sha256, "ghost", "anything", "n,,", &[]);
    let (res, _) = run(Mechanism::ScramSha256, ChannelBindings::default(), false, &client, None);
    assert_eq!(res.unwrap_err(), SaslError::NotAuthorized);
}

#[test]
fn fake_credentials_never_verify_even_with_their_keys() {
    // Even a client that somehow knew the fake keys cannot log in.
    let fake = fake_credentials(HashAlg::Sha256, "ghost", FAKE_SECRET);
    let mut s = ScramServer::new(Mechanism::ScramSha256, ChannelBindings::default(), false).unwrap();
    s.client_first(b"n,,n=ghost,r=cn").unwrap();
    let sf = String::from_utf8(s.server_first(None, FAKE_SECRET)).unwrap();
    let nonce = sf.split(',').next().unwrap().strip_prefix("r=").unwrap();
    let without_proof = format!("c=biws,r={nonce}");
    let auth = format!("n=ghost,r=cn,{sf},{without_proof}");
    // No ClientKey exists for fake keys, so plant a StoredKey whose ClientKey is known and
    // send a proof that would be valid for it: the fake flag alone must refuse it.
    let client_key = [7u8; 32];
    let mut forged = fake;
    forged.stored_key = Sha256::digest(client_key).to_vec();
    let sig = c_hmac::<Sha256>(&forged.stored_key, auth.as_bytes());
    let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
    // Swap the fake record's StoredKey for the forged one: still refused because fake.
    if let State::SentServerFirst { creds, .. } = &mut s.state {
        *creds = forged;
    }
    let msg = format!("{without_proof},p={}", B64.encode(proof));
    assert_eq!(s.client_final(msg.as_bytes()).unwrap_err(), SaslError::NotAuthorized);
}

// ---- channel binding ----

#[test]
fn plus_tls_exporter() {
    let cb = bindings();
    let data = cb.tls_exporter.clone().unwrap();
    let client = TestClient::new(HashAlg::Sha256, "u", "pw", "p=tls-exporter,,", &data);
    let (res, expected) = run(Mechanism::ScramSha256Plus, cb, true, &client, Some(creds(HashAlg::Sha256, "pw")));
    assert_eq!(res.unwrap(), expected);
}

#[test]
fn plus_tls_server_end_point() {
    let cb = bindings();
    let data = cb.tls_server_end_point.clone().unwrap();
    for (mech, alg) in [(Mechanism::ScramSha1Plus, HashAlg::Sha1), (Mechanism::ScramSha512Plus, HashAlg::Sha512)] {
        let client = TestClient::new(alg, "u", "pw", "p=tls-server-end-point,,", &data);
        let (res, expected) = run(mech, cb.clone(), true, &client, Some(creds(alg, "pw")));
        assert_eq!(res.unwrap(), expected);
    }
}

#[test]
fn plus_wrong_binding_data() {
    let cb = bindings();
    for (name, wrong) in [
        ("tls-exporter", vec![0xE1; 31]),
        ("tls-exporter", vec![0xE2; 32]),
        ("tls-server-end-point", vec![0xE1; 32]),
        ("tls-server-end-point", vec![]),
    ] {
        let client = TestClient::new(HashAlg::Sha256, "u", "pw", &format!("p={name},,"), &wrong);
        let (res, _) = run(Mechanism::ScramSha256Plus, cb.clone(), true, &client, Some(creds(HashAlg::Sha256, "pw")));
        assert_eq!(res.unwrap_err(), SaslError::ChannelBindingMismatch, "{name}");
    }
}

#[test]
fn c_must_repeat_gs2_header() {
    // Right binding data, but the gs2 header in c= differs from the one sent first.
    let cb = bindings();
    let mut s = ScramServer::new(Mechanism::ScramSha256Plus, cb.clone(), true).unwrap();
    s.client_first(b"p=tls-exporter,a=admin,n=u,r=cn").unwrap();
    let sf = String::from_utf8(s.server_first(Some(creds(HashAlg::Sha256, "pw")), FAKE_SECRET)).unwrap();
    let nonce = sf.split(',').next().unwrap().strip_prefix("r=").unwrap();
    let mut c = b"p=tls-exporter,,".to_vec();
    c.extend_from_slice(cb.tls_exporter.as_deref().unwrap());
    let msg = format!("c={},r={nonce},p={}", B64.encode(c), B64.encode([0u8; 32]));
    assert_eq!(s.client_final(msg.as_bytes()).unwrap_err(), SaslError::ChannelBindingMismatch);
}

#[test]
fn non_plus_c_must_be_gs2_header() {
    let client = TestClient::new(HashAlg::Sha256, "u", "pw", "n,,", b"extra");
    let (res, _) =
        run(Mechanism::ScramSha256, ChannelBindings::default(), false, &client, Some(creds(HashAlg::Sha256, "pw")));
    assert_eq!(res.unwrap_err(), SaslError::ChannelBindingMismatch);
}

#[test]
fn binding_type_without_data_or_unknown() {
    let cb = ChannelBindings { tls_exporter: None, tls_server_end_point: Some(vec![1; 32]) };
    for msg in [&b"p=tls-exporter,,n=u,r=cn"[..], b"p=tls-unique,,n=u,r=cn", b"p=x-made-up.1,,n=u,r=cn"] {
        let mut s = ScramServer::new(Mechanism::ScramSha256Plus, cb.clone(), true).unwrap();
        assert_eq!(s.client_first(msg).unwrap_err(), SaslError::ChannelBindingUnsupported);
    }
}

#[test]
fn plus_mechanism_requires_p() {
    for msg in [&b"n,,n=u,r=cn"[..], b"y,,n=u,r=cn"] {
        let mut s = ScramServer::new(Mechanism::ScramSha256Plus, bindings(), true).unwrap();
        assert!(matches!(s.client_first(msg), Err(SaslError::MalformedRequest(_))));
    }
}

#[test]
fn p_with_non_plus_mechanism() {
    let mut s = ScramServer::new(Mechanism::ScramSha256, bindings(), true).unwrap();
    assert!(matches!(s.client_first(b"p=tls-exporter,,n=u,r=cn"), Err(SaslError::MalformedRequest(_))));
}

#[test]
fn downgrade_detected() {
    let mut s = ScramServer::new(Mechanism::ScramSha256, bindings(), true).unwrap();
    assert_eq!(s.client_first(b"y,,n=u,r=cn").unwrap_err(), SaslError::NotAuthorized);
}

#[test]
fn y_without_plus_advertised_is_fine() {
    let client = TestClient::new(HashAlg::Sha256, "u", "pw", "y,,", &[]);
    let (res, expected) =
        run(Mechanism::ScramSha256, ChannelBindings::default(), false, &client, Some(creds(HashAlg::Sha256, "pw")));
    assert_eq!(res.unwrap(), expected);
}

#[test]
fn new_rejects_plain_and_unbindable_plus() {
    assert_eq!(ScramServer::new(Mechanism::Plain, bindings(), true).unwrap_err(), SaslError::InvalidMechanism);
    assert_eq!(
        ScramServer::new(Mechanism::ScramSha256Plus, ChannelBindings::default(), false).unwrap_err(),
        SaslError::InvalidMechanism
    );
}

// ---- identities ----

#[test]
fn authzid_and_escapes() {
    let mut s = ScramServer::new(Mechanism::ScramSha256, ChannelBindings::default(), false).unwrap();
    let first = s.client_first(b"n,a=ad=2Cmin=3D@example.com,n=us=3Der=2Cname,r=cn").unwrap();
    assert_eq!(first.username, "us=er,name");
    assert_eq!(first.authzid.as_deref(), Some("ad,min=@example.com"));
}

#[test]
fn authzid_round_trip() {
    let client = TestClient::new(HashAlg::Sha256, "J=3Dr", "pw", "n,a=juliet@example.com,", &[]);
    let (res, expected) =
        run(Mechanism::ScramSha256, ChannelBindings::default(), false, &client, Some(creds(HashAlg::Sha256, "pw")));
    assert_eq!(res.unwrap(), expected);
}

#[test]
fn username_is_not_case_mapped() {
    let mut s = ScramServer::new(Mechanism::ScramSha256, ChannelBindings::default(), false).unwrap();
    let first = s.client_first("n,,n=JüLiEt,r=cn".as_bytes()).unwrap();
    assert_eq!(first.username, "JüLiEt");
}

#[test]
fn extensions_are_tolerated() {
    let mut s = ScramServer::new(Mechanism::ScramSha256, ChannelBindings::default(), false).unwrap();
    s.client_first(b"n,,n=u,r=cn,x=ext,y=").unwrap();
}

// ---- malformed messages ----

fn first_err(msg: &[u8]) -> SaslError {
    let mut s = ScramServer::new(Mechanism::ScramSha256, ChannelBindings::default(), false).unwrap();
    s.client_first(msg).unwrap_err()
}

#[test]
fn malformed_client_first() {
    let cases: &[&[u8]] = &[
        b"",
        b"n",
        b"n,",
        b"n,,",
        b"x,,n=u,r=cn",
        b"N,,n=u,r=cn",
        b"p,,n=u,r=cn",
        b"p=,,n=u,r=cn",
        b"p=tls exporter,,n=u,r=cn",
        b"n,b=admin,n=u,r=cn",
        b"n,a=,n=u,r=cn",
        b"n,a=ad=2min,n=u,r=cn",
        b"n,,m=ext,n=u,r=cn",
        b"n,,n=u",
        b"n,,r=cn",
        b"n,,n=,r=cn",
        b"n,,n=u=,r=cn",
        b"n,,n=u=41,r=cn",
        b"n,,n=u\0,r=cn",
        b"n,,u=u,r=cn",
        b"n,,n=u,r=",
        b"n,,n=u,r=c n",
        b"n,,n=u,r=c\x7fn",
        b"n,,n=u,r=c\xc3\xa9",
        b"n,,n=u,nonce=cn",
        b"n,,n=u,r=cn,",
        b"n,,n=u,r=cn,1=x",
        b"n,,n=u,r=cn,xx",
        b"n,,\xff=u,r=cn",
    ];
    for &msg in cases {
        assert!(matches!(first_err(msg), SaslError::MalformedRequest(_)), "{:?}", String::from_utf8_lossy(msg));
    }
}

fn final_err(make: impl FnOnce(&str) -> String) -> SaslError {
    let mut s = ScramServer::new(Mechanism::ScramSha256, ChannelBindings::default(), false).unwrap();
    s.client_first(b"n,,n=u,r=cn").unwrap();
    let sf = String::from_utf8(s.server_first(Some(creds(HashAlg::Sha256, "pw")), FAKE_SECRET)).unwrap();
    let nonce = sf.split(',').next().unwrap().strip_prefix("r=").unwrap();
    let msg = make(nonce);
    s.client_final(msg.as_bytes()).unwrap_err()
}

#[test]
fn malformed_client_final() {
    let proof = B64.encode([0u8; 32]);
    let malformed: &[fn(&str) -> String] = &[
        |_| String::new(),
        |n| format!("c=biws,r={n}"),
        |n| format!("r={n},p={}", B64.encode([0u8; 32])),
        |_| format!("c=biws,p={}", B64.encode([0u8; 32])),
        |n| format!("r={n},c=biws,p={}", B64.encode([0u8; 32])),
        |n| format!("c=bi*s,r={n},p={}", B64.encode([0u8; 32])),
        |n| format!("c=biw,r={n},p={}", B64.encode([0u8; 32])),
        |n| format!("c=biws,r={n},p=not base64!"),
        |n| format!("c=biws,r={n},p="),
        |n| format!("c=biws,r={n},p={}", B64.encode([0u8; 20])),
        |n| format!("c=biws,r={n},7=x,p={}", B64.encode([0u8; 32])),
    ];
    for (i, make) in malformed.iter().enumerate() {
        assert!(matches!(final_err(make), SaslError::MalformedRequest(_)), "case {i}");
    }
    // Well-formed but wrong nonce.
    let p = proof.clone();
    assert_eq!(final_err(move |n| format!("c=biws,r={n}x,p={p}")), SaslError::NotAuthorized);
    let p = proof.clone();
    assert_eq!(final_err(move |_| format!("c=biws,r=cn,p={p}")), SaslError::NotAuthorized);
    // Well-formed, right nonce, wrong proof; extensions before the proof are allowed.
    assert_eq!(final_err(move |n| format!("c=biws,r={n},x=ext,p={proof}")), SaslError::NotAuthorized);
}

#[test]
fn out_of_order_and_no_retry() {
    let mut s = ScramServer::new(Mechanism::ScramSha256, ChannelBindings::default(), false).unwrap();
    assert!(s.server_first(None, FAKE_SECRET).is_empty());
    assert!(matches!(s.client_final(b"c=biws,r=x,p=AA=="), Err(SaslError::Internal(_))));

    let mut s = ScramServer::new(Mechanism::ScramSha256, ChannelBindings::default(), false).unwrap();
    assert!(s.client_first(b"bogus").is_err());
    // A failed step ends the exchange.
    assert!(matches!(s.client_first(b"n,,n=u,r=cn"), Err(SaslError::Internal(_))));

    let mut s = ScramServer::new(Mechanism::ScramSha256, ChannelBindings::default(), false).unwrap();
    s.client_first(b"n,,n=u,r=cn").unwrap();
    assert!(matches!(s.client_first(b"n,,n=u,r=cn"), Err(SaslError::Internal(_))));
}

#[test]
fn debug_does_not_leak_keys() {
    let mut s = ScramServer::new(Mechanism::ScramSha256, ChannelBindings::default(), false).unwrap();
    s.client_first(b"n,,n=u,r=cn").unwrap();
    s.server_first(Some(creds(HashAlg::Sha256, "pw")), FAKE_SECRET);
    let dbg = format!("{s:?}");
    assert!(dbg.contains("sent-server-first"));
    assert!(!dbg.contains("stored_key"));
}
