//! Who a connection acts for.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A user's id: the `sub` of their Supabase access token (`auth.users.id`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(Uuid);

impl UserId {
    /// Namespace for [`UserId::from_email`] (a fixed, random UUID).
    const EMAIL_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a0e_5b7d_4c39_9e21_8a4f_d3b6_0c57);

    /// Wraps a UUID.
    pub fn new(id: Uuid) -> Self {
        UserId(id)
    }

    /// A stable id derived from an email address (UUID v5), for development
    /// tokens minted without an explicit user id. Case-insensitive.
    pub fn from_email(email: &str) -> Self {
        let normalized = email.trim().to_ascii_lowercase();
        UserId(Uuid::new_v5(&Self::EMAIL_NAMESPACE, normalized.as_bytes()))
    }

    /// The UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for UserId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(UserId)
    }
}

/// How a principal proved who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthMethod {
    /// A Supabase Auth access token (JWT).
    Jwt,
    /// An exai API key.
    ApiKey {
        /// The key's public id.
        key_id: String,
    },
    /// Single-user mode: the shared `EXAI_WS_TOKEN`.
    SharedToken,
    /// Single-user mode on loopback without a token.
    Local,
}

/// The verified identity a connection acts for.
///
/// Built only by this crate, from a credential that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Principal {
    /// The user.
    pub user_id: UserId,
    /// The user's email, when the token carries one.
    pub email: Option<String>,
    /// The token's `role` claim (`authenticated` for signed-in users).
    pub role: String,
    /// Supabase's own sign-in session id (`session_id` claim), not an MCP session.
    pub auth_session_id: Option<String>,
    /// Authenticator assurance level (`aal1`, `aal2`).
    pub aal: Option<String>,
    /// Whether Supabase marked the user anonymous.
    pub is_anonymous: bool,
    /// When the credential stops being valid, as Unix seconds.
    pub expires_at: Option<u64>,
    /// The token's `app_metadata` (set by the project, not the user). The
    /// user-editable `user_metadata` is deliberately never read.
    pub app_metadata: Option<serde_json::Value>,
    /// How the principal authenticated.
    pub method: AuthMethod,
}

impl Principal {
    /// A principal for `user_id` with role `authenticated` and no other
    /// claims. Verification builds principals from credentials; this is for
    /// code that already knows who it acts for (tests, admin tooling).
    pub fn new(user_id: UserId, method: AuthMethod) -> Self {
        Principal {
            user_id,
            email: None,
            role: "authenticated".to_owned(),
            auth_session_id: None,
            aal: None,
            is_anonymous: false,
            expires_at: None,
            app_metadata: None,
            method,
        }
    }

    /// The one user of single-user mode.
    pub fn local(method: AuthMethod) -> Self {
        Principal::new(UserId(Uuid::from_u128(1)), method)
    }

    /// The same principal with `email` set.
    pub fn with_email(mut self, email: impl Into<String>) -> Self {
        self.email = Some(email.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_ids_are_stable_and_case_insensitive() {
        let a = UserId::from_email("Jazeel@Example.com");
        assert_eq!(a, UserId::from_email(" jazeel@example.com "));
        assert_ne!(a, UserId::from_email("michelle@example.com"));
        assert_eq!(a.as_uuid().get_version_num(), 5);
    }
}
