//! `exai` as a process (the binary Cargo builds) against a real daemon.

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Output};

use exai_auth::UserId;
use exai_tests::{TEST_SECRET, TestDaemon};

mod connect;
use serde_json::Value;

fn exai(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_exai"));
    command
        .args(args)
        .env_remove("EXAI_TOKEN")
        .env_remove("EXAI_URL")
        .env_remove("EXAI_WS_HOST")
        .env_remove("EXAI_WS_PORT")
        .env_remove("EXAI_DATA_DIR")
        .env_remove("EXAI_API_KEY")
        .env_remove("EXAI_CONFIG_DIR")
        .env_remove("SUPABASE_URL")
        .env_remove("SUPABASE_ANON_KEY")
        .env(
            "SUPABASE_JWT_SECRET",
            std::str::from_utf8(TEST_SECRET).unwrap(),
        );
    command
}

async fn run(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exai failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

async fn mint(email: &str) -> String {
    stdout(&run(exai(&["token", "mint", "--email", email])).await)
        .trim()
        .to_owned()
}

#[tokio::test]
async fn mint_then_call_as_two_users() {
    let daemon = TestDaemon::start().await;
    for email in ["jazeel@example.com", "michelle@example.com"] {
        let token = mint(email).await;
        let output = run(exai(&[
            "call",
            "whoami",
            "--url",
            &daemon.url,
            "--token",
            &token,
        ]))
        .await;
        let result: Value = serde_json::from_str(&stdout(&output)).unwrap();
        let who = &result["structuredContent"];
        assert_eq!(who["email"], email);
        assert_eq!(who["user_id"], UserId::from_email(email).to_string());
    }
    let token = mint("jazeel@example.com").await;
    let mut command = exai(&[
        "call",
        "chat",
        "--url",
        &daemon.url,
        "--arg",
        "prompt=hi there",
    ]);
    command.env("EXAI_TOKEN", &token);
    let result: Value = serde_json::from_str(&stdout(&run(command).await)).unwrap();
    assert_eq!(result["content"][0]["text"], "[echo] hi there");
    // The /mcp URL the README gives, in the http scheme; a string
    // argument that looks like a number stays a string.
    let http_url = daemon.url.replacen("ws://", "http://", 1);
    let output = run(exai(&[
        "call",
        "chat",
        "--url",
        &http_url,
        "--token",
        &token,
        "--arg",
        "prompt=123",
    ]))
    .await;
    let result: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(result["content"][0]["text"], "[echo] 123");
    // whoami with a token: no sign-in needed.
    let mut whoami = exai(&["whoami", "--url", &daemon.url]);
    whoami
        .env("EXAI_TOKEN", &token)
        .env("EXAI_CONFIG_DIR", tempfile::tempdir().unwrap().path());
    let said = stdout(&run(whoami).await);
    assert!(
        said.starts_with("using the credential from --token (or EXAI_TOKEN)\ndaemon: "),
        "{said}"
    );
    assert!(said.contains("jazeel@example.com"), "{said}");
    daemon.stop().await;
}

#[tokio::test]
async fn explicit_user_id_and_ttl() {
    let daemon = TestDaemon::start().await;
    let id = "1fb4fe69-33d1-456c-9b18-fe580006aaf7";
    let token = stdout(
        &run(exai(&[
            "token",
            "mint",
            "--email",
            "j@example.com",
            "--user-id",
            id,
            "--ttl",
            "5m",
        ]))
        .await,
    );
    let output = run(exai(&[
        "call",
        "whoami",
        "--url",
        &daemon.url,
        "--token",
        token.trim(),
    ]))
    .await;
    let result: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(result["structuredContent"]["user_id"], id);
    daemon.stop().await;
}

#[tokio::test]
async fn failures_exit_non_zero_with_one_clear_line() {
    let daemon = TestDaemon::start().await;
    let token = mint("jazeel@example.com").await;
    let check = |output: Output, expected: &str| {
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.trim_end(), expected);
        assert!(output.stdout.is_empty());
    };
    let mut other_secret = exai(&["token", "mint", "--email", "x@example.com"]);
    other_secret.env("SUPABASE_JWT_SECRET", "some-other-projects-secret-value!!");
    let forged = stdout(&run(other_secret).await);
    check(
        run(exai(&[
            "call",
            "whoami",
            "--url",
            &daemon.url,
            "--token",
            forged.trim(),
        ]))
        .await,
        "exai: the daemon refused the connection: HTTP 401: invalid signature",
    );
    check(
        run(exai(&[
            "call",
            "nosuch",
            "--url",
            &daemon.url,
            "--token",
            &token,
        ]))
        .await,
        "exai: the call failed: Mcp error: -32602: unknown tool 'nosuch'",
    );
    check(
        run(exai(&[
            "call",
            "chat",
            "--url",
            &daemon.url,
            "--token",
            &token,
            "--arg",
            "prompt=x",
            "--arg",
            "model=gpt-9",
        ]))
        .await,
        "exai: the tool reported an error: unknown model 'gpt-9' (available: echo)",
    );
    check(
        run(exai(&[
            "call",
            "whoami",
            "--url",
            "ftp://nowhere/mcp",
            "--token",
            &token,
        ]))
        .await,
        "exai: invalid daemon URL 'ftp://nowhere/mcp': give the daemon's /mcp URL, \
         ws://HOST:PORT/mcp (http://, wss:// and https:// work too)",
    );
    // Said once, not once per layer of the error.
    check(
        run(exai(&[
            "call",
            "whoami",
            "--url",
            "ws://127.0.0.1:1/mcp",
            "--token",
            &token,
        ]))
        .await,
        "exai: could not connect to ws://127.0.0.1:1/mcp: IO error: Connection refused (os error 111)",
    );
    let nobody = tempfile::tempdir().unwrap();
    let mut unsigned = exai(&["call", "whoami", "--url", &daemon.url]);
    unsigned.env("EXAI_CONFIG_DIR", nobody.path());
    check(
        run(unsigned).await,
        "exai: not signed in: run exai login, or pass --token",
    );
    let mut no_password = exai(&["migrate", "--supabase"]);
    no_password
        .env("SUPABASE_URL", "https://abcdefghij.supabase.co")
        .env_remove("SUPABASE_DB_PASSWORD")
        .env_remove("DATABASE_URL");
    check(
        run(no_password).await,
        "exai: --supabase needs the database password in SUPABASE_DB_PASSWORD \
         (Supabase dashboard: Project Settings, Database)",
    );
    let mut self_hosted = exai(&["migrate", "--supabase"]);
    self_hosted
        .env("SUPABASE_URL", "http://localhost:8000")
        .env("SUPABASE_DB_PASSWORD", "hunter2-db-password");
    check(
        run(self_hosted).await,
        "exai: SUPABASE_URL 'http://localhost:8000' is not a hosted project \
         (https://<ref>.supabase.co); pass --database-url instead",
    );
    let mut neither = exai(&["migrate"]);
    neither.env_remove("DATABASE_URL");
    check(
        run(neither).await,
        "exai: --database-url (or DATABASE_URL) is required, or --supabase, or --print",
    );
    daemon.stop().await;
}

#[tokio::test]
async fn without_a_secret_mint_creates_the_development_secret_privately() {
    let data = tempfile::tempdir().unwrap();
    let mut command = exai(&["token", "mint", "--email", "a@example.com"]);
    command
        .env_remove("SUPABASE_JWT_SECRET")
        .env("EXAI_DATA_DIR", data.path());
    let first = stdout(&run(command).await);
    let secret = data.path().join("dev-jwt-secret");
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(first.split('.').count(), 3, "a JWT: {first}");
}

#[tokio::test]
async fn migrate_twice_changes_nothing_the_second_time() {
    let server = exai_tests::TestPostgres::start();
    let first = stdout(&run(exai(&["migrate", "--database-url", &server.url])).await);
    let names: Vec<&str> = exai_sessions::MIGRATIONS.iter().map(|(n, _)| *n).collect();
    let expected: Vec<String> = names
        .iter()
        .map(|n| format!("applied          {n}"))
        .collect();
    assert_eq!(first.trim_end(), expected.join("\n"));
    let mut again = exai(&["migrate"]);
    again.env("DATABASE_URL", &server.url);
    let second = stdout(&run(again).await);
    let expected: Vec<String> = names
        .iter()
        .map(|n| format!("already applied  {n}"))
        .collect();
    assert_eq!(second.trim_end(), expected.join("\n"));

    let sql = stdout(&run(exai(&["migrate", "--print"])).await);
    assert!(sql.contains("CREATE TABLE IF NOT EXISTS public.mcp_sessions"));
    assert!(sql.contains("-- exai migration 0004_session_functions"));
}

/// Admin commands against a database shared with a running daemon:
/// an API key created, used, listed and revoked (its open connection is
/// closed); sessions of two users listed, and one killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_sessions_for_administrators() {
    use std::time::Duration;
    let (server, db) =
        exai_tests::TestPostgres::migrated(&["jazeel@example.com", "michelle@example.com"]).await;
    let daemon = TestDaemon::start_with(|c| {
        c.store = server.store_config(Duration::from_secs(5));
        c.edge.activity_flush = Duration::from_millis(100);
    })
    .await;
    let admin = |args: &[&str]| {
        let mut command = exai(args);
        command.env("DATABASE_URL", &server.url);
        command
    };

    // Keys: create, connect with it, list, revoke.
    let key = stdout(
        &run(admin(&[
            "keys",
            "create",
            "--user",
            "jazeel@example.com",
            "--name",
            "ci",
        ]))
        .await,
    );
    let key = key.trim().to_owned();
    assert!(key.starts_with("exai_"), "{key}");
    let mut held = exai_tests::connect(&daemon.url, &key).await;
    held.initialize().await;
    assert_eq!(
        held.whoami(1).await["user_id"],
        UserId::from_email("jazeel@example.com").to_string()
    );
    let listed: Value = serde_json::from_str(&stdout(
        &run(admin(&[
            "keys",
            "list",
            "--user",
            "jazeel@example.com",
            "--json",
        ]))
        .await,
    ))
    .unwrap();
    let key_id = &key["exai_".len().."exai_".len() + 16];
    assert_eq!(listed[0]["key_id"], key_id);
    assert_eq!(listed[0]["name"], "ci");
    assert_eq!(listed[0]["revoked_at"], Value::Null);
    assert!(!listed.to_string().contains(&key[22..]), "never the secret");
    let table = stdout(&run(admin(&["keys", "list"])).await);
    assert!(table.starts_with("KEY ID"), "{table}");
    assert!(table.contains(key_id));
    stdout(&run(admin(&["keys", "revoke", key_id])).await);
    let frame = held.recv_close().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 4401);
    assert_eq!(frame.reason.as_str(), "API key revoked");
    let refused = daemon.try_connect(Some(&key)).await.err().expect("refused");
    assert_eq!(
        (refused.status, refused.body.trim_end()),
        (401, "API key revoked")
    );

    // Sessions: two users, listed with their emails; one killed.
    let mut jazeel = daemon
        .connect_initialized(&mint("jazeel@example.com").await)
        .await;
    let mut michelle = daemon
        .connect_initialized(&mint("michelle@example.com").await)
        .await;
    let target = jazeel.whoami(2).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    michelle.whoami(2).await;
    let live: Value = serde_json::from_str(&stdout(
        &run(admin(&[
            "sessions",
            "list",
            "--status",
            "connected",
            "--json",
        ]))
        .await,
    ))
    .unwrap();
    let mut emails: Vec<&str> = live
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["email"].as_str().unwrap())
        .collect();
    emails.sort();
    assert_eq!(emails, ["jazeel@example.com", "michelle@example.com"]);
    let table = stdout(&run(admin(&["sessions", "list"])).await);
    assert!(table.starts_with("USER"), "{table}");
    assert!(table.contains(&target));
    // Bounded, in pages, newest first: one row each, and a word on stderr
    // about the next page while a page is full.
    let page = |offset: &'static str| {
        admin(&[
            "sessions", "list", "--limit", "1", "--offset", offset, "--json",
        ])
    };
    let first = run(page("0")).await;
    let second = run(page("1")).await;
    let rows = |output: &std::process::Output| -> Vec<String> {
        serde_json::from_str::<Value>(&String::from_utf8_lossy(&output.stdout))
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["session_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (first_rows, second_rows) = (rows(&first), rows(&second));
    assert_eq!((first_rows.len(), second_rows.len()), (1, 1));
    assert_ne!(first_rows, second_rows);
    assert!(
        String::from_utf8_lossy(&first.stderr).contains("--offset 1"),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let beyond = run(admin(&["sessions", "list", "--limit", "1001"])).await;
    assert_eq!(
        beyond.status.code(),
        Some(2),
        "a limit past 1000 is refused"
    );
    stdout(&run(admin(&["sessions", "kill", &target])).await);
    let frame = jazeel.recv_close().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 4410);
    let status: String = db
        .query_one(
            "SELECT connection_status FROM mcp_sessions WHERE session_id = $1",
            &[&target],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "killed");
    assert_eq!(
        michelle.whoami(3).await["email"],
        "michelle@example.com",
        "others unaffected"
    );

    let missing = run(admin(&["sessions", "kill", "no-such-session"])).await;
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&missing.stderr).trim_end(),
        "exai: no session no-such-session"
    );
    daemon.stop().await;
}

/// A server that answers as Supabase Auth's token endpoint documents
/// (`POST /auth/v1/token?grant_type=password|refresh_token`, the anon key in
/// `apikey`), issuing access tokens the test daemon accepts, refresh tokens
/// that work once, and access tokens that expire in 30 s (so the CLI, which
/// refreshes a minute ahead, refreshes on every use).
async fn fake_supabase_auth() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::sync::{Arc, Mutex};
    let issued: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = issued.clone();
    let handler = move |axum::extract::Query(query): axum::extract::Query<
        std::collections::HashMap<String, String>,
    >,
                        headers: axum::http::HeaderMap,
                        axum::Json(body): axum::Json<Value>| {
        let issued = issued.clone();
        async move {
            use axum::http::StatusCode;
            let refuse = |status: StatusCode, description: &str| {
                (
                    status,
                    axum::Json(
                        serde_json::json!({"error": "invalid_grant", "error_description": description}),
                    ),
                )
            };
            if headers.get("apikey").and_then(|v| v.to_str().ok()) != Some("test-anon-key") {
                return refuse(StatusCode::UNAUTHORIZED, "Invalid API key");
            }
            let email = match query.get("grant_type").map(String::as_str) {
                Some("password") => {
                    if body["password"] != "correct horse battery staple" {
                        return refuse(StatusCode::BAD_REQUEST, "Invalid login credentials");
                    }
                    body["email"].as_str().unwrap_or_default().to_owned()
                }
                Some("refresh_token") => {
                    let presented = body["refresh_token"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    let mut issued = issued.lock().unwrap();
                    match issued.iter().position(|t| *t == presented) {
                        // Used once: it is spent now.
                        Some(i) => {
                            issued[i] = format!("spent:{presented}");
                            "jazeel@example.com".to_owned()
                        }
                        None => {
                            return refuse(
                                StatusCode::BAD_REQUEST,
                                "Invalid Refresh Token: Already Used",
                            );
                        }
                    }
                }
                _ => return refuse(StatusCode::BAD_REQUEST, "unsupported grant_type"),
            };
            let mut claims = exai_tests::claims(&email);
            claims["exp"] = serde_json::json!(exai_tests::now() + 30);
            let refresh = format!("refresh-{}", uuid::Uuid::new_v4());
            issued.lock().unwrap().push(refresh.clone());
            (
                StatusCode::OK,
                axum::Json(serde_json::json!({
                    "access_token": exai_tests::sign(&claims),
                    "token_type": "bearer",
                    "expires_in": 30,
                    "expires_at": exai_tests::now() + 30,
                    "refresh_token": refresh,
                    "user": {"id": UserId::from_email(&email).to_string(), "email": email},
                })),
            )
        }
    };
    let app = axum::Router::new().route("/auth/v1/token", axum::routing::post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, log)
}

#[tokio::test]
async fn login_refresh_whoami_logout() {
    use std::io::Write as _;
    let daemon = TestDaemon::start().await;
    let (auth_url, issued) = fake_supabase_auth().await;
    let config = tempfile::tempdir().unwrap();
    let user = |args: &[&str]| {
        let mut command = exai(args);
        command
            .env("SUPABASE_URL", &auth_url)
            .env("SUPABASE_ANON_KEY", "test-anon-key")
            .env("EXAI_CONFIG_DIR", config.path())
            .env("EXAI_URL", &daemon.url);
        command
    };
    let login = |password: &'static str| {
        let mut command = user(&["login", "--email", "jazeel@example.com", "--password-stdin"]);
        command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        async move {
            tokio::task::spawn_blocking(move || {
                let mut child = command.spawn().unwrap();
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(format!("{password}\n").as_bytes())
                    .unwrap();
                child.wait_with_output().unwrap()
            })
            .await
            .unwrap()
        }
    };
    let wrong = login("wrong").await;
    assert_eq!(wrong.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&wrong.stderr).trim_end(),
        "exai: Supabase Auth refused: Invalid login credentials"
    );
    let signed_in = stdout(&login("correct horse battery staple").await);
    assert!(
        signed_in.starts_with("signed in as jazeel@example.com"),
        "{signed_in}"
    );
    let file = config.path().join("session.json");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Each use refreshes (the token has under a minute left), spending the
    // previous refresh token.
    let who = stdout(&run(user(&["whoami"])).await);
    assert!(who.contains("signed in as jazeel@example.com"), "{who}");
    assert!(who.contains(&UserId::from_email("jazeel@example.com").to_string()));
    let result: Value =
        serde_json::from_str(&stdout(&run(user(&["call", "whoami"])).await)).unwrap();
    assert_eq!(result["structuredContent"]["email"], "jazeel@example.com");
    let tokens = issued.lock().unwrap().clone();
    assert_eq!(tokens.len(), 3, "login, then two refreshes: {tokens:?}");
    assert!(tokens[0].starts_with("spent:") && tokens[1].starts_with("spent:"));
    let stored: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(stored["refresh_token"], tokens[2]);

    assert_eq!(stdout(&run(user(&["logout"])).await).trim(), "signed out");
    let after = run(user(&["call", "whoami"])).await;
    assert_eq!(after.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&after.stderr).trim_end(),
        "exai: not signed in: run exai login, or pass --token"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn doctor_names_each_problem_and_how_to_fix_it() {
    let (server, _db) = exai_tests::TestPostgres::migrated(&[]).await;
    let doctor = |env: &[(&str, &str)]| {
        let mut command = exai(&["doctor"]);
        command
            .env("EXAI_WS_PORT", "0")
            .env("EXAI_SESSION_STORE", "postgres")
            .env("DATABASE_URL", &server.url)
            .envs(env.iter().copied());
        run(command)
    };
    let healthy = doctor(&[]).await;
    let report = stdout(&healthy);
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines[0], "ok       settings: valid");
    assert_eq!(
        lines[1],
        "ok       signing: SUPABASE_JWT_SECRET (HS256) set"
    );
    assert_eq!(
        lines[2],
        "ok       sessions: PostgreSQL reachable and migrated"
    );
    assert!(
        lines[3].starts_with("ok       providers: only the offline echo"),
        "{report}"
    );
    assert_eq!(lines[4], "ok       providers: default model echo");
    assert!(
        lines[5].starts_with("ok       listen: 127.0.0.1:0 is free"),
        "{report}"
    );

    // A provider nobody answers for.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/v1", closed.local_addr().unwrap());
    drop(closed);
    let unreachable = doctor(&[
        ("OPENAI_BASE_URL", base.as_str()),
        ("OPENAI_MODELS", "local"),
    ])
    .await;
    assert_eq!(unreachable.status.code(), Some(1));
    let report = String::from_utf8_lossy(&unreachable.stdout).into_owned();
    assert!(
        report.contains(&format!(
            "problem  providers: openai at {base} is unreachable; check OPENAI_BASE_URL"
        )),
        "{report}"
    );

    let fresh = exai_tests::TestPostgres::start();
    let unmigrated = doctor(&[("DATABASE_URL", fresh.url.as_str())]).await;
    assert_eq!(unmigrated.status.code(), Some(1));
    let report = String::from_utf8_lossy(&unmigrated.stdout).into_owned();
    assert!(
        report.contains("problem  sessions: PostgreSQL lacks migrations (0001_supabase_bootstrap"),
        "{report}"
    );
    assert!(report.contains("run: exai migrate"));
    assert_eq!(
        String::from_utf8_lossy(&unmigrated.stderr).trim_end(),
        "exai: problems found"
    );

    let bad = doctor(&[("EXAI_WS_PORT", "x"), ("MCP_SESSION_TIMEOUT", "0")]).await;
    assert_eq!(bad.status.code(), Some(1));
    let report = String::from_utf8_lossy(&bad.stdout).into_owned();
    assert_eq!(
        report.lines().collect::<Vec<_>>(),
        [
            "problem  settings: EXAI_WS_PORT=x: expected a port number (0-65535)",
            "problem  settings: MCP_SESSION_TIMEOUT=0: expected a whole number of seconds, at least 1",
        ]
    );
}

/// `exai` reads the same env file as the daemon.
#[tokio::test]
async fn the_cli_reads_an_env_file_too() {
    let daemon = TestDaemon::start().await;
    let cwd = tempfile::tempdir().unwrap();
    let secret = std::str::from_utf8(TEST_SECRET).unwrap();
    // The daemon's own settings say where it listens: the CLI goes there.
    let port = daemon
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches("/mcp");
    std::fs::write(
        cwd.path().join(".env"),
        format!("SUPABASE_JWT_SECRET={secret}\nEXAI_WS_HOST=0.0.0.0\nEXAI_WS_PORT={port}\n"),
    )
    .unwrap();
    let mut mint = exai(&["token", "mint", "--email", "file@example.com"]);
    mint.env_remove("SUPABASE_JWT_SECRET")
        .current_dir(cwd.path());
    let token = stdout(&run(mint).await);
    let mut call = exai(&["call", "whoami", "--token", token.trim()]);
    call.env_remove("EXAI_URL").current_dir(cwd.path());
    let result: Value = serde_json::from_str(&stdout(&run(call).await)).unwrap();
    assert_eq!(result["structuredContent"]["email"], "file@example.com");
    daemon.stop().await;
}

/// `.env.docker.example` names every variable `exai` reads, too.
#[test]
fn the_example_env_file_names_every_cli_variable() {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../.env.docker.example"
    ))
    .unwrap();
    let named = |variable: &str| {
        example
            .lines()
            .map(|line| line.trim().trim_start_matches("# "))
            .any(|line| line.starts_with(&format!("{variable}=")))
    };
    let subcommands: &[&[&str]] = &[
        &["call"],
        &["connect"],
        &["login"],
        &["whoami"],
        &["migrate"],
        &["keys", "create"],
        &["sessions", "list"],
        &["token", "mint"],
    ];
    let mut wanted = vec![
        "EXAI_API_KEY".to_owned(),
        "SUPABASE_ANON_KEY".to_owned(),
        "SUPABASE_DB_PASSWORD".to_owned(),
    ];
    for args in subcommands {
        let mut command = Command::new(env!("CARGO_BIN_EXE_exai"));
        let help = command.args(*args).arg("--help").output().unwrap();
        assert!(help.status.success(), "{args:?}");
        let help = String::from_utf8_lossy(&help.stdout).into_owned();
        wanted.extend(
            help.split("[env: ")
                .skip(1)
                .filter_map(|rest| rest.split(['=', ']', ',']).next().map(str::to_owned)),
        );
    }
    assert!(wanted.len() > 6, "{wanted:?}");
    for variable in &wanted {
        assert!(
            named(variable),
            "{variable} is missing from .env.docker.example"
        );
    }
}

/// Each JSON-RPC code lives with the part that answers with it (the edge,
/// the daemon's tools, `exai connect`); together they must not collide,
/// and the close codes `exai connect` acts on are the daemon's.
#[test]
fn the_cli_and_the_daemon_agree_on_their_codes() {
    let mut codes = vec![
        exai_transport::jsonrpc::INVALID_CREDENTIAL,
        exai_daemon::jsonrpc::TOO_MANY_IN_FLIGHT,
        exai_daemon::jsonrpc::USER_LIMIT,
        exai_cli::jsonrpc::CONNECTION_LOST,
        exai_cli::jsonrpc::NOT_CONNECTED,
    ];
    assert!(
        codes.iter().all(|c| (-32099..=-32000).contains(c)),
        "server-reserved range: {codes:?}"
    );
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), 5, "no code is used twice");
    assert_eq!(
        exai_cli::close::OTHER_USER,
        exai_transport::close::OTHER_USER
    );
    assert_eq!(
        exai_cli::close::SESSION_KILLED,
        exai_transport::close::SESSION_KILLED
    );
}
