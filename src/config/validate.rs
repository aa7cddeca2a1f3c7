//! Cross-field checks: everything serde cannot see in one value.

use super::{line_col, Config, ConfigError, HealthKind};
use std::collections::HashSet;
use toml::Spanned;

pub mod numeric;

struct Report<'a> {
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Report<'_> {
    fn at<T>(&mut self, key: String, span: Option<&Spanned<T>>, message: impl Into<String>) {
        let position = span.map(|s| line_col(self.text, s.span().start));
        self.errors.push(ConfigError {
            key,
            position,
            message: message.into(),
        });
    }
}

/// Every cross-field problem in `cfg` (empty when valid). `text` is the source, for positions.
pub fn validate(cfg: &Config, text: &str) -> Vec<ConfigError> {
    let mut r = Report {
        text,
        errors: Vec::new(),
    };
    let none: Option<&Spanned<String>> = None;

    numeric::check(cfg, &mut r);
    if cfg.listeners.is_empty() {
        r.at(
            "listener".into(),
            none,
            "no [[listener]]: add at least one, e.g. bind = \"0.0.0.0:8080\"",
        );
    }
    if cfg.runtime.threads > super::MAX_THREADS {
        r.at(
            "runtime.threads".into(),
            none,
            format!(
                "at most {} (0: one per CPU), got {}",
                super::MAX_THREADS,
                cfg.runtime.threads
            ),
        );
    }
    if cfg.limits.max_connections == 0 {
        r.at("limits.max_connections".into(), none, "must be > 0, got 0");
    }
    for (key, v) in [
        (
            "limits.max_connections_per_client",
            cfg.limits.max_connections_per_client,
        ),
        (
            "limits.max_tunnels_per_client",
            cfg.limits.max_tunnels_per_client,
        ),
    ] {
        if v == 0 {
            r.at(key.into(), none, "must be > 0, got 0");
        }
    }
    if cfg.limits.max_header_bytes < 8192 {
        r.at(
            "limits.max_header_bytes".into(),
            none,
            format!(
                "must be at least 8192 (hyper's minimum read buffer), got {}",
                cfg.limits.max_header_bytes
            ),
        );
    }
    for (key, d) in [
        ("timeouts.handshake", cfg.timeouts.handshake),
        ("timeouts.backend_connect", cfg.timeouts.backend_connect),
        ("timeouts.backend_response", cfg.timeouts.backend_response),
        ("timeouts.close", cfg.timeouts.close),
        ("timeouts.request_body", cfg.timeouts.request_body),
        ("timeouts.write", cfg.timeouts.write),
    ] {
        if d.0.is_zero() {
            r.at(key.into(), none, "must be > 0");
        }
    }
    if cfg.shutdown.timeout.0 < cfg.shutdown.spread.0 {
        r.at(
            "shutdown.timeout".into(),
            none,
            format!(
                "must be at least shutdown.spread ({}), got {}",
                cfg.shutdown.spread, cfg.shutdown.timeout
            ),
        );
    }
    r.errors.extend(super::fleet::check(&cfg.fleet));
    if let Some(p) = &cfg.tickets.key_file {
        if let Err(e) = std::fs::metadata(p) {
            r.at(
                "tickets.key_file".into(),
                none,
                format!("cannot read {}: {e}", p.display()),
            );
        }
    }
    if let Some(p) = &cfg.admin.token_file {
        if let Err(e) = super::AdminToken::load(p) {
            r.at("admin.token_file".into(), none, e.to_string());
        }
    }
    if cfg.admin.protect_reads && cfg.admin.token_file.is_none() {
        r.at(
            "admin.protect_reads".into(),
            none,
            "protect_reads = true needs admin.token_file (the token reads would require)",
        );
    }
    if cfg.admin.max_connections == 0 {
        r.at("admin.max_connections".into(), none, "must be >= 1, got 0");
    }
    if cfg.admin.idle_timeout.0.is_zero() {
        r.at("admin.idle_timeout".into(), none, "must be > 0");
    }

    let mut names = HashSet::new();
    let mut binds = HashSet::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        let key = format!("listener[{i}]");
        if l.name().is_empty() {
            r.at(format!("{key}.name"), Some(&l.name), "must not be empty");
        }
        if !names.insert(l.name()) {
            r.at(
                format!("{key}.name"),
                Some(&l.name),
                format!("duplicate listener name {:?}", l.name()),
            );
        }
        // Port 0 (an ephemeral port, in tests and the demo) never collides.
        if l.bind.port() != 0 && !binds.insert(l.bind) {
            r.at(
                format!("{key}.bind"),
                Some(&l.name),
                format!("address {} is bound by another listener", l.bind),
            );
        }
        if cfg.admin.enabled && l.bind.port() != 0 && l.bind == cfg.admin.bind {
            r.at(
                format!("{key}.bind"),
                Some(&l.name),
                format!("address {} is the admin listener's", l.bind),
            );
        }
        if let Some(hps) = l.handshakes_per_second {
            if !(hps.is_finite() && hps > 0.0) {
                r.at(
                    format!("{key}.handshakes_per_second"),
                    Some(&l.name),
                    format!("must be > 0, got {hps}"),
                );
            }
        }
        if l.max_waiting_handshakes_per_client == 0 {
            r.at(
                format!("{key}.max_waiting_handshakes_per_client"),
                Some(&l.name),
                "must be > 0, got 0",
            );
        }
        if l.proxy_protocol && l.trusted_proxies.is_empty() {
            r.at(
                format!("{key}.trusted_proxies"),
                Some(&l.name),
                "proxy_protocol = true needs the load balancers' CIDRs here, \
                 e.g. trusted_proxies = [\"10.0.0.0/8\"]; without them every connection is refused",
            );
        }
        if l.max_connections == Some(0) {
            r.at(
                format!("{key}.max_connections"),
                Some(&l.name),
                "must be > 0, got 0",
            );
        }
        if let Some(tls) = &l.tls {
            if tls.certs.is_empty() {
                r.at(
                    format!("{key}.tls.cert"),
                    Some(&l.name),
                    "TLS needs at least one [[listener.tls.cert]]",
                );
            }
            if tls.certs.iter().filter(|c| c.default).count() > 1 {
                r.at(
                    format!("{key}.tls.cert"),
                    Some(&l.name),
                    "more than one certificate has default = true",
                );
            }
            for (j, c) in tls.certs.iter().enumerate() {
                if let Err(e) = crate::tls::load_certified_key(c.cert.get_ref(), c.key.get_ref()) {
                    r.at(format!("{key}.tls.cert[{j}]"), Some(&c.cert), e.to_string());
                }
            }
        }
    }

    let mut pools = HashSet::new();
    for (i, p) in cfg.pools.iter().enumerate() {
        let key = format!("pool[{i}]");
        let at = Some(&p.name);
        if p.name().is_empty() {
            r.at(format!("{key}.name"), at, "must not be empty");
        }
        if !pools.insert(p.name()) {
            r.at(
                format!("{key}.name"),
                at,
                format!("duplicate pool name {:?}", p.name()),
            );
        }
        let pn = p.name();
        check_rate(&mut r, format!("{key}.admit_rate"), at, pn, p.admit_rate);
        if !(p.fresh_share.is_finite() && (0.0..=0.5).contains(&p.fresh_share)) {
            r.at(
                format!("{key}.fresh_share"),
                at,
                format!(
                    "pool {pn}: fresh_share must be in [0, 0.5], got {}",
                    p.fresh_share
                ),
            );
        }
        if p.admit_burst == 0 {
            r.at(
                format!("{key}.admit_burst"),
                at,
                format!("pool {pn}: admit_burst must be >= 1, got 0"),
            );
        }
        if p.max_retry_after.0.is_zero() {
            r.at(format!("{key}.max_retry_after"), at, "must be > 0");
        }
        if p.queue.max_len == 0 {
            r.at(
                format!("{key}.queue.max_len"),
                at,
                "must be > 0 (to hold nothing, set queue.timeout = \"0s\")",
            );
        }
        if let Some(d) = p.drain_rate {
            if !(d.is_finite() && d > 0.0) {
                r.at(
                    format!("{key}.drain_rate"),
                    at,
                    format!("must be > 0, got {d}"),
                );
            }
        }
        if p.drain_rate.is_some() && p.drain_spread.is_some() {
            r.at(
                format!("{key}.drain_rate"),
                at,
                "set drain_rate or drain_spread, not both",
            );
        }
        if let Some(h) = &p.health {
            if h.kind == HealthKind::Http && !h.path.as_deref().is_some_and(|s| s.starts_with('/'))
            {
                r.at(
                    format!("{key}.health.path"),
                    at,
                    "kind = \"http\" needs a path starting with '/', e.g. path = \"/healthz\"",
                );
            }
            if h.interval.0.is_zero() || h.timeout.0.is_zero() || h.rise == 0 || h.fall == 0 {
                r.at(
                    format!("{key}.health"),
                    at,
                    "interval, timeout, rise and fall must all be > 0",
                );
            }
        }
        if p.nodes.is_empty() {
            r.at(
                format!("{key}.node"),
                at,
                format!("pool {pn} has no [[pool.node]]"),
            );
        }
        let mut node_names = HashSet::new();
        let mut addrs = HashSet::new();
        for (j, n) in p.nodes.iter().enumerate() {
            let nkey = format!("{key}.node[{j}]");
            let nat = Some(&n.name);
            if n.name().is_empty() {
                r.at(format!("{nkey}.name"), nat, "must not be empty");
            }
            if !node_names.insert(n.name()) {
                r.at(
                    format!("{nkey}.name"),
                    nat,
                    format!("duplicate node name {:?} in pool {pn}", n.name()),
                );
            }
            if !addrs.insert(n.addr) {
                r.at(
                    format!("{nkey}.addr"),
                    nat,
                    format!("address {} is used by another node of pool {pn}", n.addr),
                );
            }
            if n.addr.port() == 0 {
                r.at(format!("{nkey}.addr"), nat, "port must not be 0");
            }
            if n.weight == 0 {
                r.at(
                    format!("{nkey}.weight"),
                    nat,
                    format!("node {}: weight must be >= 1, got 0", n.name()),
                );
            }
            if let Some(rate) = n.admit_rate {
                check_rate(&mut r, format!("{nkey}.admit_rate"), nat, n.name(), rate);
            }
            if n.admit_burst == Some(0) {
                r.at(
                    format!("{nkey}.admit_burst"),
                    nat,
                    format!("node {}: admit_burst must be >= 1, got 0", n.name()),
                );
            }
        }
    }

    for (i, route) in cfg.routes.iter().enumerate() {
        let key = format!("route[{i}]");
        let at = Some(&route.pool);
        if !pools.contains(route.pool.get_ref().as_str()) {
            r.at(
                format!("{key}.pool"),
                at,
                format!(
                    "no pool named {:?} (pools: {})",
                    route.pool.get_ref(),
                    cfg.pools
                        .iter()
                        .map(|p| p.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        if !route.path_prefix.starts_with('/') {
            r.at(
                format!("{key}.path_prefix"),
                at,
                format!("must start with '/', got {:?}", route.path_prefix),
            );
        }
        for l in &route.listeners {
            if !names.contains(l.as_str()) {
                r.at(
                    format!("{key}.listeners"),
                    at,
                    format!("no listener named {l:?}"),
                );
            }
        }
        if let Some(s) = &route.sticky {
            let sources = [
                s.cookie.is_some(),
                s.header.is_some(),
                s.query.is_some(),
                s.client_ip,
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if sources != 1 {
                r.at(
                    format!("{key}.sticky"),
                    at,
                    format!("set exactly one of cookie, header, query, client_ip (got {sources})"),
                );
            }
            let named = [
                s.cookie
                    .as_deref()
                    .map(herdgate_core::routing::StickySource::cookie),
                s.header
                    .as_deref()
                    .map(herdgate_core::routing::StickySource::header),
                s.query
                    .as_deref()
                    .map(herdgate_core::routing::StickySource::query),
            ];
            for e in named.into_iter().flatten().filter_map(Result::err) {
                r.at(format!("{key}.sticky"), at, e.to_string());
            }
            if s.insert && s.cookie.is_none() {
                r.at(
                    format!("{key}.sticky.insert"),
                    at,
                    "insert = true needs cookie = \"name\"",
                );
            }
            if s.max_entries == 0 {
                r.at(format!("{key}.sticky.max_entries"), at, "must be > 0");
            }
        }
        if let Some(c) = &route.client_limit {
            if !(c.rate.is_finite() && c.rate > 0.0) || c.burst == 0 {
                r.at(
                    format!("{key}.client_limit"),
                    at,
                    format!(
                        "rate must be > 0 and burst >= 1, got rate {} burst {}",
                        c.rate, c.burst
                    ),
                );
            }
        }
    }
    r.errors
}

fn check_rate(r: &mut Report, key: String, at: Option<&Spanned<String>>, who: &str, rate: f64) {
    if !(rate.is_finite() && rate > 0.0) {
        r.at(
            key,
            at,
            format!("{who}: admit_rate must be > 0, got {rate}"),
        );
    }
}
