//! The official MCP SDKs, which nobody here wrote, against the daemon: the
//! Python SDK 1.x's WebSocket client, and the TypeScript SDK's WebSocket and
//! Streamable HTTP clients. (The Python SDK 2.x over Streamable HTTP is in
//! `streamable.rs`; its stdio client driving `exai connect` is in the CLI's
//! tests.) Two users run side by side and each must see only themselves.

use std::time::Duration;

use exai_tests::{TestDaemon, token};
use serde_json::{Value, json};

/// A daemon whose echo model is slow enough to report progress and to be
/// cancelled.
async fn slow_daemon() -> TestDaemon {
    TestDaemon::start_with(|c| {
        c.echo_delay = Duration::from_secs(2);
        c.tools.progress_interval = Duration::from_millis(200);
    })
    .await
}

/// Runs `command` with `EXAI_TOKENS`, and parses its one line of JSON.
async fn run_client(mut command: tokio::process::Command, tokens: &str) -> Value {
    let output = command
        .env("EXAI_TOKENS", tokens)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), output)
        .await
        .expect("the client finished in time")
        .expect("the client ran");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{command:?}: {stderr}");
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)))
}

/// Waits until the daemon has counted `n` cancelled `chat` calls.
async fn cancelled_calls(daemon: &TestDaemon, n: usize) {
    let line = format!(r#"exai_tool_calls_total{{tool="chat",outcome="cancelled"}} {n}"#);
    exai_tests::wait_for_metric(daemon, &line).await;
}

fn check_identities(report: &Value, emails: &[&str]) {
    let clients = report["clients"].as_array().unwrap();
    assert_eq!(clients.len(), emails.len());
    for (client, email) in clients.iter().zip(emails) {
        assert_eq!(client["tools"], json!(exai_tests::TOOLS_SORTED), "{client}");
        assert_eq!(client["whoami"]["email"], *email, "{client}");
        assert!(client["whoami"]["session_id"].is_string(), "{client}");
        assert_eq!(client["whoami_after"], client["whoami"], "{client}");
        assert!(
            client["chat"].as_str().unwrap().starts_with("[echo] hello"),
            "{client}"
        );
        let progress = client["progress"].as_array().unwrap();
        assert!(!progress.is_empty(), "progress reached the SDK: {client}");
    }
}

#[tokio::test]
async fn the_python_sdk_1_speaks_websocket() {
    let daemon = slow_daemon().await;
    let tokens = format!("{},{}", token("ana@example.com"), token("bo@example.com"));
    let mut python = tokio::process::Command::new(exai_tests::python());
    python
        .arg(exai_tests::python_script("mcp_ws_client.py"))
        .arg(&daemon.url);
    let report = run_client(python, &tokens).await;
    check_identities(&report, &["ana@example.com", "bo@example.com"]);
    for client in report["clients"].as_array().unwrap() {
        assert_eq!(client["server"], "exai");
    }
    cancelled_calls(&daemon, 2).await;
    daemon.stop().await;
}

/// Node with the MCP TypeScript SDK: `EXAI_TEST_NODE_MODULES` names the
/// `node_modules` that `cargo xtask test` installs from `tests/tools/node/`.
fn node_modules() -> std::path::PathBuf {
    let dir = std::env::var_os("EXAI_TEST_NODE_MODULES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/test-tools/node/node_modules")
        });
    assert!(
        dir.join("@modelcontextprotocol/sdk").exists(),
        "the TypeScript SDK is not installed ({}): run `cargo xtask test`, which installs it",
        dir.display()
    );
    dir
}

async fn typescript(kind: &str, url: String, tokens: &str) -> Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/node/client.mjs");
    let mut node = tokio::process::Command::new("node");
    node.args(["--experimental-websocket", "--no-warnings"])
        .arg(script)
        .arg(kind)
        .arg(url)
        .env("EXAI_TEST_NODE_MODULES", node_modules());
    run_client(node, tokens).await
}

/// An older TypeScript SDK (1.17, still in editors) over Streamable HTTP
/// reports no error across a whole session: it took every SSE priming
/// event for a broken message ("Unexpected end of JSON input").
#[tokio::test]
async fn the_typescript_sdk_1_17_reports_no_error_over_streamable_http() {
    let daemon = TestDaemon::start().await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/node/old_client.mjs");
    let modules = node_modules();
    assert!(
        modules.join("sdk-1-17").exists(),
        "the TypeScript SDK 1.17 is not installed ({}): run `cargo xtask test`",
        modules.display()
    );
    let mut node = tokio::process::Command::new("node");
    node.arg("--no-warnings")
        .arg(script)
        .arg(format!("{}/mcp", daemon.http))
        .env("EXAI_TEST_NODE_MODULES", modules);
    let report = run_client(node, &token("ana@example.com")).await;
    assert_eq!(report["email"], "ana@example.com", "{report}");
    assert_eq!(report["chat"], "[echo] old but gold", "{report}");
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    daemon.stop().await;
}

/// An older Python SDK (1.12) over Streamable HTTP logs no error across a
/// whole session: it logged "Error parsing SSE message" with a traceback
/// for every SSE priming event.
#[tokio::test]
async fn the_python_sdk_1_12_logs_no_error_over_streamable_http() {
    let daemon = TestDaemon::start().await;
    let mut python = tokio::process::Command::new(exai_tests::python_mcp112());
    python
        .arg(exai_tests::python_script("mcp_old_http_client.py"))
        .arg(format!("{}/mcp", daemon.http));
    let report = run_client(python, &token("ana@example.com")).await;
    assert_eq!(report["email"], "ana@example.com", "{report}");
    assert_eq!(report["chat"], "[echo] old but gold", "{report}");
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    daemon.stop().await;
}

#[tokio::test]
async fn the_typescript_sdk_speaks_websocket_and_streamable_http() {
    let daemon = slow_daemon().await;
    let tokens = format!("{},{}", token("ana@example.com"), token("bo@example.com"));
    let websocket = typescript("websocket", daemon.url.clone(), &tokens).await;
    check_identities(&websocket, &["ana@example.com", "bo@example.com"]);
    let http = typescript("http", format!("{}/mcp", daemon.http), &tokens).await;
    check_identities(&http, &["ana@example.com", "bo@example.com"]);
    for report in [&websocket, &http] {
        for client in report["clients"].as_array().unwrap() {
            assert_eq!(client["server"], "exai");
            assert_eq!(client["aborted"], true, "{client}");
        }
    }
    cancelled_calls(&daemon, 4).await;
    daemon.stop().await;
}
