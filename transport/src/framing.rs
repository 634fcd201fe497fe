//! JSON-RPC framing: one text frame in, one MCP message (or a precise error
//! to send back) out.
//!
//! `rmcp` owns the MCP message model; this module only decides what to say
//! when a frame is not a message `rmcp` can take.

use rmcp::model::{ClientJsonRpcMessage, ErrorData, RequestId, ServerJsonRpcMessage};
use serde_json::Value;

/// The outcome of decoding one frame.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// A message for the MCP server.
    Message(Box<ClientJsonRpcMessage>),
    /// Not a usable message: send this error back; the connection stays open.
    Reply(Box<ServerJsonRpcMessage>),
    /// A malformed notification: JSON-RPC forbids answering it.
    Drop(&'static str),
}

pub(crate) fn decode(text: &str) -> Decoded {
    // Fast path: a well-formed message.
    if let Ok(message) = serde_json::from_str::<ClientJsonRpcMessage>(text) {
        return Decoded::Message(Box::new(message));
    }
    // serde_json limits nesting to 128 levels, so a deeply nested frame is a
    // parse error here, not a stack overflow.
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(_) => {
            return reply(
                None,
                ErrorData::parse_error("Parse error: not valid JSON", None),
            );
        }
    };
    let Some(object) = value.as_object() else {
        let message = if value.is_array() {
            "Invalid Request: batches are only accepted in protocol version 2025-03-26"
        } else {
            "Invalid Request: expected a JSON-RPC object"
        };
        return reply(None, ErrorData::invalid_request(message, None));
    };
    let id = object
        .get("id")
        .and_then(|id| serde_json::from_value::<RequestId>(id.clone()).ok());
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return reply(
            id,
            ErrorData::invalid_request("Invalid Request: jsonrpc must be \"2.0\"", None),
        );
    }
    match (object.get("method").and_then(Value::as_str), id) {
        (Some(method), Some(id)) => reply(
            Some(id),
            ErrorData::invalid_params(format!("Invalid params for '{}'", clip(method)), None),
        ),
        (Some(_), None) if !object.contains_key("id") => Decoded::Drop("malformed notification"),
        (_, id) => reply(id, ErrorData::invalid_request("Invalid Request", None)),
    }
}

fn reply(id: Option<RequestId>, error: ErrorData) -> Decoded {
    Decoded::Reply(Box::new(ServerJsonRpcMessage::error(error, id)))
}

/// The method the edge answers itself, never passed to the MCP server (it
/// carries a token, which `rmcp` would log with the message).
pub(crate) const REFRESH: &str = "auth/refresh";

/// Whether `message` is a request or notification of the edge's own
/// method ([`REFRESH`]).
pub(crate) fn is_refresh(message: &ClientJsonRpcMessage) -> bool {
    match message {
        ClientJsonRpcMessage::Request(request) => request.request.method() == REFRESH,
        ClientJsonRpcMessage::Notification(notification) => matches!(
            &notification.notification,
            rmcp::model::ClientNotification::CustomNotification(custom) if custom.method == REFRESH
        ),
        _ => false,
    }
}

/// The one protocol version whose clients may send JSON-RPC batches (added
/// in 2025-03-26, removed in 2025-06-18).
pub(crate) const BATCH_VERSION: &str = "2025-03-26";

/// A batch, split: the members for the MCP service, and the answers owed at
/// once (to invalid members, and to methods that may not be batched).
pub(crate) struct Batch {
    pub(crate) messages: Vec<ClientJsonRpcMessage>,
    pub(crate) answers: Vec<ServerJsonRpcMessage>,
}

/// Splits batch `text`; requests for a method in `alone` are answered with
/// -32600 (notifications for one are dropped), and so is a request whose id
/// an earlier member of the batch already used. An empty batch, one of more
/// than `max_members` members, or one that is not JSON, is one error
/// instead.
pub(crate) fn split_batch(
    text: &str,
    alone: &[&str],
    max_members: usize,
) -> Result<Batch, Box<ServerJsonRpcMessage>> {
    let items = match serde_json::from_str::<Vec<Value>>(text) {
        Ok(items) if items.len() > max_members => {
            let error = ErrorData::invalid_request(
                format!(
                    "Invalid Request: a batch may hold at most {max_members} messages, this one has {}",
                    items.len()
                ),
                None,
            );
            return Err(Box::new(ServerJsonRpcMessage::error(error, None)));
        }
        Ok(items) if !items.is_empty() => items,
        Ok(_) => {
            let error = ErrorData::invalid_request("Invalid Request: empty batch", None);
            return Err(Box::new(ServerJsonRpcMessage::error(error, None)));
        }
        Err(_) => {
            let error = ErrorData::parse_error("Parse error: not valid JSON", None);
            return Err(Box::new(ServerJsonRpcMessage::error(error, None)));
        }
    };
    let mut batch = Batch {
        messages: Vec::with_capacity(items.len()),
        answers: Vec::new(),
    };
    let mut ids = std::collections::HashSet::new();
    for item in items {
        match decode(&item.to_string()) {
            Decoded::Message(message) => {
                let refusal = match &*message {
                    ClientJsonRpcMessage::Request(request) => {
                        let method = request.request.method();
                        if alone.contains(&method) {
                            Some(format!(
                                "Invalid Request: {method} cannot be part of a batch"
                            ))
                        } else if !ids.insert(request.id.clone()) {
                            Some(
                                "Invalid Request: another message of this batch has this id".into(),
                            )
                        } else {
                            None
                        }
                        .map(|why| (why, request.id.clone()))
                    }
                    ClientJsonRpcMessage::Notification(_) if is_refresh(&message) => {
                        tracing::debug!("dropped a batched notification of the edge's own");
                        continue;
                    }
                    _ => None,
                };
                match refusal {
                    Some((why, id)) => batch.answers.push(ServerJsonRpcMessage::error(
                        ErrorData::invalid_request(why, None),
                        Some(id),
                    )),
                    None => batch.messages.push(*message),
                }
            }
            Decoded::Reply(reply) => batch.answers.push(*reply),
            Decoded::Drop(why) => tracing::debug!(why, "dropped a batch member"),
        }
    }
    Ok(batch)
}

/// The request `message` answers, if it is a response or an error to one.
pub(crate) fn answered_id(message: &ServerJsonRpcMessage) -> Option<&RequestId> {
    match message {
        ServerJsonRpcMessage::Response(response) => Some(&response.id),
        ServerJsonRpcMessage::Error(error) => error.id.as_ref(),
        _ => None,
    }
}

/// The request `message` cancels, if it is `notifications/cancelled`.
pub(crate) fn cancelled_id(message: &ClientJsonRpcMessage) -> Option<&RequestId> {
    match message {
        ClientJsonRpcMessage::Notification(notification) => match &notification.notification {
            rmcp::model::ClientNotification::CancelledNotification(cancelled) => {
                cancelled.params.request_id.as_ref()
            }
            _ => None,
        },
        _ => None,
    }
}

/// A method name as it may appear in an error: at most 64 characters.
fn clip(method: &str) -> String {
    method.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Option<Value>) {
        let got = match decode(input) {
            Decoded::Message(_) => None,
            Decoded::Reply(m) => Some(serde_json::to_value(&m).unwrap()),
            Decoded::Drop(_) => Some(Value::String("dropped".into())),
        };
        let expected = expected.map(|e| {
            if e == "dropped" {
                e
            } else {
                serde_json::json!({"jsonrpc": "2.0", "error": e["error"], "id": e["id"]})
            }
        });
        let strip_null_id = |v: Option<Value>| {
            v.map(|mut v| {
                if v.get("id") == Some(&Value::Null) {
                    v.as_object_mut().unwrap().remove("id");
                }
                v
            })
        };
        assert_eq!(
            strip_null_id(got),
            strip_null_id(expected),
            "input: {input}"
        );
    }

    fn err(id: Value, code: i32, message: &str) -> Option<Value> {
        Some(serde_json::json!({"id": id, "error": {"code": code, "message": message}}))
    }

    #[test]
    fn frames() {
        check(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#, None);
        check(
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            None,
        );
        check(
            "garbage",
            err(Value::Null, -32700, "Parse error: not valid JSON"),
        );
        check(
            "{\"jsonrpc\":",
            err(Value::Null, -32700, "Parse error: not valid JSON"),
        );
        check(
            &"[".repeat(100_000),
            err(Value::Null, -32700, "Parse error: not valid JSON"),
        );
        check(
            "42",
            err(
                Value::Null,
                -32600,
                "Invalid Request: expected a JSON-RPC object",
            ),
        );
        check(
            "[]",
            err(
                Value::Null,
                -32600,
                "Invalid Request: batches are only accepted in protocol version 2025-03-26",
            ),
        );
        check(
            r#"{"id":7,"method":"ping"}"#,
            err(7.into(), -32600, "Invalid Request: jsonrpc must be \"2.0\""),
        );
        check(
            r#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":7}"#,
            err("a".into(), -32602, "Invalid params for 'tools/call'"),
        );
        check(
            r#"{"jsonrpc":"2.0","method":"tools/call","params":7}"#,
            Some("dropped".into()),
        );
        check(
            r#"{"jsonrpc":"2.0","id":{"x":1}}"#,
            err(Value::Null, -32600, "Invalid Request"),
        );
    }
}
