//! Numeric values that would panic or overflow where they are used are refused by the
//! loader with the key named; the largest accepted values build a snapshot without panic.

use herdgate::config::Config;
use herdgate::snapshot::{BuildCtx, Snapshot};
use herdgate_core::admission::{TicketKey, TicketSigner};
use std::sync::Arc;

const BASE: &str = r#"
[[listener]]
name = "public"
bind = "127.0.0.1:8080"
#LISTENER

[[route]]
pool = "chat"
#ROUTE

[[pool]]
name = "chat"
#POOL
[[pool.node]]
name = "chat-1"
addr = "127.0.0.1:9001"
#NODE
"#;

/// BASE with `text` added to the section named by `at` ("TOP" appends a table at the end).
fn with(at: &str, text: &str) -> String {
    if at == "TOP" {
        return format!("{BASE}\n{text}\n");
    }
    BASE.replace(&format!("#{at}"), text)
}

fn load(text: &str) -> Result<Config, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herdgate.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).map_err(|e| e.to_string())
}

#[test]
fn values_that_would_panic_are_errors_naming_the_key() {
    let max = tokio::sync::Semaphore::MAX_PERMITS;
    // (section, text, key the message must name, fragment of the message)
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "TOP",
            format!("[limits]\nmax_connections = {}", max + 1),
            "limits.max_connections",
            "at most",
        ),
        (
            "TOP",
            format!("[limits]\nmax_connections = {}", i64::MAX),
            "limits.max_connections",
            "at most",
        ),
        (
            "TOP",
            "[limits]\nmax_connections = 0".into(),
            "limits.max_connections",
            "> 0",
        ),
        (
            "TOP",
            format!("[limits]\nmax_header_bytes = {}", i64::MAX),
            "limits.max_header_bytes",
            "at most",
        ),
        (
            "LISTENER",
            format!("max_connections = {}", max + 1),
            "listener[0].max_connections",
            "at most",
        ),
        (
            "LISTENER",
            "max_connections = 0".into(),
            "listener[0].max_connections",
            "> 0",
        ),
        (
            "LISTENER",
            "handshakes_per_second = 1e300".into(),
            "listener[0].handshakes_per_second",
            "between",
        ),
        (
            "LISTENER",
            "handshakes_per_second = 1e-300".into(),
            "listener[0].handshakes_per_second",
            "between",
        ),
        (
            "LISTENER",
            "handshakes_per_second = nan".into(),
            "listener[0].handshakes_per_second",
            "> 0",
        ),
        (
            "LISTENER",
            "handshakes_per_second = inf".into(),
            "listener[0].handshakes_per_second",
            "> 0",
        ),
        (
            "LISTENER",
            "handshakes_per_second = -5.0".into(),
            "listener[0].handshakes_per_second",
            "> 0",
        ),
        (
            "LISTENER",
            "handshakes_per_second = 10.0\nhandshake_burst = 0".into(),
            "listener[0].handshake_burst",
            ">= 1",
        ),
        (
            "LISTENER",
            "handshakes_per_second = 0.001\nhandshake_burst = 4000000000".into(),
            "listener[0].handshakes_per_second/handshake_burst",
            "one year",
        ),
        (
            "LISTENER",
            "[listener.tls]\nsession_cache = 9223372036854775807\ncert = []".into(),
            "listener[0].tls.session_cache",
            "at most",
        ),
        (
            "POOL",
            "admit_rate = 2e9".into(),
            "pool[0].admit_rate",
            "between",
        ),
        (
            "POOL",
            "admit_rate = 1e-300".into(),
            "pool[0].admit_rate",
            "between",
        ),
        (
            "POOL",
            "admit_rate = nan".into(),
            "pool[0].admit_rate",
            "> 0",
        ),
        (
            "POOL",
            "admit_rate = -inf".into(),
            "pool[0].admit_rate",
            "> 0",
        ),
        (
            "POOL",
            "admit_burst = 0".into(),
            "pool[0].admit_burst",
            ">= 1",
        ),
        (
            "POOL",
            "drain_rate = 1e-300".into(),
            "pool[0].drain_rate",
            "between",
        ),
        (
            "POOL",
            "drain_rate = 0.0".into(),
            "pool[0].drain_rate",
            "> 0",
        ),
        (
            "POOL",
            "max_retry_after = \"0s\"".into(),
            "pool[0].max_retry_after",
            "> 0",
        ),
        (
            "POOL",
            "[pool.queue]\ntimeout = \"1s\"\nmax_len = 0".into(),
            "pool[0].queue.max_len",
            "> 0",
        ),
        (
            "POOL",
            "[pool.health]\nrise = 0".into(),
            "pool[0].health",
            "> 0",
        ),
        (
            "POOL",
            "[pool.health]\ninterval = \"0s\"".into(),
            "pool[0].health",
            "> 0",
        ),
        (
            "POOL",
            "[pool.health]\npassive_failures = 0".into(),
            "pool[0].health.passive_failures",
            "> 0",
        ),
        (
            "NODE",
            "admit_rate = 1e10".into(),
            "pool[0].node[0].admit_rate",
            "between",
        ),
        (
            "NODE",
            "weight = 0".into(),
            "pool[0].node[0].weight",
            ">= 1",
        ),
        (
            "NODE",
            "admit_burst = 0".into(),
            "pool[0].node[0].admit_burst",
            ">= 1",
        ),
        (
            "ROUTE",
            "client_limit = { rate = 1e300 }".into(),
            "route[0].client_limit.rate",
            "between",
        ),
        (
            "ROUTE",
            "client_limit = { rate = 0.0 }".into(),
            "route[0].client_limit",
            "> 0",
        ),
        (
            "ROUTE",
            "client_limit = { rate = nan }".into(),
            "route[0].client_limit",
            "> 0",
        ),
        (
            "ROUTE",
            "client_limit = { rate = 1.0, burst = 0 }".into(),
            "route[0].client_limit",
            ">= 1",
        ),
        (
            "ROUTE",
            "client_limit = { rate = 0.0001, burst = 4000000000 }".into(),
            "route[0].client_limit.burst",
            "one year",
        ),
        (
            "ROUTE",
            "sticky = { cookie = \"s\", max_entries = 0 }".into(),
            "route[0].sticky.max_entries",
            "> 0",
        ),
        (
            "ROUTE",
            "sticky = { cookie = \"s\", max_entries_per_client = 0 }".into(),
            "route[0].sticky.max_entries_per_client",
            "> 0",
        ),
        (
            "TOP",
            "[timeouts]\nbackend_connect = \"0s\"".into(),
            "timeouts.backend_connect",
            "> 0",
        ),
        (
            "TOP",
            "[timeouts]\nhandshake = \"100000d\"".into(),
            "timeouts.handshake",
            "",
        ),
        (
            "TOP",
            "[tickets]\nclaim_window = \"9999999h\"".into(),
            "tickets.claim_window",
            "out of range",
        ),
        (
            "TOP",
            "[shutdown]\nspread = \"1e30s\"".into(),
            "shutdown.spread",
            "",
        ),
    ];
    for (at, text, key, fragment) in cases {
        let doc = with(at, &text);
        let msg = match load(&doc) {
            Ok(_) => panic!("accepted {text:?}"),
            Err(m) => m,
        };
        assert!(
            msg.contains(key),
            "{text:?}: message lacks the key {key:?}:\n{msg}"
        );
        assert!(
            msg.contains(fragment),
            "{text:?}: message lacks {fragment:?}:\n{msg}"
        );
    }
}

#[test]
fn the_largest_accepted_values_build_without_panic() {
    let max = tokio::sync::Semaphore::MAX_PERMITS;
    let doc = BASE
        .replace(
            "#LISTENER",
            &format!(
                "max_connections = {max}\nhandshakes_per_second = 1e9\nbacklog = 4294967295"
            ),
        )
        .replace(
            "#ROUTE",
            "sticky = { cookie = \"s\", max_entries = 9223372036854775807, \
             max_entries_per_client = 9223372036854775807 }\n\
             client_limit = { rate = 1e9, burst = 4294967295 }",
        )
        .replace(
            "#POOL",
            "admit_rate = 1e-6\nadmit_burst = 4294967295\ndrain_rate = 1e9\nmax_retry_after = \"8760h\"\n\
             slow_start = \"8760h\"\n[pool.queue]\ntimeout = \"8760h\"\nmax_len = 9223372036854775807",
        )
        .replace("#NODE", "weight = 4294967295\nadmit_rate = 1e9");
    let doc = format!(
        "{doc}\n[limits]\nmax_connections = {max}\nmax_header_bytes = 1048576\n\
         [tickets]\nclaim_window = \"8760h\"\n[shutdown]\nspread = \"8760h\"\ntimeout = \"8760h\"\n"
    );
    let cfg = load(&doc).unwrap_or_else(|e| panic!("{e}"));
    let nodes = dashmap::DashMap::new();
    let signer = Arc::new(TicketSigner::new(TicketKey::random(), 1));
    let snap = Snapshot::build(
        Arc::new(cfg),
        BuildCtx {
            nodes: &nodes,
            signer: &signer,
            generation: 1,
            prev: None,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snap.pools.len(), 1);
    assert!(snap.pools[0].sticky.is_some());
}
