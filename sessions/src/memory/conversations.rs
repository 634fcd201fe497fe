//! Conversations in memory: each bound to its user, kept for
//! `CONVERSATION_TIMEOUT_HOURS` after their last turn, and bounded — in
//! count per user, in the bytes of text per user, and in all.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use exai_auth::{Principal, UserId};

use super::MemoryStore;
use crate::{ConversationId, ConversationLimits, ConversationStore, StoreError, Turn};

/// How many live conversations a user keeps in memory; starting one more
/// drops that user's oldest one. Bounds what one user can make
/// the process hold.
const CONVERSATIONS_KEPT_PER_USER: usize = 1024;

/// How often expired conversations are swept out (at the next start of one).
const CONVERSATION_SWEEP_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub(super) struct Conversations {
    by_id: HashMap<ConversationId, Conversation>,
    /// Each user's conversations, oldest first.
    per_user: HashMap<UserId, VecDeque<ConversationId>>,
    /// Every conversation, oldest first; may still name removed ones,
    /// which are skipped when it is read.
    oldest: VecDeque<ConversationId>,
    /// The bytes of text each user's conversations hold, and all of them.
    bytes_per_user: HashMap<UserId, usize>,
    bytes: usize,
    last_sweep: Option<Instant>,
}

/// The bytes a turn holds.
fn size(turns: &[Turn]) -> usize {
    turns.iter().map(|t| t.role.len() + t.content.len()).sum()
}

impl Conversations {
    fn remove(&mut self, id: &ConversationId) {
        if let Some(gone) = self.by_id.remove(id) {
            self.forget_bytes(gone.user_id, gone.bytes);
            if let Some(ids) = self.per_user.get_mut(&gone.user_id) {
                ids.retain(|kept| kept != id);
                if ids.is_empty() {
                    self.per_user.remove(&gone.user_id);
                }
            }
        }
    }

    fn forget_bytes(&mut self, user: UserId, bytes: usize) {
        self.bytes = self.bytes.saturating_sub(bytes);
        if let Some(held) = self.bytes_per_user.get_mut(&user) {
            *held = held.saturating_sub(bytes);
            if *held == 0 {
                self.bytes_per_user.remove(&user);
            }
        }
    }

    fn add_bytes(&mut self, user: UserId, bytes: usize) {
        self.bytes += bytes;
        *self.bytes_per_user.entry(user).or_default() += bytes;
    }

    /// Makes room for `more` bytes of `user`'s (in `keep`, when it is an
    /// existing conversation): drops that user's oldest conversations while
    /// the user's bound would be passed, then the oldest of anyone's while
    /// the store's would be. `keep` is never dropped.
    fn make_room_for_bytes(
        &mut self,
        user: UserId,
        more: usize,
        keep: Option<&ConversationId>,
        limits: &ConversationLimits,
    ) -> Result<(), StoreError> {
        let own = keep
            .and_then(|id| self.by_id.get(id))
            .map_or(0, |c| c.bytes);
        if own + more > limits.max_bytes_per_user || own + more > limits.max_bytes_total {
            return Err(StoreError::ConversationTooLarge {
                max: limits.max_bytes_per_user.min(limits.max_bytes_total),
            });
        }
        while self.bytes_per_user.get(&user).copied().unwrap_or(0) + more
            > limits.max_bytes_per_user
        {
            let Some(oldest) = self
                .per_user
                .get(&user)
                .and_then(|ids| ids.iter().find(|id| Some(*id) != keep).cloned())
            else {
                break;
            };
            self.remove(&oldest);
        }
        while self.bytes + more > limits.max_bytes_total {
            let Some(oldest) = self.oldest.pop_front() else {
                break;
            };
            if Some(&oldest) == keep {
                self.oldest.push_back(oldest);
                continue;
            }
            self.remove(&oldest);
        }
        Ok(())
    }

    /// Drops expired conversations, at most every [`CONVERSATION_SWEEP_EVERY`].
    fn sweep(&mut self, limits: &ConversationLimits) {
        if self
            .last_sweep
            .is_some_and(|at| at.elapsed() < CONVERSATION_SWEEP_EVERY)
        {
            return;
        }
        self.last_sweep = Some(Instant::now());
        let expired: Vec<ConversationId> = self
            .by_id
            .iter()
            .filter(|(_, c)| !c.is_live(limits))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.remove(id);
        }
    }

    /// Makes room for one more of `user`'s conversations.
    fn make_room(&mut self, user: UserId) {
        // The oldest is at the front: dropping it is O(1), which matters as
        // this runs on every start once a user is at the bound.
        if let Some(ids) = self.per_user.get_mut(&user)
            && ids.len() >= CONVERSATIONS_KEPT_PER_USER
            && let Some(oldest) = ids.pop_front()
            && let Some(gone) = self.by_id.remove(&oldest)
        {
            self.forget_bytes(user, gone.bytes);
        }
    }
}

#[derive(Debug)]
struct Conversation {
    user_id: UserId,
    turns: Vec<Turn>,
    /// The bytes of text its turns hold.
    bytes: usize,
    updated_at: SystemTime,
}

impl Conversation {
    fn is_live(&self, limits: &ConversationLimits) -> bool {
        self.updated_at.elapsed().unwrap_or_default() < limits.timeout
    }
}

impl MemoryStore {
    fn conversation<T>(
        &self,
        principal: &Principal,
        id: &ConversationId,
        limits: &ConversationLimits,
        f: impl FnOnce(&mut Conversation) -> T,
    ) -> Result<T, StoreError> {
        let mut conversations = self.conversations.lock().unwrap_or_else(|e| e.into_inner());
        match conversations.by_id.get_mut(id) {
            Some(c) if c.user_id == principal.user_id && c.is_live(limits) => Ok(f(c)),
            Some(c) if !c.is_live(limits) => {
                conversations.remove(id);
                Err(StoreError::NotFound)
            }
            _ => Err(StoreError::NotFound),
        }
    }
}

#[async_trait]
impl ConversationStore for MemoryStore {
    async fn create_conversation(
        &self,
        principal: &Principal,
        turns: &[Turn],
        limits: &ConversationLimits,
    ) -> Result<ConversationId, StoreError> {
        if turns.len() > limits.max_turns {
            return Err(StoreError::TurnLimit {
                max: limits.max_turns,
            });
        }
        let mut conversations = self.conversations.lock().unwrap_or_else(|e| e.into_inner());
        conversations.sweep(limits);
        let bytes = size(turns);
        conversations.make_room_for_bytes(principal.user_id, bytes, None, limits)?;
        conversations.make_room(principal.user_id);
        let id = ConversationId::generate();
        conversations.by_id.insert(
            id.clone(),
            Conversation {
                user_id: principal.user_id,
                turns: turns.to_vec(),
                bytes,
                updated_at: SystemTime::now(),
            },
        );
        conversations.add_bytes(principal.user_id, bytes);
        conversations
            .per_user
            .entry(principal.user_id)
            .or_default()
            .push_back(id.clone());
        conversations.oldest.push_back(id.clone());
        // Removed conversations linger in `oldest` until read past; keep
        // them from piling up.
        if conversations.oldest.len() > 2 * conversations.by_id.len() + 64 {
            let Conversations { oldest, by_id, .. } = &mut *conversations;
            oldest.retain(|id| by_id.contains_key(id));
        }
        Ok(id)
    }

    async fn append_turns(
        &self,
        principal: &Principal,
        conversation: &ConversationId,
        turns: &[Turn],
        limits: &ConversationLimits,
    ) -> Result<usize, StoreError> {
        let mut conversations = self.conversations.lock().unwrap_or_else(|e| e.into_inner());
        let held = conversations
            .by_id
            .get(conversation)
            .filter(|c| c.user_id == principal.user_id && c.is_live(limits))
            .ok_or(StoreError::NotFound)?;
        if held.turns.len() + turns.len() > limits.max_turns {
            return Err(StoreError::TurnLimit {
                max: limits.max_turns,
            });
        }
        let bytes = size(turns);
        conversations.make_room_for_bytes(principal.user_id, bytes, Some(conversation), limits)?;
        let c = conversations
            .by_id
            .get_mut(conversation)
            .ok_or(StoreError::NotFound)?;
        c.turns.extend_from_slice(turns);
        c.bytes += bytes;
        c.updated_at = SystemTime::now();
        let count = c.turns.len();
        conversations.add_bytes(principal.user_id, bytes);
        Ok(count)
    }

    async fn read_conversation(
        &self,
        principal: &Principal,
        conversation: &ConversationId,
        limits: &ConversationLimits,
    ) -> Result<Vec<Turn>, StoreError> {
        self.conversation(principal, conversation, limits, |c| c.turns.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use exai_auth::AuthMethod;

    #[tokio::test]
    async fn a_user_keeps_a_bounded_number_of_conversations() {
        let store = MemoryStore::new();
        let limits = ConversationLimits::default();
        let ana = Principal::new(UserId::from_email("ana@example.com"), AuthMethod::Jwt);
        let bo = Principal::new(UserId::from_email("bo@example.com"), AuthMethod::Jwt);
        let bos = store.create_conversation(&bo, &[], &limits).await.unwrap();
        let mut ids = Vec::new();
        for _ in 0..=CONVERSATIONS_KEPT_PER_USER {
            ids.push(store.create_conversation(&ana, &[], &limits).await.unwrap());
        }
        assert!(matches!(
            store.read_conversation(&ana, &ids[0], &limits).await,
            Err(StoreError::NotFound)
        ));
        for id in &ids[1..] {
            assert!(store.read_conversation(&ana, id, &limits).await.is_ok());
        }
        assert!(
            store.read_conversation(&bo, &bos, &limits).await.is_ok(),
            "another user's are not touched"
        );
    }

    fn exchange(bytes: usize) -> Vec<Turn> {
        // "user" and "assistant" are 13 bytes of roles.
        vec![
            Turn::new("user", "q".repeat(bytes / 2 - 4)),
            Turn::new("assistant", "a".repeat(bytes / 2 - 9)),
        ]
    }

    #[tokio::test]
    async fn conversations_are_bounded_in_bytes_per_user_and_in_all() {
        let store = MemoryStore::new();
        let limits = ConversationLimits {
            max_bytes_per_user: 3_000,
            max_bytes_total: 5_000,
            ..ConversationLimits::default()
        };
        let ana = Principal::new(UserId::from_email("ana@example.com"), AuthMethod::Jwt);
        let bo = Principal::new(UserId::from_email("bo@example.com"), AuthMethod::Jwt);
        let read = |who: &Principal, id: &ConversationId| {
            let (who, id, store) = (who.clone(), id.clone(), &store);
            async move { store.read_conversation(&who, &id, &limits).await.is_ok() }
        };
        assert_eq!(size(&exchange(1_000)), 1_000);
        let a1 = store
            .create_conversation(&ana, &exchange(1_000), &limits)
            .await
            .unwrap();
        let a2 = store
            .create_conversation(&ana, &exchange(1_000), &limits)
            .await
            .unwrap();
        let a3 = store
            .create_conversation(&ana, &exchange(1_000), &limits)
            .await
            .unwrap();
        assert!(
            read(&ana, &a1).await && read(&ana, &a3).await,
            "3,000 bytes fit"
        );
        // A fourth exchange of Ana's drops her oldest conversation.
        let a4 = store
            .create_conversation(&ana, &exchange(1_000), &limits)
            .await
            .unwrap();
        assert!(!read(&ana, &a1).await, "the oldest went");
        assert!(read(&ana, &a2).await && read(&ana, &a4).await);
        // Growing a conversation drops the user's others, never itself.
        store
            .append_turns(&ana, &a4, &exchange(1_000), &limits)
            .await
            .unwrap();
        assert!(!read(&ana, &a2).await);
        assert!(read(&ana, &a3).await && read(&ana, &a4).await);
        // An exchange larger than the bound is refused, and drops nothing.
        assert!(matches!(
            store
                .create_conversation(&ana, &exchange(4_000), &limits)
                .await,
            Err(StoreError::ConversationTooLarge { max: 3_000 })
        ));
        assert!(matches!(
            store
                .append_turns(&ana, &a4, &exchange(2_000), &limits)
                .await,
            Err(StoreError::ConversationTooLarge { .. })
        ));
        assert!(read(&ana, &a3).await && read(&ana, &a4).await);
        // The store's bound: Bo's 3,000 bytes beside Ana's 3,000 drop the
        // oldest there is, Ana's, never Bo's new one.
        let b1 = store
            .create_conversation(&bo, &exchange(1_500), &limits)
            .await
            .unwrap();
        let b2 = store
            .create_conversation(&bo, &exchange(1_500), &limits)
            .await
            .unwrap();
        assert!(read(&bo, &b1).await && read(&bo, &b2).await);
        assert!(!read(&ana, &a3).await, "the oldest of all went");
        let held = store.conversations.lock().unwrap();
        assert!(held.bytes <= limits.max_bytes_total, "{}", held.bytes);
        assert_eq!(
            held.bytes,
            held.by_id.values().map(|c| c.bytes).sum::<usize>(),
            "the count matches what is held"
        );
    }

    #[tokio::test]
    async fn removed_conversations_do_not_pile_up_in_the_order() {
        let store = MemoryStore::new();
        let limits = ConversationLimits {
            max_bytes_per_user: 1_000,
            ..ConversationLimits::default()
        };
        let ana = Principal::new(UserId::from_email("ana@example.com"), AuthMethod::Jwt);
        for _ in 0..1_000 {
            store
                .create_conversation(&ana, &exchange(600), &limits)
                .await
                .unwrap();
        }
        let held = store.conversations.lock().unwrap();
        assert_eq!(held.by_id.len(), 1);
        assert!(
            held.oldest.len() <= 2 * held.by_id.len() + 65,
            "{}",
            held.oldest.len()
        );
    }
}
