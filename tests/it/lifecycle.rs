//! Sessions over time: resuming one's own session with `Mcp-Session-Id`,
//! idle sessions expiring (4408), and a database outage that loses nothing.

use std::time::Duration;

use exai_tests::{TestDaemon, TestPostgres, pg_client, token, try_connect_with};
use serde_json::json;

async fn connect_resuming(
    daemon: &TestDaemon,
    token: &str,
    session: &str,
) -> Result<exai_tests::Client, u16> {
    let bearer = format!("Bearer {token}");
    try_connect_with(
        &daemon.url,
        &[("authorization", &bearer), ("mcp-session-id", session)],
    )
    .await
    .map_err(|refused| refused.status)
}

#[tokio::test]
async fn a_user_resumes_their_own_session_and_nobody_else_can() {
    let daemon = TestDaemon::start().await;
    let jazeel = token("jazeel@example.com");
    let mut first = daemon.connect_initialized(&jazeel).await;
    let session = first.whoami(1).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    first.close().await;

    // Another user's token with this id is answered like an unknown id.
    let michelle = token("michelle@example.com");
    assert_eq!(
        connect_resuming(&daemon, &michelle, &session).await.err(),
        Some(404)
    );
    assert_eq!(
        connect_resuming(&daemon, &jazeel, "00000000-0000-4000-8000-000000000000")
            .await
            .err(),
        Some(404)
    );

    let mut resumed = None;
    for _ in 0..100 {
        match connect_resuming(&daemon, &jazeel, &session).await {
            Ok(client) => {
                resumed = Some(client);
                break;
            }
            // The close may not be recorded yet: the session is still attached.
            Err(409) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(other) => panic!("resume refused with {other}"),
        }
    }
    let mut resumed = resumed.expect("resumed");
    resumed.initialize().await;
    assert_eq!(resumed.whoami(2).await["session_id"], session);
    // A session attached elsewhere cannot be taken over.
    assert_eq!(
        connect_resuming(&daemon, &jazeel, &session).await.err(),
        Some(409)
    );
    daemon.stop().await;
}

#[tokio::test]
async fn idle_sessions_expire_and_active_ones_do_not() {
    let daemon = TestDaemon::start_with(|c| {
        c.edge.session_timeout = Duration::from_secs(2);
        c.edge.activity_flush = Duration::from_millis(200);
    })
    .await;
    idle_expiry(daemon).await;
}

/// The same on PostgreSQL, where the expiry is `mcp_expire_idle_sessions`
/// and activity reaches the rows in batches: the idle row reads `expired`,
/// the active one `connected`.
#[tokio::test]
async fn idle_sessions_expire_and_active_ones_do_not_on_postgres() {
    let (server, db) = TestPostgres::migrated(&["jazeel@example.com"]).await;
    let daemon = TestDaemon::start_with(|c| {
        c.edge.session_timeout = Duration::from_secs(2);
        c.edge.activity_flush = Duration::from_millis(200);
        c.store = server.store_config(Duration::from_secs(2));
    })
    .await;
    let (idle, active) = idle_expiry(daemon).await;
    let status = |session: String| {
        let db = &db;
        async move {
            db.query_one(
                "SELECT connection_status FROM public.mcp_sessions WHERE session_id = $1",
                &[&session],
            )
            .await
            .unwrap()
            .get::<_, String>(0)
        }
    };
    assert_eq!(status(idle).await, "expired");
    assert_eq!(status(active).await, "disconnected", "closed at the stop");
}

/// Runs the expiry scenario on `daemon`; returns the idle and the active
/// session's ids.
async fn idle_expiry(daemon: TestDaemon) -> (String, String) {
    let jazeel = token("jazeel@example.com");
    let mut idle = daemon.connect_initialized(&jazeel).await;
    let idle_session = idle.whoami(1).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut active = daemon.connect_initialized(&jazeel).await;

    let keep_busy = async {
        for id in 0..20 {
            let pong = active.request(json!(id), "ping", json!({})).await;
            assert_eq!(pong["result"], json!({}));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        active
    };
    let (frame, mut active) = tokio::join!(idle.recv_close(), keep_busy);
    let frame = frame.expect("a close frame");
    assert_eq!(u16::from(frame.code), 4408);
    assert_eq!(frame.reason.as_str(), "session timed out");
    assert_eq!(
        active.whoami(99).await["email"],
        "jazeel@example.com",
        "the active one lives"
    );
    // An expired session cannot be resumed.
    assert_eq!(
        connect_resuming(&daemon, &jazeel, &idle_session)
            .await
            .err(),
        Some(404)
    );
    let active_session = active.whoami(100).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    daemon.stop().await;
    (idle_session, active_session)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_refuses_new_sessions_serves_open_ones_and_loses_nothing() {
    let email = "outage@example.com";
    let (server, db) = TestPostgres::migrated(&[email]).await;
    drop(db);
    let daemon = TestDaemon::start_with(|c| {
        c.store = server.store_config(Duration::from_secs(2));
        c.edge.activity_flush = Duration::from_millis(200);
    })
    .await;
    let user = token(email);
    let mut open = daemon.connect_initialized(&user).await;
    let session = open.whoami(1).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();

    server.halt();
    let refused = daemon
        .try_connect(Some(&user))
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.status, 503);
    assert_eq!(refused.body.trim_end(), "session store unavailable");
    assert_eq!(
        open.whoami(2).await["email"],
        email,
        "open connections keep serving"
    );
    open.close().await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    server.resume();
    let db = pg_client(&server.url).await;
    let mut status = String::new();
    for _ in 0..100 {
        status = db
            .query_one(
                "SELECT connection_status FROM mcp_sessions WHERE session_id = $1",
                &[&session],
            )
            .await
            .unwrap()
            .get(0);
        if status == "disconnected" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status, "disconnected",
        "the close made during the outage is recorded"
    );
    let mut again = daemon.connect_initialized(&user).await;
    assert_eq!(
        again.whoami(3).await["email"],
        email,
        "new sessions once it is back"
    );
    daemon.stop().await;
}

/// Revoking an API key closes the connections it opened (4401, "API key
/// revoked") within a lifecycle tick, and frees their user's slots;
/// another key's connection stays.
#[tokio::test]
async fn revoking_an_api_key_closes_its_connections() {
    use exai_auth::{NewApiKey, UserId};
    let daemon = TestDaemon::start_with(|c| {
        c.edge.activity_flush = Duration::from_millis(100);
        c.edge.max_connections_per_user = 2;
    })
    .await;
    let user = UserId::from_email("keys@example.com");
    let doomed = NewApiKey::generate(user, Some("old laptop".into()), None).unwrap();
    let kept = NewApiKey::generate(user, Some("desktop".into()), None).unwrap();
    for key in [&doomed, &kept] {
        daemon
            .api_keys()
            .insert_api_key(key.record.clone())
            .await
            .unwrap();
    }
    let mut closing = daemon.connect_initialized(&doomed.key).await;
    let mut staying = daemon.connect_initialized(&kept.key).await;
    daemon
        .api_keys()
        .revoke_api_key(&doomed.record.key_id, std::time::SystemTime::now())
        .await
        .unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(5), closing.recv_close())
        .await
        .expect("closed within a few ticks")
        .expect("a close frame");
    assert_eq!(u16::from(frame.code), 4401);
    assert_eq!(frame.reason.as_str(), "API key revoked");
    assert_eq!(staying.whoami(1).await["user_id"], user.to_string());
    // The slot is free again: a second connection fits under the cap of 2.
    let mut again = None;
    for _ in 0..50 {
        match daemon.try_connect(Some(&kept.key)).await {
            Ok(client) => {
                again = Some(client);
                break;
            }
            Err(refused) if refused.status == 429 => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(refused) => panic!("refused with {}", refused.status),
        }
    }
    assert!(again.is_some(), "the revoked connection's slot was freed");
    daemon.stop().await;
}

/// Connections that end abnormally free their user's slot and are
/// recorded disconnected like any other: a TCP reset, a message over the
/// cap (1009) and an expired token (4401).
#[tokio::test]
async fn connections_that_end_abnormally_free_their_slot() {
    use tokio_tungstenite::tungstenite::Message;
    let daemon = TestDaemon::start_with(|c| {
        c.edge.max_connections_per_user = 1;
        c.edge.max_message_bytes = 4096;
    })
    .await;
    let user = token("abrupt@example.com");
    let connected_again = |why: &'static str| {
        let (daemon, user) = (&daemon, user.clone());
        async move {
            for _ in 0..100 {
                match daemon.try_connect(Some(&user)).await {
                    Ok(client) => return client,
                    Err(refused) if refused.status == 429 => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(refused) => panic!("{why}: refused with {}", refused.status),
                }
            }
            panic!("{why}: the slot was never freed");
        }
    };
    // A reset: the socket dropped without a close handshake.
    let mut first = daemon.connect_initialized(&user).await;
    let session = first.whoami(1).await["session_id"].clone();
    drop(first);
    let mut second = connected_again("reset").await;
    second.initialize().await;
    // A message over the cap: 1009.
    second
        .send_frame(Message::Text("x".repeat(8192).into()))
        .await;
    let frame = second.recv_close().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1009);
    drop(second);
    let mut third = connected_again("1009").await;
    third.initialize().await;
    third.close().await;
    // An expired token: 4401 at its exp.
    let mut short = exai_tests::claims("abrupt@example.com");
    short["exp"] = json!(exai_tests::now() + 1);
    let mut expiring = daemon.connect(&exai_tests::sign(&short)).await;
    let frame = tokio::time::timeout(Duration::from_secs(35), expiring.recv_close())
        .await
        .expect("closed at exp")
        .expect("a close frame");
    assert_eq!(u16::from(frame.code), 4401);
    drop(expiring);
    let mut fourth = connected_again("4401").await;
    fourth.initialize().await;
    // The first session was recorded as ended, not left connected.
    let sessions = fourth.call_tool(2, "sessions", json!({})).await;
    let listed = sessions["result"]["structuredContent"]["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("{sessions}"));
    let first_row = listed
        .iter()
        .find(|s| s["session_id"] == session)
        .unwrap_or_else(|| panic!("{sessions}"));
    assert_eq!(first_row["status"], "disconnected", "{first_row}");
    assert_eq!(
        listed.iter().filter(|s| s["status"] == "connected").count(),
        1,
        "only this connection is live: {sessions}"
    );
    daemon.stop().await;
}
