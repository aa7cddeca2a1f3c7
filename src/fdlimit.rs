//! File descriptors: a proxied tunnel costs two, so raise the soft limit to the hard one.

/// Raise the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// The current soft and hard limits.
pub fn current() -> std::io::Result<(u64, u64)> {
    rlimit::Resource::NOFILE.get()
}
