//! `[admin]` settings: defaults, and every broken value named by its key, in this process
//! and through the binary (`herdgate run` refuses to start without a usable token).

use crate::support::process::bin;
use herdgate::config::Config;
use herdgate::server::Server;
use std::path::Path;

const BODY: &str = r#"
[[listener]]
name = "public"
bind = "127.0.0.1:0"

[[route]]
pool = "chat"

[[pool]]
name = "chat"
[[pool.node]]
name = "chat-1"
addr = "127.0.0.1:9001"
"#;

fn with_admin(admin: &str) -> String {
    format!("[admin]\nbind = \"127.0.0.1:0\"\n{admin}\n{BODY}")
}

fn errors(text: &str, dir: &Path) -> String {
    match Config::parse(text, "bad.toml", dir) {
        Ok(_) => panic!("accepted a broken config:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn admin_defaults() {
    let c = Config::parse(BODY, "good.toml", Path::new(".")).unwrap();
    assert!(!c.admin.protect_reads);
    assert_eq!(c.admin.max_connections, 64);
    assert_eq!(c.admin.idle_timeout.0, std::time::Duration::from_secs(10));
    assert!(c.admin.token_file.is_none());
}

#[test]
fn broken_admin_settings_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.token"), "\n").unwrap();
    std::fs::write(dir.path().join("spaced.token"), "two words\n").unwrap();
    let cases = [
        (
            "protect_reads = true",
            vec!["admin.protect_reads", "token_file"],
        ),
        ("max_connections = 0", vec!["admin.max_connections", ">= 1"]),
        ("idle_timeout = \"0ms\"", vec!["admin.idle_timeout", "> 0"]),
        (
            "token_file = \"absent.token\"",
            vec!["admin.token_file", "cannot read", "absent.token"],
        ),
        (
            "token_file = \"empty.token\"",
            vec!["admin.token_file", "empty.token is empty"],
        ),
        (
            "token_file = \"spaced.token\"",
            vec!["admin.token_file", "printable ASCII"],
        ),
    ];
    for (admin, want) in cases {
        let msg = errors(&with_admin(admin), dir.path());
        for w in want {
            assert!(msg.contains(w), "{admin}: message lacks {w:?}:\n{msg}");
        }
    }
    let good = "token_file = \"t\"\nprotect_reads = true\nmax_connections = 1";
    std::fs::write(dir.path().join("t"), "tok\n").unwrap();
    Config::parse(&with_admin(good), "good.toml", dir.path()).unwrap();
}

#[test]
fn startup_fails_on_an_unusable_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin.token");
    std::fs::write(&token, "tok\n").unwrap();
    // The file goes after validation: the server itself refuses to start.
    let cfg = Config::parse(
        &with_admin("token_file = \"admin.token\""),
        "t.toml",
        dir.path(),
    )
    .unwrap();
    std::fs::remove_file(&token).unwrap();
    let e = Server::bind(cfg)
        .err()
        .expect("no server without its token")
        .to_string();
    assert!(
        e.contains("admin.token_file") && e.contains("cannot read"),
        "{e}"
    );

    // The binary: exit 2 (config error), the key named.
    let path = dir.path().join("herdgate.toml");
    std::fs::write(&path, with_admin("token_file = \"admin.token\"")).unwrap();
    let out = std::process::Command::new(bin())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin.token_file"), "{err}");
}
