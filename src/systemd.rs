//! systemd integration
