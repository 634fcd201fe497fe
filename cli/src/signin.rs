//! Signing in with Supabase Auth: the password grant, the stored session
//! (mode 0600 in the user's config directory), and its refresh before the
//! access token expires. A refresh token is used once: each refresh stores
//! the new one Supabase returns.
//!
//! The endpoint is `POST ${SUPABASE_URL}/auth/v1/token?grant_type=…` with the
//! project's anon key in the `apikey` header.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::CommandError;

/// Refresh when the access token has less than this left.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// What `exai login` keeps.
#[derive(Serialize, Deserialize)]
pub(crate) struct Stored {
    pub(crate) supabase_url: String,
    pub(crate) email: Option<String>,
    pub(crate) user_id: String,
    pub(crate) access_token: String,
    pub(crate) refresh_token: String,
    /// Unix seconds.
    pub(crate) expires_at: u64,
}

/// Where the Supabase project is, as the CLI was told.
pub(crate) struct Project<'a> {
    pub(crate) url: &'a str,
    pub(crate) anon_key: &'a str,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn path(config_dir: &Path) -> PathBuf {
    config_dir.join("session.json")
}

/// Supabase's answer to a grant.
#[derive(Deserialize)]
struct Grant {
    access_token: String,
    refresh_token: String,
    expires_in: Option<u64>,
    expires_at: Option<u64>,
    user: Option<GrantUser>,
}

#[derive(Deserialize)]
struct GrantUser {
    id: String,
    email: Option<String>,
}

async fn grant(
    project: &Project<'_>,
    kind: &str,
    body: serde_json::Value,
) -> Result<Grant, CommandError> {
    let url = format!(
        "{}/auth/v1/token?grant_type={kind}",
        project.url.trim_end_matches('/')
    );
    let response = reqwest::Client::new()
        .post(&url)
        .header("apikey", project.anon_key)
        .json(&body)
        .send()
        .await
        .map_err(|e| CommandError::Unreachable(format!("could not reach Supabase Auth: {e}")))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        // Older Auth servers say error_description, newer ones msg.
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let reason = ["error_description", "msg", "message", "error"]
            .iter()
            .find_map(|k| json[k].as_str())
            .unwrap_or("refused");
        return Err(CommandError::SignIn(format!(
            "Supabase Auth refused: {reason}"
        )));
    }
    serde_json::from_str(&text)
        .map_err(|_| CommandError::SignIn("Supabase Auth answered something unexpected".into()))
}

fn stored(project: &Project<'_>, grant: Grant, previous: Option<&Stored>) -> Stored {
    let expires_at = grant
        .expires_at
        .or(grant.expires_in.map(|s| now() + s))
        .unwrap_or_else(now);
    let (user_id, email) = match (grant.user, previous) {
        (Some(user), _) => (user.id, user.email),
        (None, Some(p)) => (p.user_id.clone(), p.email.clone()),
        (None, None) => (String::new(), None),
    };
    Stored {
        supabase_url: project.url.to_owned(),
        email,
        user_id,
        access_token: grant.access_token,
        refresh_token: grant.refresh_token,
        expires_at,
    }
}

fn save(config_dir: &Path, session: &Stored) -> Result<(), CommandError> {
    let io = |e: std::io::Error| CommandError::SignIn(format!("could not store the session: {e}"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(config_dir)
        .map_err(io)?;
    // Written aside with mode 0600, then renamed over: never readable by
    // others, never half-written.
    let temporary = config_dir.join(".session.json.new");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(io)?;
    let json = serde_json::to_vec_pretty(session).map_err(|e| io(std::io::Error::other(e)))?;
    file.write_all(&json).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&temporary, path(config_dir)).map_err(io)
}

fn load(config_dir: &Path) -> Result<Option<Stored>, CommandError> {
    match std::fs::read(path(config_dir)) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|_| {
            CommandError::SignIn("the stored session is unreadable; run exai login".into())
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CommandError::SignIn(format!(
            "could not read the stored session: {e}"
        ))),
    }
}

/// The password grant; stores the session.
pub(crate) async fn login(
    project: &Project<'_>,
    email: &str,
    password: &str,
    config_dir: &Path,
) -> Result<Stored, CommandError> {
    let grant = grant(
        project,
        "password",
        serde_json::json!({"email": email, "password": password}),
    )
    .await?;
    let session = stored(project, grant, None);
    save(config_dir, &session)?;
    Ok(session)
}

/// The stored session, refreshed first if its access token is about to
/// expire; `None` when nobody is signed in.
pub(crate) async fn current(
    project: Option<&Project<'_>>,
    config_dir: &Path,
) -> Result<Option<Stored>, CommandError> {
    current_within(project, config_dir, REFRESH_MARGIN).await
}

/// Like [`current`], refreshing when less than `margin` is left.
pub(crate) async fn current_within(
    project: Option<&Project<'_>>,
    config_dir: &Path,
    margin: Duration,
) -> Result<Option<Stored>, CommandError> {
    let Some(session) = load(config_dir)? else {
        return Ok(None);
    };
    if session.expires_at > now() + margin.as_secs() {
        return Ok(Some(session));
    }
    let project = project.ok_or_else(|| {
        CommandError::SignIn("the stored token expired; set SUPABASE_ANON_KEY to refresh it".into())
    })?;
    let grant = grant(
        project,
        "refresh_token",
        serde_json::json!({"refresh_token": session.refresh_token}),
    )
    .await?;
    let refreshed = stored(project, grant, Some(&session));
    save(config_dir, &refreshed)?;
    Ok(Some(refreshed))
}

/// Forgets the stored session; whether there was one.
pub(crate) fn logout(config_dir: &Path) -> Result<bool, CommandError> {
    match std::fs::remove_file(path(config_dir)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(CommandError::SignIn(format!(
            "could not remove the stored session: {e}"
        ))),
    }
}
