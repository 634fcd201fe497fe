//! Several daemons on one database: a daemon that dies, or stops for a
//! while, never locks its users out. Each daemon here is an `exai-daemon`
//! process of its own, so it can be killed (SIGKILL: no close recorded, no
//! goodbye) or paused (SIGSTOP) as a crash or a long pause would.

use std::time::{Duration, Instant};

use exai_auth::UserId;
use exai_tests::{Client, DaemonProcess, TestPostgres, connect, token, try_connect};
use serde_json::json;
use tokio_postgres::Client as Db;

/// A daemon on `url`'s database: at most two connections per user, and
/// daemons presumed dead after 3 s of silence.
async fn daemon(url: &str) -> DaemonProcess {
    daemon_with(url, &[]).await
}

/// [`daemon`], with more settings.
async fn daemon_with(url: &str, more: &[(&str, &str)]) -> DaemonProcess {
    let mut env = vec![
        ("EXAI_SESSION_STORE", "postgres"),
        ("DATABASE_URL", url),
        ("MCP_MAX_CONNECTIONS_PER_USER", "2"),
        ("EXAI_NODE_TIMEOUT", "3"),
    ];
    env.extend_from_slice(more);
    DaemonProcess::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_exai-daemon")),
        &env,
    )
    .await
}

/// An initialized connection and the session id it was given.
async fn session(url: &str, email: &str) -> (Client, String) {
    let mut client = connect(url, &token(email)).await;
    client.initialize().await;
    let who = client.whoami(1).await;
    let id = who["session_id"].as_str().expect("a session id").to_owned();
    (client, id)
}

async fn status(db: &Db, session: &str) -> String {
    db.query_one(
        "SELECT connection_status FROM mcp_sessions WHERE session_id = $1",
        &[&session],
    )
    .await
    .unwrap()
    .get(0)
}

async fn live(db: &Db, email: &str) -> i64 {
    db.query_one(
        "SELECT count(*) FROM mcp_sessions WHERE user_id = $1 AND connection_status = 'connected'",
        &[&UserId::from_email(email).as_uuid()],
    )
    .await
    .unwrap()
    .get(0)
}

/// Connects to `daemon` as `email` until admitted (429 until then); how
/// long that took.
async fn admitted(daemon: &DaemonProcess, email: &str, within: Duration) -> (Client, Duration) {
    let started = Instant::now();
    loop {
        match try_connect(&daemon.url, Some(&token(email))).await {
            Ok(client) => return (client, started.elapsed()),
            Err(refused) => {
                assert_eq!(refused.status, 429, "{refused:?}");
                assert!(
                    started.elapsed() < within,
                    "still refused after {:?}; the daemon's log:\n{}",
                    started.elapsed(),
                    daemon.log()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test]
async fn a_killed_daemons_users_are_admitted_elsewhere() {
    const EMAIL: &str = "survivor@example.com";
    let (server, db) = TestPostgres::migrated(&[EMAIL]).await;
    let first = daemon(&server.url).await;
    let second = daemon(&server.url).await;
    let (_a, a) = session(&first.url, EMAIL).await;
    let (_b, b) = session(&first.url, EMAIL).await;
    let refused = try_connect(&second.url, Some(&token(EMAIL)))
        .await
        .err()
        .expect("at the cap, on the other daemon too");
    assert_eq!(refused.status, 429);

    first.signal("KILL");
    let (_c, waited) = admitted(&second, EMAIL, Duration::from_secs(60)).await;
    // Not before the node timeout: a silent daemon is given its 3 s.
    assert!(
        waited >= Duration::from_secs(2),
        "admitted after {waited:?}"
    );
    for killed in [&a, &b] {
        assert_eq!(status(&db, killed).await, "disconnected", "{killed}");
    }
    assert_eq!(live(&db, EMAIL).await, 1, "only the new connection counts");
    let reaped: i64 = db
        .query_one(
            "SELECT count(*) FROM mcp_nodes WHERE reaped_at IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(reaped, 1, "the killed daemon's node is marked reaped");
    second.stop().await;
}

#[tokio::test]
async fn a_paused_daemon_comes_back_within_the_cap() {
    const EMAIL: &str = "paused@example.com";
    let (server, db) = TestPostgres::migrated(&[EMAIL]).await;
    let first = daemon(&server.url).await;
    let second = daemon(&server.url).await;
    let (a, a_id) = session(&first.url, EMAIL).await;
    let (b, b_id) = session(&first.url, EMAIL).await;

    first.signal("STOP");
    // Its two sessions are reaped, and the user takes one slot elsewhere.
    let (mut c, _) = admitted(&second, EMAIL, Duration::from_secs(60)).await;
    c.initialize().await;
    assert_eq!(c.whoami(1).await["email"], EMAIL);
    assert_eq!(status(&db, &a_id).await, "disconnected");
    assert_eq!(status(&db, &b_id).await, "disconnected");

    first.signal("CONT");
    // Back, it finds itself reaped: one of its two sessions fits under the
    // cap of 2 beside the new one, the other is closed with 1013.
    let mut kept = Vec::new();
    let mut closed = Vec::new();
    for (mut client, id) in [(a, a_id), (b, b_id)] {
        let outcome = tokio::time::timeout(Duration::from_secs(8), client.recv_close()).await;
        match outcome {
            Ok(frame) => closed.push((id, frame.map(|f| u16::from(f.code)))),
            Err(_) => kept.push((client, id)),
        }
    }
    assert_eq!(closed.len(), 1, "closed: {closed:?}");
    assert_eq!(closed[0].1, Some(1013), "closed: {closed:?}");
    assert_eq!(kept.len(), 1);
    let (mut survivor, survivor_id) = kept.pop().unwrap();
    assert_eq!(
        survivor.whoami(2).await["email"],
        EMAIL,
        "the kept one is served"
    );
    assert_eq!(status(&db, &survivor_id).await, "connected");
    assert_eq!(
        live(&db, EMAIL).await,
        2,
        "the cap holds across both daemons"
    );
    let reaped: Option<std::time::SystemTime> = db
        .query_one(
            "SELECT max(reaped_at) FROM mcp_nodes WHERE reaped_at IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(reaped.is_none(), "the paused node registered again");
    first.stop().await;
    second.stop().await;
}

/// `EXAI_USER_RPM` holds for the user over both daemons: one bucket of 10
/// (a call back every 6 s), plus at most one slice (here one call) per
/// daemon leased just before; each daemon alone would admit as much again.
#[tokio::test]
async fn a_users_rate_holds_across_daemons() {
    const EMAIL: &str = "rate-cluster@example.com";
    let (server, _db) = TestPostgres::migrated(&[EMAIL]).await;
    let rpm = [("EXAI_USER_RPM", "10")];
    let first = daemon_with(&server.url, &rpm).await;
    let second = daemon_with(&server.url, &rpm).await;
    let started = Instant::now();
    // Each connection's whoami is a call already.
    let (mut a, _) = session(&first.url, EMAIL).await;
    let (mut b, _) = session(&second.url, EMAIL).await;
    let (mut admitted, mut refused) = (2usize, 0usize);
    let mut id = 10;
    while started.elapsed() < Duration::from_secs(13) {
        for client in [&mut a, &mut b] {
            id += 1;
            let response = client.call_tool(id, "whoami", json!({})).await;
            if response["result"]["structuredContent"]["email"] == EMAIL {
                admitted += 1;
            } else {
                assert_eq!(response["error"]["code"], -32005, "{response}");
                assert!(response["error"]["data"]["retry_after_ms"].as_u64() > Some(0));
                refused += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refills = (started.elapsed().as_secs_f64() / 6.0).floor() as usize;
    let slack = 2;
    assert!(
        admitted <= 10 + refills + slack,
        "{admitted} calls admitted in {:?} (refused {refused}); one bucket allows {}",
        started.elapsed(),
        10 + refills + slack
    );
    assert!(
        admitted >= 10 + refills.saturating_sub(1),
        "the user gets their rate: {admitted}"
    );
    first.stop().await;
    second.stop().await;
}

/// `EXAI_USER_MAX_INFLIGHT` holds over both daemons: with one call
/// running on the first, the second refuses the next; once it has ended
/// and its slot is given back (within about 3 s), the second admits.
#[tokio::test]
async fn a_users_running_calls_are_counted_across_daemons() {
    const EMAIL: &str = "inflight-cluster@example.com";
    let (server, _db) = TestPostgres::migrated(&[EMAIL]).await;
    let slow = [
        ("EXAI_USER_MAX_INFLIGHT", "1"),
        ("EXAI_USER_RPM", "0"),
        ("EXAI_ECHO_DELAY_MS", "1500"),
    ];
    let first = daemon_with(&server.url, &slow).await;
    let second = daemon_with(&server.url, &slow).await;
    // Each connection's whoami holds the one slot for a moment after it
    // ends (for the user's next call on that daemon), then gives it back.
    let (mut a, _) = session(&first.url, EMAIL).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (mut b, _) = session(&second.url, EMAIL).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let slow_call = a.call_tool(2, "chat", json!({"prompt": "slow"}));
    let other = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        b.call_tool(2, "whoami", json!({})).await
    };
    let (answered, refused) = tokio::join!(slow_call, other);
    assert!(answered.get("result").is_some(), "{answered}");
    assert_eq!(refused["error"]["code"], -32005, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("EXAI_USER_MAX_INFLIGHT"), "{message}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let later = b.whoami(3).await;
    assert_eq!(later["email"], EMAIL, "the slot came back");
    first.stop().await;
    second.stop().await;
}
