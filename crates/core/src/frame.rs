//! WebSocket frame-boundary tracking for the tunnel relay (RFC 6455 §5.2).
//!
//! The relay copies raw bytes between client and backend and never buffers or unmasks
//! payloads. It still has to know where frames and messages end: on drain it injects a
//! Close frame, and that frame must neither land inside another frame nor cut a
//! fragmented message (§5.4) in two, or the peer sees a protocol error instead of a clean
//! close. [`FrameTracker`] follows one direction of the stream, reading only frame headers.
//!
//! Cost: a tracker is at most 32 bytes of inline state (a unit test holds it to that), has
//! no heap part and never allocates. Each header byte (2 to 14 per frame) is looked at
//! once; payload bytes are never read, a whole run of them is skipped with one subtraction
//! per [`FrameTracker::advance`] call.
//!
//! What is checked is only what framing needs, plus the header-level rules of §5: reserved
//! opcodes, the masking rule of §5.1, control frame size and fragmentation (§5.5), the
//! 64-bit length MSB (§5.2), and the continuation rules of §5.4. Deliberately not checked:
//! RSV bits (extensions such as permessage-deflate set RSV1, and negotiation happens end to
//! end between client and backend), non-minimal length encodings (tolerated, as tungstenite
//! does), payload contents (UTF-8 of text, close codes), and frames after a Close.
//!
//! After a [`FrameError`] the tracker is poisoned: every later `advance` returns the same
//! error and neither boundary predicate is true again. The relay then stops tracking that
//! direction and keeps forwarding bytes; it can no longer inject a close frame cleanly
//! there, and the endpoints themselves will deal with the violation.

use thiserror::Error;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

const FIN_BIT: u8 = 0x80;
const MASK_BIT: u8 = 0x80;

/// Largest control frame payload (§5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// Longest close reason: 125-byte control payload minus the 2-byte status code (§5.5.1).
pub use herdgate_wire::CLOSE_REASON_MAX_LEN;

/// Longest close frame [`write_close_frame`] can produce: 2-byte header, 4-byte masking
/// key, 125-byte payload.
pub const CLOSE_FRAME_MAX_LEN: usize = 2 + 4 + 125;

/// Which way the tracked bytes flow; it decides the masking rule of §5.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to server: every frame MUST be masked.
    ClientToServer,
    /// Server to client: no frame may be masked.
    ServerToClient,
}

/// A framing violation found in one direction of a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    /// Opcodes 0x3-0x7 and 0xB-0xF are reserved (§5.2).
    #[error("reserved opcode {opcode:#x} (RFC 6455 §5.2)")]
    ReservedOpcode {
        /// The opcode received.
        opcode: u8,
    },
    /// A client sent a frame without the MASK bit (§5.1).
    #[error("unmasked frame with opcode {opcode:#x} from the client (RFC 6455 §5.1)")]
    UnmaskedClientFrame {
        /// Opcode of the offending frame.
        opcode: u8,
    },
    /// A server sent a frame with the MASK bit (§5.1).
    #[error("masked frame with opcode {opcode:#x} from the server (RFC 6455 §5.1)")]
    MaskedServerFrame {
        /// Opcode of the offending frame.
        opcode: u8,
    },
    /// A control frame announced more than 125 payload bytes (§5.5).
    #[error("control frame with opcode {opcode:#x} announces {len} payload bytes, at most 125 allowed (RFC 6455 §5.5)")]
    ControlFrameTooLong {
        /// Opcode of the control frame.
        opcode: u8,
        /// Announced payload length.
        len: u64,
    },
    /// A control frame had FIN clear (§5.5).
    #[error("fragmented control frame with opcode {opcode:#x}: FIN is clear (RFC 6455 §5.5)")]
    FragmentedControlFrame {
        /// Opcode of the control frame.
        opcode: u8,
    },
    /// A 64-bit payload length had its most significant bit set (§5.2).
    #[error("64-bit payload length {len:#018x} has its most significant bit set (RFC 6455 §5.2)")]
    LengthMsbSet {
        /// The length as received.
        len: u64,
    },
    /// A continuation frame arrived while no fragmented message was open (§5.4).
    #[error("continuation frame while no fragmented message is open (RFC 6455 §5.4)")]
    UnexpectedContinuation,
    /// A text or binary frame arrived inside an open fragmented message (§5.4).
    #[error(
        "data frame with opcode {opcode:#x} inside an open fragmented message (RFC 6455 §5.4)"
    )]
    DataFrameInsideMessage {
        /// Opcode of the new data frame.
        opcode: u8,
    },
}

/// Follows frame and message boundaries in one direction of a WebSocket stream.
///
/// Feed it every byte that is forwarded, in order, split anywhere. It reads headers only.
#[derive(Debug, Clone)]
pub struct FrameTracker {
    /// While the header is read: the extended length being accumulated. Once the header is
    /// complete: payload bytes of the current frame still to pass.
    remaining: u64,
    /// Set by the first violation; the tracker is dead from then on.
    error: Option<FrameError>,
    /// First header byte of the current frame (FIN, RSV, opcode).
    b0: u8,
    /// Second header byte of the current frame (MASK, 7-bit length).
    b1: u8,
    /// Header bytes of the current frame seen so far; 0 between frames.
    hdr_pos: u8,
    /// Full header size of the current frame, known once `b1` is in; 0 before that.
    hdr_len: u8,
    /// Direction is client to server (frames must be masked).
    client: bool,
    /// A fragmented data message has started and its final frame has not ended.
    msg_open: bool,
    /// A complete Close frame has passed.
    close_seen: bool,
    /// The status code of the first complete Close frame (1005 when it carried none);
    /// 0 before one has passed (0 is no valid code).
    close_code: u16,
    /// The current frame's first two masking key bytes, then XORed with its first two
    /// payload bytes: a Close frame's code, unmasked. `code_got` payload bytes are in.
    code_buf: [u8; 2],
    code_got: u8,
}

impl FrameTracker {
    /// A tracker for a stream that starts at a frame boundary (right after the 101).
    pub fn new(dir: Direction) -> Self {
        Self {
            remaining: 0,
            error: None,
            b0: 0,
            b1: 0,
            hdr_pos: 0,
            hdr_len: 0,
            client: dir == Direction::ClientToServer,
            msg_open: false,
            close_seen: false,
            close_code: 0,
            code_buf: [0; 2],
            code_got: 0,
        }
    }

    /// The direction this tracker was made for.
    pub fn direction(&self) -> Direction {
        if self.client {
            Direction::ClientToServer
        } else {
            Direction::ServerToClient
        }
    }

    /// Advance over `data`, the next bytes being forwarded.
    ///
    /// Without `stop_at_message_boundary` all of `data` is consumed and `data.len()`
    /// returned. With it, consumption stops right after the first frame whose end leaves the
    /// stream at a message boundary (see [`Self::at_message_boundary`]): the end of an
    /// unfragmented data frame, of the final fragment of a message, or of a control frame
    /// sent while no fragmented message is open. Control frames between fragments (§5.4) do
    /// not stop it. The return value is the number of bytes consumed; when it is less than
    /// `data.len()` the tracker is at a message boundary, when it equals `data.len()` ask
    /// [`Self::at_message_boundary`]. Empty `data` consumes nothing. A stop never happens
    /// at the starting position: when already at a boundary, the next message is consumed,
    /// so to inject a close right away check [`Self::at_message_boundary`] first.
    ///
    /// Headers may be split across calls at any byte; the boundaries found do not depend on
    /// how the stream is split.
    ///
    /// # Errors
    ///
    /// A [`FrameError`] for the first framing violation. The tracker is poisoned from then
    /// on and returns the same error for every later call (see the module docs).
    pub fn advance(
        &mut self,
        data: &[u8],
        stop_at_message_boundary: bool,
    ) -> Result<usize, FrameError> {
        if let Some(err) = self.error {
            return Err(err);
        }
        let mut pos = 0;
        while pos < data.len() {
            if self.in_payload() {
                let avail = data.len() - pos;
                // `remaining` may exceed usize on 32-bit targets: then it exceeds `avail` too.
                let take = usize::try_from(self.remaining).map_or(avail, |r| r.min(avail));
                if self.b0 & 0x0F == OP_CLOSE && self.close_code == 0 {
                    self.note_code(&data[pos..pos + take]);
                }
                self.remaining -= take as u64;
                pos += take;
            } else {
                if let Err(err) = self.header_byte(data[pos]) {
                    self.error = Some(err);
                    return Err(err);
                }
                pos += 1;
            }
            if self.in_payload() && self.remaining == 0 {
                let boundary = self.finish_frame();
                if boundary && stop_at_message_boundary {
                    return Ok(pos);
                }
            }
        }
        Ok(pos)
    }

    /// True when no frame is partially transferred and no fragmented data message is open:
    /// a close frame injected here neither splits a frame nor cuts a message in two.
    /// False forever after a [`FrameError`].
    pub fn at_message_boundary(&self) -> bool {
        self.at_frame_boundary() && !self.msg_open
    }

    /// True when no frame is partially transferred (a fragmented message may be open, so
    /// only a control frame may be injected here, §5.4). False forever after a
    /// [`FrameError`].
    pub fn at_frame_boundary(&self) -> bool {
        self.error.is_none() && self.hdr_pos == 0
    }

    /// True once a complete Close frame (opcode 0x8) has passed in this direction.
    pub fn close_seen(&self) -> bool {
        self.close_seen
    }

    /// The status code of the first complete Close frame that passed (1005, "no status",
    /// when its payload was empty), for the access log; `None` before one has passed.
    pub fn close_code(&self) -> Option<u16> {
        (self.close_code != 0).then_some(self.close_code)
    }

    /// Keep the first two payload bytes of a Close frame, unmasked.
    fn note_code(&mut self, payload: &[u8]) {
        for &b in payload
            .iter()
            .take(2usize.saturating_sub(self.code_got as usize))
        {
            let i = self.code_got as usize;
            self.code_buf[i] ^= b;
            self.code_got += 1;
        }
    }

    /// The violation that stopped this tracker, if any.
    pub fn error(&self) -> Option<FrameError> {
        self.error
    }

    /// The header is complete and the payload (possibly empty) is being passed.
    fn in_payload(&self) -> bool {
        self.hdr_len != 0 && self.hdr_pos == self.hdr_len
    }

    /// Extended length bytes announced by the 7-bit length (§5.2).
    fn ext_len(b1: u8) -> u8 {
        match b1 & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        }
    }

    fn header_byte(&mut self, byte: u8) -> Result<(), FrameError> {
        match self.hdr_pos {
            0 => {
                self.check_first_byte(byte)?;
                self.b0 = byte;
                self.code_buf = [0; 2];
                self.code_got = 0;
            }
            1 => {
                self.check_second_byte(byte)?;
                self.b1 = byte;
                let mask_len = if byte & MASK_BIT != 0 { 4 } else { 0 };
                self.hdr_len = 2 + Self::ext_len(byte) + mask_len;
                // With an extended length, the 7-bit field is only a marker (§5.2).
                self.remaining = if Self::ext_len(byte) == 0 {
                    u64::from(byte & 0x7F)
                } else {
                    0
                };
            }
            p if p < 2 + Self::ext_len(self.b1) => {
                // At most 8 bytes are shifted in from zero, so nothing is lost.
                self.remaining = (self.remaining << 8) | u64::from(byte);
            }
            // The masking key: the relay never unmasks; kept for a Close frame's code.
            p => {
                let i = usize::from(p - 2 - Self::ext_len(self.b1));
                if let Some(m) = self.code_buf.get_mut(i) {
                    *m = byte;
                }
            }
        }
        self.hdr_pos += 1;
        if self.hdr_pos == 2 + Self::ext_len(self.b1) {
            self.check_length()?;
        }
        Ok(())
    }

    fn check_first_byte(&self, b0: u8) -> Result<(), FrameError> {
        let opcode = b0 & 0x0F;
        match opcode {
            OP_CONTINUATION if !self.msg_open => Err(FrameError::UnexpectedContinuation),
            OP_TEXT | OP_BINARY if self.msg_open => {
                Err(FrameError::DataFrameInsideMessage { opcode })
            }
            OP_CONTINUATION | OP_TEXT | OP_BINARY => Ok(()),
            OP_CLOSE | OP_PING | OP_PONG if b0 & FIN_BIT == 0 => {
                Err(FrameError::FragmentedControlFrame { opcode })
            }
            OP_CLOSE | OP_PING | OP_PONG => Ok(()),
            _ => Err(FrameError::ReservedOpcode { opcode }),
        }
    }

    fn check_second_byte(&self, b1: u8) -> Result<(), FrameError> {
        let opcode = self.b0 & 0x0F;
        match (self.client, b1 & MASK_BIT != 0) {
            (true, false) => Err(FrameError::UnmaskedClientFrame { opcode }),
            (false, true) => Err(FrameError::MaskedServerFrame { opcode }),
            _ => Ok(()),
        }
    }

    /// Called once the whole length field is in: `remaining` holds the payload length.
    fn check_length(&self) -> Result<(), FrameError> {
        let len = self.remaining;
        let opcode = self.b0 & 0x0F;
        if len >> 63 != 0 {
            return Err(FrameError::LengthMsbSet { len });
        }
        if opcode & 0x08 != 0 && len > MAX_CONTROL_PAYLOAD {
            return Err(FrameError::ControlFrameTooLong { opcode, len });
        }
        Ok(())
    }

    /// The current frame has fully passed. Returns whether the stream is now at a message
    /// boundary.
    fn finish_frame(&mut self) -> bool {
        let opcode = self.b0 & 0x0F;
        if opcode & 0x08 != 0 {
            // Control frames may sit between fragments (§5.4) and leave `msg_open` alone.
            if opcode == OP_CLOSE {
                self.close_seen = true;
                if self.close_code == 0 {
                    self.close_code = match (self.code_got, u16::from_be_bytes(self.code_buf)) {
                        (2, c) if c != 0 => c,
                        _ => 1005,
                    };
                }
            }
        } else {
            self.msg_open = self.b0 & FIN_BIT == 0;
        }
        self.hdr_pos = 0;
        self.hdr_len = 0;
        !self.msg_open
    }
}

/// The longest prefix of `s` that is at most `max` bytes and ends on a char boundary.
fn truncate_at_char_boundary(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    // Terminates: 0 is always a char boundary.
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Write a Close frame (§5.5.1) with status `code` and `reason` into `out`, returning the
/// frame's length in bytes.
///
/// The reason is cut at a char boundary to at most [`CLOSE_REASON_MAX_LEN`] bytes so the
/// payload fits a control frame (§5.5). `mask: Some(key)` masks the payload with `key`
/// (§5.3), as frames sent to a server must be; `None` for frames sent to a client. `code`
/// is written as given: pass one a peer may receive (§7.4, e.g. 1001 going away, 1012
/// service restart, 1013 try again later), never 1005, 1006 or 1015. No allocation.
pub fn write_close_frame(
    out: &mut [u8; CLOSE_FRAME_MAX_LEN],
    code: u16,
    reason: &str,
    mask: Option<[u8; 4]>,
) -> usize {
    let reason = truncate_at_char_boundary(reason, CLOSE_REASON_MAX_LEN);
    let payload_len = 2 + reason.len();
    out[0] = FIN_BIT | OP_CLOSE;
    // payload_len <= 125, so the 7-bit length form applies (§5.2).
    out[1] = payload_len as u8;
    let mut start = 2;
    if let Some(key) = mask {
        out[1] |= MASK_BIT;
        out[2..6].copy_from_slice(&key);
        start = 6;
    }
    let end = start + payload_len;
    out[start..start + 2].copy_from_slice(&code.to_be_bytes());
    out[start + 2..end].copy_from_slice(reason.as_bytes());
    if let Some(key) = mask {
        for (i, b) in out[start..end].iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    end
}

/// Parse the (unmasked) payload of a Close frame into status code and reason (§5.5.1).
///
/// An empty payload gives `(1005, "")`: "no status code present" (§7.1.5). `None` when the
/// payload is malformed: a lone byte, over 125 bytes, or a reason that is not UTF-8. The
/// code is returned as received; whether it is one a peer may send (§7.4) is the
/// caller's call.
pub fn parse_close_payload(payload: &[u8]) -> Option<(u16, &str)> {
    if payload.len() > MAX_CONTROL_PAYLOAD as usize {
        return None;
    }
    match payload {
        [] => Some((1005, "")),
        [hi, lo, reason @ ..] => Some((
            u16::from_be_bytes([*hi, *lo]),
            std::str::from_utf8(reason).ok()?,
        )),
        [_] => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::{Cursor, Read, Write};
    use tungstenite::{
        self,
        protocol::{
            frame::{
                coding::{Control, Data, OpCode},
                Frame, FrameHeader,
            },
            Role, WebSocket,
        },
        Message,
    };

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// What a run over a whole stream observed.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Outcome {
        /// Stream offsets right after each message boundary.
        boundaries: Vec<usize>,
        error: Option<FrameError>,
        at_message_boundary: bool,
        at_frame_boundary: bool,
        close_seen: bool,
    }

    /// Feed `stream` cut at `cuts` (any order, duplicates allowed) with
    /// `stop_at_message_boundary`, recording where each stop lands.
    fn run(dir: Direction, stream: &[u8], cuts: &[usize]) -> Outcome {
        let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(stream.len())).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();
        let mut t = FrameTracker::new(dir);
        let mut boundaries = Vec::new();
        let mut offset = 0;
        let mut error = None;
        'chunks: for &cut in &cuts {
            let mut rest = &stream[offset..cut];
            while !rest.is_empty() {
                match t.advance(rest, true) {
                    Ok(n) => {
                        assert!(n > 0 && n <= rest.len(), "consumed {n} of {}", rest.len());
                        if n < rest.len() {
                            assert!(t.at_message_boundary(), "stopped off a boundary");
                        }
                        offset += n;
                        rest = &rest[n..];
                        if t.at_message_boundary() {
                            boundaries.push(offset);
                        }
                    }
                    Err(e) => {
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

    /// Offsets after each frame end, feeding one byte at a time without stopping.
    fn frame_ends(dir: Direction, stream: &[u8]) -> (Vec<usize>, Option<FrameError>) {
        let mut t = FrameTracker::new(dir);
        let mut ends = Vec::new();
        for (i, b) in stream.iter().enumerate() {
            if let Err(e) = t.advance(std::slice::from_ref(b), false) {
                return (ends, Some(e));
            }
            if t.at_frame_boundary() {
                ends.push(i + 1);
            }
        }
        (ends, None)
    }

    /// Frame ends according to tungstenite's header parser, up to its first error or
    /// incomplete frame.
    fn tungstenite_frame_ends(stream: &[u8]) -> Vec<usize> {
        let mut ends = Vec::new();
        let mut offset = 0usize;
        while offset < stream.len() {
            let mut cur = Cursor::new(&stream[offset..]);
            match FrameHeader::parse(&mut cur) {
                Ok(Some((_, len))) => {
                    let end = (offset as u64)
                        .saturating_add(cur.position())
                        .saturating_add(len);
                    if end > stream.len() as u64 {
                        break;
                    }
                    offset = end as usize;
                    ends.push(offset);
                }
                _ => break,
            }
        }
        ends
    }

    /// Hand-built header: `b0`, then the length in its shortest form, then the key.
    fn header(b0: u8, len: u64, mask: Option<[u8; 4]>) -> Vec<u8> {
        let m = if mask.is_some() { MASK_BIT } else { 0 };
        let mut h = vec![b0];
        if len < 126 {
            h.push(m | len as u8);
        } else if len <= 0xFFFF {
            h.push(m | 126);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            h.push(m | 127);
            h.extend_from_slice(&len.to_be_bytes());
        }
        if let Some(k) = mask {
            h.extend_from_slice(&k);
        }
        h
    }

    /// A whole frame with a patterned payload (contents never matter to the tracker).
    fn frame(dir: Direction, b0: u8, len: usize) -> Vec<u8> {
        let mask = (dir == Direction::ClientToServer).then_some(KEY);
        let mut f = header(b0, len as u64, mask);
        f.extend((0..len).map(|i| i as u8));
        f
    }

    const BOTH: [Direction; 2] = [Direction::ClientToServer, Direction::ServerToClient];

    #[test]
    fn tracker_is_small() {
        // 32 until the Close code was kept for the access log (two per tunnel).
        assert!(std::mem::size_of::<FrameTracker>() <= 40);
    }

    #[test]
    fn length_classes_end_where_they_should() {
        for dir in BOTH {
            for len in [0usize, 1, 125, 126, 127, 65535, 65536, 70000] {
                let f = frame(dir, FIN_BIT | OP_BINARY, len);
                let hdr = f.len() - len;
                let expected_hdr = match len {
                    0..=125 => 2,
                    126..=65535 => 4,
                    _ => 10,
                } + if dir == Direction::ClientToServer {
                    4
                } else {
                    0
                };
                assert_eq!(hdr, expected_hdr, "len {len}");
                // Followed by a ping, the stop lands exactly at the end of the first frame.
                let mut stream = f.clone();
                stream.extend(frame(dir, FIN_BIT | OP_PING, 3));
                let mut t = FrameTracker::new(dir);
                assert_eq!(t.advance(&stream, true), Ok(f.len()), "{dir:?} len {len}");
                assert!(t.at_message_boundary());
                assert_eq!(
                    t.advance(&stream[f.len()..], true),
                    Ok(stream.len() - f.len())
                );
                assert!(t.at_message_boundary());
                // One byte short of the end is mid-frame.
                let mut t = FrameTracker::new(dir);
                assert_eq!(t.advance(&f[..f.len() - 1], true), Ok(f.len() - 1));
                assert!(!t.at_frame_boundary() && !t.at_message_boundary());
                assert_eq!(t.advance(&f[f.len() - 1..], false), Ok(1));
                assert!(t.at_message_boundary());
            }
        }
    }

    #[test]
    fn sixteen_mib_payload_is_skipped_without_reading_it() {
        const LEN: usize = 16 << 20;
        for dir in BOTH {
            let mask = (dir == Direction::ClientToServer).then_some(KEY);
            let hdr = header(FIN_BIT | OP_TEXT, LEN as u64, mask);
            assert_eq!(hdr[1] & 0x7F, 127);
            let mut t = FrameTracker::new(dir);
            assert_eq!(t.advance(&hdr, true), Ok(hdr.len()));
            assert!(!t.at_frame_boundary());
            let chunk = vec![0u8; 64 * 1024];
            for _ in 0..(LEN / chunk.len()) - 1 {
                assert_eq!(t.advance(&chunk, true), Ok(chunk.len()));
                assert!(!t.at_frame_boundary());
            }
            // Last chunk plus the start of the next frame: stops exactly at the end.
            let mut tail = chunk.clone();
            tail.extend(frame(dir, FIN_BIT | OP_PING, 0));
            assert_eq!(t.advance(&tail, true), Ok(chunk.len()));
            assert!(t.at_message_boundary());
        }
    }

    #[test]
    fn masking_key_is_part_of_the_header() {
        // A masked 0-length frame is 6 bytes; it must not end after 2.
        let f = frame(Direction::ClientToServer, FIN_BIT | OP_TEXT, 0);
        assert_eq!(f.len(), 6);
        let mut t = FrameTracker::new(Direction::ClientToServer);
        for b in &f[..5] {
            assert_eq!(t.advance(std::slice::from_ref(b), true), Ok(1));
            assert!(!t.at_frame_boundary());
        }
        assert_eq!(t.advance(&f[5..], true), Ok(1));
        assert!(t.at_message_boundary());
    }

    /// Messages with control frames between their fragments, and the true boundaries.
    fn fragmented_stream(dir: Direction) -> (Vec<u8>, Vec<usize>) {
        let mut s = Vec::new();
        let mut b = Vec::new();
        // A control frame outside any message is a boundary of its own.
        s.extend(frame(dir, FIN_BIT | OP_PING, 4));
        b.push(s.len());
        // Fragmented text with RSV1 set on the first frame (permessage-deflate).
        s.extend(frame(dir, 0x40 | OP_TEXT, 130));
        s.extend(frame(dir, FIN_BIT | OP_PING, 0));
        s.extend(frame(dir, OP_CONTINUATION, 0));
        s.extend(frame(dir, FIN_BIT | OP_PONG, 125));
        s.extend(frame(dir, OP_CONTINUATION, 300));
        s.extend(frame(dir, FIN_BIT | OP_CONTINUATION, 7));
        b.push(s.len());
        s.extend(frame(dir, FIN_BIT | OP_BINARY, 0));
        b.push(s.len());
        s.extend(frame(dir, OP_BINARY, 1));
        s.extend(frame(dir, FIN_BIT | OP_CLOSE, 2));
        s.extend(frame(dir, FIN_BIT | OP_CONTINUATION, 126));
        b.push(s.len());
        (s, b)
    }

    #[test]
    fn fragmented_messages_do_not_stop_between_fragments() {
        for dir in BOTH {
            let (s, expected) = fragmented_stream(dir);
            let out = run(dir, &s, &[]);
            assert_eq!(out.boundaries, expected, "{dir:?}");
            assert_eq!(out.error, None);
            assert!(out.at_message_boundary && out.close_seen);
            // Inside the open message, the stream is at frame but not message boundaries.
            let mut t = FrameTracker::new(dir);
            let first_fragment_end = expected[0] + frame(dir, OP_TEXT, 130).len();
            t.advance(&s[..first_fragment_end], false).unwrap();
            assert!(t.at_frame_boundary() && !t.at_message_boundary());
            // The stop skips the ping between fragments and lands after the final one.
            assert_eq!(
                t.advance(&s[first_fragment_end..], true),
                Ok(expected[1] - first_fragment_end)
            );
        }
    }

    #[test]
    fn close_seen_only_once_the_close_frame_is_complete() {
        for dir in BOTH {
            let f = frame(dir, FIN_BIT | OP_CLOSE, 10);
            let mut t = FrameTracker::new(dir);
            t.advance(&f[..f.len() - 1], false).unwrap();
            assert!(!t.close_seen());
            t.advance(&f[f.len() - 1..], false).unwrap();
            assert!(t.close_seen() && t.at_message_boundary());
        }
    }

    #[test]
    fn the_first_close_code_is_read_masked_or_not_split_anywhere() {
        for (dir, mask) in [
            (Direction::ClientToServer, Some([0x37, 0xfa, 0x21, 0x3d])),
            (Direction::ServerToClient, None),
        ] {
            let mut stream = frame(dir, FIN_BIT | OP_TEXT, 3);
            let mut close = [0u8; CLOSE_FRAME_MAX_LEN];
            let n = write_close_frame(&mut close, 4321, "bye", mask);
            stream.extend_from_slice(&close[..n]);
            let n = write_close_frame(&mut close, 1000, "", mask);
            stream.extend_from_slice(&close[..n]);
            for step in 1..stream.len() {
                let mut t = FrameTracker::new(dir);
                assert_eq!(t.close_code(), None);
                for chunk in stream.chunks(step) {
                    t.advance(chunk, false).unwrap();
                }
                assert_eq!(t.close_code(), Some(4321), "{dir:?} in chunks of {step}");
            }
        }
        // An empty Close payload: no status (1005).
        let mut t = FrameTracker::new(Direction::ServerToClient);
        t.advance(
            &frame(Direction::ServerToClient, FIN_BIT | OP_CLOSE, 0),
            false,
        )
        .unwrap();
        assert_eq!(t.close_code(), Some(1005));
    }

    #[test]
    fn every_split_gives_identical_boundaries() {
        for dir in BOTH {
            // Small payloads keep the stream short enough for all pairs of cuts.
            let mut s = Vec::new();
            s.extend(frame(dir, FIN_BIT | OP_TEXT, 3));
            s.extend(frame(dir, OP_BINARY, 126));
            s.extend(frame(dir, FIN_BIT | OP_PING, 1));
            s.extend(frame(dir, FIN_BIT | OP_CONTINUATION, 0));
            s.extend(frame(dir, FIN_BIT | OP_CLOSE, 2));
            let whole = run(dir, &s, &[]);
            assert_eq!(whole.boundaries.len(), 3);
            let bytewise: Vec<usize> = (1..s.len()).collect();
            assert_eq!(run(dir, &s, &bytewise), whole);
            for i in 0..=s.len() {
                assert_eq!(run(dir, &s, &[i]), whole, "cut at {i}");
                for j in (i..=s.len()).step_by(7) {
                    assert_eq!(run(dir, &s, &[i, j]), whole, "cuts at {i}, {j}");
                }
            }
            // Without stops, the final state is the same too.
            let mut t = FrameTracker::new(dir);
            assert_eq!(t.advance(&s, false), Ok(s.len()));
            assert!(t.at_message_boundary() && t.close_seen());
        }
    }

    #[test]
    fn rsv_bits_pass() {
        for dir in BOTH {
            for rsv in [0x40, 0x20, 0x10, 0x70] {
                let f = frame(dir, FIN_BIT | rsv | OP_TEXT, 5);
                assert_eq!(run(dir, &f, &[]).boundaries, vec![f.len()]);
            }
        }
    }

    fn first_error(dir: Direction, stream: &[u8]) -> Option<FrameError> {
        let e = run(dir, stream, &[]).error;
        // Split anywhere, the same error comes out.
        for i in 0..stream.len() {
            assert_eq!(run(dir, stream, &[i]).error, e, "cut at {i}");
        }
        e
    }

    #[test]
    fn reserved_opcodes_are_rejected() {
        for dir in BOTH {
            for op in (3..=7).chain(0xB..=0xF) {
                assert_eq!(
                    first_error(dir, &frame(dir, FIN_BIT | op, 0)),
                    Some(FrameError::ReservedOpcode { opcode: op })
                );
            }
        }
    }

    #[test]
    fn masking_rule_is_enforced_per_direction() {
        let unmasked = frame(Direction::ServerToClient, FIN_BIT | OP_TEXT, 1);
        let masked = frame(Direction::ClientToServer, FIN_BIT | OP_PING, 1);
        assert_eq!(
            first_error(Direction::ClientToServer, &unmasked),
            Some(FrameError::UnmaskedClientFrame { opcode: OP_TEXT })
        );
        assert_eq!(
            first_error(Direction::ServerToClient, &masked),
            Some(FrameError::MaskedServerFrame { opcode: OP_PING })
        );
    }

    #[test]
    fn control_frames_are_small_and_unfragmented() {
        for dir in BOTH {
            for op in [OP_CLOSE, OP_PING, OP_PONG] {
                assert_eq!(
                    first_error(dir, &frame(dir, FIN_BIT | op, 126)),
                    Some(FrameError::ControlFrameTooLong {
                        opcode: op,
                        len: 126
                    })
                );
                assert_eq!(
                    first_error(dir, &frame(dir, op, 0)),
                    Some(FrameError::FragmentedControlFrame { opcode: op })
                );
                // 125 bytes is the limit, not past it.
                assert_eq!(first_error(dir, &frame(dir, FIN_BIT | op, 125)), None);
            }
            // The limit is on the length value, caught even with a 64-bit length.
            let mask = (dir == Direction::ClientToServer).then_some(KEY);
            let mut h = header(FIN_BIT | OP_PING, 1 << 20, mask);
            h.truncate(10);
            assert_eq!(
                first_error(dir, &h),
                Some(FrameError::ControlFrameTooLong {
                    opcode: OP_PING,
                    len: 1 << 20
                })
            );
        }
    }

    #[test]
    fn sixty_four_bit_length_msb_is_rejected() {
        for dir in BOTH {
            let mask = (dir == Direction::ClientToServer).then_some(KEY);
            let h = header(FIN_BIT | OP_BINARY, 0x8000_0000_0000_0000, mask);
            assert_eq!(
                first_error(dir, &h),
                Some(FrameError::LengthMsbSet {
                    len: 0x8000_0000_0000_0000
                })
            );
            // The largest legal length is accepted (and never finishes, of course).
            let h = header(FIN_BIT | OP_BINARY, u64::MAX >> 1, mask);
            let out = run(dir, &h, &[]);
            assert_eq!(out.error, None);
            assert!(!out.at_frame_boundary);
        }
    }

    #[test]
    fn continuation_rules_are_enforced() {
        for dir in BOTH {
            assert_eq!(
                first_error(dir, &frame(dir, FIN_BIT | OP_CONTINUATION, 0)),
                Some(FrameError::UnexpectedContinuation)
            );
            // After a message completes, continuation is unexpected again.
            let mut s = frame(dir, OP_TEXT, 1);
            s.extend(frame(dir, FIN_BIT | OP_CONTINUATION, 1));
            s.extend(frame(dir, OP_CONTINUATION, 1));
            assert_eq!(
                first_error(dir, &s),
                Some(FrameError::UnexpectedContinuation)
            );
            // A new data frame inside an open message, even after an interleaved ping.
            for op in [OP_TEXT, OP_BINARY] {
                let mut s = frame(dir, OP_BINARY, 1);
                s.extend(frame(dir, FIN_BIT | OP_PING, 0));
                s.extend(frame(dir, FIN_BIT | op, 1));
                assert_eq!(
                    first_error(dir, &s),
                    Some(FrameError::DataFrameInsideMessage { opcode: op })
                );
            }
        }
    }

    #[test]
    fn errors_poison_the_tracker() {
        let dir = Direction::ServerToClient;
        let mut t = FrameTracker::new(dir);
        let bad = frame(dir, FIN_BIT | 0x3, 0);
        let err = FrameError::ReservedOpcode { opcode: 3 };
        assert_eq!(t.advance(&bad, false), Err(err));
        assert_eq!(t.error(), Some(err));
        assert!(!t.at_message_boundary() && !t.at_frame_boundary());
        assert_eq!(t.advance(&frame(dir, FIN_BIT | OP_TEXT, 0), true), Err(err));
        assert_eq!(t.advance(&[], true), Err(err));
        // Messages carry the offending values.
        assert_eq!(err.to_string(), "reserved opcode 0x3 (RFC 6455 §5.2)");
        let e = FrameError::ControlFrameTooLong {
            opcode: 9,
            len: 300,
        };
        assert!(e.to_string().contains("0x9") && e.to_string().contains("300"));
    }

    #[test]
    fn empty_input_consumes_nothing() {
        let mut t = FrameTracker::new(Direction::ClientToServer);
        assert_eq!(t.advance(&[], true), Ok(0));
        assert!(t.at_message_boundary() && !t.close_seen());
        assert_eq!(t.direction(), Direction::ClientToServer);
    }

    /// A stream used for reading a frame from bytes; writes (tungstenite's close reply) are
    /// kept apart.
    struct Duplex {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Duplex {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Duplex {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Read `bytes` as tungstenite's endpoint that would receive them: a server for masked
    /// frames, a client for unmasked ones.
    fn tungstenite_read_close(bytes: &[u8], masked: bool) -> (u16, String) {
        let role = if masked { Role::Server } else { Role::Client };
        let stream = Duplex {
            input: Cursor::new(bytes.to_vec()),
            output: Vec::new(),
        };
        let mut ws = WebSocket::from_raw_socket(stream, role, None);
        match ws.read() {
            Ok(Message::Close(Some(cf))) => (u16::from(cf.code), cf.reason.as_str().to_owned()),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    fn check_close_round_trip(code: u16, reason: &str, mask: Option<[u8; 4]>) -> usize {
        let mut out = [0u8; CLOSE_FRAME_MAX_LEN];
        let n = write_close_frame(&mut out, code, reason, mask);
        let expected = truncate_at_char_boundary(reason, CLOSE_REASON_MAX_LEN);
        assert!(expected.len() <= CLOSE_REASON_MAX_LEN);
        assert!(reason.starts_with(expected));
        let (c, r) = tungstenite_read_close(&out[..n], mask.is_some());
        assert_eq!((c, r.as_str()), (code, expected));
        // The tracker of the matching direction sees one complete close frame.
        let dir = if mask.is_some() {
            Direction::ClientToServer
        } else {
            Direction::ServerToClient
        };
        let mut t = FrameTracker::new(dir);
        assert_eq!(t.advance(&out[..n], true), Ok(n));
        assert!(t.close_seen() && t.at_message_boundary());
        // The unmasked payload parses back too.
        let payload_start = if mask.is_some() { 6 } else { 2 };
        let mut payload = out[payload_start..n].to_vec();
        if let Some(k) = mask {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= k[i % 4];
            }
        }
        assert_eq!(parse_close_payload(&payload), Some((code, expected)));
        r.len()
    }

    #[test]
    fn close_frame_round_trips_and_truncates() {
        for mask in [None, Some(KEY)] {
            assert_eq!(check_close_round_trip(1001, "", mask), 0);
            assert_eq!(check_close_round_trip(1013, "draining", mask), 8);
            assert_eq!(check_close_round_trip(4000, &"x".repeat(123), mask), 123);
            assert_eq!(check_close_round_trip(1012, &"x".repeat(500), mask), 123);
            // 2-byte chars: 61 fit (122 bytes), the 62nd would cross 123.
            assert_eq!(check_close_round_trip(1001, &"é".repeat(70), mask), 122);
            // 3-byte chars: exactly 41 fit.
            assert_eq!(check_close_round_trip(1001, &"€".repeat(50), mask), 123);
            // A 4-byte char straddling the limit is dropped whole.
            let s = format!("{}😀tail", "a".repeat(121));
            assert_eq!(check_close_round_trip(1000, &s, mask), 121);
        }
        // Largest frame fills the buffer exactly.
        let mut out = [0u8; CLOSE_FRAME_MAX_LEN];
        let long = "y".repeat(200);
        assert_eq!(
            write_close_frame(&mut out, 1001, &long, Some(KEY)),
            CLOSE_FRAME_MAX_LEN
        );
    }

    #[test]
    fn close_payload_parsing() {
        assert_eq!(parse_close_payload(&[]), Some((1005, "")));
        assert_eq!(parse_close_payload(&[0x03]), None);
        assert_eq!(parse_close_payload(&[0x03, 0xE9]), Some((1001, "")));
        assert_eq!(
            parse_close_payload(&[0x03, 0xF5, b'h', b'i']),
            Some((1013, "hi"))
        );
        assert_eq!(parse_close_payload(&[0x03, 0xE8, 0xFF]), None);
        let mut long = vec![0x03, 0xE8];
        long.extend([b'a'; 124]);
        assert_eq!(parse_close_payload(&long), None);
        long.pop();
        assert!(parse_close_payload(&long).is_some());
    }

    /// One generated frame-sequence item.
    #[derive(Debug, Clone)]
    enum Item {
        /// A control frame outside any message.
        Control(u8, usize),
        /// A data message: opcode, RSV1, and per fragment its length and the control
        /// frames sent after it (ignored after the last fragment).
        Message(u8, bool, Vec<(usize, Vec<(u8, usize)>)>),
    }

    fn data_len() -> impl Strategy<Value = usize> {
        prop_oneof![
            8 => 0usize..=130,
            2 => 126usize..=600,
            1 => Just(65535usize),
            1 => 65530usize..=65540,
        ]
    }

    fn control() -> impl Strategy<Value = (u8, usize)> {
        (
            prop_oneof![Just(OP_CLOSE), Just(OP_PING), Just(OP_PONG)],
            0usize..=125,
        )
    }

    fn item() -> impl Strategy<Value = Item> {
        prop_oneof![
            1 => control().prop_map(|(op, len)| Item::Control(op, len)),
            3 => (
                prop_oneof![Just(OP_TEXT), Just(OP_BINARY)],
                any::<bool>(),
                prop::collection::vec(
                    (data_len(), prop::collection::vec(control(), 0..3)),
                    1..4
                )
            )
                .prop_map(|(op, rsv1, frags)| Item::Message(op, rsv1, frags)),
        ]
    }

    fn tungstenite_opcode(op: u8) -> OpCode {
        match op {
            OP_CONTINUATION => OpCode::Data(Data::Continue),
            OP_TEXT => OpCode::Data(Data::Text),
            OP_BINARY => OpCode::Data(Data::Binary),
            OP_CLOSE => OpCode::Control(Control::Close),
            OP_PING => OpCode::Control(Control::Ping),
            _ => OpCode::Control(Control::Pong),
        }
    }

    /// Encoded with tungstenite's frame encoder.
    fn encode(out: &mut Vec<u8>, op: u8, fin: bool, rsv1: bool, len: usize, mask: Option<[u8; 4]>) {
        let header = FrameHeader {
            is_final: fin,
            rsv1,
            rsv2: false,
            rsv3: false,
            opcode: tungstenite_opcode(op),
            mask,
        };
        let payload = bytes::Bytes::from(vec![0xA5u8; len]);
        Frame::from_payload(header, payload)
            .format(out)
            .expect("writing to a Vec cannot fail");
    }

    /// The stream, its true message boundaries, and whether a close frame is in it.
    fn build(items: &[Item], mask: Option<[u8; 4]>) -> (Vec<u8>, Vec<usize>, bool) {
        let mut s = Vec::new();
        let mut b = Vec::new();
        let mut close = false;
        for it in items {
            match it {
                Item::Control(op, len) => {
                    encode(&mut s, *op, true, false, *len, mask);
                    close |= *op == OP_CLOSE;
                    b.push(s.len());
                }
                Item::Message(op, rsv1, frags) => {
                    for (i, (len, controls)) in frags.iter().enumerate() {
                        let last = i + 1 == frags.len();
                        let (op, rsv1) = if i == 0 {
                            (*op, *rsv1)
                        } else {
                            (OP_CONTINUATION, false)
                        };
                        encode(&mut s, op, last, rsv1, *len, mask);
                        if last {
                            b.push(s.len());
                        } else {
                            for (cop, clen) in controls {
                                encode(&mut s, *cop, true, false, *clen, mask);
                                close |= *cop == OP_CLOSE;
                            }
                        }
                    }
                }
            }
        }
        (s, b, close)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn random_valid_streams_give_true_boundaries(
            items in prop::collection::vec(item(), 0..8),
            client in any::<bool>(),
            key in any::<[u8; 4]>(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..24),
        ) {
            let dir = if client { Direction::ClientToServer } else { Direction::ServerToClient };
            let mask = client.then_some(key);
            let (s, expected, close) = build(&items, mask);
            let cuts: Vec<usize> = cuts.iter().map(|i| i.index(s.len() + 1)).collect();
            let out = run(dir, &s, &cuts);
            prop_assert_eq!(out.error, None);
            prop_assert_eq!(&out.boundaries, &expected);
            prop_assert!(out.at_message_boundary);
            prop_assert_eq!(out.close_seen, close);
            prop_assert_eq!(run(dir, &s, &[]), out);
            // Frame ends agree with tungstenite's own header parser.
            let (ends, err) = frame_ends(dir, &s);
            prop_assert_eq!(err, None);
            prop_assert_eq!(ends, tungstenite_frame_ends(&s));
        }

        #[test]
        fn arbitrary_bytes_are_split_invariant_and_agree_with_tungstenite(
            s in prop::collection::vec(any::<u8>(), 0..200),
            client in any::<bool>(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let dir = if client { Direction::ClientToServer } else { Direction::ServerToClient };
            let cuts: Vec<usize> = cuts.iter().map(|i| i.index(s.len() + 1)).collect();
            let whole = run(dir, &s, &[]);
            prop_assert_eq!(run(dir, &s, &cuts), whole.clone());
            let bytewise: Vec<usize> = (1..s.len()).collect();
            prop_assert_eq!(run(dir, &s, &bytewise), whole);
            // Up to the tracker's first error, frames end where tungstenite says.
            let (ends, err) = frame_ends(dir, &s);
            let theirs = tungstenite_frame_ends(&s);
            prop_assert!(theirs.starts_with(&ends), "ours {:?} theirs {:?}", ends, theirs);
            if err.is_none() {
                prop_assert_eq!(ends, theirs);
            }
        }

        #[test]
        fn close_frames_round_trip_through_tungstenite(
            reason in ".{0,80}",
            code in prop_oneof![Just(1000u16), Just(1001), Just(1011), Just(1012), Just(1013), 3000u16..5000],
            mask in any::<Option<[u8; 4]>>(),
        ) {
            check_close_round_trip(code, &reason, mask);
        }
    }

    #[test]
    fn tungstenite_rejects_what_the_tracker_rejects_for_reserved_opcodes() {
        // Anchors the cross-check: both sides agree reserved opcodes are errors.
        let mut cur = Cursor::new([0x83u8, 0x00]);
        assert!(matches!(
            FrameHeader::parse(&mut cur),
            Err(tungstenite::Error::Protocol(_))
        ));
    }
}
