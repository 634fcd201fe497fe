//! Fairness: user B's `chat` latency alone, then while user A floods the
//! daemon from many connections far over A's limits, side by side in one
//! run. The echo model answers at once, so what is measured is the
//! daemon's own time: how much of it A's refused flood takes from B.
//!
//! The daemon runs in this process (memory store) with the per-user limits
//! at their defaults except the rate, raised so that A's calls are refused
//! for running too many at once, the cheaper and more frequent refusal.

use std::io::Write as _;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use exai_tests::{Client, TestDaemon, token};
use serde_json::{Value, json};

/// B's calls per measurement.
const SAMPLES: usize = 2_000;
/// A's connections.
const FLOODERS: usize = 16;

async fn b_latencies(client: &mut Client, first: u64) -> Vec<Duration> {
    let mut taken = Vec::with_capacity(SAMPLES);
    for id in first..first + SAMPLES as u64 {
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

pub(crate) async fn run() {
    let daemon = TestDaemon::start_with(|c| {
        c.tools.per_user = exai_daemon::UserLimits::default();
        c.tools.per_user.rpm = NonZeroU32::new(1_000_000);
        c.tools.max_in_flight = 64;
        c.edge.max_connections_per_user = 64;
    })
    .await;
    let mut bo = daemon.connect_initialized(&token("bo@example.com")).await;
    b_latencies(&mut bo, 1).await;
    let alone = b_latencies(&mut bo, 100_000).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (sent, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut flood = Vec::new();
    for _ in 0..FLOODERS {
        let mut ana = daemon.connect_initialized(&token("ana@example.com")).await;
        let (stop, sent, refused) = (stop.clone(), sent.clone(), refused.clone());
        flood.push(tokio::spawn(async move {
            let mut id = 1u64;
            while !stop.load(Ordering::Relaxed) {
                for n in id..id + 8 {
                    let call = json!({"jsonrpc": "2.0", "id": n, "method": "tools/call",
                                      "params": {"name": "chat", "arguments": {"prompt": "a"}}});
                    ana.send_text(call.to_string()).await;
                }
                for _ in 0..8 {
                    let answer: Value = ana.recv_json().await;
                    if answer["error"]["code"] == -32005 {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                sent.fetch_add(8, Ordering::Relaxed);
                id += 8;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    let sent_before = sent.load(Ordering::Relaxed);
    let loaded = b_latencies(&mut bo, 200_000).await;
    let a_rate =
        (sent.load(Ordering::Relaxed) - sent_before) as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in flood {
        task.await.unwrap();
    }
    let (sent, refused) = (
        sent.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    daemon.stop().await;

    let (p50a, p99a) = (percentile(&alone, 50), percentile(&alone, 99));
    let (p50l, p99l) = (percentile(&loaded, 50), percentile(&loaded, 99));
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "| Figure | B alone | B while A floods | ratio | target |"
    )
    .unwrap();
    writeln!(out, "|---|---|---|---|---|").unwrap();
    writeln!(
        out,
        "| B's `chat` p50, echo model, {SAMPLES} calls | {} | {} | {:.2}× | — |",
        ms(p50a),
        ms(p50l),
        p50l.as_secs_f64() / p50a.as_secs_f64()
    )
    .unwrap();
    writeln!(
        out,
        "| B's `chat` p99 | {} | {} | {:.2}× | ≤ 2× |",
        ms(p99a),
        ms(p99l),
        p99l.as_secs_f64() / p99a.as_secs_f64()
    )
    .unwrap();
    writeln!(
        out,
        "\nA: {FLOODERS} connections, 8 calls each in flight, {a_rate:.0} calls/s while B was measured; {refused} of {sent} refused (-32005, `EXAI_USER_MAX_INFLIGHT` 8).\n"
    )
    .unwrap();
}
