//! `[[pool]]`: backend nodes, their admission rate, queue mode and health checks.

use super::HumanDuration;
use serde::Deserialize;
use std::net::SocketAddr;
use toml::Spanned;

/// `[[pool]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Pool name, referred to by routes, metrics and the admin API.
    pub name: Spanned<String>,
    /// "rendezvous" (default) or "maglev" (O(1) lookups for pools of hundreds of nodes).
    #[serde(default)]
    pub hash: herdgate_core::routing::HashAlgo,
    /// New connections per second each node accepts (token bucket rate).
    #[serde(default = "default_admit_rate")]
    pub admit_rate: f64,
    /// Connections each node admits back to back when idle. Default 10; keep it small against the rate.
    #[serde(default = "default_admit_burst")]
    pub admit_burst: u32,
    /// Longest Retry-After handed out; beyond it the hint is the cap (and counted).
    #[serde(default = "default_max_retry_after")]
    pub max_retry_after: HumanDuration,
    /// Most retry slots one client (its address, /64 for IPv6) may hold on a node at once;
    /// 0 (default): half a second of the node's rate, at least 4. A client at its cap is told
    /// a place in its own queue (after its slots, nothing booked).
    #[serde(default)]
    pub max_slots_per_client: u32,
    /// Share of each node's rate never booked for returning clients, kept for fresh
    /// arrivals, in [0, 0.5]. Default 0.02.
    #[serde(default = "default_fresh_share")]
    pub fresh_share: f64,
    /// A node coming back ramps its rate from 10% to full over this time ("0s": off).
    #[serde(default)]
    pub slow_start: HumanDuration,
    /// `[pool.queue]`: hold requests whose slot is near instead of rejecting them. Absent:
    /// held up to 1 s (the smallest `Retry-After`), at most 1000 per node;
    /// `timeout = "0s"`: never held.
    #[serde(default)]
    pub queue: QueueConfig,
    /// Drain: tunnels closed per second per draining node...
    #[serde(default)]
    pub drain_rate: Option<f64>,
    /// ...or spread evenly over this time (default 30s when neither is set).
    #[serde(default)]
    pub drain_spread: Option<HumanDuration>,
    /// `[pool.health]`: active health checks; absent, a node marked down by traffic gets a
    /// recovery probe each second.
    #[serde(default)]
    pub health: Option<HealthConfig>,
    /// `[[pool.node]]`: the backend nodes of this pool.
    #[serde(rename = "node")]
    pub nodes: Vec<NodeConfig>,
}

fn default_admit_rate() -> f64 {
    200.0
}
fn default_fresh_share() -> f64 {
    0.02
}
fn default_admit_burst() -> u32 {
    10
}
fn default_max_retry_after() -> HumanDuration {
    HumanDuration::secs(120)
}

/// `[pool.queue]`: hold a request instead of rejecting it when its slot is near.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Longest a request is held waiting for its slot; beyond it, it is rejected with a
    /// hint. Default 1s: a slot nearer than the smallest whole-second `Retry-After` is
    /// better waited for than hinted. "0s": never held.
    #[serde(default = "default_queue_timeout")]
    pub timeout: HumanDuration,
    /// Most requests held at once per node. Default 1000.
    #[serde(default = "default_queue_len")]
    pub max_len: usize,
}

fn default_queue_len() -> usize {
    1000
}
fn default_queue_timeout() -> HumanDuration {
    HumanDuration::secs(1)
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            timeout: default_queue_timeout(),
            max_len: default_queue_len(),
        }
    }
}

impl QueueConfig {
    /// How long a request may be held for its slot now that `held` requests are held on
    /// its node: `None` when holding is off or the node's queue is full.
    pub fn hold_for(&self, held: usize) -> Option<std::time::Duration> {
        (!self.timeout.0.is_zero() && held < self.max_len).then_some(self.timeout.0)
    }
}

/// `[pool.health]`: active checks.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// "tcp" (connect) or "http" (GET `path`, expect 2xx).
    #[serde(default)]
    pub kind: HealthKind,
    /// Path to `GET` for `kind = "http"`.
    #[serde(default)]
    pub path: Option<String>,
    /// Time between checks of a node (jittered). Default 2s.
    #[serde(default = "default_health_interval")]
    pub interval: HumanDuration,
    /// Deadline of one check. Default 1s.
    #[serde(default = "default_health_timeout")]
    pub timeout: HumanDuration,
    /// Consecutive successful checks that mark a down node up. Default 2.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failed checks that mark an up node down. Default 3.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// Consecutive soft passive failures (timeouts, 5xx on upgrade) that mark a node down.
    #[serde(default = "default_fall")]
    pub passive_failures: u32,
}

fn default_health_interval() -> HumanDuration {
    HumanDuration::secs(2)
}
fn default_health_timeout() -> HumanDuration {
    HumanDuration::secs(1)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

/// How an active health check probes a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HealthKind {
    /// Open a TCP connection (the default).
    #[default]
    Tcp,
    /// `GET` the configured path and expect a 2xx.
    Http,
}

/// `[[pool.node]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Node name: with the pool and address, the node's identity across reloads.
    pub name: Spanned<String>,
    /// Address of the node (`ip:port`).
    pub addr: SocketAddr,
    /// The node's share of the session keys. Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Override of the pool's `admit_rate` for this node.
    #[serde(default)]
    pub admit_rate: Option<f64>,
    /// Override of the pool's `admit_burst` for this node.
    #[serde(default)]
    pub admit_burst: Option<u32>,
    /// Drain this node: no new connections, its tunnels closed gradually.
    #[serde(default)]
    pub drain: bool,
}

fn default_weight() -> u32 {
    1
}

impl PoolConfig {
    /// The pool's name without its source span.
    pub fn name(&self) -> &str {
        self.name.get_ref()
    }
}

impl NodeConfig {
    /// The node's name without its source span.
    pub fn name(&self) -> &str {
        self.name.get_ref()
    }
}
