//! herdgate's metrics: its admin endpoint's Prometheus text, read over a plain socket.

use super::{step, until, Check, Result};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The whole answer of `GET /metrics` (head included: no head line parses as a sample).
pub async fn metrics_text(admin: SocketAddr) -> Result<String> {
    let buf = step("metrics", async {
        let mut s = TcpStream::connect(admin).await?;
        // Host must name the admin listener (its DNS-rebinding defence).
        let req = format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    })
    .await??;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// One line of Prometheus text: `name{labels} value`.
pub struct Sample<'a> {
    pub name: &'a str,
    /// What stands between the braces (empty without labels).
    pub labels: &'a str,
    pub value: f64,
}

impl Sample<'_> {
    /// The value of label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .split(',')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix("=\""))
            .map(|v| v.trim_end_matches('"'))
    }
}

/// The samples of a Prometheus text (comments and lines that are no sample skipped).
pub fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            Some(Sample {
                name,
                labels: labels.trim_end_matches('}'),
                value: value.parse().ok()?,
            })
        })
}

/// Sum of a Prometheus sample over all its label sets (e.g. `herdgate_tunnels_open`).
pub async fn metric(admin: SocketAddr, name: &str) -> Result<f64> {
    let text = metrics_text(admin).await?;
    Ok(samples(&text)
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum())
}

/// Poll until `name` equals `want` (bounded).
pub async fn wait_metric(admin: SocketAddr, name: &str, want: f64, within: Duration) -> Result<()> {
    until(within, Duration::from_millis(100), async || {
        let v = metric(admin, name).await?;
        Ok(if v == want {
            Check::Done
        } else {
            Check::NotYet(format!("{name} stayed at {v}, expected {want}"))
        })
    })
    .await
}
