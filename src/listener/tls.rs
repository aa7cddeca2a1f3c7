//! TLS material: PEM loading, SNI selection, session resumption.

use crate::config::TlsConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, StoresServerSessions};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key found (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("{path}: malformed PEM: {detail}")]
    Pem { path: PathBuf, detail: String },
    #[error("{path}: unsupported or invalid private key: {detail}")]
    BadKey { path: PathBuf, detail: String },
    #[error("{key} does not match the certificate in {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("{cert}: invalid certificate: {detail}")]
    BadCert { cert: PathBuf, detail: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Load a PEM chain and its key, and check that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_pem = read(cert)?;
    let chain: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut BufReader::new(&cert_pem[..]))
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Pem {
                path: cert.to_path_buf(),
                detail: e.to_string(),
            })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let key_pem = read(key)?;
    let key_der: PrivateKeyDer<'static> =
        rustls_pemfile::private_key(&mut BufReader::new(&key_pem[..]))
            .map_err(|e| TlsError::Pem {
                path: key.to_path_buf(),
                detail: e.to_string(),
            })?
            .ok_or_else(|| TlsError::NoKey {
                path: key.to_path_buf(),
            })?;
    certified_key_from_der(chain, key_der, cert, key)
}

pub(crate) fn certified_key_from_der(
    chain: Vec<CertificateDer<'static>>,
    key_der: PrivateKeyDer<'static>,
    cert: &Path,
    key: &Path,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::BadKey {
            path: key.to_path_buf(),
            detail: e.to_string(),
        })?;
    let ck = CertifiedKey::new(chain, signing);
    match ck.keys_match() {
        Ok(()) => Ok(Arc::new(ck)),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::Mismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            })
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(Arc::new(ck)),
        Err(e) => Err(TlsError::BadCert {
            cert: cert.to_path_buf(),
            detail: e.to_string(),
        }),
    }
}

/// SNI: exact names, then `*.suffix` wildcards, then the default certificate.
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    pub fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        if let Some(name) = sni {
            let name = name.to_ascii_lowercase();
            if let Some(k) = self.exact.get(&name) {
                return k.clone();
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(k) = self.wildcard.get(parent) {
                    return k.clone();
                }
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// Session tickets are encrypted with keys that must outlive a reload, or every reload
/// would turn every client's next handshake into a full one (a self-made storm).
fn ticketer() -> Result<Arc<dyn ProducesTickets>, TlsError> {
    static T: OnceLock<Arc<dyn ProducesTickets>> = OnceLock::new();
    if let Some(t) = T.get() {
        return Ok(t.clone());
    }
    let t = rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Setup(e.to_string()))?;
    Ok(T.get_or_init(|| t).clone())
}

/// Per-listener session caches, kept across reloads for the same reason as the ticketer.
fn session_cache(listener: &str, size: usize) -> Arc<dyn StoresServerSessions> {
    static CACHES: OnceLock<dashmap::DashMap<(String, usize), Arc<dyn StoresServerSessions>>> =
        OnceLock::new();
    CACHES
        .get_or_init(Default::default)
        .entry((listener.to_string(), size))
        .or_insert_with(|| rustls::server::ServerSessionMemoryCache::new(size))
        .clone()
}

/// Build the rustls server config of one listener: TLS 1.3 and 1.2, ALPN http/1.1, SNI,
/// tickets and a session cache.
pub fn server_config(
    listener: &str,
    cfg: &TlsConfig,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    let mut default = None;
    for (i, c) in cfg.certs.iter().enumerate() {
        let ck = load_certified_key(c.cert.get_ref(), c.key.get_ref())?;
        for name in &c.server_names {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix("*.") {
                Some(parent) => wildcard.insert(parent.to_string(), ck.clone()),
                None => exact.insert(name, ck.clone()),
            };
        }
        if c.default || (i == 0 && !cfg.certs.iter().any(|c| c.default)) {
            default = Some(ck);
        }
    }
    let default = default.ok_or_else(|| TlsError::Setup("no certificate configured".into()))?;
    let resolver = Arc::new(SniResolver {
        exact,
        wildcard,
        default,
    });
    let mut sc = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    sc.session_storage = session_cache(listener, cfg.session_cache.max(1));
    if cfg.session_tickets {
        sc.ticketer = ticketer()?;
    }
    // TLS 1.3 resumes only through NewSessionTicket: with a ticketer the ticket is the
    // encrypted session (stateless), without one it is a key into `session_storage`
    // (stateful). Sending none would turn 1.3 resumption off altogether. Two is what
    // browsers use.
    sc.send_tls13_tickets = 2;
    Ok(Arc::new(sc))
}

/// A self-signed certificate for the demo and tests (PEM cert, PEM key).
pub fn self_signed(names: &[&str]) -> Result<(String, String), TlsError> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let ck =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Setup(e.to_string()))?;
    Ok((ck.cert.pem(), ck.key_pair.serialize_pem()))
}
