//! What the bridge keeps of the messages it relays, and nothing more: the
//! client's `initialize` (replayed on every new connection), whether it
//! sent `notifications/initialized`, the ids of its requests in flight
//! (answered with an error if the connection drops), and the ids of the
//! bridge's own requests (`auth/refresh`), whose answers are not the
//! client's. Pure bookkeeping over message text, so that it can be fuzzed.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

/// The JSON-RPC ids of the bridge's own requests start with this.
pub(super) const OWN_ID_PREFIX: &str = "exai-connect:";

#[derive(Default)]
pub(crate) struct Ledger {
    /// The client's `initialize` request.
    pub(super) initialize: Option<Value>,
    /// Whether the client sent `notifications/initialized`.
    pub(super) initialized: bool,
    /// Requests sent to the daemon and not yet answered, by id.
    in_flight: HashMap<String, Value>,
    /// Ids of the bridge's own requests.
    own_requests: HashSet<String>,
    next_own_id: u64,
}

/// A frame from the daemon, as the client should see it.
#[derive(Debug)]
pub(crate) enum FromDaemon {
    /// Not JSON: passed on as it is.
    NotJson,
    /// Answers to the bridge's own requests only: nothing for the client;
    /// each answer's error message, if it was refused.
    Own(Vec<Option<String>>),
    /// For the client.
    ForClient(Value),
}

impl Ledger {
    /// A line from the client, on its way to the daemon.
    pub(crate) fn sending(&mut self, line: &str) {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            return;
        };
        for message in each(&message) {
            let method = message.get("method").and_then(Value::as_str);
            match (method, message.get("id")) {
                (Some(method), Some(id)) => {
                    if method == "initialize" {
                        self.initialize = Some(message.clone());
                    }
                    self.in_flight.insert(id_key(id), id.clone());
                }
                (Some("notifications/initialized"), None) => self.initialized = true,
                (Some("notifications/cancelled"), None) => {
                    // The daemon need not answer a cancelled request.
                    if let Some(id) = message.pointer("/params/requestId") {
                        self.in_flight.remove(&id_key(id));
                    }
                }
                _ => {}
            }
        }
    }

    /// A frame from the daemon: answers settle their requests.
    pub(crate) fn received(&mut self, text: &str) -> FromDaemon {
        let Ok(message) = serde_json::from_str::<Value>(text) else {
            return FromDaemon::NotJson;
        };
        let mut own = Vec::new();
        for message in each(&message) {
            if message.get("method").is_some() {
                continue;
            }
            let Some(id) = message.get("id") else {
                continue;
            };
            let key = id_key(id);
            if self.own_requests.remove(&key) {
                let refused = message.pointer("/error/message").and_then(Value::as_str);
                own.push(refused.map(str::to_owned));
            } else {
                self.in_flight.remove(&key);
            }
        }
        if own.is_empty() {
            FromDaemon::ForClient(message)
        } else {
            FromDaemon::Own(own)
        }
    }

    /// A request of the bridge's own, to send to the daemon.
    pub(crate) fn own_request(&mut self, method: &str, params: Value) -> Value {
        self.next_own_id += 1;
        let id = format!("{OWN_ID_PREFIX}{method}:{}", self.next_own_id);
        self.own_requests.insert(id_key(&Value::String(id.clone())));
        json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
    }

    /// The connection is gone: the ids of the client's requests that will
    /// get no answer from it (the bridge's own are forgotten).
    pub(crate) fn unanswered(&mut self) -> Vec<Value> {
        self.own_requests.clear();
        std::mem::take(&mut self.in_flight).into_values().collect()
    }

    /// How many of the client's requests await an answer.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

/// The messages of a frame: the elements of a batch, or the one message.
pub(super) fn each(message: &Value) -> &[Value] {
    match message {
        Value::Array(batch) => batch,
        one => std::slice::from_ref(one),
    }
}

/// A JSON-RPC id as a map key: `1` and `"1"` are different ids.
fn id_key(id: &Value) -> String {
    id.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_different_types_are_different_keys() {
        assert_ne!(id_key(&json!(1)), id_key(&json!("1")));
        assert_eq!(id_key(&json!("a")), id_key(&json!("a")));
    }

    #[test]
    fn batches_are_seen_message_by_message() {
        let batch = json!([{"id": 1}, {"id": 2}]);
        assert_eq!(each(&batch).len(), 2);
        assert_eq!(each(&json!({"id": 1})).len(), 1);
    }

    #[test]
    fn answers_settle_requests_and_own_answers_stay_with_the_bridge() {
        let mut ledger = Ledger::default();
        ledger.sending(r#"[{"jsonrpc":"2.0","id":1,"method":"initialize"},{"jsonrpc":"2.0","id":"1","method":"ping"}]"#);
        assert_eq!(ledger.in_flight(), 2);
        assert!(ledger.initialize.is_some());
        let own = ledger.own_request("auth/refresh", json!({}));
        let answer = json!({"jsonrpc": "2.0", "id": own["id"], "error": {"message": "no"}});
        assert!(matches!(
            ledger.received(&answer.to_string()),
            FromDaemon::Own(refused) if refused == [Some("no".to_owned())]
        ));
        assert!(matches!(
            ledger.received(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#),
            FromDaemon::ForClient(_)
        ));
        assert_eq!(ledger.unanswered(), vec![json!("1")]);
        assert_eq!(ledger.in_flight(), 0);
    }
}
