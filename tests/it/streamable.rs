//! MCP over Streamable HTTP on `/mcp`: every request authenticated on its
//! own, session ids bound to their user, `DELETE`, expiry, limits, and the
//! `Origin` / `Host` / `MCP-Protocol-Version` checks.

use std::time::Duration;

use exai_auth::{NewApiKey, UserId};
use exai_tests::{TestDaemon, TestPostgres, token};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

/// A raw Streamable HTTP client: what a request got back.
struct Reply {
    status: u16,
    headers: HeaderMap,
    /// The JSON-RPC messages in the body (JSON, or the `data:` of SSE events).
    messages: Vec<Value>,
    text: String,
}

impl Reply {
    fn session(&self) -> Option<String> {
        self.headers
            .get("mcp-session-id")
            .map(|v| v.to_str().unwrap().to_owned())
    }

    /// The one response (result or error) in the body.
    fn response(&self) -> &Value {
        self.messages
            .iter()
            .find(|m| m.get("result").is_some() || m.get("error").is_some())
            .unwrap_or_else(|| panic!("no response in {:?}", self.text))
    }
}

struct Http {
    client: reqwest::Client,
    url: String,
}

impl Http {
    fn new(daemon: &TestDaemon) -> Http {
        Http {
            client: reqwest::Client::new(),
            url: format!("{}/mcp", daemon.http),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        token: Option<&str>,
        session: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Reply {
        let mut request = self
            .client
            .request(method, &self.url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = tokio::time::timeout(Duration::from_secs(10), request.send())
            .await
            .expect("answered in time")
            .expect("request sent");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        let messages = if text.trim_start().starts_with('{') {
            vec![serde_json::from_str(&text).unwrap()]
        } else {
            text.lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .filter(|data| !data.trim().is_empty())
                .map(|data| serde_json::from_str(data.trim()).unwrap())
                .collect()
        };
        Reply {
            status,
            headers,
            messages,
            text,
        }
    }

    async fn post(&self, token: Option<&str>, session: Option<&str>, body: Value) -> Reply {
        self.send(
            reqwest::Method::POST,
            token,
            session,
            &[],
            Some(body.to_string()),
        )
        .await
    }

    /// `initialize` then `notifications/initialized`; the session id.
    async fn open(&self, token: &str) -> String {
        self.open_as(token, "2025-06-18").await
    }

    /// The same, asking for protocol `version`.
    async fn open_as(&self, token: &str, version: &str) -> String {
        let mut init = initialize(1);
        init["params"]["protocolVersion"] = json!(version);
        let reply = self.post(Some(token), None, init).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.response()["result"]["serverInfo"]["name"], "exai");
        assert_eq!(reply.response()["result"]["protocolVersion"], version);
        let session = reply.session().expect("a session id");
        let reply = self
            .post(
                Some(token),
                Some(&session),
                json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            )
            .await;
        assert_eq!(reply.status, 202, "{}", reply.text);
        session
    }

    async fn whoami(&self, token: &str, session: Option<&str>, id: u64) -> Reply {
        self.post(
            Some(token),
            session,
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                   "params": {"name": "whoami", "arguments": {}}}),
        )
        .await
    }

    async fn delete(&self, token: &str, session: &str) -> Reply {
        self.send(
            reqwest::Method::DELETE,
            Some(token),
            Some(session),
            &[],
            None,
        )
        .await
    }
}

fn initialize(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "streamable-test", "version": "1"}
    }})
}

fn identity(reply: &Reply) -> Value {
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.response()["result"]["structuredContent"].clone()
}

#[tokio::test]
async fn a_session_belongs_to_the_user_who_opened_it() {
    let daemon = TestDaemon::start().await;
    let http = Http::new(&daemon);
    let ana = token("ana@example.com");
    let bo = token("bo@example.com");

    let session = http.open(&ana).await;
    let me = identity(&http.whoami(&ana, Some(&session), 2).await);
    assert_eq!(me["email"], "ana@example.com");
    assert_eq!(
        me["session_id"], session,
        "Mcp-Session-Id is the store's session id"
    );

    // Another user's token with Ana's session id: 404, as for a made-up id.
    let theirs = http.whoami(&bo, Some(&session), 3).await;
    assert_eq!(theirs.status, 404, "{}", theirs.text);
    let unknown = http
        .whoami(&ana, Some("00000000-0000-4000-8000-000000000000"), 4)
        .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(theirs.text, unknown.text, "nothing tells the two apart");

    // A session id is never a credential.
    let anonymous = http
        .post(
            None,
            Some(&session),
            json!({"jsonrpc": "2.0", "id": 5, "method": "ping"}),
        )
        .await;
    assert_eq!(anonymous.status, 401);
    assert!(
        anonymous
            .headers
            .get("www-authenticate")
            .is_some_and(|v| v.to_str().unwrap().starts_with("Bearer "))
    );

    // Two users side by side, each in their own session.
    let bos = http.open(&bo).await;
    assert_ne!(bos, session);
    assert_eq!(
        identity(&http.whoami(&bo, Some(&bos), 2).await)["email"],
        "bo@example.com"
    );
    assert_eq!(
        identity(&http.whoami(&ana, Some(&session), 6).await)["email"],
        "ana@example.com"
    );

    // DELETE ends it (only for its owner); then it is unknown.
    assert_eq!(http.delete(&bo, &session).await.status, 404);
    assert_eq!(http.delete(&ana, &session).await.status, 204);
    assert_eq!(http.whoami(&ana, Some(&session), 7).await.status, 404);
    daemon.stop().await;
}

/// In a 2025-03-26 session a POST may carry a batch: one JSON array of
/// answers comes back. Other versions refuse batches with -32600.
#[tokio::test]
async fn batches_are_served_in_2025_03_26_sessions_only() {
    let daemon = TestDaemon::start().await;
    let http = Http::new(&daemon);
    let ana = token("ana@example.com");
    let session = http.open_as(&ana, "2025-03-26").await;
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
         "params": {"name": "whoami", "arguments": {}}},
        {"jsonrpc": "2.0", "id": 2, "method": "ping"},
        {"jsonrpc": "2.0", "method": "notifications/progress",
         "params": {"progressToken": "x", "progress": 1}},
        {"jsonrpc": "1.0", "id": 3, "method": "ping"},
        {"jsonrpc": "2.0", "id": 4, "method": "initialize", "params": {}}
    ]);
    let reply = http.post(Some(&ana), Some(&session), batch).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let answers: Value = serde_json::from_str(&reply.text).unwrap();
    let answers = answers.as_array().unwrap();
    assert_eq!(answers.len(), 4, "{}", reply.text);
    let by_id = |id: u64| answers.iter().find(|a| a["id"] == json!(id)).unwrap();
    assert_eq!(
        by_id(1)["result"]["structuredContent"]["email"],
        "ana@example.com"
    );
    assert!(by_id(2).get("result").is_some());
    assert_eq!(by_id(3)["error"]["code"], -32600);
    assert_eq!(by_id(4)["error"]["code"], -32600);
    // Only notifications: accepted, nothing to answer.
    let reply = http
        .post(
            Some(&ana),
            Some(&session),
            json!([{"jsonrpc": "2.0", "method": "notifications/progress",
                    "params": {"progressToken": "x", "progress": 2}}]),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);

    // A 2025-06-18 session: refused.
    let later = http.open(&ana).await;
    let reply = http
        .post(
            Some(&ana),
            Some(&later),
            json!([{"jsonrpc": "2.0", "id": 1, "method": "ping"}]),
        )
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.response()["error"]["code"], -32600);
    daemon.stop().await;
}

/// `GET` with the session id opens the session's stream for server
/// messages; for anyone else's session it is 404 like any request.
#[tokio::test]
async fn the_session_stream_is_its_owners_only() {
    let daemon = TestDaemon::start().await;
    let http = Http::new(&daemon);
    let ana = token("ana@example.com");
    let session = http.open(&ana).await;
    let get = |token: &str| {
        http.client
            .get(&http.url)
            .bearer_auth(token)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &session)
            .send()
    };
    let stream = get(&ana).await.unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(
        stream.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    drop(stream);
    let theirs = get(&token("bo@example.com")).await.unwrap();
    assert_eq!(theirs.status(), 404);
    daemon.stop().await;
}

#[tokio::test]
async fn requests_need_a_session_or_a_stateless_protocol_version() {
    let daemon = TestDaemon::start().await;
    let http = Http::new(&daemon);
    let ana = token("ana@example.com");

    // A handshake-version request without a session: refused, not served.
    let reply = http.whoami(&ana, None, 1).await;
    assert_eq!(reply.status, 400, "{}", reply.text);

    // An unsupported MCP-Protocol-Version: 400.
    let session = http.open(&ana).await;
    let reply = http
        .send(
            reqwest::Method::POST,
            Some(&ana),
            Some(&session),
            &[("mcp-protocol-version", "1999-01-01")],
            Some(json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}).to_string()),
        )
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert!(reply.text.contains("1999-01-01"), "{}", reply.text);

    // Bad JSON is a JSON-RPC parse error; the session lives on.
    let reply = http
        .send(
            reqwest::Method::POST,
            Some(&ana),
            Some(&session),
            &[],
            Some("{not json".into()),
        )
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(reply.response()["error"]["code"], -32700);
    let deep = "[".repeat(100_000);
    let reply = http
        .send(
            reqwest::Method::POST,
            Some(&ana),
            Some(&session),
            &[],
            Some(deep),
        )
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(reply.response()["error"]["code"], -32700);
    let reply = http
        .post(
            Some(&ana),
            Some(&session),
            json!({"jsonrpc": "1.0", "id": 9, "method": "ping"}),
        )
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(reply.response()["error"]["code"], -32600);
    let reply = http
        .post(
            Some(&ana),
            Some(&session),
            json!({"jsonrpc": "2.0", "id": 10, "method": "no/such"}),
        )
        .await;
    assert_eq!(reply.response()["error"]["code"], -32601, "{}", reply.text);
    assert_eq!(
        identity(&http.whoami(&ana, Some(&session), 3).await)["email"],
        "ana@example.com"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let daemon = TestDaemon::start_with(|c| c.edge.max_message_bytes = 4096).await;
    let http = Http::new(&daemon);
    let ana = token("ana@example.com");
    let session = http.open(&ana).await;
    let big = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "chat", "arguments": {"prompt": "x".repeat(8192)}}});
    let reply = http.post(Some(&ana), Some(&session), big).await;
    assert_eq!(reply.status, 413, "{}", reply.text);
    assert_eq!(
        identity(&http.whoami(&ana, Some(&session), 3).await)["email"],
        "ana@example.com"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn origin_and_host_are_checked_before_anything_else() {
    let daemon = TestDaemon::start_with(|c| {
        c.edge.allowed_origins = vec!["http://localhost:6274".into()];
        c.edge.allowed_hosts = Some(vec!["localhost".into(), "127.0.0.1".into()]);
    })
    .await;
    let http = Http::new(&daemon);
    let ana = token("ana@example.com");
    let init = Some(initialize(1).to_string());
    let post = |headers: &'static [(&'static str, &'static str)]| {
        http.send(
            reqwest::Method::POST,
            Some(&ana),
            None,
            headers,
            init.clone(),
        )
    };
    let reply = post(&[("origin", "https://evil.example")]).await;
    assert_eq!(reply.status, 403, "{}", reply.text);
    assert!(reply.session().is_none());
    let reply = post(&[("host", "evil.example")]).await;
    assert_eq!(reply.status, 403, "{}", reply.text);
    let reply = post(&[("origin", "http://localhost:6274")]).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let reply = post(&[]).await;
    assert_eq!(reply.status, 200, "a client that sends no Origin is served");
    daemon.stop().await;
}

#[tokio::test]
async fn the_per_user_limit_counts_http_sessions() {
    let daemon = TestDaemon::start_with(|c| c.edge.max_connections_per_user = 1).await;
    let http = Http::new(&daemon);
    let ana = token("ana@example.com");
    let session = http.open(&ana).await;
    let second = http.post(Some(&ana), None, initialize(1)).await;
    assert_eq!(second.status, 429, "{}", second.text);
    assert_eq!(
        second
            .headers
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("10"),
        "a 429 on initialize says when to retry"
    );
    assert!(
        second.text.contains("the `sessions` tool lists them"),
        "{}",
        second.text
    );
    assert!(second.session().is_none());
    // A WebSocket is a connection like any other.
    let refused = daemon.try_connect(Some(&ana)).await.err().expect("refused");
    assert_eq!(refused.status, 429);
    // Another user is not affected.
    http.open(&token("bo@example.com")).await;
    // Ending the session frees its place.
    assert_eq!(http.delete(&ana, &session).await.status, 204);
    http.open(&ana).await;
    daemon.stop().await;
}

#[tokio::test]
async fn sessions_are_recorded_expire_and_end_in_the_store() {
    let (pg, db) = TestPostgres::migrated(&["ana@example.com"]).await;
    let daemon = TestDaemon::start_with(|c| {
        c.store = pg.store_config(Duration::from_secs(5));
        c.edge.session_timeout = Duration::from_secs(2);
        c.edge.activity_flush = Duration::from_millis(200);
    })
    .await;
    let http = Http::new(&daemon);
    let ana = token("ana@example.com");
    let status = |session: String| {
        let db = &db;
        async move {
            db.query_one(
                "select connection_status, metadata->>'transport' from mcp_sessions \
                 where session_id = $1",
                &[&session],
            )
            .await
            .map(|row| (row.get::<_, String>(0), row.get::<_, String>(1)))
            .unwrap()
        }
    };

    let deleted = http.open(&ana).await;
    assert_eq!(
        status(deleted.clone()).await,
        ("connected".to_owned(), "http".to_owned())
    );
    assert_eq!(http.delete(&ana, &deleted).await.status, 204);
    let mut recorded = None;
    for _ in 0..100 {
        recorded = Some(status(deleted.clone()).await.0);
        if recorded.as_deref() == Some("disconnected") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(recorded.as_deref(), Some("disconnected"));

    // Idle past MCP_SESSION_TIMEOUT: expired, and unknown from then on.
    let idle = http.open(&ana).await;
    let mut expired = false;
    for _ in 0..100 {
        if status(idle.clone()).await.0 == "expired" {
            expired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(expired, "the idle session expired");
    let mut gone = false;
    for _ in 0..50 {
        if http.whoami(&ana, Some(&idle), 2).await.status == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "an expired session id is 404");

    // An administrator's kill ends it at once.
    let killed = http.open(&ana).await;
    db.execute(
        "update mcp_sessions set connection_status = 'killed' where session_id = $1",
        &[&killed],
    )
    .await
    .unwrap();
    let mut gone = false;
    for _ in 0..100 {
        if http.whoami(&ana, Some(&killed), 3).await.status == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "a killed session id is 404");
    assert_eq!(status(killed).await.0, "killed");

    // Shutdown marks open sessions disconnected.
    let open = http.open(&ana).await;
    daemon.stop().await;
    assert_eq!(status(open).await.0, "disconnected");
}

#[tokio::test]
async fn a_stateless_2026_request_is_served_without_a_session() {
    let daemon = TestDaemon::start().await;
    let http = Http::new(&daemon);
    let ana = token("ana@example.com");
    let reply = http
        .send(
            reqwest::Method::POST,
            Some(&ana),
            None,
            &stateless_headers("whoami"),
            Some(stateless_call(1, "whoami", json!({}), json!({}))),
        )
        .await;
    let me = identity(&reply);
    assert_eq!(me["email"], "ana@example.com");
    assert_eq!(me["session_id"], Value::Null);
    assert!(reply.session().is_none());
    daemon.stop().await;
}

/// The official MCP Python SDK 2.x over Streamable HTTP, configured as an
/// editor is (a URL and an `Authorization` header, as in docs/clients.md):
/// with the handshake and a session, and with 2026-07-28's stateless
/// requests (the SDK's default when the server speaks it). Two users side
/// by side, one with an access token and one with an API key, each see
/// themselves.
#[tokio::test]
async fn the_python_sdk_2_speaks_streamable_http() {
    let daemon = TestDaemon::start_with(|c| {
        c.echo_delay = Duration::from_secs(2);
        c.tools.progress_interval = Duration::from_millis(200);
    })
    .await;
    let bo = UserId::from_email("bo@example.com");
    let key = NewApiKey::generate(bo, Some("vscode".into()), None).unwrap();
    daemon
        .api_keys()
        .insert_api_key(key.record.clone())
        .await
        .unwrap();
    let tokens = format!("{},{}", token("ana@example.com"), key.key);
    for (mode, protocol) in [("legacy", "2025-11-25"), ("auto", "2026-07-28")] {
        let url = format!("{}/mcp", daemon.http);
        let report = exai_tests::run_python_mcp2(
            "mcp_http_client.py",
            &[&url, mode],
            &[("EXAI_TOKENS", &tokens)],
        )
        .await;
        let clients = report["clients"].as_array().unwrap();
        assert_eq!(clients.len(), 2);
        for (client, email) in clients.iter().zip(["ana@example.com", "bo@example.com"]) {
            assert_eq!(client["protocol"], protocol, "{mode}: {client}");
            assert_eq!(client["tools"], json!(exai_tests::TOOLS_SORTED));
            assert_eq!(
                client["whoami"]["user_id"],
                UserId::from_email(email).to_string(),
                "{mode}: {client}"
            );
            assert_eq!(client["chat"], "[echo] hello over http");
            assert_eq!(client["chat_is_error"], false);
            let progress = client["progress"].as_array().unwrap();
            assert!(
                !progress.is_empty(),
                "{mode}: progress reached the SDK: {client}"
            );
            assert_eq!(client["gave_up"], true, "{mode}: {client}");
            if mode == "legacy" {
                assert!(client["whoami"]["session_id"].is_string(), "{client}");
            } else {
                assert!(client["whoami"]["session_id"].is_null(), "{client}");
            }
        }
    }
    // Each abandoned call was cancelled in the daemon, not run to its end.
    let cancelled = r#"exai_tool_calls_total{tool="chat",outcome="cancelled"} 4"#;
    exai_tests::wait_for_metric(&daemon, cancelled).await;
    daemon.stop().await;
}

/// The HTTP side of "hold under abuse" (attacks 3, 6 and 9; the WebSocket
/// side is in `abuse.rs`): a batch of many members is refused whole
/// before any member becomes a request, a repeated id is answered with
/// -32600, and `auth/refresh`, whose token `rmcp` would log, is answered by
/// the edge and never reaches it.
#[tokio::test]
async fn http_batches_are_bounded_and_auth_refresh_stays_at_the_edge() {
    let daemon = TestDaemon::start().await;
    let http = Http::new(&daemon);
    let ana = token("ana@example.com");
    let session = http.open_as(&ana, "2025-03-26").await;
    let pings = |ids: std::ops::RangeInclusive<u64>| {
        Value::Array(
            ids.map(|id| json!({"jsonrpc": "2.0", "id": id, "method": "ping"}))
                .collect(),
        )
    };
    let refused = http.post(Some(&ana), Some(&session), pings(1..=65)).await;
    assert_eq!(refused.status, 400, "{}", refused.text);
    assert_eq!(refused.response()["error"]["code"], -32600);
    assert!(refused.text.contains("at most 64"), "{}", refused.text);
    let served = http.post(Some(&ana), Some(&session), pings(1..=64)).await;
    assert_eq!(served.status, 200, "{}", served.text);
    let answers: Value = serde_json::from_str(&served.text).unwrap();
    assert_eq!(answers.as_array().map(Vec::len), Some(64));

    let repeated = json!([
        {"jsonrpc": "2.0", "id": 7, "method": "ping"},
        {"jsonrpc": "2.0", "id": 7, "method": "ping"},
        {"jsonrpc": "2.0", "id": 8, "method": "auth/refresh", "params": {"token": ana}}
    ]);
    let reply = http.post(Some(&ana), Some(&session), repeated).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let answers: Value = serde_json::from_str(&reply.text).unwrap();
    let answers = answers.as_array().unwrap();
    assert_eq!(answers.len(), 3, "{}", reply.text);
    assert_eq!(
        answers
            .iter()
            .filter(|a| a["error"]["code"] == -32600)
            .count(),
        2,
        "the repeat and the batched refresh: {}",
        reply.text
    );

    // auth/refresh alone: a request is answered -32601 by the edge, a
    // notification accepted and dropped; in a session and without one.
    for session in [Some(session.as_str()), None] {
        let request = json!({"jsonrpc": "2.0", "id": 9, "method": "auth/refresh",
                             "params": {"token": ana}});
        let reply = http.post(Some(&ana), session, request).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.response()["error"]["code"], -32601, "{}", reply.text);
        let note = json!({"jsonrpc": "2.0", "method": "auth/refresh",
                          "params": {"token": ana}});
        let reply = http.post(Some(&ana), session, note).await;
        assert_eq!(reply.status, 202, "{}", reply.text);
    }
    assert_eq!(
        identity(&http.whoami(&ana, Some(&session), 10).await)["email"],
        "ana@example.com"
    );
    daemon.stop().await;
}

/// A page the loopback daemon serves itself (same origin: `Origin` equal
/// to the loopback `Host`) may call it without `EXAI_ALLOWED_ORIGINS`, as
/// the conformance suite's DNS-rebinding scenario expects; another origin
/// may not.
#[tokio::test]
async fn a_same_origin_loopback_page_is_served() {
    let daemon = TestDaemon::start().await;
    let http = Http::new(&daemon);
    let ana = token("ana@example.com");
    let host = daemon.http.trim_start_matches("http://").to_owned();
    let same = format!("http://{host}");
    let other = format!("http://localhost:{}", host.rsplit(':').next().unwrap());
    for (origin, status) in [(same.as_str(), 200), (other.as_str(), 403)] {
        let reply = http
            .send(
                reqwest::Method::POST,
                Some(&ana),
                None,
                &[("origin", origin)],
                Some(initialize(1).to_string()),
            )
            .await;
        assert_eq!(reply.status, status, "{origin}: {}", reply.text);
    }
    daemon.stop().await;
}

/// Editors that never say goodbye: most clients (the TypeScript SDK's
/// `close()`, the Inspector, the conformance suite, anything that crashes)
/// never DELETE their session. At the cap, a new connection closes the
/// user's least recently used HTTP session that nobody uses, instead of
/// being refused; a session with an open stream, or used within the grace,
/// is never taken.
#[tokio::test]
async fn abandoned_http_sessions_never_lock_their_user_out() {
    let grace = Duration::from_millis(500);
    let daemon = TestDaemon::start_with(|c| {
        c.edge.max_connections_per_user = 2;
        c.edge.http_idle_grace = grace;
    })
    .await;
    let http = Http::new(&daemon);
    let ana = token("ana@example.com");
    let vanished = http.open(&ana).await;
    let listening = http.open(&ana).await;
    let mut stream = http
        .client
        .get(&http.url)
        .bearer_auth(&ana)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &listening)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    // Within the grace nothing is taken: the cap answers as before.
    let refused = http.post(Some(&ana), None, initialize(1)).await;
    assert_eq!(refused.status, 429, "{}", refused.text);

    tokio::time::sleep(grace + Duration::from_millis(200)).await;
    // Six more clients that initialize and vanish, one after another: each
    // is admitted, taking the place of the one before it.
    let mut last = vanished.clone();
    for _ in 0..6 {
        let next = http.open(&ana).await;
        tokio::time::sleep(grace + Duration::from_millis(100)).await;
        assert_ne!(next, last);
        last = next;
    }
    // The first is gone (its client would initialize again), the one with
    // an open GET stream was never taken and still answers.
    assert_eq!(http.whoami(&ana, Some(&vanished), 5).await.status, 404);
    let kept = http.whoami(&ana, Some(&listening), 6).await;
    assert_eq!(kept.status, 200, "{}", kept.text);
    // A WebSocket at the cap takes the last idle HTTP session too.
    let socket = daemon.try_connect(Some(&ana)).await;
    assert!(socket.is_ok(), "{:?}", socket.err());
    assert_eq!(http.whoami(&ana, Some(&last), 7).await.status, 404);
    // Now every place is in use: refused, with nothing left to take.
    tokio::time::sleep(grace + Duration::from_millis(100)).await;
    let refused = http.post(Some(&ana), None, initialize(1)).await;
    assert_eq!(refused.status, 429, "{}", refused.text);
    let listening_still = tokio::time::timeout(Duration::from_millis(100), stream.chunk()).await;
    assert!(
        !matches!(listening_still, Ok(Ok(None))),
        "the GET stream is still open"
    );
    daemon.stop().await;
}

/// Attack 8: a GET stream held open past its token's `exp`. It ends at
/// `exp`, as a WebSocket in the same state is closed with 4401; a stream
/// opened with a token that lasts stays open.
#[tokio::test]
async fn a_get_stream_ends_when_its_token_expires() {
    let daemon = TestDaemon::start().await;
    let http = Http::new(&daemon);
    let ana = token("ana@example.com");
    let session = http.open(&ana).await;
    let mut short = exai_tests::claims("ana@example.com");
    short["exp"] = json!(exai_tests::now() + 2);
    let short = exai_tests::sign(&short);
    let get = |token: &str| {
        http.client
            .get(&http.url)
            .bearer_auth(token)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &session)
            .send()
    };
    let expiring = get(&short).await.unwrap();
    assert_eq!(expiring.status(), 200);
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), expiring.text())
        .await
        .expect("the stream ended at the token's expiry")
        .ok();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took <= Duration::from_secs(4),
        "ended after {took:?}"
    );
    let mut lasting = get(&ana).await.unwrap();
    assert_eq!(lasting.status(), 200);
    let still_open = tokio::time::timeout(Duration::from_secs(3), async {
        while let Ok(Some(_)) = lasting.chunk().await {}
    })
    .await;
    assert!(
        still_open.is_err(),
        "a stream with a lasting token stays open"
    );
    daemon.stop().await;
}

/// The `sessions` tool (and the table `exai sessions list` reads) names
/// the client of each session from its `initialize`: an HTTP session's at
/// once, a WebSocket's (opened at the upgrade, before `initialize`) with
/// the next batch; what a client says of itself is cut to 128 characters.
#[tokio::test]
async fn sessions_name_the_client_that_holds_them() {
    let (pg, db) = TestPostgres::migrated(&["named@example.com"]).await;
    let daemon = TestDaemon::start_with(|c| {
        c.store = pg.store_config(Duration::from_secs(5));
        c.edge.activity_flush = Duration::from_millis(200);
    })
    .await;
    let named = token("named@example.com");
    let http = Http::new(&daemon);
    let mut init = initialize(1);
    let long = format!("\u{1b}[2J{}", "x".repeat(300));
    init["params"]["clientInfo"] = json!({"name": long, "version": "9.9"});
    let reply = http.post(Some(&named), None, init).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let http_session = reply.session().expect("a session id");
    let mut ws = daemon.connect_initialized(&named).await;

    let mut listed = Vec::new();
    for _ in 0..100 {
        let reply = ws.call_tool(2, "sessions", json!({})).await;
        listed = reply["result"]["structuredContent"]["sessions"]
            .as_array()
            .unwrap_or_else(|| panic!("{reply}"))
            .clone();
        if listed.iter().all(|s| !s["client"].is_null()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let by_transport = |transport: &str| {
        listed
            .iter()
            .find(|s| s["transport"] == transport)
            .unwrap_or_else(|| panic!("no {transport} session in {listed:?}"))
            .clone()
    };
    let websocket = by_transport("websocket");
    assert_eq!(websocket["client"], "exai-tests", "{websocket}");
    assert_eq!(websocket["client_version"], "0");
    let over_http = by_transport("http");
    assert_eq!(over_http["session_id"], http_session.as_str());
    let name = over_http["client"].as_str().unwrap();
    assert_eq!(name.chars().count(), 128, "cut to 128 characters");
    assert!(long.starts_with(name));
    assert_eq!(over_http["client_version"], "9.9");
    let stored: String = db
        .query_one(
            "SELECT metadata->>'client_name' FROM mcp_sessions WHERE session_id = $1",
            &[&http_session],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, name);
    daemon.stop().await;
}

/// Abandoned HTTP sessions on one daemon never lock their user out of
/// another: the daemon holding them marks them idle in `mcp_sessions` once
/// unused for the grace, and a daemon at the user's cap takes the least
/// recently used of them; the holder then ends it (404). A session with an
/// open GET stream is never marked, so never taken.
#[tokio::test]
async fn abandoned_http_sessions_on_another_daemon_make_room() {
    const EMAIL: &str = "roaming@example.com";
    let (pg, db) = TestPostgres::migrated(&[EMAIL]).await;
    let grace = Duration::from_millis(500);
    let start = || {
        TestDaemon::start_with(|c| {
            c.store = pg.store_config(Duration::from_secs(5));
            c.edge.max_connections_per_user = 2;
            c.edge.http_idle_grace = grace;
            c.edge.activity_flush = Duration::from_millis(100);
        })
    };
    let (first, second) = (start().await, start().await);
    let http = Http::new(&first);
    let user = token(EMAIL);
    let vanished = http.open(&user).await;
    let listening = http.open(&user).await;
    let mut stream = http
        .client
        .get(&http.url)
        .bearer_auth(&user)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &listening)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let refused = second
        .try_connect(Some(&user))
        .await
        .err()
        .expect("at the cap");
    assert_eq!(refused.status, 429, "within the grace nothing is taken");

    let idle_since = async |session: &str| -> Option<std::time::SystemTime> {
        db.query_one(
            "SELECT idle_since FROM mcp_sessions WHERE session_id = $1",
            &[&session],
        )
        .await
        .unwrap()
        .get(0)
    };
    let mut marked = false;
    for _ in 0..50 {
        if idle_since(&vanished).await.is_some() {
            marked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(marked, "the abandoned session is marked idle");
    assert_eq!(
        idle_since(&listening).await,
        None,
        "one with a stream is in use"
    );

    let socket = second.try_connect(Some(&user)).await;
    assert!(socket.is_ok(), "admitted elsewhere: {:?}", socket.err());
    let status: String = db
        .query_one(
            "SELECT connection_status FROM mcp_sessions WHERE session_id = $1",
            &[&vanished],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "expired");
    let mut gone = false;
    for _ in 0..50 {
        if http.whoami(&user, Some(&vanished), 2).await.status == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the daemon holding it ended it");
    let kept = http.whoami(&user, Some(&listening), 3).await;
    assert_eq!(kept.status, 200, "{}", kept.text);
    let refused = Http::new(&second)
        .post(Some(&user), None, initialize(1))
        .await;
    assert_eq!(
        refused.status, 429,
        "nothing idle is left: {}",
        refused.text
    );
    let still = tokio::time::timeout(Duration::from_millis(100), stream.chunk()).await;
    assert!(
        !matches!(still, Ok(Ok(None))),
        "the GET stream is still open"
    );
    drop(socket);
    first.stop().await;
    second.stop().await;
}

/// An idle HTTP session's service is suspended, as an idle WebSocket's is,
/// and its next request restores it as it was: the same session, the same
/// handler (the log level set before still holds), nothing for anyone
/// else; a suspended session is still ended by `DELETE`.
#[tokio::test]
async fn an_idle_http_session_is_suspended_and_restored_as_it_was() {
    let daemon = TestDaemon::start_with(|c| c.edge.service_idle = Duration::from_millis(100)).await;
    let http = Http::new(&daemon);
    let ana = token("ana@example.com");
    let session = http.open(&ana).await;
    let set = http
        .post(
            Some(&ana),
            Some(&session),
            json!({"jsonrpc": "2.0", "id": 2, "method": "logging/setLevel",
                   "params": {"level": "info"}}),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.text);
    let suspended = async |started: u64| {
        exai_tests::wait_for_metric(&daemon, "exai_mcp_services_running 0").await;
        exai_tests::wait_for_metric(
            &daemon,
            &format!("exai_mcp_services_started_total {started}"),
        )
        .await;
    };
    suspended(1).await;

    let who = identity(&http.whoami(&ana, Some(&session), 3).await);
    assert_eq!(who["session_id"], session.as_str(), "restored under its id");
    assert_eq!(who["email"], "ana@example.com");
    suspended(2).await;
    // Nobody else reaches it, suspended or not, and nothing unknown is
    // restored.
    let bo = token("bo@example.com");
    assert_eq!(http.whoami(&bo, Some(&session), 4).await.status, 404);
    assert_eq!(http.whoami(&ana, Some("made-up"), 5).await.status, 404);

    // The handler kept its log level: a call's log message reaches the
    // GET stream opened after the restore.
    let mut stream = http
        .client
        .get(&http.url)
        .bearer_auth(&ana)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let call = http
        .post(
            Some(&ana),
            Some(&session),
            json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call",
                   "params": {"name": "chat", "arguments": {"prompt": "again"}}}),
        )
        .await;
    assert!(
        call.response()["result"]["content"].is_array(),
        "{}",
        call.text
    );
    let mut seen = call.text.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !seen.contains("notifications/message") && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), stream.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(_) => break,
            Err(_) => {}
        }
    }
    assert!(
        seen.contains("notifications/message") && seen.contains("\"info\""),
        "the log level survived the suspension: {seen}"
    );
    drop(stream);
    suspended(3).await;
    assert_eq!(http.delete(&ana, &session).await.status, 204);
    assert_eq!(http.whoami(&ana, Some(&session), 7).await.status, 404);
    daemon.stop().await;
}

/// A call whose stream the client dropped before the answer keeps its
/// session's service running (it is not suspended), so the client can
/// resume the stream from its last event and get the answer.
#[tokio::test]
async fn a_dropped_answer_stream_is_resumed_not_suspended() {
    let daemon = TestDaemon::start_with(|c| {
        c.edge.service_idle = Duration::from_millis(100);
        c.echo_delay = Duration::from_millis(1000);
    })
    .await;
    let http = Http::new(&daemon);
    let ana = token("ana@example.com");
    let session = http.open_as(&ana, "2025-11-25").await;
    let mut answer = http
        .client
        .post(&http.url)
        .bearer_auth(&ana)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .body(
            json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                   "params": {"name": "chat", "arguments": {"prompt": "slow"}}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let first = String::from_utf8_lossy(&answer.chunk().await.unwrap().unwrap()).into_owned();
    let event = first
        .lines()
        .find_map(|line| line.strip_prefix("id:"))
        .unwrap_or_else(|| panic!("a priming event with an id: {first:?}"))
        .trim()
        .to_owned();
    drop(answer);
    // Well past the idle time: still running, not suspended.
    tokio::time::sleep(Duration::from_millis(500)).await;
    exai_tests::wait_for_metric(&daemon, "exai_mcp_services_running 1").await;
    let resumed = http
        .send(
            reqwest::Method::GET,
            Some(&ana),
            Some(&session),
            &[
                ("last-event-id", event.as_str()),
                ("mcp-protocol-version", "2025-11-25"),
                ("accept", "text/event-stream"),
            ],
            None,
        )
        .await;
    assert_eq!(resumed.status, 200, "{}", resumed.text);
    let reply = resumed
        .messages
        .iter()
        .find(|m| m["id"] == 9)
        .unwrap_or_else(|| panic!("the answer, resumed: {}", resumed.text));
    assert!(reply["result"]["content"].is_array(), "{reply}");
    daemon.stop().await;
}

/// SSE priming events (an id and no data, to resume from) go only to
/// sessions of 2025-11-25 and later, as the TypeScript SDK's own server
/// does: older clients read one as a message and fail on every request.
#[tokio::test]
async fn priming_events_only_for_clients_that_expect_them() {
    let daemon = TestDaemon::start().await;
    let http = Http::new(&daemon);
    let ana = token("ana@example.com");
    let primed = |text: &str| {
        text.split("\n\n").any(|event| {
            let lines: Vec<&str> = event.lines().collect();
            lines.iter().any(|l| l.starts_with("data:"))
                && lines
                    .iter()
                    .filter(|l| l.starts_with("data:"))
                    .all(|l| l.trim_start_matches("data:").trim().is_empty())
        })
    };
    for (version, expected) in [
        ("2025-06-18", false),
        ("2025-03-26", false),
        ("2025-11-25", true),
    ] {
        let mut init = initialize(1);
        init["params"]["protocolVersion"] = json!(version);
        let reply = http.post(Some(&ana), None, init).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(
            primed(&reply.text),
            expected,
            "{version} initialize: {:?}",
            reply.text
        );
        let session = reply.session().unwrap();
        let reply = http
            .send(
                reqwest::Method::POST,
                Some(&ana),
                Some(&session),
                &[("mcp-protocol-version", version)],
                Some(
                    json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                           "params": {"name": "whoami", "arguments": {}}})
                    .to_string(),
                ),
            )
            .await;
        assert_eq!(identity(&reply)["email"], "ana@example.com");
        assert_eq!(
            primed(&reply.text),
            expected,
            "{version} call: {:?}",
            reply.text
        );
        assert_eq!(http.delete(&ana, &session).await.status, 204);
    }
    daemon.stop().await;
}

/// A stateless 2026-07-28 call, with its client context in `_meta`.
fn stateless_call(id: u64, tool: &str, arguments: Value, meta: Value) -> String {
    let mut params = json!({"name": tool, "arguments": arguments, "_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}
    }});
    for (key, value) in meta.as_object().into_iter().flatten() {
        params["_meta"][key] = value.clone();
    }
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params}).to_string()
}

fn stateless_headers(tool: &str) -> [(&str, &str); 3] {
    [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", tool),
    ]
}

/// A 2026-07-28 client asks for log messages in each request's `_meta`
/// (there is no session to `logging/setLevel` in): they come on the
/// request's stream, before its result, at that level and above only.
#[tokio::test]
async fn a_stateless_call_logs_at_the_level_its_meta_asks() {
    let daemon = TestDaemon::start().await;
    let http = Http::new(&daemon);
    let ana = token("ana@example.com");
    let logged = async |meta: Value| -> Vec<Value> {
        let reply = http
            .send(
                reqwest::Method::POST,
                Some(&ana),
                None,
                &stateless_headers("chat"),
                Some(stateless_call(1, "chat", json!({"prompt": "log me"}), meta)),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        let last = reply
            .messages
            .last()
            .unwrap_or_else(|| panic!("{}", reply.text));
        assert!(
            last["result"]["content"].is_array(),
            "the result comes last: {}",
            reply.text
        );
        reply
            .messages
            .iter()
            .filter(|m| m["method"] == "notifications/message")
            .cloned()
            .collect()
    };
    let info = logged(json!({"io.modelcontextprotocol/logLevel": "info"})).await;
    assert!(!info.is_empty(), "a log message at info");
    assert!(
        info.iter().all(|m| m["params"]["level"] == "info"),
        "{info:?}"
    );
    assert!(logged(json!({})).await.is_empty(), "none unasked");
    assert!(
        logged(json!({"io.modelcontextprotocol/logLevel": "error"}))
            .await
            .is_empty(),
        "none below the level asked"
    );
    daemon.stop().await;
}

/// A slow stateless 2026-07-28 call is not silent until it ends: its
/// response head comes at once and keep-alives follow on the session
/// interval (proxies cut silent responses), then its result.
#[tokio::test]
async fn a_slow_stateless_call_answers_its_head_at_once_and_keeps_alive() {
    let daemon = TestDaemon::start_with(|c| {
        c.echo_delay = Duration::from_millis(1500);
        c.edge.ping_interval = Duration::from_millis(300);
    })
    .await;
    let http = Http::new(&daemon);
    let ana = token("ana@example.com");
    let started = std::time::Instant::now();
    let mut request = http
        .client
        .post(&http.url)
        .bearer_auth(&ana)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(stateless_call(
            5,
            "chat",
            json!({"prompt": "slowly"}),
            json!({}),
        ));
    for (name, value) in stateless_headers("chat") {
        request = request.header(name, value);
    }
    let mut response = request.send().await.unwrap();
    let head_after = started.elapsed();
    assert_eq!(response.status(), 200);
    assert!(
        head_after < Duration::from_millis(800),
        "the head after {head_after:?}"
    );
    let mut body = String::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    let keep_alives = body.split("\n\n").filter(|e| e.starts_with(':')).count();
    assert!(
        keep_alives >= 3,
        "keep-alives while the model works: {body:?}"
    );
    let answer = body
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|m| m["id"] == 5)
        .unwrap_or_else(|| panic!("the result: {body:?}"));
    assert_eq!(answer["result"]["content"][0]["text"], "[echo] slowly");
    // A quick one is answered as before, and a refusal keeps its status.
    let quick = http
        .send(
            reqwest::Method::POST,
            Some(&ana),
            None,
            &stateless_headers("whoami"),
            Some(stateless_call(6, "whoami", json!({}), json!({}))),
        )
        .await;
    assert_eq!(identity(&quick)["email"], "ana@example.com");
    let refused = http
        .send(
            reqwest::Method::POST,
            Some(&ana),
            None,
            &[("mcp-protocol-version", "1999-01-01")],
            Some(stateless_call(7, "whoami", json!({}), json!({}))),
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.text);
    daemon.stop().await;
}
