//! The CPU floor of a full TLS 1.3 handshake in rustls, with no sockets: a server and a
//! client connection in this one thread, records passed in memory, the server configured
//! like herdgate's listeners and the benches' (ring, ECDSA P-256 certificate, ALPN
//! http/1.1, stateless tickets, two tickets sent after each full handshake). It times the
//! server's calls only, so the figure is what a proxy built on rustls and ring spends per
//! full handshake before any socket, HTTP or WebSocket work: the floor under the "proxy
//! CPU per wss full handshake" of `cargo bench --bench proxy`.
//!
//! `cargo bench --bench tls_floor` (a few seconds).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

const HANDSHAKES: usize = 4000;

fn main() -> std::process::ExitCode {
    bench_main("tls_floor", Duration::from_secs(120), run)
}

async fn run() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cert = write_cert(dir.path())?;
    let mut server_cfg = (**tls_acceptor(&cert.cert, &cert.key)?.config()).clone();
    // HERDGATE_BENCH_TICKETS=n: tickets sent after a full handshake (rustls' default: 2).
    if let Some(n) = std::env::var("HERDGATE_BENCH_TICKETS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        server_cfg.send_tls13_tickets = n;
    }
    let tickets = server_cfg.send_tls13_tickets;
    let server_cfg = Arc::new(server_cfg);
    // The benches' client config (ALPN http/1.1), with resumption off: every handshake full.
    let client_cfg = tls_connector(&cert.der, false)?.config().clone();
    let name = rustls::pki_types::ServerName::try_from("localhost")?;

    let mut server_time = Duration::ZERO;
    let mut samples = Vec::with_capacity(HANDSHAKES);
    let mut suite = String::new();
    for i in 0..HANDSHAKES + 200 {
        let mut client = rustls::ClientConnection::new(client_cfg.clone(), name.clone())?;
        let t0 = Instant::now();
        let mut server = rustls::ServerConnection::new(server_cfg.clone())?;
        let mut spent = t0.elapsed();
        let mut buf = Vec::with_capacity(8192);
        // Until neither side has anything more to say (the tickets come after the
        // client's Finished).
        loop {
            buf.clear();
            client.write_tls(&mut buf)?;
            let c2s = !buf.is_empty();
            if c2s {
                let t = Instant::now();
                let mut rd = &buf[..];
                while !rd.is_empty() {
                    server.read_tls(&mut rd)?;
                    server.process_new_packets()?;
                }
                spent += t.elapsed();
            }
            buf.clear();
            let t = Instant::now();
            while server.wants_write() {
                server.write_tls(&mut buf)?;
            }
            spent += t.elapsed();
            let s2c = !buf.is_empty();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd)?;
                client.process_new_packets()?;
            }
            if !c2s && !s2c && !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
        }
        if i == 0 {
            suite = format!(
                "{:?} {:?}",
                server.protocol_version(),
                server.negotiated_cipher_suite().map(|s| s.suite())
            );
        }
        // The first 200 warm the caches and the allocator.
        if i >= 200 {
            server_time += spent;
            samples.push(spent.as_nanos() as u64);
        }
    }
    samples.sort_unstable();
    let mean = server_time.as_secs_f64() * 1e6 / HANDSHAKES as f64;
    let p50 = samples[samples.len() / 2] as f64 / 1e3;
    println!("## rustls full handshake, server side, in memory ({suite}; {HANDSHAKES} handshakes)");
    println!();
    println!("| server CPU per full handshake | mean | p50 |");
    println!("|---|---:|---:|");
    println!("| rustls 0.23 + ring, ECDSA P-256, {tickets} tickets | {mean:.0} µs | {p50:.0} µs |");
    Ok(())
}
