//! Configuration: TOML in, a validated [`Config`] out.
//!
//! Parsing happens in two passes. Serde (with `deny_unknown_fields` everywhere) rejects
//! unknown keys, wrong types, bad durations and bad addresses, and reports the key path
//! and the line/column of the offending value. Then [`validate`] checks what one value
//! cannot check alone (duplicate names, routes naming missing pools, TLS files that do not
//! load) and reports *every* problem it finds, each with its key path and position.
//!
//! The commented reference is `config/herdgate.example.toml`; keep both in step.

mod admin;
mod duration;
mod fleet;
mod pool;
mod validate;

pub use admin::{AdminConfig, AdminToken, AdminTokenError};
pub use duration::{parse_duration, HumanDuration};
pub use fleet::{FleetConfig, MAX_INSTANCES};
pub use pool::{HealthConfig, HealthKind, NodeConfig, PoolConfig, QueueConfig};
pub use validate::validate;

use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// One configuration problem, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `pool[0].node[2].addr`.
    pub key: String,
    /// 1-based line and column in the file, when known.
    pub position: Option<(usize, usize)>,
    /// What is wrong with the value, for the operator.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if let Some((l, c)) = self.position {
            write!(f, "line {l}, column {c}: ")?;
        }
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Every problem found in one file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors {
    /// The file's name as given, prefixed to every message.
    pub file: String,
    /// Every problem found in the file.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{}: {n} error{}",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            writeln!(f, "  {}: {e}", self.file)?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    fn one(file: &str, key: &str, position: Option<(usize, usize)>, message: String) -> Self {
        ConfigErrors {
            file: file.to_string(),
            errors: vec![ConfigError {
                key: key.to_string(),
                position,
                message,
            }],
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[admin]`: the admin listener (metrics, health, drain API).
    #[serde(default)]
    pub admin: AdminConfig,
    /// `[timeouts]`: the process-wide deadlines.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// `[limits]`: process-wide connection and header caps.
    #[serde(default)]
    pub limits: Limits,
    /// `[tickets]`: admission-ticket signing and claim window.
    #[serde(default)]
    pub tickets: TicketsConfig,
    /// `[shutdown]`: how SIGTERM closes the open tunnels.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// `[log]`: how herdgate writes its log (read at start).
    #[serde(default)]
    pub log: LogConfig,
    /// `[fleet]`: instances sharing each node's admission budget (static share or Redis).
    #[serde(default)]
    pub fleet: FleetConfig,
    /// `[runtime]`: worker threads (read at start only).
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// `[[listener]]`: the sockets clients connect to.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// `[[route]]`: which pool serves a (host, path prefix); the most specific route wins.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// `[[pool]]`: the groups of backend nodes routes point at.
    #[serde(default, rename = "pool")]
    pub pools: Vec<PoolConfig>,
}

pub(crate) fn default_true() -> bool {
    true
}

/// `[timeouts]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// One deadline for the TLS handshake plus the first request header (slowloris guard).
    /// It also bounds how long a keep-alive connection may sit idle before its next request.
    pub handshake: HumanDuration,
    /// Connecting to a backend node; past it the client gets 504.
    pub backend_connect: HumanDuration,
    /// Whole backend response head for plain HTTP.
    pub backend_response: HumanDuration,
    /// A tunnel with no byte either way for this long is closed ("0ms" disables).
    pub idle_tunnel: HumanDuration,
    /// How long a WebSocket close handshake may take before the TCP connections are cut.
    pub close: HumanDuration,
    /// A forwarded request body that brings no new byte for this long is cut off: the
    /// client gets 408 and the node is not blamed.
    pub request_body: HumanDuration,
    /// A write towards a client or a node that makes no progress for this long is aborted:
    /// a tunnel is closed, and the join after a 101 gives up (the 101 never went out).
    pub write: HumanDuration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake: HumanDuration::secs(5),
            backend_connect: HumanDuration::secs(2),
            backend_response: HumanDuration::secs(30),
            idle_tunnel: HumanDuration::secs(600),
            close: HumanDuration::secs(5),
            request_body: HumanDuration::secs(30),
            write: HumanDuration::secs(30),
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open client connections for the whole process (all listeners).
    pub max_connections: usize,
    /// Largest request head accepted; beyond it the client gets 431.
    pub max_header_bytes: usize,
    /// Open connections per client (its address, IPv6 by /64), tunnels and connections
    /// turned away with a 1013 close included; one over it is closed at once.
    pub max_connections_per_client: usize,
    /// Open WebSocket tunnels per client; an upgrade over it is refused (429, or a 1013
    /// close on `reject = "websocket-close"` routes).
    pub max_tunnels_per_client: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 100_000,
            max_header_bytes: 16 * 1024,
            max_connections_per_client: 2_000,
            max_tunnels_per_client: 1_000,
        }
    }
}

/// `[tickets]`: admission tickets handed to rejected clients that can present them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TicketsConfig {
    /// Signing key shared by every herdgate instance that must accept the others' tickets.
    /// Without it a random key is made at start (tickets then work on this instance only).
    pub key_file: Option<PathBuf>,
    /// How long after its slot a ticket or a promise may still be claimed.
    pub claim_window: HumanDuration,
}

impl Default for TicketsConfig {
    fn default() -> Self {
        TicketsConfig {
            key_file: None,
            claim_window: HumanDuration::secs(2),
        }
    }
}

/// `[log]`: the log's format (read at start only) and the access log (applied on reload,
/// to connections accepted after it).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `"text"` (default; colours only when stderr is a terminal) or `"json"` (one object
    /// per line, journald-friendly).
    pub format: LogFormat,
    /// One line per HTTP request and one per tunnel when it ends, target
    /// `herdgate::access` (default false).
    pub access: bool,
}

/// `[runtime]`: the process's data-plane threads (shards, `crate::shards`), like nginx's
/// `worker_processes` and HAProxy's `nbthread`. Read at start only (a restart changes it).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Data-plane threads, each accepting and serving its own connections; 0 (default):
    /// one per CPU the process may run on. One more thread runs the control plane.
    pub threads: usize,
}

/// Most worker threads `[runtime] threads` accepts.
pub const MAX_THREADS: usize = 1024;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[shutdown]`: what SIGTERM does.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Tunnels are closed (1012 + hint) spread evenly over this time.
    pub spread: HumanDuration,
    /// After this, whatever is still open is closed at once with 1001.
    pub timeout: HumanDuration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            spread: HumanDuration::secs(30),
            timeout: HumanDuration::secs(60),
        }
    }
}

/// `[[listener]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Listener name, shown in metrics and matched against systemd's `FileDescriptorName`.
    pub name: Spanned<String>,
    /// Address to listen on (`ip:port`).
    pub bind: SocketAddr,
    /// `[listener.tls]`: terminate TLS here; absent, the listener speaks plain HTTP.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Cap on open connections of this listener (the process cap still applies).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// New TLS handshakes per second, checked *before* the handshake; excess connections
    /// wait in the kernel backlog. Unset: no cap.
    #[serde(default)]
    pub handshakes_per_second: Option<f64>,
    /// Handshakes allowed back to back when idle. Default: a tenth of `handshakes_per_second`,
    /// rounded up, at least 1.
    #[serde(default)]
    pub handshake_burst: Option<u32>,
    /// TLS handshakes one client (address, IPv6 by /64) may have waiting for a token of
    /// `handshakes_per_second`; more are closed. Default 64.
    #[serde(default = "default_handshake_waiting")]
    pub max_waiting_handshakes_per_client: usize,
    /// `listen(2)` backlog: where connections wait while the caps are reached. Default 4096.
    #[serde(default = "default_backlog")]
    pub backlog: u32,
    /// Every connection starts with a PROXY protocol header (v1 or v2) naming the client,
    /// read before TLS; only peers in `trusted_proxies` may connect, anyone else is
    /// refused. Default `false`.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// CIDRs of the load balancers in front of this listener (e.g. `["10.0.0.0/8"]`):
    /// their PROXY headers and `X-Forwarded-For` name the client. Default: none, so the
    /// client is always the TCP peer.
    #[serde(default)]
    pub trusted_proxies: Vec<herdgate_core::client_addr::Cidr>,
}

fn default_handshake_waiting() -> usize {
    64
}

fn default_backlog() -> u32 {
    4096
}

/// `[listener.tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// `[[listener.tls.cert]]`: the certificates served, chosen by SNI.
    #[serde(rename = "cert")]
    pub certs: Vec<CertConfig>,
    /// Stateful session cache entries (TLS 1.2 ids and 1.3 stateful resumption).
    #[serde(default = "default_session_cache")]
    pub session_cache: usize,
    /// Issue stateless session tickets (rustls issues none unless a ticketer is set).
    #[serde(default = "default_true")]
    pub session_tickets: bool,
}

fn default_session_cache() -> usize {
    20_000
}

/// `[[listener.tls.cert]]`: one certificate chain and its key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertConfig {
    /// PEM file with the certificate chain, leaf first; relative to the config file.
    pub cert: Spanned<PathBuf>,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1); relative to the config file.
    pub key: Spanned<PathBuf>,
    /// SNI names this certificate answers (exact, or `*.example.com`). Empty: only as default.
    #[serde(default)]
    pub server_names: Vec<String>,
    /// Used when SNI is absent or matches nothing. Default: the first certificate.
    #[serde(default)]
    pub default: bool,
}

/// How a rejected WebSocket client is told to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RejectStyle {
    /// HTTP 503 with Retry-After (non-browser clients can read it).
    #[default]
    Http,
    /// Complete the upgrade locally and close at once with 1013 and a JSON reason:
    /// browsers see only 1006 for a refused handshake but can read a close reason.
    WebsocketClose,
}

/// `[[route]]`: (host, path prefix) to a pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Host to match (case-insensitive, port ignored); absent or "*" matches any host.
    #[serde(default)]
    pub host: Option<String>,
    /// Path prefix to match; the longest matching prefix wins. Default `/`.
    #[serde(default = "default_prefix")]
    pub path_prefix: String,
    /// Name of the `[[pool]]` that serves matching requests.
    pub pool: Spanned<String>,
    /// Restrict the route to these listeners (by name). Default: all.
    #[serde(default)]
    pub listeners: Vec<String>,
    /// How a rejected WebSocket upgrade is told when to come back. Default `"http"`.
    #[serde(default)]
    pub reject: RejectStyle,
    /// Apply node admission to plain HTTP requests too (WebSocket upgrades always are).
    #[serde(default)]
    pub admit_http: bool,
    /// `[route.sticky]`: keep a session on one node; absent, nodes are picked per connection.
    #[serde(default)]
    pub sticky: Option<StickyConfig>,
    /// Per-client new-connection limit on this route.
    #[serde(default)]
    pub client_limit: Option<ClientLimitConfig>,
}

fn default_prefix() -> String {
    "/".to_string()
}

/// `[route.sticky]`: where the session key comes from (exactly one of cookie, header,
/// query, client_ip).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickyConfig {
    /// Take the session key from this cookie.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Take the session key from this request header.
    #[serde(default)]
    pub header: Option<String>,
    /// Take the session key from this query parameter.
    #[serde(default)]
    pub query: Option<String>,
    /// Use the client's IP address as the session key. Default `false`.
    #[serde(default)]
    pub client_ip: bool,
    /// When the key is absent: "client-ip" (hash the address) or "none" (round robin).
    #[serde(default)]
    pub fallback: StickyFallback,
    /// With `cookie`: set it on the response when the client has none (HAProxy's
    /// `cookie insert`).
    #[serde(default)]
    pub insert: bool,
    /// Learned entries expire after this long unused.
    #[serde(default = "default_sticky_ttl")]
    pub ttl: HumanDuration,
    /// Most learned key-to-node entries kept; the oldest are evicted first. Default 1000000.
    #[serde(default = "default_sticky_max")]
    pub max_entries: usize,
    /// Most learned entries one client (its address, IPv6 by /64) holds; a client over it
    /// replaces its own oldest entry, never someone else's. Default 64.
    #[serde(default = "default_sticky_per_client")]
    pub max_entries_per_client: usize,
}

fn default_sticky_per_client() -> usize {
    64
}

fn default_sticky_ttl() -> HumanDuration {
    HumanDuration::secs(3600)
}
fn default_sticky_max() -> usize {
    1_000_000
}

/// What sticky routing hashes when the request carries no session key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum StickyFallback {
    /// Hash the client's IP address (the default).
    #[default]
    ClientIp,
    /// No key: pick a node round robin.
    None,
}

/// `[route.client_limit]`: new connections per client (IP, or sticky key).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientLimitConfig {
    /// New connections per second allowed per client (required).
    pub rate: f64,
    /// Connections a client may open back to back before the rate applies. Default 10.
    #[serde(default = "default_client_burst")]
    pub burst: u32,
    /// "client-ip" (default) or "sticky-key".
    #[serde(default)]
    pub by: ClientLimitKey,
}

fn default_client_burst() -> u32 {
    10
}

/// What identifies a client for the per-client limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ClientLimitKey {
    /// The client's IP address (the default).
    #[default]
    ClientIp,
    /// The route's sticky session key.
    StickyKey,
}

impl ListenerConfig {
    /// The listener's name without its source span.
    pub fn name(&self) -> &str {
        self.name.get_ref()
    }
}

/// 1-based (line, column) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

impl Config {
    /// Parse and validate TOML text. `file` names it in errors; relative paths in the
    /// config (certificates, keys) are resolved against `base_dir`.
    pub fn parse(text: &str, file: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
        let de = toml::Deserializer::new(text);
        let mut cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let pos = inner.span().map(|s| line_col(text, s.start));
            let key = if key == "." { String::new() } else { key };
            ConfigErrors::one(file, &key, pos, inner.message().trim().to_string())
        })?;
        cfg.resolve_paths(base_dir);
        let errors = validate(&cfg, text);
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors {
                file: file.to_string(),
                errors,
            })
        }
    }

    /// Read, parse and validate a file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::one(&file, "", None, format!("cannot read the file: {e}"))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, &file, base)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for l in &mut self.listeners {
            if let Some(tls) = &mut l.tls {
                for c in &mut tls.certs {
                    fix(c.cert.get_mut());
                    fix(c.key.get_mut());
                }
            }
        }
        if let Some(p) = &mut self.tickets.key_file {
            fix(p);
        }
        if let Some(p) = &mut self.admin.token_file {
            fix(p);
        }
    }

    /// The pool named `name`, if configured.
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name() == name)
    }
}
