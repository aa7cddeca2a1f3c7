//! Certificates (one helper, rcgen) and TLS clients (rustls).

use super::within;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpStream;

/// rcgen on ring cannot generate RSA keys (`KeyGenerationUnavailable`), so the RSA key is
/// a fixture made once with `openssl genpkey -algorithm RSA -pkeyopt
/// rsa_keygen_bits:2048` (a test-only key); its certificates are still made by rcgen.
const RSA_KEY: &str = include_str!("../fixtures/rsa2048-test-only.key.pem");

/// The key type of a test certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    EcdsaP256,
    /// The fixture key (every RSA certificate of a test shares it).
    Rsa2048,
    Ed25519,
}

impl KeyType {
    fn key_pair(self) -> rcgen::KeyPair {
        match self {
            KeyType::EcdsaP256 => {
                rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
            }
            KeyType::Ed25519 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
            KeyType::Rsa2048 => {
                assert!(
                    matches!(
                        rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256),
                        Err(rcgen::Error::KeyGenerationUnavailable)
                    ),
                    "rcgen generates RSA keys now: the fixture key can go"
                );
                rcgen::KeyPair::from_pem(RSA_KEY).unwrap()
            }
        }
    }
}

/// A self-signed certificate and its key, written as PEM files.
#[derive(Debug, Clone)]
pub struct Cert {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The certificate, DER (what a client trusts, and what a server presents).
    pub der: Vec<u8>,
}

/// The certificate helper: a self-signed certificate for `names` with a new key of type
/// `key`, written to `dir/<tag>.crt` and `dir/<tag>.key`.
pub fn self_signed(dir: &Path, tag: &str, key: KeyType, names: &[&str]) -> Cert {
    let key = key.key_pair();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let c = params.self_signed(&key).unwrap();
    let cert = dir.join(format!("{tag}.crt"));
    let keyp = dir.join(format!("{tag}.key"));
    std::fs::write(&cert, c.pem()).unwrap();
    std::fs::write(&keyp, key.serialize_pem()).unwrap();
    Cert {
        cert,
        key: keyp,
        der: c.der().to_vec(),
    }
}

/// An ECDSA P-256 certificate for `names` in a new directory (also the one to parse a
/// config in): `(dir, cert)`.
pub fn certs(names: &[&str]) -> (tempfile::TempDir, Cert) {
    let dir = tempfile::tempdir().unwrap();
    let c = self_signed(dir.path(), "cert", KeyType::EcdsaP256, names);
    (dir, c)
}

/// A `[[listener.tls.cert]]` entry for `c`.
pub fn cert_toml(c: &Cert) -> String {
    format!(
        "[[listener.tls.cert]]\ncert = \"{}\"\nkey = \"{}\"\n",
        c.cert.display(),
        c.key.display()
    )
}

/// rustls client side: accepts any server certificate (tests look at what was presented
/// through `peer_certificates`) but checks handshake signatures for real.
#[derive(Debug)]
pub struct AnyCert(pub Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config for `versions` that trusts `roots` (self-signed certificates, DER) and
/// offers ALPN http/1.1.
pub fn tls_client(
    versions: &[&'static rustls::SupportedProtocolVersion],
    roots: &[&[u8]],
) -> rustls::ClientConfig {
    let mut store = rustls::RootCertStore::empty();
    for der in roots {
        store
            .add(rustls::pki_types::CertificateDer::from(der.to_vec()))
            .unwrap();
    }
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    c
}

/// A client config for `versions` that accepts any certificate (for SNI and
/// default-certificate checks), offering ALPN http/1.1.
pub fn tls_client_any(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    let p = provider();
    let mut c = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(p)))
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    c
}

pub type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// TCP connect (which must succeed) plus TLS handshake with `sni` as the server name: the
/// stream, or the handshake's error.
pub async fn try_tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    sni: &str,
) -> std::io::Result<TlsStream> {
    let tcp = within(TcpStream::connect(addr)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    within(tokio_rustls::TlsConnector::from(config).connect(name, tcp)).await
}

/// TCP connect plus TLS handshake with `sni` as the server name.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    sni: &str,
) -> TlsStream {
    try_tls_connect(addr, config, sni)
        .await
        .expect("TLS handshake with herdgate")
}
