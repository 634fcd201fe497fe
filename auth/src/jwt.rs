//! Supabase Auth access tokens: verification and (for development) minting.
//!
//! A Supabase access token is a JWT whose claims include `sub` (the user's
//! UUID), `role` (`authenticated` for a signed-in user), `aud`
//! (`authenticated`), `exp`, `iat`, `email` and `session_id`. See
//! <https://supabase.com/docs/guides/auth/jwt-fields>.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::{AuthError, AuthMethod, Principal, Secret, UserId};

/// Longest token we look at. Real access tokens are well under 4 KiB; a
/// larger one is refused before any parsing work.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// What a valid access token must look like.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JwtConfig {
    /// The project's legacy HS256 secret (`SUPABASE_JWT_SECRET`).
    pub hs256_secret: Secret,
    /// Required `aud` value.
    pub audience: String,
    /// Required `iss` value, when set (`${SUPABASE_URL}/auth/v1`).
    pub issuer: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// Roles admitted (`anon` is always refused).
    pub allowed_roles: Vec<String>,
}

impl JwtConfig {
    /// Supabase's defaults: audience and role `authenticated`, 30 s leeway,
    /// no issuer check.
    pub fn new(hs256_secret: Secret) -> Self {
        JwtConfig {
            hs256_secret,
            audience: "authenticated".to_owned(),
            issuer: None,
            leeway: Duration::from_secs(30),
            allowed_roles: vec!["authenticated".to_owned()],
        }
    }
}

/// Verifies access tokens against a [`JwtConfig`]. Build once, share.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    allowed_roles: Vec<String>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("key", &"<redacted>")
            .field("allowed_roles", &self.allowed_roles)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// A verifier for `config`.
    pub fn new(config: JwtConfig) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = config.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_audience(&[&config.audience]);
        let mut required = vec!["exp", "aud"];
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        JwtVerifier {
            key: DecodingKey::from_secret(config.hs256_secret.expose()),
            validation,
            allowed_roles: config.allowed_roles,
        }
    }

    /// Checks `token` and returns the principal it names.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(map_error)?;
        if header.alg != Algorithm::HS256 {
            return Err(AuthError::BadAlgorithm);
        }
        let claims = jsonwebtoken::decode::<RawClaims>(token, &self.key, &self.validation)
            .map_err(map_error)?
            .claims;
        let sub = claims.sub.ok_or(AuthError::MissingClaim("sub"))?;
        let user_id: UserId = sub.parse().map_err(|_| AuthError::InvalidSubject)?;
        let role = claims.role.ok_or(AuthError::MissingClaim("role"))?;
        if role == "anon" {
            return Err(AuthError::Anonymous);
        }
        if !self.allowed_roles.contains(&role) {
            return Err(AuthError::RoleNotAllowed(role));
        }
        Ok(Principal {
            user_id,
            email: claims.email,
            role,
            auth_session_id: claims.session_id,
            aal: claims.aal,
            is_anonymous: claims.is_anonymous.unwrap_or(false),
            expires_at: claims.exp,
            method: AuthMethod::Jwt,
        })
    }
}

/// The claims we read; every field optional so that an absent claim becomes
/// our own precise error rather than a generic parse failure.
#[derive(Deserialize)]
struct RawClaims {
    sub: Option<String>,
    role: Option<String>,
    exp: Option<u64>,
    email: Option<String>,
    session_id: Option<String>,
    aal: Option<String>,
    is_anonymous: Option<bool>,
}

fn map_error(error: jsonwebtoken::errors::Error) -> AuthError {
    match error.kind() {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidSubject => AuthError::InvalidSubject,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm => AuthError::BadAlgorithm,
        ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(match claim.as_str() {
            "exp" => "exp",
            "aud" => "aud",
            "iss" => "iss",
            "sub" => "sub",
            "nbf" => "nbf",
            _ => "required claim",
        }),
        _ => AuthError::Malformed,
    }
}

/// The claims of a Supabase-shaped access token, for minting.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct AccessTokenClaims {
    /// The user id.
    pub sub: String,
    /// Audience (`authenticated`).
    pub aud: String,
    /// Role (`authenticated`).
    pub role: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Issuer, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The user's email.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Supabase sign-in session id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

impl AccessTokenClaims {
    /// Claims for `user_id`, valid from `now` for `ttl`, with a fresh
    /// `session_id`, as Supabase Auth issues them to a signed-in user.
    pub fn new(user_id: UserId, email: Option<String>, now: SystemTime, ttl: Duration) -> Self {
        let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        AccessTokenClaims {
            sub: user_id.to_string(),
            aud: "authenticated".to_owned(),
            role: "authenticated".to_owned(),
            exp: iat.saturating_add(ttl.as_secs()),
            iat,
            iss: None,
            email,
            session_id: Some(uuid::Uuid::new_v4().to_string()),
        }
    }
}

/// Signing a token failed (the claims did not serialize).
#[derive(Debug, thiserror::Error)]
#[error("could not sign the token")]
pub struct MintError(#[source] jsonwebtoken::errors::Error);

/// Signs `claims` with HS256 and `secret`: what Supabase Auth does with the
/// legacy JWT secret. For development tokens and tests.
pub fn mint_hs256<C: Serialize>(claims: &C, secret: &Secret) -> Result<String, MintError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.expose()),
    )
    .map_err(MintError)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    const SECRET: &[u8] = b"test-secret-with-at-least-32-bytes!!";

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(JwtConfig::new(Secret::new(SECRET.to_vec())))
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn good_claims() -> Value {
        json!({
            "sub": "1fb4fe69-33d1-456c-9b18-fe580006aaf7",
            "aud": "authenticated",
            "role": "authenticated",
            "exp": now() + 3600,
            "iat": now(),
            "email": "jazeel@example.com",
            "session_id": "3c1d5f0e-1111-4222-8333-444455556666",
        })
    }

    fn with(patch: Value) -> Value {
        let mut claims = good_claims();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        claims
    }

    fn sign(claims: &Value) -> String {
        mint_hs256(claims, &Secret::new(SECRET.to_vec())).unwrap()
    }

    fn check(token: &str, expected: Result<(), AuthError>) {
        let got = verifier().verify(token).map(|_| ());
        assert_eq!(got, expected, "token claims: {token}");
    }

    #[test]
    fn accepts_a_supabase_shaped_token() {
        let p = verifier().verify(&sign(&good_claims())).unwrap();
        assert_eq!(
            p.user_id.to_string(),
            "1fb4fe69-33d1-456c-9b18-fe580006aaf7"
        );
        assert_eq!(p.email.as_deref(), Some("jazeel@example.com"));
        assert_eq!(p.role, "authenticated");
        assert_eq!(p.method, AuthMethod::Jwt);
        assert!(p.expires_at.is_some());
    }

    #[test]
    fn minted_claims_verify() {
        let claims = AccessTokenClaims::new(
            UserId::from_email("m@example.com"),
            Some("m@example.com".into()),
            SystemTime::now(),
            Duration::from_secs(60),
        );
        let p = verifier().verify(&mint_hs256(&claims, &Secret::new(SECRET.to_vec())).unwrap());
        assert_eq!(p.unwrap().user_id, UserId::from_email("m@example.com"));
    }

    #[test]
    fn refusals_name_their_reason() {
        use AuthError::*;
        check("", Err(Missing));
        check("not-a-token", Err(Malformed));
        check("a.b.c", Err(Malformed));
        check(&"x".repeat(MAX_TOKEN_BYTES + 1), Err(Malformed));
        check(&sign(&with(json!({"exp": now() - 3600}))), Err(Expired));
        check(&sign(&with(json!({"exp": null}))), Err(MissingClaim("exp")));
        check(&sign(&with(json!({"nbf": now() + 3600}))), Err(NotYetValid));
        check(&sign(&with(json!({"aud": "other"}))), Err(WrongAudience));
        check(&sign(&with(json!({"aud": null}))), Err(MissingClaim("aud")));
        check(&sign(&with(json!({"role": "anon"}))), Err(Anonymous));
        check(
            &sign(&with(json!({"role": null}))),
            Err(MissingClaim("role")),
        );
        check(
            &sign(&with(json!({"role": "service_role"}))),
            Err(RoleNotAllowed("service_role".into())),
        );
        check(&sign(&with(json!({"sub": null}))), Err(MissingClaim("sub")));
        check(&sign(&with(json!({"sub": "alice"}))), Err(InvalidSubject));
        let other = mint_hs256(
            &good_claims(),
            &Secret::new(b"another-project-secret".to_vec()),
        );
        check(&other.unwrap(), Err(BadSignature));
        // Within the leeway an expired token still passes.
        check(&sign(&with(json!({"exp": now() - 5}))), Ok(()));
    }

    #[test]
    fn alg_none_and_tampering_are_refused() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let token = sign(&good_claims());
        let parts: Vec<&str> = token.split('.').collect();
        let none_header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        check(
            &format!("{none_header}.{}.", parts[1]),
            Err(AuthError::Malformed),
        );
        let forged =
            b64.encode(with(json!({"sub": "4609d0cf-25f3-4991-b6d2-d5b9a8ac4c73"})).to_string());
        check(
            &format!("{}.{forged}.{}", parts[0], parts[2]),
            Err(AuthError::BadSignature),
        );
        let hs512 = b64.encode(br#"{"alg":"HS512","typ":"JWT"}"#);
        check(
            &format!("{hs512}.{}.{}", parts[1], parts[2]),
            Err(AuthError::BadAlgorithm),
        );
    }

    #[test]
    fn errors_never_contain_the_token() {
        let token = sign(&with(json!({"exp": now() - 3600})));
        let err = verifier().verify(&token).unwrap_err();
        for part in token.split('.') {
            assert!(!err.reason().contains(part));
            assert!(!format!("{err:?}").contains(part));
        }
    }
}
