//! A ticket steers routing to its node only inside its window: a genuine ticket whose
//! window has passed (or not yet opened) does not pin its bearer to the ticket's node; the
//! request goes where its sticky key goes, and the bad ticket is counted.

use crate::support::metrics::metric;
use crate::support::nodes::{land_ws, Fleet};
use crate::support::proxy::{key_for, parse, start};
use herdgate_core::admission::{node_id, TicketKey, TicketSigner};
use herdgate_wire::TICKET_HEADER;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn unix_nanos(offset_back: Duration, ahead: Duration) -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    u64::try_from((now + ahead - offset_back).as_nanos()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_steers_only_inside_its_window() {
    let fleet = Fleet::start(&["n1", "n2"]).await;
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("ticket.key");
    std::fs::write(&key_path, "11".repeat(32)).unwrap();
    let text = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n[tickets]\nkey_file = \"{}\"\nclaim_window = \"2s\"\n\
         [[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\n\
         [[route]]\npool = \"p\"\nsticky = {{ header = \"x-session\" }}\n\
         [[pool]]\nname = \"p\"\nadmit_rate = 100000.0\nadmit_burst = 100000\n{}",
        key_path.display(),
        fleet.nodes_toml(&fleet.all())
    );
    let proxy = start(parse(&text, dir.path())).await;
    let addr = proxy.addr("plain");
    let h = &proxy.handle;
    let (n1, n2) = (fleet.index("n1"), fleet.index("n2"));
    let key = key_for(h, "p", "n1", "tk");
    assert_eq!(land_ws(&fleet, addr, "/", &[("x-session", &key)]).await, n1);

    // Another instance sharing the key signs tickets for n2 (a foreign instance id).
    let signer = TicketSigner::new(TicketKey::from_file(&key_path).unwrap(), 0xabc);
    let n2_id = node_id("p", "n2");
    let hour = Duration::from_secs(3600);
    let stale = signer.sign(n2_id, unix_nanos(hour, Duration::ZERO), 1);
    let early = signer.sign(n2_id, unix_nanos(Duration::ZERO, hour), 2);
    let fresh = signer.sign(n2_id, unix_nanos(Duration::ZERO, Duration::ZERO), 3);

    // The misbehaving bearers: out-of-window tickets are ignored for routing.
    for (what, t) in [("stale", &stale), ("early", &early)] {
        let got = land_ws(
            &fleet,
            addr,
            "/",
            &[("x-session", &key), (TICKET_HEADER, t)],
        )
        .await;
        assert_eq!(got, n1, "a {what} ticket must not steer to n2");
    }
    // A ticket inside its window goes to its node, whatever the key says.
    let got = land_ws(
        &fleet,
        addr,
        "/",
        &[("x-session", &key), (TICKET_HEADER, &fresh)],
    )
    .await;
    assert_eq!(got, n2, "a ticket in its window steers");

    let m = proxy.metrics().await;
    assert_eq!(
        metric(
            &m,
            "herdgate_admission_tickets_total",
            &["outcome=\"valid\""]
        ),
        1.0,
        "{m}"
    );
    // The out-of-window tickets reached n1's admission, which names them for what they
    // are not: n1's tickets.
    assert_eq!(
        metric(
            &m,
            "herdgate_admission_tickets_total",
            &["outcome=\"other_node\""]
        ),
        2.0,
        "{m}"
    );
    proxy.shutdown().await;
}
