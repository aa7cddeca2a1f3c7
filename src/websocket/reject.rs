//! Turning a browser away readably: complete the upgrade ourselves, close at once with
//! 1013 (Try Again Later, RFC 6455 §7.4.1) and the hint as the close reason.

use super::frame::{write_close_frame, Direction, FrameTracker, CLOSE_FRAME_MAX_LEN};
use super::handshake::accept_key;
use super::tunnel::CLOSE_TRY_AGAIN_LATER;
use crate::proxy::body::Body;
use crate::proxy::respond::Rejection;
use crate::server::Shared;
use http::header::{HeaderValue, CONNECTION, UPGRADE};
use http::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The 101 that completes the handshake locally; a task then sends the close frame and
/// waits (bounded) for the client's close reply. `None` when the request cannot be
/// upgraded here (no key): the caller falls back to the HTTP answer.
pub fn close_1013(
    parts: &http::request::Parts,
    rej: &Rejection,
    shared: &Arc<Shared>,
) -> Option<Response<Body>> {
    let key = parts.headers.get("sec-websocket-key")?;
    let on_upgrade = parts.extensions.get::<hyper::upgrade::OnUpgrade>()?.clone();
    let accept = HeaderValue::from_str(&accept_key(key.as_bytes())).ok()?;
    let mut frame = [0u8; CLOSE_FRAME_MAX_LEN];
    let len = write_close_frame(&mut frame, CLOSE_TRY_AGAIN_LATER, &rej.json(), None);
    let close_timeout = shared.snapshot.load().config.timeouts.close.0;
    tokio::spawn(async move {
        let Ok(up) = on_upgrade.await else { return };
        let mut io = TokioIo::new(up);
        if io.write_all(&frame[..len]).await.is_err() {
            return;
        }
        let _ = io.flush().await;
        // Wait for the client's Close (or EOF) so the close handshake completes cleanly;
        // once it is in, the server closes TCP first (RFC 6455 §7.1.1) rather than wait
        // for a FIN the client may not send until it drops its socket.
        let mut buf = [0u8; 256];
        let mut frames = FrameTracker::new(Direction::ClientToServer);
        let _ = tokio::time::timeout(close_timeout.min(Duration::from_secs(5)), async {
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if frames.advance(&buf[..n], false).is_err() || frames.close_seen() {
                            break;
                        }
                    }
                }
            }
        })
        .await;
        let _ = io.shutdown().await;
    });
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert("sec-websocket-accept", accept);
    Some(r)
}
