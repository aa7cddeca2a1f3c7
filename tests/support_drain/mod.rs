//! Helpers of the drain, shutdown and admission end-to-end tests: streaming WebSocket
//! clients that check every echo, a raw WebSocket node that sends hand-made frames, a
//! slow HTTP node, and small polling utilities. (tests/support/mod.rs is the shared
//! harness; this adds what only these tests need.)
#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Poll `cond` until it holds; panics with `what` after `deadline`. For conditions that
/// have no event to wait on (counters in another task or process).
pub async fn wait_until<F: FnMut() -> bool>(what: &str, deadline: Duration, mut cond: F) {
    let end = tokio::time::Instant::now() + deadline;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < end,
            "condition not reached within {deadline:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Async version of [`wait_until`].
pub async fn wait_until_async<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < end,
            "condition not reached within {deadline:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback port that was free a moment ago (for configs of a subprocess).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
}

/// tungstenite config that accepts the 4 MiB messages of the large-message test.
pub fn big_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
}

pub async fn ws_connect(url: &str) -> Ws {
    let (ws, resp) = crate::support::within(tokio_tungstenite::connect_async_with_config(
        url,
        Some(big_config()),
        false,
    ))
    .await
    .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    assert_eq!(resp.status(), 101);
    ws
}

/// Payload of message `seq` of client `id`: the two numbers, then a pattern. Sizes cycle
/// through 7-bit, 16-bit and (now and then) 64-bit frame lengths.
pub fn payload(id: u32, seq: u64) -> Vec<u8> {
    const SIZES: [usize; 8] = [12, 125, 126, 300, 2_000, 40, 9_000, 600];
    let len = if seq % 40 == 17 {
        70_000
    } else {
        SIZES[(seq as usize) % SIZES.len()]
    };
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&id.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend((12..len).map(|i| ((id as u64 * 31 + seq * 7 + i as u64) % 251) as u8));
    v
}

/// How one streaming client's life ended.
#[derive(Debug, Default, Clone)]
pub struct StreamReport {
    pub id: u32,
    /// Messages written to the socket (the node must have received every one).
    pub sent: u64,
    /// Echoes received, each intact and in order (a prefix of what was sent).
    pub echoed: u64,
    /// Messages sent when the close arrived.
    pub sent_at_close: u64,
    /// Close code and reason, and the client's place in the order of close arrivals.
    pub close: Option<(u16, String)>,
    pub close_rank: Option<usize>,
    /// Anything wrong: a corrupted or out-of-order echo, a socket error, data after the close.
    pub error: Option<String>,
}

/// Shared counters of a fleet of streaming clients.
#[derive(Default)]
pub struct Fleet {
    pub connected: AtomicUsize,
    /// Clients that have had at least `warm` echoes.
    pub warm: AtomicUsize,
    pub closes: AtomicUsize,
    pub sent: AtomicU64,
    /// Close arrivals are reported here (rank, code).
    pub on_close: std::sync::Mutex<Option<mpsc::UnboundedSender<usize>>>,
}

/// Most messages a streaming client has in flight.
pub const WINDOW: u64 = 3;

/// Connect, then stream numbered messages every `period` (at most [`WINDOW`] unanswered),
/// checking each echo, until the server closes. Returns when the TCP connection ends.
/// `permit` (if any) is released once the handshake is over.
pub async fn stream_client(
    id: u32,
    url: String,
    period: Duration,
    fleet: Arc<Fleet>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> StreamReport {
    let mut rep = StreamReport {
        id,
        ..Default::default()
    };
    let mut ws =
        match tokio_tungstenite::connect_async_with_config(&url, Some(big_config()), false).await {
            Ok((ws, _)) => ws,
            Err(e) => {
                rep.error = Some(format!("connect: {e}"));
                return rep;
            }
        };
    drop(permit);
    fleet.connected.fetch_add(1, Ordering::Relaxed);
    // Random phase: a thousand clients do not send in lockstep.
    let phase = Duration::from_millis(rand::random::<u64>() % period.as_millis().max(1) as u64);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warm_counted = false;
    loop {
        let can_send = rep.close.is_none() && rep.sent - rep.echoed < WINDOW;
        tokio::select! {
            _ = tick.tick(), if can_send => {
                match ws.send(Message::Binary(payload(id, rep.sent).into())).await {
                    Ok(()) => {
                        rep.sent += 1;
                        fleet.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    // The close came in while we were writing: the message was not sent.
                    Err(_) if rep.close.is_some() => {}
                    Err(e) => {
                        // A send can fail because the close was just read by this very
                        // call; next() reports it.
                        if !matches!(e, tokio_tungstenite::tungstenite::Error::Protocol(_)) {
                            rep.error = Some(format!("send #{}: {e}", rep.sent));
                            return rep;
                        }
                    }
                }
            }
            m = ws.next() => match m {
                Some(Ok(Message::Binary(b))) => {
                    if rep.close.is_some() {
                        rep.error = Some("data after the close frame".into());
                        return rep;
                    }
                    if b[..] != payload(id, rep.echoed)[..] {
                        rep.error = Some(format!(
                            "echo #{} corrupted or out of order ({} bytes)",
                            rep.echoed,
                            b.len()
                        ));
                        return rep;
                    }
                    rep.echoed += 1;
                    if !warm_counted && rep.echoed >= 2 {
                        warm_counted = true;
                        fleet.warm.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    let (code, reason) = f
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    rep.close = Some((code, reason));
                    rep.sent_at_close = rep.sent;
                    let rank = fleet.closes.fetch_add(1, Ordering::Relaxed);
                    rep.close_rank = Some(rank);
                    if let Some(tx) = fleet.on_close.lock().unwrap().as_ref() {
                        let _ = tx.send(rank);
                    }
                    // Keep reading: tungstenite sends our close reply, then the server
                    // ends the connection.
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    if rep.close.is_none() {
                        rep.error = Some(format!("read: {e}"));
                    }
                    return rep;
                }
                None => return rep,
            }
        }
    }
}

/// Parse `{"retry_after_ms":N,...}`.
pub fn retry_after_ms(reason: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(reason).ok()?;
    v.get("retry_after_ms")?.as_u64()
}

// ---------------------------------------------------------------------------
// A node that writes hand-made frames
// ---------------------------------------------------------------------------

/// Read an HTTP head (through the blank line).
pub async fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut b).await {
            Ok(0) | Err(_) => break,
            Ok(_) => buf.push(b[0]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// An unmasked server frame.
pub fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let n = payload.len();
    if n < 126 {
        f.push(n as u8);
    } else if n <= 0xFFFF {
        f.push(126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    f.extend_from_slice(payload);
    f
}

/// Read one frame: (fin, opcode, masked, unmasked payload).
pub async fn read_frame(s: &mut TcpStream) -> std::io::Result<(bool, u8, bool, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await?;
    let fin = h[0] & 0x80 != 0;
    let opcode = h[0] & 0x0F;
    let masked = h[1] & 0x80 != 0;
    let mut len = u64::from(h[1] & 0x7F);
    if len == 126 {
        let mut b = [0u8; 2];
        s.read_exact(&mut b).await?;
        len = u64::from(u16::from_be_bytes(b));
    } else if len == 127 {
        let mut b = [0u8; 8];
        s.read_exact(&mut b).await?;
        len = u64::from_be_bytes(b);
    }
    let mut key = [0u8; 4];
    if masked {
        s.read_exact(&mut key).await?;
    }
    let mut p = vec![0u8; len as usize];
    s.read_exact(&mut p).await?;
    if masked {
        for (i, b) in p.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    Ok((fin, opcode, masked, p))
}

/// Read one client frame (it must be masked): (fin, opcode, payload).
pub async fn read_client_frame(s: &mut TcpStream) -> std::io::Result<(bool, u8, Vec<u8>)> {
    let (fin, op, masked, p) = read_frame(s).await?;
    if !masked {
        return Err(std::io::Error::other("unmasked client frame"));
    }
    Ok((fin, op, p))
}

/// A hand-made WebSocket client: the upgrade over a raw socket, then raw frames.
pub async fn raw_ws_client(
    addr: SocketAddr,
    path: &str,
    extra_headers: &str,
) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    (s, head)
}

/// (code, reason) of a close frame payload.
pub fn close_payload(p: &[u8]) -> (u16, String) {
    if p.len() < 2 {
        return (1005, String::new());
    }
    (
        u16::from_be_bytes([p[0], p[1]]),
        String::from_utf8_lossy(&p[2..]).into_owned(),
    )
}

/// The 4 MiB message the large-message node sends, in 4 fragments.
pub const BIG: usize = 4 << 20;

pub fn big_payload() -> Vec<u8> {
    (0..BIG).map(|i| (i % 253) as u8).collect()
}

/// What the large-message node saw.
#[derive(Debug)]
pub struct BigNodeReport {
    /// The close frame the node received (code), if any.
    pub close: Option<u16>,
    /// Frames other than the close the node received.
    pub other_frames: usize,
}

/// A node that upgrades one connection, sends the first quarter of [`BIG`] as a
/// non-final binary frame, reports `first_sent`, waits for `go`, then sends a ping and
/// the three remaining fragments, and finally answers the client's close.
pub async fn big_message_node() -> (
    SocketAddr,
    oneshot::Receiver<()>,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<BigNodeReport>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (first_tx, first_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        // Health checks are off in these configs; the first connection is the tunnel.
        let (mut s, _) = l.accept().await.unwrap();
        let head = read_head(&mut s).await;
        let key = header(&head, "sec-websocket-key").expect("key");
        let accept = herdgate::websocket::handshake::accept_key(key.as_bytes());
        s.write_all(
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let data = big_payload();
        let q = BIG / 4;
        s.write_all(&server_frame(false, 0x2, &data[..q]))
            .await
            .unwrap();
        let _ = first_tx.send(());
        let _ = go_rx.await;
        s.write_all(&server_frame(true, 0x9, b"mid-message ping"))
            .await
            .unwrap();
        for i in 1..4 {
            s.write_all(&server_frame(i == 3, 0x0, &data[i * q..(i + 1) * q]))
                .await
                .unwrap();
        }
        let mut rep = BigNodeReport {
            close: None,
            other_frames: 0,
        };
        loop {
            match read_client_frame(&mut s).await {
                Ok((_, 0x8, p)) => {
                    rep.close = Some(if p.len() >= 2 {
                        u16::from_be_bytes([p[0], p[1]])
                    } else {
                        1005
                    });
                    let _ = s
                        .write_all(&server_frame(true, 0x8, &p[..p.len().min(2)]))
                        .await;
                    break;
                }
                Ok(_) => rep.other_frames += 1,
                Err(_) => break,
            }
        }
        rep
    });
    (addr, first_rx, go_tx, task)
}

// ---------------------------------------------------------------------------
// A slow HTTP node
// ---------------------------------------------------------------------------

/// An HTTP node that, for each request, reports its arrival and answers `slow` only when
/// released (one release per request).
pub struct SlowNode {
    pub addr: SocketAddr,
    pub arrived: Arc<Notify>,
    pub arrivals: Arc<AtomicUsize>,
    pub release: mpsc::UnboundedSender<()>,
}

pub async fn slow_http_node() -> SlowNode {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let arrived = Arc::new(Notify::new());
    let arrivals = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::unbounded_channel::<()>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let (a, n) = (arrived.clone(), arrivals.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let (a, n, rx) = (a.clone(), n.clone(), rx.clone());
            tokio::spawn(async move {
                let head = read_head(&mut s).await;
                if head.is_empty() {
                    return;
                }
                n.fetch_add(1, Ordering::SeqCst);
                a.notify_waiters();
                if rx.lock().await.recv().await.is_none() {
                    return;
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nslow",
                    )
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    SlowNode {
        addr,
        arrived,
        arrivals,
        release: tx,
    }
}
