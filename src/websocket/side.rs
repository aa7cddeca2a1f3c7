//! One end of a tunnel, read and written without holding buffers while idle.
//!
//! An idle WebSocket holds no copy buffer here: the relay waits for socket readiness,
//! then reads into the worker thread's copy buffer, borrowed only for that poll. Over TLS we drive
//! rustls by hand (instead of through tokio-rustls' AsyncRead) for the same reason:
//! readiness comes from the TCP socket, and plaintext is pulled out of rustls only when
//! it is there.

use rustls::ServerConnection;
use std::io::{self, Read, Write};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The reactor's readiness is edge-triggered here (epoll, kqueue), as tokio's own
/// `poll_read` assumes for the same shortcut.
const EDGE_TRIGGERED: bool = cfg!(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly",
));

/// One non-blocking read. A read that fills less than `buf` has emptied the socket's
/// receive queue, so the socket's read readiness is cleared at once (what tokio's
/// `poll_read` does, and `try_read` does not): otherwise the next read is a syscall that
/// only returns EAGAIN, one wasted `recvfrom` per relayed chunk. Data or a FIN arriving
/// after the read raises readiness again, and a FIN already seen stays (tokio keeps the
/// closed state when clearing).
fn read_now(t: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    if !EDGE_TRIGGERED {
        return t.try_read(buf);
    }
    let mut short = None;
    let r = t.try_io(Interest::READABLE, || {
        let n = (&*socket2::SockRef::from(t)).read(buf)?;
        if n > 0 && n < buf.len() {
            short = Some(n);
            // Tells tokio the socket is drained; `short` carries the data out.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match short {
        Some(n) => Ok(n),
        None => r,
    }
}

/// Drop the wakers that earlier tasks left in `t`'s reactor registration.
///
/// tokio keeps one waker per direction for `poll_read`/`poll_write` callers (hyper's
/// connection, which read the request head or the node's 101 through it) until the next
/// readiness event wakes it. The relay waits with `readable()`/`writable()` instead, which
/// does not replace them: on a tunnel that carries no message the old waker lives on, and
/// with it the whole finished connection task it wakes (about 4 KiB: hyper's connection
/// future), for the tunnel's life. Registering a no-op waker in both slots releases them.
pub fn release_stale_wakers(t: &TcpStream) {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    // Ready means an event came since the waker was stored, and it took the waker then.
    let _ = t.poll_read_ready(&mut cx);
    let _ = t.poll_write_ready(&mut cx);
}

/// `std::io` view of a non-blocking tokio socket, for rustls' read_tls/write_tls.
struct TryIo<'a>(&'a TcpStream);

impl Read for TryIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_now(self.0, buf)
    }
}

impl Write for TryIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Largest plaintext rustls may hold for us before we stop feeding it (backpressure).
const TLS_BUFFER_LIMIT: usize = 64 * 1024;

/// One end of a relayed tunnel: a plain socket, or a socket with its rustls state.
pub enum Side {
    /// Plain TCP.
    Plain(TcpStream),
    /// TCP carrying TLS, with the rustls connection that encrypts it.
    Tls(TcpStream, Box<ServerConnection>),
}

/// Outcome of a non-blocking read.
pub enum ReadOutcome {
    /// This many bytes were read.
    Data(usize),
    /// The peer closed its side.
    Eof,
    /// Nothing to read now; wait for readiness.
    WouldBlock,
}

impl Side {
    /// A TLS side, with rustls's plaintext buffer capped for backpressure.
    pub fn tls(tcp: TcpStream, mut conn: ServerConnection) -> Side {
        conn.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        Side::Tls(tcp, Box::new(conn))
    }

    /// The underlying TCP socket.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Side::Plain(t) | Side::Tls(t, _) => t,
        }
    }

    /// Plaintext already decrypted and waiting (so the socket will not wake us for it).
    pub fn has_buffered_input(&mut self) -> bool {
        match self {
            Side::Plain(_) => false,
            Side::Tls(_, c) => c
                .process_new_packets()
                .map(|s| s.plaintext_bytes_to_read() > 0 || s.peer_has_closed())
                .unwrap_or(true),
        }
    }

    /// Read what is available now, without waiting.
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<ReadOutcome> {
        match self {
            Side::Plain(t) => match read_now(t, buf) {
                Ok(0) => Ok(ReadOutcome::Eof),
                Ok(n) => Ok(ReadOutcome::Data(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(ReadOutcome::WouldBlock),
                Err(e) => Err(e),
            },
            Side::Tls(t, c) => {
                // Plaintext first: it may already be there from an earlier record.
                loop {
                    match c.reader().read(buf) {
                        Ok(0) => return Ok(ReadOutcome::Eof),
                        Ok(n) => return Ok(ReadOutcome::Data(n)),
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                            return Ok(ReadOutcome::Eof)
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                    match c.read_tls(&mut TryIo(t)) {
                        Ok(0) => {
                            // TCP EOF: let the reader report it (after any plaintext).
                            let _ = c.process_new_packets();
                            return match c.reader().read(buf) {
                                Ok(n) if n > 0 => Ok(ReadOutcome::Data(n)),
                                _ => Ok(ReadOutcome::Eof),
                            };
                        }
                        Ok(_) => {
                            if let Err(e) = c.process_new_packets() {
                                // Best effort: tell the peer why (the alert is queued).
                                let _ = c.write_tls(&mut TryIo(t));
                                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                            }
                            if c.wants_write() {
                                // e.g. a TLS 1.3 KeyUpdate response.
                                let _ = c.write_tls(&mut TryIo(t));
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            return Ok(ReadOutcome::WouldBlock)
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// Write what the socket takes now; returns how much of `data` was consumed.
    /// Over TLS everything up to the buffer limit is taken and encrypted; `flush` sends it.
    pub fn try_write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Side::Plain(t) => match t.try_write(data) {
                Ok(n) => Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                Err(e) => Err(e),
            },
            Side::Tls(_, c) => {
                let n = c.writer().write(data)?;
                self.flush()?;
                Ok(n)
            }
        }
    }

    /// Push encrypted bytes held by rustls to the socket. Returns true when all are out.
    pub fn flush(&mut self) -> io::Result<bool> {
        match self {
            Side::Plain(_) => Ok(true),
            Side::Tls(t, c) => {
                while c.wants_write() {
                    match c.write_tls(&mut TryIo(t)) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                        Err(e) => return Err(e),
                    }
                }
                Ok(true)
            }
        }
    }

    /// Output is waiting inside this side (TLS records not yet on the socket).
    pub fn has_pending_output(&self) -> bool {
        match self {
            Side::Plain(_) => false,
            Side::Tls(_, c) => c.wants_write(),
        }
    }

    /// Half-close our sending direction (TLS: close_notify first).
    pub fn shutdown_write(&mut self) {
        self.close_notify();
        let _ = socket2::SockRef::from(self.tcp()).shutdown(std::net::Shutdown::Write);
    }

    /// Before the socket is closed: TLS's close_notify (nothing for plain TCP, whose
    /// close sends the FIN).
    pub fn close_notify(&mut self) {
        if let Side::Tls(_, c) = self {
            c.send_close_notify();
            let _ = self.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::{Context, Wake, Waker};
    use tokio::io::AsyncWriteExt;

    /// A waker whose clones can be counted (Arc strong count).
    struct Counted;
    impl Wake for Counted {
        fn wake(self: Arc<Self>) {}
    }

    #[tokio::test]
    async fn a_stale_reader_waker_is_released_and_the_socket_still_wakes_its_reader() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();

        // What hyper's connection task leaves behind: its waker in the read slot.
        let w = Arc::new(Counted);
        let waker = Waker::from(w.clone());
        // A fresh registration may start out read-ready: a read that finds nothing clears it.
        let mut buf = [0u8; 4];
        let mut tries = 0;
        while b
            .poll_read_ready(&mut Context::from_waker(&waker))
            .is_ready()
        {
            assert_eq!(
                b.try_read(&mut buf).unwrap_err().kind(),
                io::ErrorKind::WouldBlock
            );
            tries += 1;
            assert!(tries < 10, "read readiness does not clear");
        }
        drop(waker);
        assert_eq!(Arc::strong_count(&w), 2, "the registration holds the waker");

        release_stale_wakers(&b);
        assert_eq!(Arc::strong_count(&w), 1, "the stale waker is gone");

        // The relay's way of waiting still sees data.
        a.write_all(b"x").await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), b.readable())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read_now(&b, &mut buf).unwrap(), 1);
    }
}
