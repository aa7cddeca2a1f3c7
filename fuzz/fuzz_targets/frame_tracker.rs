//! Arbitrary bytes, arbitrary split points: the frame tracker must never panic, and what it
//! reports (message boundaries, error, final state) must not depend on how the stream is
//! split, nor on whether it is fed with or without stopping at boundaries.
//!
//! Input layout: byte 0 picks the direction (bit 0) and the number of cuts (bits 1-4);
//! that many bytes follow, each a cut position scaled to the stream length; the rest is the
//! stream.
#![no_main]

use herdgate::websocket::frame::{Direction, FrameError, FrameTracker};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    boundaries: Vec<usize>,
    error: Option<FrameError>,
    at_message_boundary: bool,
    at_frame_boundary: bool,
    close_seen: bool,
}

fn run(dir: Direction, stream: &[u8], cuts: &[usize]) -> Outcome {
    let mut t = FrameTracker::new(dir);
    let mut boundaries = Vec::new();
    let mut error = None;
    let mut offset = 0;
    'chunks: for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
        let mut rest = &stream[offset..cut];
        while !rest.is_empty() {
            match t.advance(rest, true) {
                Ok(n) => {
                    assert!(n > 0 && n <= rest.len());
                    assert!(n == rest.len() || t.at_message_boundary());
                    offset += n;
                    rest = &rest[n..];
                    if t.at_message_boundary() {
                        boundaries.push(offset);
                    }
                }
                Err(e) => {
                    assert_eq!(t.error(), Some(e));
                    error = Some(e);
                    break 'chunks;
                }
            }
        }
    }
    Outcome {
        boundaries,
        error,
        at_message_boundary: t.at_message_boundary(),
        at_frame_boundary: t.at_frame_boundary(),
        close_seen: t.close_seen(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let dir = if ctl & 1 == 0 {
        Direction::ClientToServer
    } else {
        Direction::ServerToClient
    };
    let ncuts = usize::from((ctl >> 1) & 0x0F).min(rest.len());
    let (cut_bytes, stream) = rest.split_at(ncuts);
    let mut cuts: Vec<usize> = cut_bytes
        .iter()
        .map(|&b| usize::from(b) * stream.len() / 255)
        .collect();
    cuts.sort_unstable();

    let whole = run(dir, stream, &[]);
    assert_eq!(run(dir, stream, &cuts), whole);
    let bytewise: Vec<usize> = (1..stream.len()).collect();
    assert_eq!(run(dir, stream, &bytewise), whole);

    // Feeding without stops reaches the same end state.
    let mut t = FrameTracker::new(dir);
    match t.advance(stream, false) {
        Ok(n) => {
            assert_eq!(n, stream.len());
            assert_eq!(whole.error, None);
        }
        Err(e) => assert_eq!(Some(e), whole.error),
    }
    assert_eq!(t.at_message_boundary(), whole.at_message_boundary);
    assert_eq!(t.at_frame_boundary(), whole.at_frame_boundary);
    assert_eq!(t.close_seen(), whole.close_seen);
});
