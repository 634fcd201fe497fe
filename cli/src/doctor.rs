//! `exai doctor`: what the daemon's configuration would do, checked one
//! part at a time: settings, signing keys, session store, model providers,
//! listen address.

use std::time::Duration;

use exai_daemon::config::{AuthMode, DaemonArgs, SecretSource, StoreConfig, Strings};
use exai_sessions::{PostgresStore, SupabaseConfig, SupabaseStore};

struct Report(Vec<(bool, String)>);

impl Report {
    fn ok(&mut self, line: impl Into<String>) {
        self.0.push((true, line.into()));
    }
    fn problem(&mut self, line: impl Into<String>) {
        self.0.push((false, line.into()));
    }
}

/// The checklist, and whether everything is ok.
pub(crate) async fn run(args: DaemonArgs, env: &dyn Strings) -> (String, bool) {
    let mut report = Report(Vec::new());
    check(args, env, &mut report).await;
    let healthy = report.0.iter().all(|(ok, _)| *ok);
    let text = report
        .0
        .iter()
        .map(|(ok, line)| format!("{:<8} {line}", if *ok { "ok" } else { "problem" }))
        .collect::<Vec<_>>()
        .join("\n");
    (text, healthy)
}

async fn check(args: DaemonArgs, env: &dyn Strings, report: &mut Report) {
    let config = match args.into_config(env) {
        Ok(checked) => {
            report.ok("settings: valid");
            checked
        }
        Err(problems) => {
            for problem in problems.0 {
                report.problem(format!("settings: {problem}"));
            }
            return;
        }
    };
    match (&config.auth, &config.secret) {
        (AuthMode::MultiUser(jwt), source) => {
            match source {
                Some(SecretSource::Environment) => report.ok("signing: SUPABASE_JWT_SECRET (HS256) set"),
                Some(SecretSource::DevelopmentFile(dev)) => report.problem(format!(
                    "signing: a development secret ({}); for production set SUPABASE_URL or SUPABASE_JWT_SECRET",
                    dev.path.display()
                )),
                _ => {}
            }
            if let Some(jwks) = &jwt.jwks {
                let url = jwks.url.clone();
                match exai_auth::JwtVerifier::start(
                    exai_auth::JwtConfig::new().with_jwks(jwks.clone()),
                )
                .await
                {
                    Ok(verifier) if verifier.has_keys() => {
                        report.ok(format!("signing: keys loaded from {url}"))
                    }
                    Ok(_) => report.problem(format!(
                        "signing: {url} publishes no usable key; check the project's signing keys"
                    )),
                    Err(error) => report.problem(format!(
                        "signing: {error}; check SUPABASE_URL or EXAI_JWKS_URL and the network"
                    )),
                }
            }
        }
        (AuthMode::SingleUser { token }, _) => report.ok(format!(
            "signing: single-user mode, {}",
            if token.is_some() {
                "shared token set"
            } else {
                "loopback only, no token"
            }
        )),
        _ => {}
    }
    match &config.store {
        StoreConfig::Memory => {
            report.ok("sessions: in memory (not shared, not kept across restarts)")
        }
        StoreConfig::Postgres { url, config: pool } => {
            let url = String::from_utf8_lossy(url.expose()).into_owned();
            match PostgresStore::new(&url, pool.clone()) {
                Err(error) => report.problem(format!("sessions: DATABASE_URL: {error}")),
                Ok(store) => match store.pending_migrations().await {
                    Ok(pending) if pending.is_empty() => {
                        report.ok("sessions: PostgreSQL reachable and migrated");
                    }
                    Ok(pending) => report.problem(format!(
                        "sessions: PostgreSQL lacks migrations ({}); run: exai migrate",
                        pending.join(", ")
                    )),
                    Err(error) => report.problem(format!(
                        "sessions: PostgreSQL unreachable ({error}); check DATABASE_URL and that it runs"
                    )),
                },
            }
        }
        StoreConfig::Supabase {
            url,
            service_role_key,
        } => {
            let store =
                SupabaseStore::new(url, service_role_key.clone(), SupabaseConfig::default());
            match store.check().await {
                Ok(()) => report.ok("sessions: Supabase REST API reachable, mcp_sessions readable"),
                Err(error) => report.problem(format!(
                    "sessions: Supabase REST API: {error}; check SUPABASE_URL, \
                     SUPABASE_SERVICE_ROLE_KEY, and run exai migrate --print in the SQL editor"
                )),
            }
        }
        _ => {}
    }
    check_providers(&config, report).await;
    let listen = format!("{}:{}", config.host, config.port);
    match tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpListener::bind((config.host.as_str(), config.port)),
    )
    .await
    {
        Ok(Ok(_)) => report.ok(format!("listen: {listen} is free")),
        Ok(Err(error)) => report.problem(format!(
            "listen: cannot bind {listen} ({error}); is a daemon already running? set EXAI_WS_PORT"
        )),
        Err(_) => report.problem(format!("listen: binding {listen} timed out")),
    }
}

/// Each configured provider answers at its base URL and takes its key.
async fn check_providers(config: &exai_daemon::Config, report: &mut Report) {
    if config.providers.is_empty() {
        report.ok(
            "providers: only the offline echo; set KIMI_API_KEY, GLM_API_KEY or \
             OPENAI_BASE_URL / OPENAI_API_KEY to add a model provider",
        );
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok();
    for provider in &config.providers {
        let variable = match provider.name.as_str() {
            "kimi" => "KIMI",
            "glm" => "GLM",
            _ => "OPENAI",
        };
        let url = format!("{}/models", provider.base_url);
        let mut request = match &http {
            Some(http) => http.get(&url),
            None => {
                report.problem("providers: could not build an HTTP client");
                return;
            }
        };
        if let Some(key) = &provider.api_key {
            request = request.bearer_auth(String::from_utf8_lossy(key.expose()));
        }
        let name = &provider.name;
        let base = &provider.base_url;
        match request.send().await {
            Ok(response) if matches!(response.status().as_u16(), 401 | 403) => {
                report.problem(format!(
                    "providers: {name} at {base} refused the key (HTTP {}); check {variable}_API_KEY",
                    response.status().as_u16()
                ))
            }
            Ok(response) => report.ok(format!(
                "providers: {name} at {base} answers (HTTP {} on /models); models: {}",
                response.status().as_u16(),
                provider.models.join(", ")
            )),
            Err(_) => report.problem(format!(
                "providers: {name} at {base} is unreachable; check {} and the network",
                if variable == "OPENAI" {
                    "OPENAI_BASE_URL".to_owned()
                } else {
                    format!("{variable}_API_URL")
                }
            )),
        }
    }
    report.ok(format!("providers: default model {}", config.default_model));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_aligned() {
        let mut report = Report(Vec::new());
        report.ok("a");
        report.problem("b");
        let text: Vec<String> = report
            .0
            .iter()
            .map(|(ok, line)| format!("{:<8} {line}", if *ok { "ok" } else { "problem" }))
            .collect();
        assert_eq!(text, ["ok       a", "problem  b"]);
    }
}
