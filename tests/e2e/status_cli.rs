//! `herdgate status` against the running binary: the table lists every node with its
//! health, drain state and tunnel count (an honest client's tunnel, beside a client
//! turned away); `--watch` draws it again; a bad `--admin` URL, an unreachable admin
//! listener and reads without the token (`protect_reads`) are clear errors with a
//! non-zero exit.

use crate::support::net::free_addr;
use crate::support::nodes::echo_nodes;
use crate::support::process::{bin, Herdgate};
use crate::support::within;
use crate::support::ws::{echo_text, ws_try};
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

fn status(args: &[&str]) -> Output {
    Command::new(bin())
        .arg("status")
        .args(args)
        .output()
        .unwrap()
}

/// The table's rows: node -> its cells.
fn table(out: &Output) -> Vec<Vec<String>> {
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().skip_while(|l| !l.starts_with("NODE"));
    let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
    assert_eq!(
        header,
        ["NODE", "HEALTH", "DRAINING", "TUNNELS", "ADMIT/S", "REJECT/S", "BACKLOG", "RATE/S"]
    );
    lines
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_each_node_with_health_and_tunnels() {
    let nodes = echo_nodes(2).await;
    let secrets = tempfile::tempdir().unwrap();
    let token = secrets.path().join("admin.token");
    std::fs::write(&token, "st4tus-token\n").unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    let text = format!(
        "[admin]\nbind = \"{admin}\"\ntoken_file = \"{}\"\nprotect_reads = true\n\n\
         [[listener]]\nname = \"plain\"\nbind = \"{listen}\"\n\n\
         [[route]]\npool = \"p\"\n\n[[pool]]\nname = \"p\"\nadmit_rate = 1\nadmit_burst = 1\n\
         [[pool.node]]\nname = \"n1\"\naddr = \"{}\"\n[[pool.node]]\nname = \"n2\"\naddr = \"{}\"\n",
        token.display(),
        nodes[0].addr,
        nodes[1].addr
    );
    let h = Herdgate::start(&text).await;
    let config = h.config_path();
    let config = config.to_str().unwrap();

    // An honest client holds a tunnel; two more right behind it: the two nodes have one
    // token each (burst 1), so at least one of them is turned away. One tunnel is open per
    // client served.
    let (mut ws, _) = ws_try(None, listen, "/", &[]).await.unwrap();
    echo_text(&mut ws, "hello").await;
    let mut kept = Vec::new();
    let mut refused = 0;
    for ip in ["127.0.0.2", "127.0.0.3"] {
        match ws_try(Some(ip.parse().unwrap()), listen, "/", &[]).await {
            Ok((w, _)) => kept.push(w),
            Err(e) => {
                assert_eq!(e, "HTTP 503");
                refused += 1;
            }
        }
    }
    assert!(refused >= 1);
    let open = 1 + kept.len();

    let out = status(&["--config", config]);
    assert!(out.status.success(), "{out:?}");
    let rows = table(&out);
    let names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(names, ["p/n1", "p/n2"], "{out:?}");
    for r in &rows {
        assert_eq!(r[1], "up", "{r:?}");
        assert_eq!(r[2], "-", "{r:?}");
    }
    let tunnels: usize = rows.iter().map(|r| r[3].parse::<usize>().unwrap()).sum();
    assert_eq!(tunnels, open, "{out:?}");

    // Drained: the table says so.
    let drained = Command::new(bin())
        .args(["drain", "p/n2", "--config", config])
        .output()
        .unwrap();
    assert!(drained.status.success(), "{drained:?}");
    let rows = table(&status(&["--config", config]));
    assert_eq!(rows[1][0], "p/n2");
    assert_eq!(rows[1][2], "yes");

    // --watch draws the table again each second.
    let mut child = Command::new(bin())
        .args(["status", "--watch", "--config", config])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let frames = within(tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.starts_with("NODE"))
            .take(2)
            .count()
    }))
    .await
    .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(frames, 2);

    // Without the token the reads are refused: a clear error, exit 1.
    let out = status(&["--admin", &format!("http://{admin}")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("token"),
        "{out:?}"
    );
}

#[test]
fn a_bad_admin_url_is_a_clear_error() {
    for bad in ["ftp://127.0.0.1:9", "127.0.0.1:9", "http://localhost"] {
        let out = status(&["--admin", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("expected http://IP:PORT"), "{bad}: {err}");
    }
    // Nobody listens there: exit 1, naming the address.
    let nobody = free_addr();
    let out = status(&["--admin", &format!("http://{nobody}")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach") && err.contains(&nobody.to_string()),
        "{err}"
    );
    // A config file that does not exist: exit 2, named.
    let out = status(&["--config", "/nonexistent/herdgate.toml"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
