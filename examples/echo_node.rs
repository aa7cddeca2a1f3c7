//! A standalone WebSocket echo node (`herdgate::echo::EchoNode`) for trying herdgate by
//! hand and for scripts/browser-check.sh.
//!
//! ```text
//! cargo run --example echo_node -- 127.0.0.1:9001
//! ```
//!
//! Port 0 picks a free port. Once listening it prints one line, `listening on ADDR`, to
//! stdout (scripts wait for it), and runs until SIGINT or SIGTERM.

use herdgate::echo::EchoNode;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() {
    let arg = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_string());
    let addr: SocketAddr = match arg.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("echo_node: bad address {arg:?}: {e}");
            std::process::exit(2);
        }
    };
    let node = match EchoNode::start(addr).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("echo_node: cannot listen on {addr}: {e}");
            std::process::exit(3);
        }
    };
    println!("listening on {}", node.addr);
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("echo_node: cannot install signal handlers");
        std::process::exit(1);
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let s = &node.stats;
    eprintln!(
        "echo_node {}: {} handshakes, {} messages echoed, {} still open",
        node.addr,
        s.accepted.load(Ordering::Relaxed),
        s.messages.load(Ordering::Relaxed),
        s.open.load(Ordering::Relaxed),
    );
}
