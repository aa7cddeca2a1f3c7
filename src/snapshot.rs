//! The immutable routing snapshot: one per config generation, swapped atomically.

use crate::backend::connect::{http_client, HttpClient};
use crate::backend::{Node, NodeKey};
use crate::config::NodeConfig;
use crate::config::{AdminToken, AdminTokenError};
use crate::config::{Config, PoolConfig, RouteConfig, StickyConfig, StickyFallback};
use crate::tls::{load_certified_key, server_config, Sessions, SniCert, TlsError};
use dashmap::DashMap;
use herdgate_core::admission::{
    AdmissionError, AdmissionParams, ClientKey, ClientLimiter, NodeAdmission, TicketSigner,
};
use herdgate_core::routing::{HashRing, NodeRef, RoutingError, StickySource, StickyTable};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Everything a connection needs to route and admit, frozen for the connection's life.
pub struct Snapshot {
    /// The validated configuration this snapshot was built from.
    pub config: Arc<Config>,
    /// Config generation: 1 at start, one more for each reload.
    pub generation: u64,
    listeners: HashMap<Arc<str>, ListenerRt>,
    /// Most specific first: exact host before any host, then longest prefix.
    pub routes: Vec<Route>,
    /// Pools in config order; [`Route::pool`] indexes into it.
    pub pools: Vec<Pool>,
    /// Client for plain-HTTP forwarding; kept from the previous snapshot while `backend_connect` is unchanged.
    pub http: HttpClient,
    /// The admin bearer token, read from `admin.token_file` when this snapshot was built
    /// (at start and on each reload, never per request); `None` without a token file.
    pub admin_token: Option<AdminToken>,
}

/// A `[[route]]` resolved against the pools, ready to match requests.
pub struct Route {
    /// Host to match, lowercased; `None` matches any host.
    pub host: Option<String>,
    /// Path prefix the request path must start with.
    pub prefix: String,
    /// Index into [`Snapshot::pools`] of the pool serving this route.
    pub pool: usize,
    /// Listener names the route is restricted to; empty means all.
    pub listeners: Vec<String>,
    /// Sticky-session settings; `None` when the route is not sticky.
    pub sticky: Option<RouteSticky>,
    /// Per-client new-connection limit (kept across reloads while its settings hold).
    pub client_limiter: Option<Arc<ClientLimiter<ClientKey>>>,
    /// The route's configuration as written (reject style, admission flags, ...).
    pub cfg: RouteConfig,
}

/// A route's sticky settings, resolved.
pub struct RouteSticky {
    /// Where the session key is read from (cookie, header, query or client IP).
    pub source: StickySource,
    /// What to hash when the request carries no key.
    pub fallback: StickyFallback,
    /// `Some(cookie name)` when herdgate sets the cookie for clients without one.
    pub insert: Option<String>,
    /// Lifetime given to an inserted sticky cookie.
    pub ttl: std::time::Duration,
}

/// A `[[pool]]` with its nodes' live state and its hash ring.
pub struct Pool {
    /// Pool name, as in the config and in metric labels.
    pub name: Arc<str>,
    /// The pool's nodes in config order; the live state is shared across snapshots.
    pub nodes: Vec<Arc<Node>>,
    /// Consistent-hash ring over `nodes` that maps session keys to nodes.
    pub ring: HashRing,
    /// Learned key → node table; shared by snapshots while its settings are unchanged.
    pub sticky: Option<Arc<StickyTable<Arc<str>>>>,
    /// The pool's configuration as written.
    pub cfg: PoolConfig,
    by_name: HashMap<Arc<str>, usize>,
    rr: AtomicUsize,
}

impl Pool {
    /// The node named `name` in this pool, if any.
    pub fn node_by_name(&self, name: &str) -> Option<&Arc<Node>> {
        self.by_name.get(name).map(|&i| &self.nodes[i])
    }

    /// The node with this admission id (what a ticket names).
    pub fn node_by_id(&self, id: u64) -> Option<&Arc<Node>> {
        self.nodes.iter().find(|n| n.admission.node_id() == id)
    }

    /// A rotating start index for scans over the nodes (ties go round robin).
    pub fn rr_start(&self) -> usize {
        self.rr.fetch_add(1, Ordering::Relaxed)
    }
}

/// Why a snapshot could not be built from an otherwise valid config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("listener {listener}: {source}")]
    /// A listener's TLS setup failed (a certificate or key did not load).
    Tls {
        /// The listener's name.
        listener: String,
        /// What went wrong.
        source: TlsError,
    },
    #[error("pool {pool}: {source}")]
    /// A pool's routing structures were refused (its hash ring or sticky settings).
    Routing {
        /// The pool's name.
        pool: String,
        /// What went wrong.
        source: RoutingError,
    },
    /// An admission parameter was refused by the admission core.
    #[error("{0}")]
    Admission(#[from] AdmissionError),
    /// `admin.token_file` could not be read, or holds no usable token.
    #[error("admin.token_file: {0}")]
    AdminToken(#[from] AdminTokenError),
}

/// What building a snapshot needs besides the config.
pub struct BuildCtx<'a> {
    /// Live node states by identity; nodes found here keep their state, new ones are added.
    pub nodes: &'a DashMap<NodeKey, Arc<Node>>,
    /// Ticket signer shared by all snapshots, so tickets stay valid across reloads.
    pub signer: &'a Arc<TicketSigner>,
    /// Generation number to give the new snapshot.
    pub generation: u64,
    /// The snapshot being replaced, whose limiters, caps and tables are kept when unchanged.
    pub prev: Option<&'a Snapshot>,
}

impl Snapshot {
    /// Build a snapshot; nodes already in `nodes` keep their live state.
    pub fn build(config: Arc<Config>, ctx: BuildCtx<'_>) -> Result<Snapshot, BuildError> {
        let BuildCtx {
            nodes,
            signer,
            generation,
            prev,
        } = ctx;
        let admin_token = match &config.admin.token_file {
            Some(p) => Some(AdminToken::load(p)?),
            None => None,
        };
        let mut listeners = HashMap::new();
        for l in &config.listeners {
            let name: Arc<str> = Arc::from(l.name());
            let tls = match &l.tls {
                Some(t) => {
                    let tls_err = |source| BuildError::Tls {
                        listener: l.name().to_string(),
                        source,
                    };
                    let certs = t
                        .certs
                        .iter()
                        .map(|c| {
                            Ok(SniCert {
                                key: load_certified_key(c.cert.get_ref(), c.key.get_ref())?,
                                server_names: &c.server_names,
                                default: c.default,
                            })
                        })
                        .collect::<Result<Vec<_>, TlsError>>()
                        .map_err(tls_err)?;
                    let sessions = Sessions {
                        cache: t.session_cache,
                        tickets: t.session_tickets,
                    };
                    Some(server_config(l.name(), &certs, sessions).map_err(tls_err)?)
                }
                None => None,
            };
            // Caps keep their permits across reloads when unchanged.
            let prev_rt = prev.and_then(|p| p.listeners.get(&name));
            let conn_limit = match (
                l.max_connections,
                prev_rt.and_then(|p| p.conn_limit.clone()),
            ) {
                (Some(max), Some(old)) if prev_max(prev, &name) == Some(max) => Some(old),
                (Some(max), _) => Some(Arc::new(Semaphore::new(max))),
                (None, _) => None,
            };
            let handshake_limit = match l.handshakes_per_second {
                None => None,
                Some(rate) => {
                    let burst = l
                        .handshake_burst
                        .unwrap_or((rate / 10.0).ceil().max(1.0) as u32);
                    Some(Arc::new(herdgate_core::admission::HandshakeLimiter::new(
                        rate, burst,
                    )?))
                }
            };
            listeners.insert(
                name.clone(),
                ListenerRt {
                    name,
                    tls,
                    conn_limit,
                    handshake_limit,
                    max_waiting_handshakes_per_client: l.max_waiting_handshakes_per_client,
                    identity: ListenerIdentity {
                        proxy_protocol: l.proxy_protocol,
                        trusted_proxies: Arc::from(l.trusted_proxies.as_slice()),
                    },
                },
            );
        }

        let mut pools = Vec::new();
        for p in &config.pools {
            let pname: Arc<str> = Arc::from(p.name());
            let mut pnodes = Vec::new();
            for n in &p.nodes {
                let key = NodeKey {
                    pool: pname.clone(),
                    name: Arc::from(n.name()),
                    addr: n.addr,
                };
                let node = match nodes.get(&key) {
                    Some(n) => n.clone(),
                    None => {
                        // A node added by a reload ramps up (slow start); at start-up the
                        // whole fleet is new and nothing ramps.
                        let params = params(&config, p, n);
                        let adm =
                            node_admission(signer, p.name(), n.name(), params, prev.is_some())?;
                        let node = Arc::new(Node::new(key.clone(), adm));
                        nodes.insert(key, node.clone());
                        node
                    }
                };
                pnodes.push(node);
            }
            let ring = HashRing::build(
                p.hash,
                p.nodes.iter().map(|n| NodeRef {
                    name: n.name(),
                    weight: n.weight,
                }),
            )
            .map_err(|source| BuildError::Routing {
                pool: p.name().to_string(),
                source,
            })?;
            // The first sticky route of the pool sets the table's size and TTL.
            let sticky_cfg = config
                .routes
                .iter()
                .filter(|r| r.pool.get_ref() == p.name())
                .find_map(|r| r.sticky.as_ref());
            let sticky = match sticky_cfg {
                None => None,
                Some(sc) => {
                    let reuse = prev
                        .and_then(|pv| pv.pools.iter().find(|pp| pp.name == pname))
                        .and_then(|pp| pp.sticky.clone())
                        .filter(|t| {
                            t.ttl() == sc.ttl.0
                                && t.max_entries() == sc.max_entries
                                && t.per_client() == sc.max_entries_per_client
                        });
                    match reuse {
                        Some(t) => Some(t),
                        None => Some(Arc::new(
                            StickyTable::new(sc.ttl.0, sc.max_entries, sc.max_entries_per_client)
                                .map_err(|source| BuildError::Routing {
                                pool: p.name().to_string(),
                                source,
                            })?,
                        )),
                    }
                }
            };
            let by_name = pnodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.key.name.clone(), i))
                .collect();
            pools.push(Pool {
                by_name,
                name: pname,
                nodes: pnodes,
                ring,
                sticky,
                cfg: p.clone(),
                rr: AtomicUsize::new(0),
            });
        }

        let mut routes: Vec<Route> = Vec::new();
        for r in &config.routes {
            let Some(pool) = pools.iter().position(|p| &*p.name == r.pool.get_ref()) else {
                continue;
            };
            let sticky = match &r.sticky {
                None => None,
                Some(sc) => Some(route_sticky(sc).map_err(|source| BuildError::Routing {
                    pool: r.pool.get_ref().clone(),
                    source,
                })?),
            };
            let client_limiter = match &r.client_limit {
                None => None,
                Some(cl) => {
                    let same = prev.and_then(|pv| {
                        pv.routes.iter().find(|pr| {
                            pr.cfg.pool.get_ref() == r.pool.get_ref()
                                && pr.cfg.host == r.host
                                && pr.cfg.path_prefix == r.path_prefix
                                && pr.cfg.client_limit.as_ref().is_some_and(|o| {
                                    o.rate == cl.rate && o.burst == cl.burst && o.by == cl.by
                                })
                        })
                    });
                    match same.and_then(|pr| pr.client_limiter.clone()) {
                        Some(l) => Some(l),
                        None => Some(Arc::new(ClientLimiter::<ClientKey>::new(
                            cl.rate, cl.burst,
                        )?)),
                    }
                }
            };
            routes.push(Route {
                client_limiter,
                host: r
                    .host
                    .as_deref()
                    .filter(|h| *h != "*")
                    .map(|h| h.to_ascii_lowercase()),
                prefix: r.path_prefix.clone(),
                pool,
                listeners: r.listeners.clone(),
                sticky,
                cfg: r.clone(),
            });
        }
        routes.sort_by_key(|r| (r.host.is_none(), std::cmp::Reverse(r.prefix.len())));

        let http = match prev {
            Some(p) if p.config.timeouts.backend_connect == config.timeouts.backend_connect => {
                p.http.clone()
            }
            _ => http_client(config.timeouts.backend_connect.0),
        };

        Ok(Snapshot {
            config,
            generation,
            listeners,
            routes,
            pools,
            http,
            admin_token,
        })
    }

    /// Each pool's nodes with its `[pool.health]`, for [`crate::backend::health::Health::apply`].
    pub fn health_targets(
        &self,
    ) -> impl Iterator<Item = (&[Arc<Node>], Option<&crate::config::HealthConfig>)> {
        self.pools
            .iter()
            .map(|p| (p.nodes.as_slice(), p.cfg.health.as_ref()))
    }

    /// The runtime view of the listener named `name`.
    pub fn listener(&self, name: &str) -> Option<&ListenerRt> {
        self.listeners.get(name)
    }

    /// The most specific route for (host, path) on `listener`.
    pub fn route(&self, host: Option<&str>, path: &str, listener: &str) -> Option<&Route> {
        self.routes.iter().find(|r| {
            r.host
                .as_deref()
                .is_none_or(|h| host.is_some_and(|x| x.eq_ignore_ascii_case(h)))
                && prefix_matches(path, &r.prefix)
                && (r.listeners.is_empty() || r.listeners.iter().any(|l| l == listener))
        })
    }
}

/// Whether `path` is under `prefix` at a segment boundary: `/api` matches `/api` and
/// `/api/x`, never `/apix` (a route for one application must not catch another's paths).
pub fn prefix_matches(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

fn prev_max(prev: Option<&Snapshot>, name: &str) -> Option<usize> {
    prev?
        .config
        .listeners
        .iter()
        .find(|l| l.name() == name)?
        .max_connections
}

fn route_sticky(sc: &StickyConfig) -> Result<RouteSticky, RoutingError> {
    let source = if let Some(c) = &sc.cookie {
        StickySource::cookie(c)?
    } else if let Some(h) = &sc.header {
        StickySource::header(h)?
    } else if let Some(q) = &sc.query {
        StickySource::query(q)?
    } else {
        StickySource::ClientIp
    };
    Ok(RouteSticky {
        source,
        fallback: sc.fallback,
        insert: if sc.insert { sc.cookie.clone() } else { None },
        ttl: sc.ttl.0,
    })
}

/// Runtime view of a listener inside a snapshot.
#[derive(Clone)]
pub struct ListenerRt {
    /// Listener name, as in the config.
    pub name: Arc<str>,
    /// TLS configuration with the listener's certificates; `None` for plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Per-listener connection cap (`max_connections`); kept across reloads while unchanged.
    pub conn_limit: Option<Arc<tokio::sync::Semaphore>>,
    /// TLS handshake rate limit (`handshakes_per_second`), charged at the ClientHello.
    pub handshake_limit: Option<Arc<herdgate_core::admission::HandshakeLimiter>>,
    /// Handshakes one client may have waiting for a token of `handshake_limit`.
    pub max_waiting_handshakes_per_client: usize,
    /// Who the client is on this listener: PROXY protocol and trusted proxies.
    pub identity: ListenerIdentity,
}

/// A listener's settings for finding the client behind load balancers.
#[derive(Clone, Debug, Default)]
pub struct ListenerIdentity {
    /// Connections start with a PROXY protocol header (`proxy_protocol`).
    pub proxy_protocol: bool,
    /// Peers whose PROXY header and `X-Forwarded-For` are believed (`trusted_proxies`).
    pub trusted_proxies: Arc<[herdgate_core::client_addr::Cidr]>,
}

/// Slow start begins at this fraction of the rate.
const SLOW_START_FLOOR: f64 = 0.1;

/// Parameters of one node from its pool (and its own overrides).
pub fn params(config: &Config, pool: &PoolConfig, node: &NodeConfig) -> AdmissionParams {
    // `[fleet]`: this instance's static share (1 without the section); with Redis the
    // fleet task replaces it with the leased share (`crate::fleet`).
    base_params(config, pool, node).scaled(herdgate_core::fleet::static_share(
        config.fleet.static_instances(),
    ))
}

/// A node's admission parameters for the whole fleet, before any `[fleet]` share.
pub fn base_params(config: &Config, pool: &PoolConfig, node: &NodeConfig) -> AdmissionParams {
    AdmissionParams {
        rate: node.admit_rate.unwrap_or(pool.admit_rate),
        burst: node.admit_burst.unwrap_or(pool.admit_burst),
        max_retry_after: pool.max_retry_after.0,
        claim_window: config.tickets.claim_window.0,
        slow_start: pool.slow_start.0,
        slow_start_floor: SLOW_START_FLOOR,
        max_slots_per_client: pool.max_slots_per_client,
        fresh_share: pool.fresh_share,
    }
}

/// Build a node's admission state (a node added by a reload starts in slow start).
pub fn node_admission(
    signer: &Arc<TicketSigner>,
    pool: &str,
    node: &str,
    params: AdmissionParams,
    slow_start: bool,
) -> Result<NodeAdmission, AdmissionError> {
    let ramp = slow_start && !params.slow_start.is_zero();
    NodeAdmission::builder(
        herdgate_core::admission::node_id(pool, node),
        params,
        signer.clone(),
    )
    .slow_start(ramp)
    .build(crate::clock::now())
}

#[cfg(test)]
mod tests {
    use super::prefix_matches;

    #[test]
    fn prefixes_match_at_segment_boundaries() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api/x", "/api"));
        assert!(prefix_matches("/api/", "/api"));
        assert!(!prefix_matches("/apix", "/api"));
        assert!(!prefix_matches("/ap", "/api"));
        assert!(prefix_matches("/anything", "/"));
        assert!(prefix_matches("/api/x", "/api/"));
        assert!(!prefix_matches("/api", "/api/"));
    }
}
