//! websocket

pub mod frame;

pub use frame::{
    parse_close_payload, write_close_frame, Direction, FrameError, FrameTracker,
    CLOSE_FRAME_MAX_LEN, CLOSE_REASON_MAX_LEN,
};
