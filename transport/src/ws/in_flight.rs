//! The requests a connection's MCP service is working on: taken in by the
//! reader, done when their answer goes out or the client cancels them.
//! While any is in flight the service is not suspended, and at shutdown a
//! connection waits (up to the grace period) until none is left.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

use rmcp::model::{ClientJsonRpcMessage, RequestId};

use crate::framing;

/// The requests the MCP service is working on: taken in by the reader,
/// done when their response goes out or the client cancels them. At
/// shutdown a connection waits (up to the grace period) until none is left.
#[derive(Default)]
pub(super) struct InFlight {
    ids: Mutex<HashSet<RequestId>>,
    idle: tokio::sync::Notify,
}

impl InFlight {
    pub(super) fn ids(&self) -> MutexGuard<'_, HashSet<RequestId>> {
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a message on its way to the service.
    pub(super) fn inbound(&self, message: &ClientJsonRpcMessage) {
        if let ClientJsonRpcMessage::Request(request) = message {
            self.ids().insert(request.id.clone());
        } else if let Some(id) = framing::cancelled_id(message) {
            self.done(id);
        }
    }

    /// Request `id` was answered, or cancelled.
    pub(super) fn done(&self, id: &RequestId) {
        let mut ids = self.ids();
        if ids.remove(id) && ids.is_empty() {
            self.idle.notify_waiters();
        }
    }

    /// Returns when no request is in flight.
    pub(super) async fn settled(&self) {
        loop {
            let idle = self.idle.notified();
            if self.ids().is_empty() {
                return;
            }
            idle.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use rmcp::model::NumberOrString;

    use super::*;

    fn request(id: i64) -> ClientJsonRpcMessage {
        serde_json::from_value(serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "ping"}))
            .unwrap()
    }

    fn cancel(id: i64) -> ClientJsonRpcMessage {
        serde_json::from_value(serde_json::json!({"jsonrpc": "2.0",
            "method": "notifications/cancelled", "params": {"requestId": id}}))
        .unwrap()
    }

    #[tokio::test]
    async fn settled_waits_for_every_answer_or_cancellation() {
        let in_flight = Arc::new(InFlight::default());
        in_flight.settled().await;
        in_flight.inbound(&request(1));
        in_flight.inbound(&request(2));
        assert_eq!(in_flight.ids().len(), 2);
        let waiter = tokio::spawn({
            let in_flight = in_flight.clone();
            async move { in_flight.settled().await }
        });
        in_flight.done(&NumberOrString::Number(1));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "2 is still in flight");
        in_flight.inbound(&cancel(2));
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("settled once 2 was cancelled")
            .unwrap();
        assert!(in_flight.ids().is_empty());
    }
}
