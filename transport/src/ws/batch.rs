//! JSON-RPC batches on a WebSocket (protocol version 2025-03-26 only): the
//! answers to a batch's requests are held until the last one is there, then
//! sent as one array.
//!
//! A request the client cancels gets no answer, so it no longer holds its
//! batch back. Connections without a batch open pay one atomic load per
//! outgoing message.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use rmcp::model::{RequestId, ServerJsonRpcMessage};

use crate::framing;

/// The batches of one connection that still wait for answers.
#[derive(Default)]
pub(super) struct Batches {
    state: Mutex<BatchState>,
    /// Whether any batch is open: the fast path when none is.
    any_open: AtomicBool,
}

#[derive(Default)]
struct BatchState {
    next: u64,
    /// Which batch each pending request belongs to.
    by_id: HashMap<RequestId, u64>,
    open: HashMap<u64, Batch>,
}

struct Batch {
    pending: usize,
    answers: Vec<ServerJsonRpcMessage>,
}

/// What to do with a message from the service.
#[allow(
    clippy::large_enum_variant,
    reason = "short-lived, on the stack; boxing would allocate per message"
)]
pub(super) enum Held {
    /// Not part of a batch: send it.
    No(ServerJsonRpcMessage),
    /// Kept for its batch.
    Yes,
    /// The batch's last answer: send them all.
    Complete(Vec<ServerJsonRpcMessage>),
}

impl BatchState {
    /// Request `id` of a batch is settled (with `answer`, or cancelled).
    /// `None` when `id` is in no batch; `Some(answers)` once its batch is
    /// complete, `Some(empty)` while it still waits.
    fn settle(
        &mut self,
        id: &RequestId,
        answer: Option<ServerJsonRpcMessage>,
    ) -> Option<Vec<ServerJsonRpcMessage>> {
        let batch = self.by_id.remove(id)?;
        let open = self.open.get_mut(&batch)?;
        open.pending -= 1;
        open.answers.extend(answer);
        if open.pending > 0 {
            return Some(Vec::new());
        }
        self.open.remove(&batch).map(|done| done.answers)
    }
}

impl Batches {
    fn state(&self) -> std::sync::MutexGuard<'_, BatchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a batch waits for answers.
    pub(super) fn any(&self) -> bool {
        self.any_open.load(Ordering::Acquire)
    }

    /// Opens a batch of requests `ids` whose invalid members were already
    /// answered with `answers`. Returns the answers to send now when there
    /// is no request to wait for.
    pub(super) fn open(
        &self,
        ids: Vec<RequestId>,
        answers: Vec<ServerJsonRpcMessage>,
    ) -> Option<Vec<ServerJsonRpcMessage>> {
        if ids.is_empty() {
            return (!answers.is_empty()).then_some(answers);
        }
        let mut state = self.state();
        let batch = state.next;
        state.next += 1;
        let pending = ids.len();
        for id in ids {
            state.by_id.insert(id, batch);
        }
        state.open.insert(batch, Batch { pending, answers });
        self.any_open.store(true, Ordering::Release);
        None
    }

    /// Holds `message` if it answers a batched request.
    pub(super) fn hold(&self, message: ServerJsonRpcMessage) -> Held {
        if !self.any() {
            return Held::No(message);
        }
        let Some(id) = framing::answered_id(&message).cloned() else {
            return Held::No(message);
        };
        let mut state = self.state();
        if !state.by_id.contains_key(&id) {
            return Held::No(message);
        }
        let settled = state.settle(&id, Some(message)).unwrap_or_default();
        self.any_open
            .store(!state.open.is_empty(), Ordering::Release);
        if settled.is_empty() {
            Held::Yes
        } else {
            Held::Complete(settled)
        }
    }

    /// The client cancelled request `id`: it no longer holds its batch.
    /// Returns the batch's answers if that completed it.
    pub(super) fn cancelled(&self, id: &RequestId) -> Option<Vec<ServerJsonRpcMessage>> {
        if !self.any() {
            return None;
        }
        let mut state = self.state();
        let settled = state.settle(id, None);
        self.any_open
            .store(!state.open.is_empty(), Ordering::Release);
        settled.filter(|answers| !answers.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use rmcp::model::{ErrorData, NumberOrString};

    use super::*;

    fn id(n: i64) -> RequestId {
        NumberOrString::Number(n)
    }

    fn answer(n: i64) -> ServerJsonRpcMessage {
        ServerJsonRpcMessage::response(rmcp::model::ServerResult::empty(()), id(n))
    }

    fn error(n: i64) -> ServerJsonRpcMessage {
        ServerJsonRpcMessage::error(ErrorData::invalid_request("bad member", None), Some(id(n)))
    }

    fn ids(answers: &[ServerJsonRpcMessage]) -> Vec<RequestId> {
        answers
            .iter()
            .filter_map(|a| framing::answered_id(a).cloned())
            .collect()
    }

    #[test]
    fn without_a_batch_every_message_passes() {
        let batches = Batches::default();
        assert!(!batches.any());
        assert!(matches!(batches.hold(answer(1)), Held::No(_)));
        assert!(batches.cancelled(&id(1)).is_none());
    }

    #[test]
    fn answers_are_held_until_the_last_then_sent_together() {
        let batches = Batches::default();
        assert!(
            batches
                .open(vec![id(1), id(2), id(3)], vec![error(9)])
                .is_none()
        );
        assert!(batches.any());
        assert!(matches!(batches.hold(answer(2)), Held::Yes));
        assert!(
            matches!(batches.hold(answer(7)), Held::No(_)),
            "an answer to a request outside the batch goes at once"
        );
        assert!(matches!(batches.hold(answer(1)), Held::Yes));
        let Held::Complete(all) = batches.hold(answer(3)) else {
            panic!("the last answer completes the batch");
        };
        assert_eq!(ids(&all), [id(9), id(2), id(1), id(3)]);
        assert!(!batches.any(), "no batch is open any more");
        assert!(matches!(batches.hold(answer(3)), Held::No(_)));
    }

    #[test]
    fn a_batch_of_only_invalid_members_is_answered_at_once() {
        let batches = Batches::default();
        let now = batches.open(Vec::new(), vec![error(1), error(2)]).unwrap();
        assert_eq!(ids(&now), [id(1), id(2)]);
        assert!(!batches.any());
        assert!(
            batches.open(Vec::new(), Vec::new()).is_none(),
            "nothing to say"
        );
    }

    #[test]
    fn a_cancelled_member_no_longer_holds_its_batch() {
        let batches = Batches::default();
        batches.open(vec![id(1), id(2)], Vec::new());
        assert!(matches!(batches.hold(answer(1)), Held::Yes));
        let done = batches.cancelled(&id(2)).expect("the batch is complete");
        assert_eq!(ids(&done), [id(1)]);
        assert!(!batches.any());

        batches.open(vec![id(3), id(4)], Vec::new());
        assert!(batches.cancelled(&id(3)).is_none(), "4 still pending");
        assert!(
            batches.cancelled(&id(3)).is_none(),
            "cancelling twice is harmless"
        );
        let Held::Complete(all) = batches.hold(answer(4)) else {
            panic!("4 completes it");
        };
        assert_eq!(ids(&all), [id(4)]);
    }

    #[test]
    fn two_batches_complete_independently() {
        let batches = Batches::default();
        batches.open(vec![id(1)], Vec::new());
        batches.open(vec![id(2)], Vec::new());
        let Held::Complete(second) = batches.hold(answer(2)) else {
            panic!("second batch complete");
        };
        assert_eq!(ids(&second), [id(2)]);
        assert!(batches.any(), "the first still waits");
        let Held::Complete(first) = batches.hold(answer(1)) else {
            panic!("first batch complete");
        };
        assert_eq!(ids(&first), [id(1)]);
        assert!(!batches.any());
    }
}
