//! Why a credential was refused.

/// A refusal. [`AuthError::reason`] is short, safe to send to the client, and
/// never contains any part of the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No credential was presented.
    #[error("missing bearer token")]
    Missing,
    /// The credential is not a well-formed token.
    #[error("malformed token")]
    Malformed,
    /// The signature does not verify.
    #[error("invalid signature")]
    BadSignature,
    /// The token's algorithm is not one this server accepts for its keys.
    #[error("unsupported signing algorithm")]
    BadAlgorithm,
    /// The token names a signing key this server does not know.
    #[error("unknown signing key")]
    UnknownKey,
    /// `exp` is in the past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// A required claim is absent.
    #[error("missing claim: {0}")]
    MissingClaim(&'static str),
    /// `aud` does not name this resource's audience.
    #[error("wrong audience")]
    WrongAudience,
    /// `iss` is not the configured issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `sub` is not a user id (UUID).
    #[error("subject is not a user id")]
    InvalidSubject,
    /// The token is the project's anonymous (`anon`) key, not a user's token.
    #[error("anonymous tokens are not accepted")]
    Anonymous,
    /// A valid token whose role may not do this.
    #[error("role '{0}' is not allowed")]
    RoleNotAllowed(String),
    /// Unknown API key or wrong secret (the two are not told apart).
    #[error("invalid API key")]
    InvalidApiKey,
    /// The API key was revoked.
    #[error("API key revoked")]
    ApiKeyRevoked,
    /// The API key expired.
    #[error("API key expired")]
    ApiKeyExpired,
    /// Single-user mode: not the configured shared token.
    #[error("invalid token")]
    InvalidSharedToken,
    /// A token for another user was offered to refresh a connection.
    #[error("token is for another user")]
    OtherUser,
    /// Credentials could not be checked (a store is down); try again.
    #[error("authentication is temporarily unavailable")]
    Unavailable,
}

impl AuthError {
    /// A stable, bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::BadSignature => "bad_signature",
            AuthError::BadAlgorithm => "bad_algorithm",
            AuthError::UnknownKey => "unknown_key",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::InvalidSubject => "invalid_subject",
            AuthError::Anonymous => "anonymous",
            AuthError::RoleNotAllowed(_) => "role_not_allowed",
            AuthError::InvalidApiKey => "invalid_api_key",
            AuthError::ApiKeyRevoked => "api_key_revoked",
            AuthError::ApiKeyExpired => "api_key_expired",
            AuthError::InvalidSharedToken => "invalid_shared_token",
            AuthError::OtherUser => "other_user",
            AuthError::Unavailable => "unavailable",
        }
    }

    /// The one-line reason for the client (the `Display` text).
    pub fn reason(&self) -> String {
        self.to_string()
    }

    /// Whether the credential was valid but lacks permission (HTTP 403)
    /// rather than invalid (HTTP 401).
    pub fn is_insufficient_scope(&self) -> bool {
        matches!(self, AuthError::RoleNotAllowed(_))
    }

    /// Whether the failure is ours, not the credential's (HTTP 503).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, AuthError::Unavailable)
    }

    /// A role name as it may appear in a reason: safe characters, bounded.
    pub(crate) fn role_not_allowed(role: &str) -> AuthError {
        let safe: String = role
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            .take(32)
            .collect();
        AuthError::RoleNotAllowed(safe)
    }
}
