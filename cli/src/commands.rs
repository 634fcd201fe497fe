//! The subcommands.

use std::time::{Duration, SystemTime};

use exai_auth::{AccessTokenClaims, UserId, mint_hs256};
use exai_daemon::config::{AuthArgs, ConfigError};
use serde_json::{Map, Value};

use crate::client::{self, ClientError};

/// Why a command failed; the message is what `exai` prints.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The signing secret could not be found or made.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The token could not be signed.
    #[error(transparent)]
    Mint(#[from] exai_auth::MintError),
    /// Talking to the daemon failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The database could not be migrated.
    #[error("migration failed")]
    Migrate(#[source] exai_sessions::StoreError),
    /// The session database failed.
    #[error("the session database failed")]
    Store(#[source] exai_sessions::StoreError),
    /// The API key store failed.
    #[error("the API key store failed")]
    Keys(#[source] Box<exai_auth::KeyStoreError>),
    /// `exai doctor` found problems (listed on standard output).
    #[error("problems found")]
    Unhealthy,
    /// Signing in, or using the stored sign-in, failed.
    #[error("{0}")]
    SignIn(String),
    /// The tool ran and reported an error.
    #[error("the tool reported an error: {0}")]
    ToolFailed(String),
    /// A bad argument.
    #[error("{0}")]
    Usage(String),
    /// Writing the output failed.
    #[error("could not write the output")]
    Output(#[source] std::io::Error),
}

pub(crate) fn mint(
    email: &str,
    user_id: Option<uuid::Uuid>,
    ttl: Duration,
    auth: &AuthArgs,
) -> Result<String, CommandError> {
    if ttl.is_zero() {
        return Err(CommandError::Usage("--ttl must be longer than zero".into()));
    }
    let secret = auth.signing_secret()?;
    let user_id = user_id.map_or_else(|| UserId::from_email(email), UserId::new);
    let mut claims =
        AccessTokenClaims::new(user_id, Some(email.to_owned()), SystemTime::now(), ttl);
    claims.iss = auth.issuer()?;
    claims.aud.clone_from(&auth.jwt_audience);
    Ok(mint_hs256(&claims, &secret)?)
}

pub(crate) async fn call(
    url: &str,
    token: &str,
    tool: &str,
    args: Vec<(String, Value)>,
) -> Result<String, CommandError> {
    let arguments: Map<String, Value> = args.into_iter().collect();
    let connection = client::connect(url, token).await?;
    let result = connection.call_tool(tool, arguments).await;
    connection.close().await;
    let result = result?;
    let json = serde_json::to_string_pretty(&result).unwrap_or_default();
    if result.is_error == Some(true) {
        let text: Vec<&str> = result
            .content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
            .collect();
        return Err(CommandError::ToolFailed(text.join(" ")));
    }
    Ok(json)
}

pub(crate) async fn migrate(url: &str) -> Result<String, CommandError> {
    use exai_sessions::{MigrationOutcome, PostgresConfig, PostgresStore};
    let store =
        PostgresStore::new(url, PostgresConfig::default()).map_err(CommandError::Migrate)?;
    let outcomes = store.migrate().await.map_err(CommandError::Migrate)?;
    let lines: Vec<String> = outcomes
        .iter()
        .map(|outcome| match outcome {
            MigrationOutcome::Applied(name) => format!("applied          {name}"),
            MigrationOutcome::AlreadyApplied(name) => format!("already applied  {name}"),
        })
        .collect();
    Ok(lines.join("\n"))
}

/// Every migration's SQL, in order, for pasting into Supabase's SQL editor.
pub(crate) fn migration_sql() -> String {
    exai_sessions::MIGRATIONS
        .iter()
        .map(|(name, sql)| format!("-- exai migration {name}\n{sql}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Parses `key=value`; the value is JSON when it parses as JSON, else text.
pub(crate) fn parse_arg(s: &str) -> Result<(String, Value), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got '{s}'"))?;
    if key.is_empty() {
        return Err("the argument name is empty".into());
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((key.to_owned(), value))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn args_are_json_when_they_parse() {
        let check = |s: &str, expected: Result<(&str, Value), &str>| {
            let expected = expected
                .map(|(k, v)| (k.to_owned(), v))
                .map_err(str::to_owned);
            assert_eq!(parse_arg(s), expected, "{s}");
        };
        check("prompt=hello world", Ok(("prompt", json!("hello world"))));
        check("n=5", Ok(("n", json!(5))));
        check("flag=true", Ok(("flag", json!(true))));
        check("obj={\"a\":1}", Ok(("obj", json!({"a": 1}))));
        check("eq=a=b", Ok(("eq", json!("a=b"))));
        check("empty=", Ok(("empty", json!(""))));
        check("novalue", Err("expected KEY=VALUE, got 'novalue'"));
        check("=x", Err("the argument name is empty"));
    }
}
