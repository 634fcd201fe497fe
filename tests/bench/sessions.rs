//! Session store figures, against a throwaway PostgreSQL started here: the
//! in-memory store is the floor for open+close; opens per second with 64
//! concurrent clients; how many writes one busy session costs; and how
//! soon a killed daemon's users are admitted by another.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use exai_auth::{AuthMethod, Principal, Secret, UserId};
use exai_daemon::StoreConfig;
use exai_sessions::{
    MemoryStore, OpenSession, PostgresConfig, PostgresStore, SessionMetadata, SessionStore,
};
use exai_tests::{DaemonProcess, TestDaemon, TestPostgres, connect, pg_client, token, try_connect};
use serde_json::json;

fn request() -> OpenSession {
    OpenSession::new(1_000_000, SessionMetadata::new("websocket", None))
}

/// p50 and p99 of `n` sequential open+close pairs.
async fn open_close(store: &dyn SessionStore, user: &Principal, n: usize) -> (Duration, Duration) {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let session = store.open(user, request()).await.unwrap();
        store.close(user, &session.session_id).await.unwrap();
        times.push(start.elapsed());
    }
    times.sort();
    (times[n / 2], times[n * 99 / 100])
}

/// Opens (each followed by its close) per second, `clients` at once.
async fn opens_per_second(store: Arc<dyn SessionStore>, users: &[Principal], run: Duration) -> f64 {
    let deadline = Instant::now() + run;
    let tasks = users.iter().cloned().map(|user| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut opened = 0u64;
            while Instant::now() < deadline {
                let session = store.open(&user, request()).await.unwrap();
                store.close(&user, &session.session_id).await.unwrap();
                opened += 1;
            }
            opened
        })
    });
    let total: u64 = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .sum();
    total as f64 / run.as_secs_f64()
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

pub(crate) async fn run() {
    let mut out = std::io::stdout().lock();
    let server = TestPostgres::start();
    let postgres = Arc::new(PostgresStore::new(&server.url, PostgresConfig::default()).unwrap());
    postgres.migrate().await.unwrap();
    let db = pg_client(&server.url).await;
    let users: Vec<Principal> = (0..64)
        .map(|i| {
            Principal::new(
                UserId::from_email(&format!("bench{i}@example.com")),
                AuthMethod::Jwt,
            )
        })
        .collect();
    for (i, user) in users.iter().enumerate() {
        db.execute(
            "INSERT INTO auth.users (id, email) VALUES ($1, $2)",
            &[&user.user_id.as_uuid(), &format!("bench{i}@example.com")],
        )
        .await
        .unwrap();
    }
    let memory = Arc::new(MemoryStore::new());
    let (mem_p50, mem_p99) = open_close(memory.as_ref(), &users[0], 2000).await;
    let (pg_p50, pg_p99) = open_close(postgres.as_ref(), &users[0], 2000).await;
    writeln!(out, "| what | PostgreSQL | floor: memory store | target |").unwrap();
    writeln!(out, "|---|---|---|---|").unwrap();
    writeln!(
        out,
        "| open+close, one client: p50 / p99 ms | {} / {} | {} / {} | p50 ≤ 2 ms |",
        ms(pg_p50),
        ms(pg_p99),
        ms(mem_p50),
        ms(mem_p99)
    )
    .unwrap();
    let run = Duration::from_secs(5);
    let pg_rate = opens_per_second(postgres.clone(), &users, run).await;
    let mem_rate = opens_per_second(memory.clone(), &users, run).await;
    writeln!(
        out,
        "| opens/s (each with its close), 64 clients, 64 users | {pg_rate:.0} | {mem_rate:.0} | — |"
    )
    .unwrap();

    // One session, 100 requests/s for a minute, through the real daemon.
    let email = "busy@example.com";
    db.execute(
        "INSERT INTO auth.users (id, email) VALUES ($1, $2)",
        &[&UserId::from_email(email).as_uuid(), &email],
    )
    .await
    .unwrap();
    let daemon = TestDaemon::start_with(|c| {
        c.store = StoreConfig::Postgres {
            url: Secret::new(server.url.as_bytes().to_vec()),
            config: PostgresConfig::default(),
        };
    })
    .await;
    let mut client = daemon.connect_initialized(&token(email)).await;
    let session = client.whoami(0).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Every update of this session's row, counted by a trigger (table
    // statistics are flushed too lazily to count with).
    db.batch_execute(&format!(
        "CREATE TABLE bench_writes (at timestamptz DEFAULT now(), query text);
         CREATE FUNCTION bench_count() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO bench_writes (query) VALUES (current_query()); RETURN NEW; END $$;
         CREATE TRIGGER bench_count AFTER UPDATE ON mcp_sessions FOR EACH ROW
           WHEN (NEW.session_id = '{session}') EXECUTE FUNCTION bench_count();
         CREATE TABLE bench_beats (at timestamptz DEFAULT now());
         CREATE FUNCTION bench_beat() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO bench_beats DEFAULT VALUES; RETURN NEW; END $$;
         CREATE TRIGGER bench_beat AFTER UPDATE ON mcp_nodes FOR EACH ROW
           EXECUTE FUNCTION bench_beat();"
    ))
    .await
    .unwrap();
    let minute = Duration::from_secs(60);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while start.elapsed() < minute {
        tick.tick().await;
        let pong = client.request(json!(sent), "ping", json!({})).await;
        assert_eq!(pong["result"], json!({}));
        sent += 1;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes: i64 = db
        .query_one("SELECT count(*) FROM bench_writes", &[])
        .await
        .unwrap()
        .get(0);
    let beats: i64 = db
        .query_one("SELECT count(*) FROM bench_beats", &[])
        .await
        .unwrap()
        .get(0);
    writeln!(
        out,
        "| row writes for one session in one minute at {:.0} requests/s | {writes} | — | ≤ 2 |",
        sent as f64 / start.elapsed().as_secs_f64()
    )
    .unwrap();
    writeln!(
        out,
        "| the daemon's heartbeats in that minute (each one statement, carrying the due activity; per daemon, whatever its sessions) | {beats} | — | — |"
    )
    .unwrap();
    daemon.stop().await;

    let (latency, timeout) = reap_latency(&server.url, &db).await;
    writeln!(
        out,
        "| a user at the cap on a daemon killed with SIGKILL, admitted by another daemon after | {:.1} s (EXAI_NODE_TIMEOUT {timeout} s) | — | ≤ 60 s |",
        latency.as_secs_f64()
    )
    .unwrap();
}

/// Two release daemons on `url`'s database with default settings; a user
/// holds the cap (5) on the first, which is killed; how long until the
/// second admits that user (polled every 100 ms, each refusal a 429).
async fn reap_latency(url: &str, db: &tokio_postgres::Client) -> (Duration, u64) {
    const EMAIL: &str = "reaped@example.com";
    const TIMEOUT: u64 = 30;
    db.execute(
        "INSERT INTO auth.users (id, email) VALUES ($1, $2)",
        &[&UserId::from_email(EMAIL).as_uuid(), &EMAIL],
    )
    .await
    .unwrap();
    let env = [("EXAI_SESSION_STORE", "postgres"), ("DATABASE_URL", url)];
    let binary = crate::transport::daemon_binary();
    let first = DaemonProcess::start(&binary, &env).await;
    let second = DaemonProcess::start(&binary, &env).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(connect(&first.url, &token(EMAIL)).await);
    }
    let refused = try_connect(&second.url, Some(&token(EMAIL))).await.err();
    assert_eq!(refused.map(|r| r.status), Some(429), "at the cap");
    first.signal("KILL");
    let killed = Instant::now();
    let admitted = loop {
        match try_connect(&second.url, Some(&token(EMAIL))).await {
            Ok(_) => break killed.elapsed(),
            Err(refused) => assert_eq!(refused.status, 429, "{refused:?}"),
        }
        assert!(
            killed.elapsed() < Duration::from_secs(120),
            "never admitted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(held);
    first.stop().await;
    second.stop().await;
    (admitted, TIMEOUT)
}
