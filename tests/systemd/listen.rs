//! Socket activation (sd_listen_fds(3)) end to end: real sockets passed by
//! systemd-socket-activate(1) to a child running examples/listenfd_probe.rs,
//! plus the matching of inherited sockets to configured listeners.

use std::net::{SocketAddr, TcpListener};

use crate::probe::{run_activated, run_direct, Bound, Spec};
use herdgate::systemd::{match_listener, match_listeners, InheritedListener};
use serde_json::{json, Value};

fn tcp(bound: &Bound) -> SocketAddr {
    match bound {
        Bound::Tcp(addr) => *addr,
        Bound::Unix(p) => panic!("expected a TCP socket, got {p:?}"),
    }
}

#[test]
fn named_tcp_listeners_are_handed_over_ready_for_tokio() {
    let Some((run, bound)) =
        run_activated(&[Spec::Tcp, Spec::Tcp], Some("public-tls:public"), &[], 0)
    else {
        return;
    };
    assert!(run.status.success(), "{run:?}");
    assert_eq!(run.error, None, "{run:?}");
    let l = &run.listeners;
    assert_eq!(l.len(), 2, "{run:?}");
    for (i, (line, name)) in l.iter().zip(["public-tls", "public"]).enumerate() {
        assert_eq!(line["name"], json!(name), "{line}");
        assert_eq!(line["addr"], json!(tcp(&bound[i]).to_string()), "{line}");
        assert_eq!(line["fd"], json!(3 + i), "{line}");
        assert_eq!(line["nonblocking"], json!(true), "{line}");
        assert_eq!(line["cloexec"], json!(true), "{line}");
    }
    // The connection that triggered the activation waits on the first socket
    // and is accepted there; the second has none and does not block.
    assert_eq!(l[0]["accepted"], json!(1), "{run:?}");
    assert_eq!(l[1]["accepted"], json!(0), "{run:?}");

    let summary = run.summary.expect("summary line");
    assert_eq!(summary["listeners"], json!(2));
    assert_eq!(
        summary["env_left"],
        json!(["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"]),
        "the environment is read, never edited"
    );
    // No NOTIFY_SOCKET: notify() says so instead of failing.
    assert_eq!(summary["notified"], json!(false));
}

#[test]
fn listeners_without_fdnames_have_no_name() {
    let Some((run, bound)) = run_activated(&[Spec::Tcp], None, &[], 0) else {
        return;
    };
    assert!(run.status.success(), "{run:?}");
    assert_eq!(run.listeners.len(), 1, "{run:?}");
    assert_eq!(run.listeners[0]["name"], Value::Null);
    assert_eq!(run.listeners[0]["addr"], json!(tcp(&bound[0]).to_string()));
}

#[test]
fn unix_socket_is_refused_naming_index_fd_and_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ctl.sock");
    let Some((run, _)) = run_activated(&[Spec::Unix(path)], Some("control"), &[], 0) else {
        return;
    };
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    let err = run.error.expect("an error line");
    for needle in [
        "fd 3",
        "index 0",
        "name control",
        "not a TCP listening socket",
    ] {
        assert!(err.contains(needle), "{needle:?} missing from {err:?}");
    }
}

#[test]
fn a_counted_descriptor_that_is_not_a_passed_socket_is_an_error() {
    // LISTEN_FDS claims fd 4 as well, which nobody passed (in the probe it is
    // the output file): refused before anything takes ownership of it, or
    // closing it on the error path would pull the file from under the probe.
    let Some((run, _)) = run_activated(
        &[Spec::Tcp],
        None,
        &[("LISTEN_FDS", "2"), ("LISTEN_FDNAMES", "public:ghost")],
        0,
    ) else {
        return;
    };
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    let err = run.error.expect("an error line");
    for needle in ["fd 4", "index 1", "name ghost", "not a socket"] {
        assert!(err.contains(needle), "{needle:?} missing from {err:?}");
    }
}

#[test]
fn sockets_for_another_pid_are_left_alone() {
    // systemd-socket-activate opens a real fd 3, but LISTEN_PID names pid 1.
    let Some((run, _)) = run_activated(&[Spec::Tcp], Some("public"), &[("LISTEN_PID", "1")], 0)
    else {
        return;
    };
    assert!(run.status.success(), "{run:?}");
    let summary = run.summary.expect("summary line");
    // Guard the premise: the override really reached the child with fd 3 open.
    assert_eq!(summary["listen_pid_seen"], json!("1"), "{summary}");
    assert_eq!(summary["fd3_open_before"], json!(true), "{summary}");
    assert_eq!(summary["listeners"], json!(0), "{summary}");
    assert_eq!(
        summary["fd3_open_after"],
        json!(true),
        "fd 3 is not ours to close"
    );
    assert_eq!(
        summary["env_left"],
        json!(["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"]),
        "{summary}"
    );
}

#[test]
fn listen_fds_without_listen_pid_takes_nothing() {
    // listenfd alone treats a missing LISTEN_PID as "for us" and would fail
    // on the absent fd 3; sd_listen_fds(3) says these fds are not ours.
    let run = run_direct(
        &[("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "public")],
        &["LISTEN_PID", "NOTIFY_SOCKET"],
    );
    assert!(run.status.success(), "{run:?}");
    let summary = run.summary.expect("summary line");
    assert_eq!(summary["listeners"], json!(0), "{summary}");
    assert_eq!(
        summary["env_left"],
        json!(["LISTEN_FDS", "LISTEN_FDNAMES"]),
        "{summary}"
    );
}

#[test]
fn malformed_listen_env_is_an_error_and_left_untouched() {
    let run = run_direct(
        &[("LISTEN_PID", "not-a-pid"), ("LISTEN_FDS", "1")],
        &["NOTIFY_SOCKET"],
    );
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    let err = run.error.as_deref().expect("error line");
    assert!(err.contains("LISTEN_PID=\"not-a-pid\""), "{err}");
    assert_eq!(
        run.error_env_left,
        Some(json!(["LISTEN_PID", "LISTEN_FDS"])),
        "read, never edited, on the error path too"
    );
}

// ---------------------------------------------------------------------------
// Matching inherited sockets to configured listeners
// ---------------------------------------------------------------------------

fn inherited(name: Option<&str>, bind: &str) -> InheritedListener {
    InheritedListener {
        name: name.map(str::to_owned),
        listener: TcpListener::bind(bind).expect("bind"),
    }
}

fn addr_of(l: &InheritedListener) -> SocketAddr {
    l.local_addr().expect("local_addr")
}

#[test]
fn name_match_beats_address_match() {
    let by_name = inherited(Some("public"), "127.0.0.1:0");
    let by_addr = inherited(None, "127.0.0.1:0");
    let wanted_addr = addr_of(&by_addr);
    let name_addr = addr_of(&by_name);
    let mut pool = vec![by_addr, by_name];
    let got = match_listener(&mut pool, "public", wanted_addr).expect("a match");
    assert_eq!(addr_of(&got), name_addr, "the named socket wins");
    assert_eq!(pool.len(), 1);
    let got = match_listener(&mut pool, "other", wanted_addr).expect("by address");
    assert_eq!(addr_of(&got), wanted_addr);
    assert!(pool.is_empty());
}

#[test]
fn no_match_means_bind_it_yourself() {
    let mut pool = vec![inherited(Some("public"), "127.0.0.1:0")];
    let elsewhere: SocketAddr = "127.0.0.2:9".parse().expect("addr");
    assert!(match_listener(&mut pool, "admin", elsewhere).is_none());
    assert_eq!(pool.len(), 1, "nothing taken");
}

#[test]
fn unspecified_addresses_of_either_family_match_on_port() {
    // ListenStream=443 yields a dual-stack [::]:443; a config saying
    // 0.0.0.0:443 (or the reverse) means the same socket.
    let any_v4 = inherited(None, "0.0.0.0:0");
    let port = addr_of(&any_v4).port();
    let mut pool = vec![any_v4];
    let v6_any = SocketAddr::from(([0u16; 8], port));
    assert!(match_listener(&mut pool, "x", v6_any).is_some());

    let mut pool = vec![inherited(None, "0.0.0.0:0")];
    let port = addr_of(&pool[0]).port();
    let specific = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        match_listener(&mut pool, "x", specific).is_none(),
        "a specific address does not match a wildcard socket"
    );
}

#[test]
fn batch_matching_never_lets_an_address_steal_a_named_socket() {
    // The socket named "b" sits at the address listener "a" asks for.
    let named_b = inherited(Some("b"), "127.0.0.1:0");
    let spare = inherited(Some("herdgate.socket"), "127.0.0.1:0");
    let a_addr = addr_of(&named_b);
    let b_addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let spare_addr = addr_of(&spare);
    let (slots, left) = match_listeners(vec![named_b, spare], &[("a", a_addr), ("b", b_addr)]);
    assert!(slots[0].is_none(), "a must bind itself");
    assert_eq!(
        slots[1].as_ref().map(addr_of),
        Some(a_addr),
        "b gets its named socket"
    );
    assert_eq!(left.len(), 1, "unclaimed sockets are reported back");
    assert_eq!(addr_of(&left[0]), spare_addr);
}
