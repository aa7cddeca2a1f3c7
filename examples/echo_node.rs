//! A WebSocket echo node that remembers when it accepted each connection: the backend of
//! the storm bench, where "accepts per node per 100 ms" is read from the node itself.
//!
//! ```text
//! cargo run --release --example echo_node -- 127.0.0.1:9001 [--stats 127.0.0.1:9101]
//! ```
//!
//! On start it prints one line, `echo <addr> stats <addr>` (ports 0 are resolved), so a
//! parent process can learn both addresses. The stats port answers every TCP connection
//! with plain text and closes it:
//!
//! ```text
//! open <websockets open now>
//! accepts <n>
//! <unix time of each TCP accept, nanoseconds, one per line, in accept order>
//! arrivals <m>
//! <unix time the kernel received each connection's first bytes (SO_TIMESTAMPNS), ns>
//! ```
//!
//! The accept time is taken when the TCP connection is accepted, i.e. when herdgate
//! connects after admitting a client: the quantity a node's admission rate is about. A
//! thread of its own does nothing but accept and stamp, so the stamps are not held back
//! by the node's WebSocket work.
//! Kill it with SIGKILL to simulate a crash: the kernel closes every socket.
// Tests and load harnesses may panic on a broken fixture: unwrap/expect are denied only
// in the shipped code (Cargo.toml [workspace.lints]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Default)]
struct Accepts {
    times: Mutex<Vec<u64>>,
    /// The kernel's receive time of each connection's first bytes (SO_TIMESTAMPNS).
    arrivals: Mutex<Vec<u64>>,
    open: AtomicU64,
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Parses `ADDR [--stats ADDR]`; the stats port defaults to an ephemeral one.
fn parse(args: &[String]) -> Result<(SocketAddr, SocketAddr), String> {
    let mut listen = None;
    let mut stats = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--stats" => {
                let v = it.next().ok_or("--stats needs an address")?;
                stats = v.parse().map_err(|e| format!("--stats {v}: {e}"))?;
            }
            v if listen.is_none() => {
                listen = Some(v.parse().map_err(|e| format!("address {v}: {e}"))?);
            }
            v => return Err(format!("unexpected argument {v}")),
        }
    }
    Ok((listen.ok_or("usage: echo_node ADDR [--stats ADDR]")?, stats))
}

/// Runs the node until the process is killed. `args` excludes the program name.
pub fn run(args: &[String]) -> Result<(), String> {
    let (listen, stats) = parse(args)?;
    // Two descriptors per proxied client end here as one: raise the soft limit anyway.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(serve(listen, stats))
}

async fn serve(listen: SocketAddr, stats: SocketAddr) -> Result<(), String> {
    let listener = bind_blocking(listen).map_err(|e| format!("bind {listen}: {e}"))?;
    let stats_listener = TcpListener::bind(stats)
        .await
        .map_err(|e| format!("bind {stats}: {e}"))?;
    let a = listener.local_addr().map_err(|e| e.to_string())?;
    let s = stats_listener.local_addr().map_err(|e| e.to_string())?;
    println!("echo {a} stats {s}");
    let state = Arc::new(Accepts::default());
    tokio::spawn(stats_loop(stats_listener, state.clone()));
    // Accepts run on a thread of their own, blocked in accept(2): the stamp is taken as
    // soon as the kernel hands the connection over, not when the runtime's one worker
    // next polls an accept task between 3,000 WebSockets' tasks (a worker busy for 40 ms
    // then stamps a whole backlog at one instant, and the node's count in a 1 s window
    // shows forwards of 1.04 s).
    // Receive timestamps from the kernel: set on the listener before any connection, so
    // every packet is stamped as it arrives and every accepted socket inherits the option.
    if let Err(e) = nix::sys::socket::setsockopt(
        &listener,
        nix::sys::socket::sockopt::ReceiveTimestampns,
        &true,
    ) {
        eprintln!("echo_node: SO_TIMESTAMPNS: {e}");
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<std::net::TcpStream>();
    let accepts = state.clone();
    std::thread::Builder::new()
        .name("echo-accept".into())
        .spawn(move || loop {
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors or similar: back off a little, keep serving.
                    eprintln!("echo_node: accept: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
            };
            if let Ok(mut t) = accepts.times.lock() {
                t.push(unix_nanos());
            }
            if tx.send(stream).is_err() {
                return;
            }
        })
        .map_err(|e| format!("accept thread: {e}"))?;
    while let Some(stream) = rx.recv().await {
        let _ = stream.set_nodelay(true);
        let Ok(stream) = stream
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpStream::from_std(stream))
        else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            if let Some(t) = first_bytes_arrival(&stream).await {
                if let Ok(mut a) = state.arrivals.lock() {
                    a.push(t);
                }
            }
            let cfg = WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(0);
            let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(cfg)).await
            else {
                return;
            };
            state.open.fetch_add(1, Ordering::Relaxed);
            let (mut tx, mut rx) = ws.split();
            while let Some(Ok(m)) = rx.next().await {
                if m.is_close() {
                    let _ = tx.close().await;
                    break;
                }
                if (m.is_text() || m.is_binary()) && tx.send(m).await.is_err() {
                    break;
                }
            }
            state.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    Err("accept thread ended".into())
}

/// When the kernel received the first bytes waiting on `s` (herdgate's upgrade request,
/// written right after its connect): peeked, so the WebSocket handshake still reads them.
/// Unlike the accept stamp, no scheduling of this process delays it.
async fn first_bytes_arrival(s: &tokio::net::TcpStream) -> Option<u64> {
    use std::os::fd::AsRawFd;
    loop {
        s.readable().await.ok()?;
        match s.try_io(tokio::io::Interest::READABLE, || peek_stamp(s.as_raw_fd())) {
            Ok(t) => return t,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return None,
        }
    }
}

fn peek_stamp(fd: std::os::fd::RawFd) -> std::io::Result<Option<u64>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut b = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut b)];
    let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let msg = recvmsg::<()>(
        fd,
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(std::io::Error::from)?;
    if msg.bytes == 0 {
        return Ok(None);
    }
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmTimestampns(ts) = c {
            let ns = u64::try_from(ts.tv_sec()).unwrap_or(0) * 1_000_000_000
                + u64::try_from(ts.tv_nsec()).unwrap_or(0);
            return Ok(Some(ns));
        }
    }
    Ok(None)
}

/// A blocking listener with tokio's backlog (1,024; std's is 128, which a herd without
/// admission overflows).
fn bind_blocking(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

async fn stats_loop(listener: TcpListener, state: Arc<Accepts>) {
    while let Ok((mut s, _)) = listener.accept().await {
        let times = state.times.lock().map(|t| t.clone()).unwrap_or_default();
        let arrivals = state.arrivals.lock().map(|t| t.clone()).unwrap_or_default();
        let mut out = format!(
            "open {}\naccepts {}\n",
            state.open.load(Ordering::Relaxed),
            times.len()
        );
        for t in times {
            out.push_str(&t.to_string());
            out.push('\n');
        }
        out.push_str(&format!("arrivals {}\n", arrivals.len()));
        for t in arrivals {
            out.push_str(&t.to_string());
            out.push('\n');
        }
        tokio::spawn(async move {
            let _ = s.write_all(out.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}

#[allow(dead_code)] // the storm bench includes this file as a module and calls `run`
fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo_node: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
