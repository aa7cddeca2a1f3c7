//! One summary format for every storm, simulated or measured over sockets: the numbers,
//! the targets with PASS/FAIL, a chart for the terminal and an SVG for the README.
//!
//! Input is a [`StormRun`]: when each surviving node accepted a connection and when each
//! displaced client got back, both in nanoseconds since the storm began (the kill). The
//! simulator fills it from its virtual clock, the socket bench from the echo nodes' accept
//! timestamps and the clients' own clocks.

use std::fmt::Write as _;
use std::time::Duration;

use herdgate_core::admission::{Nanos, NANOS_PER_SEC};

/// Width of one bar of the charts: accepts are counted per 100 ms.
pub const BIN: Duration = Duration::from_millis(100);
/// Target: peak accepts per surviving node in any 1 s window, relative to admit_rate.
pub const PEAK_FACTOR: f64 = 1.05;
/// Target: time until 100% are back, relative to the ideal N / Σ rate.
pub const TIME_FACTOR: f64 = 1.15;
/// Target: mean retries per turned-away client, for clients presenting tickets.
pub const RETRIES_WITH_TICKETS: f64 = 1.1;
/// Target: the same for every other client.
pub const RETRIES_WITHOUT_TICKETS: f64 = 1.5;

/// What one contender's storm produced.
#[derive(Debug, Clone, Default)]
pub struct StormRun {
    /// "herdgate + tickets", "full jitter, no admission"...
    pub label: String,
    /// Configured admissions per second of one node (the target's reference).
    pub admit_rate: f64,
    /// Sum of the rates of the nodes that take the herd (the survivors).
    pub surviving_rate: f64,
    /// N / Σ rate (or its slow-start equivalent): the physical limit.
    pub ideal: Duration,
    /// Latency no strategy can avoid (noticing the drop, one round trip), allowed on top
    /// of the ideal in the time target.
    pub floor: Duration,
    /// The clients present tickets (selects the retries target).
    pub tickets: bool,
    /// Per surviving node: accept times since the storm began (any order).
    pub accepts: Vec<Vec<Nanos>>,
    /// Per displaced client: when it got back, since the storm began (`None`: never).
    pub reconnected: Vec<Option<Nanos>>,
    /// Per displaced client: reconnect attempts made, the successful one included.
    pub attempts: Vec<u32>,
    /// Free-form facts worth a line under the table (timeouts, TLS resumption...).
    pub notes: Vec<String>,
}

/// The numbers of one [`StormRun`], and whether each target holds.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// The contender.
    pub label: String,
    /// `admit_rate` of each surviving node.
    pub admit_rate: f64,
    /// Sum of the surviving nodes' rates.
    pub surviving_rate: f64,
    /// N / Σrate: the physical limit for the displaced clients.
    pub ideal: Duration,
    /// Time no client can beat (noticing the drop, one round trip), added to the ideal.
    pub floor: Duration,
    /// Whether the clients carried tickets (the retries target is tighter).
    pub tickets: bool,
    /// Displaced clients.
    pub clients: usize,
    /// Displaced clients that got back.
    pub back: usize,
    /// Most accepts one surviving node took in any 1 s window.
    pub peak_node_rate: usize,
    /// Time until 99% and 100% of the displaced clients were back.
    pub to_99: Option<Duration>,
    /// Time until 100% were back.
    pub to_100: Option<Duration>,
    /// Reconnect attempts per displaced client (1.0: everyone in at the first attempt).
    pub attempts_per_client: f64,
    /// Clients that needed more than one attempt.
    pub turned_away: usize,
    /// Mean retries (attempts − 1) of those clients: 1.0 means each came back exactly
    /// once, when told. `None` when nobody was turned away.
    pub retries_per_turned_away: Option<f64>,
    /// Accepts on all surviving nodes per [`BIN`], from the storm's start.
    pub bins: Vec<u32>,
    /// Facts worth a line under the table.
    pub notes: Vec<String>,
}

impl Summary {
    /// Largest peak allowed by the rate target.
    pub fn peak_limit(&self) -> f64 {
        PEAK_FACTOR * self.admit_rate
    }

    /// Latest 100% allowed by the time target.
    pub fn time_limit(&self) -> Duration {
        self.ideal.mul_f64(TIME_FACTOR) + self.floor
    }

    /// Largest mean retries allowed by the attempts target.
    pub fn retries_limit(&self) -> f64 {
        if self.tickets {
            RETRIES_WITH_TICKETS
        } else {
            RETRIES_WITHOUT_TICKETS
        }
    }

    /// Peak per-node accepts stayed within 1.05 × admit_rate in every 1 s window.
    pub fn rate_ok(&self) -> bool {
        self.peak_node_rate as f64 <= self.peak_limit()
    }

    /// Everyone was back within 1.15 × ideal (+ floor).
    pub fn time_ok(&self) -> bool {
        self.to_100.is_some_and(|t| t <= self.time_limit())
    }

    /// Turned-away clients came back about once each.
    pub fn retries_ok(&self) -> bool {
        self.retries_per_turned_away
            .is_none_or(|r| r <= self.retries_limit())
    }

    /// Whether every target holds.
    pub fn all_ok(&self) -> bool {
        self.rate_ok() && self.time_ok() && self.retries_ok()
    }

    /// Accepts per bin that the surviving nodes can take at admit_rate.
    pub fn capacity_per_bin(&self) -> f64 {
        self.surviving_rate * BIN.as_secs_f64()
    }
}

/// Largest number of `sorted` times inside any half-open window `[t, t + w)`.
pub fn max_in_window(sorted: &[Nanos], w: Nanos) -> usize {
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..sorted.len() {
        while sorted[hi] - sorted[lo] >= w {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// Computes every figure of `run` (consumes it: a million-client run is large).
pub fn summarize(run: StormRun) -> Summary {
    let bin = BIN.as_nanos() as u64;
    let mut peak = 0;
    let mut bins: Vec<u32> = Vec::new();
    for mut node in run.accepts {
        node.sort_unstable();
        peak = peak.max(max_in_window(&node, NANOS_PER_SEC));
        for t in node {
            let b = (t / bin) as usize;
            if b >= bins.len() {
                bins.resize(b + 1, 0);
            }
            bins[b] += 1;
        }
    }
    let clients = run.reconnected.len();
    let mut back: Vec<Nanos> = run.reconnected.iter().flatten().copied().collect();
    back.sort_unstable();
    let at_share = |share: f64| -> Option<Duration> {
        let need = ((share * clients as f64).ceil() as usize).max(1);
        (back.len() >= need).then(|| Duration::from_nanos(back[need - 1]))
    };
    let to_99 = at_share(0.99);
    let to_100 = if back.len() == clients {
        back.last().map(|&t| Duration::from_nanos(t))
    } else {
        None
    };
    let total: u64 = run.attempts.iter().map(|&a| u64::from(a)).sum();
    let (turned, retries) = run
        .attempts
        .iter()
        .filter(|&&a| a > 1)
        .fold((0usize, 0u64), |(n, r), &a| (n + 1, r + u64::from(a - 1)));
    Summary {
        label: run.label,
        admit_rate: run.admit_rate,
        surviving_rate: run.surviving_rate,
        ideal: run.ideal,
        floor: run.floor,
        tickets: run.tickets,
        clients,
        back: back.len(),
        peak_node_rate: peak,
        to_99,
        to_100,
        attempts_per_client: total as f64 / clients.max(1) as f64,
        turned_away: turned,
        retries_per_turned_away: (turned > 0).then(|| retries as f64 / turned as f64),
        bins,
        notes: run.notes,
    }
}

fn secs(d: Option<Duration>) -> String {
    match d {
        Some(d) if d < Duration::from_millis(100) => format!("{:.0} ms", d.as_secs_f64() * 1e3),
        Some(d) => format!("{:.2} s", d.as_secs_f64()),
        None => "never".to_string(),
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

/// The summary table with the targets, one row per contender.
pub fn table(title: &str, summaries: &[Summary]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{title}");
    let Some(first) = summaries.first() else {
        return s;
    };
    // Socket rounds each have their own floor (when the last client noticed the drop).
    let lo = summaries.iter().map(|x| x.floor).min().unwrap_or_default();
    let hi = summaries.iter().map(|x| x.floor).max().unwrap_or_default();
    let range = |a: Duration, b: Duration| {
        if a == b {
            secs(Some(a))
        } else {
            format!("{}-{}", secs(Some(a)), secs(Some(b)))
        }
    };
    let _ = writeln!(
        s,
        "  admit_rate {:.0}/s per node, surviving capacity {:.0}/s; ideal N / Σrate = {} / {:.0}/s = {}{}",
        first.admit_rate,
        first.surviving_rate,
        first.clients,
        first.surviving_rate,
        secs(Some(first.ideal)),
        if hi.is_zero() {
            String::new()
        } else {
            format!(
                " (+ a floor of {}: until the last client noticed the drop, and one round trip)",
                range(lo, hi)
            )
        }
    );
    let limit = |f: Duration| first.ideal.mul_f64(TIME_FACTOR) + f;
    let _ = writeln!(
        s,
        "  targets: peak accepts/s per surviving node in any 1 s window <= {:.2} x admit_rate = {:.0}; \
         100% reconnected <= {:.2} x ideal{} = {}; retries per turned-away client <= {} with tickets, <= {} without",
        PEAK_FACTOR,
        first.peak_limit(),
        TIME_FACTOR,
        if hi.is_zero() { "" } else { " + floor" },
        range(limit(lo), limit(hi)),
        RETRIES_WITH_TICKETS,
        RETRIES_WITHOUT_TICKETS,
    );
    let w = summaries
        .iter()
        .map(|x| x.label.chars().count())
        .max()
        .unwrap_or(8)
        .max(9);
    let _ = writeln!(
        s,
        "  {:<w$}  {:>17}  {:>9}  {:>15}  {:>11}  {:>24}",
        "contender",
        "peak/s/node",
        "99% back",
        "100% back",
        "att/client",
        "retries per turned-away",
    );
    for x in summaries {
        let retries = match x.retries_per_turned_away {
            Some(r) => format!("{r:.2} of {}", x.turned_away),
            None => "none turned away".to_string(),
        };
        let _ = writeln!(
            s,
            "  {:<w$}  {:>12} {}  {:>9}  {:>10} {}  {:>11.2}  {:>19} {}",
            x.label,
            x.peak_node_rate,
            verdict(x.rate_ok()),
            secs(x.to_99),
            secs(x.to_100),
            verdict(x.time_ok()),
            x.attempts_per_client,
            retries,
            verdict(x.retries_ok()),
        );
        if x.back < x.clients {
            let _ = writeln!(
                s,
                "  {:<w$}  ({} of {} displaced clients never got back)",
                "",
                x.clients - x.back,
                x.clients
            );
        }
        for n in &x.notes {
            let _ = writeln!(s, "  {:<w$}  {n}", "");
        }
    }
    s
}

/// Bins merged so that a chart is at most `max_cols` wide; returns (bins, merge factor).
fn fit_bins(summaries: &[Summary], max_cols: usize) -> (Vec<Vec<u32>>, usize) {
    let longest = summaries.iter().map(|x| x.bins.len()).max().unwrap_or(0);
    let k = longest.div_ceil(max_cols.max(1)).max(1);
    let cols = longest.div_ceil(k);
    let merged = summaries
        .iter()
        .map(|x| {
            (0..cols)
                .map(|c| x.bins.iter().skip(c * k).take(k).sum::<u32>())
                .collect()
        })
        .collect();
    (merged, k)
}

const BLOCKS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// Accepts per 100 ms on the surviving nodes, one small bar chart per contender, on one
/// time axis. Full height is twice the survivors' capacity, so a herdgate storm is a flat
/// band at half height; `▲` marks a bar cut off above that.
pub fn terminal_chart(summaries: &[Summary]) -> String {
    const ROWS: usize = 4;
    const MAX_COLS: usize = 100;
    let mut s = String::new();
    let Some(first) = summaries.first() else {
        return s;
    };
    let (bins, k) = fit_bins(summaries, MAX_COLS);
    let bin_ms = BIN.as_millis() as usize * k;
    let cap = first.capacity_per_bin() * k as f64;
    let full = 2.0 * cap;
    let _ = writeln!(
        s,
        "  accepts per {bin_ms} ms on the surviving nodes; rows top at 2.0/1.5/1.0/0.5 x capacity ({:.0} per {bin_ms} ms), ▲ = off the chart",
        cap
    );
    let cols = bins.first().map_or(0, Vec::len);
    for (x, b) in summaries.iter().zip(&bins) {
        let peak = b.iter().copied().max().unwrap_or(0);
        let _ = writeln!(
            s,
            "  {} (highest bar {peak}, {:.1} x capacity)",
            x.label,
            f64::from(peak) / cap.max(1e-9)
        );
        for row in 0..ROWS {
            let label = format!("{:.1}x", 2.0 - 0.5 * row as f64);
            let _ = write!(s, "  {label:>5} │");
            for &v in b {
                let eighths = ((f64::from(v) / full) * (ROWS * 8) as f64).round() as i64;
                let floor = ((ROWS - 1 - row) * 8) as i64;
                let level = (eighths - floor).clamp(0, 8) as usize;
                let c = if row == 0 && f64::from(v) > full {
                    '▲'
                } else if v > 0 && eighths == 0 && row == ROWS - 1 {
                    // Something happened in this bin: never draw it as nothing.
                    '▁'
                } else {
                    BLOCKS[level]
                };
                s.push(c);
            }
            s.push('\n');
        }
    }
    // Time axis: a tick each second.
    let per_sec = (1000 / bin_ms).max(1);
    let step = per_sec * (cols / per_sec / 10 + 1);
    let mut axis = String::from("        └");
    let mut labels = String::from("         ");
    for c in 0..cols {
        if c % step == 0 {
            axis.push('┴');
            let l = format!("{}s", c / per_sec);
            if labels.chars().count() <= 9 + c {
                while labels.chars().count() < 9 + c {
                    labels.push(' ');
                }
                labels.push_str(&l);
            }
        } else {
            axis.push('─');
        }
    }
    let _ = writeln!(s, "{axis}");
    let _ = writeln!(s, "{labels}");
    s
}

fn xml_escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The same chart as an SVG (small multiples, one panel per contender, shared time axis;
/// bars above 3 × capacity are clipped and marked). Hand-written: no dependency.
pub fn svg(title: &str, subtitle: &str, summaries: &[Summary]) -> String {
    const W: f64 = 860.0;
    const LEFT: f64 = 60.0;
    const RIGHT: f64 = 20.0;
    const PANEL: f64 = 92.0;
    const GAP: f64 = 30.0;
    // The subtitle wraps at "; " to stay inside the width (about 6.5 px per character).
    let mut sub_lines: Vec<String> = Vec::new();
    for part in subtitle.split("; ") {
        match sub_lines.last_mut() {
            Some(last) if last.len() + part.len() + 2 <= 120 => {
                last.push_str("; ");
                last.push_str(part);
            }
            _ => sub_lines.push(part.to_string()),
        }
    }
    let top = 42.0 + 16.0 * sub_lines.len() as f64;
    let (bins, k) = fit_bins(summaries, 400);
    let cols = bins.first().map_or(0, Vec::len).max(1);
    let bin_ms = BIN.as_millis() as f64 * k as f64;
    let cap = summaries
        .first()
        .map_or(1.0, |x| x.capacity_per_bin() * k as f64)
        .max(1e-9);
    // A herd far below capacity (one dead node out of 500) would be invisible on a scale
    // made for capacity: then the scale follows the bars and the capacity line is left out.
    let highest = bins.iter().flatten().copied().max().unwrap_or(0);
    let cap_shown = f64::from(highest) > cap / 2.0;
    let ymax = if cap_shown {
        3.0 * cap
    } else {
        (f64::from(highest) * 1.25).max(1.0)
    };
    let plot_w = W - LEFT - RIGHT;
    let bar_w = plot_w / cols as f64;
    let h = top + summaries.len() as f64 * (PANEL + GAP) + 30.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h:.0}" viewBox="0 0 {W} {h:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#fff"/>"##);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="20" font-size="15" font-weight="bold">{}</text>"#,
        xml_escape(title)
    );
    for (i, line) in sub_lines.iter().enumerate() {
        let _ = writeln!(
            s,
            r##"<text x="{LEFT}" y="{}" fill="#444">{}</text>"##,
            38 + 16 * i,
            xml_escape(line)
        );
    }
    for (i, (x, b)) in summaries.iter().zip(&bins).enumerate() {
        let y0 = top + i as f64 * (PANEL + GAP) + 14.0;
        let base = y0 + PANEL;
        let fill = if x.all_ok() { "#2b8a5a" } else { "#d9662b" };
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="{:.1}"><tspan font-weight="bold">{}</tspan>: peak {}/s per node ({}), 100% back {} ({}), {:.2} attempts/client</text>"#,
            y0 - 4.0,
            xml_escape(&x.label),
            x.peak_node_rate,
            verdict(x.rate_ok()),
            secs(x.to_100),
            verdict(x.time_ok()),
            x.attempts_per_client,
        );
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{y0:.1}" width="{plot_w}" height="{PANEL}" fill="#f6f6f6"/>"##
        );
        for (c, &v) in b.iter().enumerate() {
            if v == 0 {
                continue;
            }
            let bh = (f64::from(v).min(ymax) / ymax * PANEL).max(0.8);
            let bx = LEFT + c as f64 * bar_w;
            let _ = writeln!(
                s,
                r#"<rect x="{bx:.2}" y="{:.2}" width="{:.2}" height="{bh:.2}" fill="{fill}"/>"#,
                base - bh,
                (bar_w - 0.3).max(0.5)
            );
        }
        // Bars taller than the panel: say so once, in the corner, over the bars.
        if let Some(&v) = b.iter().max().filter(|&&v| f64::from(v) > ymax) {
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#b00" font-size="11">▲ bars clipped at {ymax:.0}; highest {v}</text>"##,
                LEFT + plot_w - 4.0,
                y0 + 12.0
            );
        }
        if cap_shown {
            let cy = base - cap / ymax * PANEL;
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{cy:.1}" x2="{:.1}" y2="{cy:.1}" stroke="#333" stroke-dasharray="4 3"/>"##,
                LEFT + plot_w
            );
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#333" font-size="10">capacity</text>"##,
                LEFT - 4.0,
                cy + 3.0
            );
        } else if i == 0 {
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#333" font-size="11">capacity ({cap:.0} per bin) is far above this scale</text>"##,
                LEFT + plot_w - 4.0,
                y0 + 12.0
            );
        }
        let ideal_x = LEFT + x.ideal.as_secs_f64() * 1000.0 / bin_ms * bar_w;
        if ideal_x <= LEFT + plot_w {
            let _ = writeln!(
                s,
                r##"<line x1="{ideal_x:.1}" y1="{y0:.1}" x2="{ideal_x:.1}" y2="{base:.1}" stroke="#36c" stroke-dasharray="2 2"/>"##
            );
        }
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#333" font-size="10">{:.0}</text>"##,
            LEFT - 4.0,
            y0 + 9.0,
            ymax
        );
    }
    // Time axis under the last panel.
    let ay = top + summaries.len() as f64 * (PANEL + GAP) - GAP + 14.0;
    let total_s = cols as f64 * bin_ms / 1000.0;
    let step = if total_s <= 12.0 {
        1.0
    } else {
        (total_s / 10.0).ceil()
    };
    let mut t = 0.0;
    while t <= total_s + 1e-9 {
        let x = LEFT + t * 1000.0 / bin_ms * bar_w;
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{ay:.1}" x2="{x:.1}" y2="{:.1}" stroke="#333"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{t:.0}s</text>"##,
            ay + 5.0,
            ay + 18.0
        );
        t += step;
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#444" font-size="11">accepts per {bin_ms:.0} ms on the surviving nodes; dashed: capacity at admit_rate; blue: ideal N / Σrate; time since the kill</text>"##,
        LEFT + plot_w,
        ay + 32.0
    );
    let _ = writeln!(s, "</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;

    fn run(
        label: &str,
        accepts: Vec<Vec<Nanos>>,
        back: Vec<Option<Nanos>>,
        att: Vec<u32>,
    ) -> StormRun {
        StormRun {
            label: label.into(),
            admit_rate: 10.0,
            surviving_rate: 20.0,
            ideal: Duration::from_secs(1),
            floor: Duration::ZERO,
            tickets: true,
            accepts,
            reconnected: back,
            attempts: att,
            notes: vec![],
        }
    }

    #[test]
    fn window_counts_are_half_open() {
        let t = [0, 500 * MS, 999 * MS, 1000 * MS, 1001 * MS];
        assert_eq!(max_in_window(&t, 1000 * MS), 4);
        assert_eq!(max_in_window(&[], 1000 * MS), 0);
    }

    #[test]
    fn summary_figures_and_targets() {
        // Node 0 takes 11 in one second (limit 10.5): rate FAIL. 20 clients, back by 1.1 s
        // (limit 1.15 s): time PASS. Two clients needed 2 and 3 attempts: 1.5 retries.
        let n0: Vec<Nanos> = (0..11).map(|i| i * 90 * MS).collect();
        let n1: Vec<Nanos> = (0..9).map(|i| i * 100 * MS + 100 * MS).collect();
        let mut back: Vec<Option<Nanos>> = n0.iter().chain(&n1).map(|&t| Some(t)).collect();
        back[3] = Some(1100 * MS);
        let mut att = vec![1; 20];
        att[0] = 2;
        att[1] = 3;
        let x = summarize(run("x", vec![n0, n1], back, att));
        assert_eq!(x.peak_node_rate, 11);
        assert!(!x.rate_ok());
        assert_eq!(x.to_100, Some(Duration::from_millis(1100)));
        assert!(x.time_ok());
        assert_eq!(x.turned_away, 2);
        assert_eq!(x.retries_per_turned_away, Some(1.5));
        assert!(!x.retries_ok(), "1.5 > 1.1 with tickets");
        assert!((x.attempts_per_client - 23.0 / 20.0).abs() < 1e-9);
        assert_eq!(x.bins.iter().sum::<u32>(), 20);
        assert_eq!(x.bins[0], 2, "0 and 90 ms on n0; n1 starts at 100 ms");
    }

    #[test]
    fn missing_clients_mean_never() {
        let x = summarize(run("y", vec![vec![0]], vec![Some(0), None], vec![1, 4]));
        assert_eq!(x.to_100, None);
        assert!(!x.time_ok());
        assert_eq!(x.to_99, None, "1 of 2 back is below 99%");
        let t = table("t", std::slice::from_ref(&x));
        assert!(t.contains("never"), "{t}");
        // One accept against a capacity of 2 per bin: a quarter of the chart's height.
        let c = terminal_chart(std::slice::from_ref(&x));
        assert!(c.contains("0.5x │█"), "{c}");
        let svg = svg("a < b", "sub", &[x]);
        assert!(svg.starts_with("<svg") && svg.contains("a &lt; b"), "{svg}");
    }
}
