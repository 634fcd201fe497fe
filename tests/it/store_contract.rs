//! The contract every `SessionStore` backend keeps, run against each backend:
//! the in-memory store and PostgreSQL (a throwaway server per test).

use std::sync::Arc;

use exai_auth::{AuthMethod, Principal, UserId};
use std::time::Duration;

use exai_sessions::{
    ConversationId, ConversationLimits, LeaseRequest, MemoryStore, ModelUsage, Node, OpenSession,
    Page, PostgresConfig, PostgresStore, SessionClient, SessionFilter, SessionId, SessionMetadata,
    SessionStatus, SessionStore, StoreError, SupabaseConfig, SupabaseStore, Turn, UsageRecord,
};
use exai_tests::{TestPostgres, TestPostgrest};

fn open_request(limit: u32) -> OpenSession {
    OpenSession::new(
        limit,
        SessionMetadata::new("websocket", Some("127.0.0.1:1".into())),
    )
}

/// A backend under test, and how to make a user it knows.
struct Backend {
    store: Arc<dyn SessionStore>,
    /// Another daemon's store over the same data (another node; the
    /// memory store has one node, so it is the same store).
    second: Arc<dyn SessionStore>,
    database: Option<tokio_postgres::Client>,
}

fn node() -> Node {
    Node::new("contract", "0")
}

impl Backend {
    fn memory() -> Backend {
        let store = Arc::new(MemoryStore::new());
        Backend {
            second: store.clone(),
            store,
            database: None,
        }
    }

    async fn postgres(server: &TestPostgres) -> Backend {
        let store = PostgresStore::new(&server.url, PostgresConfig::default()).unwrap();
        store.migrate().await.unwrap();
        let second = PostgresStore::new(&server.url, PostgresConfig::default()).unwrap();
        Backend {
            store: Arc::new(store.with_node(node())),
            second: Arc::new(second.with_node(node())),
            database: Some(exai_tests::pg_client(&server.url).await),
        }
    }

    /// The supabase backend, through a PostgREST-protocol server over
    /// `server`, with a service-role key as Supabase issues it.
    async fn supabase(server: &TestPostgres) -> (Backend, TestPostgrest) {
        PostgresStore::new(&server.url, PostgresConfig::default())
            .unwrap()
            .migrate()
            .await
            .unwrap();
        let rest = TestPostgrest::start(&server.url, exai_tests::TEST_SECRET).await;
        let store = || {
            SupabaseStore::new(
                &rest.url,
                exai_tests::service_role_key(),
                SupabaseConfig::default(),
            )
            .with_node(node())
        };
        let backend = Backend {
            store: Arc::new(store()),
            second: Arc::new(store()),
            database: Some(exai_tests::pg_client(&server.url).await),
        };
        (backend, rest)
    }

    /// A principal for `email`, registered where the backend needs it
    /// (PostgreSQL: a row in `auth.users`, as Supabase Auth would have).
    async fn user(&self, email: &str) -> Principal {
        let id = UserId::from_email(email);
        if let Some(db) = &self.database {
            db.execute(
                "INSERT INTO auth.users (id, email) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&id.as_uuid(), &email],
            )
            .await
            .unwrap();
        }
        Principal::new(id, AuthMethod::Jwt).with_email(email)
    }
}

async fn open_close_list(backend: &Backend) {
    let store = &backend.store;
    let a = backend.user("occ-a@example.com").await;
    let first = store.open(&a, open_request(5)).await.unwrap();
    let second = store.open(&a, open_request(5)).await.unwrap();
    assert_eq!(first.status, SessionStatus::Connected);
    assert_eq!(first.user_id, a.user_id);
    assert_eq!(first.metadata.transport, "websocket");
    assert_ne!(first.session_id, second.session_id);
    store.touch(&a, &first.session_id).await.unwrap();
    store.close(&a, &first.session_id).await.unwrap();
    store
        .close(&a, &first.session_id)
        .await
        .expect("closing twice is a no-op");
    let closed = store.get(&a, &first.session_id).await.unwrap();
    assert_eq!(closed.status, SessionStatus::Disconnected);
    assert!(matches!(
        store.touch(&a, &first.session_id).await,
        Err(StoreError::Conflict(SessionStatus::Disconnected))
    ));
    let listed = async |page| -> Vec<SessionId> {
        store
            .list(&a, page)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.session_id)
            .collect()
    };
    assert_eq!(
        listed(Page::default()).await,
        [second.session_id.clone(), first.session_id.clone()],
        "newest first"
    );
    // Bounded, in pages.
    assert_eq!(
        listed(Page::new(1, 0)).await,
        std::slice::from_ref(&second.session_id)
    );
    assert_eq!(
        listed(Page::new(1, 1)).await,
        std::slice::from_ref(&first.session_id)
    );
    assert!(listed(Page::new(1, 2)).await.is_empty());
    let mut filter = SessionFilter::default();
    filter.user = Some(a.user_id);
    filter.page = Page::new(1, 1);
    let mut admin = backend.user("occ-admin@example.com").await;
    admin.role = "service_role".into();
    let paged = store.admin_list(&admin, filter).await.unwrap();
    assert_eq!(
        paged.iter().map(|s| &s.session_id).collect::<Vec<_>>(),
        [&first.session_id],
        "an administrator's list is paged alike"
    );
}

async fn other_users_sessions_look_like_missing_ones(backend: &Backend) {
    let store = &backend.store;
    let a = backend.user("iso-a@example.com").await;
    let b = backend.user("iso-b@example.com").await;
    let a_session = store.open(&a, open_request(5)).await.unwrap().session_id;
    let missing = SessionId::from_client("00000000-0000-4000-8000-000000000000");
    for id in [&a_session, &missing] {
        assert!(matches!(store.get(&b, id).await, Err(StoreError::NotFound)));
        assert!(matches!(
            store.touch(&b, id).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.close(&b, id).await,
            Err(StoreError::NotFound)
        ));
    }
    assert!(store.list(&b, Page::default()).await.unwrap().is_empty());
    assert_eq!(
        store.get(&a, &a_session).await.unwrap().status,
        SessionStatus::Connected
    );
}

async fn limit_holds_under_concurrent_opens(backend: &Backend) {
    let a = backend.user("lim-a@example.com").await;
    let opens = (0..50).map(|_| {
        let store = backend.store.clone();
        let a = a.clone();
        tokio::spawn(async move { store.open(&a, open_request(5)).await })
    });
    let results = futures::future::join_all(opens).await;
    let ok = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    let limited = results
        .iter()
        .filter(|r| matches!(r, Ok(Err(StoreError::LimitReached { limit: 5 }))))
        .count();
    assert_eq!((ok, limited), (5, 45));
    let b = backend.user("lim-b@example.com").await;
    backend
        .store
        .open(&b, open_request(5))
        .await
        .expect("another user is unaffected");
}

async fn resume_own_disconnected_sessions_only(backend: &Backend) {
    let store = &backend.store;
    let a = backend.user("res-a@example.com").await;
    let b = backend.user("res-b@example.com").await;
    let first = store.open(&a, open_request(1)).await.unwrap().session_id;
    let attached = store.resume(&a, &first, 1).await;
    assert!(
        matches!(
            attached,
            Err(StoreError::Conflict(SessionStatus::Connected))
        ),
        "{attached:?}"
    );
    store.close(&a, &first).await.unwrap();
    assert!(matches!(
        store.resume(&b, &first, 5).await,
        Err(StoreError::NotFound)
    ));
    let second = store.open(&a, open_request(1)).await.unwrap().session_id;
    assert!(matches!(
        store.resume(&a, &first, 1).await,
        Err(StoreError::LimitReached { limit: 1 })
    ));
    store.close(&a, &second).await.unwrap();
    let resumed = store.resume(&a, &first, 1).await.unwrap();
    assert_eq!(
        (resumed.session_id, resumed.status),
        (first, SessionStatus::Connected)
    );
}

async fn admins_list_and_kill_users_cannot(backend: &Backend) {
    let store = &backend.store;
    let a = backend.user("adm-a@example.com").await;
    let b = backend.user("adm-b@example.com").await;
    let mut admin = backend.user("adm-admin@example.com").await;
    admin.role = "service_role".into();
    let a_session = store.open(&a, open_request(5)).await.unwrap().session_id;
    store.open(&b, open_request(5)).await.unwrap();
    assert!(matches!(
        store.admin_kill(&b, &a_session).await,
        Err(StoreError::Forbidden)
    ));
    assert!(matches!(
        store.admin_list(&b, SessionFilter::default()).await,
        Err(StoreError::Forbidden)
    ));
    let mut only_a = SessionFilter::default();
    only_a.user = Some(a.user_id);
    only_a.status = Some(SessionStatus::Connected);
    let listed = store.admin_list(&admin, only_a).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].session_id, a_session);
    let killed = store.admin_kill(&admin, &a_session).await.unwrap();
    assert_eq!(killed.status, SessionStatus::Killed);
    store.close(&a, &a_session).await.unwrap();
    assert_eq!(
        store.get(&a, &a_session).await.unwrap().status,
        SessionStatus::Killed
    );
    assert!(matches!(
        store.resume(&a, &a_session, 5).await,
        Err(StoreError::NotFound)
    ));
}

async fn conversations_belong_to_their_user(backend: &Backend) {
    let store = &backend.store;
    let a = backend.user("conv-a@example.com").await;
    let b = backend.user("conv-b@example.com").await;
    let mut limits = ConversationLimits::default();
    limits.max_turns = 3;
    let hi = Turn::new("user", "hi");
    let thread = store
        .create_conversation(&a, std::slice::from_ref(&hi), &limits)
        .await
        .unwrap();
    let exchange = [Turn::new("assistant", "hello"), Turn::new("user", "more")];
    assert_eq!(
        store
            .append_turns(&a, &thread, &exchange, &limits)
            .await
            .unwrap(),
        3
    );
    // Turns go in together or not at all.
    let over = [Turn::new("assistant", "x")];
    assert!(matches!(
        store.append_turns(&a, &thread, &over, &limits).await,
        Err(StoreError::TurnLimit { max: 3 })
    ));
    let too_many = [hi.clone(), hi.clone(), hi.clone(), hi.clone()];
    assert!(matches!(
        store.create_conversation(&a, &too_many, &limits).await,
        Err(StoreError::TurnLimit { max: 3 })
    ));
    let turns = store.read_conversation(&a, &thread, &limits).await.unwrap();
    assert_eq!(
        turns,
        [hi.clone(), exchange[0].clone(), exchange[1].clone()]
    );
    let empty = store.create_conversation(&a, &[], &limits).await.unwrap();
    assert!(
        store
            .read_conversation(&a, &empty, &limits)
            .await
            .unwrap()
            .is_empty()
    );
    let missing = ConversationId::from_client("00000000-0000-4000-8000-000000000000");
    for id in [&thread, &missing] {
        assert!(matches!(
            store.read_conversation(&b, id, &limits).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store
                .append_turns(&b, id, &[Turn::new("user", "x")], &limits)
                .await,
            Err(StoreError::NotFound)
        ));
    }
}

/// Idle sessions expire and stale conversations are gone; activity (a
/// batched touch) keeps a session alive.
async fn time_passes(backend: &Backend) {
    let store = &backend.store;
    let a = backend.user("time-a@example.com").await;
    let active = store.open(&a, open_request(5)).await.unwrap().session_id;
    let idle = store.open(&a, open_request(5)).await.unwrap().session_id;
    store.close(&a, &idle).await.unwrap();
    let mut short = ConversationLimits::default();
    short.timeout = Duration::from_secs(1);
    let thread = store.create_conversation(&a, &[], &short).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    store
        .touch_batch(&[(a.user_id, active.clone())])
        .await
        .unwrap();
    let expired = store.expire_idle(Duration::from_secs(1)).await.unwrap();
    // Expiry is for everyone; of this user's sessions, only the idle one went.
    let ids: Vec<&SessionId> = expired
        .iter()
        .filter(|s| s.user_id == a.user_id)
        .map(|s| &s.session_id)
        .collect();
    assert_eq!(ids, [&idle]);
    assert_eq!(
        store.get(&a, &idle).await.unwrap().status,
        SessionStatus::Expired
    );
    assert_eq!(
        store.get(&a, &active).await.unwrap().status,
        SessionStatus::Connected
    );
    assert!(matches!(
        store.resume(&a, &idle, 5).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.read_conversation(&a, &thread, &short).await,
        Err(StoreError::NotFound)
    ));
}

/// API keys: stored by hash, found by id, revoked, used, listed per user.
async fn api_keys_round_trip(backend: &Backend, keys: &dyn exai_auth::ApiKeyStore) {
    use std::time::SystemTime;
    let a = backend.user("keys-a@example.com").await;
    let b = backend.user("keys-b@example.com").await;
    let mut first = exai_auth::NewApiKey::generate(a.user_id, Some("ci".into()), None).unwrap();
    first.record.expires_at = Some(SystemTime::now() + Duration::from_secs(86_400));
    let second = exai_auth::NewApiKey::generate(a.user_id, None, None).unwrap();
    let other = exai_auth::NewApiKey::generate(b.user_id, None, None).unwrap();
    for key in [&first, &second, &other] {
        keys.insert_api_key(key.record.clone()).await.unwrap();
    }
    let found = keys
        .find_api_key(&first.record.key_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.secret_hash, first.record.secret_hash);
    assert_eq!(found.name.as_deref(), Some("ci"));
    assert_eq!(found.user_id, a.user_id);
    let expiry = |t: Option<SystemTime>| {
        t.map(|t| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs())
    };
    assert_eq!(expiry(found.expires_at), expiry(first.record.expires_at));
    assert!(
        keys.find_api_key("0000000000000000")
            .await
            .unwrap()
            .is_none()
    );
    keys.record_api_key_use(&first.record.key_id, SystemTime::now())
        .await
        .unwrap();
    assert!(
        keys.revoke_api_key(&second.record.key_id, SystemTime::now())
            .await
            .unwrap()
    );
    assert!(
        !keys
            .revoke_api_key("0000000000000000", SystemTime::now())
            .await
            .unwrap()
    );
    let listed = keys.list_api_keys(a.user_id).await.unwrap();
    assert_eq!(listed.len(), 2, "only A's keys");
    let used = listed
        .iter()
        .find(|k| k.key_id == first.record.key_id)
        .unwrap();
    assert!(used.last_used_at.is_some());
    let revoked = listed
        .iter()
        .find(|k| k.key_id == second.record.key_id)
        .unwrap();
    assert!(revoked.revoked_at.is_some());
}

async fn usage_is_counted_per_user_and_model(backend: &Backend) {
    let store = &backend.store;
    let a = backend.user("use-a@example.com").await;
    let b = backend.user("use-b@example.com").await;
    let session = store.open(&a, open_request(5)).await.unwrap().session_id;
    let call = |model: &str, outcome: &str, prompt: u64, completion: u64| {
        UsageRecord::new("chat", "glm", model, outcome)
            .in_session(Some(session.clone()))
            .with_tokens(prompt, completion)
            .with_latency(Duration::from_millis(12))
    };
    store
        .record_usage(&a, call("glm-4.6", "ok", 10, 20))
        .await
        .unwrap();
    store
        .record_usage(&a, call("glm-4.6", "ok", 1, 2))
        .await
        .unwrap();
    store
        .record_usage(&a, call("glm-4.5-flash", "error", 0, 0))
        .await
        .unwrap();
    // A stateless request's call has no session.
    store
        .record_usage(
            &b,
            UsageRecord::new("consensus", "kimi", "kimi-k2-turbo-preview", "ok").with_tokens(5, 5),
        )
        .await
        .unwrap();
    let mut flash = ModelUsage::new("glm-4.5-flash");
    flash.calls = 1;
    flash.errors = 1;
    let mut six = ModelUsage::new("glm-4.6");
    six.calls = 2;
    six.prompt_tokens = 11;
    six.completion_tokens = 22;
    assert_eq!(store.usage(&a).await.unwrap(), [flash, six]);
    let b_usage = store.usage(&b).await.unwrap();
    assert_eq!(b_usage.len(), 1, "B sees only B's usage: {b_usage:?}");
    assert_eq!(
        (b_usage[0].model.as_str(), b_usage[0].calls),
        ("kimi-k2-turbo-preview", 1)
    );
    let nobody = backend.user("use-c@example.com").await;
    assert!(store.usage(&nobody).await.unwrap().is_empty());
}

/// Calls out of one bucket per user and running-call slots shared by
/// every node, whichever node asks.
async fn budgets_hold_over_nodes(backend: &Backend) {
    let (one, two) = (&backend.store, &backend.second);
    one.register_node().await.unwrap();
    two.register_node().await.unwrap();
    let a = backend.user("budget-a@example.com").await.user_id;
    let b = backend.user("budget-b@example.com").await.user_id;
    let calls = |n| LeaseRequest {
        rpm: 3,
        calls: n,
        max_in_flight: 2,
        slots: 0,
    };
    assert_eq!(one.lease(&a, calls(2)).await.unwrap().calls, 2);
    assert_eq!(two.lease(&a, calls(2)).await.unwrap().calls, 1, "one left");
    let empty = one.lease(&a, calls(1)).await.unwrap();
    assert_eq!(empty.calls, 0);
    assert!(
        empty.retry_after > Duration::from_secs(15) && empty.retry_after <= Duration::from_secs(20),
        "one call comes back every 20 s: {:?}",
        empty.retry_after
    );
    assert_eq!(
        two.lease(&b, calls(3)).await.unwrap().calls,
        3,
        "B's own bucket"
    );

    let slots = |n| LeaseRequest {
        rpm: 0,
        calls: 0,
        max_in_flight: 2,
        slots: n,
    };
    assert_eq!(one.lease(&a, slots(1)).await.unwrap().slots, 1);
    assert_eq!(two.lease(&a, slots(2)).await.unwrap().slots, 1, "one left");
    assert_eq!(one.lease(&a, slots(1)).await.unwrap().slots, 0, "both held");
    let unlimited = one
        .lease(
            &a,
            LeaseRequest {
                rpm: 0,
                calls: 5,
                ..slots(0)
            },
        )
        .await;
    assert_eq!(
        unlimited.unwrap().calls,
        0,
        "no rate asks nothing of the bucket"
    );
    two.release_slots(&[(a, 1)]).await.unwrap();
    assert_eq!(
        one.lease(&a, slots(1)).await.unwrap().slots,
        1,
        "given back"
    );
    assert_eq!(
        two.lease(&b, slots(2)).await.unwrap().slots,
        2,
        "B's own slots"
    );
    one.release_slots(&[(a, 2), (b, 0)]).await.unwrap();
    two.release_slots(&[(b, 2)]).await.unwrap();

    if let Some(db) = &backend.database {
        // A reaped node's slots no longer count.
        assert_eq!(one.lease(&a, slots(2)).await.unwrap().slots, 2);
        db.execute(
            "UPDATE mcp_nodes SET reaped_at = now()
              WHERE node_id IN (SELECT node_id FROM mcp_user_slots WHERE slots = 2)",
            &[],
        )
        .await
        .unwrap();
        assert_eq!(two.lease(&a, slots(2)).await.unwrap().slots, 2);
        two.release_slots(&[(a, 2)]).await.unwrap();
        one.register_node().await.unwrap();
    }
}

/// Heartbeats record activity, reap the live sessions of silent nodes, and
/// tell a reaped node so, which then claims its sessions back.
async fn nodes_reap_the_silent(backend: &Backend) {
    let Some(db) = &backend.database else {
        let beat = backend.store.heartbeat(&[], Duration::from_secs(30)).await;
        assert_eq!(
            beat.unwrap(),
            exai_sessions::Heartbeat::default(),
            "one node"
        );
        return;
    };
    let (one, two) = (&backend.store, &backend.second);
    one.register_node().await.unwrap();
    two.register_node().await.unwrap();
    let a = backend.user("nodes-a@example.com").await;
    let held = one.open(&a, open_request(2)).await.unwrap();
    let mine = [(a.user_id, held.session_id.clone())];
    let beat = one.heartbeat(&mine, Duration::from_secs(30)).await.unwrap();
    assert!(!beat.was_reaped);
    // The first node falls silent.
    db.execute(
        "UPDATE mcp_nodes SET heartbeat_at = now() - interval '1 hour'
          WHERE node_id = (SELECT node_id FROM mcp_sessions WHERE session_id = $1)",
        &[&held.session_id.as_str()],
    )
    .await
    .unwrap();
    let beat = two.heartbeat(&[], Duration::from_secs(30)).await.unwrap();
    assert_eq!(beat.reaped_sessions, 1);
    let row = one.get(&a, &held.session_id).await.unwrap();
    assert_eq!(row.status, SessionStatus::Disconnected, "reaped");
    let beat = one.heartbeat(&mine, Duration::from_secs(30)).await.unwrap();
    assert!(beat.was_reaped, "it learns it was reaped");
    assert!(one.reassert(&mine, 2).await.unwrap().is_empty(), "kept");
    let row = one.get(&a, &held.session_id).await.unwrap();
    assert_eq!(row.status, SessionStatus::Connected, "claimed back");
}

/// The client a session's `initialize` named, recorded afterwards in one
/// batch, for the owner's sessions only.
async fn clients_are_recorded(backend: &Backend) {
    let store = &backend.store;
    let a = backend.user("client-a@example.com").await;
    let b = backend.user("client-b@example.com").await;
    let mine = store.open(&a, open_request(5)).await.unwrap();
    let theirs = store.open(&b, open_request(5)).await.unwrap();
    assert_eq!(mine.metadata.client_name, None);
    let editor = SessionClient::new("Visual Studio Code", "1.107.0");
    store
        .describe_clients(&[
            (a.user_id, mine.session_id.clone(), editor.clone()),
            // Named with the wrong user: nothing changes.
            (a.user_id, theirs.session_id.clone(), editor),
        ])
        .await
        .unwrap();
    let read = store.get(&a, &mine.session_id).await.unwrap();
    assert_eq!(
        read.metadata.client_name.as_deref(),
        Some("Visual Studio Code")
    );
    assert_eq!(read.metadata.client_version.as_deref(), Some("1.107.0"));
    assert_eq!(read.metadata.transport, "websocket", "the rest is kept");
    let other = store.get(&b, &theirs.session_id).await.unwrap();
    assert_eq!(other.metadata.client_name, None);
}

/// At the cap, opening (or resuming) takes the user's least recently used
/// session marked idle, whichever node holds it; the holder learns it
/// ended. Sessions in use, and other users', are never taken.
async fn idle_sessions_make_room_at_the_cap(backend: &Backend) {
    let (one, two) = (&backend.store, &backend.second);
    let a = backend.user("idle-a@example.com").await;
    let b = backend.user("idle-b@example.com").await;
    let older = one.open(&a, open_request(3)).await.unwrap();
    let newer = one.open(&a, open_request(3)).await.unwrap();
    let busy = one.open(&a, open_request(3)).await.unwrap();
    let bs = one.open(&b, open_request(3)).await.unwrap();
    let ago = |secs| Some(std::time::SystemTime::now() - Duration::from_secs(secs));
    one.mark_idle(&[
        (a.user_id, older.session_id.clone(), ago(60)),
        (a.user_id, newer.session_id.clone(), ago(30)),
        (a.user_id, busy.session_id.clone(), ago(90)),
        (b.user_id, bs.session_id.clone(), ago(120)),
    ])
    .await
    .unwrap();
    // In use again.
    one.mark_idle(&[(a.user_id, busy.session_id.clone(), None)])
        .await
        .unwrap();
    let marked = one.get(&a, &newer.session_id).await.unwrap();
    assert!(marked.idle_since.is_some(), "{marked:?}");
    let fresh = two.open(&a, open_request(3)).await.unwrap();
    assert_eq!(fresh.status, SessionStatus::Connected);
    let held = [
        older.session_id.clone(),
        newer.session_id.clone(),
        busy.session_id.clone(),
        bs.session_id.clone(),
    ];
    assert_eq!(
        one.ended_among(&held).await.unwrap(),
        [(older.session_id.clone(), SessionStatus::Expired)],
        "the least recently used idle one, and only it"
    );
    let resumed_room = two.open(&a, open_request(3)).await.unwrap();
    let after: Vec<_> = one.ended_among(&held).await.unwrap();
    assert_eq!(after.len(), 2, "the next idle one: {after:?}");
    assert!(after.contains(&(newer.session_id.clone(), SessionStatus::Expired)));
    assert!(
        matches!(
            two.open(&a, open_request(3)).await,
            Err(StoreError::LimitReached { limit: 3 })
        ),
        "the one in use is never taken"
    );
    for session in [&busy, &fresh, &resumed_room] {
        one.close(&a, &session.session_id).await.unwrap();
    }
    one.close(&b, &bs.session_id).await.unwrap();
}

async fn keep_the_contract(backend: Backend) {
    budgets_hold_over_nodes(&backend).await;
    nodes_reap_the_silent(&backend).await;
    clients_are_recorded(&backend).await;
    idle_sessions_make_room_at_the_cap(&backend).await;
    open_close_list(&backend).await;
    other_users_sessions_look_like_missing_ones(&backend).await;
    limit_holds_under_concurrent_opens(&backend).await;
    resume_own_disconnected_sessions_only(&backend).await;
    admins_list_and_kill_users_cannot(&backend).await;
    conversations_belong_to_their_user(&backend).await;
    usage_is_counted_per_user_and_model(&backend).await;
    time_passes(&backend).await;
}

#[tokio::test]
async fn memory_store_keeps_the_contract() {
    keep_the_contract(Backend::memory()).await;
    let store = MemoryStore::new();
    api_keys_round_trip(&Backend::memory(), &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_keeps_the_contract() {
    let server = TestPostgres::start();
    keep_the_contract(Backend::postgres(&server).await).await;
    let keys = PostgresStore::new(&server.url, PostgresConfig::default()).unwrap();
    api_keys_round_trip(&Backend::postgres(&server).await, &keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn supabase_store_keeps_the_contract() {
    let server = TestPostgres::start();
    let (backend, rest) = Backend::supabase(&server).await;
    keep_the_contract(backend).await;
    let keys = SupabaseStore::new(
        &rest.url,
        exai_tests::service_role_key(),
        SupabaseConfig::default(),
    );
    api_keys_round_trip(&Backend::postgres(&server).await, &keys).await;
}

#[tokio::test]
async fn postgres_refuses_users_it_does_not_know() {
    let server = TestPostgres::start();
    let backend = Backend::postgres(&server).await;
    let stranger = Principal::new(UserId::from_email("nobody@example.com"), AuthMethod::Jwt);
    assert!(matches!(
        backend.store.open(&stranger, open_request(5)).await,
        Err(StoreError::UnknownUser)
    ));
}
