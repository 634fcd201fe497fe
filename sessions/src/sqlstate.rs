//! The error codes the migrations' SQL functions raise, and what they mean
//! as [`StoreError`]s. Shared by both database backends: the direct one reads
//! them from the database error, the REST one from PostgREST's `code` field,
//! which passes them through.

use crate::{ConversationLimits, SessionStatus, StoreError};

/// The store error for `code`, if it is one of ours (or a foreign key
/// violation: a user missing from `auth.users`); `None` for anything else,
/// which the caller reports as the store being unavailable.
pub(crate) fn known(
    code: Option<&str>,
    max_connections: u32,
    limits: Option<&ConversationLimits>,
) -> Option<StoreError> {
    Some(match code? {
        "PT404" => StoreError::NotFound,
        "PT409" => StoreError::Conflict(SessionStatus::Connected),
        "PT422" => StoreError::TurnLimit {
            max: limits.map_or(0, |l| l.max_turns),
        },
        "PT429" => StoreError::LimitReached {
            limit: max_connections,
        },
        "23503" => StoreError::UnknownUser,
        _ => return None,
    })
}
