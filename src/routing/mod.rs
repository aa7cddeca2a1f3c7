//! Routing at run time: the node for one request, from the route, the pool's live node
//! table and the request head. The pure parts (hashing, Maglev, the learned sticky table,
//! key extraction) live in [`herdgate_core::routing`] and are re-exported here.

pub mod select;

pub use herdgate_core::routing::*;
pub use select::{choose, forget_node, landing, learn, session_key, ticket_steers, Choice};
