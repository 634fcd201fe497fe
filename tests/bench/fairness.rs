//! Fairness: user B's `chat` latency alone, then while user A floods the
//! daemon from many connections far over A's limits, side by side in one
//! run, with the default per-user limits (60 calls a minute, 8 running).
//!
//! Two settings: the echo model answering after 20 ms (as a fast real model
//! would, in order of magnitude), and at once, where every microsecond is
//! the daemon's own and A's refused flood competes with B for the same two
//! cores (A's clients run in this process too).

use std::io::Write as _;
use std::time::{Duration, Instant};

use exai_tests::{Client, Flood, TestDaemon, token};
use serde_json::json;

/// A's connections.
const FLOODERS: usize = 16;

async fn b_latencies(client: &mut Client, first: u64, samples: usize) -> Vec<Duration> {
    let mut taken = Vec::with_capacity(samples);
    for id in first..first + samples as u64 {
        let start = Instant::now();
        let answer = client.call_tool(id, "chat", json!({"prompt": "b"})).await;
        taken.push(start.elapsed());
        assert_eq!(answer["result"]["content"][0]["text"], "[echo] b");
    }
    taken.sort();
    taken
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p).div_ceil(100) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// B's p50 and p99 alone and under A's flood; A's calls per second and
/// how many of them were refused.
struct Figures {
    alone: (Duration, Duration),
    loaded: (Duration, Duration),
    a_rate: f64,
    sent: u64,
    refused: u64,
}

async fn measure(model_delay: Duration, samples: usize) -> Figures {
    let daemon = TestDaemon::start_with(|c| {
        c.tools.per_user = exai_daemon::UserLimits::default();
        c.tools.max_in_flight = 64;
        c.edge.max_connections_per_user = 64;
        c.echo_delay = model_delay;
    })
    .await;
    // B makes far more than 60 calls a minute, so B's calls are spread over
    // users of 50 calls each, every one within its own limit; A stays one
    // user, the one to be limited.
    let mut b_users = 0u32;
    let mut b_run = async |first: u64| {
        let mut all = Vec::with_capacity(samples);
        for chunk in 0..samples.div_ceil(50) {
            b_users += 1;
            let mut b = daemon
                .connect_initialized(&token(&format!("b{b_users}@example.com")))
                .await;
            let n = 50.min(samples - chunk * 50);
            all.extend(b_latencies(&mut b, first + (chunk * 50) as u64, n).await);
            b.close().await;
        }
        all.sort();
        all
    };
    b_run(1).await;
    let alone = b_run(100_000).await;

    let flood = Flood::start(&daemon, "ana@example.com", FLOODERS).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    let sent_before = flood.sent();
    let loaded = b_run(200_000).await;
    let a_rate = (flood.sent() - sent_before) as f64 / start.elapsed().as_secs_f64();
    let (sent, refused) = flood.stop().await;
    let figures = Figures {
        alone: (percentile(&alone, 50), percentile(&alone, 99)),
        loaded: (percentile(&loaded, 50), percentile(&loaded, 99)),
        a_rate,
        sent,
        refused,
    };
    daemon.stop().await;
    figures
}

pub(crate) async fn run() {
    let mut out = String::new();
    out.push_str("| B's `chat`, echo model | B alone p50 / p99 | B while A floods p50 / p99 | ratio (p99) | target |\n");
    out.push_str("|---|---|---|---|---|\n");
    let mut notes = String::new();
    for (label, delay, samples) in [
        (
            "answering in 20 ms, 500 calls",
            Duration::from_millis(20),
            500,
        ),
        ("answering at once, 2000 calls", Duration::ZERO, 2_000),
    ] {
        let f = measure(delay, samples).await;
        out.push_str(&format!(
            "| {label} | {} / {} | {} / {} | {:.2}× | ≤ 2× |\n",
            ms(f.alone.0),
            ms(f.alone.1),
            ms(f.loaded.0),
            ms(f.loaded.1),
            f.loaded.1.as_secs_f64() / f.alone.1.as_secs_f64()
        ));
        notes.push_str(&format!(
            "- {label}: A sent {:.0} calls/s from {FLOODERS} connections (8 in flight each); {} of {} refused with -32005.\n",
            f.a_rate, f.refused, f.sent
        ));
    }
    writeln!(std::io::stdout().lock(), "{out}\n{notes}").unwrap();
}
