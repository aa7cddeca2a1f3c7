//! The raw WebSocket client: a handshake and 64-byte echo round trips, nothing buffered
//! while idle (so the client side of 9,000 idle connections stays small).

use super::{step, Result};
use rustls::pki_types::ServerName;
use socket2::SockRef;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type Conn = Box<dyn Io>;

#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Option<tokio_rustls::TlsConnector>,
}

pub struct Opened {
    pub conn: Conn,
    pub resumed: bool,
}

pub const REQUEST: &[u8] = b"GET /bench HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Connect, (TLS), upgrade; the 101 is checked. With `rst_on_drop` the socket closes with
/// a RST when dropped (SO_LINGER 0): the idle bench tears 9,000 down at once that way.
pub async fn open(t: &Target, rst_on_drop: bool) -> Result<Opened> {
    let tcp = TcpStream::connect(t.addr).await?;
    tcp.set_nodelay(true)?;
    if rst_on_drop {
        SockRef::from(&tcp).set_linger(Some(Duration::ZERO))?;
    }
    let (mut conn, resumed): (Conn, bool) = match &t.tls {
        None => (Box::new(tcp), false),
        Some(c) => {
            let name = ServerName::try_from("localhost")?;
            let s = c.connect(name, tcp).await?;
            let resumed = s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            (Box::new(s), resumed)
        }
    };
    conn.write_all(REQUEST).await?;
    let mut head = [0u8; 1024];
    let mut n = 0;
    loop {
        let k = conn.read(&mut head[n..]).await?;
        if k == 0 {
            return Err("connection closed before the 101".into());
        }
        n += k;
        if head[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        if n == head.len() {
            return Err("response head too long".into());
        }
    }
    if !head.starts_with(b"HTTP/1.1 101 ") {
        let line = String::from_utf8_lossy(&head[..n]);
        let line = line.lines().next().unwrap_or("");
        return Err(format!("expected 101, got {line:?}").into());
    }
    Ok(Opened { conn, resumed })
}

pub const PAYLOAD: usize = 64;

/// One echo round trip of a 64-byte binary message.
pub async fn echo_once(conn: &mut Conn) -> Result<()> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = [0u8; 6 + PAYLOAD];
    frame[0] = 0x82;
    frame[1] = 0x80 | PAYLOAD as u8;
    frame[2..6].copy_from_slice(&mask);
    for i in 0..PAYLOAD {
        frame[6 + i] = (i as u8) ^ mask[i % 4];
    }
    conn.write_all(&frame).await?;
    let mut back = [0u8; 2 + PAYLOAD];
    conn.read_exact(&mut back).await?;
    if back[0] != 0x82 || back[1] != PAYLOAD as u8 || (0..PAYLOAD).any(|i| back[2 + i] != i as u8) {
        return Err("echo came back wrong".into());
    }
    Ok(())
}

/// The closing handshake as RFC 6455 §7.1.1 wants it: our (masked) Close 1000, the peer's
/// Close back, then the server closes TCP first and we see EOF. So TIME_WAIT ends up on
/// the server's accepted sockets and no side burns ephemeral ports.
pub async fn close(mut conn: Conn) -> Result<()> {
    let mask = [0x5a, 0x11, 0xc3, 0x7e];
    let code = 1000u16.to_be_bytes();
    let frame = [
        0x88,
        0x82,
        mask[0],
        mask[1],
        mask[2],
        mask[3],
        code[0] ^ mask[0],
        code[1] ^ mask[1],
    ];
    conn.write_all(&frame).await?;
    let mut buf = [0u8; 64];
    let mut seen = 0usize;
    loop {
        match conn.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                seen += n;
                if seen > 1024 {
                    return Err("no EOF after the Close".into());
                }
            }
            // TLS peer that closed TCP without close_notify: still an end.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
    }
    if seen < 4 || buf[0] != 0x88 {
        return Err("no Close frame came back".into());
    }
    Ok(())
}

/// "TLSv1_3 TLS13_AES_256_GCM_SHA384 X25519 Full": what a WebSocket to `t` negotiated
/// (printed so that the TLS work compared is the same). The WebSocket is opened and
/// closed properly, so a TLS 1.3 ticket sent after the handshake reaches the client's
/// store and a second call shows whether resumption works.
pub async fn tls_summary(t: &Target) -> Result<String> {
    let Some(c) = &t.tls else {
        return Ok("plain".into());
    };
    let tcp = step("connect", TcpStream::connect(t.addr)).await??;
    let name = ServerName::try_from("localhost")?;
    let s = step("tls", c.connect(name, tcp)).await??;
    let conn = s.get_ref().1;
    let info = format!(
        "{:?} {:?} {:?} {:?}",
        conn.protocol_version().ok_or("no version")?,
        conn.negotiated_cipher_suite().ok_or("no suite")?.suite(),
        conn.negotiated_key_exchange_group()
            .map(|g| g.name())
            .ok_or("no group")?,
        conn.handshake_kind().ok_or("no kind")?,
    );
    let mut conn: Conn = Box::new(s);
    conn.write_all(REQUEST).await?;
    let mut head = Vec::new();
    let mut b = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = step("101", conn.read(&mut b)).await??;
        if n == 0 || head.len() > 4096 {
            return Err("no 101".into());
        }
        head.extend_from_slice(&b[..n]);
    }
    step("close", close(conn)).await??;
    Ok(info)
}
