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
    /// The daemon ended the connection for good.
    #[error("{0}")]
    Ended(String),
    /// Supabase Auth could not be reached (worth trying again later).
    #[error("{0}")]
    Unreachable(String),
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
    auth.audience().clone_into(&mut claims.aud);
    Ok(mint_hs256(&claims, &secret)?)
}

pub(crate) async fn call(
    url: &str,
    token: &str,
    tool: &str,
    args: Vec<(String, String)>,
) -> Result<String, CommandError> {
    let connection = client::connect(url, token).await?;
    let schema = if args.is_empty() {
        None
    } else {
        connection.input_schema(tool).await?
    };
    let arguments: Map<String, Value> = args
        .into_iter()
        .map(|(key, raw)| {
            let declared = schema
                .as_ref()
                .and_then(|s| s["properties"][&key]["type"].as_str());
            let value = arg_value(&raw, declared);
            (key, value)
        })
        .collect();
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

/// The direct connection string of a hosted Supabase project's database,
/// `postgresql://postgres:<password>@db.<ref>.supabase.co:5432/postgres`
/// with TLS required. The result holds the password: never print it.
pub(crate) fn supabase_database_url(
    project_url: &str,
    password: &str,
) -> Result<String, CommandError> {
    let not_hosted = || {
        CommandError::Usage(format!(
            "SUPABASE_URL '{project_url}' is not a hosted project (https://<ref>.supabase.co); \
             pass --database-url instead"
        ))
    };
    let parsed = reqwest::Url::parse(project_url).map_err(|_| not_hosted())?;
    let project_ref = parsed
        .host_str()
        .and_then(|host| host.strip_suffix(".supabase.co"))
        .filter(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric()))
        .ok_or_else(not_hosted)?;
    let mut url = reqwest::Url::parse(&format!(
        "postgresql://db.{project_ref}.supabase.co:5432/postgres?sslmode=require"
    ))
    .map_err(|_| not_hosted())?;
    // Percent-encodes whatever the password holds.
    url.set_username("postgres")
        .and_then(|()| url.set_password(Some(password)))
        .map_err(|()| not_hosted())?;
    Ok(url.into())
}

/// Every migration's SQL, in order, for pasting into Supabase's SQL editor.
pub(crate) fn migration_sql() -> String {
    exai_sessions::MIGRATIONS
        .iter()
        .map(|(name, sql)| format!("-- exai migration {name}\n{sql}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Parses `key=value` (the value as given; [`arg_value`] reads it).
pub(crate) fn parse_arg(s: &str) -> Result<(String, String), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got '{s}'"))?;
    if key.is_empty() {
        return Err("the argument name is empty".into());
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// A tool argument's value: text for an argument the tool declares a
/// string (so `--arg prompt=123` asks about "123"), else JSON when it
/// parses as JSON, else text.
pub(crate) fn arg_value(raw: &str, declared: Option<&str>) -> Value {
    if declared == Some("string") {
        return Value::String(raw.to_owned());
    }
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn args_are_json_when_they_parse_text_when_declared_so() {
        let check = |s: &str, declared: Option<&str>, expected: Result<(&str, Value), &str>| {
            let expected = expected
                .map(|(k, v)| (k.to_owned(), v))
                .map_err(str::to_owned);
            let parsed = parse_arg(s).map(|(k, raw)| {
                let value = arg_value(&raw, declared);
                (k, value)
            });
            assert_eq!(parsed, expected, "{s}");
        };
        check(
            "prompt=hello world",
            None,
            Ok(("prompt", json!("hello world"))),
        );
        check("n=5", None, Ok(("n", json!(5))));
        check("prompt=123", Some("string"), Ok(("prompt", json!("123"))));
        check("prompt=true", Some("string"), Ok(("prompt", json!("true"))));
        check("n=5", Some("integer"), Ok(("n", json!(5))));
        check("flag=true", None, Ok(("flag", json!(true))));
        check("obj={\"a\":1}", None, Ok(("obj", json!({"a": 1}))));
        check("eq=a=b", None, Ok(("eq", json!("a=b"))));
        check("empty=", None, Ok(("empty", json!(""))));
        check("novalue", None, Err("expected KEY=VALUE, got 'novalue'"));
        check("=x", None, Err("the argument name is empty"));
    }

    #[test]
    fn supabase_database_url_from_the_project_url() {
        let url = supabase_database_url("https://abcdefghij.supabase.co", "p@ss:w/rd#1").unwrap();
        assert_eq!(
            url,
            "postgresql://postgres:p%40ss%3Aw%2Frd%231@db.abcdefghij.supabase.co:5432/postgres?sslmode=require"
        );
        for not_hosted in [
            "http://localhost:54321",
            "https://supabase.co",
            "https://a.b.supabase.co",
            "not a url",
        ] {
            let error = supabase_database_url(not_hosted, "secret-pw").unwrap_err();
            let message = error.to_string();
            assert!(message.contains("--database-url"), "{message}");
            assert!(!message.contains("secret-pw"));
        }
    }
}
