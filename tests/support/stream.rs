//! Fleets of streaming WebSocket clients: each sends numbered messages and checks every
//! echo, until the server closes; what each saw is its [`StreamReport`].

use super::ws::ws_config;
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

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
pub struct StreamFleet {
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
    fleet: Arc<StreamFleet>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> StreamReport {
    let mut rep = StreamReport {
        id,
        ..Default::default()
    };
    let mut ws =
        match tokio_tungstenite::connect_async_with_config(&url, Some(ws_config()), false).await {
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
