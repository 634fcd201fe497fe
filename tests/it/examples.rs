//! The libraries' runnable examples, run as processes the way their docs
//! say: `tower_layer` of exai-auth answered over plain HTTP, and
//! `custom_tools` of exai-transport driven by the official MCP Python SDK.
//!
//! `cargo test --workspace` (and so `cargo xtask test`) builds every
//! example before the tests run; a missing one fails here, naming the
//! command that builds it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use exai_auth::{Secret, UserId, mint_hs256};
use serde_json::json;
use tokio::io::AsyncBufReadExt as _;

/// A secret for the examples' tokens (32 bytes or more, as HS256 wants).
const SECRET: &str = "exai-examples-secret-0123456789abcdef";

/// An example's executable, as `cargo test` builds it.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/it-… → target/<profile>/examples/<name>
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo test --workspace` (or `cargo build --workspace --examples`)",
        path.display()
    );
    path
}

/// A running example, killed when dropped.
struct Example {
    child: tokio::process::Child,
    addr: String,
}

impl Example {
    /// Starts `name` with the examples' secret and waits for its
    /// `listening on ADDR` line.
    async fn start(name: &str) -> Example {
        let mut child = tokio::process::Command::new(example(name))
            .env("SUPABASE_JWT_SECRET", SECRET)
            .env_remove("SUPABASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the example said where it listens")
            .unwrap()
            .unwrap_or_default();
        let addr = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("{name}'s first line: {first:?}"))
            .to_owned();
        Example { child, addr }
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn token(email: &str, role: &str) -> String {
    let claims = json!({
        "sub": UserId::from_email(email).to_string(),
        "email": email,
        "aud": "authenticated",
        "role": role,
        "exp": exai_tests::now() + 600,
    });
    mint_hs256(&claims, &Secret::new(SECRET.as_bytes().to_vec())).unwrap()
}

async fn get(url: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn tower_layer_answers_users_and_challenges_everyone_else() {
    let example = Example::start("tower_layer").await;
    let url = format!("http://{}/", example.addr);

    let hello = get(&url, Some(&token("ana@example.com", "authenticated"))).await;
    assert_eq!(hello.status(), 200);
    assert_eq!(
        hello.text().await.unwrap(),
        format!("hello {}\n", UserId::from_email("ana@example.com"))
    );

    let challenge = |response: &reqwest::Response| {
        response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let missing = get(&url, None).await;
    assert_eq!(missing.status(), 401);
    assert_eq!(
        challenge(&missing).as_deref(),
        Some(r#"Bearer error="invalid_token", error_description="missing bearer token""#)
    );
    let forged = {
        let claims = json!({"sub": UserId::from_email("ana@example.com").to_string(),
            "aud": "authenticated", "role": "authenticated", "exp": exai_tests::now() + 600});
        mint_hs256(
            &claims,
            &Secret::new(b"another-secret-0123456789abcdef!".to_vec()),
        )
        .unwrap()
    };
    let refused = get(&url, Some(&forged)).await;
    assert_eq!(refused.status(), 401);
    assert!(
        challenge(&refused).is_some_and(|c| c.starts_with(r#"Bearer error="invalid_token""#)),
        "{:?}",
        challenge(&refused)
    );
    assert!(!refused.text().await.unwrap().contains("hello"));
    let service = get(&url, Some(&token("ops@example.com", "service_role"))).await;
    assert_eq!(service.status(), 403);
    assert!(challenge(&service).is_some_and(|c| c.contains("insufficient_scope")));
}

#[tokio::test]
async fn custom_tools_serves_its_own_tool_behind_the_edge() {
    let example = Example::start("custom_tools").await;
    let url = format!("http://{}/mcp", example.addr);

    // The official SDK, with a token: the caller's tool, served.
    let ana = token("ana@example.com", "authenticated");
    let report =
        exai_tests::run_python_mcp2("mcp_add_client.py", &[&url], &[("EXAI_TOKEN", &ana)]).await;
    for (mode, protocol) in [("legacy", "2025-11-25"), ("auto", "2026-07-28")] {
        let run = &report[mode];
        assert_eq!(run["protocol"], protocol, "{report}");
        assert_eq!(run["tools"], json!(["add"]), "{report}");
        assert_eq!(run["sum"], "42", "{report}");
        assert_eq!(run["is_error"], false, "{report}");
    }

    // Without a token: 401 and the challenge, before any MCP.
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}});
    let refused = reqwest::Client::new()
        .post(&url)
        .header("accept", "application/json, text/event-stream")
        .json(&initialize)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert!(
        refused.headers().get("www-authenticate").is_some_and(|c| c
            .to_str()
            .unwrap()
            .starts_with("Bearer error=\"invalid_token\"")),
        "{:?}",
        refused.headers()
    );
    // And over WebSocket the same: no upgrade without a credential that
    // verifies.
    let ws =
        exai_tests::try_connect(&format!("ws://{}/mcp", example.addr), Some("not-a-token")).await;
    assert_eq!(ws.err().map(|r| r.status), Some(401));
}
