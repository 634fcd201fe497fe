//! Access tokens: the input as a token, and (to get past the signature)
//! as a header and claims signed with the verifier's own HS256 secret, so
//! that every claim rule meets arbitrary JSON. Refusals are fine; a panic
//! or a token accepted without `sub`, `aud` and `exp` is not.
#![no_main]

use std::sync::OnceLock;

use exai_auth::{JwtConfig, JwtVerifier, Secret};
use jsonwebtoken::{Algorithm, EncodingKey};

const SECRET: &[u8] = b"fuzzing-secret-fuzzing-secret-32";

fn verifier() -> &'static (JwtVerifier, tokio::runtime::Runtime) {
    static VERIFIER: OnceLock<(JwtVerifier, tokio::runtime::Runtime)> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let mut config = JwtConfig::new();
        config.hs256_secret = Some(Secret::new(SECRET.to_vec()));
        config.cache_capacity = 0;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        (JwtVerifier::new(config).expect("a verifier"), runtime)
    })
}

fn b64(bytes: &[u8]) -> String {
    // base64url without padding, as JWTs are written.
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, &b| (n << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
        }
    }
    out
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (verifier, runtime) = verifier();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode % 2 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        // Header and claims, split where the input says.
        let at = usize::from(mode / 2).min(rest.len());
        let (header, claims) = rest.split_at(at);
        let header = if header.is_empty() {
            b64(br#"{"alg":"HS256","typ":"JWT"}"#)
        } else {
            b64(header)
        };
        let message = format!("{header}.{}", b64(claims));
        let key = EncodingKey::from_secret(SECRET);
        let Ok(signature) = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256)
        else {
            return;
        };
        format!("{message}.{signature}")
    };
    if let Ok(principal) = runtime.block_on(verifier.verify(&token)) {
        assert!(principal.expires_at.is_some(), "a token without exp was accepted");
    }
});
