//! Listeners: accept loop, connection caps, PROXY header, TLS handshake under a deadline,
//! then hyper.

mod proxy_header;

mod handshake;

use crate::conn::{ClientIo, ConnGuard, ConnInfo};
use crate::metrics::ListenerMetrics;
use crate::proxy;
use crate::snapshot::ListenerRt;
use crate::state::{RunningListener, Shared};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Bind a listening socket the way a proxy wants it: SO_REUSEADDR, SO_REUSEPORT, a deep
/// backlog, non-blocking.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_reuse_address(true)?;
    // SO_REUSEPORT, as HAProxy sets by default: each data-plane shard accepts on a socket
    // of its own bound to the same address (`start`), and a reload can bind a renamed
    // listener's address before the old socket closes.
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        let _ = s.set_only_v6(true);
    }
    s.bind(&addr.into())?;
    s.listen(backlog.min(i32::MAX as u32) as i32)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Accept loop of one listener until `stop` is cancelled; `shard` is the index of the
/// data-plane shard it runs on, if any (`crate::shards`). Every shard's loop of one
/// listener shares its handshake `gate`, so the listener's handshake cap and its
/// per-client wait cap count over all shards.
pub(crate) async fn serve(
    listener: TcpListener,
    name: Arc<str>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    shard: Option<usize>,
    gate: Arc<handshake::HandshakeGate>,
) {
    let metrics = ListenerMetrics::new(&name);
    let shard_accepted =
        shard.map(|i| metrics::counter!(crate::metrics::SHARD_ACCEPTED, "shard" => i.to_string()));
    let mut backoff = Duration::from_millis(5);
    loop {
        let snap = shared.load();
        let lrt = snap.listener(&name).cloned();
        drop(snap);
        let Some(lrt) = lrt else {
            // Removed by a reload; the reload also cancels `stop`.
            return;
        };
        // The listener's own cap before accept: a connection it cannot serve stays in
        // the kernel backlog instead of costing a descriptor, a handshake and a refusal.
        // Not on shards: each shard has its own socket and backlog, and an idle shard
        // holding a slot would starve the connections queued on another's (with a cap
        // of 1, every connection the kernel gave the other shard). There the slot is
        // taken after accept, like the process cap below.
        let listener_permit = match (&lrt.conn_limit, shard) {
            (Some(sem), None) => tokio::select! {
                _ = stop.cancelled() => return,
                p = sem.clone().acquire_owned() => p.ok(),
            },
            _ => None,
        };
        // The TLS handshake cap is charged later, once a ClientHello is in
        // (`handshake::accept`): a connect that sends nothing must not take a token.
        let (stream, peer) = tokio::select! {
            // A stopped loop never accepts again: after a reload hands its socket to a
            // renamed listener, the new loop takes every connection.
            biased;
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => { backoff = Duration::from_millis(5); x }
                Err(e) => {
                    metrics.accept_errors.increment(1);
                    if is_transient_accept_error(&e) {
                        continue;
                    }
                    // EMFILE/ENFILE/ENOBUFS: spinning would burn the CPU the live
                    // connections need; back off and let descriptors free up.
                    crate::lograte::warn_limited!(listener = %name, "accept failed: {e}; backing off {backoff:?}");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        // Shutdown cancels this right after it stops the listeners; a reload does not.
        let all = &shared.lifecycle.stop_http;
        let listener_permit = match (&lrt.conn_limit, shard) {
            (Some(sem), Some(_)) => match slot(&stop, all, sem.clone().acquire_owned()).await {
                Some(p) => p.ok(),
                None => return,
            },
            _ => listener_permit,
        };
        // The process cap is shared by every listener, so it is taken after accept: an
        // idle accept loop holding a slot would starve the other listeners (with a cap of
        // 2 and two listeners, one connection in all). At the cap, each listener holds at
        // most this one accepted connection, unserved, until a slot frees.
        let permit = loop {
            let p = match slot(&stop, all, shared.conns.sem.clone().acquire_owned()).await {
                Some(Ok(p)) => p,
                _ => return,
            };
            // A lowered cap takes its slots back as they come free.
            if let Some(p) = shared.conns.pay_debt(p) {
                break p;
            }
        };
        metrics.accepted.increment(1);
        if let Some(c) = &shard_accepted {
            c.increment(1);
        }
        let shared = shared.clone();
        let name = name.clone();
        let m = metrics.clone();
        let gate = gate.clone();
        tokio::spawn(async move {
            m.open.increment(1.0);
            let guard = ConnGuard::new(permit, listener_permit, m.open.clone());
            handle_conn(stream, peer, name, lrt, shared, &m, guard, &gate).await;
        });
    }
}

/// Wait for a connection slot for a connection already accepted. A reload that removes
/// the listener meanwhile (`stop` alone) does not drop it: it is served once the slot
/// comes, and the loop ends after. Shutdown (`all`: `stop_http`) does.
async fn slot<T>(
    stop: &CancellationToken,
    all: &CancellationToken,
    acquire: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::pin!(acquire);
    tokio::select! {
        _ = stop.cancelled() => {}
        p = &mut acquire => return Some(p),
    }
    tokio::select! {
        _ = all.cancelled() => None,
        p = acquire => Some(p),
    }
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

#[allow(clippy::too_many_arguments)]
async fn handle_conn(
    mut stream: TcpStream,
    peer: SocketAddr,
    name: Arc<str>,
    lrt: ListenerRt,
    shared: Arc<Shared>,
    metrics: &ListenerMetrics,
    mut guard: ConnGuard,
    gate: &Arc<handshake::HandshakeGate>,
) {
    let _ = stream.set_nodelay(true);
    let _active = shared.lifecycle.http_active.enter();
    let snap = shared.load_full();
    let timeouts = &snap.config.timeouts;
    let deadline = Instant::now() + timeouts.handshake.0;
    // The accept loop read `lrt` before it waited in accept(): a reload since then (new
    // certificates, a new SNI set) must apply to this connection already.
    let now_rt = snap.listener(&name);
    let tls = match now_rt {
        Some(now) => now.tls.clone(),
        None => lrt.tls.clone(),
    };
    // The client behind a trusted load balancer's PROXY header, before TLS, under the
    // same deadline; an untrusted peer or a bad header ends the connection here.
    let ident = snap.listener(&name).map_or(&lrt.identity, |l| &l.identity);
    let Some(client) = proxy_header::client(&mut stream, peer, &name, ident, deadline).await else {
        return;
    };
    let info = ConnInfo {
        listener: name,
        peer,
        client,
        tls: tls.is_some(),
    };
    // The per-client cap, before any TLS work: a connection over it is closed at once.
    let limits = &snap.config.limits;
    match shared
        .clients
        .conns
        .try_acquire(info.client_id(), limits.max_connections_per_client)
    {
        Some(slot) => guard.hold_client(slot),
        None => {
            crate::metrics::client_capped("connections");
            tracing::debug!(listener = %info.listener, %peer, "connection over the per-client cap");
            return;
        }
    }
    let io = match &tls {
        None => ClientIo::Plain(stream),
        Some(config) => {
            let rt = now_rt.unwrap_or(&lrt);
            let cap = rt.handshake_limit.as_ref().map(|limiter| handshake::Cap {
                gate,
                limiter,
                per_source: rt.max_waiting_handshakes_per_client,
            });
            match handshake::accept(stream, config, cap, &info, deadline, metrics).await {
                Some(s) => ClientIo::Tls(Box::new(s)),
                None => return,
            }
        }
    };
    // The rest of the one deadline covers the first request head (hyper-util's own
    // protocol detection has no timeout, so we use hyper's http1 connection directly).
    let remaining = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    let ctx = Arc::new(proxy::ConnCtx::new(
        shared.clone(),
        snap.clone(),
        info,
        guard,
    ));
    let service = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, std::convert::Infallible>(proxy::handle(req, ctx).await) }
    });
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(remaining)
        .max_buf_size(snap.config.limits.max_header_bytes)
        .keep_alive(true);
    // A client that stops reading its response cannot hold the connection: writes that
    // make no progress for `timeouts.write` end it.
    let io = crate::io::WriteDeadline::new(io, snap.config.timeouts.write.0);
    let conn = b
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    drop(snap);
    let stop = shared.lifecycle.stop_http.clone();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                if e.is_timeout() {
                    metrics.handshake_timeouts.increment(1);
                } else if write_timed_out(&e) {
                    crate::metrics::write_timeout("client", "http");
                }
                tracing::debug!(%peer, "connection ended: {e}");
            }
        }
        _ = stop.cancelled() => {
            // Shutdown: finish the request in flight, then close (no new keep-alive request).
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Did hyper end the connection because a write to the client made no progress?
fn write_timed_out(e: &hyper::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if s.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut)
        {
            return true;
        }
        src = s.source();
    }
    false
}

/// Start serving `socks` as listener `name` (configured as `bind`), replacing a running
/// listener of the same name and bind address. `socks` is one freshly bound socket, or
/// the sockets a listener of the same address served on (one per shard), handed over by
/// a reload.
pub(crate) fn start(
    shared: &Arc<Shared>,
    name: String,
    bind: SocketAddr,
    mut socks: Vec<std::net::TcpListener>,
) -> std::io::Result<()> {
    let Some(sock) = socks.pop() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no socket to serve on",
        ));
    };
    let local_addr = sock.local_addr()?;
    let mut dups = Vec::new();
    let stop = shared.lifecycle.stop_all.child_token();
    let lname: Arc<str> = Arc::from(name.as_str());
    match shared.shards.get().filter(|s| !s.is_empty()) {
        None => {
            dups.push(sock.try_clone()?);
            // A handed-over socket beyond the one served would close here; a process
            // without shards only ever has one.
            drop(socks);
            let l = tokio::net::TcpListener::from_std(sock)?;
            let gate = handshake::HandshakeGate::new();
            tokio::spawn(serve(l, lname, shared.clone(), stop.clone(), None, gate));
        }
        Some(shards) => {
            // One accept loop per shard, each on a socket of its own bound to the same
            // address with SO_REUSEPORT: the kernel spreads connections over them and
            // wakes one shard per connection. A socket handed in without SO_REUSEPORT
            // (socket activation without `ReusePort=`) is shared by every shard instead.
            let reuse = socket2::SockRef::from(&sock).reuse_port().unwrap_or(false);
            let backlog = shared
                .load()
                .config
                .listeners
                .iter()
                .find(|l| l.name() == name)
                .map_or(1024, |l| l.backlog);
            while socks.len() + 1 < shards.len() {
                socks.push(match reuse {
                    true => self::bind(local_addr, backlog)?,
                    false => sock.try_clone()?,
                });
            }
            socks.push(sock);
            for s in &socks {
                dups.push(s.try_clone()?);
            }
            let gate = handshake::HandshakeGate::new();
            for (i, (h, sock)) in shards.iter().zip(socks).enumerate() {
                let (lname, shared, stop) = (lname.clone(), shared.clone(), stop.clone());
                let gate = gate.clone();
                h.spawn(async move {
                    match tokio::net::TcpListener::from_std(sock) {
                        Ok(l) => serve(l, lname, shared, stop, Some(i), gate).await,
                        Err(e) => {
                            tracing::error!(listener = %lname, "cannot serve on a shard: {e}")
                        }
                    }
                });
            }
        }
    }
    tracing::info!(listener = %name, "listening on {local_addr}");
    if let Ok(mut g) = shared.control.listeners.lock() {
        let running = RunningListener {
            stop,
            local_addr,
            sockets: dups,
        };
        if let Some(old) = g.insert((name, bind), running) {
            // A reload that ran before `run` started the listeners bound a socket of
            // its own for this one: keep one, or the other would serve on unseen and
            // hold a connection slot that shutdown waits for.
            old.stop.cancel();
        }
    }
    Ok(())
}
