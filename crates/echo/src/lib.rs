//! A WebSocket echo node: the backend of the demo, the tests and the benches.
//!
//! It echoes every data message, answers pings (tungstenite does), selects the first
//! subprotocol a client offers, and records what it saw of each handshake (so tests can
//! check the headers herdgate forwarded).
#![warn(missing_docs)]

use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// What the node saw, for tests and benches to assert on.
#[derive(Default)]
pub struct EchoStats {
    /// WebSocket handshakes answered with a 101 (counted before the answer is written).
    pub accepted: AtomicU64,
    /// Currently open WebSockets.
    pub open: AtomicU64,
    /// Messages echoed.
    pub messages: AtomicU64,
    /// Request headers of the last handshake.
    pub last_headers: Mutex<Option<HeaderMap>>,
    /// Request target (path and query) of the last handshake.
    pub last_target: Mutex<Option<String>>,
    /// Close frames received (code), most recent last.
    pub closes: Mutex<Vec<u16>>,
    /// Handshakes in the busiest 1 s sliding window (see [`PeakWindow`]).
    pub peak: PeakWindow,
}

/// The most handshake requests seen in any sliding 1 s window: how the node's load is
/// judged (a node that buckles above its rate buckles on this number). Memory is bounded by
/// the peak itself.
#[derive(Default)]
pub struct PeakWindow {
    inner: Mutex<(std::collections::VecDeque<std::time::Instant>, u64)>,
}

impl PeakWindow {
    /// One handshake request at `at`.
    pub fn record(&self, at: std::time::Instant) {
        if let Ok(mut g) = self.inner.lock() {
            let (window, peak) = &mut *g;
            while window.front().is_some_and(|&t| {
                at.saturating_duration_since(t) >= std::time::Duration::from_secs(1)
            }) {
                window.pop_front();
            }
            window.push_back(at);
            *peak = (*peak).max(window.len() as u64);
        }
    }

    /// The peak so far.
    pub fn peak(&self) -> u64 {
        self.inner.lock().map_or(0, |g| g.1)
    }

    /// Forget the window and the peak (to measure one phase of a run).
    pub fn reset(&self) {
        if let Ok(mut g) = self.inner.lock() {
            g.0.clear();
            g.1 = 0;
        }
    }
}

/// A running echo node; dropping it (or `stop`) closes the listener and every socket.
pub struct EchoNode {
    /// Where it listens (port 0 resolved).
    pub addr: SocketAddr,
    /// Counters shared with the serving tasks.
    pub stats: Arc<EchoStats>,
    stop: CancellationToken,
}

impl EchoNode {
    /// Listen on `addr` (port 0 for an ephemeral port).
    pub async fn start(addr: SocketAddr) -> std::io::Result<EchoNode> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self::from_listener(listener))
    }

    /// Serve on an already bound listener (a bench hands it a socket it chose).
    pub fn from_listener(listener: TcpListener) -> EchoNode {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let stats = Arc::new(EchoStats::default());
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, stats.clone(), stop.clone()));
        EchoNode { addr, stats, stop }
    }

    /// Kill the node: listener and all connections close at once (RST-like, no close
    /// frame), as when a backend process dies.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for EchoNode {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(listener: TcpListener, stats: Arc<EchoStats>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => continue,
                    }
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let stats = stats.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let st = stats.clone();
            #[allow(clippy::result_large_err)] // tungstenite's callback signature
            let cb = move |req: &Request, mut resp: Response| {
                st.peak.record(std::time::Instant::now());
                if let Ok(mut g) = st.last_headers.lock() {
                    *g = Some(req.headers().clone());
                }
                if let Ok(mut g) = st.last_target.lock() {
                    *g = req.uri().path_and_query().map(|p| p.to_string());
                }
                if let Some(p) = req
                    .headers()
                    .get("sec-websocket-protocol")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split(',').next())
                {
                    if let Ok(v) = p.trim().parse() {
                        resp.headers_mut().insert("sec-websocket-protocol", v);
                    }
                }
                // Counted before the 101 is written: a client holding its 101 always
                // finds its handshake counted.
                st.accepted.fetch_add(1, Ordering::Relaxed);
                Ok(resp)
            };
            let mut cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
            cfg.max_message_size = Some(64 << 20);
            cfg.max_frame_size = Some(64 << 20);
            let ws = match tokio_tungstenite::accept_hdr_async_with_config(stream, cb, Some(cfg))
                .await
            {
                Ok(ws) => ws,
                Err(_) => return,
            };
            stats.open.fetch_add(1, Ordering::Relaxed);
            let (mut tx, mut rx) = ws.split();
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => break,
                    m = rx.next() => m,
                };
                match msg {
                    Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                        stats.messages.fetch_add(1, Ordering::Relaxed);
                        if tx.send(m).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(Message::Close(f))) => {
                        if let Ok(mut g) = stats.closes.lock() {
                            g.push(f.as_ref().map_or(1005, |f| u16::from(f.code)));
                        }
                        // tungstenite queues the close reply; flush it, then we are done.
                        let _ = tx.close().await;
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
            stats.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}
