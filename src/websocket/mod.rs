//! WebSocket at run time: handshake checks, the relay (tunnel), and turning a browser away
//! readably. The frame-boundary tracker is the pure [`herdgate_core::frame`].

pub mod handshake;
mod pump;
pub mod side;
mod stall;
pub mod tunnel;
mod wait;

pub use herdgate_core::frame;
pub use herdgate_core::frame::{
    parse_close_payload, write_close_frame, Direction, FrameError, FrameTracker,
    CLOSE_FRAME_MAX_LEN, CLOSE_REASON_MAX_LEN,
};
