//! Supabase Auth access tokens: verification and (for development) minting.
//!
//! A Supabase access token is a JWT whose claims include `sub` (the user's
//! UUID), `role` (`authenticated` for a signed-in user), `aud`
//! (`authenticated`), `iss` (`${SUPABASE_URL}/auth/v1`), `exp`, `iat`,
//! `email`, `session_id`, `aal` and `is_anonymous`; see
//! <https://supabase.com/docs/guides/auth/jwt-fields>. Projects sign them with
//! the legacy shared secret (HS256) or with asymmetric keys published as a
//! JWKS (ES256, RS256, EdDSA); both may be configured at once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use crate::cache::TokenCache;
use crate::jwks::{Jwks, JwksConfig, JwksError};
use crate::{AuthError, AuthMethod, Principal, Secret, UserId};

/// Longest token we look at. Real access tokens are well under 4 KiB; a
/// larger one is refused before any parsing work.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Algorithms accepted from the JWKS (each key still allows only its own).
const ASYMMETRIC: &[Algorithm] = &[
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];

/// What a valid access token must look like.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JwtConfig {
    /// The project's legacy HS256 secret (`SUPABASE_JWT_SECRET`).
    pub hs256_secret: Option<Secret>,
    /// The project's signing keys (`${SUPABASE_URL}/auth/v1/.well-known/jwks.json`).
    pub jwks: Option<JwksConfig>,
    /// Required `aud` value (`EXAI_JWT_AUDIENCE`).
    pub audience: String,
    /// Required `iss` value, when set (`${SUPABASE_URL}/auth/v1`).
    pub issuer: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf` (`EXAI_JWT_LEEWAY_SECS`).
    pub leeway: Duration,
    /// Roles admitted for ordinary access (`anon` is always refused).
    pub allowed_roles: Vec<String>,
    /// Verified tokens remembered (0: no cache).
    pub cache_capacity: usize,
}

impl JwtConfig {
    /// Supabase's defaults: audience and role `authenticated`, 30 s leeway,
    /// no issuer check, a cache of 10,000 verified tokens, and no keys yet.
    pub fn new() -> Self {
        JwtConfig {
            hs256_secret: None,
            jwks: None,
            audience: "authenticated".to_owned(),
            issuer: None,
            leeway: Duration::from_secs(30),
            allowed_roles: vec!["authenticated".to_owned()],
            cache_capacity: 10_000,
        }
    }

    /// The same configuration verifying HS256 tokens with `secret`.
    pub fn with_hs256(mut self, secret: Secret) -> Self {
        self.hs256_secret = Some(secret);
        self
    }

    /// The same configuration verifying asymmetric tokens with a JWKS.
    pub fn with_jwks(mut self, jwks: JwksConfig) -> Self {
        self.jwks = Some(jwks);
        self
    }
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig::new()
    }
}

/// Verifies access tokens against a [`JwtConfig`]. Build once, share.
pub struct JwtVerifier {
    hs256: Option<DecodingKey>,
    jwks: Option<Jwks>,
    rules: ClaimRules,
    cache: Option<TokenCache>,
    pub(crate) allowed_roles: Vec<String>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("hs256", &self.hs256.as_ref().map(|_| "<redacted>"))
            .field("jwks", &self.jwks)
            .field("allowed_roles", &self.allowed_roles)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// A verifier for `config`. The JWKS, if any, is fetched on first use;
    /// [`JwtVerifier::start`] fetches it up front.
    pub fn new(config: JwtConfig) -> Result<Self, JwksError> {
        let rules = ClaimRules {
            audience: config.audience,
            issuer: config.issuer,
            leeway: config.leeway.as_secs_f64(),
        };
        Ok(JwtVerifier {
            hs256: config
                .hs256_secret
                .as_ref()
                .map(|s| DecodingKey::from_secret(s.expose())),
            jwks: config.jwks.map(Jwks::new).transpose()?,
            rules,
            cache: (config.cache_capacity > 0).then(|| TokenCache::new(config.cache_capacity)),
            allowed_roles: config.allowed_roles,
        })
    }

    /// A verifier whose JWKS is fetched now. If the fetch fails, the verifier
    /// starts anyway when an HS256 secret is configured (asymmetric tokens
    /// then wait for a later refresh); otherwise the error is returned.
    pub async fn start(config: JwtConfig) -> Result<Self, JwksError> {
        let verifier = JwtVerifier::new(config)?;
        if let Some(jwks) = &verifier.jwks
            && let Err(error) = jwks.fetch_now().await
        {
            if verifier.hs256.is_none() {
                return Err(error);
            }
            tracing::warn!(
                error = %error,
                "JWKS unavailable at start-up; verifying HS256 tokens only until it can be fetched"
            );
        }
        Ok(verifier)
    }

    /// Whether any key can verify a token now: the HS256 secret, or at least
    /// one key of the JWKS.
    pub fn has_keys(&self) -> bool {
        self.hs256.is_some() || self.jwks.as_ref().is_some_and(|j| j.key_count() > 0)
    }

    /// How many JWKS fetches were attempted so far.
    pub fn jwks_fetches(&self) -> u64 {
        self.jwks.as_ref().map_or(0, Jwks::fetches)
    }

    /// Checks `token` and returns the principal it names. The role is not
    /// checked against the allowed roles here (the [`crate::Authenticator`]
    /// does that for the access asked for), but `anon` is always refused.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed);
        }
        let cache_key = self.cache.as_ref().map(|_| TokenCache::key(token));
        if let (Some(cache), Some(key)) = (&self.cache, &cache_key)
            && let Some(hit) = cache.get(key)
        {
            let key_still_published = match (&hit.kid, &self.jwks) {
                (Some(kid), Some(jwks)) => jwks.still_publishes(kid),
                _ => true,
            };
            if key_still_published {
                return Ok(hit.principal);
            }
            cache.remove(key);
        }
        // Exactly three dot-separated parts: header.payload.signature.
        let (message, signature) = token.rsplit_once('.').ok_or(AuthError::Malformed)?;
        let (_, payload) = message.split_once('.').ok_or(AuthError::Malformed)?;
        if payload.contains('.') {
            return Err(AuthError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| header_error(token, e))?;
        let (key, kid) = match header.alg {
            Algorithm::HS256 => (self.hs256.clone().ok_or(AuthError::BadAlgorithm)?, None),
            alg if ASYMMETRIC.contains(&alg) => {
                let jwks = self.jwks.as_ref().ok_or(AuthError::BadAlgorithm)?;
                let kid = header.kid.ok_or(AuthError::UnknownKey)?;
                let key = jwks.key(&kid).await?;
                if key.algorithm != alg {
                    return Err(AuthError::BadAlgorithm);
                }
                (key.decoding.clone(), Some(kid))
            }
            _ => return Err(AuthError::BadAlgorithm),
        };
        // The signature is checked by jsonwebtoken's crypto provider; the
        // claims are then read once and checked below (jsonwebtoken's own
        // `decode` parses them twice, which alone costs more than the HS256
        // budget of the auth issue).
        if !jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key, header.alg)
            .map_err(map_error)?
        {
            return Err(AuthError::BadSignature);
        }
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| AuthError::Malformed)?;
        let claims: RawClaims =
            serde_json::from_slice(&payload).map_err(|_| AuthError::Malformed)?;
        self.rules.check(&claims, unix_now())?;
        let principal = claims.into_principal()?;
        if let (Some(cache), Some(key)) = (&self.cache, cache_key) {
            cache.insert(key, &principal, kid);
        }
        Ok(principal)
    }
}

/// The latest `exp` a principal carries (9999-12-31T23:59:59Z): a token
/// claiming a later one is taken to expire then.
pub const LATEST_EXPIRY: u64 = 253_402_300_799;

/// The claims we read; every field optional so that an absent claim becomes
/// our own precise error rather than a generic parse failure.
/// `user_metadata` is user-editable and deliberately not read.
#[derive(Deserialize)]
struct RawClaims {
    sub: Option<String>,
    role: Option<String>,
    exp: Option<f64>,
    nbf: Option<f64>,
    iss: Option<String>,
    aud: Option<Audience>,
    email: Option<String>,
    session_id: Option<String>,
    aal: Option<String>,
    is_anonymous: Option<bool>,
    app_metadata: Option<serde_json::Value>,
}

impl RawClaims {
    fn into_principal(self) -> Result<Principal, AuthError> {
        let sub = self.sub.ok_or(AuthError::MissingClaim("sub"))?;
        let user_id: UserId = sub.parse().map_err(|_| AuthError::InvalidSubject)?;
        let role = self.role.ok_or(AuthError::MissingClaim("role"))?;
        if role == "anon" {
            return Err(AuthError::Anonymous);
        }
        Ok(Principal {
            user_id,
            email: self.email,
            role,
            auth_session_id: self.session_id,
            aal: self.aal,
            is_anonymous: self.is_anonymous.unwrap_or(false),
            // Non-negative and finite: checked by `ClaimRules::check`;
            // an absurdly distant one is clamped, so that no one computing
            // with it (a connection's deadline) can overflow.
            expires_at: self.exp.map(|exp| (exp as u64).min(LATEST_EXPIRY)),
            app_metadata: self.app_metadata,
            method: AuthMethod::Jwt,
        })
    }
}

/// `aud` is one string or an array of strings (RFC 7519 section 4.1.3).
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, wanted: &str) -> bool {
        match self {
            Audience::One(aud) => aud == wanted,
            Audience::Many(auds) => auds.iter().any(|aud| aud == wanted),
        }
    }
}

/// The registered claims every accepted token must satisfy, checked in the
/// order (and with the semantics) of jsonwebtoken's `Validation`: required
/// claims present, then `exp`, `nbf`, `iss`, `aud`.
#[derive(Debug)]
struct ClaimRules {
    audience: String,
    issuer: Option<String>,
    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    leeway: f64,
}

impl ClaimRules {
    fn check(&self, claims: &RawClaims, now: f64) -> Result<(), AuthError> {
        let exp = claims.exp.ok_or(AuthError::MissingClaim("exp"))?;
        let aud = claims.aud.as_ref().ok_or(AuthError::MissingClaim("aud"))?;
        if self.issuer.is_some() && claims.iss.is_none() {
            return Err(AuthError::MissingClaim("iss"));
        }
        if !exp.is_finite() || exp < 0.0 || exp < now - self.leeway {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = claims.nbf
            && (!nbf.is_finite() || nbf > now + self.leeway)
        {
            return Err(AuthError::NotYetValid);
        }
        if let Some(issuer) = &self.issuer
            && claims.iss.as_deref() != Some(issuer.as_str())
        {
            return Err(AuthError::WrongIssuer);
        }
        if !aud.contains(&self.audience) {
            return Err(AuthError::WrongAudience);
        }
        Ok(())
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// A header that jsonwebtoken cannot read: an unsupported `alg` (such as
/// `none`) is told apart from plain garbage.
fn header_error(token: &str, error: jsonwebtoken::errors::Error) -> AuthError {
    let alg = token
        .split('.')
        .next()
        .and_then(|h| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .ok()
        })
        .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
        .and_then(|h| h.get("alg").cloned());
    match alg {
        Some(serde_json::Value::String(alg)) if alg.parse::<Algorithm>().is_err() => {
            AuthError::BadAlgorithm
        }
        _ => map_error(error),
    }
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
        JwtVerifier::new(JwtConfig::new().with_hs256(Secret::new(SECRET.to_vec()))).unwrap()
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

    async fn check(token: &str, expected: Result<(), AuthError>) {
        let got = verifier().verify(token).await.map(|_| ());
        assert_eq!(got, expected, "token: {token:.60}");
    }

    #[tokio::test]
    async fn accepts_a_supabase_shaped_token() {
        let p = verifier().verify(&sign(&good_claims())).await.unwrap();
        assert_eq!(
            p.user_id.to_string(),
            "1fb4fe69-33d1-456c-9b18-fe580006aaf7"
        );
        assert_eq!(p.email.as_deref(), Some("jazeel@example.com"));
        assert_eq!(p.role, "authenticated");
        assert_eq!(p.method, AuthMethod::Jwt);
        assert!(p.expires_at.is_some());
    }

    #[tokio::test]
    async fn minted_claims_verify() {
        let claims = AccessTokenClaims::new(
            UserId::from_email("m@example.com"),
            Some("m@example.com".into()),
            SystemTime::now(),
            Duration::from_secs(60),
        );
        let p = verifier()
            .verify(&mint_hs256(&claims, &Secret::new(SECRET.to_vec())).unwrap())
            .await;
        assert_eq!(p.unwrap().user_id, UserId::from_email("m@example.com"));
    }

    #[tokio::test]
    async fn refusals_name_their_reason() {
        use AuthError::*;
        check("", Err(Missing)).await;
        check("not-a-token", Err(Malformed)).await;
        check("a.b.c", Err(Malformed)).await;
        check(&"x".repeat(MAX_TOKEN_BYTES + 1), Err(Malformed)).await;
        check(&sign(&with(json!({"exp": now() - 3600}))), Err(Expired)).await;
        check(&sign(&with(json!({"exp": null}))), Err(MissingClaim("exp"))).await;
        check(&sign(&with(json!({"nbf": now() + 3600}))), Err(NotYetValid)).await;
        check(&sign(&with(json!({"aud": "other"}))), Err(WrongAudience)).await;
        check(&sign(&with(json!({"aud": null}))), Err(MissingClaim("aud"))).await;
        check(&sign(&with(json!({"role": "anon"}))), Err(Anonymous)).await;
        check(
            &sign(&with(json!({"role": null}))),
            Err(MissingClaim("role")),
        )
        .await;
        check(&sign(&with(json!({"sub": null}))), Err(MissingClaim("sub"))).await;
        check(&sign(&with(json!({"sub": "alice"}))), Err(InvalidSubject)).await;
        let other = mint_hs256(
            &good_claims(),
            &Secret::new(b"another-project-secret".to_vec()),
        );
        check(&other.unwrap(), Err(BadSignature)).await;
        // Within the leeway an expired token still passes.
        check(&sign(&with(json!({"exp": now() - 5}))), Ok(())).await;
    }

    #[tokio::test]
    async fn registered_claims_are_checked_as_rfc_7519_reads_them() {
        use AuthError::*;
        // `aud` may be an array; it must contain our audience.
        check(&sign(&with(json!({"aud": ["x", "authenticated"]}))), Ok(())).await;
        check(&sign(&with(json!({"aud": ["x", "y"]}))), Err(WrongAudience)).await;
        check(&sign(&with(json!({"aud": 7}))), Err(Malformed)).await;
        // NumericDate may carry a fraction; it must be a number.
        check(&sign(&with(json!({"exp": now() as f64 + 60.5}))), Ok(())).await;
        check(&sign(&with(json!({"exp": "tomorrow"}))), Err(Malformed)).await;
        check(&sign(&with(json!({"exp": -1}))), Err(Expired)).await;
        check(&sign(&with(json!({"nbf": now() + 5}))), Ok(())).await;
        // With an issuer configured, `iss` is required and must match.
        let mut config = JwtConfig::new().with_hs256(Secret::new(SECRET.to_vec()));
        config.issuer = Some("https://p.supabase.co/auth/v1".into());
        let strict = JwtVerifier::new(config).unwrap();
        let verify = async |claims: Value| strict.verify(&sign(&claims)).await.map(|_| ());
        assert_eq!(verify(good_claims()).await, Err(MissingClaim("iss")));
        let wrong = with(json!({"iss": "https://q.supabase.co/auth/v1"}));
        assert_eq!(verify(wrong).await, Err(WrongIssuer));
        let right = with(json!({"iss": "https://p.supabase.co/auth/v1"}));
        assert_eq!(verify(right).await, Ok(()));
    }

    #[tokio::test]
    async fn alg_none_and_tampering_are_refused() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let token = sign(&good_claims());
        let parts: Vec<&str> = token.split('.').collect();
        let none_header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        check(
            &format!("{none_header}.{}.", parts[1]),
            Err(AuthError::BadAlgorithm),
        )
        .await;
        let forged =
            b64.encode(with(json!({"sub": "4609d0cf-25f3-4991-b6d2-d5b9a8ac4c73"})).to_string());
        check(
            &format!("{}.{forged}.{}", parts[0], parts[2]),
            Err(AuthError::BadSignature),
        )
        .await;
        let hs512 = b64.encode(br#"{"alg":"HS512","typ":"JWT"}"#);
        check(
            &format!("{hs512}.{}.{}", parts[1], parts[2]),
            Err(AuthError::BadAlgorithm),
        )
        .await;
    }

    #[tokio::test]
    async fn errors_never_contain_the_token() {
        let token = sign(&with(json!({"exp": now() - 3600})));
        let err = verifier().verify(&token).await.unwrap_err();
        for part in token.split('.') {
            assert!(!err.reason().contains(part));
            assert!(!format!("{err:?}").contains(part));
        }
    }
}
