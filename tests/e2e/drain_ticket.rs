//! A drained client that can carry tickets gets one in its 1012 reason, and is admitted
//! when it comes back at its slot (found by scripts/browser-check.sh: the drain hint was a
//! bare promise, which only ticketless arrivals may claim, so every ticket-capable client
//! that obeyed its 1012 was refused at its slot and sent to the end of the schedule).
//! A ticketless client still gets a plain hint and is admitted through its promise.

use crate::support::client::{connect_once, Connected, Hint, HintSource, Outcome, Target};
use crate::support::metrics::metric;
use crate::support::nodes::echo_nodes;
use crate::support::proxy::{parse, start};
use crate::support::{eventually, within};
use futures_util::StreamExt;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::Message;

/// Clients 0..TICKETED announce herdgate-accept-ticket; the others do not.
const CLIENTS: usize = 6;
const TICKETED: usize = 4;

/// Node a takes every client at once; b admits 4/s (burst 1), so the drain hints come
/// from a real schedule spread over ~1.5 s and nobody gets in on a spare token.
fn config(a: SocketAddr, b: Option<SocketAddr>) -> String {
    let mut s = format!(
        r#"
[admin]
bind = "127.0.0.1:0"

[[listener]]
name = "plain"
bind = "127.0.0.1:0"

[[route]]
pool = "p"

[[pool]]
name = "p"
admit_rate = 4.0
admit_burst = 1
drain_rate = 1000.0

[[pool.node]]
name = "a"
addr = "{a}"
admit_rate = 1000000.0
admit_burst = 100000
"#
    );
    if let Some(b) = b {
        s.push_str(&format!("\n[[pool.node]]\nname = \"b\"\naddr = \"{b}\"\n"));
    }
    s
}

fn connected(o: Outcome) -> Connected {
    match o {
        Outcome::Connected(c) => c,
        Outcome::Rejected(r) => panic!("expected a connection, got {r}"),
        Outcome::Failed(e) => panic!("expected a connection, got {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_ticket_capable_clients_get_a_ticket_and_are_admitted_at_their_slot() {
    let nodes = echo_nodes(2).await;
    let dir = tempfile::tempdir().unwrap();
    // Only a at first (every client lands on it), then b joins and a is drained.
    let proxy = start(parse(&config(nodes[0].addr, None), dir.path())).await;
    let target = Arc::new(Target::new(proxy.url("plain", "/chat")));

    let mut conns = Vec::new();
    for i in 0..CLIENTS {
        conns.push(connected(
            within(connect_once(&target, None, i < TICKETED)).await,
        ));
    }
    let h = proxy.handle.clone();
    eventually("all tunnels registered", || async {
        h.tunnels() == CLIENTS
    })
    .await;
    within(h.reload(parse(
        &config(nodes[0].addr, Some(nodes[1].addr)),
        dir.path(),
    )))
    .await
    .expect("reload adding b");
    assert!(h.drain_node("p", "a"));

    let mut back = Vec::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        let frame = within(async {
            loop {
                match c.ws.next().await {
                    Some(Ok(Message::Close(f))) => break f,
                    Some(Ok(_)) => continue,
                    other => panic!("client {i}: expected a close, got {other:?}"),
                }
            }
        })
        .await
        .unwrap_or_else(|| panic!("client {i}: close without a status"));
        assert_eq!(u16::from(frame.code), 1012, "client {i}");
        let hint = Hint::from_close_frame(&frame)
            .unwrap_or_else(|| panic!("client {i}: 1012 reason not a hint: {:?}", frame.reason));
        if i < TICKETED {
            assert_eq!(hint.source, HintSource::TicketMs, "client {i}: {frame:?}");
            assert!(hint.ticket.is_some(), "client {i}: {frame:?}");
        } else {
            assert_eq!(
                hint.source,
                HintSource::CloseReason,
                "client {i}: {frame:?}"
            );
        }
        // Obey the hint, as the reference client and the README snippet do: waiting for it
        // is the behaviour under test, not a synchronisation.
        let target = target.clone();
        back.push(tokio::spawn(async move {
            tokio::time::sleep(hint.retry_after).await;
            let ticket = hint.ticket.as_deref();
            (i, connect_once(&target, ticket, i < TICKETED).await)
        }));
        drop(c);
    }
    for t in back {
        let (i, outcome) = within(t).await.unwrap();
        match outcome {
            Outcome::Connected(_) => {}
            Outcome::Rejected(r) => panic!("client {i} refused at its drain slot: {r}"),
            Outcome::Failed(e) => panic!("client {i}: {e}"),
        }
    }

    let m = proxy.metrics().await;
    let via = |how: &str| {
        metric(
            &m,
            "herdgate_admission_admitted_total",
            &["node=\"b\"", how],
        )
    };
    assert_eq!(via("via=\"ticket\""), TICKETED as f64, "{m}");
    assert_eq!(via("via=\"promise\""), (CLIENTS - TICKETED) as f64, "{m}");
}
