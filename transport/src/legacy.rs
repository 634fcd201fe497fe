//! The original EXAI daemon's socket protocol, so its shims keep working.
//!
//! A connection speaks it when its first frame is `{"op": "hello", …}`:
//!
//! | client sends | the daemon answers |
//! |---|---|
//! | `hello {token?, jwt?, session_id?}` | `hello_ack {ok, session_id}` |
//! | `list_tools` | `list_tools_res {tools}` |
//! | `call_tool {request_id, name, arguments}` | `progress {request_id, …}`…, then exactly one `call_tool_res {request_id, outputs, error}` |
//! | `cancel {request_id}` | the call's one `call_tool_res`, with error `CANCELLED` |
//! | `ping` | `pong` |
//!
//! Each op is translated into the MCP request it stands for and handed to
//! the connection's own MCP server, so a legacy client gets the same tools,
//! the same identity and the same isolation as an MCP client; the answers
//! are translated back. Everything here belongs to one connection: request
//! ids are its own, nothing is cached or de-duplicated across connections,
//! and a request id has at most one call in flight and gets exactly one
//! result (whichever of the answer and a cancel comes first wins; the
//! other is dropped).

use std::collections::HashMap;
use std::sync::Mutex;

use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use serde_json::{Value, json};

/// Calls one legacy connection may have in flight; one more is answered
/// with `OVER_CAPACITY`.
const MAX_CALLS_IN_FLIGHT: usize = 8;

/// The JSON-RPC id of the synthetic `initialize`.
const INITIALIZE_ID: i64 = 0;

/// A `hello` frame.
#[derive(Debug)]
pub(crate) struct Hello {
    /// The credential it carries: `jwt`, else `token` (an access token, an
    /// `exai_…` API key, or single-user mode's shared token).
    pub(crate) credential: Option<String>,
}

impl Hello {
    /// `Some` when `text` is a `hello` frame.
    pub(crate) fn parse(text: &str) -> Option<Hello> {
        let frame: Value = serde_json::from_str(text).ok()?;
        if frame.get("op")?.as_str()? != "hello" {
            return None;
        }
        let field = |name: &str| {
            frame
                .get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        Some(Hello {
            credential: field("jwt").or_else(|| field("token")),
        })
    }
}

/// The answer to a `hello` that was accepted.
pub(crate) fn hello_ack(session_id: &str) -> Value {
    json!({"op": "hello_ack", "ok": true, "session_id": session_id})
}

/// The answer to a `hello` that was refused (the connection then closes).
pub(crate) fn hello_refused(error: &str) -> Value {
    json!({"op": "hello_ack", "ok": false, "error": error})
}

/// What one client frame asks for.
#[derive(Default)]
pub(crate) struct Step {
    /// Messages for the MCP server.
    pub(crate) to_server: Vec<ClientJsonRpcMessage>,
    /// Frames for the client, answered here.
    pub(crate) replies: Vec<Value>,
    /// Whether the frame was a request (for the session's activity).
    pub(crate) active: bool,
}

/// What a JSON-RPC id of ours stands for.
enum Pending {
    ListTools { request_id: Option<Value> },
    Call { request_id: Value },
}

#[derive(Default)]
struct State {
    next_id: i64,
    pending: HashMap<i64, Pending>,
    /// Calls in flight, by the client's request id (as JSON text).
    calls: HashMap<String, i64>,
}

/// One legacy connection's translation state, shared by its reader (client
/// frames in) and its MCP transport (server messages out).
#[derive(Default)]
pub(crate) struct Legacy {
    state: Mutex<State>,
}

impl Legacy {
    /// The MCP handshake a legacy client never sends itself.
    pub(crate) fn handshake() -> Vec<ClientJsonRpcMessage> {
        [
            json!({
                "jsonrpc": "2.0",
                "id": INITIALIZE_ID,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "exai-legacy-client", "version": "1"},
                },
            }),
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        ]
        .into_iter()
        .filter_map(|message| serde_json::from_value(message).ok())
        .collect()
    }

    /// A frame from the client after its `hello`.
    pub(crate) fn on_frame(&self, text: &str) -> Step {
        let mut step = Step::default();
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            step.replies
                .push(error_frame(None, "INVALID_JSON", "the frame is not JSON"));
            return step;
        };
        let request_id = frame.get("request_id").cloned();
        let op = frame.get("op").and_then(Value::as_str).unwrap_or_default();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match op {
            "ping" => step.replies.push(match request_id {
                Some(id) => json!({"op": "pong", "request_id": id}),
                None => json!({"op": "pong"}),
            }),
            "list_tools" => {
                let id = state.next();
                state.pending.insert(id, Pending::ListTools { request_id });
                step.active = true;
                step.to_server.extend(request(id, "tools/list", json!({})));
            }
            "call_tool" => {
                step.active = true;
                match state.call(&frame, request_id) {
                    Ok((id, params)) => step.to_server.extend(request(id, "tools/call", params)),
                    Err(reply) => step.replies.push(reply),
                }
            }
            "cancel" => match request_id {
                Some(request_id) => match state.calls.remove(&request_id.to_string()) {
                    Some(id) => {
                        state.pending.remove(&id);
                        step.to_server.extend(notification(
                            "notifications/cancelled",
                            json!({"requestId": id, "reason": "cancelled by the client"}),
                        ));
                        step.replies.push(json!({
                            "op": "call_tool_res",
                            "request_id": request_id,
                            "outputs": [],
                            "error": {"code": "CANCELLED", "message": "cancelled by the client"},
                        }));
                    }
                    None => step.replies.push(error_frame(
                        Some(request_id),
                        "NOT_FOUND",
                        "no call with this request_id is in flight",
                    )),
                },
                None => step.replies.push(error_frame(
                    None,
                    "INVALID_REQUEST",
                    "cancel needs a request_id",
                )),
            },
            "hello" => step.replies.push(error_frame(
                request_id,
                "INVALID_REQUEST",
                "hello was already received",
            )),
            "" => step.replies.push(error_frame(
                request_id,
                "INVALID_REQUEST",
                "the frame has no op",
            )),
            other => step.replies.push(error_frame(
                request_id,
                "UNKNOWN_OP",
                &format!(
                    "unknown op '{}'",
                    other.chars().take(64).collect::<String>()
                ),
            )),
        }
        step
    }

    /// A message from the MCP server, as the legacy frame to send (`None`:
    /// nothing to send: the handshake's answer, a cancelled call's late
    /// answer, a notification the protocol has no frame for).
    pub(crate) fn encode(&self, message: &ServerJsonRpcMessage) -> Option<Value> {
        let message = serde_json::to_value(message).ok()?;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if message.get("method").and_then(Value::as_str) == Some("notifications/progress") {
            let params = message.get("params")?;
            let id = params.get("progressToken")?.as_i64()?;
            let Some(Pending::Call { request_id }) = state.pending.get(&id) else {
                return None;
            };
            let mut frame = json!({"op": "progress", "request_id": request_id});
            for field in ["progress", "total", "message"] {
                if let Some(value) = params.get(field) {
                    frame[field] = value.clone();
                }
            }
            return Some(frame);
        }
        let id = message.get("id")?.as_i64()?;
        let pending = state.pending.remove(&id)?;
        let error = message.get("error").map(|error| {
            json!({
                "code": rpc_error_name(error.get("code").and_then(Value::as_i64)),
                "message": error.get("message").cloned().unwrap_or_default(),
            })
        });
        let result = message.get("result");
        Some(match pending {
            Pending::ListTools { request_id } => {
                let mut frame = json!({"op": "list_tools_res"});
                if let Some(request_id) = request_id {
                    frame["request_id"] = request_id;
                }
                match error {
                    Some(error) => frame["error"] = error,
                    None => {
                        frame["tools"] = result
                            .and_then(|r| r.get("tools"))
                            .cloned()
                            .unwrap_or_else(|| json!([]));
                    }
                }
                frame
            }
            Pending::Call { request_id } => {
                state.calls.remove(&request_id.to_string());
                let outputs = result
                    .and_then(|r| r.get("content"))
                    .cloned()
                    .unwrap_or_else(|| json!([]));
                let tool_error = result
                    .and_then(|r| r.get("isError"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                    .then(|| {
                        let text = outputs
                            .pointer("/0/text")
                            .cloned()
                            .unwrap_or_else(|| json!("the tool failed"));
                        json!({"code": "TOOL_ERROR", "message": text})
                    });
                json!({
                    "op": "call_tool_res",
                    "request_id": request_id,
                    "outputs": outputs,
                    "error": error.or(tool_error),
                })
            }
        })
    }
}

impl State {
    fn next(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    /// Admits a `call_tool`: its JSON-RPC id and `tools/call` params, or
    /// the one frame that answers it instead.
    fn call(&mut self, frame: &Value, request_id: Option<Value>) -> Result<(i64, Value), Value> {
        let Some(request_id) = request_id.filter(|id| id.is_string() || id.is_number()) else {
            return Err(error_frame(
                None,
                "INVALID_REQUEST",
                "call_tool needs a request_id (a string or a number)",
            ));
        };
        let key = request_id.to_string();
        if self.calls.contains_key(&key) {
            // Not a call_tool_res: the call in flight gets that, once.
            return Err(error_frame(
                Some(request_id),
                "DUPLICATE_REQUEST",
                "a call with this request_id is already in flight",
            ));
        }
        let refuse = |code: &str, message: &str| {
            json!({
                "op": "call_tool_res",
                "request_id": request_id,
                "outputs": [],
                "error": {"code": code, "message": message},
            })
        };
        let Some(name) = frame.get("name").and_then(Value::as_str) else {
            return Err(refuse("INVALID_REQUEST", "call_tool needs a name"));
        };
        let arguments = match frame.get("arguments") {
            None | Some(Value::Null) => json!({}),
            Some(arguments @ Value::Object(_)) => arguments.clone(),
            Some(_) => return Err(refuse("INVALID_REQUEST", "arguments must be an object")),
        };
        if self.calls.len() >= MAX_CALLS_IN_FLIGHT {
            return Err(refuse(
                "OVER_CAPACITY",
                "too many calls in flight on this connection; retry when one finishes",
            ));
        }
        let id = self.next();
        self.calls.insert(key, id);
        self.pending.insert(id, Pending::Call { request_id });
        Ok((
            id,
            json!({"name": name, "arguments": arguments, "_meta": {"progressToken": id}}),
        ))
    }
}

fn request(id: i64, method: &str, params: Value) -> Option<ClientJsonRpcMessage> {
    serde_json::from_value(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
        .ok()
}

fn notification(method: &str, params: Value) -> Option<ClientJsonRpcMessage> {
    serde_json::from_value(json!({"jsonrpc": "2.0", "method": method, "params": params})).ok()
}

fn error_frame(request_id: Option<Value>, code: &str, message: &str) -> Value {
    let mut frame = json!({"op": "error", "error": {"code": code, "message": message}});
    if let Some(request_id) = request_id {
        frame["request_id"] = request_id;
    }
    frame
}

/// The legacy protocol's error codes are names.
fn rpc_error_name(code: Option<i64>) -> &'static str {
    match code {
        Some(-32700) => "INVALID_JSON",
        Some(-32600) => "INVALID_REQUEST",
        Some(-32601) => "METHOD_NOT_FOUND",
        Some(-32602) => "INVALID_PARAMS",
        _ => "INTERNAL_ERROR",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(message: Value) -> ServerJsonRpcMessage {
        serde_json::from_value(message).unwrap()
    }

    #[test]
    fn a_call_gets_exactly_one_result_whether_answered_or_cancelled() {
        let legacy = Legacy::default();
        let call = r#"{"op":"call_tool","request_id":"r1","name":"whoami","arguments":{}}"#;
        let step = legacy.on_frame(call);
        assert_eq!(step.to_server.len(), 1);
        let again = legacy.on_frame(call);
        assert_eq!(again.replies[0]["error"]["code"], "DUPLICATE_REQUEST");
        assert!(again.to_server.is_empty());

        let cancelled = legacy.on_frame(r#"{"op":"cancel","request_id":"r1"}"#);
        assert_eq!(cancelled.replies[0]["op"], "call_tool_res");
        assert_eq!(cancelled.replies[0]["error"]["code"], "CANCELLED");
        // The server's late answer is dropped: one result only.
        let late = server(json!({"jsonrpc": "2.0", "id": 1, "result": {"content": []}}));
        assert!(legacy.encode(&late).is_none());

        legacy.on_frame(&call.replace("r1", "r2"));
        let answer = server(json!({"jsonrpc": "2.0", "id": 2,
            "result": {"content": [{"type": "text", "text": "hi"}]}}));
        let frame = legacy.encode(&answer).unwrap();
        assert_eq!(frame["op"], "call_tool_res");
        assert_eq!(frame["request_id"], "r2");
        assert_eq!(frame["outputs"][0]["text"], "hi");
        assert!(frame["error"].is_null());
        assert!(legacy.encode(&answer).is_none(), "never twice");
        let too_late = legacy.on_frame(r#"{"op":"cancel","request_id":"r2"}"#);
        assert_eq!(too_late.replies[0]["error"]["code"], "NOT_FOUND");
    }

    #[test]
    fn bad_frames_get_an_error_frame() {
        let legacy = Legacy::default();
        let code = |text: &str| legacy.on_frame(text).replies[0]["error"]["code"].clone();
        assert_eq!(code("not json"), "INVALID_JSON");
        assert_eq!(code(r#"{"request_id":1}"#), "INVALID_REQUEST");
        assert_eq!(code(r#"{"op":"launch"}"#), "UNKNOWN_OP");
        assert_eq!(code(r#"{"op":"call_tool","name":"x"}"#), "INVALID_REQUEST");
        assert_eq!(
            code(r#"{"op":"call_tool","request_id":"a","arguments":{}}"#),
            "INVALID_REQUEST"
        );
        assert_eq!(
            code(r#"{"op":"call_tool","request_id":"a","name":"x","arguments":[1]}"#),
            "INVALID_REQUEST"
        );
        for i in 0..MAX_CALLS_IN_FLIGHT {
            let frame = format!(r#"{{"op":"call_tool","request_id":{i},"name":"x"}}"#);
            assert!(legacy.on_frame(&frame).replies.is_empty());
        }
        let over = r#"{"op":"call_tool","request_id":"one-more","name":"x"}"#;
        assert_eq!(code(over), "OVER_CAPACITY");
    }

    #[test]
    fn hello_carries_jwt_or_token() {
        let hello = Hello::parse(r#"{"op":"hello","token":"t","jwt":"j"}"#).unwrap();
        assert_eq!(hello.credential.as_deref(), Some("j"));
        let hello = Hello::parse(r#"{"op":"hello","token":"t","jwt":""}"#).unwrap();
        assert_eq!(hello.credential.as_deref(), Some("t"));
        assert!(
            Hello::parse(r#"{"op":"hello"}"#)
                .unwrap()
                .credential
                .is_none()
        );
        assert!(Hello::parse(r#"{"jsonrpc":"2.0","method":"initialize","id":1}"#).is_none());
    }
}
