//! The independent WebSocket load: a child process (this bench binary in the `ws-load`
//! role) that opens idle WebSockets the way a user's client does: tokio-tungstenite with
//! its default settings, TCP_NODELAY, opened at a fixed rate with a bounded number of
//! handshakes in flight, and held open until the bench closes its stdin.
//!
//! Being its own process it has its own descriptor budget (one per tunnel), so the
//! proxy's two per tunnel and the client's one never share a limit.

use super::{runtime, spawn_role_within, Proc, Result};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// How the load opens its tunnels.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Tunnels to open and hold.
    pub n: usize,
    /// Opens started per second at most (0: no pacing, only the in-flight bound).
    pub rate: u32,
    /// Handshakes (TCP + TLS + WebSocket) in flight at most.
    pub in_flight: usize,
    /// One 64-byte binary echo on each tunnel after its handshake.
    pub echo: bool,
}

/// The load process while it holds its tunnels (killed on drop).
pub struct Load {
    pub proc: Proc,
    /// Seconds from the first open started to the last handshake done.
    pub open_secs: f64,
}

/// Start the load against `addr` (TLS trusting the PEM certificate `cert` if given) and
/// wait until all `spec.n` tunnels are open (or it fails).
pub fn spawn_load(addr: SocketAddr, cert: Option<&Path>, spec: &LoadSpec) -> Result<Load> {
    let args = vec![
        addr.to_string(),
        cert.map_or(Ok("-".to_string()), |p| {
            p.to_str()
                .map(str::to_string)
                .ok_or_else(|| "path not UTF-8".to_string())
        })?,
        spec.n.to_string(),
        spec.rate.to_string(),
        spec.in_flight.to_string(),
        if spec.echo { "echo" } else { "none" }.to_string(),
    ];
    // Opening 9,000 at >= 2,000/s takes seconds; on a loaded 2-core machine with TLS, more.
    let (proc, line) = spawn_role_within("ws load", "ws-load", &args, Duration::from_secs(120))?;
    let line = line.trim();
    let Some(secs) = line.strip_prefix("OPEN ") else {
        return Err(format!("ws load said {line:?}").into());
    };
    Ok(Load {
        proc,
        open_secs: secs.parse()?,
    })
}

/// The `ws-load` role: `<addr> <cert.pem|-> <n> <rate> <in flight> <echo|none>`. Says
/// `OPEN <seconds>` once every tunnel is open (or `FAIL <why>`), then lives until its
/// stdin closes.
pub(super) fn ws_load_role(args: &[String]) -> Result<()> {
    let [addr, cert, n, rate, in_flight, echo] = args else {
        return Err("usage: <addr> <cert.pem|-> <n> <rate> <in flight> <echo|none>".into());
    };
    let addr: SocketAddr = addr.parse()?;
    let spec = LoadSpec {
        n: n.parse()?,
        rate: rate.parse()?,
        in_flight: in_flight.parse()?,
        echo: echo == "echo",
    };
    let tls = if cert == "-" {
        None
    } else {
        let der = CertificateDer::from_pem_file(Path::new(cert))?;
        Some(super::tls_connector(&der, false)?)
    };
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let rt = runtime();
    rt.block_on(async move {
        match open_all(addr, tls, &spec).await {
            Ok((held, secs)) => {
                println!("OPEN {secs:.3}");
                let mut sink = Vec::new();
                let _ = tokio::io::stdin().read_to_end(&mut sink).await;
                drop(held);
                Ok(())
            }
            Err(e) => {
                println!("FAIL {e}");
                Err(e)
            }
        }
    })
}

type Held = Vec<Box<dyn Send>>;

async fn open_all(
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsConnector>,
    spec: &LoadSpec,
) -> Result<(Held, f64)> {
    let held: Arc<Mutex<Held>> = Arc::new(Mutex::new(Vec::with_capacity(spec.n)));
    let gate = Arc::new(Semaphore::new(spec.in_flight.max(1)));
    let mut tick = (spec.rate > 0).then(|| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(spec.rate)));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..spec.n {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        let permit = gate.clone().acquire_owned().await?;
        let (tls, held, echo) = (tls.clone(), held.clone(), spec.echo);
        tasks.spawn(async move {
            let r = tokio::time::timeout(super::STEP, open_one(addr, tls, echo)).await;
            drop(permit);
            let ws = r.map_err(|_| "open: no progress within 10s".to_string())??;
            held.lock().map_err(|_| "poisoned")?.push(ws);
            Ok::<_, super::BoxError>(())
        });
        // Reap finished opens as we go (errors end the load at once).
        while let Some(r) = tasks.try_join_next() {
            r??;
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let secs = t0.elapsed().as_secs_f64();
    let held = std::mem::take(&mut *held.lock().map_err(|_| "poisoned")?);
    Ok((held, secs))
}

async fn open_one(
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsConnector>,
    echo: bool,
) -> Result<Box<dyn Send>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let url = format!("ws://{addr}/");
    match tls {
        None => {
            let (ws, _) = tokio_tungstenite::client_async(url, tcp).await?;
            Ok(Box::new(maybe_echo(ws, echo).await?))
        }
        Some(c) => {
            let t = c.connect(ServerName::try_from("localhost")?, tcp).await?;
            let (ws, _) = tokio_tungstenite::client_async(url, t).await?;
            Ok(Box::new(maybe_echo(ws, echo).await?))
        }
    }
}

async fn maybe_echo<S>(
    mut ws: tokio_tungstenite::WebSocketStream<S>,
    echo: bool,
) -> Result<tokio_tungstenite::WebSocketStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if echo {
        let msg = Message::binary(vec![7u8; super::PAYLOAD]);
        ws.send(msg.clone()).await?;
        match ws.next().await {
            Some(Ok(back)) if back == msg => {}
            other => return Err(format!("echo came back as {other:?}").into()),
        }
    }
    Ok(ws)
}
