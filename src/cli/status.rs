//! `herdgate status [--admin URL] [--watch]`: a terminal table of the nodes of a running
//! herdgate (health, draining, tunnels, admitted/s, rejected/s, backlog, current rate),
//! from its admin listener: `/admin/nodes` for the state, `/metrics` twice one second
//! apart for the rates. The address and token come from the config file like
//! `drain`/`undrain`; `--admin http://HOST:PORT` names the listener instead. `--watch`
//! draws the table again every second (clearing the screen only on a terminal).
//!
//! [`render`] is the table, a pure function; the demo's live view draws the same one.

use super::admin_cmd::{exchange, reachable, Failure};
use herdgate::admin::NodeReport;
use herdgate::config::{AdminToken, Config};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// One line of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `pool/node`.
    pub node: String,
    /// Health checks count it up.
    pub healthy: bool,
    /// It is draining.
    pub draining: bool,
    /// Tunnels open to it.
    pub tunnels: u64,
    /// Admissions per second over the last interval (`None` before a second sample).
    pub admitted_per_s: Option<f64>,
    /// Rejections per second over the last interval.
    pub rejected_per_s: Option<f64>,
    /// How far ahead its schedule is booked, in seconds.
    pub backlog_s: f64,
    /// The admission rate in force now (lower during slow start), per second.
    pub rate: f64,
}

const HEADERS: [&str; 8] = [
    "NODE", "HEALTH", "DRAINING", "TUNNELS", "ADMIT/S", "REJECT/S", "BACKLOG", "RATE/S",
];

/// The table: a header and one line per row, columns aligned, numbers right-aligned;
/// `-` for a rate not known yet. Control characters in names are shown as `?`.
pub fn render(rows: &[Row]) -> String {
    let rate = |r: Option<f64>| r.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                r.node
                    .chars()
                    .map(|c| if c.is_control() { '?' } else { c })
                    .collect(),
                if r.healthy { "up" } else { "DOWN" }.to_owned(),
                if r.draining { "yes" } else { "-" }.to_owned(),
                r.tunnels.to_string(),
                rate(r.admitted_per_s),
                rate(r.rejected_per_s),
                format!("{:.1}s", r.backlog_s),
                format!("{:.1}", r.rate),
            ]
        })
        .collect();
    let mut width = HEADERS.map(str::len);
    for c in &cells {
        for (w, s) in width.iter_mut().zip(c) {
            *w = (*w).max(s.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cols: &[&str]| {
        for (i, (s, w)) in cols.iter().zip(width).enumerate() {
            let sep = if i == 0 { "" } else { "  " };
            // Names and words to the left, numbers to the right.
            let _ = if i < 3 {
                write!(out, "{sep}{s:<w$}")
            } else {
                write!(out, "{sep}{s:>w$}")
            };
        }
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push('\n');
    };
    line(&HEADERS);
    for c in &cells {
        line(&c.each_ref().map(String::as_str));
    }
    out
}

/// Where the admin listener is and the token to show it.
struct Admin {
    addr: SocketAddr,
    token: Option<AdminToken>,
}

/// `http://HOST:PORT` (a trailing `/` allowed) to an address; HOST is an IP address.
fn parse_url(url: &str) -> Result<SocketAddr, String> {
    let bad = || {
        format!("--admin {url:?}: expected http://IP:PORT (the admin listener, e.g. http://127.0.0.1:9900)")
    };
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    rest.parse::<SocketAddr>().map_err(|_| bad())
}

fn admin(url: Option<&str>, config: Option<&Path>) -> Result<Admin, Failure> {
    let cfg = match (url, config) {
        // --admin alone: no token (enough unless admin.protect_reads).
        (Some(_), None) => None,
        (_, c) => {
            let path = c.unwrap_or(Path::new(crate::DEFAULT_CONFIG));
            Some(Config::load(path).map_err(|e| Failure::Usage(e.to_string()))?)
        }
    };
    let addr = match (url, &cfg) {
        (Some(u), _) => parse_url(u).map_err(Failure::Usage)?,
        (None, Some(c)) if !c.admin.enabled => {
            return Err(Failure::Usage(
                "the admin listener is disabled ([admin] enabled = false)".into(),
            ))
        }
        (None, Some(c)) => reachable(c.admin.bind),
        (None, None) => return Err(Failure::Usage("no admin listener given".into())),
    };
    let token = match cfg.as_ref().and_then(|c| c.admin.token_file.as_ref()) {
        Some(f) => Some(
            AdminToken::load(f).map_err(|e| Failure::Usage(format!("admin.token_file: {e}")))?,
        ),
        None => None,
    };
    Ok(Admin { addr, token })
}

/// What one look at the admin listener found.
struct Sample {
    at: Instant,
    nodes: Vec<NodeReport>,
    /// (pool, node) -> (admitted, rejected) totals.
    totals: HashMap<(String, String), (f64, f64)>,
}

fn get(a: &Admin, path: &str) -> Result<String, Failure> {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        a.addr
    )
    .into_bytes();
    if let Some(t) = &a.token {
        req.extend_from_slice(b"Authorization: Bearer ");
        req.extend_from_slice(t.expose());
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    let (status, body) = exchange(a.addr, &req).map_err(|e| {
        Failure::Request(format!(
            "cannot reach the admin listener at {}: {e}",
            a.addr
        ))
    })?;
    match status {
        200 => Ok(body),
        401 | 403 => Err(Failure::Request(format!(
            "{path}: {status}: the admin listener wants its token (admin.protect_reads); \
             pass --config with admin.token_file"
        ))),
        _ => Err(Failure::Request(format!(
            "{path}: {status} {}",
            body.trim()
        ))),
    }
}

fn sample(a: &Admin) -> Result<Sample, Failure> {
    let nodes: Vec<NodeReport> = serde_json::from_str(&get(a, "/admin/nodes")?)
        .map_err(|e| Failure::Request(format!("/admin/nodes: not the expected JSON: {e}")))?;
    let totals = totals(&get(a, "/metrics")?);
    Ok(Sample {
        at: Instant::now(),
        nodes,
        totals,
    })
}

/// Admitted and rejected totals per (pool, node) from a Prometheus text exposition.
fn totals(metrics: &str) -> HashMap<(String, String), (f64, f64)> {
    let mut out: HashMap<(String, String), (f64, f64)> = HashMap::new();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        let admitted = match name {
            herdgate::metrics::ADMITTED => true,
            herdgate::metrics::REJECTED => false,
            _ => continue,
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        let (mut pool, mut node) = (None, None);
        for pair in labels.split("\",") {
            match pair.split_once("=\"") {
                Some(("pool", p)) => pool = Some(p.trim_end_matches('"').to_owned()),
                Some(("node", n)) => node = Some(n.trim_end_matches('"').to_owned()),
                _ => {}
            }
        }
        if let (Some(p), Some(n)) = (pool, node) {
            let e = out.entry((p, n)).or_default();
            if admitted {
                e.0 += v;
            } else {
                e.1 += v;
            }
        }
    }
    out
}

/// The table's rows for `now`, with rates against `before` (if any).
fn rows(now: &Sample, before: Option<&Sample>) -> Vec<Row> {
    now.nodes
        .iter()
        .map(|n| {
            let key = (n.pool.clone(), n.node.clone());
            let per_s = |f: fn(&(f64, f64)) -> f64| {
                let b = before?;
                let dt = now.at.duration_since(b.at).as_secs_f64();
                let (x, y) = (now.totals.get(&key)?, b.totals.get(&key)?);
                // A node re-created by a reload starts its counters again: no negative rate.
                (dt > 0.0).then(|| ((f(x) - f(y)) / dt).max(0.0))
            };
            Row {
                node: format!("{}/{}", n.pool, n.node),
                healthy: n.healthy,
                draining: n.draining,
                tunnels: n.open_tunnels,
                admitted_per_s: per_s(|t| t.0),
                rejected_per_s: per_s(|t| t.1),
                backlog_s: n.schedule_backlog_seconds,
                rate: n.admit_rate,
            }
        })
        .collect()
}

/// Admitted and rejected totals of each node of the herdgate running in this process, in
/// table order: what [`live_rows`] makes rates of (the demo's live view).
pub fn live_totals(h: &herdgate::server::Handle) -> Vec<(u64, u64)> {
    let snap = h.snapshot();
    let totals = snap.pools.iter().flat_map(|p| p.nodes.iter()).map(|n| {
        let s = n.admission.stats();
        let admitted = s.admitted_bucket + s.admitted_promise + s.admitted_ticket;
        (admitted + s.admitted_fresh, s.rejected)
    });
    totals.collect()
}

/// The table's rows for the herdgate running in this process, with rates against
/// `before` ([`live_totals`] `secs` seconds ago).
pub fn live_rows(h: &herdgate::server::Handle, before: &[(u64, u64)], secs: f64) -> Vec<Row> {
    let snap = h.snapshot();
    let now = live_totals(h);
    let per_s = |a: u64, b: Option<u64>| {
        b.filter(|_| secs > 0.0)
            .map(|b| a.saturating_sub(b) as f64 / secs)
    };
    let nodes = snap.pools.iter().flat_map(|p| p.nodes.iter());
    nodes
        .zip(now)
        .enumerate()
        .map(|(i, (n, (admitted, rejected)))| {
            let (rate, backlog) = herdgate::admission::node_rate_backlog(n);
            Row {
                node: format!("{}/{}", n.key.pool, n.key.name),
                healthy: n.is_healthy(),
                draining: n.is_draining(),
                tunnels: n.open_tunnels.load(std::sync::atomic::Ordering::Relaxed),
                admitted_per_s: per_s(admitted, before.get(i).map(|b| b.0)),
                rejected_per_s: per_s(rejected, before.get(i).map(|b| b.1)),
                backlog_s: backlog.as_secs_f64(),
                rate,
            }
        })
        .collect()
}

/// Run `herdgate status`.
pub fn run(url: Option<&str>, config: Option<&Path>, watch: bool) -> Result<(), Failure> {
    let a = admin(url, config)?;
    let tty = std::io::stdout().is_terminal();
    let mut before = sample(&a)?;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = sample(&a)?;
        let mut frame = String::new();
        if watch && tty {
            frame.push_str("\x1b[H\x1b[2J");
        }
        let secs = now.at.duration_since(before.at).as_secs_f64();
        let _ = writeln!(
            frame,
            "herdgate {} ({} nodes, rates over {secs:.1} s)",
            a.addr,
            now.nodes.len()
        );
        frame.push_str(&render(&rows(&now, Some(&before))));
        let mut out = std::io::stdout().lock();
        let written = out.write_all(frame.as_bytes()).and_then(|()| out.flush());
        if written.is_err() || !watch {
            // A closed pipe (`| head`) ends the watch quietly.
            return Ok(());
        }
        if !tty {
            let _ = writeln!(out);
        }
        before = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(node: &str, tunnels: u64, rates: Option<(f64, f64)>) -> Row {
        Row {
            node: node.into(),
            healthy: tunnels != 0,
            draining: tunnels > 100,
            tunnels,
            admitted_per_s: rates.map(|r| r.0),
            rejected_per_s: rates.map(|r| r.1),
            backlog_s: 2.34,
            rate: 200.0,
        }
    }

    #[test]
    fn the_table_aligns_every_column() {
        let t = render(&[
            row("chat/chat-1", 1234, Some((12.0, 3.5))),
            row("chat/c2\x1b", 0, None),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines,
            [
                "NODE         HEALTH  DRAINING  TUNNELS  ADMIT/S  REJECT/S  BACKLOG  RATE/S",
                "chat/chat-1  up      yes          1234     12.0       3.5     2.3s   200.0",
                "chat/c2?     DOWN    -               0        -         -     2.3s   200.0",
            ]
        );
    }

    #[test]
    fn an_empty_table_is_its_header() {
        assert_eq!(render(&[]).lines().count(), 1);
    }

    #[test]
    fn admin_urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:9900/"),
            Ok("127.0.0.1:9900".parse().unwrap())
        );
        assert_eq!(
            parse_url("http://[::1]:9900"),
            Ok("[::1]:9900".parse().unwrap())
        );
        for bad in [
            "127.0.0.1:9900",
            "https://127.0.0.1:9900",
            "http://host:1",
            "http://1.2.3.4",
        ] {
            let e = parse_url(bad).unwrap_err();
            assert!(e.contains("expected http://IP:PORT"), "{e}");
        }
    }

    #[test]
    fn rates_are_differences_over_the_interval() {
        let m = |a: u64, r: u64| {
            format!(
                "# TYPE herdgate_admission_admitted_total counter\n\
                 herdgate_admission_admitted_total{{pool=\"p\",node=\"n\",via=\"bucket\"}} {a}\n\
                 herdgate_admission_admitted_total{{pool=\"p\",node=\"n\",via=\"ticket\"}} 1\n\
                 herdgate_admission_rejected_total{{pool=\"p\",node=\"n\",reason=\"busy\"}} {r}\n\
                 herdgate_admission_admitted_total{{pool=\"p\",node=\"other\",via=\"bucket\"}} 7\n"
            )
        };
        let node = || NodeReport {
            pool: "p".into(),
            node: "n".into(),
            addr: "127.0.0.1:1".into(),
            healthy: true,
            draining: false,
            open_tunnels: 3,
            admit_rate: 50.0,
            schedule_backlog_seconds: 0.5,
            fleet_mode: "static".into(),
            fleet_instances: 1,
            fleet_share: 1.0,
        };
        let t0 = Instant::now();
        let a = Sample {
            at: t0,
            nodes: vec![],
            totals: totals(&m(10, 4)),
        };
        let b = Sample {
            at: t0 + Duration::from_secs(2),
            nodes: vec![node()],
            totals: totals(&m(30, 10)),
        };
        let r = rows(&b, Some(&a));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].node, "p/n");
        assert_eq!(
            (r[0].admitted_per_s, r[0].rejected_per_s),
            (Some(10.0), Some(3.0))
        );
        assert_eq!(r[0].tunnels, 3);
        // Without an earlier sample: no rate yet.
        assert_eq!(rows(&b, None)[0].admitted_per_s, None);
        // Counters that went back (the node was made again by a reload): zero, not negative.
        let c = Sample {
            at: b.at + Duration::from_secs(1),
            nodes: vec![node()],
            totals: totals(&m(5, 1)),
        };
        assert_eq!(rows(&c, Some(&b))[0].admitted_per_s, Some(0.0));
    }
}
