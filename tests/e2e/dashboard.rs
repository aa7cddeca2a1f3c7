//! docs/grafana/herdgate.json and docs/prometheus/alerts.yml query only metrics a running
//! herdgate exports: both files are loaded, every `herdgate_*` name in their queries is
//! collected, and each must be in the binary's `/metrics` after some traffic (an honest
//! tunnel, a client turned away, a drain, a reload). Histograms are queried by their
//! `_bucket`/`_sum`/`_count` series, which is what `/metrics` shows.

use crate::support::eventually;
use crate::support::http1::http_get;
use crate::support::net::free_addr;
use crate::support::nodes::echo_nodes;
use crate::support::process::Herdgate;
use crate::support::proxy::admin_node;
use crate::support::ws::{echo_text, ws_try};
use std::collections::BTreeSet;
use std::path::Path;

/// Names other engineers' work exports, not yet on this branch: (name, who provides it).
const PROVIDED_ELSEWHERE: &[(&str, &str)] = &[];

fn repo(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every `herdgate_*` identifier in `text`.
fn names(text: &str, out: &mut BTreeSet<String>) {
    let mut rest = text;
    while let Some(i) = rest.find("herdgate_") {
        let ok_start = rest[..i]
            .chars()
            .last()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if ok_start {
            out.insert(name.clone());
        }
        rest = &rest[i + name.len()..];
    }
}

/// The queries of the dashboard (targets and annotations), after checking its shape.
fn dashboard_queries() -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(&repo("docs/grafana/herdgate.json"))
        .expect("docs/grafana/herdgate.json is JSON");
    assert_eq!(v["title"], "herdgate");
    let panels = v["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut queries = Vec::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id {p}"
        );
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(x + w <= 24, "panel {} off the grid", p["title"]);
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            queries.push(t["expr"].as_str().expect("expr").to_owned());
        }
    }
    for a in v["annotations"]["list"].as_array().unwrap() {
        queries.extend(a["expr"].as_str().map(str::to_owned));
    }
    queries
}

/// The `expr` of each rule (`expr: x` or a folded `expr: >-` block), after checking that
/// every rule has a name and an expression.
fn alert_queries() -> Vec<String> {
    let text = repo("docs/prometheus/alerts.yml");
    assert!(text.lines().any(|l| l.trim() == "groups:"));
    let alerts = text
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    let mut queries = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        let Some(e) = l.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let indent = l.len() - l.trim_start().len();
        let mut q = e.trim().trim_start_matches(">-").trim().to_owned();
        while let Some(next) = lines.peek() {
            if next.len() - next.trim_start().len() <= indent || next.trim().is_empty() {
                break;
            }
            q.push(' ');
            q.push_str(next.trim());
            lines.next();
        }
        assert!(!q.is_empty(), "an empty expr");
        queries.push(q);
    }
    assert_eq!(queries.len(), alerts, "one expr per alert");
    assert!(alerts >= 4, "node down, backlog, reload failed, fallback");
    queries
}

/// The metric names in a Prometheus text exposition.
fn exported(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_query_only_exported_metrics() {
    let mut wanted = BTreeSet::new();
    for q in dashboard_queries().iter().chain(alert_queries().iter()) {
        names(q, &mut wanted);
    }
    assert!(wanted.len() > 20, "{wanted:?}");

    let nodes = echo_nodes(1).await;
    let (listen, admin) = (free_addr(), free_addr());
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin.token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let text = format!(
        "[admin]\nbind = \"{admin}\"\ntoken_file = \"{}\"\n\n\
         [[listener]]\nname = \"edge\"\nbind = \"{listen}\"\n\n\
         [[route]]\npool = \"p\"\n\n[[pool]]\nname = \"p\"\nadmit_rate = 1\nadmit_burst = 1\n\
         [[pool.node]]\nname = \"n\"\naddr = \"{}\"\n",
        token.display(),
        nodes[0].addr
    );
    let h = Herdgate::start(&text).await;
    // An honest tunnel, a client turned away (the retry-after histogram), a drain of the
    // node (its tunnel closed) and a reload.
    let (mut ws, _) = ws_try(None, listen, "/", &[]).await.unwrap();
    echo_text(&mut ws, "hi").await;
    let refused = ws_try(Some("127.0.0.2".parse().unwrap()), listen, "/", &[]).await;
    assert_eq!(refused.err().as_deref(), Some("HTTP 503"));
    let out = std::process::Command::new(crate::support::process::bin())
        .args(["drain", "p/n", "--config"])
        .arg(h.config_path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(admin_node(admin, "n").await.draining);
    h.signal("HUP");
    let mut have = BTreeSet::new();
    eventually("the reload counted", || async move {
        let (_, m) = http_get(admin, "/metrics").await;
        crate::support::metrics::metric(&m, "herdgate_config_reloads_total", &[]) == 1.0
    })
    .await;
    let (_, metrics) = http_get(admin, "/metrics").await;
    have.extend(exported(&metrics));

    let missing: Vec<&String> = wanted
        .iter()
        .filter(|n| !have.contains(*n))
        .filter(|n| !PROVIDED_ELSEWHERE.iter().any(|(p, _)| p == n))
        .collect();
    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:?}\n/metrics:\n{metrics}"
    );
}

#[test]
fn names_are_whole_identifiers() {
    let mut out = BTreeSet::new();
    names(
        "sum by (le) (rate(herdgate_retry_after_seconds_bucket{pool=~\"$pool\"}[1m])) > x_herdgate_no",
        &mut out,
    );
    assert_eq!(
        out.into_iter().collect::<Vec<_>>(),
        ["herdgate_retry_after_seconds_bucket"]
    );
}
