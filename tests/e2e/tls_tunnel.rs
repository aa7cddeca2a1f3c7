//! wss tunnels through herdgate's own TLS (rustls' unbuffered API driven by hand,
//! `io::tls`), after the handshake: TLS 1.3 KeyUpdate both ways in the middle of a tunnel,
//! records that fail authentication or announce more than TLS allows, a record that stops
//! half way, close_notify in both directions, and large messages over TLS 1.2.
//!
//! Each hostile client (raw bytes written under rustls, straight to its TCP socket) runs
//! next to an honest tunnel on the same proxy, which must keep echoing byte-exact.

use crate::support::nodes::echo_nodes;
use crate::support::proxy::{fast_pool, parse, start, Proxy};
use crate::support::tls::{cert_toml, certs, tls_client, tls_connect, Cert, TlsStream};
use crate::support::ws::{echo_text, pattern, ws_over, Ws};
use crate::support::{eventually, within, EchoNode};
use futures_util::{SinkExt, StreamExt};
use rustls::ProtocolVersion;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// A message large enough to span many TLS records (a record carries at most 16 KiB).
const BIG: usize = 300 << 10;

/// TLS record content type of application data.
const APPLICATION_DATA: u8 = 23;

/// A herdgate with one TLS listener (`tls`) in front of one echo node, and the
/// certificate it serves for `localhost`.
struct Setup {
    proxy: Proxy,
    node: EchoNode,
    cert: Cert,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let (dir, cert) = certs(&["localhost"]);
    let node = echo_nodes(1).await.remove(0);
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n\
         [[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\n\
         [listener.tls]\n\n{}\n\
         [[route]]\npool = \"ws\"\n\n{}",
        cert_toml(&cert),
        fast_pool("ws", &[node.addr])
    );
    let proxy = start(parse(&toml, dir.path())).await;
    Setup {
        proxy,
        node,
        cert,
        _dir: dir,
    }
}

impl Setup {
    /// A TLS connection to the listener with a client limited to `versions`.
    async fn tls(&self, versions: &[&'static rustls::SupportedProtocolVersion]) -> TlsStream {
        self.tls_with(tls_client(versions, &[&self.cert.der])).await
    }

    async fn tls_with(&self, cfg: rustls::ClientConfig) -> TlsStream {
        tls_connect(self.proxy.addr("tls"), Arc::new(cfg), "localhost").await
    }

    /// A wss tunnel (tungstenite over tokio-rustls) with a client limited to `versions`.
    async fn wss(&self, versions: &[&'static rustls::SupportedProtocolVersion]) -> Ws<TlsStream> {
        let (ws, resp) = ws_over(self.tls(versions).await, "wss://localhost/tunnel", &[]).await;
        assert_eq!(resp.status(), 101);
        ws
    }

    /// Wait until herdgate relays exactly `n` tunnels and the node holds exactly `n`
    /// WebSockets open.
    async fn tunnels_settle_at(&self, n: usize) {
        let (h, stats) = (&self.proxy.handle, &self.node.stats);
        eventually(
            format!("{n} tunnels through herdgate and {n} open at the node"),
            || async move { h.tunnels() == n && stats.open.load(Ordering::Relaxed) == n as u64 },
        )
        .await;
    }
}

/// Send `data` as one binary message and expect it back byte-exact.
async fn echo_binary<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>, data: &[u8]) {
    within(ws.send(Message::binary(data.to_vec())))
        .await
        .unwrap();
    loop {
        match within(ws.next()).await {
            Some(Ok(Message::Binary(b))) => {
                assert_eq!(b.len(), data.len(), "echo of a different length");
                let first_diff = b.iter().zip(data).position(|(a, b)| a != b);
                assert_eq!(first_diff, None, "echo corrupted (first differing byte)");
                return;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => panic!("expected the echo of {} bytes, got {m:?}", data.len()),
            other => panic!("expected the echo of {} bytes, got {other:?}", data.len()),
        }
    }
}

/// The honest tunnel still works: a text message and a large binary one, byte-exact.
async fn still_echoes<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>, tag: &str, seed: u32) {
    echo_text(ws, tag).await;
    echo_binary(ws, &pattern(BIG, seed.into())).await;
}

/// Write `bytes` straight to the TCP socket under the client's TLS (rustls never sees them).
async fn write_under_tls(ws: &mut Ws<TlsStream>, bytes: &[u8]) {
    let tcp: &mut TcpStream = ws.get_mut().get_mut().0;
    within(tcp.write_all(bytes)).await.unwrap();
}

/// A TLS record header: application data, version 3.3, `len` bytes to follow.
fn record_header(len: u16) -> [u8; 5] {
    let [hi, lo] = len.to_be_bytes();
    [APPLICATION_DATA, 3, 3, hi, lo]
}

/// The tunnel must end: the client reads no data message, only (perhaps) a Close, then an
/// error (herdgate's alert, a reset) or the end; and herdgate closes the TCP connection.
/// How the WebSocket ended, for the failure messages of the caller.
async fn connection_ends(ws: &mut Ws<TlsStream>) -> String {
    let how = loop {
        match within(ws.next()).await {
            None => break "end of stream".to_string(),
            Some(Err(e)) => break format!("error: {e}"),
            Some(Ok(Message::Close(_))) => continue,
            Some(Ok(m)) => panic!("a data message after a bad record: {m:?}"),
        }
    };
    // Below TLS too: herdgate has closed the socket (end of file or a reset, not silence).
    let tcp: &mut TcpStream = ws.get_mut().get_mut().0;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match within(tcp.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    how
}

/// `n` KeyUpdates (each asking for the peer's) back to back, sent at once.
async fn key_updates(ws: &mut Ws<TlsStream>, n: usize) {
    for _ in 0..n {
        ws.get_mut().get_mut().1.refresh_traffic_keys().unwrap();
    }
    within(ws.get_mut().flush()).await.unwrap();
}

/// Masked client text frame (what a browser sends), for the hand-made upgrade.
fn client_text_frame(text: &[u8]) -> Vec<u8> {
    assert!(text.len() < 126);
    let mask = [0x3a, 0x91, 0x5c, 0xe7];
    let mut f = vec![0x81, 0x80 | text.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(text.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A TLS 1.3 client rolls its traffic keys mid-tunnel (rustls sends KeyUpdate with
/// update_requested) three times, each followed by a text and a 300 KiB binary message,
/// all echoed byte-exact: herdgate took the new receive keys and answered with a KeyUpdate
/// of its own before its next record. The client's receive sequence number at the end
/// (it restarts at 0 with each new key) shows herdgate's answer did come. Next to it, a
/// client may send 20 KeyUpdates in a row, but one that floods 40 with no data between
/// them (a denial-of-service vector rustls bounds at 32) is cut off, and the honest
/// tunnel goes on.
#[tokio::test]
async fn key_update_mid_tunnel_both_ways() {
    let s = setup().await;
    let mut cfg = tls_client(&[&rustls::version::TLS13], &[&s.cert.der]);
    cfg.enable_secret_extraction = true;
    let tls = s.tls_with(cfg).await;
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
    let (mut ws, resp) = ws_over(tls, "wss://localhost/keys", &[]).await;
    assert_eq!(resp.status(), 101);
    still_echoes(&mut ws, "before any key update", 1).await;

    for round in 0..3u32 {
        ws.get_mut()
            .get_mut()
            .1
            .refresh_traffic_keys()
            .expect("TLS 1.3 allows a key update");
        echo_text(&mut ws, &format!("after key update {round}")).await;
        echo_binary(&mut ws, &pattern(BIG, u64::from(100 + round))).await;
    }

    // Another client rolls its keys 20 times back to back: allowed, its tunnel goes on.
    let mut flood = s.wss(&[&rustls::version::TLS13]).await;
    echo_text(&mut flood, "flood: one honest message first").await;
    key_updates(&mut flood, 20).await;
    echo_text(&mut flood, "flood: after 20 key updates in a row").await;
    // Then 40 (rustls takes 32 without data in between): it is cut off.
    key_updates(&mut flood, 40).await;
    let how = connection_ends(&mut flood).await;
    s.tunnels_settle_at(1).await;
    still_echoes(&mut ws, &format!("after the flood ({how})"), 2).await;

    // One more roll, then one short message each way: the records herdgate sent since its
    // answer are the only ones under the client's current receive key. Without the answer
    // the count would run over every record since the handshake (hundreds: 1.2 MiB).
    ws.get_mut().get_mut().1.refresh_traffic_keys().unwrap();
    echo_text(&mut ws, "last").await;
    let (_tcp, conn) = ws.into_inner().into_inner();
    let secrets = conn.dangerous_extract_secrets().unwrap();
    let (rx_seq, tx_seq) = (secrets.rx.0, secrets.tx.0);
    assert!(
        (1..=2).contains(&rx_seq),
        "records received under the client's current key: {rx_seq} (herdgate did not \
         answer the KeyUpdate with its own?)"
    );
    assert!(
        (1..=2).contains(&tx_seq),
        "records sent under the client's current key: {tx_seq}"
    );
}

/// A client that writes, under its TLS, a record that fails authentication (garbage where
/// the ciphertext should be) is disconnected; one whose record header announces 65,535
/// bytes (more than TLS allows) is disconnected at once, without sending them. The honest
/// tunnel open next to both echoes before, between and after.
#[tokio::test]
async fn forged_and_oversized_records_end_only_their_tunnel() {
    let s = setup().await;
    let mut honest = s.wss(rustls::ALL_VERSIONS).await;
    still_echoes(&mut honest, "honest, before", 1).await;

    // A record that fails authentication.
    let mut forger = s.wss(rustls::ALL_VERSIONS).await;
    echo_text(&mut forger, "forger: one honest message first").await;
    s.tunnels_settle_at(2).await;
    let mut rec = record_header(256).to_vec();
    rec.extend(pattern(256, 7));
    write_under_tls(&mut forger, &rec).await;
    let how = connection_ends(&mut forger).await;
    s.tunnels_settle_at(1).await;
    still_echoes(
        &mut honest,
        &format!("honest, after a forged record ({how})"),
        2,
    )
    .await;

    // A header that announces more than any record may carry, and only 4 KiB after it:
    // the tunnel must end now, not when (if ever) 64 KiB have come.
    let mut bloater = s.wss(rustls::ALL_VERSIONS).await;
    echo_text(&mut bloater, "bloater: one honest message first").await;
    s.tunnels_settle_at(2).await;
    let mut rec = record_header(0xFFFF).to_vec();
    rec.extend(pattern(4 << 10, 8));
    write_under_tls(&mut bloater, &rec).await;
    let how = connection_ends(&mut bloater).await;
    s.tunnels_settle_at(1).await;
    still_echoes(
        &mut honest,
        &format!("honest, after an oversized record ({how})"),
        3,
    )
    .await;
}

/// A client that sends the first 100 bytes of a 16 KiB record and stops holds its tunnel
/// open (a record may legitimately arrive in pieces) without disturbing the honest tunnel
/// next to it; when it completes the record with garbage it is disconnected, and the
/// honest tunnel still echoes.
#[tokio::test]
async fn a_stalled_partial_record_does_not_disturb_a_neighbour() {
    let s = setup().await;
    let mut honest = s.wss(rustls::ALL_VERSIONS).await;
    still_echoes(&mut honest, "honest, before", 1).await;

    let mut staller = s.wss(rustls::ALL_VERSIONS).await;
    echo_text(&mut staller, "staller: one honest message first").await;
    let body = pattern(0x4000, 9);
    let mut part = record_header(0x4000).to_vec();
    part.extend_from_slice(&body[..95]);
    assert_eq!(part.len(), 100);
    write_under_tls(&mut staller, &part).await;

    for i in 0..3 {
        still_echoes(
            &mut honest,
            &format!("honest, beside a stalled record {i}"),
            10 + i,
        )
        .await;
    }
    // Half a record is no reason to end a tunnel: both are still relayed.
    s.tunnels_settle_at(2).await;

    write_under_tls(&mut staller, &body[95..]).await;
    let how = connection_ends(&mut staller).await;
    s.tunnels_settle_at(1).await;
    still_echoes(
        &mut honest,
        &format!("honest, after the staller ({how})"),
        20,
    )
    .await;
}

/// A WebSocket closed normally over TLS: the node sees the client's close code, the close
/// handshake completes, and the client then reads a clean end of stream (herdgate sent
/// close_notify before its FIN: tokio-rustls reports a FIN without it as an error).
#[tokio::test]
async fn websocket_close_ends_with_close_notify() {
    let s = setup().await;
    let mut ws = s.wss(rustls::ALL_VERSIONS).await;
    still_echoes(&mut ws, "before the close", 1).await;
    within(ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    match within(ws.next()).await {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::Normal),
        other => panic!("expected the node's close reply, got {other:?}"),
    }
    match within(ws.next()).await {
        None => {}
        other => panic!("expected a clean end after the close handshake, got {other:?}"),
    }
    assert_eq!(*s.node.stats.closes.lock().unwrap(), vec![1000]);
    s.tunnels_settle_at(0).await;
}

/// A client that ends its TLS stream with close_notify (tokio-rustls' shutdown) on a
/// hand-made upgrade: herdgate ends the tunnel and answers with its own close_notify, so
/// the client reads to a clean end of file, not an error. A client that instead cuts its
/// TCP stream with no close_notify (a truncation) has its tunnel ended too. An honest
/// tunnel beside both keeps echoing.
#[tokio::test]
async fn client_close_notify_ends_the_tunnel_cleanly() {
    let s = setup().await;
    let mut honest = s.wss(rustls::ALL_VERSIONS).await;
    still_echoes(&mut honest, "honest, before", 1).await;

    let mut tls = s.tls(rustls::ALL_VERSIONS).await;
    within(tls.write_all(
        b"GET /raw HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
          Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\n\r\n",
    ))
    .await
    .unwrap();
    // The head byte by byte, so that nothing after it is read here.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(within(tls.read(&mut b)).await.unwrap(), 1, "head cut short");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101 "), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
        "{head}"
    );
    // The tunnel carries a frame each way.
    within(tls.write_all(&client_text_frame(b"hello")))
        .await
        .unwrap();
    let mut echo = [0u8; 7];
    within(tls.read_exact(&mut echo)).await.unwrap();
    assert_eq!(&echo, b"\x81\x05hello");
    s.tunnels_settle_at(2).await;

    // close_notify (and the FIN after it).
    within(tls.shutdown()).await.unwrap();
    let mut rest = Vec::new();
    let end = within(tls.read_to_end(&mut rest)).await;
    assert!(
        end.is_ok(),
        "after the client's close_notify herdgate must end with its own, got {end:?} \
         (after {} bytes)",
        rest.len()
    );
    s.tunnels_settle_at(1).await;
    still_echoes(&mut honest, "honest, after a close_notify", 2).await;

    // A FIN without close_notify: the tunnel ends all the same.
    let mut cutter = s.wss(rustls::ALL_VERSIONS).await;
    echo_text(&mut cutter, "cutter: one honest message first").await;
    s.tunnels_settle_at(2).await;
    within(cutter.get_mut().get_mut().0.shutdown())
        .await
        .unwrap();
    let how = connection_ends(&mut cutter).await;
    s.tunnels_settle_at(1).await;
    still_echoes(
        &mut honest,
        &format!("honest, after a truncation ({how})"),
        3,
    )
    .await;
}

/// A TLS 1.2-only client carries a 300 KiB message each way byte-exact (TLS 1.2 records,
/// with their explicit nonces, through the same unbuffered path). A TLS 1.2 client that
/// writes a forged record beside it is disconnected, and the honest one goes on.
#[tokio::test]
async fn tls12_tunnel_carries_large_messages() {
    let s = setup().await;
    let tls = s.tls(&[&rustls::version::TLS12]).await;
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_2)
    );
    let (mut ws, _) = ws_over(tls, "wss://localhost/tls12", &[]).await;
    still_echoes(&mut ws, "TLS 1.2", 1).await;
    echo_binary(&mut ws, &pattern(BIG + 1, 2)).await;

    let mut forger = s.wss(&[&rustls::version::TLS12]).await;
    echo_text(&mut forger, "TLS 1.2 forger: one honest message first").await;
    s.tunnels_settle_at(2).await;
    let mut rec = record_header(512).to_vec();
    rec.extend(pattern(512, 3));
    write_under_tls(&mut forger, &rec).await;
    let how = connection_ends(&mut forger).await;
    s.tunnels_settle_at(1).await;
    still_echoes(
        &mut ws,
        &format!("TLS 1.2, after a forged record ({how})"),
        4,
    )
    .await;
}
