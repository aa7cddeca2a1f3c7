//! TLS termination over real sockets: wss through a TLS listener, SNI selection among
//! ECDSA P-256, RSA 2048 and Ed25519 certificates (with a default), ALPN http/1.1,
//! TLS 1.2-only and 1.3-only clients, session resumption (tickets and the session
//! cache), and startup failures for bad key material that name the file.
//!
//! The RSA key is a fixture (rcgen on ring cannot generate RSA keys; see `support::tls`);
//! every certificate is made by rcgen in the test.

use crate::support::http1::Reader;
use crate::support::nodes::echo_nodes;
use crate::support::proxy::{fast_pool, parse, start, Proxy};
use crate::support::tls::{
    cert_toml, certs, self_signed, tls_client, tls_client_any, tls_connect, Cert, KeyType,
};
use crate::support::within;
use crate::support::ws::{echo_text, ws_connect, ws_over};
use futures_util::StreamExt;
use rustls::{HandshakeKind, ProtocolVersion};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// A `[[listener.tls.cert]]` entry for `c` serving `names`, the default certificate or not.
fn named_cert_toml(c: &Cert, names: &[&str], default: bool) -> String {
    format!(
        "[[listener.tls.cert]]\ncert = \"{}\"\nkey = \"{}\"\nserver_names = {names:?}\ndefault = {default}\n",
        c.cert.display(),
        c.key.display()
    )
}

/// A plain and a TLS listener in front of `nodes`; `tls_extra` goes in `[listener.tls]`.
async fn tls_proxy(dir: &Path, nodes: &[SocketAddr], tls_extra: &str, certs: &str) -> Proxy {
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n\
         [[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\n\n\
         [[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\n\
         [listener.tls]\n{tls_extra}\n{certs}\n\
         [[route]]\npool = \"ws\"\n\n{}",
        fast_pool("ws", nodes)
    );
    start(parse(&toml, dir)).await
}

#[tokio::test]
async fn wss_through_tls_listener() {
    let (dir, c) = certs(&["localhost"]);
    let nodes = echo_nodes(1).await;
    let certs = named_cert_toml(&c, &["localhost"], false);
    let proxy = tls_proxy(dir.path(), &[nodes[0].addr], "", &certs).await;
    let cfg = Arc::new(tls_client(rustls::ALL_VERSIONS, &[&c.der]));
    let tls = tls_connect(proxy.addr("tls"), cfg, "localhost").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut ws, resp) = ws_over(tls, "wss://localhost/secure", &[]).await;
    assert_eq!(resp.status(), 101);
    echo_text(&mut ws, "over TLS").await;
    let big = vec![7u8; 3 << 20];
    use futures_util::SinkExt;
    within(ws.send(tokio_tungstenite::tungstenite::Message::binary(big.clone())))
        .await
        .unwrap();
    match within(ws.next()).await {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(b))) => assert!(b[..] == big[..]),
        other => panic!("{other:?}"),
    }
    let seen = nodes[0].stats.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(seen["x-forwarded-proto"], "https");
    ws.close(None).await.unwrap();
    // The plain listener of the same proxy says http.
    let mut ws = ws_connect(proxy.addr("plain"), "/").await;
    echo_text(&mut ws, "plain").await;
    let seen = nodes[0].stats.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(seen["x-forwarded-proto"], "http");
}

/// Which certificate a handshake with `sni` (None: no SNI sent) is answered with.
async fn presented(
    addr: SocketAddr,
    sni: Option<&str>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> (Vec<u8>, ProtocolVersion) {
    let mut cfg = tls_client_any(versions);
    cfg.enable_sni = sni.is_some();
    let tls = tls_connect(addr, Arc::new(cfg), sni.unwrap_or("no-sni.invalid")).await;
    let conn = tls.get_ref().1;
    let leaf = conn.peer_certificates().unwrap()[0].to_vec();
    (leaf, conn.protocol_version().unwrap())
}

#[tokio::test]
async fn sni_picks_the_certificate_among_key_types() {
    let dir = tempfile::tempdir().unwrap();
    let ec = self_signed(dir.path(), "ec", KeyType::EcdsaP256, &["ec.test"]);
    let rs = self_signed(dir.path(), "rsa", KeyType::Rsa2048, &["rsa.test"]);
    let ed = self_signed(
        dir.path(),
        "ed",
        KeyType::Ed25519,
        &["ed.test", "*.wild.test"],
    );
    let nodes = echo_nodes(1).await;
    let certs = format!(
        "{}{}{}",
        named_cert_toml(&ec, &["ec.test"], false),
        named_cert_toml(&rs, &["rsa.test"], true),
        named_cert_toml(&ed, &["ed.test", "*.wild.test"], false)
    );
    let proxy = tls_proxy(dir.path(), &[nodes[0].addr], "", &certs).await;
    let addr = proxy.addr("tls");
    let cases: [(Option<&str>, &Cert); 7] = [
        (Some("ec.test"), &ec),
        (Some("EC.Test"), &ec),
        (Some("rsa.test"), &rs),
        (Some("ed.test"), &ed),
        (Some("a.wild.test"), &ed),
        // Unknown name and no SNI at all: the default (marked `default = true`).
        (Some("unknown.test"), &rs),
        (None, &rs),
    ];
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        for (sni, want) in &cases {
            let (leaf, version) = presented(addr, *sni, versions).await;
            assert!(
                leaf == want.der,
                "SNI {sni:?} ({versions:?}) got the wrong certificate"
            );
            assert_eq!(version, versions[0].version);
        }
    }
    // Each key type carries a real WebSocket with a verifying client.
    for (name, c) in [("ec.test", &ec), ("rsa.test", &rs), ("ed.test", &ed)] {
        for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let cfg = Arc::new(tls_client(&[v], &[&c.der]));
            let tls = tls_connect(addr, cfg, name).await;
            let (mut ws, _) = ws_over(tls, &format!("wss://{name}/"), &[]).await;
            echo_text(&mut ws, &format!("{name} {:?}", v.version)).await;
        }
    }
}

#[tokio::test]
async fn alpn_and_protocol_versions() {
    let (dir, c) = certs(&["localhost"]);
    let nodes = echo_nodes(1).await;
    let certs = cert_toml(&c);
    let proxy = tls_proxy(dir.path(), &[nodes[0].addr], "", &certs).await;
    let addr = proxy.addr("tls");
    for (versions, want) in [
        (&[&rustls::version::TLS12][..], ProtocolVersion::TLSv1_2),
        (&[&rustls::version::TLS13][..], ProtocolVersion::TLSv1_3),
        (rustls::ALL_VERSIONS, ProtocolVersion::TLSv1_3),
    ] {
        // A client offering h2 first still gets http/1.1, the one protocol served.
        let mut cfg = tls_client(versions, &[&c.der]);
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tls = tls_connect(addr, Arc::new(cfg), "localhost").await;
        let conn = tls.get_ref().1;
        assert_eq!(conn.protocol_version(), Some(want));
        assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        let (mut ws, _) = ws_over(tls, "wss://localhost/", &[]).await;
        echo_text(&mut ws, &format!("{want:?}")).await;
    }
    // No ALPN offered at all works too.
    let mut cfg = tls_client(rustls::ALL_VERSIONS, &[&c.der]);
    cfg.alpn_protocols.clear();
    let tls = tls_connect(addr, Arc::new(cfg), "localhost").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    let (mut ws, _) = ws_over(tls, "wss://localhost/", &[]).await;
    echo_text(&mut ws, "no alpn").await;
}

/// Two connections with the same client config: the second resumes.
async fn resumes(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> (HandshakeKind, HandshakeKind) {
    let mut kinds = Vec::new();
    for i in 0..2 {
        let tls = tls_connect(addr, cfg.clone(), "localhost").await;
        kinds.push(tls.get_ref().1.handshake_kind().unwrap());
        // A full exchange, so the client reads the TLS 1.3 tickets sent after the
        // handshake, then a clean close.
        let (mut ws, _) = ws_over(tls, "wss://localhost/", &[]).await;
        echo_text(&mut ws, &format!("connection {i}")).await;
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = within(ws.next()).await {}
    }
    (kinds[0], kinds[1])
}

#[tokio::test]
async fn session_resumption_tls13_and_tls12() {
    let (dir, c) = certs(&["localhost"]);
    let nodes = echo_nodes(1).await;
    let certs = cert_toml(&c);
    // Tickets on (the default).
    let proxy = tls_proxy(dir.path(), &[nodes[0].addr], "", &certs).await;
    for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let cfg = Arc::new(tls_client(&[v], &[&c.der]));
        let kinds = resumes(proxy.addr("tls"), cfg).await;
        assert_eq!(
            kinds,
            (HandshakeKind::Full, HandshakeKind::Resumed),
            "{:?} with tickets",
            v.version
        );
    }
    // Tickets off: the server-side session cache resumes instead.
    let proxy = tls_proxy(
        dir.path(),
        &[nodes[0].addr],
        "session_tickets = false",
        &certs,
    )
    .await;
    for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let cfg = Arc::new(tls_client(&[v], &[&c.der]));
        let kinds = resumes(proxy.addr("tls"), cfg).await;
        assert_eq!(
            kinds,
            (HandshakeKind::Full, HandshakeKind::Resumed),
            "{:?} with the session cache",
            v.version
        );
    }
}

/// Config text with one TLS listener on `cert` / `key`.
fn one_cert_config(cert: &Path, key: &Path) -> String {
    format!(
        "[admin]\nenabled = false\n[[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\n\
         [[listener.tls.cert]]\ncert = \"{}\"\nkey = \"{}\"\n\
         [[route]]\npool = \"p\"\n[[pool]]\nname = \"p\"\n[[pool.node]]\nname = \"n\"\naddr = \"127.0.0.1:9\"\n",
        cert.display(),
        key.display()
    )
}

/// The error of Config::parse, or of Server::bind if parsing let the file through.
fn startup_error(text: &str, dir: &Path) -> String {
    match herdgate::config::Config::parse(text, "bad.toml", dir) {
        Err(e) => e.to_string(),
        Ok(cfg) => match herdgate::server::Server::bind(cfg) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("bad TLS material accepted"),
        },
    }
}

#[tokio::test]
async fn bad_key_material_fails_startup_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = self_signed(dir.path(), "a", KeyType::EcdsaP256, &["a.test"]);
    let b = self_signed(dir.path(), "b", KeyType::EcdsaP256, &["b.test"]);
    let r = self_signed(dir.path(), "r", KeyType::Rsa2048, &["r.test"]);
    let e = self_signed(dir.path(), "e", KeyType::Ed25519, &["e.test"]);

    // Good pairs of each key type load.
    for c in [&a, &r, &e] {
        herdgate::config::Config::parse(&one_cert_config(&c.cert, &c.key), "ok.toml", dir.path())
            .unwrap_or_else(|e| panic!("{e}"));
    }

    // Mismatched pairs: the message names the key and the certificate.
    for (cert, key) in [(&a.cert, &b.key), (&a.cert, &r.key), (&r.cert, &e.key)] {
        let msg = startup_error(&one_cert_config(cert, key), dir.path());
        assert!(msg.contains(&key.display().to_string()), "{msg}");
        assert!(msg.contains(&cert.display().to_string()), "{msg}");
        assert!(msg.contains("does not match"), "{msg}");
    }

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA@@@\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let noise = dir.path().join("noise.pem");
    std::fs::write(&noise, b"\x00\x01 this is not PEM at all \xff").unwrap();
    let missing = dir.path().join("missing.pem");
    for (cert, key, named) in [
        (&garbage, &a.key, &garbage),
        (&noise, &a.key, &noise),
        (&a.cert, &garbage, &garbage),
        (&a.cert, &noise, &noise),
        (&missing, &a.key, &missing),
        (&a.cert, &missing, &missing),
        // A certificate where the key should be, and the reverse.
        (&a.cert, &a.cert, &a.cert),
        (&a.key, &a.key, &a.key),
    ] {
        let msg = startup_error(&one_cert_config(cert, key), dir.path());
        assert!(
            msg.contains(&named.display().to_string()),
            "message does not name {}: {msg}",
            named.display()
        );
    }
}

/// A raw HTTP backend that answers every request with the request head as its body.
async fn head_reflector() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                loop {
                    while !head.ends_with(b"\r\n\r\n") {
                        match s.read(&mut b).await {
                            Ok(1) => head.push(b[0]),
                            _ => return,
                        }
                    }
                    let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", head.len());
                    let mut out = resp.into_bytes();
                    out.append(&mut head);
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_requests_are_forwarded_with_proto_https() {
    use tokio::io::AsyncWriteExt;
    let (dir, c) = certs(&["localhost"]);
    let backend = head_reflector().await;
    let certs = cert_toml(&c);
    let proxy = tls_proxy(dir.path(), &[backend], "", &certs).await;
    let cfg = Arc::new(tls_client(rustls::ALL_VERSIONS, &[&c.der]));
    let tls = tls_connect(proxy.addr("tls"), cfg, "localhost").await;
    let mut rd = Reader::new(tls);
    for i in 0..3 {
        // Several requests on one TLS connection (keep-alive).
        rd.s.write_all(
            format!(
                "GET /r{i} HTTP/1.1\r\nHost: secure.example\r\nX-Forwarded-For: 192.0.2.7\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let r = within(rd.response()).await.unwrap();
        assert_eq!(r.status, 200);
        let seen = r.text().to_ascii_lowercase();
        assert!(
            seen.starts_with(&format!("get /r{i} http/1.1\r\n")),
            "{seen}"
        );
        assert!(seen.contains("\r\nhost: secure.example\r\n"), "{seen}");
        assert!(seen.contains("\r\nx-forwarded-proto: https\r\n"), "{seen}");
        // An untrusted client's own X-Forwarded-For is replaced by its address.
        assert!(
            seen.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
            "{seen}"
        );
        assert!(
            seen.contains("\r\nx-forwarded-host: secure.example\r\n"),
            "{seen}"
        );
    }
}
