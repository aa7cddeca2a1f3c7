//! `[admin]`: the admin listener's settings, and its bearer token.

use super::HumanDuration;
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

fn default_admin_bind() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9900))
}

fn default_max_connections() -> usize {
    64
}

fn default_idle_timeout() -> HumanDuration {
    HumanDuration::secs(10)
}

/// `[admin]`: metrics, health and the admin API. Binds loopback by default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve the admin listener at all. Default `true`.
    #[serde(default = "super::default_true")]
    pub enabled: bool,
    /// Address the admin listener binds. Default `127.0.0.1:9900`; keep it private.
    /// Requests must name it in their `Host` header (DNS-rebinding defence).
    #[serde(default = "default_admin_bind")]
    pub bind: SocketAddr,
    /// File holding the bearer token required by mutating admin endpoints (POST), and by
    /// reads too with `protect_reads`. Read at start and on reload, never per request.
    /// Without it, mutating endpoints are refused.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Put `/metrics` and the `/admin/*` reads behind the bearer token as well (`/healthz`
    /// stays open for liveness probes). Needs `token_file`. Default `false`.
    #[serde(default)]
    pub protect_reads: bool,
    /// Admin connections open at once; beyond it new ones are closed at once. Default 64.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// An admin connection is closed when it sends no complete request head this long
    /// after connecting or after its previous response, or when a response write makes no
    /// progress this long. Default `10s`.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            bind: default_admin_bind(),
            token_file: None,
            protect_reads: false,
            max_connections: default_max_connections(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

/// The admin bearer token, as read from `admin.token_file`. Its `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(Box<[u8]>);

/// Why `admin.token_file` cannot serve as a token (the message does not name the key:
/// whoever reports it does).
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file holds no token (only whitespace).
    #[error("{path} is empty")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The token has a byte a `Authorization` header cannot carry.
    #[error(
        "{path}: the token must be printable ASCII without spaces \
         (it is sent as `Authorization: Bearer <token>`)"
    )]
    Unprintable {
        /// The file.
        path: PathBuf,
    },
}

impl AdminToken {
    /// Read the token from `path` (surrounding whitespace, such as a final newline, is
    /// not part of it).
    pub fn load(path: &Path) -> Result<AdminToken, AdminTokenError> {
        let bytes = std::fs::read(path).map_err(|source| AdminTokenError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let token = bytes.trim_ascii();
        if token.is_empty() {
            return Err(AdminTokenError::Empty {
                path: path.to_path_buf(),
            });
        }
        if !token.iter().all(|b| b.is_ascii_graphic()) {
            return Err(AdminTokenError::Unprintable {
                path: path.to_path_buf(),
            });
        }
        Ok(AdminToken(token.into()))
    }

    /// The token itself, for a client that must send it (`herdgate drain`).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Whether `given` is the token, compared without an early exit so the time taken
    /// says nothing about the token.
    pub fn matches(&self, given: &[u8]) -> bool {
        if given.len() != self.0.len() {
            return false;
        }
        given
            .iter()
            .zip(self.0.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_trimmed_and_compared_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "  s3cret\n").unwrap();
        let t = AdminToken::load(&p).unwrap();
        assert!(t.matches(b"s3cret"));
        assert!(!t.matches(b"s3cre"));
        assert!(!t.matches(b"s3cret2"));
        assert!(!t.matches(b""));
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn unusable_token_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();
        let spaced = dir.path().join("spaced");
        std::fs::write(&spaced, "a b\n").unwrap();
        for p in [dir.path().join("absent"), empty, spaced] {
            let e = AdminToken::load(&p).unwrap_err().to_string();
            assert!(e.contains(&p.display().to_string()), "{e}");
        }
    }
}
