//! herdgate: an edge connection admission layer for WebSocket fleets.
//!
//! This crate is the proxy's runtime; ARCHITECTURE.md at the repository root is the map
//! (the one picture, the layers, where state lives, the glossary). In one breath:
//!
//! ```text
//! accept ─► TLS (SNI, tickets) ─► HTTP/1.1 (hyper) ─► route ─► admit ─► forward
//!  listener   tls                  proxy               routing   admission  proxy (HTTP)
//!                                                                          websocket (tunnel)
//! ```
//!
//! Control plane, one writer: SIGHUP ─► read TOML ─► validate ─► build [`snapshot::Snapshot`]
//! ─► `Shared::publish` (reload only) ─► diff ─► drain removed nodes.
//!
//! The decisions themselves (token buckets, the retry schedule, tickets, consistent
//! hashing, the sticky table, frame boundaries) are pure code in the `herdgate-core`
//! crate, and the names and formats shared with clients are the `herdgate-wire` crate.
//! Modules here import only from lower layers: [`layers`] lists them and its test holds
//! the code to that.
//!
//! Start with [`server::Server::bind`] and [`server::Server::run`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod admission;
pub mod backend;
pub mod clock;
pub mod config;
pub mod conn;
pub mod drain;
pub mod fdlimit;
pub mod fleet;
pub mod io;
pub mod layers;
pub mod listener;
pub mod lograte;
pub mod metrics;
pub mod proxy;
pub mod registry;
pub mod reload;
pub mod routing;
pub mod server;
pub mod shards;
pub mod signals;
pub mod snapshot;
pub mod state;
pub mod systemd;
pub mod tls;
pub mod websocket;
