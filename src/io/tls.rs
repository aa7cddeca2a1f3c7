//! Server-side TLS over a tokio `TcpStream`, driven through rustls' unbuffered API so that
//! a connection holds no buffer while it is idle.
//!
//! rustls' buffered `ServerConnection` keeps a receive buffer of at least 4 KiB for the
//! connection's whole life (and has no call to release it): with 9,000 idle wss tunnels
//! that is 36 MiB of zeroes. Here the buffers are ours: received bytes wait in `rx` only
//! while they are a partial record, decrypted bytes in `plain` only until the reader takes
//! them, encrypted bytes in `tx` only until the socket takes them; each is freed (a `Vec`
//! with no allocation) once empty. rustls still does every part of the protocol: the
//! handshake, record protection, alerts, `close_notify`, and TLS 1.3 KeyUpdate both ways
//! (answering the peer's, and refreshing our own keys before their confidentiality limit).
//!
//! [`TlsSession`] is the protocol state and the buffers, worked with non-blocking reads and
//! writes on a socket it does not own: the relay (`websocket::side`) drives it by socket
//! readiness. [`TlsStream`] pairs it with its socket as an `AsyncRead`/`AsyncWrite` for
//! hyper; [`handshake`] runs the handshake itself.

use super::ReadOutcome;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use rustls::ServerConfig;
use std::cell::RefCell;
use std::io;
use std::sync::Arc;
use tokio::net::TcpStream;

mod stream;
pub use stream::{handshake, read_client_hello, TlsStream};

/// Record header: type, version, length.
const HEADER: usize = 5;
/// The largest record a peer may send: 2^14 bytes of plaintext plus TLS 1.2's largest
/// expansion (2,048), and the header. rustls refuses a record that announces more.
const MAX_RECORD: usize = HEADER + 16_384 + 2_048;
/// What one read from the socket asks for.
const READ_CHUNK: usize = 17 * 1024;
/// Plaintext encrypted per write call at most (four full records).
const WRITE_CHUNK: usize = 64 * 1024;
/// Bytes a record adds to its plaintext, at most (header, inner type, tag; TLS 1.2's
/// explicit nonce).
const RECORD_OVERHEAD: usize = HEADER + 1 + 16 + 8;
/// The thread's scratch buffer: one read, or one write's records (with room for a
/// KeyUpdate that rustls puts in front of them).
const SCRATCH_LEN: usize = WRITE_CHUNK + 4 * RECORD_OVERHEAD + 1024;

thread_local! {
    /// One buffer per thread for the bytes of one read or one write, so that a session
    /// keeps between calls only what the socket did not take or a record not yet whole.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` with the thread's scratch buffer (a fresh one if it is somehow in use).
fn with_scratch<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => {
            if s.len() < SCRATCH_LEN {
                s.resize(SCRATCH_LEN, 0);
            }
            f(&mut s)
        }
        Err(_) => f(&mut vec![0; SCRATCH_LEN]),
    })
}

fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// What to encrypt when rustls lets us write.
#[derive(Clone, Copy)]
enum Emit<'a> {
    Nothing,
    Data(&'a [u8]),
    CloseNotify,
}

/// Where processing stopped.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    /// Everything received so far is processed and we may write.
    Writable,
    /// The handshake waits for more bytes from the peer.
    NeedInput,
    /// Both sides sent `close_notify`.
    Closed,
}

/// What one [`TlsSession::process`] did.
struct Done {
    progress: Progress,
    /// Bytes of `incoming` consumed (the rest is a partial record).
    used: usize,
    /// Decrypted bytes put in `out`.
    got: usize,
    /// Encrypted bytes put in `seal`.
    sealed: usize,
}

/// The TLS state of one server connection and the bytes in flight through it.
pub struct TlsSession {
    conn: UnbufferedServerConnection,
    /// Received, not yet processed: a partial record (or handshake message).
    rx: Vec<u8>,
    /// Decrypted, not yet read.
    plain: Vec<u8>,
    plain_at: usize,
    /// Encrypted, not yet on the socket.
    tx: Vec<u8>,
    tx_at: usize,
    /// The peer sent `close_notify`.
    peer_closed: bool,
    /// The socket reached end of file.
    eof: bool,
    /// Our `close_notify` is queued.
    close_sent: bool,
}

impl TlsSession {
    fn new(config: Arc<ServerConfig>, rx: Vec<u8>) -> io::Result<TlsSession> {
        Ok(TlsSession {
            conn: UnbufferedServerConnection::new(config).map_err(invalid)?,
            rx,
            plain: Vec::new(),
            plain_at: 0,
            tx: Vec::new(),
            tx_at: 0,
            peer_closed: false,
            eof: false,
            close_sent: false,
        })
    }

    /// Let rustls work through `incoming` until it needs input or lets us write; then
    /// encrypt `emit` into `seal`. Decrypted data goes to `out` first, the rest to
    /// `plain`; what rustls sends on its own (handshake, alerts, KeyUpdate) to `tx`.
    fn process(
        &mut self,
        incoming: &mut [u8],
        emit: Emit<'_>,
        out: &mut [u8],
        seal: &mut [u8],
    ) -> io::Result<Done> {
        let (mut used, mut got) = (0, 0);
        loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut incoming[used..]);
            let step = match state {
                Err(e) => Err(invalid(e)),
                Ok(ConnectionState::ReadTraffic(mut rt)) => {
                    let mut r = Ok(None);
                    while let Some(rec) = rt.next_record() {
                        match rec {
                            Ok(rec) => {
                                let p = rec.payload;
                                let n = p.len().min(out.len() - got);
                                out[got..got + n].copy_from_slice(&p[..n]);
                                got += n;
                                self.plain.extend_from_slice(&p[n..]);
                            }
                            Err(e) => {
                                r = Err(invalid(e));
                                break;
                            }
                        }
                    }
                    r
                }
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    let start = self.tx.len();
                    let mut need = 512;
                    loop {
                        self.tx.resize(start + need, 0);
                        match e.encode(&mut self.tx[start..]) {
                            Ok(n) => {
                                self.tx.truncate(start + n);
                                break Ok(None);
                            }
                            Err(EncodeError::InsufficientSize(InsufficientSizeError {
                                required_size,
                            })) if required_size > need => need = required_size,
                            Err(e) => {
                                self.tx.truncate(start);
                                break Err(invalid(e.to_string()));
                            }
                        }
                    }
                }
                // What was encoded is in `tx`, which goes out in order before anything
                // encoded later: as far as rustls is concerned it is sent.
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    t.done();
                    Ok(None)
                }
                Ok(ConnectionState::BlockedHandshake) => Ok(Some((Progress::NeedInput, 0))),
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Ok(None)
                }
                Ok(ConnectionState::Closed) => {
                    self.peer_closed = true;
                    Ok(Some((Progress::Closed, 0)))
                }
                Ok(ConnectionState::WriteTraffic(mut wt)) => {
                    let r = match emit {
                        Emit::Nothing => Ok(0),
                        Emit::Data(data) => wt.encrypt(data, seal),
                        Emit::CloseNotify => wt.queue_close_notify(seal),
                    };
                    r.map(|n| Some((Progress::Writable, n)))
                        .map_err(|e: EncryptError| invalid(e.to_string()))
                }
                Ok(_) => Err(invalid("unexpected TLS state (early data is off)")),
            };
            used += discard;
            match step {
                Ok(None) => {}
                Ok(Some((progress, sealed))) => {
                    return Ok(Done {
                        progress,
                        used,
                        got,
                        sealed,
                    })
                }
                Err(e) => {
                    self.queue_alert();
                    return Err(e);
                }
            }
        }
    }

    /// [`Self::process`] over `rx`, dropping what it consumed.
    fn process_rx(&mut self, emit: Emit<'_>, out: &mut [u8], seal: &mut [u8]) -> io::Result<Done> {
        let mut rx = std::mem::take(&mut self.rx);
        let r = self.process(&mut rx, emit, out, seal);
        if let Ok(d) = &r {
            rx.drain(..d.used);
        }
        self.rx = rx;
        r
    }

    /// After an error rustls may hold an alert for the peer: put it in `tx` (best effort;
    /// the caller flushes and closes).
    fn queue_alert(&mut self) {
        for _ in 0..4 {
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
            match state {
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    let start = self.tx.len();
                    self.tx.resize(start + 64, 0);
                    match e.encode(&mut self.tx[start..]) {
                        Ok(n) => self.tx.truncate(start + n),
                        Err(_) => {
                            self.tx.truncate(start);
                            return;
                        }
                    }
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                _ => return,
            }
        }
    }

    /// After a protocol error: send rustls' alert if the socket takes it now.
    fn flush_alert(&mut self, t: &TcpStream) {
        let _ = self.flush(t);
    }

    /// One non-blocking read from `t` appended to `rx` (which holds a partial record):
    /// `Ok(0)` is end of file.
    fn fill(&mut self, t: &TcpStream) -> io::Result<usize> {
        if self.rx.len() >= MAX_RECORD {
            // rustls takes any record up to this size as soon as it is complete.
            return Err(invalid("TLS record larger than allowed"));
        }
        let start = self.rx.len();
        self.rx.resize(start + READ_CHUNK, 0);
        let r = super::read_now(t, &mut self.rx[start..]);
        self.rx.truncate(start + *r.as_ref().unwrap_or(&0));
        r
    }

    /// Free the buffers that hold nothing (or far more room than they hold).
    fn trim(&mut self) {
        if self.rx.is_empty() {
            self.rx = Vec::new();
        } else if self.rx.capacity() > self.rx.len() + 1024 {
            self.rx.shrink_to_fit();
        }
    }

    /// Read what is available now, without waiting.
    pub fn read(&mut self, t: &TcpStream, buf: &mut [u8]) -> io::Result<ReadOutcome> {
        let r = self.read_inner(t, buf);
        match &r {
            Ok(ReadOutcome::Data(_)) | Ok(ReadOutcome::WouldBlock) | Ok(ReadOutcome::Eof) => {
                // The caller may not read again until the peer sends more, or ever.
                self.trim()
            }
            Err(_) => {
                self.flush_alert(t);
                self.rx = Vec::new();
            }
        }
        r
    }

    fn read_inner(&mut self, t: &TcpStream, buf: &mut [u8]) -> io::Result<ReadOutcome> {
        if buf.is_empty() {
            return Ok(ReadOutcome::Data(0));
        }
        loop {
            if self.plain_at < self.plain.len() {
                let n = (self.plain.len() - self.plain_at).min(buf.len());
                buf[..n].copy_from_slice(&self.plain[self.plain_at..self.plain_at + n]);
                self.plain_at += n;
                if self.plain_at == self.plain.len() {
                    self.plain = Vec::new();
                    self.plain_at = 0;
                }
                return Ok(ReadOutcome::Data(n));
            }
            let d = self.process_rx(Emit::Nothing, buf, &mut [])?;
            if d.got > 0 {
                return Ok(ReadOutcome::Data(d.got));
            }
            if !self.plain.is_empty() {
                continue;
            }
            if self.peer_closed || self.eof || d.progress == Progress::Closed {
                return Ok(ReadOutcome::Eof);
            }
            // Whatever processing queued (an answer to a KeyUpdate).
            self.flush(t)?;
            if !self.rx.is_empty() {
                // The rest of a partial record.
                match self.fill(t) {
                    Ok(0) => self.eof = true,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Ok(ReadOutcome::WouldBlock)
                    }
                    Err(e) => return Err(e),
                }
                continue;
            }
            // The usual case: whole records, read and decrypted in the thread's scratch;
            // only a partial record at the end is kept.
            let n = with_scratch(|s| -> io::Result<Option<usize>> {
                let n = match super::read_now(t, &mut s[..READ_CHUNK]) {
                    Ok(0) => return Ok(None),
                    Ok(n) => n,
                    Err(e) => return Err(e),
                };
                let d = self.process(&mut s[..n], Emit::Nothing, buf, &mut [])?;
                self.rx.extend_from_slice(&s[d.used..n]);
                Ok(Some(d.got))
            });
            match n {
                Ok(None) => self.eof = true,
                Ok(Some(got)) if got > 0 => return Ok(ReadOutcome::Data(got)),
                Ok(Some(_)) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(ReadOutcome::WouldBlock)
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Encrypt what the socket can take now; returns how much of `data` was consumed
    /// (nothing while earlier records still wait for the socket).
    pub fn write(&mut self, t: &TcpStream, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() || !self.flush(t)? {
            return Ok(0);
        }
        if self.close_sent {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let n = data.len().min(WRITE_CHUNK);
        with_scratch(|s| {
            let d = match self.process_rx(Emit::Data(&data[..n]), &mut [], s) {
                Ok(d) => d,
                Err(e) => {
                    self.flush_alert(t);
                    return Err(e);
                }
            };
            if d.progress != Progress::Writable {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            // Records rustls queued on its own (a KeyUpdate) go first.
            let mut from = 0;
            if self.tx.is_empty() {
                from = match t.try_write(&s[..d.sealed]) {
                    Ok(w) => w,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(e) => return Err(e),
                };
            }
            self.tx.extend_from_slice(&s[from..d.sealed]);
            Ok(())
        })?;
        self.flush(t)?;
        Ok(n)
    }

    /// Push encrypted bytes to the socket. True when none are left.
    pub fn flush(&mut self, t: &TcpStream) -> io::Result<bool> {
        while self.tx_at < self.tx.len() {
            match t.try_write(&self.tx[self.tx_at..]) {
                Ok(n) => self.tx_at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        if self.tx.capacity() > 0 {
            self.tx = Vec::new();
            self.tx_at = 0;
        }
        Ok(true)
    }

    /// Encrypted bytes wait for the socket.
    pub fn has_pending_output(&self) -> bool {
        self.tx_at < self.tx.len()
    }

    /// Something can be read without the socket waking us: decrypted bytes, a complete
    /// record not yet processed, or the end.
    pub fn has_buffered_input(&self) -> bool {
        if self.plain_at < self.plain.len() || self.peer_closed || self.eof {
            return true;
        }
        match self.rx.get(..HEADER) {
            Some(h) => self.rx.len() >= HEADER + usize::from(u16::from_be_bytes([h[3], h[4]])),
            None => false,
        }
    }

    /// Queue our `close_notify` (once) and push it out as far as the socket takes it.
    pub fn close_notify(&mut self, t: &TcpStream) {
        if !self.close_sent {
            self.close_sent = true;
            let mut seal = [0u8; 128];
            match self.process_rx(Emit::CloseNotify, &mut [], &mut seal) {
                Ok(d) => self.tx.extend_from_slice(&seal[..d.sealed]),
                Err(_) => return,
            }
        }
        let _ = self.flush(t);
    }

    /// The peer's end of the handshake is not in yet (TLS 1.3 lets a server write after
    /// its own Finished, before the client's arrives).
    fn handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    type Client = tokio_rustls::client::TlsStream<TcpStream>;

    async fn within<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(20), f)
            .await
            .expect("bounded wait")
    }

    /// A server session (after its handshake) and a rustls client connected to it over
    /// loopback, the client limited to `versions`.
    async fn pair(versions: &[&'static rustls::SupportedProtocolVersion]) -> (TlsStream, Client) {
        pair_fragmented(versions, None).await
    }

    /// [`pair`], the client cutting its records to `fragment` bytes of plaintext.
    async fn pair_fragmented(
        versions: &[&'static rustls::SupportedProtocolVersion],
        fragment: Option<usize>,
    ) -> (TlsStream, Client) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let der = ck.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::try_from(ck.key_pair.serialize_der()).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.max_fragment_size = fragment;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let connect = async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(name, tcp)
                .await
                .unwrap()
        };
        let accept = async move {
            let (tcp, _) = l.accept().await.unwrap();
            let hello = read_client_hello(&tcp).await.unwrap();
            handshake(tcp, Arc::new(server), hello).await.unwrap()
        };
        within(async { tokio::join!(accept, connect) }).await
    }

    /// Read until the socket has nothing more: what the session holds at rest.
    fn settle(s: &mut TlsStream) {
        let mut buf = [0u8; 64];
        assert_eq!(
            s.s.read(&s.tcp, &mut buf).unwrap(),
            ReadOutcome::WouldBlock,
            "nothing left to read"
        );
    }

    fn held(s: &TlsStream) -> (usize, usize, usize) {
        (s.s.rx.capacity(), s.s.plain.capacity(), s.s.tx.capacity())
    }

    /// `data` encrypted by the client's rustls, as the bytes it would put on the wire.
    fn sealed(c: &mut Client, data: &[u8]) -> Vec<u8> {
        let conn = c.get_mut().1;
        conn.writer().write_all(data).unwrap();
        let mut wire = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut wire).unwrap();
        }
        wire
    }

    #[tokio::test]
    async fn an_idle_session_holds_no_buffer_after_traffic_both_ways() {
        let (mut s, mut c) = pair(rustls::ALL_VERSIONS).await;
        assert_eq!(held(&s), (0, 0, 0), "after the handshake");
        let up: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let down: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        within(c.write_all(&up)).await.unwrap();
        let mut got = vec![0u8; up.len()];
        within(s.read_exact(&mut got)).await.unwrap();
        assert!(got == up);
        let (mut cr, mut cw) = tokio::io::split(c);
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 100_000];
            cr.read_exact(&mut got).await.unwrap();
            got
        });
        within(s.write_all(&down)).await.unwrap();
        within(s.flush()).await.unwrap();
        assert!(within(reader).await.unwrap() == down);
        settle(&mut s);
        assert_eq!(held(&s), (0, 0, 0), "an idle session holds no buffer");
        cw.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_client_hello_and_data_cut_into_tiny_records_go_through() {
        // 32 bytes of plaintext per record: the ClientHello spans many records (only the
        // first is read before the handshake cap), and one read brings dozens of records.
        for versions in [
            &[&rustls::version::TLS13][..],
            &[&rustls::version::TLS12][..],
        ] {
            let (mut s, mut c) = pair_fragmented(versions, Some(32)).await;
            let up: Vec<u8> = (0..20_000u32).map(|i| (i * 3) as u8).collect();
            within(c.write_all(&up)).await.unwrap();
            within(c.flush()).await.unwrap();
            let mut got = vec![0u8; up.len()];
            within(s.read_exact(&mut got)).await.unwrap();
            assert!(got == up);
            settle(&mut s);
            assert_eq!(held(&s), (0, 0, 0));
        }
    }

    #[tokio::test]
    async fn key_updates_from_the_client_are_followed_and_answered() {
        let (mut s, mut c) = pair(&[&rustls::version::TLS13]).await;
        for round in 0..3u8 {
            // rustls asks for an update back (update_requested): our next record must
            // come under new keys, after our own KeyUpdate.
            c.get_mut().1.refresh_traffic_keys().unwrap();
            let msg = [round; 3000];
            within(c.write_all(&msg)).await.unwrap();
            within(c.flush()).await.unwrap();
            let mut got = [0u8; 3000];
            within(s.read_exact(&mut got)).await.unwrap();
            assert_eq!(got, msg);
            within(s.write_all(&[round + 100; 500])).await.unwrap();
            within(s.flush()).await.unwrap();
            let mut back = [0u8; 500];
            within(c.read_exact(&mut back)).await.unwrap();
            assert_eq!(back, [round + 100; 500]);
        }
        settle(&mut s);
        assert_eq!(held(&s), (0, 0, 0));
    }

    #[tokio::test]
    async fn a_partial_record_holds_only_its_own_bytes_until_the_rest_comes() {
        let (mut s, mut c) = pair(rustls::ALL_VERSIONS).await;
        let msg = vec![9u8; 10_000];
        let wire = sealed(&mut c, &msg);
        let half = wire.len() / 2;
        within(c.get_mut().0.write_all(&wire[..half]))
            .await
            .unwrap();
        // Wait until the first half is in, then read what there is: nothing yet.
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            within(s.tcp.readable()).await.unwrap();
            assert_eq!(s.s.read(&s.tcp, &mut buf).unwrap(), ReadOutcome::WouldBlock);
            if s.s.rx.len() == half {
                break;
            }
        }
        assert!(
            s.s.rx.capacity() <= half + 1024,
            "a stalled partial record holds {} bytes of room for {half}",
            s.s.rx.capacity()
        );
        assert!(!s.s.has_buffered_input());
        within(c.get_mut().0.write_all(&wire[half..]))
            .await
            .unwrap();
        let mut got = vec![0u8; msg.len()];
        within(s.read_exact(&mut got)).await.unwrap();
        assert!(got == msg);
        settle(&mut s);
        assert_eq!(held(&s), (0, 0, 0));
    }

    #[tokio::test]
    async fn a_forged_record_is_refused_with_an_alert() {
        let (mut s, mut c) = pair(rustls::ALL_VERSIONS).await;
        let mut wire = sealed(&mut c, b"hello");
        let last = wire.len() - 1;
        wire[last] ^= 1;
        within(c.get_mut().0.write_all(&wire)).await.unwrap();
        let mut buf = [0u8; 64];
        let e = within(s.read(&mut buf)).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        // The client hears why.
        let e = within(c.read(&mut buf)).await.unwrap_err();
        assert!(e.to_string().contains("BadRecordMac"), "{e}");
    }

    #[tokio::test]
    async fn a_record_announcing_more_than_tls_allows_is_refused_at_its_header() {
        let (mut s, mut c) = pair(rustls::ALL_VERSIONS).await;
        let mut wire = vec![23, 3, 3, 0xff, 0xff];
        wire.extend_from_slice(&[0u8; 4096]);
        within(c.get_mut().0.write_all(&wire)).await.unwrap();
        let mut buf = [0u8; 64];
        let e = within(s.read(&mut buf)).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert!(s.s.rx.len() <= wire.len());
    }

    #[tokio::test]
    async fn close_notify_ends_each_direction_cleanly() {
        let (mut s, mut c) = pair(rustls::ALL_VERSIONS).await;
        within(c.write_all(b"last words")).await.unwrap();
        within(c.shutdown()).await.unwrap();
        let mut got = Vec::new();
        within(s.read_to_end(&mut got)).await.unwrap();
        assert_eq!(got, b"last words");
        within(s.write_all(b"reply")).await.unwrap();
        within(s.shutdown()).await.unwrap();
        let mut back = Vec::new();
        // tokio-rustls reports a missing close_notify as an error: this must be clean.
        within(c.read_to_end(&mut back)).await.unwrap();
        assert_eq!(back, b"reply");
    }

    #[tokio::test]
    async fn only_a_client_hello_is_taken_as_the_start_of_a_handshake() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        for (first, why) in [
            (&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], "plain HTTP"),
            (&[22, 3, 1, 0, 4, 2, 0, 0, 0][..], "a ServerHello"),
            (&[21, 3, 3, 0, 2, 2, 40][..], "an alert"),
            (&[22, 3, 1, 0x50, 0x00, 1][..], "a record over 16 KiB"),
        ] {
            let mut c = TcpStream::connect(addr).await.unwrap();
            let (t, _) = l.accept().await.unwrap();
            c.write_all(first).await.unwrap();
            let e = within(read_client_hello(&t)).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{why}: {e}");
        }
        // A ClientHello in two pieces is waited for, and returned whole.
        let mut c = TcpStream::connect(addr).await.unwrap();
        let (t, _) = l.accept().await.unwrap();
        let hello = [22, 3, 1, 0, 6, 1, 0, 0, 2, 3, 3];
        c.write_all(&hello[..7]).await.unwrap();
        let read = tokio::spawn(async move { read_client_hello(&t).await });
        c.write_all(&hello[7..]).await.unwrap();
        assert_eq!(within(read).await.unwrap().unwrap(), hello);
    }
}
