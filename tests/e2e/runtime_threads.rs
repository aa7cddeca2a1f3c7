//! `[runtime] threads` (issue 13): the real binary runs exactly that many data-plane
//! shards (threads counted in /proc) and one control-plane worker, one shard per CPU by
//! default, and refuses an absurd value by key; a hostile client beside an honest one on a
//! single shard harms nothing.

use crate::support::net::free_addr;
use crate::support::nodes::echo_nodes;
use crate::support::process::{check, one_node_config as config, Herdgate};
use crate::support::ws::{echo_text, ws_connect};

/// Threads of `pid` whose name (`comm`, 15 bytes kept) starts with `prefix`.
fn threads(pid: u32, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .count()
}

/// Data-plane shards of `pid`, asserting the control plane runs beside them: its one
/// tokio worker is named `tokio-rt-worker`, and so is every blocking-pool thread of any
/// runtime in the process (tokio's one default name), so that count is at least 1, not
/// exactly 1 (the full suite once saw 2).
fn workers(pid: u32) -> usize {
    let control = threads(pid, "tokio-rt-worker");
    assert!(control >= 1, "no control-plane worker");
    threads(pid, "hg-shard-")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_thread_when_asked_and_it_still_serves() {
    let nodes = echo_nodes(1).await;
    let (text, listen) = config("[runtime]\nthreads = 1\n", nodes[0].addr);
    let h = Herdgate::start(&text).await;
    // A client that connects and sends half a request head, beside an honest one.
    let mut stalled = tokio::net::TcpStream::connect(listen).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stalled, b"GET / HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let mut ws = ws_connect(listen, "/").await;
    echo_text(&mut ws, "hello").await;
    assert_eq!(workers(h.pid()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_per_cpu_by_default() {
    let nodes = echo_nodes(1).await;
    let (text, listen) = config("", nodes[0].addr);
    let h = Herdgate::start(&text).await;
    let mut ws = ws_connect(listen, "/").await;
    echo_text(&mut ws, "hello").await;
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(workers(h.pid()), cpus);
}

#[test]
fn too_many_threads_is_refused_by_key() {
    let (text, _) = config("[runtime]\nthreads = 100000\n", free_addr());
    let out = check(&text);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("runtime.threads"), "{err}");
}
