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
    daemon.stop().await;
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
