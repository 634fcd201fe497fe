//! The schema itself: migrations apply once and are idempotent, also over a
//! table created by hand from the plan; and Row Level Security, checked in
//! SQL as the API roles (`authenticated` with a user's claims, `anon`) exactly
//! as PostgREST would run a user's request.

use exai_auth::UserId;
use exai_sessions::{MIGRATIONS, MigrationOutcome, PostgresConfig, PostgresStore};
use exai_tests::{TestPostgres, pg_client};
use tokio_postgres::Client;

async fn migrated(server: &TestPostgres) -> PostgresStore {
    let store = PostgresStore::new(&server.url, PostgresConfig::default()).unwrap();
    store.migrate().await.unwrap();
    store
}

#[tokio::test]
async fn migrations_apply_once() {
    let server = TestPostgres::start();
    let store = PostgresStore::new(&server.url, PostgresConfig::default()).unwrap();
    let first = store.migrate().await.unwrap();
    assert_eq!(first.len(), MIGRATIONS.len());
    assert!(
        first
            .iter()
            .all(|o| matches!(o, MigrationOutcome::Applied(_)))
    );
    let second = store.migrate().await.unwrap();
    assert!(
        second
            .iter()
            .all(|o| matches!(o, MigrationOutcome::AlreadyApplied(_)))
    );
}

#[tokio::test]
async fn migrations_apply_over_the_plans_hand_made_table() {
    let server = TestPostgres::start();
    let db = pg_client(&server.url).await;
    // What a project following the plan already has: Supabase's auth schema
    // and roles (here from our bootstrap), then the plan's table and policies
    // typed into the SQL editor.
    db.batch_execute(MIGRATIONS[0].1).await.unwrap();
    db.batch_execute(
        r#"
        CREATE TABLE mcp_sessions (
          id UUID DEFAULT gen_random_uuid() PRIMARY KEY,
          user_id UUID REFERENCES auth.users(id) ON DELETE CASCADE,
          session_id VARCHAR(255) UNIQUE NOT NULL,
          created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
          last_active TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
          connection_status VARCHAR(50) DEFAULT 'disconnected',
          metadata JSONB DEFAULT '{}'::jsonb
        );
        CREATE INDEX idx_mcp_sessions_user_id ON mcp_sessions(user_id);
        CREATE INDEX idx_mcp_sessions_session_id ON mcp_sessions(session_id);
        ALTER TABLE mcp_sessions ENABLE ROW LEVEL SECURITY;
        CREATE POLICY "Users can view own sessions" ON mcp_sessions
          FOR SELECT USING (auth.uid() = user_id);
        CREATE POLICY "Users can insert own sessions" ON mcp_sessions
          FOR INSERT WITH CHECK (auth.uid() = user_id);
        CREATE POLICY "Users can update own sessions" ON mcp_sessions
          FOR UPDATE USING (auth.uid() = user_id);
        "#,
    )
    .await
    .unwrap();
    let store = migrated(&server).await;
    store.check().await.unwrap();
    let policies: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_policies WHERE tablename = 'mcp_sessions'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(policies, 3, "the hand-made policies are kept, not doubled");
    // The plan's policies let a user write their own rows; migrated, they
    // admit nothing, and the plan's grants are gone.
    let user = UserId::from_email("plan@example.com");
    db.execute(
        "INSERT INTO auth.users (id, email) VALUES ($1, 'plan@example.com')",
        &[&user.as_uuid()],
    )
    .await
    .unwrap();
    let mut db = db;
    assert_user_writes_are_refused(&mut db, user).await;
    for role in ["authenticated", "anon"] {
        let sub = (role == "authenticated").then_some(user);
        assert_eq!(
            as_role(&mut db, role, sub, "SELECT name FROM exai_migrations")
                .await
                .err()
                .as_deref(),
            Some("42501"),
            "{role} cannot read the migration ledger"
        );
    }
}

/// Every way `user` (as `authenticated`, with their own claims, as
/// PostgREST runs a request) or `anon` might write what the daemon
/// enforces is refused with 42501, while `user` still reads their rows.
async fn assert_user_writes_are_refused(db: &mut Client, user: UserId) {
    db.execute(
        "INSERT INTO mcp_sessions (user_id, session_id, connection_status)
         VALUES ($1, 'own-live', 'connected'), ($1, 'own-killed', 'killed')",
        &[&user.as_uuid()],
    )
    .await
    .unwrap();
    let own = as_role(
        db,
        "authenticated",
        Some(user),
        "SELECT session_id FROM mcp_sessions ORDER BY session_id",
    )
    .await
    .unwrap();
    let own: Vec<String> = own.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        own,
        ["own-killed", "own-live"],
        "a user reads their own rows"
    );
    for (role, forbidden) in [
        // Freeing one's own slots under the cap, or reviving a killed session.
        (
            "authenticated",
            "UPDATE mcp_sessions SET connection_status = 'disconnected' RETURNING 1",
        ),
        (
            "authenticated",
            "UPDATE mcp_sessions SET connection_status = 'disconnected' \
                           WHERE session_id = 'own-killed' RETURNING 1",
        ),
        (
            "authenticated",
            "UPDATE mcp_sessions SET metadata = '{\"x\": 1}' RETURNING 1",
        ),
        // Rows of one's own making (and an oracle for others' session ids).
        (
            "authenticated",
            "INSERT INTO mcp_sessions (user_id, session_id) \
                           VALUES (auth.uid(), 'forged') RETURNING 1",
        ),
        (
            "authenticated",
            "INSERT INTO mcp_sessions (user_id, session_id) \
                           VALUES (auth.uid(), 'own-live') RETURNING 1",
        ),
        ("authenticated", "DELETE FROM mcp_sessions RETURNING 1"),
        ("authenticated", "TRUNCATE mcp_sessions"),
        ("authenticated", "DELETE FROM mcp_api_keys RETURNING 1"),
        ("authenticated", "DELETE FROM mcp_conversations RETURNING 1"),
        ("authenticated", "DELETE FROM mcp_usage RETURNING 1"),
        ("authenticated", "SELECT nextval('mcp_usage_id_seq')"),
        // A budget of one's own (per-user limits over all daemons) or a
        // node's liveness.
        (
            "authenticated",
            "INSERT INTO mcp_user_rates (user_id, tokens, refilled_at) \
                           VALUES (auth.uid(), 1e9, now()) RETURNING 1",
        ),
        ("authenticated", "DELETE FROM mcp_user_slots RETURNING 1"),
        ("authenticated", "DELETE FROM mcp_nodes RETURNING 1"),
        (
            "authenticated",
            "SELECT * FROM mcp_lease_budget(gen_random_uuid(), auth.uid(), 10, 10, 8, 8)",
        ),
        (
            "authenticated",
            "SELECT mcp_release_slots(gen_random_uuid(), ARRAY[auth.uid()], ARRAY[8])",
        ),
        // Marking one's sessions idle, or taking them.
        (
            "authenticated",
            "UPDATE mcp_sessions SET idle_since = now() RETURNING 1",
        ),
        (
            "authenticated",
            "SELECT mcp_mark_idle(ARRAY[auth.uid()], ARRAY['own-live'], ARRAY[now()])",
        ),
        ("authenticated", "SELECT mcp_take_idle_session(auth.uid())"),
        (
            "authenticated",
            "SELECT * FROM mcp_ended_sessions(ARRAY['own-live'])",
        ),
        (
            "authenticated",
            "SELECT mcp_describe_sessions(ARRAY[auth.uid()], ARRAY['own-live'], \
                           ARRAY['x'], ARRAY['y'])",
        ),
        // The migration ledger: deleting a row stopped every daemon,
        // inserting a future name skipped that migration.
        (
            "authenticated",
            "INSERT INTO exai_migrations (name) VALUES ('9999_future') RETURNING 1",
        ),
        ("anon", "DELETE FROM exai_migrations RETURNING 1"),
        (
            "anon",
            "INSERT INTO exai_migrations (name) VALUES ('9999_future') RETURNING 1",
        ),
        (
            "anon",
            "UPDATE mcp_sessions SET connection_status = 'disconnected' RETURNING 1",
        ),
    ] {
        let sub = (role == "authenticated").then_some(user);
        assert_eq!(
            as_role(db, role, sub, forbidden).await.err().as_deref(),
            Some("42501"),
            "{role}: {forbidden}"
        );
    }
}

/// A GRANT someone adds later (Supabase's dashboard offers it) does not
/// give users their rows to write: the trigger refuses on its own.
#[tokio::test]
async fn a_later_grant_does_not_let_users_write_sessions() {
    let (_server, mut db) = TestPostgres::migrated(&["granted@example.com"]).await;
    let user = UserId::from_email("granted@example.com");
    db.batch_execute(
        "GRANT ALL ON mcp_sessions, exai_migrations TO authenticated, anon;
         CREATE POLICY \"anything\" ON mcp_sessions FOR ALL USING (true) WITH CHECK (true);
         CREATE POLICY \"anything\" ON exai_migrations FOR ALL USING (true) WITH CHECK (true);",
    )
    .await
    .unwrap();
    assert_user_writes_are_refused(&mut db, user).await;
}

/// Runs `sql` in a transaction as `role` with `sub` as the JWT subject,
/// the way PostgREST runs a request; returns the rows or the SQLSTATE.
async fn as_role(
    db: &mut Client,
    role: &str,
    sub: Option<UserId>,
    sql: &str,
) -> Result<Vec<tokio_postgres::Row>, String> {
    let tx = db.transaction().await.unwrap();
    let claims = serde_json::json!({ "role": role, "sub": sub.map(|s| s.to_string()) });
    tx.execute(
        "SELECT set_config('request.jwt.claims', $1, true)",
        &[&claims.to_string()],
    )
    .await
    .unwrap();
    tx.batch_execute(&format!("SET LOCAL ROLE {role}"))
        .await
        .unwrap();
    let result = tx
        .query(sql, &[])
        .await
        .map_err(|e| e.code().map(|c| c.code().to_owned()).unwrap_or_default());
    tx.rollback().await.unwrap();
    result
}

#[tokio::test]
async fn row_level_security_keeps_users_apart() {
    let (_server, mut db) =
        TestPostgres::migrated(&["rls-a@example.com", "rls-b@example.com"]).await;
    let a = UserId::from_email("rls-a@example.com");
    let b = UserId::from_email("rls-b@example.com");
    for (id, email) in [(a, "rls-a@example.com"), (b, "rls-b@example.com")] {
        db.execute(
            "INSERT INTO mcp_sessions (user_id, session_id, connection_status)
             VALUES ($1, $2, 'connected')",
            &[&id.as_uuid(), &format!("session-of-{email}")],
        )
        .await
        .unwrap();
        db.execute(
            "INSERT INTO mcp_api_keys (key_id, user_id, secret_hash) VALUES ($1, $2, $3)",
            &[&format!("key-of-{email}"), &id.as_uuid(), &vec![7u8; 32]],
        )
        .await
        .unwrap();
        db.execute(
            "SELECT mcp_record_usage($1, $2, 'chat', 'glm', 'glm-4.6', 3, 4, 50, 'ok')",
            &[&id.as_uuid(), &format!("session-of-{email}")],
        )
        .await
        .unwrap();
    }

    let rows = as_role(
        &mut db,
        "authenticated",
        Some(b),
        "SELECT user_id FROM mcp_sessions",
    )
    .await
    .unwrap();
    let owners: Vec<uuid::Uuid> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(owners, [b.as_uuid()], "B sees only B's sessions");

    let insert = format!(
        "INSERT INTO mcp_sessions (user_id, session_id) VALUES ('{a}', 'forged') RETURNING 1"
    );
    assert_eq!(
        as_role(&mut db, "authenticated", Some(b), &insert)
            .await
            .err()
            .as_deref(),
        Some("42501"),
        "B cannot insert a session for A"
    );
    let update = format!(
        "UPDATE mcp_sessions SET connection_status = 'killed' WHERE user_id = '{a}' RETURNING 1"
    );
    assert_eq!(
        as_role(&mut db, "authenticated", Some(b), &update)
            .await
            .err()
            .as_deref(),
        Some("42501"),
        "B cannot update A's row"
    );

    assert_eq!(
        as_role(&mut db, "anon", None, "SELECT 1 FROM mcp_sessions")
            .await
            .err()
            .as_deref(),
        Some("42501"),
        "anon sees nothing"
    );

    let keys = as_role(
        &mut db,
        "authenticated",
        Some(b),
        "SELECT key_id FROM mcp_api_keys",
    )
    .await
    .unwrap();
    let ids: Vec<String> = keys.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, ["key-of-rls-b@example.com"]);
    let usage = as_role(
        &mut db,
        "authenticated",
        Some(b),
        "SELECT user_id, session_id FROM mcp_usage",
    )
    .await
    .unwrap();
    let rows: Vec<(uuid::Uuid, String)> = usage.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        rows,
        [(b.as_uuid(), "session-of-rls-b@example.com".to_owned())],
        "B reads only B's usage"
    );
    assert_eq!(
        as_role(&mut db, "anon", None, "SELECT 1 FROM mcp_usage")
            .await
            .err()
            .as_deref(),
        Some("42501"),
        "anon reads no usage"
    );
    for forbidden in [
        "INSERT INTO mcp_usage (user_id, tool, provider, model, latency_ms, outcome) \
         VALUES (auth.uid(), 'chat', 'glm', 'glm-4.6', 1, 'ok') RETURNING 1",
        "UPDATE mcp_usage SET prompt_tokens = 0 RETURNING 1",
        "DELETE FROM mcp_usage RETURNING 1",
        "SELECT mcp_record_usage(auth.uid(), NULL, 'chat', 'glm', 'glm-4.6', 0, 0, 1, 'ok')",
        "SELECT * FROM mcp_usage_totals(auth.uid())",
        "SELECT mcp_start_conversation(auth.uid(), 'c', ARRAY['user'], ARRAY['x'], 20, 60)",
        "SELECT mcp_append_turns(auth.uid(), 'c', ARRAY['user'], ARRAY['x'], 20, 60)",
        "SELECT secret_hash FROM mcp_api_keys",
        "UPDATE mcp_api_keys SET revoked_at = NULL RETURNING 1",
        "SELECT mcp_open_session(auth.uid(), 'x', 100, '{}')",
        "SELECT mcp_expire_sessions(0)",
    ] {
        assert_eq!(
            as_role(&mut db, "authenticated", Some(b), forbidden)
                .await
                .err()
                .as_deref(),
            Some("42501"),
            "{forbidden}"
        );
    }
}

/// The same rules through the REST API, as a Supabase client calls it with
/// a user's own access token.
#[tokio::test]
async fn the_rest_api_answers_each_user_with_their_own_rows() {
    use exai_tests::{TEST_SECRET, TestPostgrest, token};
    let (server, db) = TestPostgres::migrated(&["rest-a@example.com", "rest-b@example.com"]).await;
    let a = UserId::from_email("rest-a@example.com");
    let b = UserId::from_email("rest-b@example.com");
    for (id, email) in [(a, "rest-a@example.com"), (b, "rest-b@example.com")] {
        db.execute(
            "INSERT INTO mcp_sessions (user_id, session_id, connection_status) VALUES ($1, $2, 'connected')",
            &[&id.as_uuid(), &format!("s-{email}")],
        )
        .await
        .unwrap();
    }
    let rest = TestPostgrest::start(&server.url, TEST_SECRET).await;
    let http = reqwest::Client::new();
    let get = |token: Option<String>, path: &str| {
        let mut request = http.get(format!("{}/rest/v1/{path}", rest.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (status, rows) = get(
        Some(token("rest-b@example.com")),
        "mcp_sessions?select=session_id",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        rows,
        serde_json::json!([{"session_id": "s-rest-b@example.com"}])
    );
    let (status, body) = get(None, "mcp_sessions?select=session_id").await;
    assert_eq!((status, body["code"].as_str()), (401, Some("42501")));

    let rpc = |token: String, args: serde_json::Value| {
        let request = http
            .post(format!("{}/rest/v1/rpc/mcp_open_session", rest.url))
            .bearer_auth(token)
            .json(&args);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap())
        }
    };
    let args = |max: u32| {
        serde_json::json!({"p_user_id": a, "p_session_id": format!("rpc-{max}"),
                           "p_max_connections": max, "p_metadata": {}})
    };
    let (status, _) = rpc(token("rest-b@example.com"), args(5)).await;
    assert_eq!(status, 403, "users cannot call the daemon's functions");
    let service = String::from_utf8(exai_tests::service_role_key().expose().to_vec()).unwrap();
    let (status, body) = rpc(service.clone(), args(1)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("PT429")),
        "{body}"
    );
    let (status, body) = rpc(service, args(5)).await;
    assert_eq!(
        (status, body["connection_status"].as_str()),
        (200, Some("connected"))
    );
}
