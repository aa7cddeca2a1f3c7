//! The TLS handshake cap (`handshakes_per_second`) is charged at the ClientHello, and
//! served in round robin by client: an attacker's bare TCP connects take no token, its
//! flood of ClientHellos is capped per client (counted), and an honest client on another
//! address completes wss handshakes within the deadline meanwhile.

use crate::support::metrics::{metric, metric_reaches};
use crate::support::net::tcp_from;
use crate::support::nodes::echo_nodes;
use crate::support::proxy::{fast_pool, parse, start, Proxy};
use crate::support::tls::{cert_toml, certs, tls_client, Cert};
use crate::support::within;
use crate::support::ws::{echo_text, ws_over};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const ATTACKER: [u8; 4] = [127, 0, 0, 2];
const HONEST: [u8; 4] = [127, 0, 0, 3];

fn ip(a: [u8; 4]) -> IpAddr {
    IpAddr::from(a)
}

async fn proxy(dir: &std::path::Path, cert: &Cert, node: std::net::SocketAddr) -> Proxy {
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n\
         [timeouts]\nhandshake = \"1500ms\"\n\n\
         [[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\n\
         handshakes_per_second = 5.0\nhandshake_burst = 1\n\
         max_waiting_handshakes_per_client = 4\n\
         [listener.tls]\n{}\n\
         [[route]]\npool = \"ws\"\n\n{}",
        cert_toml(cert),
        fast_pool("ws", &[node])
    );
    start(parse(&toml, dir)).await
}

/// TLS handshake from `from`: Ok when herdgate completed it.
async fn tls_from(
    from: IpAddr,
    proxy: &Proxy,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<crate::support::tls::TlsStream> {
    let tcp = tcp_from(Some(from), proxy.addr("tls")).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    within(tokio_rustls::TlsConnector::from(cfg).connect(name, tcp)).await
}

/// The honest client's whole wss connection: TLS, upgrade, one echo.
async fn honest_wss(proxy: &Proxy, cfg: Arc<rustls::ClientConfig>) {
    let tls = tls_from(ip(HONEST), proxy, cfg)
        .await
        .expect("the honest client's TLS handshake");
    let (mut ws, resp) = ws_over(tls, "wss://localhost/", &[]).await;
    assert_eq!(resp.status(), 101);
    echo_text(&mut ws, "honest").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_connects_take_no_token_and_a_clienthello_flood_cannot_starve_another_client() {
    let (dir, cert) = certs(&["localhost"]);
    let nodes = echo_nodes(1).await;
    let proxy = proxy(dir.path(), &cert, nodes[0].addr).await;
    let cfg = Arc::new(tls_client(rustls::ALL_VERSIONS, &[&cert.der]));
    let tokens = |t: &str| metric(t, "herdgate_tls_handshake_tokens_total", &[]);

    // 1. Bare connects that never send a ClientHello: each holds its slot until the
    //    handshake deadline, and none takes a token.
    let mut bare = Vec::new();
    for _ in 0..20 {
        bare.push(
            tcp_from(Some(ip(ATTACKER)), proxy.addr("tls"))
                .await
                .unwrap(),
        );
    }
    metric_reaches(&proxy, "herdgate_connections_accepted_total", &[], |v| {
        v >= 20.0
    })
    .await;
    // While they sit there, the honest client gets through (the burst's one token).
    honest_wss(&proxy, cfg.clone()).await;
    metric_reaches(&proxy, "herdgate_handshake_timeouts_total", &[], |v| {
        v >= 20.0
    })
    .await;
    assert_eq!(
        tokens(&proxy.metrics().await),
        1.0,
        "only the honest ClientHello took a token; the 20 bare connects took none"
    );
    drop(bare);

    // 2. A flood of ClientHellos from the attacker: at most 4 of its handshakes wait for
    //    a token, the rest are closed and counted; the honest client takes its turn.
    let stop = Arc::new(AtomicBool::new(false));
    let attacker_ok = Arc::new(AtomicU64::new(0));
    let attacker_tries = Arc::new(AtomicU64::new(0));
    let flood: Vec<_> = (0..6)
        .map(|_| {
            let (stop, ok, tries, cfg) = (
                stop.clone(),
                attacker_ok.clone(),
                attacker_tries.clone(),
                cfg.clone(),
            );
            let addr = proxy.addr("tls");
            tokio::spawn(async move {
                // Bounded: stops when told, or after this many tries.
                for _ in 0..3000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    tries.fetch_add(1, Ordering::Relaxed);
                    let Ok(tcp) = tcp_from(Some(ip(ATTACKER)), addr).await else {
                        continue;
                    };
                    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                    let c = tokio_rustls::TlsConnector::from(cfg.clone());
                    if within(c.connect(name, tcp)).await.is_ok() {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    metric_reaches(&proxy, "herdgate_tls_handshakes_refused_total", &[], |v| {
        v >= 5.0
    })
    .await;
    for _ in 0..3 {
        honest_wss(&proxy, cfg.clone()).await;
    }
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        within(f).await.unwrap();
    }

    let text = proxy.metrics().await;
    let refused = metric(&text, "herdgate_tls_handshakes_refused_total", &[]);
    let taken = tokens(&text);
    let ok = attacker_ok.load(Ordering::Relaxed) as f64;
    let tries = attacker_tries.load(Ordering::Relaxed) as f64;
    assert!(
        refused >= 5.0,
        "the attacker's excess is counted: {refused}"
    );
    // Every completed handshake took one token; nothing else did (a token given to a
    // handshake the attacker then abandoned is the only slack).
    assert!(
        taken >= 4.0 + ok,
        "tokens {taken} < honest 4 + attacker {ok}"
    );
    assert!(
        taken <= 4.0 + tries - refused,
        "tokens {taken} > ClientHellos served ({tries} tries, {refused} refused)"
    );
    assert!(
        metric(&text, "herdgate_tls_handshakes_deferred_total", &[]) >= 1.0,
        "handshakes waited for tokens"
    );
}
