//! Addresses and raw connections on loopback.

use super::within;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use tokio::net::{TcpSocket, TcpStream};

/// The lowest port [`free_addr`] hands out: below it live the well-known and registered
/// ports of services a developer's machine may run.
const LOWEST: u16 = 10_000;

/// A loopback address whose port is outside the kernel's ephemeral port range and was free
/// a moment ago (bound and released here). For a port that a child process, or a config
/// written before the bind, must use.
///
/// Why not a port bound at 0 and released: that port comes from the ephemeral range, so
/// the kernel may hand it out again as the source port of any outgoing connection,
/// including the test's own connect to it before the child has bound it, and on loopback
/// that connect meets itself (TCP simultaneous open) and looks like a listener. A port
/// outside the range is never chosen as a source port.
///
/// In-process servers bind port 0 and report the port they got; they need none of this.
pub fn free_addr() -> SocketAddr {
    // Never the same port twice in one process (two calls before either is bound).
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let (low, high) = ephemeral_range();
    let below = LOWEST..low.max(LOWEST);
    let above = high.saturating_add(1).max(LOWEST)..u16::MAX;
    let total = below.len() + above.len();
    assert!(
        total > 0,
        "no port outside the ephemeral range {low}-{high} (/proc/sys/net/ipv4/ip_local_port_range)"
    );
    for _ in 0..1000 {
        let i = rand::random::<usize>() % total;
        let port = if i < below.len() {
            below.start + i as u16
        } else {
            above.start + (i - below.len()) as u16
        };
        if !GIVEN
            .lock()
            .unwrap()
            .get_or_insert_with(HashSet::new)
            .insert(port)
        {
            continue;
        }
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        if claim(port) && std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free loopback port outside the ephemeral range {low}-{high} in 1000 tries");
}

/// Claims `port` for this process against every other test process on the machine: one
/// lock file per port, held until this process exits (the kernel drops the lock then).
/// nextest runs each test in a process of its own, and two of them could otherwise pick
/// the same free port at once: herdgate binds with SO_REUSEPORT, so both binds succeed
/// and the kernel spreads one test's connections over the other's listener (seen as a
/// connection reset by a herdgate that was shutting down). Without a usable lock
/// directory, the bind check alone decides.
fn claim(port: u16) -> bool {
    static HELD: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("herdgate-test-ports");
    let file = std::fs::create_dir_all(&dir).and_then(|()| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
    });
    let Ok(file) = file else {
        return true;
    };
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {
            HELD.lock().unwrap().push(file);
            true
        }
        Err(_) => false,
    }
}

/// The kernel's ephemeral port range (inclusive).
fn ephemeral_range() -> (u16, u16) {
    const PATH: &str = "/proc/sys/net/ipv4/ip_local_port_range";
    let text = std::fs::read_to_string(PATH).unwrap_or_else(|e| panic!("read {PATH}: {e}"));
    let mut ports = text.split_whitespace().map(|p| {
        p.parse::<u16>()
            .unwrap_or_else(|e| panic!("{PATH}: {text:?}: {e}"))
    });
    match (ports.next(), ports.next()) {
        (Some(low), Some(high)) => (low, high),
        _ => panic!("{PATH}: expected two ports, got {text:?}"),
    }
}

/// A TCP connection to `addr` from `local` (any 127.0.0.0/8 address works on Linux
/// loopback, which lets one test act as many client IPs).
pub async fn tcp_from(local: Option<IpAddr>, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    if let Some(ip) = local {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let s = within(sock.connect(addr)).await?;
    s.set_nodelay(true)?;
    Ok(s)
}
