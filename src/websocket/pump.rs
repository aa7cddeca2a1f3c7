//! One direction of a tunnel: its frame tracker and backpressure bytes, and the copy
//! from its source socket to its destination through the worker thread's copy buffer.

use super::frame::{write_close_frame, Direction, FrameTracker};
use super::side::{ReadOutcome, Side};
use std::io;

/// Bytes read but not yet taken by the destination: boxed and allocated only under
/// backpressure, so a direction with none costs one word of the tunnel's task.
#[derive(Default)]
#[allow(clippy::box_collection)] // one word while idle instead of a Vec's three: the point
pub(super) struct Pending(Option<Box<Vec<u8>>>);

impl Pending {
    pub(super) fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|v| v.is_empty())
    }

    pub(super) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |v| v.len())
    }

    pub(super) fn as_slice(&self) -> &[u8] {
        self.0.as_ref().map_or(&[], |v| v.as_slice())
    }

    pub(super) fn extend_from_slice(&mut self, data: &[u8]) {
        if !data.is_empty() {
            self.0
                .get_or_insert_with(Box::default)
                .extend_from_slice(data);
        }
    }

    /// Drop the first `n` bytes (written out); the buffer goes once empty.
    pub(super) fn consume(&mut self, n: usize) {
        if let Some(v) = &mut self.0 {
            v.drain(..n.min(v.len()));
            if v.is_empty() {
                self.0 = None;
            }
        }
    }
}

pub(super) struct Dir {
    pub(super) tracker: FrameTracker,
    /// False after the stream broke framing rules: we still relay, but never inject.
    pub(super) tracking: bool,
    /// Bytes read but not yet taken by the destination (allocated only under backpressure).
    pub(super) pending: Pending,
    /// Source not at EOF yet.
    pub(super) open: bool,
    /// Destination write side shut down (or to be, once `pending` is flushed).
    pub(super) shut: bool,
    /// Drop what the source sends (a Close was injected towards the destination).
    pub(super) discard: bool,
    /// Bytes read from the source (the access log).
    pub(super) bytes: u64,
    /// The code of a Close herdgate sent towards the destination (0: none).
    pub(super) sent: u16,
}

impl Dir {
    pub(super) fn new(d: Direction) -> Self {
        Dir {
            tracker: FrameTracker::new(d),
            tracking: true,
            pending: Pending::default(),
            open: true,
            shut: false,
            discard: false,
            bytes: 0,
            sent: 0,
        }
    }

    pub(super) fn at_boundary(&self) -> bool {
        self.tracking && self.pending.is_empty() && self.tracker.at_message_boundary()
    }

    pub(super) fn track(&mut self, data: &[u8], stop: bool) -> usize {
        if !self.tracking {
            return data.len();
        }
        match self.tracker.advance(data, stop) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("frame tracking stopped: {e}");
                self.tracking = false;
                data.len()
            }
        }
    }
}

pub(super) enum Pump {
    /// Source has nothing more right now.
    Idle,
    /// Destination pushed back; `pending` holds the rest.
    Blocked,
    /// Stopped at a message boundary because a close is due.
    Boundary,
    /// Read budget used up; call again.
    More,
    Eof,
}

const READ_BUF: usize = 16 * 1024;
const ROUNDS: usize = 16;

thread_local! {
    /// The copy buffer, one per worker thread. A pump never awaits while it holds it, so
    /// one thread's tunnels take turns; and unlike a stack array it is not zeroed again
    /// for every read (memset of 16 KiB was the top user-space symbol in the echo bench).
    static COPY_BUF: std::cell::RefCell<Box<[u8; READ_BUF]>> =
        std::cell::RefCell::new(Box::new([0u8; READ_BUF]));
}

/// Move bytes `src` → `dst` until the source would block, the destination pushes back,
/// or (with `stop_at_boundary`) a message boundary is reached.
/// `metric` is the direction's [`crate::metrics::TUNNEL_BYTES`] series, counted once per
/// call (the tunnel keeps no counter handles: an idle tunnel would carry them).
pub(super) fn pump(
    src: &mut Side,
    dst: &mut Side,
    dir: &mut Dir,
    stop_at_boundary: bool,
    metric: crate::metrics::Dir,
) -> io::Result<Pump> {
    let before = dir.bytes;
    let r = COPY_BUF.with(|b| match b.try_borrow_mut() {
        Ok(mut buf) => pump_with(src, dst, dir, stop_at_boundary, &mut buf[..]),
        // Unreachable (pumps do not nest), but never panic: fall back to the stack.
        Err(_) => pump_with(src, dst, dir, stop_at_boundary, &mut [0u8; READ_BUF]),
    });
    let read = dir.bytes - before;
    if read > 0 {
        crate::metrics::bytes_counter(metric).increment(read);
    }
    r
}

fn pump_with(
    src: &mut Side,
    dst: &mut Side,
    dir: &mut Dir,
    stop_at_boundary: bool,
    buf: &mut [u8],
) -> io::Result<Pump> {
    for _ in 0..ROUNDS {
        let n = match src.try_read(buf)? {
            ReadOutcome::WouldBlock => return Ok(Pump::Idle),
            ReadOutcome::Eof => {
                dir.open = false;
                return Ok(Pump::Eof);
            }
            ReadOutcome::Data(n) => n,
        };
        dir.bytes += n as u64;
        if dir.discard {
            dir.track(&buf[..n], false);
            continue;
        }
        let k = dir.track(&buf[..n], stop_at_boundary);
        let data = &buf[..k];
        let w = dst.try_write(data)?;
        if w < k {
            dir.pending.extend_from_slice(&data[w..]);
        }
        if k < n {
            // A close goes out right after this boundary; what follows is for nobody.
            dir.track(&buf[k..n], false);
            dir.discard = true;
            return Ok(Pump::Boundary);
        }
        if stop_at_boundary && dir.tracking && dir.tracker.at_message_boundary() {
            return Ok(if dir.pending.is_empty() {
                Pump::Boundary
            } else {
                Pump::Blocked
            });
        }
        if !dir.pending.is_empty() {
            return Ok(Pump::Blocked);
        }
    }
    Ok(Pump::More)
}

/// Write `pending` out; true when empty.
pub(super) fn flush_pending(dst: &mut Side, dir: &mut Dir) -> io::Result<bool> {
    if !dir.pending.is_empty() {
        let w = dst.try_write(dir.pending.as_slice())?;
        // Freed once empty: idle tunnels hold no backpressure buffer.
        dir.pending.consume(w);
    }
    Ok(dst.flush()? && dir.pending.is_empty())
}

/// Queue a close frame towards `dst` after whatever is pending.
pub(super) fn send_close(
    dst: &mut Side,
    dir: &mut Dir,
    code: u16,
    reason: &str,
    mask: bool,
) -> io::Result<()> {
    let mut frame = [0u8; 131];
    let key = mask.then(rand::random::<[u8; 4]>);
    let len = write_close_frame(&mut frame, code, reason, key);
    if dir.sent == 0 {
        dir.sent = code;
    }
    if dir.pending.is_empty() {
        let w = dst.try_write(&frame[..len])?;
        dir.pending.extend_from_slice(&frame[w..len]);
    } else {
        dir.pending.extend_from_slice(&frame[..len]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_bytes_are_freed_once_written_out() {
        let mut p = Pending::default();
        assert!(p.is_empty() && p.0.is_none());
        p.extend_from_slice(&[]);
        assert!(p.0.is_none(), "nothing to hold, nothing allocated");
        p.extend_from_slice(b"abcdef");
        assert_eq!((p.len(), p.as_slice()), (6, &b"abcdef"[..]));
        p.consume(4);
        assert_eq!(p.as_slice(), b"ef");
        // More than is there (never happens) is not a panic.
        p.consume(10);
        assert!(p.is_empty());
        assert!(p.0.is_none(), "the buffer is released when empty");
    }
}
