//! The soak, for `RELIABILITY.md`: a release `exai-daemon` process holds
//! [`CONNECTIONS`] authenticated WebSockets (five per user, the default
//! cap) while [`RATE`] `whoami` calls a second run over all of them, each
//! connection called in turn, for `EXAI_SOAK_SECS` (600 by default).
//! Every answer is checked (its id, no error, the caller's own identity);
//! the daemon's resident size is sampled every [`SAMPLE`] and, after
//! [`WARM_UP`], must stay flat within 5%. `whoami` stores nothing, so any
//! growth would be a leak; what stored state may grow to (conversations)
//! is bounded in `docs/limits.md`, not here.

use std::io::Write as _;
use std::time::{Duration, Instant};

use serde_json::json;

use exai_tests::DaemonProcess;

use crate::transport::{connect, daemon_binary, fresh_token, ms, rss_kib};

/// Connections held for the whole run.
const CONNECTIONS: usize = 10_000;
/// Calls per second, over all connections.
const RATE: u32 = 1_000;
/// Workers sending the calls; each owns `CONNECTIONS / WORKERS` of them.
const WORKERS: usize = 100;
/// Resident size is sampled this often ...
const SAMPLE: Duration = Duration::from_secs(10);
/// ... and must be flat from this long after the calls start.
const WARM_UP: Duration = Duration::from_secs(60);

/// What one worker saw.
#[derive(Default)]
struct Seen {
    calls: u64,
    errors: u64,
    latencies_us: Vec<u32>,
}

pub(crate) async fn run() {
    let secs: u64 = std::env::var("EXAI_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let duration = Duration::from_secs(secs);
    let daemon = DaemonProcess::start(&daemon_binary(), &[("EXAI_MAX_CONNECTIONS", "12000")]).await;
    let connect_started = Instant::now();
    let mut connections = Vec::with_capacity(CONNECTIONS);
    for n in 0..CONNECTIONS {
        connections.push((
            n / 5,
            connect(&daemon.url, &fresh_token(n / 5, n), true).await,
        ));
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    let rss_held = rss_kib(daemon.pid);

    let started = Instant::now();
    let deadline = started + duration;
    let interval = Duration::from_secs(WORKERS as u64) / RATE;
    let mut workers = Vec::new();
    let per_worker = CONNECTIONS / WORKERS;
    for w in 0..WORKERS {
        let mut mine: Vec<_> = connections
            .drain(..per_worker.min(connections.len()))
            .collect();
        workers.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            // Each worker on its own schedule, spread over the interval.
            let mut next = started + interval * w as u32 / WORKERS as u32;
            let mut turn = 0usize;
            while next < deadline {
                tokio::time::sleep_until(next.into()).await;
                next += interval;
                let (user, client) = &mut mine[turn % per_worker];
                turn += 1;
                seen.calls += 1;
                let id = seen.calls;
                let sent = Instant::now();
                let answer = client
                    .request(
                        json!(id),
                        "tools/call",
                        json!({"name": "whoami", "arguments": {}}),
                    )
                    .await;
                seen.latencies_us
                    .push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                let identity: Option<serde_json::Value> = answer["result"]["content"][0]["text"]
                    .as_str()
                    .and_then(|t| serde_json::from_str(t).ok());
                let own = identity
                    .is_some_and(|i| i["email"] == json!(format!("bench{user}@example.com")));
                if answer["id"] != json!(id) || answer.get("error").is_some() || !own {
                    seen.errors += 1;
                }
            }
            seen
        }));
    }
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(SAMPLE.min(deadline - Instant::now())).await;
        if started.elapsed() >= WARM_UP {
            samples.push(rss_kib(daemon.pid));
        }
    }
    let mut total = Seen::default();
    for worker in workers {
        let seen = worker.await.expect("a worker");
        total.calls += seen.calls;
        total.errors += seen.errors;
        total.latencies_us.extend(seen.latencies_us);
    }
    daemon.stop().await;
    total.latencies_us.sort_unstable();
    let at = |q: f64| {
        let i = ((total.latencies_us.len() as f64 * q) as usize).min(total.latencies_us.len() - 1);
        Duration::from_micros(u64::from(total.latencies_us[i]))
    };
    let (min, max) = (
        samples.iter().copied().min().unwrap_or(0),
        samples.iter().copied().max().unwrap_or(0),
    );
    let spread = (max - min) as f64 / min.max(1) as f64 * 100.0;
    let mut out = std::io::stdout().lock();
    writeln!(out, "| what | figure | target |").unwrap();
    writeln!(out, "|---|---|---|").unwrap();
    writeln!(
        out,
        "| authenticated WebSockets held (opened one at a time in {connect_secs:.0} s; daemon RSS then {:.0} MiB) | {CONNECTIONS} | 10,000 |",
        rss_held as f64 / 1024.0
    )
    .unwrap();
    writeln!(
        out,
        "| `whoami` calls over {secs} s (every answer checked) | {} ({:.0}/s) | 1,000/s |",
        total.calls,
        total.calls as f64 / secs as f64
    )
    .unwrap();
    writeln!(out, "| errors | {} | 0 |", total.errors).unwrap();
    writeln!(
        out,
        "| latency p50 / p99 / max, ms | {} / {} / {} | — |",
        ms(at(0.5)),
        ms(at(0.99)),
        ms(at(1.0))
    )
    .unwrap();
    writeln!(
        out,
        "| daemon RSS after {} s of warm-up, min / max MiB ({} samples) | {:.1} / {:.1} ({spread:.1}% apart) | flat within 5% |",
        WARM_UP.as_secs(),
        samples.len(),
        min as f64 / 1024.0,
        max as f64 / 1024.0
    )
    .unwrap();
}
