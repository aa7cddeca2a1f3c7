//! WebSocket: handshake checks, frame-boundary tracking, and the tunnel.

pub mod frame;
pub mod handshake;
pub mod reject;
pub mod side;
pub mod tunnel;

pub use frame::{
    parse_close_payload, write_close_frame, Direction, FrameError, FrameTracker,
    CLOSE_FRAME_MAX_LEN, CLOSE_REASON_MAX_LEN,
};
