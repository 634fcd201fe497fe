//! A provider's slots (its cap on calls in flight), shared fairly between
//! the parties that ask: a freed slot goes to the waiting party that holds
//! the fewest slots, on a tie to the one served least recently, then to
//! the longest waiting; so no party can hold every slot of a provider while
//! another waits, and parties take turns. A call with no party is a party
//! of its own.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Who a call is made for: the daemon passes the user's id.
pub type Party = u128;

/// A party of its own, for a call made for nobody in particular: numbers
/// from the top of the range, where no user id (a UUID v4 or v5) falls.
pub(crate) fn anonymous() -> Party {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    Party::MAX - Party::from(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// The slots of one provider.
#[derive(Debug)]
pub(crate) struct FairSlots {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    free: usize,
    /// Slots held, per party.
    held: HashMap<Party, usize>,
    /// When each party holding or waiting was last given a slot (a count
    /// of slots given).
    last_served: HashMap<Party, u64>,
    served: u64,
    /// Waiters, oldest first, each with its party.
    waiting: VecDeque<(Party, oneshot::Sender<Slot>)>,
}

/// A slot held; dropping it hands it on.
#[derive(Debug)]
pub(crate) struct Slot {
    state: Arc<Mutex<State>>,
    party: Party,
}

impl FairSlots {
    pub(crate) fn new(slots: usize) -> Self {
        FairSlots {
            state: Arc::new(Mutex::new(State {
                free: slots.max(1),
                ..State::default()
            })),
        }
    }

    /// A slot for `party`, once its turn comes. Dropping the future gives
    /// up the place in the queue.
    pub(crate) async fn acquire(&self, party: Party) -> Slot {
        let waiting = {
            let mut state = lock(&self.state);
            if state.free > 0 && state.waiting.is_empty() {
                state.free -= 1;
                state.give(party);
                return Slot {
                    state: self.state.clone(),
                    party,
                };
            }
            let (tx, rx) = oneshot::channel();
            state.waiting.push_back((party, tx));
            rx
        };
        match waiting.await {
            Ok(slot) => slot,
            // The slots are gone with their provider: nothing is served
            // any more, and the caller is being dropped too.
            Err(_) => std::future::pending().await,
        }
    }
}

impl State {
    /// `party` is given a slot.
    fn give(&mut self, party: Party) {
        *self.held.entry(party).or_default() += 1;
        self.served += 1;
        self.last_served.insert(party, self.served);
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = lock(&self.state);
        if let Some(held) = state.held.get_mut(&self.party) {
            *held -= 1;
            if *held == 0 {
                state.held.remove(&self.party);
                if !state.waiting.iter().any(|(p, _)| *p == self.party) {
                    state.last_served.remove(&self.party);
                }
            }
        }
        // The waiter whose party holds the fewest slots, then was served
        // least recently, then waited longest. One that gave up is skipped.
        loop {
            let next = state
                .waiting
                .iter()
                .enumerate()
                .min_by_key(|(i, (party, _))| {
                    (
                        state.held.get(party).copied().unwrap_or(0),
                        state.last_served.get(party).copied().unwrap_or(0),
                        *i,
                    )
                })
                .map(|(i, _)| i);
            let Some(next) = next else {
                state.free += 1;
                return;
            };
            let Some((party, tx)) = state.waiting.remove(next) else {
                state.free += 1;
                return;
            };
            if tx.is_closed() {
                continue;
            }
            state.give(party);
            let slot = Slot {
                state: self.state.clone(),
                party,
            };
            match tx.send(slot) {
                Ok(()) => return,
                // Gave up just now: the slot comes back through its drop,
                // which must not run under this lock.
                Err(slot) => {
                    drop(state);
                    drop(slot);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_party_holding_fewest() {
        let slots = Arc::new(FairSlots::new(2));
        let a1 = slots.acquire(1).await;
        let a2 = slots.acquire(1).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for (party, name) in [(1, "a3"), (1, "a4"), (2, "b1"), (1, "a5")] {
            let (slots, order) = (slots.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let slot = slots.acquire(party).await;
                order.lock().unwrap().push(name);
                slot
            }));
            settle().await;
        }
        drop(a1);
        settle().await;
        assert_eq!(*order.lock().unwrap(), ["b1"], "B holds none, A holds one");
        drop(a2);
        settle().await;
        assert_eq!(*order.lock().unwrap(), ["b1", "a3"], "then A, oldest first");
        assert!(lock(&slots.state).last_served.len() <= 2);
        for waiter in waiters {
            waiter.abort();
        }
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_loses_its_place_and_nothing_else() {
        let slots = Arc::new(FairSlots::new(1));
        let held = slots.acquire(1).await;
        let gone = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire(2).await }
        });
        settle().await;
        gone.abort();
        let _ = gone.await;
        let next = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire(3).await }
        });
        settle().await;
        drop(held);
        let third = tokio::time::timeout(Duration::from_secs(1), next)
            .await
            .expect("the slot reached the next waiter")
            .unwrap();
        drop(third);
        let again = tokio::time::timeout(Duration::from_secs(1), slots.acquire(4)).await;
        assert!(again.is_ok(), "the slot is free again");
    }
}
