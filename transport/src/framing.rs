//! JSON-RPC framing: one text frame in, one MCP message (or a precise error
//! to send back) out.
//!
//! `rmcp` owns the MCP message model; this module only decides what to say
//! when a frame is not a message `rmcp` can take.

use rmcp::model::{ClientJsonRpcMessage, ErrorData, RequestId, ServerJsonRpcMessage};
use serde::de::{Deserializer as _, IgnoredAny, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;
use std::fmt;

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
    let items = match members(text, max_members) {
        Ok(members) if members.count > max_members => {
            let error = ErrorData::invalid_request(
                format!(
                    "Invalid Request: a batch may hold at most {max_members} messages, this one has {}",
                    members.count
                ),
                None,
            );
            return Err(Box::new(ServerJsonRpcMessage::error(error, None)));
        }
        Ok(members) if members.count > 0 => members.kept,
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
        match decode(item.get()) {
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

/// A batch's members as raw JSON: the first `keep` kept, the rest only
/// counted, so a batch far over the cap costs a parse but no memory.
struct Members<'a> {
    kept: Vec<&'a RawValue>,
    count: usize,
}

/// Reads the JSON array `text` into [`Members`], keeping at most `keep`.
fn members(text: &str, keep: usize) -> serde_json::Result<Members<'_>> {
    struct Bounded(usize);
    impl<'de> Visitor<'de> for Bounded {
        type Value = Members<'de>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON array")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Members<'de>, A::Error> {
            let mut members = Members {
                kept: Vec::new(),
                count: 0,
            };
            while members.count < self.0 {
                match seq.next_element::<&RawValue>()? {
                    Some(member) => members.kept.push(member),
                    None => return Ok(members),
                }
                members.count += 1;
            }
            while seq.next_element::<IgnoredAny>()?.is_some() {
                members.count += 1;
            }
            Ok(members)
        }
    }
    let mut input = serde_json::Deserializer::from_str(text);
    let members = input.deserialize_seq(Bounded(keep))?;
    input.end()?;
    Ok(members)
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

    /// The error `split_batch` gives `text` instead of a batch.
    fn refusal(text: &str, max: usize) -> String {
        match split_batch(text, &["initialize"], max) {
            Ok(_) => "a batch".into(),
            Err(error) => serde_json::to_value(&*error).unwrap()["error"]["message"]
                .as_str()
                .unwrap()
                .to_owned(),
        }
    }

    #[test]
    fn batches() {
        let ping = |id: usize| format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#);
        let of = |n: usize| format!("[{}]", (0..n).map(ping).collect::<Vec<_>>().join(","));
        let batch = split_batch(&of(3), &[], 3).unwrap();
        assert_eq!((batch.messages.len(), batch.answers.len()), (3, 0));
        assert_eq!(
            refusal(&of(100_000), 64),
            "Invalid Request: a batch may hold at most 64 messages, this one has 100000"
        );
        assert_eq!(refusal("[]", 64), "Invalid Request: empty batch");
        // Past the cap the rest is still read as JSON, not trusted.
        assert_eq!(
            refusal(&format!("[{},{}", ping(1), ping(2)), 1),
            "Parse error: not valid JSON"
        );
        assert_eq!(
            refusal(&format!("{} x", of(2)), 64),
            "Parse error: not valid JSON"
        );
        let repeated = format!("[{},{},{}]", ping(1), ping(1), ping(2));
        let batch = split_batch(&repeated, &[], 64).unwrap();
        assert_eq!((batch.messages.len(), batch.answers.len()), (2, 1));
        let initialize = r#"[{"jsonrpc":"2.0","id":9,"method":"initialize","params":{}}]"#;
        let batch = split_batch(initialize, &["initialize"], 64).unwrap();
        assert_eq!((batch.messages.len(), batch.answers.len()), (0, 1));
    }
}
