//! `herdgate` command line: a thin shell over the library.

mod cli;

use clap::{Parser, Subcommand};
use herdgate::config::Config;
use herdgate::server::{Inherited, Server};
use herdgate::systemd::{InheritedListener, SystemdError};
use rustix::io::Errno;
use rustix::process::Pid;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const DEFAULT_CONFIG: &str = "/etc/herdgate/herdgate.toml";

/// Exit codes (also documented in the README).
const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;
const EXIT_BIND: u8 = 3;

#[derive(Parser)]
#[command(
    name = "herdgate",
    version,
    about = "WebSocket edge proxy that survives reconnect storms"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve with a config file.
    Run {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Write our pid here (for `herdgate reload --pidfile`).
        #[arg(long)]
        pidfile: Option<PathBuf>,
    },
    /// Validate a config file like `nginx -t`: prints OK or every error, exits non-zero on error.
    Check {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Ask a running herdgate to reload its config (sends SIGHUP to the pid in the file).
    Reload {
        #[arg(long)]
        pidfile: PathBuf,
    },
    /// The embedded default: echo nodes, herdgate and simulated clients in one process.
    Demo(cli::demo::DemoArgs),
    /// Drain a node through the admin API (address and token from the config file).
    Drain {
        /// The node, as POOL/NODE.
        target: String,
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Undo an admin drain (address and token from the config file).
    Undrain {
        /// The node, as POOL/NODE.
        target: String,
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// A table of the nodes (health, draining, tunnels, admitted/s, rejected/s, backlog,
    /// rate) from the admin API; address and token from the config file.
    Status {
        /// The admin listener, http://IP:PORT (default: `[admin] bind` of the config).
        #[arg(long)]
        admin: Option<String>,
        /// Draw the table again every second.
        #[arg(long)]
        watch: bool,
        /// The config file, for the admin address and token (default
        /// /etc/herdgate/herdgate.toml; not read with --admin alone).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match &cli.cmd {
        Cmd::Run { config, .. } => log_format(config),
        _ => herdgate::config::LogFormat::Text,
    };
    init_tracing(format);
    match cli.cmd {
        Cmd::Check { config } => match Config::load(&config) {
            Ok(_) => {
                println!("{}: OK", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Cmd::Reload { pidfile } => reload(&pidfile),
        Cmd::Run { config, pidfile } => {
            // Socket activation is read before the runtime starts any thread
            // (the descriptors are adopted here, once); errors are reported in
            // `run`, after the config's.
            let inherited = herdgate::systemd::listen_fds();
            // `[runtime] threads` data-plane shards (one per CPU by default: the affinity
            // mask counts, so `taskset` / systemd `CPUAffinity=` pinning sets it), and one
            // more thread for the control plane: reload, health, admin, fleet, signals.
            let shards = match runtime_threads(&config) {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            };
            runtime(1).block_on(run(config, pidfile, inherited, shards))
        }
        Cmd::Drain { target, config } => admin(cli::admin_cmd::Action::Drain, &target, &config),
        Cmd::Undrain { target, config } => admin(cli::admin_cmd::Action::Undrain, &target, &config),
        Cmd::Status {
            admin,
            watch,
            config,
        } => status(admin.as_deref(), config.as_deref(), watch),
        Cmd::Demo(args) => match runtime(0).block_on(cli::demo::run(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("herdgate demo: {e:#}");
                ExitCode::from(EXIT_RUNTIME)
            }
        },
    }
}

/// `[log] format` of the config file, read before anything else so that every line,
/// including the config's own errors, comes in that format. A file that cannot be read or
/// parsed gives the default here; `run` then reports why.
fn log_format(path: &Path) -> herdgate::config::LogFormat {
    #[derive(serde::Deserialize)]
    struct LogOnly {
        #[serde(default)]
        log: herdgate::config::LogConfig,
    }
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| toml::from_str::<LogOnly>(&text).ok())
        .map(|l| l.log.format)
        .unwrap_or_default()
}

/// The log goes to stderr: colours only when it is a terminal (never escape codes in a
/// file or journald), or one JSON object per line with `[log] format = "json"`.
fn init_tracing(format: herdgate::config::LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERDGATE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        herdgate::config::LogFormat::Text => fmt.init(),
        herdgate::config::LogFormat::Json => fmt.json().init(),
    }
}

/// `[runtime] threads` of the config file, read before the runtime starts (0, one shard
/// per CPU, when the file cannot be read or the value is out of range: `run` then reports
/// why).
fn runtime_threads(path: &Path) -> usize {
    #[derive(serde::Deserialize)]
    struct RuntimeOnly {
        #[serde(default)]
        runtime: herdgate::config::RuntimeConfig,
    }
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| toml::from_str::<RuntimeOnly>(&text).ok())
        .map(|r| r.runtime.threads)
        .filter(|&n| n <= herdgate::config::MAX_THREADS)
        .unwrap_or(0)
}

/// The multi-threaded runtime: `threads` workers, or one per CPU the process may run on.
/// `run` uses one worker for the control plane; the data plane runs on shards.
fn runtime(threads: usize) -> tokio::runtime::Runtime {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        b.worker_threads(threads);
    }
    match b.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herdgate: cannot start the runtime: {e}");
            std::process::exit(EXIT_RUNTIME as i32);
        }
    }
}

/// `herdgate drain` / `undrain`: print the admin listener's answer; exit 2 for a bad
/// target or config, 1 when the request fails or is refused.
fn admin(action: cli::admin_cmd::Action, target: &str, config: &Path) -> ExitCode {
    match cli::admin_cmd::run(action, target, config) {
        Ok(answer) => {
            println!("{}", answer.trim());
            ExitCode::SUCCESS
        }
        Err(cli::admin_cmd::Failure::Usage(e)) => {
            eprintln!("herdgate: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(cli::admin_cmd::Failure::Request(e)) => {
            eprintln!("herdgate: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// `herdgate status`: exit 2 for a bad URL or config, 1 when the admin listener cannot
/// be reached or refuses.
fn status(admin: Option<&str>, config: Option<&Path>, watch: bool) -> ExitCode {
    match cli::status::run(admin, config, watch) {
        Ok(()) => ExitCode::SUCCESS,
        Err(cli::admin_cmd::Failure::Usage(e)) => {
            eprintln!("herdgate status: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(cli::admin_cmd::Failure::Request(e)) => {
            eprintln!("herdgate status: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// `herdgate reload`: SIGHUP to the pid in `pidfile`, sent with kill(2) directly.
fn reload(pidfile: &Path) -> ExitCode {
    match read_pid(pidfile).and_then(|pid| send_hup(pid, pidfile)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herdgate reload: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// The pid written by `herdgate run --pidfile`: digits only, since kill(2)
/// gives zero and negative pids process-group meanings.
fn read_pid(pidfile: &Path) -> Result<Pid, String> {
    let text = std::fs::read_to_string(pidfile)
        .map_err(|e| format!("cannot read {}: {e}", pidfile.display()))?;
    let pid = text.trim();
    pid.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| pid.parse::<i32>().ok())
        .flatten()
        .and_then(Pid::from_raw)
        .ok_or_else(|| format!("{} holds no pid (found {pid:?})", pidfile.display()))
}

fn send_hup(pid: Pid, pidfile: &Path) -> Result<(), String> {
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).map_err(|e| {
        let why = match e {
            Errno::SRCH => "no such process (stale pid file?)".to_owned(),
            Errno::PERM => "not permitted (run as the same user or root)".to_owned(),
            e => e.to_string(),
        };
        format!(
            "could not send SIGHUP to pid {} (from {}): {why}",
            pid.as_raw_nonzero(),
            pidfile.display()
        )
    })
}

async fn run(
    config_path: PathBuf,
    pidfile: Option<PathBuf>,
    inherited: Result<Vec<InheritedListener>, SystemdError>,
    shards: usize,
) -> ExitCode {
    let config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match herdgate::fdlimit::raise() {
        Ok(n) => tracing::info!("file descriptor limit: {n}"),
        Err(e) => tracing::warn!("could not raise the file descriptor limit: {e}"),
    }
    let inherited = match inherited {
        Ok(v) => v
            .into_iter()
            .map(|i| Inherited {
                name: i.name,
                listener: i.listener,
            })
            .collect(),
        Err(e) => {
            eprintln!("herdgate: socket activation: {e}");
            return ExitCode::from(EXIT_BIND);
        }
    };
    let server = match Server::bind_with(config, inherited) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("herdgate: {e}");
            return ExitCode::from(match e {
                herdgate::server::StartError::Build(_) => EXIT_CONFIG,
                _ => EXIT_BIND,
            });
        }
    };
    let shards = match herdgate::shards::Shards::start(shards) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("herdgate: cannot start the worker threads: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let server = server.with_shards(&shards);
    if let Some(p) = &pidfile {
        if let Err(e) = std::fs::write(p, format!("{}\n", std::process::id())) {
            eprintln!("herdgate: cannot write pidfile {}: {e}", p.display());
            return ExitCode::from(EXIT_RUNTIME);
        }
    }
    let handle = server.handle();
    let signals = herdgate::signals::Signals::new(handle.clone(), config_path);
    let signals = match signals {
        Ok(s) => s,
        Err(e) => {
            eprintln!("herdgate: cannot install signal handlers: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let _ = herdgate::systemd::ready();
    let _ = herdgate::systemd::status("serving, config generation 1");
    let result = server.run(signals.shutdown_requested()).await;
    let _ = herdgate::systemd::status("stopped");
    if let Some(p) = &pidfile {
        let _ = std::fs::remove_file(p);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herdgate: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pidfile(content: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("herdgate.pid");
        std::fs::write(&path, content).expect("write pid file");
        (dir, path)
    }

    #[test]
    fn a_pid_file_holds_one_positive_pid() {
        let (_dir, path) = pidfile("  4242\n");
        assert_eq!(
            read_pid(&path).map(Pid::as_raw_nonzero),
            Ok(4242.try_into().expect("nonzero"))
        );
        for bad in ["", "0", "-1", "+5", "12x", "1 2", "99999999999"] {
            let (_dir, path) = pidfile(bad);
            let err = read_pid(&path).expect_err(bad);
            assert!(err.contains("holds no pid"), "{bad:?}: {err}");
            assert!(err.contains(&path.display().to_string()), "{err}");
        }
    }

    #[test]
    fn a_missing_pid_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("absent.pid");
        let err = read_pid(&path).expect_err("absent");
        assert!(
            err.contains("cannot read") && err.contains("absent.pid"),
            "{err}"
        );
    }

    #[test]
    fn a_pid_nobody_has_is_a_stale_pid_file() {
        // Above any pid_max (at most 2^22), so no process is signalled.
        let pid = Pid::from_raw(i32::MAX).expect("nonzero");
        let err = send_hup(pid, Path::new("/run/herdgate.pid")).expect_err("no such process");
        assert!(err.contains("no such process"), "{err}");
        assert!(err.contains("/run/herdgate.pid"), "{err}");
    }

    #[test]
    fn sighup_reaches_the_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = i32::try_from(child.id())
            .ok()
            .and_then(Pid::from_raw)
            .expect("child pid");
        let sent = send_hup(pid, Path::new("test.pid"));
        let status = child.wait().expect("wait sleep");
        assert_eq!(sent, Ok(()));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(1), "{status:?}");
    }
}
