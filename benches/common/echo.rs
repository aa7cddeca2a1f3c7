//! The echo nodes, each a child process (this bench binary in a child role, see
//! [`child_role`](super::child_role)), listening on ports from [`free_addr`]:
//!
//! - the lean echo ([`spawn_echo`]; proxy and idle_memory): a WebSocket echo written here,
//!   plain and behind TLS, that buffers nothing while idle;
//! - the accept-logging node ([`spawn_accept_log_echo`]; storm): `examples/echo_node.rs`,
//!   which stamps every TCP accept and reports the stamps on a stats port.

// The example is a program of its own too (`cargo run --example echo_node`).
#[path = "../../examples/echo_node.rs"]
mod echo_node;

use super::{
    free_addr, retry, runtime, spawn_role, step, tls_acceptor, Cert, Proc, Result, SPAWN_TRIES,
};
use base64::Engine;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// `raw` (default: the lean echo of this file) or `tungstenite` (herdgate_echo::EchoNode
/// in plain, tokio-tungstenite behind TLS): the implementation of the lean echo role.
pub const ECHO_ENV: &str = "HERDGATE_BENCH_ECHO";

// ---------------------------------------------------------------------------------------
// The lean echo

/// The lean echo node process: plain and TLS listeners.
pub struct EchoProc {
    pub proc: Proc,
    pub plain: SocketAddr,
    pub tls: SocketAddr,
}

pub async fn spawn_echo(cert: &Cert) -> Result<EchoProc> {
    retry(SPAWN_TRIES, async || {
        let (plain, tls) = (free_addr()?, free_addr()?);
        let args = [plain, tls].map(|a| a.to_string());
        let args = [&args[..], &[path_arg(&cert.cert)?, path_arg(&cert.key)?]].concat();
        let (proc, line) = spawn_role("echo node", "echo", &args)?;
        if line.trim() != format!("READY {plain} {tls}") {
            return Err(format!("echo node said {line:?}").into());
        }
        Ok(EchoProc { proc, plain, tls })
    })
    .await
}

fn path_arg(p: &Path) -> Result<String> {
    Ok(p.to_str().ok_or("path not UTF-8")?.to_string())
}

/// The lean echo role: `<plain addr> <tls addr> <cert.pem> <key.pem>`; says `READY <plain>
/// <tls>` when listening and lives until its stdin closes.
pub(super) fn lean_echo_role(args: &[String]) -> Result<()> {
    let [plain, tls, cert, key] = args else {
        return Err("usage: <plain addr> <tls addr> <cert.pem> <key.pem>".into());
    };
    let (plain, tls): (SocketAddr, SocketAddr) = (plain.parse()?, tls.parse()?);
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let kind = std::env::var(ECHO_ENV).unwrap_or_else(|_| "raw".into());
    let rt = runtime();
    rt.block_on(async move {
        let acceptor = tls_acceptor(Path::new(cert), Path::new(key))?;
        let plain = TcpListener::bind(plain).await?;
        let tls = TcpListener::bind(tls).await?;
        println!("READY {} {}", plain.local_addr()?, tls.local_addr()?);
        let _node;
        match kind.as_str() {
            "raw" => {
                tokio::spawn(accept_loop(plain, None));
                tokio::spawn(accept_loop(tls, Some(acceptor)));
            }
            "tungstenite" => {
                _node = herdgate_echo::EchoNode::from_listener(plain);
                tokio::spawn(tungstenite_tls_loop(tls, acceptor));
            }
            other => return Err(format!("{ECHO_ENV}={other}: use raw or tungstenite").into()),
        }
        // Live until the bench closes our stdin (or dies).
        let mut sink = Vec::new();
        let _ = tokio::io::stdin().read_to_end(&mut sink).await;
        Ok(())
    })
}

async fn accept_loop(l: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
    loop {
        let Ok((s, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let _ = s.set_nodelay(true);
        let tls = tls.clone();
        tokio::spawn(async move {
            let _ = match tls {
                None => raw_echo(s).await,
                Some(a) => match a.accept(s).await {
                    Ok(t) => raw_echo(t).await,
                    Err(e) => Err(e.into()),
                },
            };
        });
    }
}

/// A lean WebSocket echo: the handshake, then every frame back with its opcode and FIN bit
/// (so fragments come back as fragments), Ping answered by Pong, Close answered and ended.
async fn raw_echo<S: AsyncRead + AsyncWrite + Unpin>(s: S) -> Result<()> {
    let mut s = BufReader::with_capacity(2048, s);
    let mut key = None;
    let mut head_len = 0usize;
    loop {
        let mut line = String::new();
        if s.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        head_len += line.len();
        if head_len > 8192 {
            return Err("head too long".into());
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("sec-websocket-key") {
                key = Some(value.trim().to_string());
            }
        }
    }
    let key = key.ok_or("no Sec-WebSocket-Key")?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(ctx.finish());
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    s.get_mut().write_all(resp.as_bytes()).await?;
    let mut out = Vec::new();
    loop {
        let mut h = [0u8; 2];
        if let Err(e) = s.read_exact(&mut h).await {
            return if e.kind() == io::ErrorKind::UnexpectedEof {
                Ok(())
            } else {
                Err(e.into())
            };
        }
        let (b0, masked) = (h[0], h[1] & 0x80 != 0);
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                s.read_exact(&mut b).await?;
                u16::from_be_bytes(b) as u64
            }
            127 => {
                let mut b = [0u8; 8];
                s.read_exact(&mut b).await?;
                u64::from_be_bytes(b)
            }
            n => n as u64,
        };
        if len > 16 << 20 {
            return Err("frame too large".into());
        }
        let mut mask = [0u8; 4];
        if masked {
            s.read_exact(&mut mask).await?;
        }
        let opcode = b0 & 0x0f;
        let reply_b0 = if opcode == 0x9 { 0x8a } else { b0 };
        out.clear();
        out.push(reply_b0);
        match len {
            0..=125 => out.push(len as u8),
            126..=0xffff => {
                out.push(126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(127);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        let start = out.len();
        out.resize(start + len as usize, 0);
        s.read_exact(&mut out[start..]).await?;
        if masked {
            for (i, b) in out[start..].iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        if opcode == 0xA {
            continue; // unsolicited Pong
        }
        s.get_mut().write_all(&out).await?;
        if opcode == 0x8 {
            let _ = s.get_mut().shutdown().await;
            return Ok(());
        }
        if out.capacity() > 4096 {
            out = Vec::new();
        }
    }
}

async fn tungstenite_tls_loop(l: TcpListener, acceptor: tokio_rustls::TlsAcceptor) {
    use futures_util::{SinkExt, StreamExt};
    loop {
        let Ok((s, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let _ = s.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(t) = acceptor.accept(s).await else {
                return;
            };
            let Ok(ws) = tokio_tungstenite::accept_async(t).await else {
                return;
            };
            let (mut tx, mut rx) = ws.split();
            while let Some(Ok(m)) = rx.next().await {
                if (m.is_text() || m.is_binary()) && tx.send(m).await.is_err() {
                    break;
                }
            }
        });
    }
}

// ---------------------------------------------------------------------------------------
// The accept-logging node (examples/echo_node.rs)

/// The accept-logging echo node process: its WebSocket address and its stats address.
pub struct AcceptLogEcho {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub stats_addr: SocketAddr,
}

/// What an accept-logging node has seen so far.
pub struct EchoStats {
    /// WebSockets open now.
    pub open: u64,
    /// The Unix time (ns) of each TCP accept, in accept order.
    pub accepts: Vec<u64>,
    /// The Unix time (ns) the node's kernel received each connection's first bytes
    /// (herdgate's upgrade request): no scheduling of the node process in it.
    pub arrivals: Vec<u64>,
}

pub async fn spawn_accept_log_echo() -> Result<AcceptLogEcho> {
    retry(SPAWN_TRIES, async || {
        let (addr, stats) = (free_addr()?, free_addr()?);
        let args = [addr.to_string(), "--stats".into(), stats.to_string()];
        let (proc, line) = spawn_role("echo node", "echo-node", &args)?;
        if line.trim() != format!("echo {addr} stats {stats}") {
            return Err(format!("echo node said {line:?}").into());
        }
        Ok(AcceptLogEcho {
            proc,
            addr,
            stats_addr: stats,
        })
    })
    .await
}

impl AcceptLogEcho {
    /// Its stats port's answer: `open <n>`, `accepts <n>` and one stamp a line, then
    /// `arrivals <m>` and one stamp a line.
    pub async fn stats(&self) -> Result<EchoStats> {
        let addr = self.stats_addr;
        let text = step(&format!("echo stats {addr}"), async {
            let mut s = TcpStream::connect(addr).await?;
            let mut text = String::new();
            s.read_to_string(&mut text).await?;
            Ok::<_, io::Error>(text)
        })
        .await??;
        let mut lines = text.lines();
        let open = lines
            .next()
            .and_then(|l| l.strip_prefix("open "))
            .and_then(|v| v.parse().ok())
            .ok_or("echo stats: no open line")?;
        let count = |l: Option<&str>, what: &str| {
            l.and_then(|l| l.strip_prefix(what))
                .and_then(|v| v.trim().parse::<usize>().ok())
        };
        let n = count(lines.next(), "accepts ").ok_or("echo stats: no accepts line")?;
        let accepts = lines
            .by_ref()
            .take(n)
            .filter_map(|l| l.parse().ok())
            .collect();
        let m = count(lines.next(), "arrivals ").unwrap_or(0);
        let arrivals = lines.take(m).filter_map(|l| l.parse().ok()).collect();
        Ok(EchoStats {
            open,
            accepts,
            arrivals,
        })
    }
}

/// The accept-logging role: examples/echo_node.rs's arguments (`ADDR --stats ADDR`).
pub(super) fn accept_log_role(args: &[String]) -> Result<()> {
    Ok(echo_node::run(args)?)
}
