//! The daemon on PostgreSQL: connections are tracked in `mcp_sessions`, the
//! per-user limit holds across two daemons sharing one database, and a
//! database that is down or not migrated stops the daemon at start-up.

use std::time::Duration;

use exai_auth::{Secret, UserId};
use exai_daemon::StoreConfig;
use exai_sessions::PostgresConfig;
use exai_tests::{TestDaemon, TestPostgres, token};
use tokio_postgres::Client;

fn postgres(url: &str) -> StoreConfig {
    StoreConfig::Postgres {
        url: Secret::new(url.as_bytes().to_vec()),
        config: PostgresConfig::default(),
    }
}

async fn statuses(db: &Client, email: &str) -> Vec<String> {
    db.query(
        "SELECT connection_status FROM mcp_sessions WHERE user_id = $1 ORDER BY created_at",
        &[&UserId::from_email(email).as_uuid()],
    )
    .await
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect()
}

#[tokio::test]
async fn connections_are_tracked_in_mcp_sessions() {
    let (server, db) =
        TestPostgres::migrated(&["jazeel@example.com", "michelle@example.com"]).await;
    let daemon = TestDaemon::start_with(|c| c.store = postgres(&server.url)).await;
    let mut jazeel = daemon
        .connect_initialized(&token("jazeel@example.com"))
        .await;
    let mut michelle = daemon
        .connect_initialized(&token("michelle@example.com"))
        .await;
    let who = jazeel.whoami(1).await;
    assert_eq!(michelle.whoami(1).await["email"], "michelle@example.com");

    let row = db
        .query_one(
            "SELECT user_id, connection_status, metadata->>'transport' FROM mcp_sessions
              WHERE session_id = $1",
            &[&who["session_id"].as_str().unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, uuid::Uuid>(0),
        UserId::from_email("jazeel@example.com").as_uuid()
    );
    assert_eq!(row.get::<_, String>(1), "connected");
    assert_eq!(row.get::<_, String>(2), "websocket");

    jazeel.close().await;
    let mut closed = Vec::new();
    for _ in 0..100 {
        closed = statuses(&db, "jazeel@example.com").await;
        if closed == ["disconnected"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(closed, ["disconnected"]);
    assert_eq!(statuses(&db, "michelle@example.com").await, ["connected"]);
    daemon.stop().await;
    assert_eq!(
        statuses(&db, "michelle@example.com").await,
        ["disconnected"],
        "shutdown records open sessions as disconnected"
    );
}

#[tokio::test]
async fn the_limit_holds_across_daemons_sharing_a_database() {
    let (server, _db) = TestPostgres::migrated(&["busy@example.com", "other@example.com"]).await;
    let first = TestDaemon::start_with(|c| c.store = postgres(&server.url)).await;
    let second = TestDaemon::start_with(|c| c.store = postgres(&server.url)).await;
    let busy = token("busy@example.com");
    let mut held = Vec::new();
    for daemon in [&first, &second, &first, &second, &first] {
        held.push(daemon.connect(&busy).await);
    }
    for daemon in [&first, &second] {
        let refused = daemon
            .try_connect(Some(&busy))
            .await
            .err()
            .expect("sixth refused");
        assert_eq!(refused.status, 429);
    }
    second.connect(&token("other@example.com")).await;
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn a_database_that_is_down_or_not_migrated_stops_the_start() {
    let server = TestPostgres::start();
    let unmigrated = TestDaemon::try_start_with(|c| c.store = postgres(&server.url)).await;
    let error = unmigrated.err().expect("refused").to_string();
    assert!(
        error.starts_with("the session database is not migrated"),
        "{error}"
    );
    assert!(error.ends_with("run: exai migrate"), "{error}");

    server.halt();
    let down = TestDaemon::try_start_with(|c| c.store = postgres(&server.url)).await;
    let error = down.err().expect("refused");
    assert_eq!(error.to_string(), "could not use the session database");
    let cause = std::error::Error::source(&error).unwrap().to_string();
    assert_eq!(cause, "session store unavailable");
}

/// The same daemon on the supabase store, through the REST API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_on_the_supabase_store() {
    let (server, db) = TestPostgres::migrated(&["rest@example.com"]).await;
    let rest = exai_tests::TestPostgrest::start(&server.url, exai_tests::TEST_SECRET).await;
    let daemon = TestDaemon::start_with(|c| {
        c.store = StoreConfig::Supabase {
            url: rest.url.clone(),
            service_role_key: exai_tests::service_role_key(),
        };
        c.edge.max_connections_per_user = 2;
    })
    .await;
    let user = token("rest@example.com");
    let mut first = daemon.connect_initialized(&user).await;
    let session = first.whoami(1).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let _second = daemon.connect(&user).await;
    let refused = daemon
        .try_connect(Some(&user))
        .await
        .err()
        .expect("third refused");
    assert_eq!(refused.status, 429);
    let status: String = db
        .query_one(
            "SELECT connection_status FROM mcp_sessions WHERE session_id = $1",
            &[&session],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "connected");
    daemon.stop().await;
    assert_eq!(
        statuses(&db, "rest@example.com").await,
        ["disconnected", "disconnected"]
    );
}
