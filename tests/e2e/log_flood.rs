//! A flood of bad requests cannot flood the log: a trusted balancer's broken
//! `X-Forwarded-For`, 500 times as fast as one connection carries it, gives a bounded
//! number of warning lines (at most `lograte::PER_SECOND` per second the flood lasted, plus
//! one window), every dropped line counted in `herdgate_log_suppressed_total`, and an
//! honest client beside it is served.

use crate::support::http1::http_get;
use crate::support::metrics::metric;
use crate::support::net::{free_addr, tcp_from};
use crate::support::nodes::HttpNode;
use crate::support::process::Herdgate;
use crate::support::within;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FLOOD: usize = 500;
const WARNING: &str = "the peer stands for the client";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_requests_writes_a_bounded_number_of_warnings() {
    let web = HttpNode::start("w1").await;
    let (listen, admin) = (free_addr(), free_addr());
    let text = format!(
        "[admin]\nbind = \"{admin}\"\n\n\
         [[listener]]\nname = \"edge\"\nbind = \"{listen}\"\ntrusted_proxies = [\"127.0.0.3\"]\n\n\
         [[route]]\npool = \"web\"\n\n[[pool]]\nname = \"web\"\n\
         [[pool.node]]\nname = \"w1\"\naddr = \"{}\"\n",
        web.addr
    );
    let h = Herdgate::start(&text).await;

    let started = std::time::Instant::now();
    let mut tcp = tcp_from(Some("127.0.0.3".parse().unwrap()), listen)
        .await
        .unwrap();
    let mut flood = Vec::new();
    for i in 0..FLOOD {
        let close = if i + 1 == FLOOD {
            "close"
        } else {
            "keep-alive"
        };
        flood.extend_from_slice(
            format!(
                "GET /{i} HTTP/1.1\r\nHost: shop\r\nX-Forwarded-For: junk-{i}\r\n\
                 Connection: {close}\r\n\r\n"
            )
            .as_bytes(),
        );
    }
    let mut answers = Vec::new();
    let (mut rd, mut wr) = tcp.split();
    let ((), read) = tokio::join!(
        async { within(wr.write_all(&flood)).await.unwrap() },
        within(rd.read_to_end(&mut answers))
    );
    read.unwrap();
    let elapsed = started.elapsed();
    let served = String::from_utf8_lossy(&answers)
        .matches("HTTP/1.1 200")
        .count();
    assert_eq!(served, FLOOD, "every request still served");

    // An honest client beside it.
    let (status, body) = http_get(listen, "/hello").await;
    assert_eq!((status, body.as_str()), (200, "w1"));

    let (_, metrics) = http_get(admin, "/metrics").await;
    let log = h.log();
    let written = log.lines().filter(|l| l.contains(WARNING)).count();
    let suppressed = metric(&metrics, "herdgate_log_suppressed_total", &[]) as usize;
    let ignored = metric(&metrics, "herdgate_forwarded_for_ignored_total", &[]) as usize;
    assert_eq!(ignored, FLOOD, "each bad list counted");
    assert_eq!(
        written + suppressed,
        FLOOD,
        "every line written or counted:\n{log}"
    );
    let windows = elapsed.as_secs() as usize + 2;
    assert!(
        written <= 10 * windows,
        "{written} lines in {elapsed:?} (at most 10 a second)"
    );
    assert!(
        suppressed > 0,
        "a flood of {FLOOD} in {elapsed:?} was not limited"
    );
    // What was reported as suppressed was counted, and never more.
    let reported: usize = log
        .lines()
        .filter_map(|l| {
            l.split("suppressed ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    assert!(reported <= suppressed, "{reported} > {suppressed}");
}
