//! The binary's own commands that are not the proxy: the demo (echo nodes, herdgate and
//! simulated clients in one process), drain/undrain and status through the admin API. They live beside `main.rs`, outside the library, so
//! the proxy library does not depend on the reference client or on certificate generation.

pub mod admin_cmd;
pub mod demo;
pub mod status;
