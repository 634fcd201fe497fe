//! The contract every `SessionStore` backend keeps, run against each backend:
//! the in-memory store and PostgreSQL (a throwaway server per test).

use std::sync::Arc;

use exai_auth::{AuthMethod, Principal, UserId};
use exai_sessions::{
    MemoryStore, OpenSession, PostgresConfig, PostgresStore, SessionId, SessionMetadata,
    SessionStatus, SessionStore, StoreError,
};
use exai_tests::TestPostgres;

fn open_request(limit: u32) -> OpenSession {
    OpenSession::new(
        limit,
        SessionMetadata::new("websocket", Some("127.0.0.1:1".into())),
    )
}

/// A backend under test, and how to make a user it knows.
struct Backend {
    store: Arc<dyn SessionStore>,
    database: Option<tokio_postgres::Client>,
}

impl Backend {
    fn memory() -> Backend {
        Backend {
            store: Arc::new(MemoryStore::new()),
            database: None,
        }
    }

    async fn postgres(server: &TestPostgres) -> Backend {
        let store = PostgresStore::new(&server.url, PostgresConfig::default()).unwrap();
        store.migrate().await.unwrap();
        Backend {
            store: Arc::new(store),
            database: Some(exai_tests::pg_client(&server.url).await),
        }
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
    let listed: Vec<SessionId> = store
        .list(&a)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.session_id)
        .collect();
    assert_eq!(
        listed,
        [second.session_id, first.session_id],
        "newest first"
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
    assert!(store.list(&b).await.unwrap().is_empty());
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

async fn keep_the_contract(backend: Backend) {
    open_close_list(&backend).await;
    other_users_sessions_look_like_missing_ones(&backend).await;
    limit_holds_under_concurrent_opens(&backend).await;
}

#[tokio::test]
async fn memory_store_keeps_the_contract() {
    keep_the_contract(Backend::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_keeps_the_contract() {
    let server = TestPostgres::start();
    keep_the_contract(Backend::postgres(&server).await).await;
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
