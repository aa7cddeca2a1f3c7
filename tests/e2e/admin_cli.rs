//! `herdgate drain POOL/NODE` and `herdgate undrain POOL/NODE` against a running herdgate:
//! the admin address and token come from its config file; a bad target, and a config
//! without a token, are refused with exit code 2 and change nothing.

use crate::support::net::free_addr;
use crate::support::nodes::echo_nodes;
use crate::support::process::{bin, Herdgate};
use crate::support::proxy::admin_node;
use std::process::{Command, Output};

fn cli(args: &[&str], config: &std::path::Path) -> Output {
    Command::new(bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_and_undrain_from_the_command_line() {
    let nodes = echo_nodes(2).await;
    let secrets = tempfile::tempdir().unwrap();
    let token = secrets.path().join("admin.token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    let text = format!(
        "[admin]\nbind = \"{admin}\"\ntoken_file = \"{}\"\n\n\
         [[listener]]\nname = \"plain\"\nbind = \"{listen}\"\n\n\
         [[route]]\npool = \"p\"\n\n[[pool]]\nname = \"p\"\n\
         [[pool.node]]\nname = \"n1\"\naddr = \"{}\"\n[[pool.node]]\nname = \"n2\"\naddr = \"{}\"\n",
        token.display(),
        nodes[0].addr,
        nodes[1].addr
    );
    let h = Herdgate::start(&text).await;
    let config = h.config_path();

    // A bad target: refused before any request, nothing drained.
    let out = cli(&["drain", "p"], &config);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("POOL/NODE"));
    // An unknown node: the admin API's 404, exit 1.
    let out = cli(&["drain", "p/nope"], &config);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!admin_node(admin, "n1").await.draining);

    let out = cli(&["drain", "p/n1"], &config);
    assert!(out.status.success(), "{out:?}");
    assert!(admin_node(admin, "n1").await.draining);
    assert!(
        !admin_node(admin, "n2").await.draining,
        "only the named node"
    );

    let out = cli(&["undrain", "p/n1"], &config);
    assert!(out.status.success(), "{out:?}");
    assert!(!admin_node(admin, "n1").await.draining);

    // A config without a token file: exit 2, naming the key.
    let bare = secrets.path().join("bare.toml");
    std::fs::write(
        &bare,
        text.replace(&format!("token_file = \"{}\"\n", token.display()), ""),
    )
    .unwrap();
    let out = cli(&["drain", "p/n1"], &bare);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin.token_file"));
    assert!(!admin_node(admin, "n1").await.draining);
    drop(h);
}
