//! `herdgate` command line: a thin shell over the library.

mod cli;

use clap::{Parser, Subcommand};
use herdgate::config::Config;
use herdgate::server::{Inherited, Server};
use std::path::PathBuf;
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
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
        Cmd::Run { config, pidfile } => runtime().block_on(run(config, pidfile)),
        Cmd::Demo(args) => match runtime().block_on(cli::demo::run(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("herdgate demo: {e:#}");
                ExitCode::from(EXIT_RUNTIME)
            }
        },
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERDGATE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herdgate: cannot start the runtime: {e}");
            std::process::exit(EXIT_RUNTIME as i32);
        }
    }
}

fn reload(pidfile: &std::path::Path) -> ExitCode {
    let pid = match std::fs::read_to_string(pidfile) {
        Ok(s) => s.trim().to_string(),
        Err(e) => {
            eprintln!("herdgate reload: cannot read {}: {e}", pidfile.display());
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        eprintln!("herdgate reload: {} holds no pid", pidfile.display());
        return ExitCode::from(EXIT_RUNTIME);
    }
    match std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
    {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(_) | Err(_) => {
            eprintln!("herdgate reload: could not signal pid {pid}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

async fn run(config_path: PathBuf, pidfile: Option<PathBuf>) -> ExitCode {
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
    let inherited = match herdgate::systemd::listen_fds() {
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
