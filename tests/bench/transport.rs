//! Transport figures: `tools/call` round trips over WebSocket beside a raw
//! tokio-tungstenite echo server on the same payloads (the floor), latency
//! at a fixed rate, authenticated connections per second, the memory an
//! idle authenticated connection costs the daemon, and the same round trip
//! over Streamable HTTP beside a plain axum echo.
//!
//! Clients and servers share this process and the machine's two cores (the
//! floor's too), except for the memory figure, which reads the resident
//! size of a separate `exai-daemon` process (`EXAI_BENCH_DAEMON`).

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use exai_tests::{Client, DaemonProcess, TestDaemon, claims, sign, try_connect_with};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// How long each throughput measurement runs.
const RUN: Duration = Duration::from_secs(3);
/// Connections for the throughput figures.
const CONNECTIONS: usize = 64;
/// Idle connections for the memory figure.
const IDLE: usize = 10_000;
/// Idle HTTP sessions for the memory figure.
const IDLE_HTTP: usize = 10_000;

fn call(id: u64) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": "chat", "arguments": {"prompt": "hello"}}})
    .to_string()
}

/// A token no other connection uses (so every connection is verified in
/// full, never a cache hit).
pub(crate) fn fresh_token(user: usize, n: usize) -> String {
    let mut claims = claims(&format!("bench{user}@example.com"));
    claims["session_id"] = json!(format!("00000000-0000-4000-8000-{n:012}"));
    sign(&claims)
}

/// The floor: accepts WebSockets (echoing the `mcp` subprotocol) and sends
/// every text frame back.
async fn echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            // As the daemon does: a floor is the same work on the same
            // socket options.
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                // The signature is tungstenite's callback's.
                #[allow(clippy::result_large_err)]
                let echo_protocol = |_: &Request, mut response: Response| {
                    response
                        .headers_mut()
                        .insert("sec-websocket-protocol", "mcp".parse().unwrap());
                    Ok(response)
                };
                let Ok(mut socket) =
                    tokio_tungstenite::accept_hdr_async(stream, echo_protocol).await
                else {
                    return;
                };
                while let Some(Ok(message)) = socket.next().await {
                    if let Message::Text(_) = message
                        && socket.send(message).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    format!("ws://{addr}/mcp")
}

pub(crate) async fn connect(url: &str, token: &str, initialize: bool) -> Client {
    let bearer = format!("Bearer {token}");
    let mut client = try_connect_with(url, &[("authorization", &bearer)])
        .await
        .unwrap_or_else(|refused| panic!("refused: {}", refused.status));
    if initialize {
        client.initialize().await;
    }
    client
}

/// One call and its answer (the floor's answer is the call itself).
async fn round_trip(client: &mut Client, id: u64) {
    client.send_text(call(id)).await;
    let answer = client.recv_json().await;
    // Checked in release builds too: a fast error is not a round trip.
    assert_eq!(answer["id"], json!(id), "{answer}");
    assert!(answer.get("error").is_none(), "{answer}");
}

/// What `tasks` counted in [`RUN`], per second.
async fn per_second(tasks: impl Iterator<Item = tokio::task::JoinHandle<u64>>) -> f64 {
    let total: u64 = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .sum();
    total as f64 / RUN.as_secs_f64()
}

/// Round trips per second over `clients`, all busy at once.
async fn round_trips_per_second(clients: Vec<Client>) -> f64 {
    let deadline = Instant::now() + RUN;
    let tasks = clients.into_iter().map(|mut client| {
        tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                round_trip(&mut client, done + 1).await;
                done += 1;
            }
            done
        })
    });
    per_second(tasks).await
}

/// p50 and p99 latency with calls sent at a fixed total `rate` over
/// `clients`, each on its own schedule.
async fn latency_at(clients: Vec<Client>, rate: u32) -> (Duration, Duration) {
    let per_client = Duration::from_secs(clients.len() as u64) / rate;
    let deadline = Instant::now() + RUN;
    let tasks = clients.into_iter().enumerate().map(|(i, mut client)| {
        tokio::spawn(async move {
            // Spread the clients' schedules over one period.
            tokio::time::sleep(per_client / 16 * (i as u32 % 16)).await;
            let mut ticks = tokio::time::interval(per_client);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut times = Vec::new();
            let mut id = 0;
            while Instant::now() < deadline {
                ticks.tick().await;
                id += 1;
                let start = Instant::now();
                round_trip(&mut client, id).await;
                times.push(start.elapsed());
            }
            times
        })
    });
    let mut times: Vec<Duration> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap())
        .collect();
    times.sort();
    (times[times.len() / 2], times[times.len() * 99 / 100])
}

/// Connections established (upgrade done) per second, 16 at a time, each
/// closed again.
async fn connections_per_second(url: &str, tokens: Arc<Vec<String>>) -> f64 {
    let deadline = Instant::now() + RUN;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks = (0..16).map(|_| {
        let (url, tokens, next) = (url.to_owned(), tokens.clone(), next.clone());
        tokio::spawn(async move {
            let mut made = 0u64;
            while Instant::now() < deadline {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let client = connect(&url, &tokens[n % tokens.len()], false).await;
                made += 1;
                client.close().await;
            }
            made
        })
    });
    per_second(tasks).await
}

/// The floor for HTTP: an axum route that answers a POST with its body.
async fn http_echo_server() -> String {
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::post(|body: String| async move {
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // As the daemon does: TCP_NODELAY on every accepted connection.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/mcp")
}

/// Streamable HTTP round trips per second: `CONNECTIONS` clients, each with
/// its own session (when `token` is set) posting `tools/call` and reading
/// the answer.
async fn http_round_trips_per_second(url: &str, token: Option<&str>) -> f64 {
    let http = reqwest::Client::new();
    let mut sessions = Vec::new();
    for _ in 0..CONNECTIONS {
        let session = match token {
            None => None,
            Some(token) => Some(open_http_session(&http, url, token).await),
        };
        sessions.push(session);
    }
    let deadline = Instant::now() + RUN;
    let tasks = sessions.into_iter().map(|session| {
        let (http, url, token) = (http.clone(), url.to_owned(), token.unwrap_or("").to_owned());
        tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                let response = post(&http, &url, &token, session.as_deref(), call(done + 1)).await;
                let body = response.text().await.unwrap();
                assert!(body.contains(&format!("\"id\":{}", done + 1)), "{body}");
                assert!(!body.contains("\"error\""), "{body}");
                done += 1;
            }
            done
        })
    });
    per_second(tasks).await
}

/// An initialized Streamable HTTP session of `token`'s user; its id.
async fn open_http_session(http: &reqwest::Client, url: &str, token: &str) -> String {
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "bench", "version": "1"}}});
    let response = post(http, url, token, None, init.to_string()).await;
    let id = response
        .headers()
        .get("mcp-session-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.text().await.unwrap();
    assert!(body.contains("\"serverInfo\""), "{body}");
    let done = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    post(http, url, token, Some(&id), done.to_string()).await;
    id
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    session: Option<&str>,
    body: String,
) -> reqwest::Response {
    let mut request = http
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body);
    if let Some(session) = session {
        request = request.header("mcp-session-id", session);
    }
    let response = request.send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response
}

/// The resident size of process `pid`, in KiB.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The release `exai-daemon` that `cargo xtask bench` built
/// (`EXAI_BENCH_DAEMON`), for benches that run it as a process.
pub(crate) fn daemon_binary() -> std::path::PathBuf {
    std::env::var_os("EXAI_BENCH_DAEMON")
        .expect("EXAI_BENCH_DAEMON: the exai-daemon binary (cargo xtask bench sets it)")
        .into()
}

/// KiB of daemon memory per idle authenticated WebSocket, with `IDLE` open:
/// a separate `exai-daemon` process, memory store.
async fn memory_per_idle_connection() -> (f64, u64) {
    let daemon = DaemonProcess::start(&daemon_binary(), &[]).await;
    let (url, pid) = (&daemon.url, daemon.pid);
    // Warm up: the first connections allocate what every later one reuses.
    let mut clients = Vec::with_capacity(IDLE + 100);
    for user in 0..100 {
        clients.push(connect(url, &fresh_token(1_000_000 + user, user), true).await);
    }
    all_services_suspended(&daemon.metrics).await;
    let before = rss_kib(pid);
    for n in 100..IDLE + 100 {
        // Five connections per user: the default per-user limit.
        clients.push(connect(url, &fresh_token(n / 5, n), true).await);
    }
    // Idle: once their MCP services are suspended (`EdgeConfig::service_idle`).
    all_services_suspended(&daemon.metrics).await;
    let after = rss_kib(pid);
    drop(clients);
    daemon.stop().await;
    ((after - before) as f64 / IDLE as f64, after)
}

/// KiB of daemon memory per idle Streamable HTTP session (initialized, then
/// left without `DELETE`, as most clients do), with `IDLE_HTTP` open: a
/// separate `exai-daemon` process, memory store.
async fn memory_per_idle_http_session() -> (f64, u64) {
    let daemon = DaemonProcess::start(&daemon_binary(), &[]).await;
    let url = format!(
        "{}/mcp",
        daemon
            .url
            .trim_end_matches("/mcp")
            .replacen("ws://", "http://", 1)
    );
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let mut sessions = Vec::with_capacity(IDLE_HTTP + 100);
    for user in 0..100 {
        let token = fresh_token(2_000_000 + user, user);
        sessions.push(open_http_session(&http, &url, &token).await);
    }
    all_services_suspended(&daemon.metrics).await;
    let before = rss_kib(daemon.pid);
    for n in 100..IDLE_HTTP + 100 {
        // Five sessions per user: the default per-user limit.
        let token = fresh_token(3_000_000 + n / 5, n);
        sessions.push(open_http_session(&http, &url, &token).await);
    }
    all_services_suspended(&daemon.metrics).await;
    let after = rss_kib(daemon.pid);
    let open = reqwest::get(&daemon.metrics)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        open.lines().any(|l| l
            == format!(
                "exai_connections_open{{transport=\"http\"}} {}",
                IDLE_HTTP + 100
            )),
        "every session is still open:\n{open}"
    );
    daemon.stop().await;
    ((after - before) as f64 / IDLE_HTTP as f64, after)
}

/// Waits until the daemon at `metrics` runs no MCP service: every
/// connection is idle, its service suspended.
async fn all_services_suspended(metrics: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let text = reqwest::get(metrics).await.unwrap().text().await.unwrap();
        if text.lines().any(|l| l == "exai_mcp_services_running 0") {
            // A moment for the services' tasks to be gone.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the daemon's MCP services were not suspended within a minute");
}

/// Prints the memory figure alone.
pub(crate) async fn memory() {
    let (per_connection, total) = memory_per_idle_connection().await;
    let (per_session, http_total) = memory_per_idle_http_session().await;
    writeln!(
        std::io::stdout().lock(),
        "{per_connection:.1} KiB per idle connection (daemon RSS {total} KiB); \
         {per_session:.1} KiB per idle HTTP session (daemon RSS {http_total} KiB)"
    )
    .unwrap();
}

fn ratio(a: f64, b: f64) -> String {
    format!("{:.2}×", a / b)
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// Throughput runs alternate, floor then exai, this many times; the
/// figures are the medians (the floor alone moves by a third between runs).
const ROUNDS: usize = 3;

fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

/// What the daemon of the throughput rows runs with, for their labels.
const DAEMON_SETTINGS: &str =
    "memory store, per-user limits off, idle services suspended after 200 ms";

pub(crate) async fn run() {
    let floor = echo_server().await;
    let daemon = TestDaemon::start_with(|c| c.edge.max_connections_per_user = 1_000_000).await;
    let token = exai_tests::token("bench@example.com");

    let (mut floor_runs, mut exai_runs) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let mut floor_clients = Vec::new();
        for _ in 0..CONNECTIONS {
            floor_clients.push(connect(&floor, &token, false).await);
        }
        floor_runs.push(round_trips_per_second(floor_clients).await);
        let mut exai_clients = Vec::new();
        for _ in 0..CONNECTIONS {
            exai_clients.push(connect(&daemon.url, &token, true).await);
        }
        exai_runs.push(round_trips_per_second(exai_clients).await);
    }
    let (floor_rate, exai_rate) = (median(floor_runs), median(exai_runs));

    let mut exai_clients = Vec::new();
    let mut floor_clients = Vec::new();
    for _ in 0..16 {
        exai_clients.push(connect(&daemon.url, &token, true).await);
        floor_clients.push(connect(&floor, &token, false).await);
    }
    let (floor_p50, floor_p99) = latency_at(floor_clients, 1000).await;
    let (exai_p50, exai_p99) = latency_at(exai_clients, 1000).await;

    let tokens: Arc<Vec<String>> =
        Arc::new((0..200_000).map(|n| fresh_token(n % 1000, n)).collect());
    let floor_conns = connections_per_second(&floor, tokens.clone()).await;
    let exai_conns = connections_per_second(&daemon.url, tokens).await;

    let http_floor = http_echo_server().await;
    let http_url = format!("{}/mcp", daemon.http);
    let (mut floor_runs, mut exai_runs) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        floor_runs.push(http_round_trips_per_second(&http_floor, None).await);
        exai_runs.push(http_round_trips_per_second(&http_url, Some(&token)).await);
    }
    let (http_floor_rate, http_rate) = (median(floor_runs), median(exai_runs));
    daemon.stop().await;

    let (per_connection, total) = memory_per_idle_connection().await;
    let (per_session, http_total) = memory_per_idle_http_session().await;

    let mut out = std::io::stdout().lock();
    writeln!(out, "| what | exai | floor | ratio | target |").unwrap();
    writeln!(out, "|---|---|---|---|---|").unwrap();
    writeln!(
        out,
        "| `tools/call` round trips/s, {CONNECTIONS} WebSockets, median of {ROUNDS} alternated runs (floor: tokio-tungstenite echo; daemon: {DAEMON_SETTINGS}) | {exai_rate:.0} | {floor_rate:.0} | {} | ≥ 20,000/s, ≥ 0.5× |",
        ratio(exai_rate, floor_rate)
    )
    .unwrap();
    writeln!(
        out,
        "| latency at 1,000 calls/s over 16 WebSockets, p50 / p99 ms | {} / {} | {} / {} | {} (p99) | p99 ≤ 2 ms |",
        ms(exai_p50),
        ms(exai_p99),
        ms(floor_p50),
        ms(floor_p99),
        ratio(exai_p99.as_secs_f64(), floor_p99.as_secs_f64())
    )
    .unwrap();
    writeln!(
        out,
        "| authenticated WebSockets established/s, 16 at a time, each token new (JWT check + session open, memory store; floor: plain upgrade) | {exai_conns:.0} | {floor_conns:.0} | {} | ≥ 5,000/s |",
        ratio(exai_conns, floor_conns)
    )
    .unwrap();
    writeln!(
        out,
        "| daemon memory per idle authenticated WebSocket, {IDLE} open (KiB; daemon RSS then {:.0} MiB) | {per_connection:.1} | — | — | ≤ 16 KiB |",
        total as f64 / 1024.0
    )
    .unwrap();
    writeln!(
        out,
        "| daemon memory per idle Streamable HTTP session (initialized, never deleted), {IDLE_HTTP} open (KiB; daemon RSS then {:.0} MiB) | {per_session:.1} | — | — | ≤ 16 KiB |",
        http_total as f64 / 1024.0
    )
    .unwrap();
    writeln!(
        out,
        "| `tools/call` round trips/s over Streamable HTTP, {CONNECTIONS} sessions, median of {ROUNDS} alternated runs (floor: axum POST echo; daemon: {DAEMON_SETTINGS}) | {http_rate:.0} | {http_floor_rate:.0} | {} | — |",
        ratio(http_rate, http_floor_rate)
    )
    .unwrap();
}
