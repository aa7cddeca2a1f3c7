//! The tunnel: relays bytes both ways after the 101, tracking frame boundaries.
//!
//! Bytes are copied from socket to socket through one copy buffer per worker thread; nothing is held while
//! the tunnel is idle (no copy buffers: an idle tunnel costs its sockets, this task and a
//! few words of frame-tracker state). The task is kept small: it waits on the sockets'
//! own readiness slots (`websocket::wait`), holds one timer, and stores its state once. A `pending` vector exists only while the far side
//! pushes back.
//!
//! Closing is frame-aware (RFC 6455 §5.5.1, §7.1): on drain or shutdown a Close frame is
//! injected towards the client at a *message* boundary, so every message the node sent
//! before is delivered whole and no frame is cut. The client's Close reply (masked, as a
//! client frame must be) is passed on to the node, so the node sees an ordinary close
//! handshake. If the client does not answer within `close_timeout`, herdgate sends the
//! node a masked Close of its own (at a boundary) and cuts both connections.

use super::frame::Direction;
use super::pump::{flush_pending, pump, send_close, Dir, Pump};
use super::side::Side;
use super::stall::Stall;
use super::wait::{poll_event, Ev, Want};
use crate::backend::health::Health;
use crate::metrics as m;
use crate::registry::{TunnelCtl, TunnelState};
use bytes::Bytes;
use std::io;
use std::time::Duration;
use tokio::time::Instant;

/// RFC 6455 §7.4.1 close codes herdgate sends (the wire contract's).
pub use herdgate_wire::{CLOSE_GOING_AWAY, CLOSE_SERVICE_RESTART, CLOSE_TRY_AGAIN_LATER};

/// A tunnel's timeouts, from `[timeouts]`.
#[derive(Debug, Clone, Copy)]
pub struct TunnelSettings {
    /// Close after this long without a byte either way (None: never).
    pub idle: Option<Duration>,
    /// Bound on a close handshake and on a half-closed tunnel.
    pub close_timeout: Duration,
    /// A write towards either side that makes no progress for this long closes the tunnel
    /// (a peer that does not read cannot hold herdgate's buffers and the other side).
    pub write: Duration,
}

/// What a tunnel carried and how it ended (the access log).
#[derive(Debug, Clone, Copy)]
pub struct Relayed {
    /// Why the relay stopped.
    pub end: TunnelEnd,
    /// Bytes from the client to the node, and from the node to the client.
    pub bytes: (u64, u64),
    /// The close code the client got (herdgate's own or the node's), else the one it sent.
    pub close: Option<u16>,
}

fn done(end: TunnelEnd, c2s: &Dir, s2c: &Dir) -> Relayed {
    let sent = Some(s2c.sent).filter(|&c| c != 0);
    Relayed {
        end,
        bytes: (c2s.bytes, s2c.bytes),
        close: sent
            .or(s2c.tracker.close_code())
            .or(c2s.tracker.close_code()),
    }
}

/// How a tunnel ended (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    /// Both sides closed their connections.
    Closed,
    /// A socket error (reset) on one side; the other was closed at once.
    Error,
    /// Drained or shut down by herdgate.
    Drained,
    /// Idle for too long.
    Idle,
    /// A close handshake or half-close did not finish within close_timeout.
    TimedOut,
    /// A side took none of what was written to it for `write`.
    WriteTimeout,
}

/// Where the relay is in its life. The control plane's request ([`TunnelState`]) or an
/// idle timeout moves it from `Open` to `CloseQueued`; the close frame going out to the
/// client moves it to `CloseSent`. It never moves back.
#[derive(Clone, Copy)]
enum Phase {
    /// Relaying both ways.
    Open,
    /// A close is wanted; it goes to the client once the node's stream is at a message
    /// boundary (no frame is cut), and until then nothing more is read from the node.
    CloseQueued(Closing),
    /// Our close frame is on its way to the client; the close handshake must finish by the
    /// deadline.
    CloseSent(Closing),
}

impl Phase {
    fn closing(&self) -> Option<&Closing> {
        match self {
            Phase::Open => None,
            Phase::CloseQueued(c) | Phase::CloseSent(c) => Some(c),
        }
    }
}

/// The close herdgate sends: code, optional retry hint, and when to give up waiting.
#[derive(Clone, Copy)]
struct Closing {
    code: u16,
    /// The close carries the drain hint (the control handle's `hint_ms` and ticket).
    hinted: bool,
    deadline: Instant,
}

/// The wire contract's JSON hint, `{"retry_after_ms":N}` or with a ticket the same JSON as
/// a 1013; empty when there is no hint (a 1001).
fn close_reason(hint_ms: Option<u64>, ticket: Option<&str>) -> String {
    hint_ms.map_or_else(String::new, |ms| {
        herdgate_wire::reason_json(ms, None, ticket)
    })
}

/// Relay until both sides are done. `client_pre`/`backend_pre` are bytes each side sent
/// right behind its HTTP head (read by hyper before the upgrade).
pub fn relay<'a>(
    client: Side,
    client_pre: Bytes,
    backend: Side,
    backend_pre: Bytes,
    ctl: &'a TunnelCtl,
    settings: &'a TunnelSettings,
    health: Option<&'a Health>,
) -> impl std::future::Future<Output = Relayed> + Send + 'a {
    let mut c2s = Dir::new(Direction::ClientToServer);
    let mut s2c = Dir::new(Direction::ServerToClient);
    c2s.bytes = client_pre.len() as u64;
    s2c.bytes = backend_pre.len() as u64;
    c2s.track(&client_pre, false);
    c2s.pending.extend_from_slice(&client_pre);
    s2c.track(&backend_pre, false);
    s2c.pending.extend_from_slice(&backend_pre);
    // The bytes behind the heads are in `pending` now: the future does not keep them.
    drop((client_pre, backend_pre));
    let mut ends = Ends {
        client,
        backend,
        c2s,
        s2c,
        ctl,
        settings,
        health,
    };
    // `ends` lives in this block's future and `run` borrows it: an async fn's arguments
    // would be stored twice (once as passed, once moved into its body).
    async move { run(&mut ends).await }
}

/// What a relay owns: both sockets, both directions' state, its control handle and
/// settings.
struct Ends<'a> {
    client: Side,
    backend: Side,
    c2s: Dir,
    s2c: Dir,
    ctl: &'a TunnelCtl,
    /// Borrowed from the tunnel's task, which keeps them anyway.
    settings: &'a TunnelSettings,
    health: Option<&'a Health>,
}

async fn run(ends: &mut Ends<'_>) -> Relayed {
    let Ends {
        client,
        backend,
        c2s,
        s2c,
        ctl,
        settings,
        health,
    } = ends;
    let ctl: &TunnelCtl = ctl;
    let settings: &TunnelSettings = settings;
    let health: Option<&Health> = *health;
    let mut phase = Phase::Open;
    let mut end = TunnelEnd::Closed;
    let mut last_activity = Instant::now();
    let mut half_closed_deadline: Option<Instant> = None;
    let mut to_client = Stall::default();
    let mut to_node = Stall::default();
    let timer = tokio::time::sleep_until(next_timer(settings, last_activity, None, None, None));
    tokio::pin!(timer);
    let changed = ctl.changed();
    tokio::pin!(changed);
    let mut again = !c2s.pending.is_empty() || !s2c.pending.is_empty();
    let mut node_checked = false;

    loop {
        // Closing: put the close towards the client as soon as the node's stream is at a
        // message boundary.
        if let Phase::CloseQueued(cl) = phase {
            if s2c.at_boundary() {
                let reason = close_reason(cl.hinted.then(|| ctl.hint_ms()), ctl.ticket());
                if let Err(e) = send_close(client, s2c, cl.code, &reason, false) {
                    tracing::debug!("tunnel {}: close to client failed: {e}", ctl.id);
                    return done(TunnelEnd::Error, c2s, s2c);
                }
                phase = Phase::CloseSent(cl);
                s2c.discard = true;
            }
        }
        if phase.closing().is_some() && c2s.tracker.close_seen() && !c2s.discard {
            // The client's Close reply went to the node; nothing may follow it.
            c2s.discard = true;
        }
        // A Close has passed each way and is written out: the close handshake is over and
        // nothing valid can follow (RFC 6455 §5.5.1). The server side closes TCP first
        // (§7.1.1), so end both directions now instead of waiting close_timeout for a
        // peer's FIN (a client may keep its socket open until it drops it).
        if c2s.tracker.close_seen()
            && s2c.tracker.close_seen()
            && c2s.pending.is_empty()
            && s2c.pending.is_empty()
        {
            c2s.open = false;
            s2c.open = false;
        }
        // Shut write sides whose source ended, once their pending bytes are out. When
        // both have ended, the sockets are about to be closed, and close sends the FIN:
        // no shutdown call (two syscalls less per tunnel), only TLS's close_notify.
        let last = !c2s.open && !s2c.open && c2s.pending.is_empty() && s2c.pending.is_empty();
        for (dir, dst) in [(&mut *c2s, &mut *backend), (&mut *s2c, &mut *client)] {
            if !dir.open && !dir.shut && dir.pending.is_empty() {
                match last {
                    true => dst.close_notify(),
                    false => dst.shutdown_write(),
                }
                dir.shut = true;
            }
        }
        if c2s.shut && s2c.shut && !client.has_pending_output() {
            return done(end, c2s, s2c);
        }
        if (!c2s.open || !s2c.open) && half_closed_deadline.is_none() {
            half_closed_deadline = Some(Instant::now() + settings.close_timeout);
            timer.as_mut().reset(next_timer(
                settings,
                last_activity,
                phase.closing().map(|c| c.deadline),
                half_closed_deadline,
                stall_deadline(&to_client, &to_node, settings.write),
            ));
        }

        let stop_s2c = matches!(phase, Phase::CloseQueued(_));
        let can_read_client = c2s.open && c2s.pending.is_empty();
        let can_read_backend = s2c.open && s2c.pending.is_empty() && !client.has_pending_output();
        if can_read_client && client.has_buffered_input() {
            again = true;
        }
        let ev = if again {
            again = false;
            Ev::Again
        } else {
            let want = Want {
                client_read: can_read_client,
                backend_read: can_read_backend,
                client_write: !s2c.pending.is_empty() || client.has_pending_output(),
                backend_write: !c2s.pending.is_empty(),
            };
            let ev = std::future::poll_fn(|cx| {
                poll_event(
                    cx,
                    changed.as_mut(),
                    || ctl.changed(),
                    timer.as_mut(),
                    client,
                    backend,
                    want,
                )
            })
            .await;
            match ev {
                Ev::Failed { node } => {
                    if node {
                        node_gone(health, ctl).await;
                    }
                    return done(TunnelEnd::Error, c2s, s2c);
                }
                ev => ev,
            }
        };

        let res: io::Result<()> = (|| {
            match ev {
                Ev::Command => {
                    let now = Instant::now();
                    match ctl.state() {
                        TunnelState::Draining if matches!(phase, Phase::Open) => {
                            phase = Phase::CloseQueued(Closing {
                                code: CLOSE_SERVICE_RESTART,
                                hinted: true,
                                deadline: now + settings.close_timeout,
                            });
                            end = TunnelEnd::Drained;
                        }
                        TunnelState::ClosingNow => {
                            // Shutdown is here: whatever was under way ends with 1001 now
                            // (a close already sent stays sent; its deadline only shortens).
                            let by = now + settings.close_timeout;
                            let c = Closing {
                                code: CLOSE_GOING_AWAY,
                                hinted: false,
                                deadline: phase.closing().map_or(by, |c| c.deadline.min(by)),
                            };
                            phase = match phase {
                                Phase::CloseSent(_) => Phase::CloseSent(c),
                                Phase::Open | Phase::CloseQueued(_) => Phase::CloseQueued(c),
                            };
                            end = TunnelEnd::Drained;
                        }
                        _ => {}
                    }
                }
                Ev::Timer | Ev::Failed { .. } => {}
                Ev::Again | Ev::ClientReadable | Ev::BackendReadable => {
                    // Only the side that woke us (a blind read of the other costs a syscall
                    // per message); `Again` retries both.
                    let (try_client, try_backend) = match ev {
                        Ev::ClientReadable => (true, false),
                        Ev::BackendReadable => (false, true),
                        _ => (true, true),
                    };
                    if can_read_client && try_client {
                        match pump(client, backend, c2s, false, m::Dir::ClientToNode)? {
                            Pump::More => again = true,
                            Pump::Idle | Pump::Blocked | Pump::Boundary | Pump::Eof => {}
                        }
                        last_activity = Instant::now();
                    }
                    if can_read_backend && try_backend {
                        match pump(backend, client, s2c, stop_s2c, m::Dir::NodeToClient)? {
                            Pump::More => again = true,
                            Pump::Idle | Pump::Blocked | Pump::Boundary | Pump::Eof => {}
                        }
                        last_activity = Instant::now();
                    }
                }
                Ev::ClientWritable => {
                    flush_pending(client, s2c)?;
                }
                Ev::BackendWritable => {
                    flush_pending(backend, c2s)?;
                }
            }
            Ok(())
        })();
        if let Err(e) = res {
            tracing::debug!("tunnel {}: {e}", ctl.id);
            node_gone(health, ctl).await;
            return done(TunnelEnd::Error, c2s, s2c);
        }
        // The node ended its TCP stream first, without a WebSocket close: it may have died. Ask
        // before the client learns (its FIN goes out on the next turn), so that its
        // reconnect, and its neighbours', never meet a dead node still marked up.
        if !s2c.open && c2s.open && !s2c.tracker.close_seen() && !node_checked {
            node_checked = true;
            node_gone(health, ctl).await;
        }

        let now = Instant::now();
        if let Some(cl) = phase.closing() {
            if now >= cl.deadline {
                // The client never answered: close towards the node ourselves, then cut.
                if !c2s.discard && c2s.at_boundary() {
                    let _ = send_close(backend, c2s, CLOSE_GOING_AWAY, "", true);
                }
                let _ = flush_pending(backend, c2s);
                let _ = client.flush();
                let end = if end == TunnelEnd::Closed {
                    TunnelEnd::TimedOut
                } else {
                    end
                };
                return done(end, c2s, s2c);
            }
        }
        if half_closed_deadline.is_some_and(|d| now >= d) {
            return done(TunnelEnd::TimedOut, c2s, s2c);
        }
        // Writes that make no progress: a peer that does not read is cut off.
        let client_new = to_client.note(
            !s2c.pending.is_empty() || client.has_pending_output(),
            s2c.pending.len(),
            now,
        );
        let node_new = to_node.note(
            !c2s.pending.is_empty() || backend.has_pending_output(),
            c2s.pending.len(),
            now,
        );
        for (stall, side) in [(&to_client, "client"), (&to_node, "node")] {
            if stall.deadline(settings.write).is_some_and(|d| now >= d) {
                m::write_timeout(side, "tunnel");
                tracing::debug!(
                    "tunnel {}: the {side} took nothing for {:?}",
                    ctl.id,
                    settings.write
                );
                return done(TunnelEnd::WriteTimeout, c2s, s2c);
            }
        }
        if client_new || node_new {
            if let Some(d) = stall_deadline(&to_client, &to_node, settings.write) {
                if d < timer.deadline() {
                    timer.as_mut().reset(d);
                }
            }
        }
        if let Some(idle) = settings.idle {
            if matches!(phase, Phase::Open) && now.duration_since(last_activity) >= idle {
                phase = Phase::CloseQueued(Closing {
                    code: CLOSE_GOING_AWAY,
                    hinted: false,
                    deadline: now + settings.close_timeout,
                });
                end = TunnelEnd::Idle;
            }
        }
        if matches!(ev, Ev::Timer | Ev::Command) || phase.closing().is_some() {
            timer.as_mut().reset(next_timer(
                settings,
                last_activity,
                phase.closing().map(|c| c.deadline),
                half_closed_deadline,
                stall_deadline(&to_client, &to_node, settings.write),
            ));
        }
    }
}

fn stall_deadline(a: &Stall, b: &Stall, write: Duration) -> Option<Instant> {
    match (a.deadline(write), b.deadline(write)) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

fn next_timer(
    settings: &TunnelSettings,
    last_activity: Instant,
    closing: Option<Instant>,
    half_closed: Option<Instant>,
    stall: Option<Instant>,
) -> Instant {
    let far = last_activity + Duration::from_secs(86400 * 365);
    let idle = settings.idle.map_or(far, |d| last_activity + d);
    [Some(idle), closing, half_closed, stall]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(far)
}

/// A tunnel's node went away without a close: check at once whether the node still
/// accepts connections ([`Health::confirm_alive`]).
///
/// Boxed, and only when called: the probe's future (two connects under timeouts) would
/// otherwise be part of the relay's state, and every idle tunnel would carry its room.
async fn node_gone(health: Option<&Health>, ctl: &TunnelCtl) {
    if let Some(h) = health {
        Box::pin(h.confirm_alive(&ctl.node)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Node, NodeKey};
    use herdgate_core::admission::{AdmissionParams, NodeAdmission, TicketKey, TicketSigner};
    use std::sync::Arc;

    fn ctl() -> Arc<TunnelCtl> {
        let signer = Arc::new(TicketSigner::new(
            TicketKey::from_bytes(&[7u8; 32]).unwrap(),
            0,
        ));
        let adm = NodeAdmission::new(1, AdmissionParams::default(), signer, 0).unwrap();
        let key = NodeKey {
            pool: Arc::from("p"),
            name: Arc::from("n"),
            addr: "127.0.0.1:1".parse().unwrap(),
        };
        Arc::new(TunnelCtl::new(
            1,
            Arc::new(Node::new(key, adm)),
            None,
            false,
        ))
    }

    /// An idle tunnel's task is mostly this future: its size is what every idle tunnel
    /// pays (712 bytes in a debug build now). It was 1,640 bytes with `readable()`/`writable()` under a `select!` and the
    /// arguments stored twice; the bound keeps it from growing back unnoticed.
    #[tokio::test]
    async fn the_relay_future_stays_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (b, _) = l.accept().await.unwrap();
        let settings = TunnelSettings {
            idle: None,
            close_timeout: Duration::from_secs(1),
            write: Duration::from_secs(1),
        };
        let ctl = ctl();
        let f = relay(
            Side::Plain(a),
            Bytes::new(),
            Side::Plain(b),
            Bytes::new(),
            &ctl,
            &settings,
            None,
        );
        let size = std::mem::size_of_val(&f);
        eprintln!("relay future: {size} bytes");
        assert!(size <= 760, "the relay future grew to {size} bytes");
    }

    /// A connected pair of loopback sockets.
    async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// A client's masked binary frame.
    fn client_frame(payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![0x82, 0x80 | payload.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    async fn read_n(s: &mut tokio::net::TcpStream, n: usize) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut got = vec![0u8; n];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut got))
            .await
            .expect("bytes arrive in time")
            .unwrap();
        got
    }

    /// One tunnel between a client peer and a node peer, relayed by a spawned task.
    struct Bench {
        client: tokio::net::TcpStream,
        node: tokio::net::TcpStream,
        ctl: Arc<TunnelCtl>,
        task: tokio::task::JoinHandle<Relayed>,
    }

    async fn tunnel(settings: TunnelSettings) -> Bench {
        let (client, client_side) = pair().await;
        let (node_side, node) = pair().await;
        let ctl = ctl();
        let c = ctl.clone();
        let task = tokio::spawn(async move {
            relay(
                Side::Plain(client_side),
                Bytes::new(),
                Side::Plain(node_side),
                Bytes::new(),
                &c,
                &settings,
                None,
            )
            .await
        });
        Bench {
            client,
            node,
            ctl,
            task,
        }
    }

    /// A client that sends part of a frame and stalls keeps nothing buffered in herdgate
    /// (its bytes are passed on as they come) and does not hold up the tunnel beside it,
    /// which relays, goes idle and relays again; asked to close, the stalled one gets its
    /// close frame (the node's side is at a boundary) and is cut at `close_timeout`.
    #[tokio::test]
    async fn a_stalled_partial_frame_holds_nothing_and_its_neighbour_still_relays() {
        use tokio::io::AsyncWriteExt;
        let settings = TunnelSettings {
            idle: None,
            close_timeout: Duration::from_millis(300),
            write: Duration::from_secs(10),
        };
        let mut bad = tunnel(settings).await;
        let mut good = tunnel(settings).await;

        // Misbehaving: 3 bytes of a 2-byte-length frame header, then nothing.
        bad.client.write_all(&[0x82, 0xFE, 0x00]).await.unwrap();
        assert_eq!(read_n(&mut bad.node, 3).await, [0x82, 0xFE, 0x00]);

        for round in 0..2u8 {
            let msg = client_frame(&[round; 20]);
            good.client.write_all(&msg).await.unwrap();
            assert_eq!(read_n(&mut good.node, msg.len()).await, msg);
            let reply = [0x82, 3, round, round, round];
            good.node.write_all(&reply).await.unwrap();
            assert_eq!(read_n(&mut good.client, reply.len()).await, reply);
        }

        bad.ctl.close_now();
        let close = read_n(&mut bad.client, 2).await;
        assert_eq!(close[0], 0x88, "a close frame goes to the stalled client");
        let end = tokio::time::timeout(Duration::from_secs(10), bad.task)
            .await
            .expect("the stalled tunnel ends")
            .unwrap();
        assert_eq!(end.end, TunnelEnd::Drained);
        assert_eq!(
            end.bytes.0, 3,
            "the partial header was counted and passed on"
        );

        // The honest tunnel is untouched by all this.
        let msg = client_frame(b"still here");
        good.client.write_all(&msg).await.unwrap();
        assert_eq!(read_n(&mut good.node, msg.len()).await, msg);
        assert!(!good.task.is_finished());
        drop(good.client);
        drop(good.node);
        let end = tokio::time::timeout(Duration::from_secs(10), good.task)
            .await
            .expect("the honest tunnel ends when both peers go")
            .unwrap();
        assert_eq!(end.end, TunnelEnd::Closed);
    }
}
