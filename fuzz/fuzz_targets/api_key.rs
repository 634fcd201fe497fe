//! API keys (`exai_<id>_<secret>`), as `Authorization: Bearer` and as
//! `X-API-Key`, authenticated against a store holding one known key (the
//! corpus starts from it): parsing, lookup and the constant-time compare.
//! Only that key, exactly, may authenticate.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use exai_auth::{
    Access, ApiKeyRecord, ApiKeyStore, Authenticator, Credential, JwtConfig, JwtVerifier, UserId,
};
use sha2::Digest as _;

const KEY_ID: &str = "0123456789abcdef";
const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn authenticator() -> &'static (Authenticator, tokio::runtime::Runtime) {
    static AUTH: OnceLock<(Authenticator, tokio::runtime::Runtime)> = OnceLock::new();
    AUTH.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let store = Arc::new(exai_sessions::MemoryStore::new());
        let hash: [u8; 32] = sha2::Sha256::digest(SECRET.as_bytes()).into();
        let record = ApiKeyRecord::new(
            KEY_ID.to_owned(),
            UserId::from_email("fuzz@example.com"),
            hash,
            SystemTime::now(),
        );
        runtime
            .block_on(store.insert_api_key(record))
            .expect("the key stored");
        let jwt = JwtVerifier::new(JwtConfig::new()).expect("a verifier");
        (Authenticator::multi_user(jwt, Some(store)), runtime)
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (auth, runtime) = authenticator();
    let Some((&how, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let credential = if how % 2 == 0 {
        Credential::Bearer(text)
    } else {
        Credential::ApiKey(text)
    };
    if runtime
        .block_on(auth.authenticate(Some(credential), Access::User))
        .is_ok()
    {
        assert_eq!(text, format!("exai_{KEY_ID}_{SECRET}"), "another key authenticated");
    }
});
