//! One end of a tunnel, read and written without holding buffers while idle.
//!
//! An idle WebSocket holds no copy buffer here: the relay waits for socket readiness,
//! then reads into the worker thread's copy buffer, borrowed only for that poll. Over TLS
//! the session (`io::tls::TlsSession`) is driven by hand for the same reason: readiness
//! comes from the TCP socket, and records are read and decrypted only when they are there.

use crate::io::read_now;
use crate::io::tls::{TlsSession, TlsStream};
pub use crate::io::ReadOutcome;
use std::io;
use tokio::net::TcpStream;

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

/// One end of a relayed tunnel: a plain socket, or a socket with its TLS session.
pub enum Side {
    /// Plain TCP.
    Plain(TcpStream),
    /// TCP carrying TLS, with the session that encrypts it (its buffers are empty, and
    /// hold no memory, while the tunnel is idle).
    Tls(TcpStream, Box<TlsSession>),
}

impl Side {
    /// A TLS side, from the stream that carried the handshake and the HTTP upgrade.
    pub fn tls(stream: TlsStream) -> Side {
        let (tcp, session) = stream.into_parts();
        Side::Tls(tcp, Box::new(session))
    }

    /// The underlying TCP socket.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Side::Plain(t) | Side::Tls(t, _) => t,
        }
    }

    /// Input is waiting inside this side (so the socket will not wake us for it).
    pub fn has_buffered_input(&mut self) -> bool {
        match self {
            Side::Plain(_) => false,
            Side::Tls(_, s) => s.has_buffered_input(),
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
            Side::Tls(t, s) => s.read(t, buf),
        }
    }

    /// Write what the socket takes now; returns how much of `data` was consumed.
    /// Over TLS a chunk is taken and encrypted once earlier records are out; `flush`
    /// sends what the socket did not take at once.
    pub fn try_write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Side::Plain(t) => match t.try_write(data) {
                Ok(n) => Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                Err(e) => Err(e),
            },
            Side::Tls(t, s) => s.write(t, data),
        }
    }

    /// Push encrypted bytes held back to the socket. Returns true when all are out.
    pub fn flush(&mut self) -> io::Result<bool> {
        match self {
            Side::Plain(_) => Ok(true),
            Side::Tls(t, s) => s.flush(t),
        }
    }

    /// Output is waiting inside this side (TLS records not yet on the socket).
    pub fn has_pending_output(&self) -> bool {
        match self {
            Side::Plain(_) => false,
            Side::Tls(_, s) => s.has_pending_output(),
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
        if let Side::Tls(t, s) = self {
            s.close_notify(t);
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
