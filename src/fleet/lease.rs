//! One lease renewal: a single Lua script call (EVALSHA, EVAL on NOSCRIPT) that renews this
//! instance's membership and its share of every node, with the store's clock (`TIME`).

use crate::config::FleetConfig;
use crate::snapshot::Snapshot;
use herdgate_core::fleet::{decisions, DemandMeter};
use std::collections::HashMap;
use std::time::Duration;

/// The members set every instance registers in.
const MEMBERS_KEY: &str = "herdgate:fleet:members";
/// Prefix of a node's lease hash (`herdgate:fleet:node:pool/name`).
const NODE_KEY_PREFIX: &str = "herdgate:fleet:node:";
/// A share in parts per million of the node's rate.
const PPM: f64 = 1_000_000.0;
/// Longest wait for a new connection to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Renewals timed out in a row before the connection is dropped and made again.
const RECONNECT_AFTER_TIMEOUTS: u32 = 3;

/// Why a renewal gave nothing.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// No answer within one lease period.
    #[error("did not answer within one lease ({0:?})")]
    Timeout(Duration),
    /// Connecting, the script, or its reply failed.
    #[error("error: {0}")]
    Redis(#[from] redis::RedisError),
    /// The reply had the wrong shape.
    #[error("answered {0} values for {1} nodes")]
    Shape(usize, usize),
}

impl LeaseError {
    /// The `outcome` label of the renewal counter.
    pub fn outcome(&self) -> &'static str {
        match self {
            LeaseError::Timeout(_) => "timeout",
            LeaseError::Redis(_) | LeaseError::Shape(..) => "error",
        }
    }
}

/// What one renewal granted.
pub struct Grant {
    /// Live members in the fleet (this one included).
    pub live: u32,
    /// Share granted per node (`pool/name`), in [0, 1].
    pub shares: HashMap<String, f64>,
}

/// This instance's side of the leases: its id, its connection, its demand meters.
pub struct Leaser {
    client: redis::Client,
    conn: Option<redis::aio::MultiplexedConnection>,
    script: redis::Script,
    id: String,
    lease: Duration,
    lease_ttl: Duration,
    member_ttl: Duration,
    demand: HashMap<String, DemandMeter>,
    /// Renewals timed out in a row on the current connection.
    timeouts: u32,
}

impl Leaser {
    /// A leaser for `cfg` (which has `redis`); connects at the first renewal.
    pub fn new(cfg: &FleetConfig) -> Result<Leaser, String> {
        use redis::IntoConnectionInfo;
        let url = cfg.redis.as_deref().ok_or("fleet.redis is not set")?;
        let mut info = url
            .into_connection_info()
            .map_err(|e| format!("fleet.redis: {e}"))?;
        if let Some(p) = &cfg.password_file {
            let pw = std::fs::read_to_string(p)
                .map_err(|e| format!("fleet.password_file {}: {e}", p.display()))?;
            let settings = info.redis_settings().clone().set_password(pw.trim());
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info).map_err(|e| format!("fleet.redis: {e}"))?;
        Ok(Leaser {
            client,
            conn: None,
            script: redis::Script::new(include_str!("grant.lua")),
            id: format!("{:016x}-{}", rand::random::<u64>(), std::process::id()),
            lease: cfg.lease.0,
            lease_ttl: cfg.lease_ttl(),
            member_ttl: cfg.member_ttl.0,
            demand: HashMap::new(),
            timeouts: 0,
        })
    }

    /// The connection the last renewal used, if it is still open.
    pub fn connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        self.conn.clone()
    }

    /// How often leases are renewed.
    pub fn period(&self) -> Duration {
        self.lease
    }

    /// Renew every node of `snap` within one lease period.
    /// `expected`: the live member count last seen (see `grant.lua`).
    pub async fn renew(&mut self, snap: &Snapshot, expected: u32) -> Result<Grant, LeaseError> {
        let t = crate::clock::now();
        let mut labels = Vec::new();
        let mut inv = self.script.prepare_invoke();
        inv.key(MEMBERS_KEY)
            .arg(&self.id)
            .arg(ms(self.lease_ttl))
            .arg(ms(self.member_ttl))
            .arg(expected.max(1));
        for pool in &snap.pools {
            for (node, cfg) in pool.nodes.iter().zip(&pool.cfg.nodes) {
                let label = super::node_label(&pool.name, &node.key.name);
                let rate = crate::snapshot::base_params(&snap.config, &pool.cfg, cfg).rate;
                let per_sec = self
                    .demand
                    .entry(label.clone())
                    .or_default()
                    .sample(decisions(&node.admission.stats()), t);
                // Clients obeying hints ask rarely, so decisions alone under-state what
                // a saturated instance needs: its booked slots count too.
                let booked =
                    node.admission.effective_rate(t) * node.admission.backlog(t).as_secs_f64();
                // The one demand definition, shared with the storm simulator.
                let ppm = herdgate_core::fleet::grant::demand_ppm(per_sec, booked, rate);
                inv.key(format!("{NODE_KEY_PREFIX}{label}")).arg(ppm);
                labels.push(label);
            }
        }
        if self.demand.len() > labels.len() {
            // Nodes gone by a reload.
            let live: std::collections::HashSet<&String> = labels.iter().collect();
            self.demand.retain(|k, _| live.contains(k));
        }
        let lease = self.lease;
        // Connecting may take longer than a lease (TLS, a cold start): meanwhile this
        // instance is on the static share already, so waiting costs nothing.
        let conn = match &mut self.conn {
            Some(c) => c,
            None => {
                let wait = lease.max(CONNECT_TIMEOUT);
                let script = &self.script;
                let connect = async {
                    let mut c = self.client.get_multiplexed_async_connection().await?;
                    // Loaded now, so that renewals are one EVALSHA round trip.
                    script.load_async(&mut c).await?;
                    Ok::<_, redis::RedisError>(c)
                };
                match tokio::time::timeout(wait, connect).await {
                    Ok(Ok(c)) => self.conn.insert(c),
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_) => return Err(LeaseError::Timeout(wait)),
                }
            }
        };
        let reply = match tokio::time::timeout(lease, inv.invoke_async::<Vec<i64>>(conn)).await {
            Ok(Ok(r)) => {
                self.timeouts = 0;
                r
            }
            Ok(Err(e)) => {
                self.conn = None;
                return Err(e.into());
            }
            Err(_) => {
                // A slow answer may still come on a healthy connection; several in a row
                // look like a half-open one: reconnect.
                self.timeouts += 1;
                if self.timeouts >= RECONNECT_AFTER_TIMEOUTS {
                    self.conn = None;
                    self.timeouts = 0;
                }
                return Err(LeaseError::Timeout(lease));
            }
        };
        if reply.len() != labels.len() + 1 {
            return Err(LeaseError::Shape(reply.len(), labels.len()));
        }
        let live = u32::try_from(reply[0].max(1)).unwrap_or(u32::MAX);
        let shares = labels
            .into_iter()
            .zip(&reply[1..])
            .map(|(l, &g)| (l, (g as f64 / PPM).clamp(0.0, 1.0)))
            .collect();
        Ok(Grant { live, shares })
    }
}

/// Whole milliseconds, at least 1.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
