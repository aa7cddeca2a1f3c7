//! systemd integration: readiness notification (sd_notify(3)) and socket
//! activation (sd_listen_fds(3)), in safe Rust without libsystemd.
//!
//! The lifecycle herdgate is expected to follow (see systemd.service(5),
//! `Type=notify` and `Type=notify-reload`):
//!
//! ```text
//! start:   listen_fds() (in main, before the runtime: it adopts descriptors;
//!          the environment is read, never edited)
//!          → match_listeners() → bind the configured listeners nobody passed us
//!          → ready()                                        "READY=1"
//! SIGHUP:  reloading()        "RELOADING=1\nMONOTONIC_USEC=…"
//!          → reload (on error keep the old Snapshot, status("reload failed: …"))
//!          → ready()   ALWAYS, even after a failed reload: with Type=notify-reload
//!                      `systemctl reload` blocks until READY=1 arrives
//! SIGTERM: stopping()         "STOPPING=1" → drain → exit
//! ```
//!
//! Every sender returns `Ok(false)` when `$NOTIFY_SOCKET` is unset, so the same
//! code runs outside systemd. `NOTIFY_SOCKET` is left in the environment on
//! purpose: herdgate notifies many times over its life.

use std::ffi::{OsStr, OsString};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Environment variable naming the datagram socket of the service manager.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// Socket-activation variables, sd_listen_fds(3).
pub const LISTEN_PID: &str = "LISTEN_PID";
/// Socket-activation variable: how many descriptors were passed, starting at fd 3.
pub const LISTEN_FDS: &str = "LISTEN_FDS";
/// Socket-activation variable: colon-separated names of the passed descriptors.
pub const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
/// `SD_LISTEN_FDS_START` from sd-daemon.h.
pub const LISTEN_FDS_START: i32 = 3;
/// More inherited sockets than this is a broken environment, not a config.
const MAX_LISTEN_FDS: usize = 4096;

/// Errors of socket activation. Notification errors are plain `io::Error`s:
/// a failed notification is worth a log line, never a refusal to serve.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// A socket-activation variable is present but unusable.
    #[error("{var}={value:?} is not valid: {reason}")]
    InvalidEnv {
        /// The variable's name.
        var: &'static str,
        /// Its value as found.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `LISTEN_FDNAMES` does not have one name per passed descriptor.
    #[error(
        "LISTEN_FDNAMES={names:?} has {count} names but LISTEN_FDS={fds}: \
         sd_listen_fds(3) requires one name per descriptor"
    )]
    NameCount {
        /// The `LISTEN_FDNAMES` value.
        names: String,
        /// How many names it holds.
        count: usize,
        /// What `LISTEN_FDS` says.
        fds: usize,
    },
    /// A passed descriptor is not a TCP listening socket, the only kind herdgate serves.
    #[error(
        "inherited fd {fd} (index {index}, name {name}) is not a TCP listening socket: \
         {source}; herdgate accepts only ListenStream= TCP sockets (no unix, UDP or Accept=yes)"
    )]
    NotTcpListener {
        /// Position among the passed descriptors (0-based).
        index: usize,
        /// The descriptor number.
        fd: i32,
        /// Its `LISTEN_FDNAMES` entry.
        name: String,
        /// Why it was refused.
        #[source]
        source: io::Error,
    },
    /// The inherited descriptors were already taken by an earlier call in this process.
    #[error(
        "socket activation: the inherited descriptors were already taken \
         (listen_fds() is called once per process)"
    )]
    AlreadyTaken,
    /// The inherited descriptors could not be adopted.
    #[error("socket activation: cannot adopt the inherited descriptors: {0}")]
    Adopt(#[source] sd_listen_fds::Error),
    /// Fewer or more descriptors were adopted than `LISTEN_FDS` announced.
    #[error(
        "socket activation: {adopted} descriptors adopted where LISTEN_FDS said {expected} \
         (the environment changed while it was read)"
    )]
    AdoptedCount {
        /// Descriptors actually adopted.
        adopted: usize,
        /// What `LISTEN_FDS` said.
        expected: usize,
    },
    /// A passed descriptor could not be made non-blocking.
    #[error("inherited fd {fd} (index {index}, name {name}): cannot set O_NONBLOCK: {source}")]
    NonBlocking {
        /// Position among the passed descriptors (0-based).
        index: usize,
        /// The descriptor number.
        fd: i32,
        /// Its `LISTEN_FDNAMES` entry.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

// ---------------------------------------------------------------------------
// sd_notify
// ---------------------------------------------------------------------------

/// Sends `msg` (newline-separated `KEY=VALUE` assignments) to `$NOTIFY_SOCKET`.
/// Returns `Ok(false)` when the variable is unset or empty (not under systemd).
pub fn notify(msg: &str) -> io::Result<bool> {
    match std::env::var_os(NOTIFY_SOCKET) {
        Some(socket) if !socket.is_empty() => notify_to(&socket, msg).map(|()| true),
        _ => Ok(false),
    }
}

/// Sends `msg` to the notification socket `socket`, written as in
/// `$NOTIFY_SOCKET`: an absolute path, or `@name` for the Linux abstract
/// namespace (the '@' stands for the leading NUL byte).
pub fn notify_to(socket: &OsStr, msg: &str) -> io::Result<()> {
    let bytes = socket.as_bytes();
    let sender = UnixDatagram::unbound()?;
    let sent = match bytes.first() {
        Some(b'/') => sender.send_to(msg.as_bytes(), Path::new(socket))?,
        Some(b'@') => {
            let addr = UnixAddr::from_abstract_name(&bytes[1..])?;
            sender.send_to_addr(msg.as_bytes(), &addr)?
        }
        // systemd >= 254 also knows "vsock:CID:PORT"; herdgate never runs in a VM
        // guest that needs it, so it is refused loudly instead of ignored.
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{NOTIFY_SOCKET}={socket:?}: expected an absolute path or an \
                     abstract socket name starting with '@'"
                ),
            ))
        }
    };
    if sent != msg.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("notification truncated: sent {sent} of {} bytes", msg.len()),
        ));
    }
    Ok(())
}

/// `READY=1`: startup finished, or a reload finished (successful or not).
pub fn ready() -> io::Result<bool> {
    notify("READY=1")
}

/// `RELOADING=1` with `MONOTONIC_USEC`: systemd >= 253 (`Type=notify-reload`)
/// ignores a RELOADING=1 whose timestamp is older than the reload signal it
/// sent, so the clock is read here, after SIGHUP arrived, not cached.
pub fn reloading() -> io::Result<bool> {
    notify(&reloading_message(monotonic_usec()))
}

/// `STOPPING=1`: shutdown (drain) has begun.
pub fn stopping() -> io::Result<bool> {
    notify("STOPPING=1")
}

/// `STATUS=<text>`, shown by `systemctl status`.
pub fn status(text: &str) -> io::Result<bool> {
    notify(&status_message(text))
}

/// The datagram [`reloading`] sends for a given CLOCK_MONOTONIC reading.
pub fn reloading_message(monotonic_usec: u64) -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")
}

/// The datagram [`status`] sends. Line breaks become spaces: a newline in
/// the text (an error message, say) would otherwise start a new assignment
/// such as `READY=1` in the protocol.
pub fn status_message(text: &str) -> String {
    let mut msg = String::with_capacity(7 + text.len());
    msg.push_str("STATUS=");
    msg.extend(
        text.chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c }),
    );
    msg
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares MONOTONIC_USEC
/// with (std's `Instant` uses the same clock but exposes no raw value).
pub fn monotonic_usec() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    // Both fields are non-negative for CLOCK_MONOTONIC.
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000).saturating_add(nanos / 1_000)
}

// ---------------------------------------------------------------------------
// Socket activation
// ---------------------------------------------------------------------------

/// A listening TCP socket handed over by the service manager.
#[derive(Debug)]
pub struct InheritedListener {
    /// The socket unit's `FileDescriptorName=` (systemd's default is the unit
    /// name, e.g. `herdgate.socket`); `None` when LISTEN_FDNAMES is absent or
    /// the entry is empty.
    pub name: Option<String>,
    /// Already non-blocking and close-on-exec: ready for
    /// `tokio::net::TcpListener::from_std`.
    pub listener: TcpListener,
}

impl InheritedListener {
    /// Address the inherited socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Takes the sockets passed by socket activation, following sd_listen_fds(3):
/// only if `LISTEN_PID` is our pid, `LISTEN_FDS` descriptors starting at fd 3,
/// names from `LISTEN_FDNAMES` (colon separated). Returns an empty list when
/// nothing was passed to this process.
///
/// Call it once, in `main` before the async runtime is built and before the
/// process opens descriptors of its own: the descriptors become owned
/// `TcpListener`s here, and an fd number must never be adopted twice (a
/// second call is an error, not a second owner).
///
/// The environment is only read, never edited (like
/// `sd_listen_fds(unset_environment = 0)`): editing it while other threads may
/// read it is undefined behaviour in glibc, and clippy's `disallowed-methods`
/// forbids it in this crate. A child would not adopt the sockets anyway:
/// `LISTEN_PID` names this process, and the descriptors are made
/// close-on-exec. Code that spawns processes should still clear the three
/// variables on the `Command` (`env_remove`).
///
/// Stricter than `listenfd` or `sd-listen-fds` on their own: a missing
/// `LISTEN_PID` means "not for us" (listenfd accepts it), because variables
/// leaked through an intermediate process would otherwise make us adopt
/// whatever happens to sit at fd 3; and every descriptor must be open, a TCP
/// socket and listening before it is used.
pub fn listen_fds() -> Result<Vec<InheritedListener>, SystemdError> {
    let plan = parse_listen_env(
        std::env::var_os(LISTEN_PID).as_deref(),
        std::env::var_os(LISTEN_FDS).as_deref(),
        std::env::var_os(LISTEN_FDNAMES).as_deref(),
        std::process::id(),
    )?;
    let Some(names) = plan else {
        return Ok(Vec::new());
    };
    // Before anything owns a descriptor: owning (and so, on error, closing)
    // a number that is not open, or that this process already uses for a
    // file of its own, would close a descriptor that is not ours.
    for (index, name) in names.iter().enumerate() {
        let fd = fd_of(index);
        if let Err(why) = looks_like_socket(fd) {
            return Err(SystemdError::NotTcpListener {
                index,
                fd,
                name: shown(name),
                source: io::Error::new(io::ErrorKind::InvalidInput, why),
            });
        }
    }
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(SystemdError::AlreadyTaken);
    }
    // sd-listen-fds re-reads LISTEN_PID and LISTEN_FDS, which we validated
    // above and nobody edits; a disagreement would be a bug, reported, not
    // guessed around.
    let fds = sd_listen_fds::get().map_err(SystemdError::Adopt)?;
    if fds.len() != names.len() {
        return Err(SystemdError::AdoptedCount {
            adopted: fds.len(),
            expected: names.len(),
        });
    }
    names
        .into_iter()
        .zip(fds)
        .enumerate()
        .map(|(index, (name, (_, fd)))| inherited_listener(index, name, fd.into_std()))
        .collect()
}

/// The descriptor number of the `index`th socket (index < MAX_LISTEN_FDS).
fn fd_of(index: usize) -> i32 {
    LISTEN_FDS_START.saturating_add(i32::try_from(index).unwrap_or(i32::MAX))
}

fn shown(name: &Option<String>) -> String {
    name.clone().unwrap_or_else(|| "(none)".to_owned())
}

/// Checks, without owning it, that descriptor `fd` of this process is open
/// and a socket, as /proc/self/fd shows it (`socket:[inode]`). Without /proc
/// nothing can be told, and the checks on the owned socket have to do.
fn looks_like_socket(fd: i32) -> Result<(), String> {
    let dir = Path::new("/proc/self/fd");
    if !dir.is_dir() {
        return Ok(());
    }
    match std::fs::read_link(dir.join(fd.to_string())) {
        Ok(target) if target.as_os_str().as_bytes().starts_with(b"socket:") => Ok(()),
        Ok(target) => Err(format!("not a socket but {}", target.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err("descriptor not open although LISTEN_FDS counts it".to_owned())
        }
        Err(e) => Err(format!("cannot inspect the descriptor: {e}")),
    }
}

/// Checks that `fd` is a listening TCP socket and readies it for tokio.
fn inherited_listener(
    index: usize,
    name: Option<String>,
    fd: OwnedFd,
) -> Result<InheritedListener, SystemdError> {
    let raw = fd.as_raw_fd();
    let not_tcp = |source: io::Error| SystemdError::NotTcpListener {
        index,
        fd: raw,
        name: shown(&name),
        source,
    };
    let refused = |why: &str| not_tcp(io::Error::new(io::ErrorKind::InvalidInput, why));
    let sock = socket2::SockRef::from(&fd);
    // SO_TYPE fails with ENOTSOCK on anything but a socket.
    if sock.r#type().map_err(not_tcp)? != socket2::Type::STREAM {
        return Err(refused("not a stream socket"));
    }
    if sock.local_addr().map_err(not_tcp)?.as_socket().is_none() {
        return Err(refused("not an IPv4 or IPv6 socket"));
    }
    // An Accept=yes socket unit passes a connected stream, which passes the
    // checks above but cannot accept().
    if !sock.is_listener().map_err(not_tcp)? {
        return Err(refused(
            "socket is not listening (Accept=yes passes connections, not listeners)",
        ));
    }
    sock.set_cloexec(true).map_err(not_tcp)?;
    let listener = TcpListener::from(fd);
    listener
        .set_nonblocking(true)
        .map_err(|source| SystemdError::NonBlocking {
            index,
            fd: raw,
            name: shown(&name),
            source,
        })?;
    Ok(InheritedListener { name, listener })
}

/// Interprets the socket-activation variables for process `our_pid`.
/// `Ok(None)`: nothing is meant for us. `Ok(Some(names))`: one entry per
/// descriptor, starting at fd 3.
fn parse_listen_env(
    listen_pid: Option<&OsStr>,
    listen_fds: Option<&OsStr>,
    listen_fdnames: Option<&OsStr>,
    our_pid: u32,
) -> Result<Option<Vec<Option<String>>>, SystemdError> {
    let Some(pid) = listen_pid else {
        return Ok(None);
    };
    let pid: u32 = utf8(LISTEN_PID, pid)?
        .parse()
        .map_err(|_| invalid(LISTEN_PID, pid, "not a process id"))?;
    if pid != our_pid {
        return Ok(None);
    }
    let Some(fds) = listen_fds else {
        return Ok(None);
    };
    let count: usize = utf8(LISTEN_FDS, fds)?
        .parse()
        .map_err(|_| invalid(LISTEN_FDS, fds, "not a descriptor count"))?;
    if count > MAX_LISTEN_FDS {
        return Err(invalid(LISTEN_FDS, fds, "more than 4096 descriptors"));
    }
    let Some(names) = listen_fdnames else {
        return Ok(Some(vec![None; count]));
    };
    let names_str = utf8(LISTEN_FDNAMES, names)?;
    // systemd writes an empty LISTEN_FDNAMES for zero fds; split would
    // otherwise yield one empty name.
    let parsed: Vec<Option<String>> = if count == 0 && names_str.is_empty() {
        Vec::new()
    } else {
        names_str
            .split(':')
            .map(|n| (!n.is_empty()).then(|| n.to_owned()))
            .collect()
    };
    if parsed.len() != count {
        return Err(SystemdError::NameCount {
            names: names_str.to_owned(),
            count: parsed.len(),
            fds: count,
        });
    }
    Ok(Some(parsed))
}

fn utf8<'a>(var: &'static str, value: &'a OsStr) -> Result<&'a str, SystemdError> {
    value
        .to_str()
        .ok_or_else(|| invalid(var, value, "not UTF-8"))
}

fn invalid(var: &'static str, value: &OsStr, reason: &'static str) -> SystemdError {
    SystemdError::InvalidEnv {
        var,
        value: OsString::from(value).to_string_lossy().into_owned(),
        reason,
    }
}

// ---------------------------------------------------------------------------
// Matching inherited sockets to configured listeners
// ---------------------------------------------------------------------------

/// Removes from `inherited` and returns the socket for the configured
/// listener `name` bound at `addr`, trying in order:
///
/// 1. the first socket whose LISTEN_FDNAMES name equals `name`
///    (`FileDescriptorName=` in the socket unit; the socket unit is then the
///    authority on the address, which may differ from `addr`);
/// 2. the first socket whose local address equals `addr`;
/// 3. the first socket bound to the unspecified address of either family on
///    the same port when `addr` is unspecified too: `ListenStream=443` gives
///    a dual-stack `[::]:443`, which serves what `0.0.0.0:443` would.
///
/// `None`: bind `addr` yourself. Sockets left in `inherited` after every
/// listener was matched are ones systemd keeps accepting connections on that
/// nobody will serve: report them as a configuration error.
pub fn match_listener(
    inherited: &mut Vec<InheritedListener>,
    name: &str,
    addr: SocketAddr,
) -> Option<InheritedListener> {
    by_name(inherited, name).or_else(|| by_addr(inherited, addr))
}

/// [`match_listener`] for a whole configuration, with every name match made
/// before any address match, so that an address fallback never steals a
/// socket that a later listener names. Returns one slot per `wanted` entry
/// (in order) and the inherited sockets nothing claimed.
pub fn match_listeners(
    mut inherited: Vec<InheritedListener>,
    wanted: &[(&str, SocketAddr)],
) -> (Vec<Option<InheritedListener>>, Vec<InheritedListener>) {
    let mut slots: Vec<Option<InheritedListener>> = wanted
        .iter()
        .map(|(name, _)| by_name(&mut inherited, name))
        .collect();
    for (slot, (_, addr)) in slots.iter_mut().zip(wanted) {
        if slot.is_none() {
            *slot = by_addr(&mut inherited, *addr);
        }
    }
    (slots, inherited)
}

fn by_name(inherited: &mut Vec<InheritedListener>, name: &str) -> Option<InheritedListener> {
    let pos = inherited
        .iter()
        .position(|l| l.name.as_deref() == Some(name))?;
    Some(inherited.remove(pos))
}

fn by_addr(inherited: &mut Vec<InheritedListener>, addr: SocketAddr) -> Option<InheritedListener> {
    let local = |l: &InheritedListener| l.local_addr().ok();
    let pos = inherited
        .iter()
        .position(|l| local(l) == Some(addr))
        .or_else(|| {
            if !addr.ip().is_unspecified() {
                return None;
            }
            inherited.iter().position(|l| {
                local(l).is_some_and(|a| a.ip().is_unspecified() && a.port() == addr.port())
            })
        })?;
    Some(inherited.remove(pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(
        pid: Option<&str>,
        fds: Option<&str>,
        names: Option<&str>,
    ) -> Result<Option<Vec<Option<String>>>, SystemdError> {
        parse_listen_env(
            pid.map(OsStr::new),
            fds.map(OsStr::new),
            names.map(OsStr::new),
            4242,
        )
    }

    fn some(names: &[Option<&str>]) -> Option<Vec<Option<String>>> {
        Some(names.iter().map(|n| n.map(str::to_owned)).collect())
    }

    #[test]
    fn nothing_without_listen_pid() {
        // listenfd alone would accept this; sd_listen_fds(3) does not.
        assert!(parse(None, Some("2"), None).unwrap().is_none());
    }

    #[test]
    fn nothing_for_another_pid() {
        assert!(parse(Some("4243"), Some("2"), Some("a:b"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn nothing_without_listen_fds() {
        assert!(parse(Some("4242"), None, None).unwrap().is_none());
    }

    #[test]
    fn counts_and_names() {
        assert_eq!(
            parse(Some("4242"), Some("2"), Some("public-tls:public")).unwrap(),
            some(&[Some("public-tls"), Some("public")])
        );
        assert_eq!(
            parse(Some("4242"), Some("2"), None).unwrap(),
            some(&[None, None])
        );
        assert_eq!(
            parse(Some("4242"), Some("3"), Some("a::c")).unwrap(),
            some(&[Some("a"), None, Some("c")])
        );
        assert_eq!(parse(Some("4242"), Some("0"), Some("")).unwrap(), some(&[]));
    }

    #[test]
    fn name_count_must_match() {
        let err = parse(Some("4242"), Some("2"), Some("only-one")).unwrap_err();
        assert!(matches!(
            err,
            SystemdError::NameCount {
                count: 1,
                fds: 2,
                ..
            }
        ));
        assert!(err.to_string().contains("only-one"), "{err}");
    }

    #[test]
    fn garbage_is_an_error_naming_the_value() {
        let err = parse(Some("12x"), Some("1"), None).unwrap_err();
        assert!(err.to_string().contains("LISTEN_PID=\"12x\""), "{err}");
        let err = parse(Some("4242"), Some("-1"), None).unwrap_err();
        assert!(err.to_string().contains("LISTEN_FDS=\"-1\""), "{err}");
        let err = parse(Some("4242"), Some("100000"), None).unwrap_err();
        assert!(matches!(
            err,
            SystemdError::InvalidEnv {
                var: LISTEN_FDS,
                ..
            }
        ));
    }

    #[test]
    fn status_cannot_inject_assignments() {
        assert_eq!(status_message("bad\nREADY=1\r"), "STATUS=bad READY=1 ");
        assert_eq!(
            reloading_message(17),
            "RELOADING=1\nMONOTONIC_USEC=17".to_owned()
        );
    }
}
