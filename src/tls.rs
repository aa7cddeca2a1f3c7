//! TLS material: PEM loading, SNI selection, session resumption.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, StoresServerSessions};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Why a listener's TLS material could not be loaded or assembled; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("{path}: no PEM certificate found (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate {
        /// The certificate file.
        path: PathBuf,
    },
    /// The key file holds no PEM private key of a supported encoding.
    #[error("{path}: no PEM private key found (PKCS#8, PKCS#1 or SEC1)")]
    NoKey {
        /// The key file.
        path: PathBuf,
    },
    /// The file is not well-formed PEM.
    #[error("{path}: malformed PEM: {detail}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        detail: String,
    },
    /// The private key is of an unsupported type or invalid.
    #[error("{path}: unsupported or invalid private key: {detail}")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// The reason given by rustls.
        detail: String,
    },
    /// The private key is not the one of the certificate.
    #[error("{key} does not match the certificate in {cert}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The certificate could not be used with its key.
    #[error("{cert}: invalid certificate: {detail}")]
    BadCert {
        /// The certificate file.
        cert: PathBuf,
        /// The reason given by rustls.
        detail: String,
    },
    /// Assembling the server configuration failed (no certificate, ticketer or protocol setup).
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
    let chain = parse_chain(&read(cert)?, cert)?;
    let key_der = parse_key(&read(key)?, key)?;
    certified_key_from_der(chain, key_der, cert, key)
}

/// Every `CERTIFICATE` section of `pem`, in order; other sections are skipped.
fn parse_chain(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, &e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

/// The first private key of `pem`: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
fn parse_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_path_buf(),
        },
        e => pem_error(path, &e),
    })
}

/// A PEM syntax error naming the file, with the markers shown as text (the
/// pki-types error prints them as byte arrays).
fn pem_error(path: &Path, e: &pem::Error) -> TlsError {
    let detail = match e {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "section not closed: \"-----END {}-----\" missing",
            String::from_utf8_lossy(end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => {
            format!("illegal section start: {:?}", String::from_utf8_lossy(line))
        }
        other => other.to_string(),
    };
    TlsError::Pem {
        path: path.to_path_buf(),
        detail,
    }
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
    /// The certificate for this SNI name: exact match, then a `*.parent` wildcard (one label),
    /// else the default.
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

/// One certificate of a listener, loaded, with the names it serves.
pub struct SniCert<'a> {
    /// The chain and key ([`load_certified_key`]).
    pub key: Arc<CertifiedKey>,
    /// SNI names it answers (`*.example.com` for a wildcard).
    pub server_names: &'a [String],
    /// Served when no name matches (else the first certificate is).
    pub default: bool,
}

/// A listener's TLS settings besides its certificates.
#[derive(Debug, Clone, Copy)]
pub struct Sessions {
    /// Entries of the stateful session cache (TLS 1.2 IDs, 1.3 without tickets).
    pub cache: usize,
    /// Issue stateless session tickets.
    pub tickets: bool,
}

/// Build the rustls server config of one listener: TLS 1.3 and 1.2, ALPN http/1.1, SNI,
/// tickets and a session cache.
pub fn server_config(
    listener: &str,
    certs: &[SniCert<'_>],
    sessions: Sessions,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    let mut default = None;
    for (i, c) in certs.iter().enumerate() {
        let ck = c.key.clone();
        for name in c.server_names {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix("*.") {
                Some(parent) => wildcard.insert(parent.to_string(), ck.clone()),
                None => exact.insert(name, ck.clone()),
            };
        }
        if c.default || (i == 0 && !certs.iter().any(|c| c.default)) {
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
    sc.session_storage = session_cache(listener, sessions.cache.max(1));
    if sessions.tickets {
        sc.ticketer = ticketer()?;
    }
    // TLS 1.3 resumes only through NewSessionTicket: with a ticketer the ticket is the
    // encrypted session (stateless), without one it is a key into `session_storage`
    // (stateful). Sending none would turn 1.3 resumption off altogether. Two is what
    // browsers use.
    sc.send_tls13_tickets = 2;
    Ok(Arc::new(sc))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate (PEM cert, PEM key).
    fn self_signed(names: &[&str]) -> Result<(String, String), TlsError> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let ck = rcgen::generate_simple_self_signed(names)
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        Ok((ck.cert.pem(), ck.key_pair.serialize_pem()))
    }

    struct Files {
        _dir: tempfile::TempDir,
        cert: PathBuf,
        key: PathBuf,
    }

    fn files(cert: &str, key: &str) -> Files {
        let dir = tempfile::tempdir().expect("tempdir");
        let (c, k) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&c, cert).expect("write cert");
        std::fs::write(&k, key).expect("write key");
        Files {
            _dir: dir,
            cert: c,
            key: k,
        }
    }

    fn load(f: &Files) -> Result<Arc<CertifiedKey>, TlsError> {
        load_certified_key(&f.cert, &f.key)
    }

    fn pair() -> (String, String) {
        self_signed(&["localhost"]).expect("self-signed pair")
    }

    #[test]
    fn a_matching_pair_loads() {
        let (cert, key) = pair();
        let f = files(&cert, &key);
        assert_eq!(load(&f).expect("loads").cert.len(), 1);
    }

    #[test]
    fn other_sections_around_the_pem_items_are_skipped() {
        let (cert, key) = pair();
        let f = files(
            &format!("leading text\n{key}{cert}trailing text\n"),
            &format!("{cert}{key}"),
        );
        assert_eq!(load(&f).expect("loads").cert.len(), 1);
    }

    #[test]
    fn an_unclosed_section_is_an_error_naming_the_file_and_marker() {
        let (cert, key) = pair();
        let cut = &cert[..cert.find("-----END").expect("END marker")];
        let f = files(cut, &key);
        let err = load(&f).expect_err("unclosed certificate");
        assert!(matches!(err, TlsError::Pem { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&f.cert.display().to_string()), "{msg}");
        assert!(msg.contains("-----END CERTIFICATE-----"), "{msg}");

        let cut = &key[..key.find("-----END").expect("END marker")];
        let f = files(&cert, cut);
        let err = load(&f).expect_err("unclosed key");
        assert!(matches!(err, TlsError::Pem { .. }), "{err:?}");
        assert!(err.to_string().contains(&f.key.display().to_string()));
    }

    #[test]
    fn bad_base64_is_an_error_naming_the_file() {
        let (_, key) = pair();
        let f = files(
            "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
            &key,
        );
        let err = load(&f).expect_err("bad base64");
        assert!(matches!(err, TlsError::Pem { .. }), "{err:?}");
        assert!(err.to_string().contains(&f.cert.display().to_string()));
    }

    #[test]
    fn missing_items_name_the_file() {
        let (cert, key) = pair();
        let f = files(&key, &key);
        let err = load(&f).expect_err("no certificate");
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
        assert!(err.to_string().contains(&f.cert.display().to_string()));

        let f = files(&cert, &cert);
        let err = load(&f).expect_err("no key");
        assert!(matches!(err, TlsError::NoKey { .. }), "{err:?}");
        assert!(err.to_string().contains(&f.key.display().to_string()));

        let f = files("", "");
        assert!(matches!(load(&f), Err(TlsError::NoCertificate { .. })));
    }

    #[test]
    fn garbage_der_is_an_error_not_a_panic() {
        let (cert, key) = pair();
        // Valid PEM and base64 around DER that is not a key.
        let junk_key = "-----BEGIN PRIVATE KEY-----\nAAECAwQFBgcICQ==\n-----END PRIVATE KEY-----\n";
        let f = files(&cert, junk_key);
        let err = load(&f).expect_err("junk key");
        assert!(matches!(err, TlsError::BadKey { .. }), "{err:?}");
        assert!(err.to_string().contains(&f.key.display().to_string()));

        let junk_cert =
            "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n";
        let f = files(junk_cert, &key);
        // rustls may not be able to tell (then the handshake fails later), but
        // never panics.
        if let Err(err) = load(&f) {
            assert!(
                err.to_string().contains(&f.cert.display().to_string()),
                "{err}"
            );
        }
    }

    #[test]
    fn a_key_of_another_certificate_is_a_mismatch() {
        let (cert, _) = pair();
        let (_, other_key) = pair();
        let f = files(&cert, &other_key);
        let err = load(&f).expect_err("mismatch");
        assert!(matches!(err, TlsError::Mismatch { .. }), "{err:?}");
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let f = files("", "");
        let missing = f.cert.with_file_name("absent.pem");
        let err = load_certified_key(&missing, &f.key).expect_err("absent");
        assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("absent.pem"), "{err}");
    }
}
