//! The access log (`[log] access = true`): one line per HTTP request (forwarded or answered
//! by herdgate) and one per tunnel when it ends, through `tracing` with the target
//! [`TARGET`], so that it follows `[log] format` (text, or one JSON object per line).
//!
//! A [`Note`] exists only while the access log is on: off, nothing is allocated or
//! formatted. What a client chose (host, path) is escaped when the note is made: bytes
//! outside printable ASCII, space, `"`, `\` and `=` become `\xNN` and each is cut at
//! [`MAX_FIELD`] bytes, so a text line stays one line of `key=value` words whatever the
//! client sends. The query is never logged.

use crate::backend::Node;
use crate::websocket::tunnel::Relayed;
use herdgate_core::admission::AdmitVia;
use http::Request;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// The `tracing` target of access lines (filter it with `HERDGATE_LOG`, e.g.
/// `info,herdgate::access=off`).
pub const TARGET: &str = "herdgate::access";

/// Longest host or path kept, in bytes of the request (the escaped text may be longer).
pub const MAX_FIELD: usize = 256;

/// What the access line of one request says, filled in along the pipeline.
#[derive(Debug, Clone)]
pub(crate) struct Note {
    start: Instant,
    listener: Arc<str>,
    host: String,
    path: String,
    bytes_in: Option<u64>,
    client: IpAddr,
    node: Option<Arc<Node>>,
    admission: &'static str,
    retry_after_ms: Option<u64>,
}

impl Note {
    /// A note for `req` if the access log is on (`on`), else `None` (nothing allocated).
    pub(crate) fn start<B>(
        on: bool,
        req: &Request<B>,
        listener: &Arc<str>,
        client: IpAddr,
    ) -> Option<Note> {
        if !on {
            return None;
        }
        let host = match req.headers().get(http::header::HOST) {
            Some(h) => escape(h.as_bytes()),
            None => req
                .uri()
                .authority()
                .map_or_else(|| "-".to_owned(), |a| escape(a.as_str().as_bytes())),
        };
        let bytes_in = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Some(Note {
            start: Instant::now(),
            listener: listener.clone(),
            host,
            path: escape(req.uri().path().as_bytes()),
            bytes_in,
            client,
            node: None,
            admission: "-",
            retry_after_ms: None,
        })
    }
}

/// The request's real client (after PROXY header and trusted `X-Forwarded-For`).
pub(crate) fn client(note: &mut Option<Note>, client: IpAddr) {
    if let Some(n) = note {
        n.client = client;
    }
}

/// The node the request goes to.
pub(crate) fn node(note: &mut Option<Note>, node: &Arc<Node>) {
    if let Some(n) = note {
        n.node = Some(node.clone());
    }
}

/// How admission let the request through.
pub(crate) fn admitted(note: &mut Option<Note>, via: AdmitVia) {
    if let Some(n) = note {
        n.admission = via.as_str();
    }
}

/// The node's gate turned the request away; `capped`: the client already held its cap of
/// slots on the node (it got a place in its own queue, nothing booked).
pub(crate) fn rejected(note: &mut Option<Note>, capped: bool) {
    if let (Some(n), true) = (note, capped) {
        n.admission = "slots";
    }
}

/// What an error says for the log: a rejection's kind (unless already named) and its
/// retry-after.
pub(crate) fn failed(note: &mut Option<Note>, e: &super::respond::ProxyError) {
    if let (Some(n), super::respond::ProxyError::Rejected(r)) = (note, e) {
        if n.admission == "-" {
            n.admission = admission_of(r.reason);
        }
        n.retry_after_ms = Some(r.retry_after_ms());
    }
}

/// The admission word of a rejection's reason.
fn admission_of(reason: &str) -> &'static str {
    match reason {
        "node_busy" => "rejected",
        "overloaded" => "overflow",
        "client_limit" => "limited",
        "client_tunnels" => "capped",
        _ => "rejected",
    }
}

/// The line of one HTTP request, answered with `status` and a body of `bytes_out` bytes
/// (when known).
pub(crate) fn request(note: Option<Note>, status: u16, bytes_out: Option<u64>) {
    if let Some(n) = note {
        emit(&n, "http", status, (n.bytes_in, bytes_out), None, None);
    }
}

/// The line of one tunnel, when it has ended. Boxed: an idle tunnel's task holds one
/// pointer for it, and nothing more when the access log is off.
pub(crate) fn tunnel(note: Option<Box<Note>>, r: &Relayed) {
    if let Some(n) = note {
        let end = format!("{:?}", r.end).to_ascii_lowercase();
        emit(
            &n,
            "tunnel",
            101,
            (Some(r.bytes.0), Some(r.bytes.1)),
            r.close,
            Some(&end),
        );
    }
}

/// `-` for a value that is not there.
struct Opt<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for Opt<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

fn emit(
    n: &Note,
    kind: &'static str,
    status: u16,
    bytes: (Option<u64>, Option<u64>),
    close: Option<u16>,
    end: Option<&str>,
) {
    let node = n
        .node
        .as_ref()
        .map(|x| format!("{}/{}", x.key.pool, x.key.name));
    let duration_ms = (n.start.elapsed().as_micros() as f64) / 1000.0;
    tracing::info!(
        target: TARGET,
        listener = %n.listener,
        client = %n.client,
        host = %n.host,
        path = %n.path,
        node = %Opt(node),
        status,
        admission = %n.admission,
        retry_after_ms = %Opt(n.retry_after_ms),
        duration_ms,
        bytes_in = %Opt(bytes.0),
        bytes_out = %Opt(bytes.1),
        close = %Opt(close),
        end = %Opt(end),
        "{kind}"
    );
}

/// `bytes` as one word: printable ASCII kept, anything else (controls, space, non-ASCII,
/// `"`, `\`, `=`) as `\xNN`; cut at [`MAX_FIELD`] bytes with a trailing `...`.
pub fn escape(bytes: &[u8]) -> String {
    let cut = bytes.len() > MAX_FIELD;
    let bytes = &bytes[..bytes.len().min(MAX_FIELD)];
    let mut out = String::with_capacity(bytes.len() + 3);
    for &b in bytes {
        if b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b'=') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    if cut {
        out.push_str("...");
    }
    if out.is_empty() {
        out.push('-');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_field_stays_one_printable_word() {
        let junk = b"a b\"c\\d=e\n\r\x1b[31m\x00\xff/ok";
        let e = escape(junk);
        assert_eq!(
            e,
            "a\\x20b\\x22c\\x5cd\\x3de\\x0a\\x0d\\x1b[31m\\x00\\xff/ok"
        );
        assert!(e.bytes().all(|b| b.is_ascii_graphic()), "{e}");
        assert_eq!(escape(b""), "-");
        assert_eq!(escape(b"/chat/room-1"), "/chat/room-1");
    }

    #[test]
    fn a_long_field_is_cut() {
        let long = vec![b'a'; MAX_FIELD * 4];
        let e = escape(&long);
        assert_eq!(e.len(), MAX_FIELD + 3);
        assert!(e.ends_with("..."));
    }

    #[test]
    fn rejections_are_named() {
        assert_eq!(admission_of("node_busy"), "rejected");
        assert_eq!(admission_of("overloaded"), "overflow");
        assert_eq!(admission_of("client_limit"), "limited");
        assert_eq!(admission_of("client_tunnels"), "capped");
    }

    #[test]
    fn off_means_no_note() {
        let req = Request::builder().uri("/x?q=1").body(()).unwrap();
        let l: Arc<str> = "l".into();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(Note::start(false, &req, &l, ip).is_none());
        let n = Note::start(true, &req, &l, ip).unwrap();
        assert_eq!((n.path.as_str(), n.host.as_str()), ("/x", "-"));
    }
}
