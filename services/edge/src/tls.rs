//! TLS for client streams (RFC 6120 §5, RFC 7590): rustls with the ring provider, TLS 1.2
//! and 1.3 only, ALPN `xmpp-client` for direct TLS (XEP-0368). Loads the configured
//! certificate or generates a self-signed one into the data directory on first start.
//! Also computes the channel-binding data SCRAM-PLUS needs (RFC 5929 §4, RFC 9266).

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no PEM certificate")]
    NoCert { path: PathBuf },
    #[error("{path} holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("certificate generation failed: {0}")]
    Generate(String),
    #[error("the certificate and key do not match or are unsupported: {0}")]
    Config(String),
}

/// The TLS material a node serves with.
pub struct TlsMaterial {
    pub config: Arc<ServerConfig>,
    /// Direct TLS (XEP-0368) uses the same certificate and advertises ALPN.
    pub direct: Arc<ServerConfig>,
    /// tls-server-end-point channel binding data of the end-entity certificate.
    pub end_point: Option<Vec<u8>>,
}

/// Loads `cert`/`key`, or generates (once) a self-signed certificate for `domains` into
/// `data_dir/tls/`.
pub fn load_or_generate(
    cert: Option<&Path>,
    key: Option<&Path>,
    data_dir: &Path,
    domains: &[String],
) -> Result<TlsMaterial, TlsError> {
    let (cert_path, key_path) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf()),
        _ => {
            let dir = data_dir.join("tls");
            let c = dir.join("cert.pem");
            let k = dir.join("key.pem");
            if !c.exists() || !k.exists() {
                generate(&dir, &c, &k, domains)?;
            }
            (c, k)
        }
    };
    let cert_pem = std::fs::read(&cert_path).map_err(|source| TlsError::Read { path: cert_path.clone(), source })?;
    let key_pem = std::fs::read(&key_path).map_err(|source| TlsError::Read { path: key_path.clone(), source })?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&cert_pem).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(TlsError::NoCert { path: cert_path });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::NoKey { path: key_path })?;
    let end_point = rookery_sasl::tls_server_end_point(certs[0].as_ref());
    let config = server_config(certs.clone(), key.clone_key(), false)?;
    let direct = server_config(certs, key, true)?;
    Ok(TlsMaterial { config, direct, end_point })
}

fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    if alpn {
        cfg.alpn_protocols = vec![b"xmpp-client".to_vec()];
    }
    Ok(Arc::new(cfg))
}

fn generate(dir: &Path, cert: &Path, key: &Path, domains: &[String]) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write { path: dir.to_path_buf(), source })?;
    let mut names: Vec<String> = domains.to_vec();
    if !names.iter().any(|d| d == "localhost") {
        names.push("localhost".into());
    }
    let generate_err = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let mut params = rcgen::CertificateParams::new(names).map_err(generate_err)?;
    // What a client shows when it asks the user to accept the certificate: the domain it
    // is for and who made it, rather than rcgen's placeholder subject.
    let mut subject = rcgen::DistinguishedName::new();
    subject.push(rcgen::DnType::CommonName, domains.first().map_or("localhost", String::as_str));
    subject.push(rcgen::DnType::OrganizationName, "Rookery XMPP server (self-signed)");
    params.distinguished_name = subject;
    let signing_key = rcgen::KeyPair::generate().map_err(generate_err)?;
    let generated = params.self_signed(&signing_key).map_err(generate_err)?;
    std::fs::write(cert, generated.pem()).map_err(|source| TlsError::Write { path: cert.to_path_buf(), source })?;
    write_private(key, signing_key.serialize_pem().as_bytes())?;
    tracing::info!(event = "tls_self_signed_generated", cert = %cert.display());
    Ok(())
}

/// Writes a secret file readable by the owner only.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|source| TlsError::Write { path: path.to_path_buf(), source })?;
    f.write_all(data).map_err(|source| TlsError::Write { path: path.to_path_buf(), source })
}
