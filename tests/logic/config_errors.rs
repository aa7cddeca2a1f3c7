//! A table of broken configs, each with the message a user must see.

use crate::support::process::bin;
use herdgate::config::Config;
use std::path::Path;

const GOOD: &str = r#"
[[listener]]
name = "public"
bind = "127.0.0.1:8080"

[[route]]
pool = "chat"

[[pool]]
name = "chat"
[[pool.node]]
name = "chat-1"
addr = "127.0.0.1:9001"
"#;

fn errors(text: &str) -> String {
    match Config::parse(text, "bad.toml", Path::new("/nonexistent")) {
        Ok(_) => panic!("accepted a broken config:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn good_config_parses() {
    let c = Config::parse(GOOD, "good.toml", Path::new(".")).unwrap();
    assert_eq!(c.pools[0].nodes[0].name(), "chat-1");
    assert_eq!(c.timeouts.handshake.0, std::time::Duration::from_secs(5));
}

#[test]
fn broken_configs_each_name_the_key_and_the_fix() {
    // (what is broken, text, fragments the message must contain)
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "unknown key",
            GOOD.replace("name = \"public\"", "name = \"public\"\nbnid = \"x\""),
            vec!["listener[0]", "unknown field `bnid`", "line 4"],
        ),
        (
            "bad address",
            GOOD.replace("127.0.0.1:9001", "127.0.0.1:99999"),
            vec!["pool[0].node[0].addr", "invalid socket address"],
        ),
        (
            "duplicate node names",
            format!("{GOOD}[[pool.node]]\nname = \"chat-1\"\naddr = \"127.0.0.1:9002\"\n"),
            vec!["pool[0].node[1].name", "duplicate node name \"chat-1\" in pool chat", "line 15"],
        ),
        (
            "duration without unit",
            format!("{GOOD}[timeouts]\nhandshake = \"5\"\n"),
            vec!["timeouts.handshake", "has no unit"],
        ),
        (
            "zero admit rate",
            GOOD.replace("name = \"chat\"", "name = \"chat\"\nadmit_rate = 0"),
            vec!["pool[0].admit_rate", "chat: admit_rate must be > 0, got 0"],
        ),
        (
            "route to a missing pool",
            GOOD.replace("pool = \"chat\"", "pool = \"chta\""),
            vec!["route[0].pool", "no pool named \"chta\"", "line 7"],
        ),
        (
            "unreadable certificate file",
            GOOD.replace(
                "bind = \"127.0.0.1:8080\"",
                "bind = \"127.0.0.1:8080\"\n[[listener.tls.cert]]\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"",
            ),
            vec!["listener[0].tls.cert[0]", "cannot read /nonexistent/c.pem"],
        ),
        (
            "no listener",
            GOOD.replace("[[listener]]\nname = \"public\"\nbind = \"127.0.0.1:8080\"\n", ""),
            vec!["no [[listener]]"],
        ),
        (
            "duplicate listener address",
            format!("{GOOD}[[listener]]\nname = \"again\"\nbind = \"127.0.0.1:8080\"\n"),
            vec!["listener[1].bind", "127.0.0.1:8080 is bound by another listener"],
        ),
        (
            "wrong type",
            GOOD.replace("name = \"chat\"", "name = \"chat\"\nadmit_burst = \"ten\""),
            vec!["pool[0].admit_burst", "invalid type"],
        ),
        (
            "pool without nodes",
            format!("{GOOD}[[pool]]\nname = \"empty\"\nnode = []\n"),
            vec!["pool[1].node", "pool empty has no [[pool.node]]"],
        ),
        (
            "header limit below hyper's minimum",
            format!("{GOOD}[limits]\nmax_header_bytes = 100\n"),
            vec!["limits.max_header_bytes", "at least 8192"],
        ),
        (
            "sticky with two sources",
            GOOD.replace(
                "pool = \"chat\"",
                "pool = \"chat\"\nsticky = { cookie = \"sid\", header = \"x-s\" }",
            ),
            vec!["route[0].sticky", "exactly one of cookie, header, query, client_ip"],
        ),
        (
            "not TOML at all",
            "[[listener]\nname = ".to_string(),
            vec!["line 1"],
        ),
    ];
    assert!(cases.len() >= 10);
    for (what, text, want) in cases {
        let msg = errors(&text);
        for w in want {
            assert!(msg.contains(w), "{what}: message lacks {w:?}:\n{msg}");
        }
    }
}

#[test]
fn all_cross_field_errors_are_reported_at_once() {
    let text = GOOD
        .replace("pool = \"chat\"", "pool = \"nope\"")
        .replace("name = \"chat\"", "name = \"chat\"\nadmit_burst = 0");
    let msg = errors(&text);
    assert!(msg.contains("2 errors"), "{msg}");
    assert!(msg.contains("route[0].pool"));
    assert!(msg.contains("pool[0].admit_burst"));
}

#[test]
fn example_config_is_valid() {
    // The commented reference must stay loadable (its TLS files are optional there).
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/herdgate.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    if let Err(e) = Config::parse(&text, "herdgate.example.toml", path.parent().unwrap()) {
        panic!("{e}");
    }
}

#[test]
fn check_command_prints_ok_or_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, GOOD).unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, GOOD.replace("pool = \"chat\"", "pool = \"x\"")).unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("route[0].pool") && err.contains("line 7"),
        "{err}"
    );
}

#[test]
fn caps_and_timeouts_are_validated_by_key() {
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            format!("{GOOD}[limits]\nmax_connections_per_client = 0\n"),
            vec!["limits.max_connections_per_client", "must be > 0"],
        ),
        (
            format!("{GOOD}[limits]\nmax_tunnels_per_client = 0\n"),
            vec!["limits.max_tunnels_per_client", "must be > 0"],
        ),
        (
            format!("{GOOD}[timeouts]\nrequest_body = \"0ms\"\n"),
            vec!["timeouts.request_body", "must be > 0"],
        ),
        (
            format!("{GOOD}[timeouts]\nwrite = \"0s\"\n"),
            vec!["timeouts.write", "must be > 0"],
        ),
        (
            GOOD.replace(
                "name = \"public\"",
                "name = \"public\"\nmax_waiting_handshakes_per_client = 0",
            ),
            vec![
                "listener[0].max_waiting_handshakes_per_client",
                "must be > 0",
            ],
        ),
    ];
    for (text, want) in cases {
        let msg = errors(&text);
        for w in want {
            assert!(msg.contains(w), "message lacks {w:?}:\n{msg}");
        }
    }
    let c = Config::parse(GOOD, "good.toml", Path::new(".")).unwrap();
    assert_eq!(c.limits.max_connections_per_client, 2_000);
    assert_eq!(c.limits.max_tunnels_per_client, 1_000);
    assert_eq!(
        c.timeouts.request_body.0,
        std::time::Duration::from_secs(30)
    );
    assert_eq!(c.timeouts.write.0, std::time::Duration::from_secs(30));
    assert_eq!(c.listeners[0].max_waiting_handshakes_per_client, 64);
}
