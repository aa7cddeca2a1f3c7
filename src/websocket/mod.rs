//! WebSocket: handshake checks, frame-boundary tracking, and the tunnel.

pub mod handshake;
pub mod side;
pub mod tunnel;
