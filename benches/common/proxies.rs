//! The proxies compared: herdgate, nginx and HAProxy, each with a ws and a wss listener in
//! front of the same echo node (plain TCP to the node), the same certificate, logging off.

use super::{
    children_of, close, cpu_secs, free_addr, open, retry, spawn_herdgate, status_kib, step,
    tls_connector, until, Cert, Check, Launch, Proc, Result, Target, SPAWN_TRIES, STEP,
};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

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
    extra_env: &[(&str, OsString)],
) -> Result<Proxy> {
    if kind == ProxyKind::Herdgate {
        let launch = Launch {
            env: extra_env,
            ..Launch::default()
        };
        let h = spawn_herdgate(dir, cert, node, &launch).await?;
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
    retry(SPAWN_TRIES, async || {
        let (ws, wss) = (free_addr()?, free_addr()?);
        let mut cmd = Command::new(&bin);
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
        let mut proc = Proc::new(name, child, None);
        // Ready = a WebSocket opens through each listener (a worker is accepting, not just
        // the listening socket bound).
        let targets = [
            Target {
                addr: ws,
                tls: None,
            },
            Target {
                addr: wss,
                tls: Some(tls_connector(&cert.der, false)?),
            },
        ];
        let mut next = 0;
        until(STEP, Duration::from_millis(20), async || {
            proc.alive()?;
            while let Some(t) = targets.get(next) {
                let attempt = tokio::time::timeout(Duration::from_secs(2), open(t, false)).await;
                let Ok(Ok(o)) = attempt else {
                    return Ok(Check::NotYet(format!(
                        "{name} did not serve WebSockets on {}",
                        t.addr
                    )));
                };
                step("close", close(o.conn)).await??;
                next += 1;
            }
            Ok(Check::Done)
        })
        .await?;
        Ok(Proxy {
            kind,
            proc,
            ws,
            wss,
            admin: None,
        })
    })
    .await
}

/// Worker processes / threads of every proxy started from now on (0: each its own knob).
static WORKERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Give nginx (`worker_processes`), HAProxy (`nbthread`) and herdgate (`[runtime]
/// threads`, see `herdgate_config`) `n` workers from now on, over their HERDGATE_BENCH_*
/// knobs (None: the knobs again).
pub fn set_workers(n: Option<u32>) {
    WORKERS.store(n.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
}

/// herdgate's `[runtime] threads`: the count given to [`set_workers`], else
/// HERDGATE_BENCH_HERDGATE_THREADS, else 0 (one per CPU).
pub fn herdgate_threads() -> u32 {
    env_or("HERDGATE_BENCH_HERDGATE_THREADS", 0)
}

/// A number from the environment, or `default` (a count given to [`set_workers`] first).
fn env_or(name: &str, default: u32) -> u32 {
    let n = WORKERS.load(std::sync::atomic::Ordering::Relaxed);
    if n > 0 {
        return n;
    }
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
