//! Supabase tokens of both signing systems, API keys, and every way a
//! credential is refused, checked at the daemon's real edge.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use exai_auth::{JwksConfig, JwtConfig, NewApiKey, Secret, UserId};
use exai_daemon::AuthMode;
use exai_tests::{
    JwksServer, TEST_SECRET, TestDaemon, TestKeys, claims, now, sign, token, try_connect_with,
};
use serde_json::{Value, json};

const ISSUER: &str = "https://project.supabase.co/auth/v1";

/// A daemon verifying HS256 with the test secret and asymmetric tokens with
/// the JWKS at `server`, refreshing quickly so tests need not wait 30 s.
async fn daemon_with_jwks(server: &JwksServer, adjust: impl FnOnce(&mut JwtConfig)) -> TestDaemon {
    let mut jwks = JwksConfig::new(&server.url);
    jwks.min_refresh_interval = Duration::from_millis(100);
    jwks.max_age = Duration::from_millis(300);
    let mut jwt = JwtConfig::new()
        .with_hs256(Secret::new(TEST_SECRET.to_vec()))
        .with_jwks(jwks);
    adjust(&mut jwt);
    TestDaemon::start_with(|config| config.auth = AuthMode::MultiUser(jwt)).await
}

/// Connects with `headers`; `Ok(whoami)` or `Err((status, reason))`.
async fn attempt(daemon: &TestDaemon, headers: &[(&str, &str)]) -> Result<Value, (u16, String)> {
    match try_connect_with(&daemon.url, headers).await {
        Ok(mut client) => {
            client.initialize().await;
            let who = client.whoami(1).await;
            client.close().await;
            Ok(who)
        }
        Err(refused) => Err((refused.status, refused.body.trim_end().to_owned())),
    }
}

async fn with_bearer(daemon: &TestDaemon, token: &str) -> Result<Value, (u16, String)> {
    attempt(daemon, &[("authorization", &format!("Bearer {token}"))]).await
}

fn with(base: &Value, patch: Value) -> Value {
    let mut claims = base.clone();
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

#[tokio::test]
async fn tokens_from_an_independent_implementation_and_from_ours_are_accepted() {
    let users = ["es@example.com", "rs@example.com", "ed@example.com"];
    let signed: Vec<(&str, Value)> = [("es", users[0]), ("rs", users[1]), ("ed", users[2])]
        .into_iter()
        .map(|(kid, email)| (kid, claims(email)))
        .collect();
    let (keys, pyjwt_tokens) = TestKeys::generate_signing(
        &[("es", "ES256"), ("rs", "RS256"), ("ed", "EdDSA")],
        &signed,
    );
    let server = JwksServer::start(keys.jwks(&["es", "rs", "ed"])).await;
    let daemon = daemon_with_jwks(&server, |_| {}).await;
    for ((kid, claims), pyjwt) in signed.iter().zip(&pyjwt_tokens) {
        let email = claims["email"].as_str().unwrap();
        for token in [pyjwt.clone(), keys.sign(kid, claims)] {
            let who = with_bearer(&daemon, &token).await.expect("accepted");
            assert_eq!(who["email"], email, "{kid}");
            assert_eq!(who["user_id"], json!(UserId::from_email(email)));
        }
    }
    // The legacy secret works alongside (a project migrating between the two).
    let who = with_bearer(&daemon, &token("hs@example.com"))
        .await
        .unwrap();
    assert_eq!(who["email"], "hs@example.com");
    daemon.stop().await;
}

#[tokio::test]
async fn every_refusal_names_its_reason() {
    let keys = TestKeys::generate(&[("es", "ES256"), ("rs", "RS256"), ("other", "ES256")]);
    let server = JwksServer::start(keys.jwks(&["es", "rs"])).await;
    let daemon = daemon_with_jwks(&server, |jwt| jwt.issuer = Some(ISSUER.to_owned())).await;
    let base = with(&claims("a@example.com"), json!({ "iss": ISSUER }));
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let good = keys.sign("es", &base);
    let parts: Vec<&str> = good.split('.').collect();
    let payload = b64(base.to_string().as_bytes());

    // The classic confusion attack: HS256 keyed with the public key.
    let public_key_text = serde_json::to_string(&keys.jwks(&["rs"])["keys"][0]).unwrap();
    let hs_with_public_key =
        exai_auth::mint_hs256(&base, &Secret::new(public_key_text.into_bytes())).unwrap();

    let forged_payload = b64(
        with(&base, json!({"sub": UserId::from_email("b@example.com")}))
            .to_string()
            .as_bytes(),
    );
    let mut flipped_signature = parts[2].to_owned();
    flipped_signature.replace_range(
        0..4,
        if &parts[2][0..4] == "AAAA" {
            "BBBB"
        } else {
            "AAAA"
        },
    );

    let user = UserId::from_email("keys@example.com");
    let api_keys = daemon.api_keys();
    let mut revoked = NewApiKey::generate(user, None, None).unwrap();
    revoked.record.revoked_at = Some(SystemTime::now());
    let mut expired = NewApiKey::generate(user, None, None).unwrap();
    expired.record.expires_at = Some(SystemTime::now() - Duration::from_secs(3600));
    let live = NewApiKey::generate(user, None, None).unwrap();
    let wrong_secret = format!("{}{}", &live.key[..live.key.len() - 64], "0".repeat(64));
    let unknown_id = format!("exai_{}_{}", "f".repeat(16), "0".repeat(64));
    for key in [&revoked, &expired, &live] {
        api_keys.insert_api_key(key.record.clone()).await.unwrap();
    }

    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "alg none",
            format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#)),
            401,
            "unsupported signing algorithm",
        ),
        (
            "HS256 keyed with the RSA public key",
            hs_with_public_key,
            401,
            "invalid signature",
        ),
        (
            "unknown kid",
            keys.sign_as("es", "no-such-kid", &base),
            401,
            "unknown signing key",
        ),
        (
            "another project's key",
            keys.sign("other", &base),
            401,
            "unknown signing key",
        ),
        (
            "another key under a known kid",
            keys.sign_as("other", "es", &base),
            401,
            "invalid signature",
        ),
        (
            "ES256 kid with an RS256 signature",
            keys.sign_as("rs", "es", &base),
            401,
            "unsupported signing algorithm",
        ),
        (
            "expired",
            keys.sign("es", &with(&base, json!({"exp": now() - 3600}))),
            401,
            "token expired",
        ),
        (
            "no exp",
            keys.sign("es", &with(&base, json!({"exp": null}))),
            401,
            "missing claim: exp",
        ),
        (
            "nbf in the future",
            keys.sign("es", &with(&base, json!({"nbf": now() + 3600}))),
            401,
            "token not yet valid",
        ),
        (
            "wrong iss",
            keys.sign(
                "es",
                &with(&base, json!({"iss": "https://evil.example/auth/v1"})),
            ),
            401,
            "wrong issuer",
        ),
        (
            "no iss",
            keys.sign("es", &with(&base, json!({"iss": null}))),
            401,
            "missing claim: iss",
        ),
        (
            "wrong aud",
            keys.sign("es", &with(&base, json!({"aud": "someone-else"}))),
            401,
            "wrong audience",
        ),
        (
            "no aud",
            keys.sign("es", &with(&base, json!({"aud": null}))),
            401,
            "missing claim: aud",
        ),
        (
            "role anon",
            keys.sign("es", &with(&base, json!({"role": "anon"}))),
            401,
            "anonymous tokens are not accepted",
        ),
        (
            "no sub",
            keys.sign("es", &with(&base, json!({"sub": null}))),
            401,
            "missing claim: sub",
        ),
        (
            "sub not a UUID",
            keys.sign("es", &with(&base, json!({"sub": "alice"}))),
            401,
            "subject is not a user id",
        ),
        (
            "tampered payload",
            format!("{}.{forged_payload}.{}", parts[0], parts[2]),
            401,
            "invalid signature",
        ),
        (
            "tampered signature",
            format!("{}.{}.{flipped_signature}", parts[0], parts[1]),
            401,
            "invalid signature",
        ),
        (
            "truncated",
            format!("{}.{}", parts[0], parts[1]),
            401,
            "malformed token",
        ),
        (
            "not base64",
            "%%%.&&&.***".to_owned(),
            401,
            "malformed token",
        ),
        (
            "three dots",
            format!("{good}.extra"),
            401,
            "malformed token",
        ),
        (
            "100 KB header",
            format!("{}.{}.{}", "A".repeat(100_000), parts[1], parts[2]),
            401,
            "malformed token",
        ),
        (
            "HS256 with the project's secret (control)",
            sign(&base),
            200,
            "",
        ),
        (
            "HS256 with another project's secret",
            exai_auth::mint_hs256(&base, &Secret::new(b"another-projects-secret".to_vec()))
                .unwrap(),
            401,
            "invalid signature",
        ),
        (
            "role service_role",
            keys.sign("es", &with(&base, json!({"role": "service_role"}))),
            403,
            "role 'service_role' is not allowed",
        ),
        (
            "revoked API key",
            revoked.key.clone(),
            401,
            "API key revoked",
        ),
        (
            "expired API key",
            expired.key.clone(),
            401,
            "API key expired",
        ),
        ("wrong API key secret", wrong_secret, 401, "invalid API key"),
        ("unknown API key", unknown_id, 401, "invalid API key"),
        (
            "malformed API key",
            "exai_nothex_123".to_owned(),
            401,
            "invalid API key",
        ),
    ];
    let mut refusals = 0;
    for (name, credential, status, reason) in &cases {
        let got = with_bearer(&daemon, credential).await;
        if *status == 200 {
            // Positive control: a well-formed HS256 token with the right secret.
            assert!(got.is_ok(), "{name}: {got:?}");
            continue;
        }
        refusals += 1;
        assert_eq!(got, Err((*status, (*reason).to_owned())), "{name}");
    }
    assert!(refusals >= 20, "{refusals} refusal cases");
    // The live key works, through either header.
    let who = with_bearer(&daemon, &live.key).await.unwrap();
    assert_eq!(who["user_id"], json!(user));
    let who = attempt(&daemon, &[("x-api-key", &live.key)]).await.unwrap();
    assert_eq!(who["user_id"], json!(user));
    daemon.stop().await;
}

#[tokio::test]
async fn api_keys_record_use_and_revocation_applies_to_the_next_connection() {
    let daemon = TestDaemon::start().await;
    let user = UserId::from_email("script@example.com");
    let key = NewApiKey::generate(user, Some("ci".into()), None).unwrap();
    let store = daemon.api_keys();
    store.insert_api_key(key.record.clone()).await.unwrap();
    let mut held = exai_tests::connect(&daemon.url, &key.key).await;
    held.initialize().await;
    assert_eq!(held.whoami(1).await["user_id"], json!(user));
    let stored = store
        .find_api_key(&key.record.key_id)
        .await
        .unwrap()
        .unwrap();
    assert!(stored.last_used_at.is_some());
    assert!(
        store
            .revoke_api_key(&key.record.key_id, SystemTime::now())
            .await
            .unwrap()
    );
    let refused = with_bearer(&daemon, &key.key).await;
    assert_eq!(refused, Err((401, "API key revoked".to_owned())));
    daemon.stop().await;
}

#[tokio::test]
async fn key_rotation_takes_effect_without_a_restart() {
    let keys = TestKeys::generate(&[("old", "ES256"), ("new", "ES256")]);
    let server = JwksServer::start(keys.jwks(&["old"])).await;
    let daemon = daemon_with_jwks(&server, |_| {}).await;
    let old_token = keys.sign("old", &claims("a@example.com"));
    assert!(with_bearer(&daemon, &old_token).await.is_ok());

    // A new key is published: an unknown kid triggers a refresh.
    server.set(keys.jwks(&["old", "new"]));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let new_token = keys.sign("new", &claims("a@example.com"));
    assert!(with_bearer(&daemon, &new_token).await.is_ok());

    // The old key is withdrawn: once the set is refreshed, tokens it signed
    // (even one verified and cached before) are refused.
    server.set(keys.jwks(&["new"]));
    let mut refused = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Err(refusal) = with_bearer(&daemon, &old_token).await {
            refused = Some(refusal);
            break;
        }
    }
    assert_eq!(refused, Some((401, "unknown signing key".to_owned())));
    assert!(with_bearer(&daemon, &new_token).await.is_ok());
    daemon.stop().await;
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_last_good_keys() {
    let keys = TestKeys::generate(&[("k", "ES256")]);
    let server = JwksServer::start(keys.jwks(&["k"])).await;
    let daemon = daemon_with_jwks(&server, |jwt| jwt.cache_capacity = 0).await;
    server.set_failing(true);
    let before = server.fetches();
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let token = keys.sign("k", &claims(&format!("u{i}@example.com")));
        assert!(with_bearer(&daemon, &token).await.is_ok(), "attempt {i}");
    }
    assert!(server.fetches() > before, "refreshes were attempted");
    daemon.stop().await;
}

#[tokio::test]
async fn jwks_down_at_start_up() {
    let keys = TestKeys::generate(&[("k", "ES256")]);
    let server = JwksServer::start(keys.jwks(&["k"])).await;
    server.set_failing(true);
    // Without a shared secret there is nothing to verify with: a clear error.
    let jwks = JwksConfig::new(&server.url);
    let failed = TestDaemon::try_start_with(|config| {
        config.auth = AuthMode::MultiUser(JwtConfig::new().with_jwks(jwks));
    })
    .await;
    let error = failed.err().expect("refuses to start");
    let chain = format!("{error}: {}", std::error::Error::source(&error).unwrap());
    assert!(
        chain.contains("could not fetch the JWKS from http://127.0.0.1:"),
        "{chain}"
    );

    // With HS256 configured it starts, and asymmetric tokens work once the
    // JWKS is back.
    let daemon = daemon_with_jwks(&server, |_| {}).await;
    assert!(with_bearer(&daemon, &token("hs@example.com")).await.is_ok());
    let es = keys.sign("k", &claims("es@example.com"));
    assert_eq!(
        with_bearer(&daemon, &es).await,
        Err((401, "unknown signing key".to_owned()))
    );
    server.set_failing(false);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(with_bearer(&daemon, &es).await.is_ok());
    daemon.stop().await;
}

#[tokio::test]
async fn a_flood_of_unknown_kids_causes_few_fetches() {
    let keys = TestKeys::generate(&[("k", "ES256")]);
    let server = JwksServer::start(keys.jwks(&["k"])).await;
    // Supabase's policy as shipped: at most one refresh per 30 s.
    let config = JwtConfig::new().with_jwks(JwksConfig::new(&server.url));
    let verifier = std::sync::Arc::new(exai_auth::JwtVerifier::start(config).await.unwrap());
    assert_eq!(server.fetches(), 1);
    let base = claims("a@example.com");
    let attempts = (0..1000).map(|i| {
        let token = keys.sign_as("k", &format!("random-kid-{i}"), &base);
        let verifier = verifier.clone();
        tokio::spawn(async move { verifier.verify(&token).await })
    });
    for result in futures::future::join_all(attempts).await {
        assert_eq!(
            result.unwrap().unwrap_err(),
            exai_auth::AuthError::UnknownKey
        );
    }
    assert!(server.fetches() <= 2, "{} fetches", server.fetches());
    assert!(verifier.verify(&keys.sign("k", &base)).await.is_ok());
}
