//! `exai-daemon` as a process, as the README runs it: the development secret
//! is created on first start, tokens signed with it are accepted, SIGTERM
//! closes sockets with 1001 and exits 0, bad configuration exits non-zero.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser as _;
use exai_auth::{AccessTokenClaims, UserId, mint_hs256};
use exai_daemon::config::AuthArgs;

fn daemon(data_dir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_exai-daemon"));
    command
        .env_remove("SUPABASE_JWT_SECRET")
        .env_remove("EXAI_WS_HOST")
        .env_remove("EXAI_WS_PORT")
        .env_remove("MCP_MAX_CONNECTIONS_PER_USER")
        .env_remove("MCP_ENABLE_MULTI_USER")
        .env_remove("SUPABASE_URL")
        .env_remove("EXAI_JWKS_URL")
        .env_remove("EXAI_WS_TOKEN")
        .env_remove("EXAI_SESSION_STORE")
        .env_remove("DATABASE_URL")
        .env_remove("EXAI_ADMIN_LISTEN")
        .env_remove("EXAI_LOG_FORMAT")
        .env_remove("MCP_SESSION_TIMEOUT")
        .env("EXAI_DATA_DIR", data_dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// The daemon's log, read on a thread for as long as the daemon runs (a
/// daemon whose stderr is closed would fail its next log write).
struct Log {
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Log {
    fn collect(child: &mut Child) -> Log {
        let stderr = child.stderr.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Log { lines, reader }
    }

    /// Waits until the daemon logs where it listens.
    fn url(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let lines = self.lines.lock().unwrap();
            let text_url = lines.iter().find_map(|l| l.split("url=").nth(1));
            let json_url = lines.iter().find_map(|l| l.split("\"url\":\"").nth(1));
            if let Some(url) = text_url {
                return url.split_whitespace().next().unwrap().to_owned();
            }
            if let Some(url) = json_url {
                return url.split('"').next().unwrap().to_owned();
            }
            drop(lines);
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "the daemon never said where it listens: {:#?}",
            self.lines.lock().unwrap()
        );
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Everything, once the daemon has exited.
    fn finish(self) -> String {
        let Log { lines, reader } = self;
        reader.join().unwrap();
        lines.lock().unwrap().join("\n")
    }
}

/// The secret `exai token mint` would sign with, for this data directory.
fn signing_secret(data_dir: &std::path::Path) -> exai_auth::Secret {
    #[derive(clap::Parser)]
    struct Args {
        #[command(flatten)]
        auth: AuthArgs,
    }
    let dir = data_dir.to_str().unwrap();
    let args = Args::try_parse_from(["test", "--data-dir", dir]).unwrap();
    args.auth.signing_secret().unwrap()
}

/// A token for `email`, valid for `ttl` seconds, as `exai token mint` makes it.
fn mint(data_dir: &std::path::Path, email: &str, ttl: u64) -> String {
    let claims = AccessTokenClaims::new(
        UserId::from_email(email),
        Some(email.into()),
        std::time::SystemTime::now(),
        Duration::from_secs(ttl),
    );
    mint_hs256(&claims, &signing_secret(data_dir)).unwrap()
}

fn wait_for_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the daemon did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn runs_with_a_development_secret_and_stops_cleanly_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let mut child = daemon(data.path()).args(["--port", "0"]).spawn().unwrap();
    let log = Log::collect(&mut child);
    let url = log.url();
    assert!(url.starts_with("ws://127.0.0.1:"), "{url}");
    let log = log.text();
    assert!(log.contains("DEVELOPMENT secret"), "{log}");
    assert!(log.contains(&data.path().join("dev-jwt-secret").display().to_string()));

    // The CLI signs with the same rules (AuthArgs) and the same directory.
    let token = mint(data.path(), "jazeel@example.com", 60);
    let secret = signing_secret(data.path());
    assert!(!log.contains(std::str::from_utf8(secret.expose()).unwrap()));

    let mut client = exai_tests::connect(&url, &token).await;
    client.initialize().await;
    assert_eq!(client.whoami(1).await["email"], "jazeel@example.com");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let frame = client.recv_close().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1001);
    assert_eq!(wait_for_exit(&mut child).code(), Some(0));
}

#[test]
fn bad_configuration_stops_before_binding_naming_every_problem() {
    let data = tempfile::tempdir().unwrap();
    let run = |env: &[(&str, &str)], check_only: bool| {
        let mut command = daemon(data.path());
        command.envs(env.iter().copied()).stdout(Stdio::piped());
        if check_only {
            command.arg("--check-config");
        }
        command.output().unwrap()
    };
    let check = |env: &[(&str, &str)], expected: &[&str]| {
        for check_only in [true, false] {
            let output = run(env, check_only);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(64), "{env:?}: {stderr}");
            let lines: Vec<&str> = stderr.lines().skip(1).map(str::trim).collect();
            assert_eq!(lines, expected, "{env:?}");
        }
    };
    check(
        &[("MCP_MAX_CONNECTIONS_PER_USER", "0")],
        &["MCP_MAX_CONNECTIONS_PER_USER=0: expected a whole number of at least 1"],
    );
    check(
        &[
            ("EXAI_WS_PORT", "70000"),
            ("SUPABASE_URL", "not a url"),
            ("EXAI_SESSION_STORE", "supabase"),
        ],
        &[
            "EXAI_WS_PORT=70000: expected a port number (0-65535)",
            "SUPABASE_URL is not an http(s) URL: 'not a url'",
            "EXAI_SESSION_STORE=supabase needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY",
        ],
    );
    check(
        &[
            ("MCP_ENABLE_MULTI_USER", "false"),
            ("EXAI_WS_HOST", "0.0.0.0"),
        ],
        &[
            "MCP_ENABLE_MULTI_USER=false without EXAI_WS_TOKEN would let anyone who can reach \
           0.0.0.0 in; set EXAI_WS_TOKEN or listen on a loopback address",
        ],
    );
    check(
        &[
            ("SUPABASE_JWT_SECRET", ""),
            ("EXAI_SESSION_STORE", "postgres"),
        ],
        &[
            "SUPABASE_JWT_SECRET is set but empty",
            "EXAI_SESSION_STORE=postgres needs DATABASE_URL",
        ],
    );
    check(
        &[
            ("EXAI_ADMIN_LISTEN", "somewhere"),
            ("EXAI_LOG_FORMAT", "xml"),
        ],
        &[
            "EXAI_ADMIN_LISTEN=somewhere: expected HOST:PORT",
            "EXAI_LOG_FORMAT=xml: expected text or json",
        ],
    );
    // Secrets are never echoed.
    let output = run(
        &[("EXAI_SESSION_STORE", "postgres"), ("DATABASE_URL", "")],
        true,
    );
    assert!(!String::from_utf8_lossy(&output.stderr).contains("postgres://"));

    let ok = run(&[], true);
    assert_eq!(ok.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout).trim(),
        "configuration ok"
    );
    // Checking has no side effect: the development secret is made by the
    // daemon that uses it, not by --check-config.
    assert_eq!(
        std::fs::read_dir(data.path()).unwrap().count(),
        0,
        "--check-config wrote into the data directory"
    );
}

#[tokio::test]
async fn a_jwks_that_cannot_be_fetched_stops_the_start() {
    let data = tempfile::tempdir().unwrap();
    let output = daemon(data.path())
        .env("SUPABASE_URL", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "could not load the signing keys: could not fetch the JWKS from \
             http://127.0.0.1:9/auth/v1/.well-known/jwks.json"
        ),
        "{stderr}"
    );
}

/// A daemon whose log pipe is gone (a log collector restarted) keeps serving.
#[tokio::test]
async fn keeps_serving_when_its_stderr_is_closed() {
    let data = tempfile::tempdir().unwrap();
    let mut child = daemon(data.path()).args(["--port", "0"]).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("the daemon logs where it listens")
            .unwrap();
        if let Some(url) = line.split("url=").nth(1) {
            break url.split_whitespace().next().unwrap().to_owned();
        }
    };
    drop(lines);
    let token = mint(data.path(), "a@example.com", 60);
    for id in 1..=2 {
        let mut client = exai_tests::connect(&url, &token).await;
        client.initialize().await;
        assert_eq!(client.whoami(id).await["email"], "a@example.com");
        client.close().await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A run full of refusals and refreshes, logged at the most verbose level:
/// no token, no part of a signature and no secret appears in the log.
#[tokio::test]
async fn logs_never_contain_a_credential() {
    let data = tempfile::tempdir().unwrap();
    let mut child = daemon(data.path())
        .args(["--port", "0"])
        .env("RUST_LOG", "trace")
        .spawn()
        .unwrap();
    let log = Log::collect(&mut child);
    let url = log.url();
    let secret = signing_secret(data.path());
    let mint = |email: &str, ttl: u64| mint(data.path(), email, ttl);
    let good = mint("a@example.com", 3600);
    let fresh = mint("a@example.com", 3600);
    let other_user = mint("b@example.com", 3600);
    let forged = mint_hs256(
        &serde_json::json!({"sub": "x", "exp": 1}),
        &exai_auth::Secret::new(b"some-other-secret-value".to_vec()),
    )
    .unwrap();
    let mut used = vec![
        good.clone(),
        fresh.clone(),
        other_user.clone(),
        forged.clone(),
    ];
    for bad in [
        forged.clone(),
        format!("{good}x"),
        "exai_0123456789abcdef_".to_owned() + &"ab".repeat(32),
    ] {
        let refused = exai_tests::try_connect(&url, Some(&bad)).await;
        assert!(refused.is_err());
        used.push(bad);
    }
    let mut client = exai_tests::connect(&url, &good).await;
    client.initialize().await;
    client.whoami(1).await;
    // `auth/refresh` in the forms rmcp would log, were they to reach it: a
    // notification over the WebSocket, and a request and a notification
    // over HTTP, each with a token of its own.
    let noted = mint("a@example.com", 3600);
    client
        .send_text(
            serde_json::json!({"jsonrpc": "2.0", "method": "auth/refresh",
                               "params": {"token": noted}})
            .to_string(),
        )
        .await;
    client.whoami(4).await;
    let over_http = mint("a@example.com", 3600);
    let http_url = url.replacen("ws://", "http://", 1);
    let http = reqwest::Client::new();
    let post = |body: serde_json::Value, session: Option<String>| {
        let mut request = http
            .post(&http_url)
            .bearer_auth(&good)
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        request.send()
    };
    // In a session, where rmcp would take (and log) the message.
    let opened = post(
        serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "log-test", "version": "1"}}}),
        None,
    )
    .await
    .unwrap();
    let session = opened.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let _ = opened.text().await;
    post(
        serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        Some(session.clone()),
    )
    .await
    .unwrap();
    for body in [
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "auth/refresh",
                           "params": {"token": over_http}}),
        serde_json::json!({"jsonrpc": "2.0", "method": "auth/refresh",
                           "params": {"token": over_http}}),
    ] {
        let reply = post(body, Some(session.clone())).await.unwrap();
        assert!(reply.status().is_success(), "{}", reply.status());
    }
    used.extend([noted, over_http]);
    let answer = client
        .request(
            serde_json::json!(2),
            "auth/refresh",
            serde_json::json!({"token": fresh}),
        )
        .await;
    assert!(answer.get("result").is_some(), "{answer}");
    client
        .request(
            serde_json::json!(3),
            "auth/refresh",
            serde_json::json!({"token": other_user}),
        )
        .await;
    client.recv_close().await;

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(wait_for_exit(&mut child).code(), Some(0));
    let log = log.finish();
    assert!(
        log.contains("credential refreshed in band"),
        "the run was logged"
    );
    let secret_text = std::str::from_utf8(secret.expose()).unwrap().to_owned();
    for credential in used.iter().chain([&secret_text]) {
        for part in credential.split('.').filter(|p| p.len() >= 16) {
            if let Some(line) = log.lines().find(|l| l.contains(part)) {
                panic!("a credential reached the log: {line:.400}");
            }
        }
    }
}

/// EXAI_LOG_FORMAT=json: every line is a JSON object, and the lines of a
/// connection carry its user and session.
#[tokio::test]
async fn json_logs_parse_and_carry_user_and_session() {
    let data = tempfile::tempdir().unwrap();
    let mut child = daemon(data.path())
        .args(["--port", "0"])
        .env("EXAI_LOG_FORMAT", "json")
        .spawn()
        .unwrap();
    let log = Log::collect(&mut child);
    let url = log.url();
    let mut client = exai_tests::connect(&url, &mint(data.path(), "json@example.com", 60)).await;
    client.initialize().await;
    let who = client.whoami(1).await;
    client.close().await;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(wait_for_exit(&mut child).code(), Some(0));
    let lines: Vec<serde_json::Value> = log
        .finish()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let opened = lines
        .iter()
        .find(|l| l["fields"]["message"] == "connection opened")
        .expect("a 'connection opened' line");
    assert_eq!(opened["span"]["user_id"], who["user_id"]);
    assert_eq!(opened["span"]["session_id"], who["session_id"]);
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "INFO" && l["fields"]["message"] == "stopped")
    );
}

/// `.env.docker.example` as shipped passes `--check-config`, and names every
/// variable the daemon reads.
#[test]
fn the_example_env_file_is_valid_and_complete() {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../.env.docker.example"
    ))
    .unwrap();
    let mut set = Vec::new();
    let mut named = Vec::new();
    for line in example.lines() {
        let line = line.trim();
        let (commented, entry) = match line.strip_prefix("# ") {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        if let Some((name, value)) = entry.split_once('=')
            && !name.is_empty()
            && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        {
            named.push(name.to_owned());
            if !commented {
                set.push((name.to_owned(), value.to_owned()));
            }
        }
    }
    // Every variable in the daemon's --help (flags with [env: NAME]) and the
    // environment-only secrets.
    let help = Command::new(env!("CARGO_BIN_EXE_exai-daemon"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let mut wanted: Vec<String> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next().map(str::to_owned))
        .collect();
    wanted.extend(
        [
            "SUPABASE_JWT_SECRET",
            "SUPABASE_SERVICE_ROLE_KEY",
            "EXAI_WS_TOKEN",
            "RUST_LOG",
        ]
        .map(str::to_owned),
    );
    for variable in &wanted {
        assert!(
            named.contains(variable),
            "{variable} is missing from .env.docker.example"
        );
    }
    let data = tempfile::tempdir().unwrap();
    let output = daemon(data.path())
        .envs(set.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .arg("--check-config")
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Settings come from flags, then the environment, then an env file
/// (`--env-file`, else `.env`, else `.env.docker`), then the defaults; a
/// secret read from the file never shows in `--help`.
#[test]
fn an_env_file_sits_under_flags_and_the_environment() {
    let data = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(
        cwd.path().join(".env.docker"),
        "EXAI_WS_PORT=x\nMCP_SESSION_TIMEOUT=0\nSUPABASE_JWT_SECRET=file-secret-value-not-for-help\n",
    )
    .unwrap();
    std::fs::write(
        cwd.path().join("other.env"),
        "MCP_MAX_CONNECTIONS_PER_USER=0\n",
    )
    .unwrap();
    let check = |extra_env: &[(&str, &str)], args: &[&str]| {
        let output = daemon(data.path())
            .current_dir(cwd.path())
            .envs(extra_env.iter().copied())
            .arg("--check-config")
            .args(args)
            .stdout(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (
            output.status.code(),
            stderr
                .lines()
                .skip(1)
                .map(|l| l.trim().to_owned())
                .collect::<Vec<_>>(),
        )
    };
    let port = "EXAI_WS_PORT=x: expected a port number (0-65535)".to_owned();
    let timeout =
        "MCP_SESSION_TIMEOUT=0: expected a whole number of seconds, at least 1".to_owned();
    assert_eq!(
        check(&[], &[]),
        (Some(64), vec![port.clone(), timeout.clone()]),
        "the file is read"
    );
    assert_eq!(
        check(&[("EXAI_WS_PORT", "0")], &[]),
        (Some(64), vec![timeout]),
        "the environment wins"
    );
    assert_eq!(
        check(&[("EXAI_WS_PORT", "0")], &["--session-timeout", "5"]),
        (Some(0), vec![]),
        "a flag wins"
    );
    assert_eq!(
        check(&[], &["--env-file", "other.env"]),
        (
            Some(64),
            vec![
                "MCP_MAX_CONNECTIONS_PER_USER=0: expected a whole number of at least 1".to_owned()
            ]
        ),
        "--env-file names the file"
    );
    let (code, lines) = check(&[], &["--env-file", "missing.env"]);
    assert_eq!(code, Some(64));
    assert!(lines[0].ends_with("missing.env: no such file"), "{lines:?}");
    let help = daemon(data.path())
        .current_dir(cwd.path())
        .arg("--help")
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains("file-secret-value-not-for-help"));
}

/// `EXAI_PROVIDERS_FILE` adds providers whose keys come from the variables
/// the file names; the key reaches the provider and never the log. A file
/// with problems stops the start, naming each, without quoting the file.
#[tokio::test]
async fn a_providers_file_adds_providers_with_keys_from_the_environment() {
    let data = tempfile::tempdir().unwrap();
    let api = exai_tests::ModelApi::start().await;
    let file = data.path().join("providers.toml");
    std::fs::write(
        &file,
        format!(
            "[[providers]]\nname = \"router\"\nbase_url = \"{}\"\napi_key_env = \"ROUTER_TEST_KEY\"\nmodels = [\"router-small\"]\n",
            api.url
        ),
    )
    .unwrap();
    let key = "sk-router-test-key-4711";
    let mut child = daemon(data.path())
        .args(["--port", "0"])
        .env("RUST_LOG", "trace")
        .env("EXAI_PROVIDERS_FILE", &file)
        .env("ROUTER_TEST_KEY", key)
        .env("DEFAULT_MODEL", "router-small")
        .spawn()
        .unwrap();
    let log = Log::collect(&mut child);
    let url = log.url();
    let token = mint(data.path(), "ana@example.com", 60);
    let mut client = exai_tests::connect(&url, &token).await;
    client.initialize().await;
    let models = client
        .call_tool(1, "listmodels", serde_json::json!({}))
        .await;
    let listed = &models["result"]["structuredContent"];
    assert_eq!(listed["default"], "router-small", "{models}");
    assert!(
        listed["providers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["provider"] == "router"),
        "{models}"
    );
    let answer = client
        .call_tool(2, "chat", serde_json::json!({"prompt": "hi"}))
        .await;
    assert_eq!(
        answer["result"]["content"][0]["text"],
        "router-small #1: heard 1 messages; last: hi"
    );
    assert_eq!(api.keys(), [Some(key.to_owned())]);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(wait_for_exit(&mut child).code(), Some(0));
    let log = log.finish();
    assert!(!log.contains(key), "the key is not logged");

    std::fs::write(
        &file,
        "[[providers]]\nname = \"kimi\"\nbase_url = \"https://x.example/v1\"\napi_key_env = \"NOT_SET_ANYWHERE\"\nmodels = [\"m\"]\napi_key = \"sk-pasted-9911\"\n",
    )
    .unwrap();
    let output = daemon(data.path())
        .args(["--port", "0"])
        .env("EXAI_PROVIDERS_FILE", &file)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("EXAI_PROVIDERS_FILE"), "{stderr}");
    assert!(stderr.contains("unknown field `api_key`"), "{stderr}");
    assert!(!stderr.contains("sk-pasted-9911"), "{stderr}");
}
