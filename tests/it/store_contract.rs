//! The contract every `SessionStore` backend keeps. Each backend runs the
//! same checks; today that is the in-memory store.

use std::sync::Arc;

use exai_auth::{AuthMethod, Principal, UserId};
use exai_sessions::{
    MemoryStore, OpenSession, SessionId, SessionMetadata, SessionStatus, SessionStore, StoreError,
};

fn user(email: &str) -> Principal {
    Principal::new(UserId::from_email(email), AuthMethod::Jwt)
}

fn open_request(limit: u32) -> OpenSession {
    OpenSession::new(limit, SessionMetadata::new("websocket", None))
}

async fn open_close_list(store: &dyn SessionStore) {
    let a = user("a@example.com");
    let first = store.open(&a, open_request(5)).await.unwrap();
    let second = store.open(&a, open_request(5)).await.unwrap();
    assert_eq!(first.status, SessionStatus::Connected);
    assert_ne!(first.session_id, second.session_id);
    store.touch(&a, &first.session_id).await.unwrap();
    store.close(&a, &first.session_id).await.unwrap();
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

async fn other_users_sessions_look_like_missing_ones(store: &dyn SessionStore) {
    let a = user("a@example.com");
    let b = user("b@example.com");
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

async fn limit_holds_under_concurrent_opens(store: Arc<dyn SessionStore>) {
    let a = user("a@example.com");
    let opens = (0..50).map(|_| {
        let store = store.clone();
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
    let b = user("b@example.com");
    store
        .open(&b, open_request(5))
        .await
        .expect("another user is unaffected");
}

#[tokio::test]
async fn memory_store_keeps_the_contract() {
    open_close_list(&MemoryStore::new()).await;
    other_users_sessions_look_like_missing_ones(&MemoryStore::new()).await;
    limit_holds_under_concurrent_opens(Arc::new(MemoryStore::new())).await;
}
