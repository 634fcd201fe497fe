//! `exai-bench`: the measurements behind `BENCHMARKS.md`, run by
//! `cargo xtask bench` in release mode.
//!
//! Each figure is measured on one core (a current-thread runtime) and printed
//! beside its floor, measured in the same run: plain `jsonwebtoken::decode`
//! with the same key and claims, so the ratio says what exai adds on top of
//! the signature check itself, whatever the machine's speed that minute.
//! Output is a Markdown table on stdout.

use std::io::Write as _;
use std::time::{Duration, Instant};

use exai_auth::{JwksConfig, JwtConfig, JwtVerifier, Secret, mint_hs256};
use exai_tests::{JwksServer, TEST_SECRET, TestKeys, claims};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

/// How long each measurement runs.
const RUN: Duration = Duration::from_millis(1500);

fn main() {
    let section = std::env::args().nth(1).unwrap_or_else(|| "auth".into());
    match section.as_str() {
        "auth" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(run()),
        "sessions" => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(sessions::run()),
        "transport" => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(transport::run()),
        "fairness" => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(fairness::run()),
        "abuse" => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(abuse::run()),
        "soak" => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(soak::run()),
        // Only the memory figure, for working on it.
        "transport-memory" => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(transport::memory()),
        other => {
            panic!("unknown section {other}: auth, sessions, transport, fairness, soak or abuse")
        }
    }
}

mod abuse;
mod fairness;
mod sessions;
mod soak;
mod transport;

/// Average time per call of `f`, run repeatedly for [`RUN`].
async fn per_call<F, Fut>(mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    // Warm up (caches, lazily built tables).
    for _ in 0..100 {
        f().await;
    }
    let start = Instant::now();
    let mut calls = 0u32;
    while start.elapsed() < RUN {
        for _ in 0..100 {
            f().await;
        }
        calls += 100;
    }
    start.elapsed() / calls
}

fn micros(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e6)
}

async fn run() {
    let mut out = std::io::stdout().lock();
    let claims = claims("bench@example.com");
    let keys = TestKeys::generate(&[("es", "ES256"), ("rs", "RS256"), ("ed", "EdDSA")]);
    let server = JwksServer::start(keys.jwks(&["es", "rs", "ed"])).await;
    let config = |cache: usize| {
        let mut config = JwtConfig::new()
            .with_hs256(Secret::new(TEST_SECRET.to_vec()))
            .with_jwks(JwksConfig::new(&server.url));
        config.cache_capacity = cache;
        config
    };
    let uncached = JwtVerifier::start(config(0)).await.expect("verifier");
    let cached = JwtVerifier::start(config(10_000)).await.expect("verifier");
    let jwks: Value = keys.jwks(&["es", "rs", "ed"]);
    let raw_key = |kid: &str| {
        let jwk = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid)
            .unwrap();
        DecodingKey::from_jwk(&serde_json::from_value(jwk.clone()).unwrap()).unwrap()
    };

    let hs = mint_hs256(&claims, &Secret::new(TEST_SECRET.to_vec())).unwrap();
    let cases: Vec<(&str, String, Algorithm, DecodingKey, &str)> = vec![
        (
            "HS256",
            hs,
            Algorithm::HS256,
            DecodingKey::from_secret(TEST_SECRET),
            "≤ 3 µs",
        ),
        (
            "ES256",
            keys.sign("es", &claims),
            Algorithm::ES256,
            raw_key("es"),
            "≤ 80 µs",
        ),
        (
            "RS256",
            keys.sign("rs", &claims),
            Algorithm::RS256,
            raw_key("rs"),
            "—",
        ),
        (
            "EdDSA",
            keys.sign("ed", &claims),
            Algorithm::EdDSA,
            raw_key("ed"),
            "—",
        ),
    ];
    writeln!(
        out,
        "| what | exai µs/token | tokens/s (1 core) | floor: jsonwebtoken::decode µs | ratio | target |"
    )
    .expect("writing the report");
    writeln!(out, "|---|---|---|---|---|---|").expect("writing the report");
    for (name, token, alg, key, target) in &cases {
        let mut validation = Validation::new(*alg);
        validation.set_audience(&["authenticated"]);
        let floor = per_call(|| {
            let result = jsonwebtoken::decode::<Value>(token, key, &validation);
            assert!(result.is_ok());
            std::future::ready(())
        })
        .await;
        let ours = per_call(|| async {
            assert!(uncached.verify(token).await.is_ok());
        })
        .await;
        writeln!(
            out,
            "| {name} verify | {} | {:.0} | {} | {:.2}× | {target} |",
            micros(ours),
            1.0 / ours.as_secs_f64(),
            micros(floor),
            ours.as_secs_f64() / floor.as_secs_f64(),
        )
        .expect("writing the report");
    }
    let (_, es_token, ..) = &cases[1];
    let (_, hs_token, _, hs_key, _) = &cases[0];
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&["authenticated"]);
    let floor = per_call(|| {
        assert!(jsonwebtoken::decode::<Value>(hs_token, hs_key, &validation).is_ok());
        std::future::ready(())
    })
    .await;
    let hit = per_call(|| async {
        assert!(cached.verify(es_token).await.is_ok());
    })
    .await;
    writeln!(
        out,
        "| cache hit (ES256 token) | {} | {:.0} | {} (HS256 decode) | {:.2}× | ≤ 1 µs |",
        micros(hit),
        1.0 / hit.as_secs_f64(),
        micros(floor),
        hit.as_secs_f64() / floor.as_secs_f64(),
    )
    .expect("writing the report");
}
