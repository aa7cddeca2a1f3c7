//! herdgate: an edge connection admission layer for WebSocket fleets.
//!
//! Data plane, one client connection, left to right:
//!
//! ```text
//! accept ─► TLS (SNI, tickets) ─► HTTP/1.1 (hyper) ─► route ─► admit ─► forward
//!  listener   listener::tls        proxy               routing   admission  proxy (HTTP)
//!                                                                          websocket (tunnel)
//! ```
//!
//! Control plane, one writer: SIGHUP ─► read TOML ─► validate ─► build [`snapshot::Snapshot`]
//! ─► `ArcSwap::store` ─► diff ─► drain removed nodes.
//!
//! Start with [`server::Server::bind`] and [`server::Server::run`].
#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod backend;
pub mod clock;
pub mod config;
pub mod conn;
pub mod drain;
pub mod fdlimit;
pub mod io;
pub mod layers;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod registry;
pub mod reload;
pub mod routing;
pub mod server;
pub mod signals;
pub mod snapshot;
pub mod state;
pub mod systemd;
pub mod websocket;
