//! herdgate as a child process: the binary cargo built for these tests, run on a config
//! in a directory of its own, with a notification socket of ours as `NOTIFY_SOCKET` so the
//! test knows when it is ready (READY=1), reloading, stopping. Also the
//! `systemd-socket-activate` it can run under.

use super::{eventually, within};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use tokio::net::UnixDatagram;
use tokio::process::{Child, Command};

/// The herdgate binary built for these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_herdgate")
}

/// systemd-socket-activate(1), from `PATH` or /usr/bin or /bin. Missing: fail in CI (the
/// systemd package must be installed there: scripts/test.sh and .ci/systemd-verify.sh do
/// it), else `None`, and the caller skips loudly.
pub fn socket_activate_binary() -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let found = from_path
        .into_iter()
        .chain(["/usr/bin".into(), "/bin".into()])
        .map(|dir: PathBuf| dir.join("systemd-socket-activate"))
        .find(|p| p.is_file());
    if found.is_none() {
        let reason = "systemd-socket-activate not found: apt-get install systemd";
        assert!(std::env::var_os("CI").is_none(), "{reason}");
        eprintln!("SKIPPED: {reason}");
    }
    found
}

/// A running `herdgate run`, killed when dropped (a failed test leaves no process behind).
///
/// Its directory holds `herdgate.toml` (the config), `herdgate.pid` (`--pidfile`),
/// `stderr.log` (its log, at `HERDGATE_LOG=info`) and `notify.sock`.
pub struct Herdgate {
    child: Child,
    dir: tempfile::TempDir,
    notify: UnixDatagram,
}

impl Herdgate {
    /// Write `config` and start `herdgate run` on it; returns at READY=1 (listeners and
    /// admin bound, pidfile written). The ports in `config` come from
    /// [`free_addr`](super::net::free_addr).
    pub async fn start(config: &str) -> Herdgate {
        let (dir, notify) = Self::prepare(config);
        let mut cmd = Command::new(bin());
        cmd.args(Self::run_args(dir.path()))
            .env("NOTIFY_SOCKET", dir.path().join("notify.sock"))
            .env("HERDGATE_LOG", "info")
            // Not socket-activated, whatever the environment of the test says.
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_FDNAMES");
        let h = Self::spawn(cmd, dir, notify);
        let ready = h.next_notification().await;
        assert_eq!(ready, "READY=1", "{}", h.log());
        h
    }

    /// Start herdgate under `activate` (systemd-socket-activate), which holds a listening
    /// socket on `listen` named `fdname` and execs herdgate (same process) at the first
    /// connection, passing the socket as fd 3. Returns once that socket listens; READY=1
    /// follows the first connection.
    pub async fn start_activated(
        activate: &Path,
        listen: SocketAddr,
        fdname: &str,
        config: &str,
    ) -> Herdgate {
        let (dir, notify) = Self::prepare(config);
        let mut cmd = Command::new(activate);
        cmd.arg(format!("--listen={listen}"))
            .arg(format!("--fdname={fdname}"))
            .arg(format!(
                "--setenv=NOTIFY_SOCKET={}",
                dir.path().join("notify.sock").display()
            ))
            .arg("--setenv=HERDGATE_LOG=info")
            .arg(bin())
            .args(Self::run_args(dir.path()))
            // Only herdgate may notify: systemd-socket-activate itself would send READY=1.
            .env_remove("NOTIFY_SOCKET");
        let h = Self::spawn(cmd, dir, notify);
        eventually("systemd-socket-activate listens", || async {
            h.log().contains("Listening on")
        })
        .await;
        h
    }

    fn prepare(config: &str) -> (tempfile::TempDir, UnixDatagram) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("herdgate.toml"), config).unwrap();
        let notify = UnixDatagram::bind(dir.path().join("notify.sock"))
            .expect("bind the notification socket");
        (dir, notify)
    }

    fn run_args(dir: &Path) -> [std::ffi::OsString; 5] {
        [
            "run".into(),
            "--config".into(),
            dir.join("herdgate.toml").into(),
            "--pidfile".into(),
            dir.join("herdgate.pid").into(),
        ]
    }

    fn spawn(mut cmd: Command, dir: tempfile::TempDir, notify: UnixDatagram) -> Herdgate {
        let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Herdgate { child, dir, notify }
    }

    /// The config file (rewrite it, then reload).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("herdgate.toml")
    }

    pub fn pidfile(&self) -> PathBuf {
        self.dir.path().join("herdgate.pid")
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("herdgate has not been reaped")
    }

    /// Send `sig` (`TERM`, `INT`, `HUP`, ...).
    pub fn signal(&self, sig: &str) {
        let st = std::process::Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} {}", self.pid());
    }

    /// The next state datagram on the notification socket. Progress lines (`STATUS=...`,
    /// shown by `systemctl status`) are skipped, except the final `STATUS=stopped`.
    pub async fn next_notification(&self) -> String {
        let mut buf = [0u8; 4096];
        loop {
            let n = within(self.notify.recv(&mut buf))
                .await
                .unwrap_or_else(|e| panic!("recv notification: {e}\n{}", self.log()));
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if !msg.starts_with("STATUS=") || msg == "STATUS=stopped" {
                return msg;
            }
        }
    }

    /// Its log so far (for failure messages, and for tests that read what it logged).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Wait (bounded) for it to exit.
    pub async fn exit(&mut self) -> ExitStatus {
        match tokio::time::timeout(super::DEADLINE, self.child.wait()).await {
            Ok(st) => st.unwrap(),
            Err(_) => panic!(
                "herdgate did not exit within {:?}\n{}",
                super::DEADLINE,
                self.log()
            ),
        }
    }
}

/// A config for the binary: `head` (sections of the test's own, written first), an admin
/// listener, one plain listener and one pool with the single node `node`, on fresh ports.
/// Returns the text and the plain listener's address.
pub fn one_node_config(head: &str, node: std::net::SocketAddr) -> (String, std::net::SocketAddr) {
    let (listen, admin) = (super::net::free_addr(), super::net::free_addr());
    let text = format!(
        "{head}\n[admin]\nbind = \"{admin}\"\n\n[[listener]]\nname = \"plain\"\nbind = \"{listen}\"\n\n\
         [[route]]\npool = \"p\"\n\n[[pool]]\nname = \"p\"\n[[pool.node]]\nname = \"n\"\naddr = \"{node}\"\n"
    );
    (text, listen)
}

/// `herdgate check --config` on `text` (written to a temporary file).
pub fn check(text: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herdgate.toml");
    std::fs::write(&path, text).unwrap();
    std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap()
}
