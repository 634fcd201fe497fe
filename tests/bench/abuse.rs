//! The abuse run, for `RELIABILITY.md`: each attack of the "hold under
//! abuse" issue, scripted against a release `exai-daemon` process with
//! default settings, reporting what the attacker got, the daemon's
//! resident size before, at its peak during, and after the attack, and
//! whether another user (the bystander, calling `whoami` every 20 ms on a
//! connection of their own) was served meanwhile.
//!
//! Attack 12 (refusals as costly as answers) is `cargo xtask bench
//! fairness`, in `BENCHMARKS.md`.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use exai_tests::{claims, sign, token, try_connect_with};
use futures::future::join_all;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use exai_tests::DaemonProcess;

use crate::transport::{connect, daemon_binary, rss_kib};

/// What one attack came to.
struct Row {
    attack: &'static str,
    outcome: String,
    rss_kib: [u64; 3],
    bystander: Bystanding,
}

/// What the bystander saw during an attack.
#[derive(Default)]
struct Bystanding {
    served: u64,
    failed: u64,
    slowest: Duration,
}

/// Runs `attack` against `daemon` while the bystander calls and the
/// daemon's memory is sampled.
async fn measure<F: Future<Output = String>>(
    daemon: &DaemonProcess,
    attack: &'static str,
    run: F,
) -> Row {
    let before = rss_kib(daemon.pid);
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(before));
    let sampler = {
        let (stop, peak, pid) = (stop.clone(), peak.clone(), daemon.pid);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let bystander = {
        let (stop, url) = (stop.clone(), daemon.url.clone());
        let mut client = connect(&url, &token("bystander@example.com"), true).await;
        tokio::spawn(async move {
            let mut seen = Bystanding::default();
            let mut id = 0;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                let started = Instant::now();
                let answer = tokio::time::timeout(Duration::from_secs(5), client.whoami(id)).await;
                seen.slowest = seen.slowest.max(started.elapsed());
                match answer {
                    Ok(who) if who["email"] == "bystander@example.com" => seen.served += 1,
                    _ => {
                        seen.failed += 1;
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        })
    };
    let outcome = run.await;
    stop.store(true, Ordering::Relaxed);
    let bystander = bystander.await.unwrap_or_default();
    let _ = sampler.await;
    // What the daemon still holds once the attack is over.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(daemon.pid);
    Row {
        attack,
        outcome,
        rss_kib: [before, peak.load(Ordering::Relaxed), after],
        bystander,
    }
}

/// `host:port` of a daemon's `ws://…/mcp` URL.
fn address(url: &str) -> String {
    url.trim_start_matches("ws://")
        .trim_end_matches("/mcp")
        .to_owned()
}

/// Attack 1: connections that send half a request line and stop.
async fn half_requests(daemon: &DaemonProcess) -> String {
    const SOCKETS: usize = 1_100;
    let address = address(&daemon.url);
    let started = Instant::now();
    let sockets = join_all((0..SOCKETS).map(|_| {
        let address = address.clone();
        async move {
            let mut socket = TcpStream::connect(&address).await.ok()?;
            socket.set_nodelay(true).ok()?;
            socket.write_all(b"GET /mcp HT").await.ok()?;
            let mut rest = [0u8; 64];
            // Closed by the daemon: end of stream or a reset.
            let closed =
                tokio::time::timeout(Duration::from_secs(20), socket.read(&mut rest)).await;
            matches!(closed, Ok(Ok(0) | Err(_))).then(|| started.elapsed())
        }
    }))
    .await;
    let closed: Vec<Duration> = sockets.into_iter().flatten().collect();
    let last = closed.iter().max().copied().unwrap_or_default();
    format!(
        "{} of {SOCKETS} closed by the daemon, the last after {:.1} s",
        closed.len(),
        last.as_secs_f64()
    )
}

/// Upgrades a raw socket as the legacy shims do (no credential).
async fn legacy_socket(address: &str) -> Option<TcpStream> {
    let mut socket = TcpStream::connect(address).await.ok()?;
    socket.set_nodelay(true).ok()?;
    let request = format!(
        "GET /mcp HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        socket.read_exact(&mut byte).await.ok()?;
        head.push(byte[0]);
    }
    head.starts_with(b"HTTP/1.1 101").then_some(socket)
}

/// Attack 2: legacy sockets, each sending one 32 MiB text frame before any
/// `hello`. The frame is written raw (zero mask) from one shared buffer,
/// so the attacker's memory is not what is measured.
async fn huge_frames_before_hello(daemon: &DaemonProcess) -> String {
    const SOCKETS: usize = 96;
    const LENGTH: usize = 32 << 20;
    let mut payload = br#"{"op": "hello", "jwt": ""#.to_vec();
    payload.resize(LENGTH, b'x');
    let payload = Arc::new(payload);
    let address = address(&daemon.url);
    let results = join_all((0..SOCKETS).map(|_| {
        let (address, payload) = (address.clone(), payload.clone());
        async move {
            let mut socket = legacy_socket(&address).await?;
            let mut header = vec![0x81, 0x80 | 127];
            header.extend_from_slice(&(LENGTH as u64).to_be_bytes());
            header.extend_from_slice(&[0, 0, 0, 0]);
            let (mut read, mut write) = socket.split();
            let send = async {
                write.write_all(&header).await?;
                for chunk in payload.chunks(64 << 10) {
                    write.write_all(chunk).await?;
                }
                Ok::<_, std::io::Error>(())
            };
            let receive = async {
                let mut got = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(20), read.read_to_end(&mut got)).await;
                got
            };
            let (_, got) = tokio::join!(send, receive);
            let refused = got.windows(15).any(|w| w == b"hello too large");
            let closed_1009 = got.windows(2).any(|w| w == [0x03, 0xf1]);
            Some(refused && closed_1009)
        }
    }))
    .await;
    let refused = results.iter().filter(|r| **r == Some(true)).count();
    let unopened = results.iter().filter(|r| r.is_none()).count();
    format!(
        "{refused} of {SOCKETS} answered `hello too large` and closed with 1009; \
         {unopened} closed before their upgrade (one address's unauthenticated cap)"
    )
}

/// Posts `body` to the daemon's `/mcp` as `token`, in `session`.
async fn post(
    http: &reqwest::Client,
    daemon: &DaemonProcess,
    token: &str,
    session: Option<&str>,
    body: String,
) -> (u16, Option<String>, String) {
    let url = daemon.url.replacen("ws://", "http://", 1);
    let mut request = http
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body);
    if let Some(session) = session {
        request = request
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-03-26");
    }
    let response = request.send().await.expect("the daemon answers");
    let status = response.status().as_u16();
    let id = response
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, id, response.text().await.unwrap_or_default())
}

/// A batch of `members` pings.
fn pings(members: usize) -> String {
    let batch: Vec<Value> = (0..members)
        .map(|id| json!({"jsonrpc": "2.0", "id": id, "method": "ping"}))
        .collect();
    serde_json::to_string(&batch).unwrap()
}

/// The first JSON-RPC error message in `text` (JSON, or an SSE event).
fn error_message(text: &str) -> String {
    let json = text
        .lines()
        .find_map(|l| l.strip_prefix("data:"))
        .unwrap_or(text);
    let value: Value = serde_json::from_str(json.trim()).unwrap_or(Value::Null);
    let error = match &value {
        Value::Array(all) => all.iter().find_map(|m| m.get("error")).cloned(),
        one => one.get("error").cloned(),
    };
    error
        .map(|e| format!("{} {}", e["code"], e["message"].as_str().unwrap_or("")))
        .unwrap_or_else(|| "no error".into())
}

/// Attack 3: a 2025-03-26 HTTP session posts a batch of 100,000 requests.
async fn http_batch(daemon: &DaemonProcess) -> String {
    let http = reqwest::Client::new();
    let user = token("http-batch@example.com");
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-03-26", "capabilities": {},
        "clientInfo": {"name": "abuse", "version": "1"}}});
    let (_, session, _) = post(&http, daemon, &user, None, init.to_string()).await;
    let session = session.expect("a session");
    let done = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    post(&http, daemon, &user, Some(&session), done.to_string()).await;
    let body = pings(100_000);
    let bytes = body.len();
    let started = Instant::now();
    let (status, _, text) = post(&http, daemon, &user, Some(&session), body).await;
    format!(
        "{:.1} MiB batch: HTTP {status} in {:.0} ms, `{}`",
        bytes as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64() * 1e3,
        clip(&error_message(&text))
    )
}

/// Attack 4: one user's five WebSockets each send a 30 MiB batch frame.
async fn websocket_batches(daemon: &DaemonProcess) -> String {
    let user = token("ws-batch@example.com");
    let mut members = 1;
    while pings(members * 2).len() < 30 << 20 {
        members *= 2;
    }
    let frame = pings(members);
    let answers = join_all((0..5).map(|_| {
        let (url, user, frame) = (daemon.url.clone(), user.clone(), frame.clone());
        async move {
            let mut client = connect(&url, &user, false).await;
            client.initialize_as("2025-03-26").await;
            client.send_text(frame).await;
            error_message(&client.recv_json().await.to_string())
        }
    }))
    .await;
    let refused = answers.iter().filter(|a| a.starts_with("-32600")).count();
    format!(
        "{refused} of 5 batches of {members} members ({:.0} MiB) refused whole: `{}`",
        frame.len() as f64 / (1 << 20) as f64,
        clip(&answers[0])
    )
}

/// Attack 5: `chat` with the `echo` model and 8 MiB prompts.
async fn huge_prompts(daemon: &DaemonProcess) -> String {
    let mut client = connect(&daemon.url, &token("prompts@example.com"), true).await;
    let prompt = "p".repeat(8 << 20);
    let mut refused = 0;
    let mut said = String::new();
    for id in 0..12 {
        let answer = client
            .call_tool(id, "chat", json!({"prompt": prompt, "model": "echo"}))
            .await;
        if answer["result"]["isError"] == true {
            refused += 1;
            said = answer["result"]["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
        }
    }
    format!("{refused} of 12 calls refused: `{}`", clip(&said))
}

/// Attack 6: a batch whose members repeat one id.
async fn repeated_ids(daemon: &DaemonProcess) -> String {
    let mut client = connect(&daemon.url, &token("repeats@example.com"), false).await;
    client.initialize_as("2025-03-26").await;
    let ping = json!({"jsonrpc": "2.0", "id": 7, "method": "ping"});
    client
        .send_text(json!([ping, ping, ping]).to_string())
        .await;
    let answer = client.recv_json().await;
    let answers = answer.as_array().map_or(0, Vec::len);
    let refused = answer
        .as_array()
        .map_or(0, |a| a.iter().filter(|m| m.get("error").is_some()).count());
    format!("answered at once: {answers} answers, {refused} of them -32600 for the repeats")
}

/// Attack 7: a page on another origin opens a WebSocket to a single-user
/// daemon without a token.
async fn other_origin() -> String {
    let daemon =
        DaemonProcess::start(&daemon_binary(), &[("MCP_ENABLE_MULTI_USER", "false")]).await;
    let refused = try_connect_with(&daemon.url, &[("origin", "http://evil.example")]).await;
    let own = format!("http://{}", address(&daemon.url));
    let same_origin = try_connect_with(&daemon.url, &[("origin", &own)]).await;
    daemon.stop().await;
    format!(
        "single-user daemon, no token: another origin {}; its own origin {}",
        match refused {
            Err(refused) => format!("refused with {}", refused.status),
            Ok(_) => "SERVED".into(),
        },
        if same_origin.is_ok() {
            "served"
        } else {
            "refused"
        }
    )
}

/// Attack 8: an HTTP GET stream kept open past its token's `exp`.
async fn stream_past_expiry(daemon: &DaemonProcess) -> String {
    let http = reqwest::Client::new();
    let mut short = claims("expiring@example.com");
    short["exp"] = json!(exai_tests::now() + 3);
    let short = sign(&short);
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "abuse", "version": "1"}}});
    let (_, session, _) = post(&http, daemon, &short, None, init.to_string()).await;
    let session = session.expect("a session");
    let url = daemon.url.replacen("ws://", "http://", 1);
    let started = Instant::now();
    let stream = http
        .get(url)
        .bearer_auth(&short)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .expect("the stream opens");
    let status = stream.status().as_u16();
    let ended = tokio::time::timeout(Duration::from_secs(60), stream.bytes()).await;
    format!(
        "GET stream (HTTP {status}) of a token expiring 3 s after it opened: {}",
        match ended {
            Ok(_) => format!("ended after {:.1} s", started.elapsed().as_secs_f64()),
            Err(_) => "STILL OPEN after 60 s".into(),
        }
    )
}

/// Attack 9: `auth/refresh` as a WebSocket notification and as an HTTP
/// request, with the daemon logging everything (`RUST_LOG=trace`).
async fn refresh_in_logs() -> String {
    let daemon = DaemonProcess::start(&daemon_binary(), &[("RUST_LOG", "trace")]).await;
    let user = token("logged@example.com");
    let mut fresh = claims("logged@example.com");
    fresh["session_id"] = json!("11111111-2222-4333-8444-555555555555");
    let secret_ws = sign(&fresh);
    fresh["session_id"] = json!("11111111-2222-4333-8444-666666666666");
    let secret_http = sign(&fresh);
    let mut client = connect(&daemon.url, &user, true).await;
    let refresh =
        json!({"jsonrpc": "2.0", "method": "auth/refresh", "params": {"token": secret_ws}});
    client.send_text(refresh.to_string()).await;
    // The connection goes on.
    let served = client.whoami(1).await["email"] == "logged@example.com";
    let http = reqwest::Client::new();
    let refresh = json!({"jsonrpc": "2.0", "id": 1, "method": "auth/refresh", "params": {"token": secret_http}});
    let (status, _, _) = post(&http, &daemon, &user, None, refresh.to_string()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = daemon.log();
    let lines = log.lines().count();
    let leaked = [&secret_ws, &secret_http]
        .iter()
        .filter(|secret| {
            let signature = secret.rsplit('.').next().unwrap_or(secret);
            log.contains(signature)
        })
        .count();
    daemon.stop().await;
    format!(
        "connection {}; HTTP refresh answered {status}; {leaked} of 2 tokens in {lines} trace-level log lines",
        if served { "served after it" } else { "BROKEN" }
    )
}

/// Attack 10: a token whose `exp` is 1e300.
async fn absurd_expiry(daemon: &DaemonProcess) -> String {
    let mut absurd = claims("absurd@example.com");
    absurd["exp"] = json!(1e300);
    let mut client = connect(&daemon.url, &sign(&absurd), true).await;
    let served = client.whoami(1).await["email"] == "absurd@example.com";
    if served {
        "connection opened and served".into()
    } else {
        "NOT SERVED".into()
    }
}

/// Attack 11: messages over `EXAI_WS_MAX_BYTES` (32 MiB).
async fn over_the_cap(daemon: &DaemonProcess) -> String {
    let too_big: Arc<str> = "x".repeat(33 << 20).into();
    let mut received = 0;
    for _ in 0..5 {
        let mut client = connect(&daemon.url, &token("big@example.com"), true).await;
        client
            .send_frame(Message::Text(too_big.as_ref().into()))
            .await;
        if client
            .recv_close()
            .await
            .is_some_and(|f| u16::from(f.code) == 1009)
        {
            received += 1;
        }
    }
    format!("a 33 MiB message, 5 times: the 1009 close frame received {received} times")
}

fn clip(text: &str) -> String {
    let text = text.replace('|', "/").replace('\n', " ");
    match text.char_indices().nth(100) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

pub(crate) async fn run() {
    // Default settings but for the per-minute rate limit, which would
    // refuse the bystander's call every 20 ms after its first minute.
    let daemon = DaemonProcess::start(&daemon_binary(), &[("EXAI_USER_RPM", "0")]).await;
    let mut rows = Vec::new();
    rows.push(
        measure(
            &daemon,
            "1. 1,100 half request lines",
            half_requests(&daemon),
        )
        .await,
    );
    rows.push(
        measure(
            &daemon,
            "2. 96 legacy sockets × 32 MiB before `hello`",
            huge_frames_before_hello(&daemon),
        )
        .await,
    );
    rows.push(measure(&daemon, "3. HTTP batch of 100,000", http_batch(&daemon)).await);
    rows.push(
        measure(
            &daemon,
            "4. 5 WebSockets × 30 MiB batch",
            websocket_batches(&daemon),
        )
        .await,
    );
    rows.push(measure(&daemon, "5. 12 `chat` calls × 8 MiB", huge_prompts(&daemon)).await);
    rows.push(measure(&daemon, "6. batch repeating an id", repeated_ids(&daemon)).await);
    rows.push(
        measure(
            &daemon,
            "7. WebSocket from another origin (a single-user daemon of its own)",
            other_origin(),
        )
        .await,
    );
    rows.push(
        measure(
            &daemon,
            "8. GET stream past `exp`",
            stream_past_expiry(&daemon),
        )
        .await,
    );
    rows.push(
        measure(
            &daemon,
            "9. `auth/refresh` in the logs (a trace-level daemon of its own)",
            refresh_in_logs(),
        )
        .await,
    );
    rows.push(measure(&daemon, "10. `exp` of 1e300", absurd_expiry(&daemon)).await);
    rows.push(measure(&daemon, "11. message over the cap", over_the_cap(&daemon)).await);
    daemon.stop().await;

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "A release daemon, memory store, echo model, default settings but \
         `EXAI_USER_RPM=0`. Throughout each attack a bystander (another user, \
         its own WebSocket) calls `whoami` every 20 ms with a 5 s deadline; \
         RSS is sampled every 50 ms, and once more a second after the attack.\n"
    )
    .unwrap();
    writeln!(
        out,
        "| attack | what the attacker got | daemon RSS before / peak / after, MiB | bystander: served, failed, slowest |"
    )
    .unwrap();
    writeln!(out, "|---|---|---|---|").unwrap();
    let mib = |kib: u64| kib as f64 / 1024.0;
    for row in rows {
        let [before, peak, after] = row.rss_kib;
        writeln!(
            out,
            "| {} | {} | {:.0} / {:.0} / {:.0} | {}, {}, {:.0} ms |",
            row.attack,
            row.outcome,
            mib(before),
            mib(peak),
            mib(after),
            row.bystander.served,
            row.bystander.failed,
            row.bystander.slowest.as_secs_f64() * 1e3
        )
        .unwrap();
    }
    writeln!(
        out,
        "| 12. refused flood beside another user | see `cargo xtask bench fairness` in BENCHMARKS.md | — | — |"
    )
    .unwrap();
}
