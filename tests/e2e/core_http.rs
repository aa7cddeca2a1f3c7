//! Plain HTTP/1.1 through herdgate over real sockets: streamed bodies both ways,
//! hop-by-hop headers, X-Forwarded-*, Host, pooled backend connections, and the error
//! statuses (502, 504, 404, 400, 431) with short bodies that reveal nothing.

use crate::support::http1::{assert_no_internals, raw_request, ChanBody, Reader};
use crate::support::metrics::metric;
use crate::support::net::free_addr;
use crate::support::proxy::{basic_toml, fast_pool, parse, start, Proxy};
use crate::support::within;
use crate::support::ws::pattern;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// What the backend saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

/// A tiny hyper backend. Paths:
/// - `/echo`: the request body streamed back as the response body;
/// - `/chunked`: three chunks, no Content-Length (chunked on the wire);
/// - `/inspect`: reads the whole body, records it, answers with hop-by-hop headers;
/// - anything else: `200 ok`.
struct Backend {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Backend {
    async fn start() -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (a, s) = (accepts.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, std::convert::Infallible>(backend(req, s).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Backend {
            addr,
            accepts,
            seen,
        }
    }

    fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("backend saw no request")
    }
}

enum BBody {
    Echo(Incoming),
    Chan(ChanBody),
    Full(Full<Bytes>),
}

impl http_body::Body for BBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            BBody::Echo(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(Into::into),
            BBody::Chan(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(Into::into),
            BBody::Full(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }
}

async fn backend(req: Request<Incoming>, seen: Arc<Mutex<Vec<Seen>>>) -> Response<BBody> {
    let path = req.uri().path().to_string();
    let headers = req.headers().clone();
    match path.as_str() {
        "/echo" => {
            seen.lock().unwrap().push(Seen {
                path,
                headers,
                body: Vec::new(),
            });
            Response::new(BBody::Echo(req.into_body()))
        }
        "/chunked" => {
            seen.lock().unwrap().push(Seen {
                path,
                headers,
                body: Vec::new(),
            });
            let (tx, body) = ChanBody::new();
            tokio::spawn(async move {
                for c in ["alpha-", "beta-", "gamma"] {
                    if tx.send(Bytes::from_static(c.as_bytes())).await.is_err() {
                        return;
                    }
                }
            });
            Response::new(BBody::Chan(body))
        }
        "/inspect" => {
            let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
            seen.lock().unwrap().push(Seen {
                path,
                headers,
                body,
            });
            let mut r = Response::new(BBody::Full(Full::new(Bytes::from_static(b"inspected"))));
            let h = r.headers_mut();
            h.insert("connection", "X-Hop-Resp".parse().unwrap());
            h.insert("x-hop-resp", "secret".parse().unwrap());
            h.insert("keep-alive", "timeout=9".parse().unwrap());
            h.insert("proxy-connection", "keep-alive".parse().unwrap());
            h.insert("upgrade", "foo/1".parse().unwrap());
            h.insert("x-kept-resp", "yes".parse().unwrap());
            r
        }
        _ => {
            seen.lock().unwrap().push(Seen {
                path,
                headers,
                body: Vec::new(),
            });
            Response::new(BBody::Full(Full::new(Bytes::from_static(b"ok"))))
        }
    }
}

async fn proxy_to(addr: SocketAddr, extra: &str) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "{extra}\n{}{}",
        basic_toml("web"),
        fast_pool("web", &[addr])
    );
    start(parse(&toml, dir.path())).await
}

/// An HTTP/1.1 client connection (hyper) to the proxy.
async fn client<B>(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = within(TcpStream::connect(addr)).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

#[tokio::test]
async fn large_post_is_echoed_byte_exact() {
    let be = Backend::start().await;
    let proxy = proxy_to(be.addr, "").await;
    let data = pattern(4 << 20, 0x9e37_79b9);
    let mut send = client(proxy.addr("plain")).await;
    let req = Request::post("/echo")
        .header("host", "app.example")
        .body(Full::new(Bytes::from(data.clone())))
        .unwrap();
    let resp = within(send.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let got = within(resp.into_body().collect()).await.unwrap().to_bytes();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "4 MiB echo differs");
}

/// Bodies are streamed, not buffered: each request chunk must come back through the
/// proxy before the client sends the next one (a buffering proxy would stall here).
#[tokio::test]
async fn bodies_stream_both_ways_chunk_by_chunk() {
    let be = Backend::start().await;
    let proxy = proxy_to(be.addr, "").await;
    let mut send = client(proxy.addr("plain")).await;
    let (tx, body) = ChanBody::new();
    let req = Request::post("/echo")
        .header("host", "app.example")
        .body(body)
        .unwrap();
    let resp_fut = send.send_request(req);
    let first = pattern(64 * 1024, 0x9e37_79b9);
    tx.send(Bytes::from(first.clone())).await.unwrap();
    let resp = within(resp_fut).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-length").is_none());
    let mut body = resp.into_body();
    for round in 0..4u8 {
        let chunk: Vec<u8> = first.iter().map(|b| b ^ round).collect();
        if round > 0 {
            tx.send(Bytes::from(chunk.clone())).await.unwrap();
        }
        let mut got = Vec::new();
        while got.len() < chunk.len() {
            let f = within(body.frame())
                .await
                .expect("body ended early")
                .unwrap();
            if let Ok(d) = f.into_data() {
                got.extend_from_slice(&d);
            }
        }
        assert_eq!(got, chunk, "round {round}");
    }
    drop(tx);
    assert!(within(body.frame()).await.is_none(), "body must end");
}

#[tokio::test]
async fn chunked_response_and_chunked_request() {
    let be = Backend::start().await;
    let proxy = proxy_to(be.addr, "").await;
    let r = raw_request(
        proxy.addr("plain"),
        b"GET /chunked HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.chunked,
        "no length known: chunked on the wire ({:?})",
        r.headers
    );
    assert_eq!(r.text(), "alpha-beta-gamma");

    // A chunked request body arrives whole, de-chunked and re-framed by the proxy.
    let r = raw_request(
        proxy.addr("plain"),
        b"POST /inspect HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "inspected");
    assert_eq!(be.last().body, b"hello world");
}

#[tokio::test]
async fn hop_by_hop_removed_and_forwarded_headers_added() {
    let be = Backend::start().await;
    let proxy = proxy_to(be.addr, "").await;
    let req = "POST /inspect HTTP/1.1\r\n\
        Host: app.example:8080\r\n\
        Connection: keep-alive, X-Hop-Req\r\n\
        X-Hop-Req: secret\r\n\
        Keep-Alive: timeout=5\r\n\
        TE: trailers\r\n\
        Trailer: X-Trail\r\n\
        Proxy-Connection: keep-alive\r\n\
        Upgrade: h2c\r\n\
        X-Forwarded-For: 10.1.2.3\r\n\
        X-Kept: yes\r\n\
        Content-Length: 5\r\n\r\nhello";
    let tcp = within(TcpStream::connect(proxy.addr("plain")))
        .await
        .unwrap();
    let mut rd = Reader::new(tcp);
    rd.s.write_all(req.as_bytes()).await.unwrap();
    let r = within(rd.response()).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");

    let seen = be.last();
    let h = &seen.headers;
    for gone in [
        "x-hop-req",
        "keep-alive",
        "te",
        "trailer",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the backend: {h:?}");
    }
    if let Some(c) = h.get("connection") {
        let c = c.to_str().unwrap().to_ascii_lowercase();
        assert!(!c.contains("x-hop-req"), "Connection passed on: {c}");
    }
    assert_eq!(h["x-kept"], "yes");
    assert_eq!(h["host"], "app.example:8080", "Host preserved");
    // No trusted_proxies: the client's own X-Forwarded-For is replaced, not appended to
    // (tests/e2e/proxy_protocol.rs has the trusted case).
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(
        h["x-forwarded-host"]
            .to_str()
            .unwrap()
            .starts_with("app.example"),
        "{:?}",
        h["x-forwarded-host"]
    );
    assert_eq!(seen.body, b"hello");

    // Response direction.
    for gone in ["x-hop-resp", "keep-alive", "proxy-connection", "upgrade"] {
        assert!(!r.has(gone), "{gone} reached the client: {:?}", r.headers);
    }
    if let Some(c) = r.header("connection") {
        assert!(!c.to_ascii_lowercase().contains("x-hop-resp"), "{c}");
    }
    assert_eq!(r.header("x-kept-resp"), Some("yes"));
    assert_eq!(r.text(), "inspected");

    // The client connection stays usable (keep-alive), and a request without any
    // X-Forwarded-For gets just the peer.
    rd.s.write_all(b"GET /plain HTTP/1.1\r\nHost: other.example\r\n\r\n")
        .await
        .unwrap();
    let r = within(rd.response()).await.unwrap();
    assert_eq!(r.status, 200);
    let seen = be.last();
    assert_eq!(seen.path, "/plain");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["host"], "other.example");
}

#[tokio::test]
async fn backend_connections_are_pooled() {
    let be = Backend::start().await;
    let proxy = proxy_to(be.addr, "").await;
    const N: usize = 20;
    for i in 0..N {
        // A new client connection each time: any reuse is the proxy's pool.
        let r = raw_request(
            proxy.addr("plain"),
            format!("GET /n{i} HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "ok");
    }
    assert_eq!(be.seen.lock().unwrap().len(), N);
    let accepts = be.accepts.load(Ordering::SeqCst);
    assert!(
        accepts <= 3,
        "{N} sequential requests opened {accepts} backend connections"
    );
}

#[tokio::test]
async fn refused_backend_is_502() {
    // A port that was bound then closed: nothing listens there (and, outside the
    // ephemeral range, no connect of the proxy's can meet itself there).
    let dead = free_addr();
    let proxy = proxy_to(dead, "").await;
    let r = raw_request(
        proxy.addr("plain"),
        b"GET / HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_no_internals(&r);
    let m = proxy.metrics().await;
    assert!(metric(&m, "herdgate_requests_total", &["status=\"502\""]) >= 1.0);
    // A refusal is a hard passive-health failure: the node is now down, and the next
    // request finds no node (503) instead of trying it again.
    let r = raw_request(
        proxy.addr("plain"),
        b"GET / HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_no_internals(&r);

    // The same for a WebSocket upgrade (its own connect path), on a fresh proxy.
    let proxy = proxy_to(dead, "").await;
    let r = raw_request(proxy.addr("plain"), &ws_upgrade_request("app.example")).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_no_internals(&r);
}

fn ws_upgrade_request(host: &str) -> Vec<u8> {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// A listener whose accept queue is full and that never accepts: further SYNs are
/// dropped by Linux, so a connect to it hangs (the "black hole" a dead host looks like).
/// Returns the listener and the connections that filled its queue (keep both alive).
async fn black_hole() -> (socket2::Socket, SocketAddr, Vec<TcpStream>) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    // Fill the queue: once a connect does not complete, SYNs are being dropped.
    for _ in 0..16 {
        match tokio::time::timeout(
            std::time::Duration::from_millis(300),
            TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(c)) => fillers.push(c),
            Ok(Err(e)) => panic!("filling the black hole: {e}"),
            Err(_) => return (s, addr, fillers),
        }
    }
    panic!("the accept queue of a backlog-0 listener never filled");
}

#[tokio::test]
async fn connect_timeout_is_504() {
    let (_hole, addr, _fillers) = black_hole().await;
    let proxy = proxy_to(addr, "[timeouts]\nbackend_connect = \"300ms\"\n").await;
    let r = raw_request(
        proxy.addr("plain"),
        b"GET / HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 504, "{r:?}");
    assert_no_internals(&r);
    let r = raw_request(proxy.addr("plain"), &ws_upgrade_request("app.example")).await;
    assert_eq!(r.status, 504, "{r:?}");
    assert_no_internals(&r);
}

#[tokio::test]
async fn no_route_is_404() {
    let be = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n[[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\n\
         [[route]]\nhost = \"only.example\"\npool = \"web\"\n{}",
        fast_pool("web", &[be.addr])
    );
    let proxy = start(parse(&toml, dir.path())).await;
    let r = raw_request(
        proxy.addr("plain"),
        b"GET / HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 404);
    assert_no_internals(&r);
    assert!(be.seen.lock().unwrap().is_empty());
    // The routed host works (port ignored, case-insensitive).
    let r = raw_request(
        proxy.addr("plain"),
        b"GET / HTTP/1.1\r\nHost: Only.Example:80\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn malformed_requests_are_400() {
    let be = Backend::start().await;
    let proxy = proxy_to(be.addr, "").await;
    let cases: [&[u8]; 5] = [
        b"NOT A REQUEST\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header Line\r\n\r\n",
        // HTTP/1.1 without Host (RFC 9112 §3.2).
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        // Two Hosts.
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        // Both framings (request smuggling shape).
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    ];
    for c in cases {
        let r = raw_request(proxy.addr("plain"), c).await;
        assert_eq!(r.status, 400, "{:?} -> {r:?}", String::from_utf8_lossy(c));
        assert_no_internals(&r);
    }
    assert!(
        be.seen.lock().unwrap().is_empty(),
        "a malformed request reached the node"
    );
}

#[tokio::test]
async fn oversized_header_is_431() {
    let be = Backend::start().await;
    let proxy = proxy_to(be.addr, "[limits]\nmax_header_bytes = 8192\n").await;
    let mut req = String::from("GET / HTTP/1.1\r\nHost: app.example\r\n");
    for i in 0..40 {
        req.push_str(&format!("X-Filler-{i}: {}\r\n", "a".repeat(500)));
    }
    req.push_str("\r\n");
    assert!(req.len() > 20 * 1024);
    let r = raw_request(proxy.addr("plain"), req.as_bytes()).await;
    assert_eq!(r.status, 431, "{r:?}");
    assert!(r.body.len() <= 64);
    assert!(be.seen.lock().unwrap().is_empty());
    // Under the limit is fine.
    let r = raw_request(
        proxy.addr("plain"),
        format!(
            "GET / HTTP/1.1\r\nHost: app.example\r\nX-Small: {}\r\nConnection: close\r\n\r\n",
            "b".repeat(4000)
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
}
