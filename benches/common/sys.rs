//! Readings of this machine: /proc, the load average, the descriptor limit, the clock.

use super::Result;
use std::time::{SystemTime, UNIX_EPOCH};

/// A field of /proc/<pid>/status in KiB (VmRSS, RssAnon, ...).
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            let n = rest.trim().trim_end_matches("kB").trim();
            return Ok(n.parse()?);
        }
    }
    Err(format!("/proc/{pid}/status has no {field}").into())
}

/// CPU time of a process, in seconds: the scheduler's run time of each of its threads
/// (/proc/<pid>/task/*/schedstat, in ns). The tick-sampled utime + stime of
/// /proc/<pid>/stat is too coarse for a process that runs a few µs per wake-up, as a
/// proxy relaying one connection does (ticks charge whoever is current then).
pub fn cpu_secs(pid: u32) -> Result<f64> {
    let mut ns = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = t?.path().join("schedstat");
        // A thread may end between the listing and the read.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        ns += text
            .split_whitespace()
            .next()
            .ok_or("empty schedstat")?
            .parse::<u64>()?;
    }
    Ok(ns as f64 / 1e9)
}

/// The first `n` load averages (1: the last minute; 3: 1, 5 and 15 minutes), space
/// separated, or "?". This machine is shared, and a loaded one stalls handshakes.
pub fn loadavg(n: usize) -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(n).collect::<Vec<_>>().join(" "))
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "?".into())
}

/// Raise this process's soft descriptor limit to the hard one (saying so on stderr when it
/// cannot); returns (soft, hard), (0, 0) if unknown.
pub fn raise_fd_limit() -> (u64, u64) {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("could not raise the descriptor limit: {e}");
    }
    rlimit::Resource::NOFILE.get().unwrap_or((0, 0))
}

/// Wall-clock time in ns since the Unix epoch: the storm's echo nodes stamp their accepts
/// with it, so the bench's own instants must be on the same clock.
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Sorted samples → (p50, p99).
pub fn percentiles(v: &mut [u64]) -> (u64, u64) {
    if v.is_empty() {
        return (0, 0);
    }
    v.sort_unstable();
    let at = |p: usize| v[(v.len() * p / 100).min(v.len() - 1)];
    (at(50), at(99))
}
