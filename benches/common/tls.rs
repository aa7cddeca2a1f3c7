//! The benches' TLS: one self-signed certificate for `localhost`, the echo node's server
//! config, and the raw client's config with a ticket store sized for the benches.

use super::Result;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A self-signed certificate for `localhost`, written as PEM into a directory.
pub struct Cert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

/// `cert.pem` and `key.pem` in `dir`.
pub fn write_cert(dir: &Path) -> Result<Cert> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem())?;
    std::fs::write(&key, ck.key_pair.serialize_pem())?;
    Ok(Cert {
        cert,
        key,
        der: ck.cert.der().clone(),
    })
}

/// The server side (the lean echo node behind TLS), like herdgate's: ALPN http/1.1,
/// stateless resumption tickets.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor> {
    let chain = CertificateDer::pem_file_iter(cert)?.collect::<std::result::Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Resumption like herdgate's: stateless tickets.
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// A TLS client config trusting `der`; `resume`: keep tickets (resumed handshakes) or
/// disable resumption (every handshake full).
pub fn tls_connector(
    der: &CertificateDer<'static>,
    resume: bool,
) -> Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.clone())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.resumption = if resume {
        rustls::client::Resumption::store(Arc::new(Tickets::default()))
    } else {
        rustls::client::Resumption::disabled()
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

/// A TLS 1.3 ticket store for one server name that keeps up to 1,024 tickets. rustls' own
/// in-memory cache keeps 8 per server, too few for 32 connections in flight: most would
/// fall back to full handshakes and the "resumed" figures would not be about resumption.
#[derive(Debug, Default)]
struct Tickets {
    inner: std::sync::Mutex<(
        Option<rustls::NamedGroup>,
        std::collections::VecDeque<rustls::client::Tls13ClientSessionValue>,
    )>,
}

impl rustls::client::ClientSessionStore for Tickets {
    fn set_kx_hint(&self, _: ServerName<'static>, group: rustls::NamedGroup) {
        if let Ok(mut g) = self.inner.lock() {
            g.0 = Some(group);
        }
    }
    fn kx_hint(&self, _: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.lock().ok()?.0
    }
    fn set_tls12_session(
        &self,
        _: ServerName<'static>,
        _: rustls::client::Tls12ClientSessionValue,
    ) {
    }
    fn tls12_session(&self, _: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        None
    }
    fn remove_tls12_session(&self, _: &ServerName<'static>) {}
    fn insert_tls13_ticket(
        &self,
        _: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        if let Ok(mut g) = self.inner.lock() {
            if g.1.len() >= 1024 {
                g.1.pop_front();
            }
            g.1.push_back(value);
        }
    }
    fn take_tls13_ticket(
        &self,
        _: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        // Newest first: the freshest ticket is the likeliest to be accepted.
        self.inner.lock().ok()?.1.pop_back()
    }
}
