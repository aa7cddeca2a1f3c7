//! The log of the real binary, written to a file (not a terminal): plain text without
//! colour escape codes by default, one JSON object per line with `[log] format = "json"`
//! (a client sending junk and control bytes beside an honest one cannot break a line), and
//! a bad format named by key.

use crate::support::nodes::echo_nodes;
use crate::support::process::{check, one_node_config as config, Herdgate};
use crate::support::ws::{echo_text, ws_connect};

/// A hostile client: junk, control bytes, an escape sequence and a quote in its request,
/// so that nothing it sends can colour or break a line of the log. Returns once herdgate
/// has answered and closed.
async fn send_junk(listen: std::net::SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut junk = tokio::net::TcpStream::connect(listen).await.unwrap();
    junk.write_all(b"GET /\"\x00\x1b[31m HTTP/1.1\r\nHost: a\"\nb\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = crate::support::within(junk.read_to_end(&mut sink)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_to_a_file_carry_no_colour_codes() {
    let nodes = echo_nodes(1).await;
    let (text, listen) = config("", nodes[0].addr);
    let h = Herdgate::start(&text).await;
    send_junk(listen).await;
    let mut ws = ws_connect(listen, "/").await;
    echo_text(&mut ws, "hello").await;
    let log = h.log();
    assert!(log.contains("listening on"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in a redirected log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let nodes = echo_nodes(1).await;
    let (text, listen) = config("[log]\nformat = \"json\"\n", nodes[0].addr);
    let h = Herdgate::start(&text).await;
    send_junk(listen).await;
    let mut ws = ws_connect(listen, "/").await;
    echo_text(&mut ws, "hello").await;
    let log = h.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("listening on")), "{log}");
}

#[test]
fn a_bad_log_format_is_an_error_naming_the_key() {
    let (text, _) = config("[log]\nformat = \"xml\"\n", "127.0.0.1:9".parse().unwrap());
    let out = check(&text);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("log.format"), "{err}");
}
