//! `sessions`: a user's sessions in a store: open two, list one's own,
//! close one, list again, and see that another user sees none of them.
//!
//! ```text
//! cargo run -p exai-sessions --example sessions                 # memory
//! DATABASE_URL=postgres://… cargo run -p exai-sessions --example sessions [EMAIL]
//! ```
//!
//! With `DATABASE_URL` the PostgreSQL store is used: its migrations are
//! applied first, and the user (by default `demo@example.com`) must be in
//! `auth.users`, as Supabase Auth keeps it (user ids are derived from the
//! email here, as exai's tests do).

#![allow(clippy::print_stdout, reason = "an example shows what it did")]

use exai_auth::{AuthMethod, Principal, UserId};
use exai_sessions::{
    MemoryStore, OpenSession, Page, PostgresConfig, PostgresStore, SessionMetadata, SessionStore,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let email = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "demo@example.com".to_owned());
    let store: Box<dyn SessionStore> = match std::env::var("DATABASE_URL") {
        Ok(url) => {
            let store = PostgresStore::new(&url, PostgresConfig::default())?;
            for step in store.migrate().await? {
                println!("migration: {step:?}");
            }
            println!("store: postgres");
            Box::new(store)
        }
        Err(_) => {
            println!("store: memory");
            Box::new(MemoryStore::new())
        }
    };

    let user = Principal::new(UserId::from_email(&email), AuthMethod::Jwt);
    let stranger = Principal::new(UserId::from_email("stranger@example.com"), AuthMethod::Jwt);
    // Two connections of one user, within a limit of 5.
    let metadata = || SessionMetadata::new("websocket", Some("127.0.0.1:50000".into()));
    let first = store.open(&user, OpenSession::new(5, metadata())).await?;
    let second = store.open(&user, OpenSession::new(5, metadata())).await?;
    println!("opened {} and {}", first.session_id, second.session_id);

    store.close(&user, &first.session_id).await?;
    for session in store.list(&user, Page::default()).await? {
        println!(
            "{email}: {} {:?} over {}",
            session.session_id, session.status, session.metadata.transport
        );
    }
    // Every call names the user it acts for: another user's sessions are
    // answered as if they did not exist.
    let theirs = store.get(&stranger, &second.session_id).await;
    println!("the stranger asks for {}: {theirs:?}", second.session_id);
    store.close(&user, &second.session_id).await?;
    Ok(())
}
