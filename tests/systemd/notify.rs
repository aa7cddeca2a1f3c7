//! sd_notify(3) datagrams, received on real unix datagram sockets. Most
//! tests pass the socket explicitly (`notify_to`): NOTIFY_SOCKET is
//! process-global and tests run in parallel. One test sets it in a child.

use std::ffi::OsStr;
use std::io::ErrorKind;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::probe::run_direct;
use herdgate::systemd::{monotonic_usec, notify_to, reloading_message, status_message};
use serde_json::json;

/// A fresh abstract name: the abstract namespace is shared by every process
/// in the network namespace, so pid + counter keep parallel runs apart.
fn abstract_receiver() -> (String, UnixDatagram) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "herdgate-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let addr = UnixAddr::from_abstract_name(name.as_bytes()).expect("abstract addr");
    let sock = UnixDatagram::bind_addr(&addr).expect("bind abstract");
    with_deadline(&sock);
    (format!("@{name}"), sock)
}

/// A bound receiver is a deadline, not a synchronisation: the datagram was
/// sent before we read, and the timeout only turns a bug into a failure.
fn with_deadline(sock: &UnixDatagram) {
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
}

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification");
    String::from_utf8(buf[..n].to_vec()).expect("UTF-8")
}

#[test]
fn path_socket_receives_the_datagram() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&path).expect("bind");
    with_deadline(&sock);
    notify_to(path.as_os_str(), "READY=1").expect("notify");
    assert_eq!(recv(&sock), "READY=1");
}

#[test]
fn abstract_socket_receives_the_datagram() {
    let (name, sock) = abstract_receiver();
    notify_to(OsStr::new(&name), "STOPPING=1").expect("notify");
    assert_eq!(recv(&sock), "STOPPING=1");
}

#[test]
fn multi_assignment_message_is_one_datagram() {
    let (name, sock) = abstract_receiver();
    let msg = format!("READY=1\n{}", status_message("serving\n3 listeners"));
    notify_to(OsStr::new(&name), &msg).expect("notify");
    assert_eq!(recv(&sock), "READY=1\nSTATUS=serving 3 listeners");
}

#[test]
fn reloading_carries_clock_monotonic_microseconds() {
    let (name, sock) = abstract_receiver();
    let before = monotonic_usec();
    notify_to(OsStr::new(&name), &reloading_message(monotonic_usec())).expect("notify");
    let after = monotonic_usec();
    let got = recv(&sock);
    let mut lines = got.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"));
    let usec: u64 = lines
        .next()
        .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {got:?}"));
    assert!(
        before <= usec && usec <= after,
        "{before} <= {usec} <= {after}"
    );
    // CLOCK_MONOTONIC never runs ahead of CLOCK_BOOTTIME (/proc/uptime, in
    // truncated centiseconds): this catches CLOCK_REALTIME, which systemd
    // would reject as a stale reload.
    let uptime = std::fs::read_to_string("/proc/uptime").expect("/proc/uptime");
    let boot_secs: f64 = uptime
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .expect("uptime seconds");
    let boot_usec = (boot_secs * 1e6) as u64 + 10_000;
    assert!(
        usec <= boot_usec,
        "MONOTONIC_USEC {usec} > boottime {boot_usec}"
    );
}

#[test]
fn relative_or_empty_socket_names_are_refused() {
    for bad in ["relative/notify", "", "vsock:2:1234"] {
        let err = notify_to(OsStr::new(bad), "READY=1").expect_err(bad);
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}: {err}");
        assert!(err.to_string().contains("NOTIFY_SOCKET"), "{err}");
    }
}

#[test]
fn missing_socket_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err =
        notify_to(dir.path().join("absent").as_os_str(), "READY=1").expect_err("nobody listens");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

#[test]
fn notify_socket_from_the_environment_is_used_in_a_child() {
    // The only test that goes through $NOTIFY_SOCKET, set in a child process
    // (the probe reports STATUS then READY=1, as herdgate does at startup).
    let (name, sock) = abstract_receiver();
    let run = run_direct(
        &[("NOTIFY_SOCKET", &name)],
        &["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"],
    );
    assert!(run.status.success(), "{run:?}");
    let summary = run.summary.expect("summary line");
    assert_eq!(summary["notified"], json!(true), "{summary}");
    assert_eq!(recv(&sock), "STATUS=probe: 0 listeners");
    assert_eq!(recv(&sock), "READY=1");
}

#[test]
fn unset_notify_socket_is_not_an_error() {
    let run = run_direct(&[], &["NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS"]);
    assert!(run.status.success(), "{run:?}");
    let summary = run.summary.expect("summary line");
    assert_eq!(summary["notified"], json!(false), "{summary}");
}
