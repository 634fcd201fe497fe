//! Administrators' commands, against the database directly: API keys and
//! sessions. They act as the service role: every user's rows are visible.

use std::time::{Duration, SystemTime};

use exai_auth::{ApiKeyStore as _, AuthMethod, NewApiKey, Principal, UserId};
use exai_sessions::{
    Page, PostgresConfig, PostgresStore, SessionAdmin as _, SessionFilter, SessionId, SessionStatus,
};
use serde_json::{Value, json};

use crate::CommandError;

fn store(database_url: &str) -> Result<PostgresStore, CommandError> {
    PostgresStore::new(database_url, PostgresConfig::default()).map_err(CommandError::Store)
}

fn admin() -> Principal {
    let mut admin = Principal::new(UserId::new(uuid::Uuid::nil()), AuthMethod::Local);
    admin.role = "service_role".into();
    admin
}

/// A user named by UUID or by email (looked up in `auth.users`).
async fn user(store: &PostgresStore, user: &str) -> Result<UserId, CommandError> {
    if let Ok(id) = user.parse::<UserId>() {
        return Ok(id);
    }
    let found = store
        .user_ids_by_email(user)
        .await
        .map_err(CommandError::Store)?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(CommandError::Usage(format!("no user with email {user}"))),
        _ => Err(CommandError::Usage(format!(
            "several users with email {user}; give the id"
        ))),
    }
}

fn time(at: Option<SystemTime>) -> String {
    at.map_or_else(
        || "-".to_owned(),
        |t| humantime::format_rfc3339_seconds(t).to_string(),
    )
}

/// Columns padded to their widest cell. Every cell is [`printable`]: what
/// users or their editors wrote (a client name, an email) cannot move the
/// cursor, recolour or retitle the administrator's terminal.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| printable(cell)).collect())
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    std::iter::once(line(header.to_vec()))
        .chain(
            rows.iter()
                .map(|r| line(r.iter().map(String::as_str).collect())),
        )
        .collect::<Vec<_>>()
        .join("\n")
}

/// `text` with every control character (C0, DEL, C1: escape sequences,
/// carriage returns, bells) written as its `\u{…}` escape.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// JSON for a terminal: `serde_json` escapes C0 controls but writes DEL
/// and the C1 controls (U+0080–U+009F, which some terminals obey) as they
/// are; those are escaped too, so the output stays the same JSON.
fn json_for_terminal(value: &Value) -> String {
    value
        .to_string()
        .chars()
        .map(|c| {
            if c.is_control() {
                format!("\\u{:04x}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

pub(crate) async fn keys_create(
    database_url: &str,
    who: &str,
    name: Option<String>,
    expires: Option<Duration>,
) -> Result<String, CommandError> {
    let store = store(database_url)?;
    let user = user(&store, who).await?;
    let expires_at = expires.map(|d| SystemTime::now() + d);
    let new = NewApiKey::generate(user, name, expires_at)
        .map_err(|e| CommandError::Usage(e.to_string()))?;
    store
        .insert_api_key(new.record.clone())
        .await
        .map_err(|e| CommandError::Keys(Box::new(e)))?;
    eprintln!(
        "created API key {} for {user}; it is shown once, below",
        new.record.key_id
    );
    Ok(new.key)
}

pub(crate) async fn keys_list(
    database_url: &str,
    who: Option<&str>,
    as_json: bool,
) -> Result<String, CommandError> {
    let store = store(database_url)?;
    let mut users = match who {
        Some(who) => vec![user(&store, who).await?],
        None => store
            .all_api_key_users()
            .await
            .map_err(CommandError::Store)?,
    };
    users.sort();
    let mut keys = Vec::new();
    for user in users {
        keys.extend(
            store
                .list_api_keys(user)
                .await
                .map_err(|e| CommandError::Keys(Box::new(e)))?,
        );
    }
    if as_json {
        let rows: Vec<Value> = keys
            .iter()
            .map(|k| {
                json!({
                    "key_id": k.key_id, "user_id": k.user_id, "name": k.name,
                    "created_at": time(Some(k.created_at)), "expires_at": k.expires_at.map(|t| time(Some(t))),
                    "revoked_at": k.revoked_at.map(|t| time(Some(t))),
                    "last_used_at": k.last_used_at.map(|t| time(Some(t))),
                })
            })
            .collect();
        return Ok(json_for_terminal(&Value::Array(rows)));
    }
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.key_id.clone(),
                k.user_id.to_string(),
                k.name.clone().unwrap_or_else(|| "-".into()),
                time(Some(k.created_at)),
                time(k.expires_at),
                time(k.revoked_at),
                time(k.last_used_at),
            ]
        })
        .collect();
    Ok(table(
        &[
            "KEY ID",
            "USER",
            "NAME",
            "CREATED",
            "EXPIRES",
            "REVOKED",
            "LAST USED",
        ],
        &rows,
    ))
}

pub(crate) async fn keys_revoke(database_url: &str, key_id: &str) -> Result<String, CommandError> {
    let store = store(database_url)?;
    let revoked = store
        .revoke_api_key(key_id, SystemTime::now())
        .await
        .map_err(|e| CommandError::Keys(Box::new(e)))?;
    if !revoked {
        return Err(CommandError::Usage(format!("no API key {key_id}")));
    }
    Ok(format!(
        "revoked {key_id}: new connections are refused now, open ones are closed within seconds"
    ))
}

/// `exai sessions list`: one page of the sessions of `who` (any user when
/// `None`) in `status` (any when `None`). Past a full page, stderr says how
/// to get the next.
pub(crate) async fn sessions_list(
    database_url: &str,
    (who, status): (Option<&str>, Option<&str>),
    page: Page,
    as_json: bool,
) -> Result<String, CommandError> {
    let store = store(database_url)?;
    let mut filter = SessionFilter::default();
    filter.page = page;
    if let Some(who) = who {
        filter.user = Some(user(&store, who).await?);
    }
    filter.status = match status {
        None => None,
        Some("connected") => Some(SessionStatus::Connected),
        Some("disconnected") => Some(SessionStatus::Disconnected),
        Some("expired") => Some(SessionStatus::Expired),
        Some("killed") => Some(SessionStatus::Killed),
        Some(other) => {
            return Err(CommandError::Usage(format!(
                "--status {other}: expected connected, disconnected, expired or killed"
            )));
        }
    };
    let sessions = store
        .admin_list(&admin(), filter)
        .await
        .map_err(CommandError::Store)?;
    if sessions.len() == page.limit {
        eprintln!(
            "exai: showing {} sessions; there may be more: --offset {}",
            page.limit,
            page.offset + page.limit
        );
    }
    let users: Vec<UserId> = sessions.iter().map(|s| s.user_id).collect();
    let emails = store.emails(&users).await.map_err(CommandError::Store)?;
    let email = |u: &UserId| emails.get(u).cloned().unwrap_or_else(|| u.to_string());
    let client = |s: &exai_sessions::SessionRecord| {
        s.metadata
            .client_name
            .clone()
            .map(|n| {
                format!(
                    "{n} {}",
                    s.metadata.client_version.clone().unwrap_or_default()
                )
                .trim()
                .to_owned()
            })
            .unwrap_or_else(|| "-".into())
    };
    // The first block of the node's id, as short commit ids are shown.
    let node = |s: &exai_sessions::SessionRecord| {
        s.node_id.map_or_else(
            || "-".to_owned(),
            |id| id.simple().to_string()[..8].to_owned(),
        )
    };
    if as_json {
        let rows: Vec<Value> = sessions
            .iter()
            .map(|s| {
                json!({
                    "user_id": s.user_id, "email": emails.get(&s.user_id),
                    "session_id": s.session_id, "status": s.status.as_str(),
                    "transport": s.metadata.transport, "client": client(s), "node": s.node_id,
                    "created_at": time(Some(s.created_at)), "last_active": time(Some(s.last_active)),
                })
            })
            .collect();
        return Ok(json_for_terminal(&Value::Array(rows)));
    }
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            vec![
                email(&s.user_id),
                s.session_id.to_string(),
                s.status.to_string(),
                s.metadata.transport.clone(),
                client(s),
                node(s),
                time(Some(s.created_at)),
                time(Some(s.last_active)),
            ]
        })
        .collect();
    Ok(table(
        &[
            "USER",
            "SESSION ID",
            "STATUS",
            "TRANSPORT",
            "CLIENT",
            "NODE",
            "CREATED",
            "LAST ACTIVE",
        ],
        &rows,
    ))
}

pub(crate) async fn sessions_kill(
    database_url: &str,
    session: &str,
) -> Result<String, CommandError> {
    let store = store(database_url)?;
    match store
        .admin_kill(&admin(), &SessionId::from_client(session))
        .await
    {
        Ok(_) => Ok(format!(
            "killed {session}: the daemon holding it closes the connection within seconds"
        )),
        Err(exai_sessions::StoreError::NotFound) => {
            Err(CommandError::Usage(format!("no session {session}")))
        }
        Err(e) => Err(CommandError::Store(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_users_wrote_cannot_drive_the_terminal() {
        let evil = "Cursor\u{1b}]0;owned\u{7}\u{1b}[2J\r\u{9b}31m\u{7f}";
        let shown = table(&["CLIENT"], &[vec![evil.to_owned()]]);
        assert!(
            shown
                .lines()
                .all(|line| !line.chars().any(char::is_control)),
            "{shown:?}"
        );
        assert_eq!(
            shown.lines().nth(1),
            Some(r"Cursor\u{1b}]0;owned\u{7}\u{1b}[2J\u{d}\u{9b}31m\u{7f}")
        );
        let json = json_for_terminal(&json!([{ "client": evil }]));
        assert!(!json.chars().any(char::is_control), "{json:?}");
        let back: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back[0]["client"], evil, "still the same JSON");
    }
}
