//! `[fleet]`: several herdgate instances sharing one admission budget per backend node.

use super::{ConfigError, HumanDuration};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Most instances `instances` may name (a share below 1/1000 of a rate is noise).
pub const MAX_INSTANCES: u32 = 1000;

/// `[fleet]`: how many instances share each node's rate, and where they meet.
///
/// Without the section (or with `instances = 1` and no `redis`) an instance admits each
/// node's full `admit_rate`, as before.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// How many instances stand in front of the same nodes. Static share: each one admits
    /// `rate / instances` and `max(1, burst / instances)` per node. With `redis`, the
    /// share used while Redis cannot be reached; unset there, the live member count last
    /// seen in Redis (1 before any was seen). Default: unset (1).
    pub instances: Option<u32>,
    /// `redis://host:port/db` or `rediss://` (TLS): lease shares of each node's rate from
    /// this Redis 6+ or Valkey server. Default: none (static share only).
    pub redis: Option<String>,
    /// File holding the Redis password (read at start; surrounding whitespace trimmed).
    pub password_file: Option<PathBuf>,
    /// How often an instance renews its leases; also the Redis call's timeout, so a slow
    /// or dead Redis turns into the static share within one lease. Default `50ms`.
    pub lease: HumanDuration,
    /// An instance's membership (and its leases) lapse this long after its last renewal,
    /// giving its share back to the others. Default `3s`.
    pub member_ttl: HumanDuration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            instances: None,
            redis: None,
            password_file: None,
            lease: HumanDuration::millis(50),
            member_ttl: HumanDuration::secs(3),
        }
    }
}

impl FleetConfig {
    /// The static share's divisor: `instances`, or 1.
    pub fn static_instances(&self) -> u32 {
        self.instances.unwrap_or(1).max(1)
    }

    /// Whether admission is shared through Redis.
    pub fn shared(&self) -> bool {
        self.redis.is_some()
    }

    /// How long a granted lease lives in Redis: three renewal periods, so one late
    /// renewal does not drop it.
    pub fn lease_ttl(&self) -> Duration {
        self.lease.0.saturating_mul(3)
    }
}

/// The checks of `[fleet]`, each error naming its key.
pub(super) fn check(f: &FleetConfig) -> Vec<ConfigError> {
    let mut out = Vec::new();
    let mut err = |key: &str, message: String| {
        out.push(ConfigError {
            key: key.to_string(),
            position: None,
            message,
        })
    };
    if let Some(k) = f.instances {
        if !(1..=MAX_INSTANCES).contains(&k) {
            err(
                "fleet.instances",
                format!("must be between 1 and {MAX_INSTANCES}, got {k}"),
            );
        }
    }
    if let Some(url) = &f.redis {
        let ok = ["redis://", "rediss://", "valkey://", "valkeys://"]
            .iter()
            .any(|s| url.starts_with(s) && url.len() > s.len());
        if !ok {
            err(
                "fleet.redis",
                "must be a URL like \"redis://host:6379/0\" or \"rediss://host:6379\"".into(),
            );
        } else if let Err(e) = redis::Client::open(url.as_str()) {
            err("fleet.redis", format!("not a usable Redis URL: {e}"));
        }
    }
    if let Some(p) = &f.password_file {
        if f.redis.is_none() {
            err(
                "fleet.password_file",
                "is only used with fleet.redis, which is not set".into(),
            );
        }
        if let Err(e) = std::fs::read_to_string(p) {
            err(
                "fleet.password_file",
                format!("cannot read {}: {e}", p.display()),
            );
        }
    }
    let lease = f.lease.0;
    if lease < Duration::from_millis(5) || lease > Duration::from_secs(10) {
        err(
            "fleet.lease",
            format!("must be between 5ms and 10s, got {}", f.lease),
        );
    }
    if f.member_ttl.0 < f.lease_ttl() {
        err(
            "fleet.member_ttl",
            format!(
                "must be at least three leases ({:?}), got {}",
                f.lease_ttl(),
                f.member_ttl
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(f: &FleetConfig) -> Vec<String> {
        check(f).into_iter().map(|e| e.key).collect()
    }

    #[test]
    fn defaults_are_valid_and_static() {
        let f = FleetConfig::default();
        assert!(check(&f).is_empty());
        assert_eq!(f.static_instances(), 1);
        assert!(!f.shared());
        assert_eq!(f.lease_ttl(), Duration::from_millis(150));
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let bad = |f: FleetConfig, key: &str| assert_eq!(keys(&f), vec![key.to_string()], "{f:?}");
        bad(
            FleetConfig {
                instances: Some(0),
                ..Default::default()
            },
            "fleet.instances",
        );
        bad(
            FleetConfig {
                instances: Some(MAX_INSTANCES + 1),
                ..Default::default()
            },
            "fleet.instances",
        );
        bad(
            FleetConfig {
                redis: Some("http://x".into()),
                ..Default::default()
            },
            "fleet.redis",
        );
        bad(
            FleetConfig {
                redis: Some("redis://".into()),
                ..Default::default()
            },
            "fleet.redis",
        );
        bad(
            FleetConfig {
                lease: HumanDuration::millis(1),
                ..Default::default()
            },
            "fleet.lease",
        );
        bad(
            FleetConfig {
                member_ttl: HumanDuration::millis(100),
                ..Default::default()
            },
            "fleet.member_ttl",
        );
        let f = FleetConfig {
            redis: Some("redis://127.0.0.1:6379/0".into()),
            password_file: Some("/nonexistent/herdgate-fleet-pw".into()),
            ..Default::default()
        };
        assert_eq!(keys(&f), vec!["fleet.password_file".to_string()]);
        let ok = FleetConfig {
            instances: Some(3),
            redis: Some("rediss://redis.example:6380/2".into()),
            ..Default::default()
        };
        assert!(check(&ok).is_empty(), "{:?}", check(&ok));
    }
}
