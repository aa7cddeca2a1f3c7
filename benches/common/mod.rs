//! Shared by the benches: child processes (killed on drop), the echo node role, a raw
//! WebSocket client, herdgate's config, and /proc readings.
//!
//! Everything runs on 127.0.0.1. herdgate runs as its own process (the release binary that
//! `cargo bench` builds), the echo node as a second process (this bench binary started
//! again with `HERDGATE_BENCH_ROLE=echo`), and the clients in the bench process: each
//! process keeps its own descriptor budget, so 9,000 tunnels (18,000 descriptors in
//! herdgate) fit under a 20,000 limit.
#![allow(dead_code)] // each bench uses a part

use base64::Engine;
use socket2::SockRef;
use std::io::{self, BufRead, BufReader as StdBufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::rustls;

pub const ROLE_ENV: &str = "HERDGATE_BENCH_ROLE";
const CERT_ENV: &str = "HERDGATE_BENCH_CERT";
const KEY_ENV: &str = "HERDGATE_BENCH_KEY";
/// `raw` (default: a lean echo written here) or `tungstenite` (herdgate_echo::EchoNode).
pub const ECHO_ENV: &str = "HERDGATE_BENCH_ECHO";

/// Bound on every single network step of a bench (a hang is an error, not a result).
pub const STEP: Duration = Duration::from_secs(10);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, BoxError>;

pub async fn step<F: std::future::Future>(what: &str, f: F) -> Result<F::Output> {
    tokio::time::timeout(STEP, f)
        .await
        .map_err(|_| format!("{what}: no progress within {STEP:?}").into())
}

/// `cargo bench` passes `--bench`; `cargo test --benches` does not (then we do nothing:
/// these loads are not tests).
pub fn invoked_by_cargo_bench() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// If this process was started as a child role, run it and return its exit code.
pub fn child_role() -> Option<ExitCode> {
    match std::env::var(ROLE_ENV).ok()?.as_str() {
        "echo" => Some(match echo_role() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench echo node: {e}");
                ExitCode::FAILURE
            }
        }),
        other => {
            eprintln!("unknown {ROLE_ENV}={other}");
            Some(ExitCode::FAILURE)
        }
    }
}

/// Run a bench body within `budget`. SIGINT and SIGTERM end it early too, through the
/// normal return path, so the child processes are killed on the way out.
pub fn run_main<F: std::future::Future<Output = Result<()>>>(
    name: &str,
    budget: Duration,
    body: F,
) -> ExitCode {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = runtime();
    let res: Result<()> = rt.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            r = tokio::time::timeout(budget, body) => {
                r.unwrap_or_else(|_| Err(format!("exceeded its {budget:?} budget").into()))
            }
            _ = term.recv() => Err("terminated".into()),
            _ = int.recv() => Err("interrupted".into()),
        }
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name} bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ---------------------------------------------------------------------------------------
// Child processes

/// A child process that is killed (and reaped) when dropped: on success, error or panic.
pub struct Proc {
    pub name: &'static str,
    child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Err when the process has exited (it should not have).
    pub fn alive(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(st) => Err(format!("{} exited early: {st}", self.name).into()),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // nginx's workers are children of its master and outlive a killed master: note
        // them first, kill the master (so it cannot respawn them), then them.
        let kids = children_of(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in kids {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Pids of the live direct children of `pid` (from /proc/*/stat).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut kids = Vec::new();
    for e in dir.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // After the parenthesised command name: state, then ppid.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            kids.push(child);
        }
    }
    kids.sort_unstable();
    kids
}

/// A self-signed certificate for `localhost`, written as PEM into `dir`.
pub struct Cert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: rustls::pki_types::CertificateDer<'static>,
}

pub fn write_cert(dir: &Path) -> Result<Cert> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem())?;
    std::fs::write(&key, ck.key_pair.serialize_pem())?;
    Ok(Cert {
        cert,
        key,
        der: ck.cert.der().clone(),
    })
}

/// The echo node process: plain and TLS listeners on ephemeral ports.
pub struct EchoProc {
    pub proc: Proc,
    pub plain: SocketAddr,
    pub tls: SocketAddr,
}

pub fn spawn_echo(cert: &Cert) -> Result<EchoProc> {
    let mut child = Command::new(std::env::current_exe()?)
        .env(ROLE_ENV, "echo")
        .env(CERT_ENV, &cert.cert)
        .env(KEY_ENV, &cert.key)
        // Its stdin is its lifeline: when this process dies the pipe closes and it exits.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("echo node: no stdout")?;
    let mut proc = Proc {
        name: "echo node",
        child,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = StdBufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(STEP)
        .map_err(|_| "echo node did not report its addresses")?;
    proc.alive()?;
    // "READY <plain> <tls>"
    let mut it = line.split_whitespace();
    if it.next() != Some("READY") {
        return Err(format!("echo node said {line:?}").into());
    }
    let plain = it.next().ok_or("echo: no plain addr")?.parse()?;
    let tls = it.next().ok_or("echo: no tls addr")?.parse()?;
    Ok(EchoProc { proc, plain, tls })
}

/// herdgate as a process, with a ws and a wss listener in front of one echo node.
pub struct HerdgateProc {
    pub proc: Proc,
    pub ws: SocketAddr,
    pub wss: SocketAddr,
    pub admin: SocketAddr,
}

fn free_port() -> Result<u16> {
    // Bind, read, release: a tiny race with other processes, acceptable for a bench.
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn herdgate_config(
    ws: SocketAddr,
    wss: SocketAddr,
    admin: SocketAddr,
    cert: &Cert,
    node: SocketAddr,
) -> String {
    format!(
        r#"# generated by benches/common: admission wide open, idle timeout off
[admin]
bind = "{admin}"

[timeouts]
idle_tunnel = "0ms"

[[listener]]
name = "ws"
bind = "{ws}"
backlog = 4096

[[listener]]
name = "wss"
bind = "{wss}"
backlog = 4096
[[listener.tls.cert]]
cert = "{cert}"
key = "{key}"
server_names = ["localhost"]

[[route]]
pool = "echo"

[[pool]]
name = "echo"
admit_rate = 10000000
admit_burst = 1000000

[[pool.node]]
name = "echo-1"
addr = "{node}"
"#,
        cert = cert.cert.display(),
        key = cert.key.display(),
    )
}

/// Start herdgate (`extra_env`: e.g. a preload library for analysis).
pub async fn spawn_herdgate(
    dir: &Path,
    cert: &Cert,
    node: SocketAddr,
    extra_env: &[(&str, std::ffi::OsString)],
    bin: Option<&Path>,
) -> Result<HerdgateProc> {
    let ws: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let wss: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let path = dir.join("herdgate.toml");
    std::fs::write(&path, herdgate_config(ws, wss, admin, cert, node))?;
    // `bin`: another build (before/after comparisons); by default the one cargo built.
    let mut cmd = Command::new(bin.unwrap_or(Path::new(env!("CARGO_BIN_EXE_herdgate"))));
    // tokio's default: one worker thread per CPU (2 here); the knob is for experiments.
    if let Ok(n) = std::env::var("HERDGATE_BENCH_HERDGATE_THREADS") {
        cmd.env("TOKIO_WORKER_THREADS", n);
    }
    let child = cmd
        .arg("run")
        .arg("--config")
        .arg(&path)
        .env("HERDGATE_LOG", "warn")
        .envs(extra_env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut proc = Proc {
        name: "herdgate",
        child,
    };
    let deadline = Instant::now() + STEP;
    for addr in [ws, wss, admin] {
        loop {
            proc.alive()?;
            if TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("herdgate did not listen on {addr}").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(HerdgateProc {
        proc,
        ws,
        wss,
        admin,
    })
}

// ---------------------------------------------------------------------------------------
// The proxies compared: herdgate, nginx and HAProxy, each with a ws and a wss listener in
// front of the same echo node (plain TCP to the node), the same certificate, logging off.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    Herdgate,
    Nginx,
    Haproxy,
}

impl ProxyKind {
    pub const ALL: [ProxyKind; 3] = [ProxyKind::Herdgate, ProxyKind::Nginx, ProxyKind::Haproxy];

    pub fn label(self) -> &'static str {
        match self {
            ProxyKind::Herdgate => "herdgate",
            ProxyKind::Nginx => "nginx",
            ProxyKind::Haproxy => "HAProxy",
        }
    }

    /// The executable, or None when it is not installed. HERDGATE_BENCH_NGINX /
    /// HERDGATE_BENCH_HAPROXY name another one.
    pub fn binary(self) -> Option<PathBuf> {
        let (env, name) = match self {
            ProxyKind::Herdgate => return Some(PathBuf::from(env!("CARGO_BIN_EXE_herdgate"))),
            ProxyKind::Nginx => ("HERDGATE_BENCH_NGINX", "nginx"),
            ProxyKind::Haproxy => ("HERDGATE_BENCH_HAPROXY", "haproxy"),
        };
        if let Some(p) = std::env::var_os(env) {
            return Some(PathBuf::from(p)).filter(|p| p.is_file());
        }
        // sbin is often missing from a user's PATH; both packages install there.
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    }

    /// `nginx -v` / `haproxy -v` (first line), or the crate version.
    pub fn version(self) -> String {
        let Some(bin) = self.binary() else {
            return "not installed".into();
        };
        if self == ProxyKind::Herdgate {
            return format!("herdgate {}", env!("CARGO_PKG_VERSION"));
        }
        match Command::new(bin).arg("-v").output() {
            // nginx prints its version on stderr, HAProxy on stdout.
            Ok(o) => String::from_utf8_lossy(if o.stdout.is_empty() {
                &o.stderr
            } else {
                &o.stdout
            })
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string(),
            Err(e) => format!("version unknown: {e}"),
        }
    }
}

/// The proxies selected by HERDGATE_BENCH_PROXIES (comma separated: herdgate, nginx,
/// haproxy; default all) that are installed. A missing one is skipped with a note.
pub fn proxies_to_run() -> (Vec<ProxyKind>, Vec<String>) {
    let sel = std::env::var("HERDGATE_BENCH_PROXIES").ok();
    let mut kinds = Vec::new();
    let mut notes = Vec::new();
    for k in ProxyKind::ALL {
        let name = k.label().to_ascii_lowercase();
        if let Some(sel) = &sel {
            if !sel.split(',').any(|s| s.trim().eq_ignore_ascii_case(&name)) {
                continue;
            }
        }
        match k.binary() {
            Some(_) => kinds.push(k),
            None => {
                let note = format!(
                    "{}: skipped, `{name}` not found (PATH, /usr/sbin, /usr/local/sbin); \
                     install it (Debian: apt-get install {name}) to compare",
                    k.label()
                );
                println!("{note}");
                notes.push(note);
            }
        }
    }
    (kinds, notes)
}

/// A proxy process with a ws and a wss listener.
pub struct Proxy {
    pub kind: ProxyKind,
    pub proc: Proc,
    pub ws: SocketAddr,
    pub wss: SocketAddr,
    /// herdgate's admin listener (tunnel counts), None for the others.
    pub admin: Option<SocketAddr>,
}

impl Proxy {
    /// The process and its children (nginx: the master and its workers).
    pub fn pids(&self) -> Vec<u32> {
        let mut v = vec![self.proc.pid()];
        v.extend(children_of(self.proc.pid()));
        v
    }

    /// Sum over `pids()` of a /proc/<pid>/status field, KiB.
    pub fn status_kib(&self, field: &str) -> Result<u64> {
        self.pids().into_iter().map(|p| status_kib(p, field)).sum()
    }

    /// Sum over `pids()` of the open descriptors.
    pub fn fds(&self) -> Result<usize> {
        let mut n = 0;
        for p in self.pids() {
            n += std::fs::read_dir(format!("/proc/{p}/fd"))?.count();
        }
        Ok(n)
    }

    pub fn cpu_secs(&self) -> Result<f64> {
        self.pids().into_iter().map(cpu_secs).sum()
    }
}

/// Start `kind` in front of `node` with its config written into `dir`.
pub async fn spawn_proxy(
    kind: ProxyKind,
    dir: &Path,
    cert: &Cert,
    node: SocketAddr,
    extra_env: &[(&str, std::ffi::OsString)],
) -> Result<Proxy> {
    if kind == ProxyKind::Herdgate {
        let h = spawn_herdgate(dir, cert, node, extra_env, None).await?;
        return Ok(Proxy {
            kind,
            proc: h.proc,
            ws: h.ws,
            wss: h.wss,
            admin: Some(h.admin),
        });
    }
    let bin = kind
        .binary()
        .ok_or_else(|| format!("{} is not installed", kind.label()))?;
    let ws: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let wss: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut cmd = Command::new(bin);
    let name = match kind {
        ProxyKind::Nginx => {
            let conf = dir.join("nginx.conf");
            std::fs::write(&conf, nginx_config(dir, ws, wss, cert, node))?;
            // -p/-e: prefix and the startup error log in `dir`, nothing under /var.
            cmd.arg("-p")
                .arg(dir)
                .arg("-e")
                .arg(dir.join("nginx-error.log"))
                .arg("-c")
                .arg(&conf)
                .arg("-g")
                .arg("daemon off;");
            "nginx"
        }
        ProxyKind::Haproxy => {
            // HAProxy wants the certificate and its key in one PEM.
            let pem = dir.join("haproxy.pem");
            let mut both = std::fs::read(&cert.cert)?;
            both.extend(std::fs::read(&cert.key)?);
            std::fs::write(&pem, both)?;
            let conf = dir.join("haproxy.cfg");
            std::fs::write(&conf, haproxy_config(ws, wss, &pem, node))?;
            cmd.arg("-f").arg(&conf).arg("-db");
            "HAProxy"
        }
        ProxyKind::Herdgate => unreachable!("handled above"),
    };
    let child = cmd
        .envs(extra_env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut proc = Proc { name, child };
    // Ready = a WebSocket opens through each listener (a worker is accepting, not just
    // the listening socket bound).
    let deadline = Instant::now() + STEP;
    for (addr, tls) in [(ws, false), (wss, true)] {
        let t = Target {
            addr,
            tls: if tls {
                Some(tls_connector(&cert.der, false)?)
            } else {
                None
            },
        };
        loop {
            proc.alive()?;
            let attempt = tokio::time::timeout(Duration::from_secs(2), open(&t, false)).await;
            if let Ok(Ok(o)) = attempt {
                step("close", close(o.conn)).await??;
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{name} did not serve WebSockets on {addr}").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(Proxy {
        kind,
        proc,
        ws,
        wss,
        admin: None,
    })
}

/// A number from the environment, or `default`.
fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// nginx: 2 worker processes (one per core, = `auto` here; herdgate runs 2 tokio worker
/// threads), WebSocket proxying as nginx documents it, TLS with the same certificate,
/// TLS 1.2/1.3, session cache and tickets on, access log off, errors only.
pub fn nginx_config(
    dir: &Path,
    ws: SocketAddr,
    wss: SocketAddr,
    cert: &Cert,
    node: SocketAddr,
) -> String {
    let d = dir.display();
    let workers = env_or("HERDGATE_BENCH_NGINX_WORKERS", 2);
    format!(
        r#"# generated by benches/common
worker_processes {workers};
worker_rlimit_nofile 20000;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log error;

events {{
    worker_connections 20000;
}}

http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    upstream echo {{
        server {node};
    }}

    ssl_certificate     {cert};
    ssl_certificate_key {key};
    ssl_protocols       TLSv1.2 TLSv1.3;
    ssl_session_cache   shared:SSL:10m;
    ssl_session_tickets on;

    server {{
        listen {ws} backlog=4096;
        listen {wss} ssl backlog=4096;
        server_name localhost;

        location / {{
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            # Idle tunnels stay open (herdgate: idle_tunnel = "0ms").
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
"#,
        cert = cert.cert.display(),
        key = cert.key.display(),
    )
}

/// HAProxy: one process, `nbthread 2` (its default on 2 CPUs), HTTP mode (it switches a
/// connection to a tunnel on the 101), TLS with the same certificate, session cache
/// (default 20,000 entries) and tickets on (default), no `log` lines. maxconn 9,600: its
/// descriptor need (2 per tunnel) fits the 20,000 limit of this machine.
pub fn haproxy_config(ws: SocketAddr, wss: SocketAddr, pem: &Path, node: SocketAddr) -> String {
    let threads = env_or("HERDGATE_BENCH_HAPROXY_THREADS", 2);
    format!(
        r#"# generated by benches/common
global
    nbthread {threads}
    maxconn 9600
    tune.ssl.cachesize 20000

defaults
    mode http
    maxconn 9600
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    # Idle tunnels stay open (herdgate: idle_tunnel = "0ms").
    timeout tunnel 1h

frontend fe
    backlog 4096
    bind {ws}
    bind {wss} ssl crt {pem} alpn http/1.1
    default_backend echo

backend echo
    server echo-1 {node}
"#,
        pem = pem.display(),
    )
}

/// "TLSv1_3 TLS13_AES_256_GCM_SHA384 X25519 Full": what a WebSocket to `t` negotiated
/// (printed so that the TLS work compared is the same). The WebSocket is opened and
/// closed properly, so a TLS 1.3 ticket sent after the handshake reaches the client's
/// store and a second call shows whether resumption works.
pub async fn tls_summary(t: &Target) -> Result<String> {
    let Some(c) = &t.tls else {
        return Ok("plain".into());
    };
    let tcp = step("connect", TcpStream::connect(t.addr)).await??;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let s = step("tls", c.connect(name, tcp)).await??;
    let conn = s.get_ref().1;
    let info = format!(
        "{:?} {:?} {:?} {:?}",
        conn.protocol_version().ok_or("no version")?,
        conn.negotiated_cipher_suite().ok_or("no suite")?.suite(),
        conn.negotiated_key_exchange_group()
            .map(|g| g.name())
            .ok_or("no group")?,
        conn.handshake_kind().ok_or("no kind")?,
    );
    let mut conn: Conn = Box::new(s);
    conn.write_all(REQUEST).await?;
    let mut head = Vec::new();
    let mut b = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = step("101", conn.read(&mut b)).await??;
        if n == 0 || head.len() > 4096 {
            return Err("no 101".into());
        }
        head.extend_from_slice(&b[..n]);
    }
    step("close", close(conn)).await??;
    Ok(info)
}

/// Sum of a Prometheus sample over all its label sets (e.g. `herdgate_tunnels_open`).
pub async fn metric(admin: SocketAddr, name: &str) -> Result<f64> {
    let mut s = step("admin connect", TcpStream::connect(admin)).await??;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    step("admin read", s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf);
    Ok(text
        .lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Poll until `name` equals `want` (bounded).
pub async fn wait_metric(admin: SocketAddr, name: &str, want: f64, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let v = metric(admin, name).await?;
        if v == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{name} stayed at {v}, expected {want}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------
// /proc

/// A field of /proc/<pid>/status in KiB (VmRSS, RssAnon, ...).
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            let n = rest.trim().trim_end_matches("kB").trim();
            return Ok(n.parse()?);
        }
    }
    Err(format!("/proc/{pid}/status has no {field}").into())
}

/// CPU time of a process, in seconds: the scheduler's run time of each of its threads
/// (/proc/<pid>/task/*/schedstat, in ns). The tick-sampled utime + stime of
/// /proc/<pid>/stat is too coarse for a process that runs a few µs per wake-up, as a
/// proxy relaying one connection does (ticks charge whoever is current then).
pub fn cpu_secs(pid: u32) -> Result<f64> {
    let mut ns = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = t?.path().join("schedstat");
        // A thread may end between the listing and the read.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        ns += text
            .split_whitespace()
            .next()
            .ok_or("empty schedstat")?
            .parse::<u64>()?;
    }
    Ok(ns as f64 / 1e9)
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Raise this process's soft descriptor limit to the hard one; returns (soft, hard).
pub fn raise_fd_limit() -> (u64, u64) {
    let _ = herdgate::fdlimit::raise();
    herdgate::fdlimit::current().unwrap_or((0, 0))
}

// ---------------------------------------------------------------------------------------
// Raw WebSocket client: a handshake and 64-byte echo round trips, nothing buffered while
// idle (so the client side of 9,000 idle connections stays small).

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type Conn = Box<dyn Io>;

#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Option<tokio_rustls::TlsConnector>,
}

pub struct Opened {
    pub conn: Conn,
    pub resumed: bool,
}

pub const REQUEST: &[u8] = b"GET /bench HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A TLS client config trusting `der`; `resume`: keep tickets (resumed handshakes) or
/// disable resumption (every handshake full).
pub fn tls_connector(
    der: &rustls::pki_types::CertificateDer<'static>,
    resume: bool,
) -> Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.clone())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.resumption = if resume {
        rustls::client::Resumption::store(Arc::new(Tickets::default()))
    } else {
        rustls::client::Resumption::disabled()
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

/// A TLS 1.3 ticket store for one server name that keeps up to 1,024 tickets. rustls' own
/// in-memory cache keeps 8 per server, too few for 32 connections in flight: most would
/// fall back to full handshakes and the "resumed" figures would not be about resumption.
#[derive(Debug, Default)]
struct Tickets {
    inner: std::sync::Mutex<(
        Option<rustls::NamedGroup>,
        std::collections::VecDeque<rustls::client::Tls13ClientSessionValue>,
    )>,
}

impl rustls::client::ClientSessionStore for Tickets {
    fn set_kx_hint(&self, _: rustls::pki_types::ServerName<'static>, group: rustls::NamedGroup) {
        if let Ok(mut g) = self.inner.lock() {
            g.0 = Some(group);
        }
    }
    fn kx_hint(&self, _: &rustls::pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.lock().ok()?.0
    }
    fn set_tls12_session(
        &self,
        _: rustls::pki_types::ServerName<'static>,
        _: rustls::client::Tls12ClientSessionValue,
    ) {
    }
    fn tls12_session(
        &self,
        _: &rustls::pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        None
    }
    fn remove_tls12_session(&self, _: &rustls::pki_types::ServerName<'static>) {}
    fn insert_tls13_ticket(
        &self,
        _: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        if let Ok(mut g) = self.inner.lock() {
            if g.1.len() >= 1024 {
                g.1.pop_front();
            }
            g.1.push_back(value);
        }
    }
    fn take_tls13_ticket(
        &self,
        _: &rustls::pki_types::ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        // Newest first: the freshest ticket is the likeliest to be accepted.
        self.inner.lock().ok()?.1.pop_back()
    }
}

/// Connect, (TLS), upgrade; the 101 is checked. With `rst_on_drop` the socket closes with
/// a RST when dropped (SO_LINGER 0): the idle bench tears 9,000 down at once that way.
pub async fn open(t: &Target, rst_on_drop: bool) -> Result<Opened> {
    let tcp = TcpStream::connect(t.addr).await?;
    tcp.set_nodelay(true)?;
    if rst_on_drop {
        SockRef::from(&tcp).set_linger(Some(Duration::ZERO))?;
    }
    let (mut conn, resumed): (Conn, bool) = match &t.tls {
        None => (Box::new(tcp), false),
        Some(c) => {
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            let s = c.connect(name, tcp).await?;
            let resumed = s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            (Box::new(s), resumed)
        }
    };
    conn.write_all(REQUEST).await?;
    let mut head = [0u8; 1024];
    let mut n = 0;
    loop {
        let k = conn.read(&mut head[n..]).await?;
        if k == 0 {
            return Err("connection closed before the 101".into());
        }
        n += k;
        if head[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        if n == head.len() {
            return Err("response head too long".into());
        }
    }
    if !head.starts_with(b"HTTP/1.1 101 ") {
        let line = String::from_utf8_lossy(&head[..n]);
        let line = line.lines().next().unwrap_or("");
        return Err(format!("expected 101, got {line:?}").into());
    }
    Ok(Opened { conn, resumed })
}

pub const PAYLOAD: usize = 64;

/// One echo round trip of a 64-byte binary message.
pub async fn echo_once(conn: &mut Conn) -> Result<()> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = [0u8; 6 + PAYLOAD];
    frame[0] = 0x82;
    frame[1] = 0x80 | PAYLOAD as u8;
    frame[2..6].copy_from_slice(&mask);
    for i in 0..PAYLOAD {
        frame[6 + i] = (i as u8) ^ mask[i % 4];
    }
    conn.write_all(&frame).await?;
    let mut back = [0u8; 2 + PAYLOAD];
    conn.read_exact(&mut back).await?;
    if back[0] != 0x82 || back[1] != PAYLOAD as u8 || (0..PAYLOAD).any(|i| back[2 + i] != i as u8) {
        return Err("echo came back wrong".into());
    }
    Ok(())
}

/// The closing handshake as RFC 6455 §7.1.1 wants it: our (masked) Close 1000, the peer's
/// Close back, then the server closes TCP first and we see EOF. So TIME_WAIT ends up on
/// the server's accepted sockets and no side burns ephemeral ports.
pub async fn close(mut conn: Conn) -> Result<()> {
    let mask = [0x5a, 0x11, 0xc3, 0x7e];
    let code = 1000u16.to_be_bytes();
    let frame = [
        0x88,
        0x82,
        mask[0],
        mask[1],
        mask[2],
        mask[3],
        code[0] ^ mask[0],
        code[1] ^ mask[1],
    ];
    conn.write_all(&frame).await?;
    let mut buf = [0u8; 64];
    let mut seen = 0usize;
    loop {
        match conn.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                seen += n;
                if seen > 1024 {
                    return Err("no EOF after the Close".into());
                }
            }
            // TLS peer that closed TCP without close_notify: still an end.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
    }
    if seen < 4 || buf[0] != 0x88 {
        return Err("no Close frame came back".into());
    }
    Ok(())
}

/// Sorted samples → (p50, p99).
pub fn percentiles(v: &mut [u64]) -> (u64, u64) {
    if v.is_empty() {
        return (0, 0);
    }
    v.sort_unstable();
    let at = |p: usize| v[(v.len() * p / 100).min(v.len() - 1)];
    (at(50), at(99))
}

// ---------------------------------------------------------------------------------------
// The echo node role

fn echo_role() -> Result<()> {
    let _ = herdgate::fdlimit::raise();
    let cert = std::env::var(CERT_ENV)?;
    let key = std::env::var(KEY_ENV)?;
    let kind = std::env::var(ECHO_ENV).unwrap_or_else(|_| "raw".into());
    let rt = runtime();
    rt.block_on(async move {
        let acceptor = tls_acceptor(Path::new(&cert), Path::new(&key))?;
        let plain = TcpListener::bind("127.0.0.1:0").await?;
        let tls = TcpListener::bind("127.0.0.1:0").await?;
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

fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Resumption like herdgate's: stateless tickets.
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
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
