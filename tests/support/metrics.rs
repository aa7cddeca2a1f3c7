//! The Prometheus text parser, and waiting on a metric.
//!
//! herdgate's metrics recorder is process-wide: two proxies in one process share their
//! counters. nextest runs every test in a process of its own, which is what makes exact
//! counts safe to assert.

use super::eventually;
use super::proxy::Proxy;
use std::cell::Cell;

/// The value of a sample in Prometheus text (`name{labels} value`), summed over the
/// samples of `name` whose line contains every fragment (label matchers such as
/// `node="a"`). 0 when there is none.
pub fn metric(text: &str, name: &str, fragments: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| fragments.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Wait until a metric of a running proxy (scraped from its admin endpoint) satisfies
/// `pred`; its value then.
pub async fn metric_reaches(
    proxy: &Proxy,
    name: &str,
    frags: &[&str],
    pred: impl Fn(f64) -> bool,
) -> f64 {
    let last = Cell::new(f64::NAN);
    let what = Sample {
        name,
        frags,
        last: &last,
    };
    eventually(&what, || async {
        last.set(metric(&proxy.metrics().await, name, frags));
        pred(last.get())
    })
    .await;
    last.get()
}

/// Names a sample and the value it was last seen at (in the failure message).
struct Sample<'a> {
    name: &'a str,
    frags: &'a [&'a str],
    last: &'a Cell<f64>,
}

impl std::fmt::Display for Sample<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "metric {}{:?} never reached its target (last seen: {})",
            self.name,
            self.frags,
            self.last.get()
        )
    }
}
