//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, off by
//! default and never part of the API): what a client can send to the edge,
//! parsed exactly as a connection parses it, with nothing but the input.

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::framing::{self, Decoded};
use crate::legacy::{Hello, Legacy};
use crate::{EdgeConfig, admission};

/// A WebSocket text frame, as every reading of one goes: the legacy
/// `hello`, MCP framing (a message, the precise error, or a dropped
/// notification), a 2025-03-26 batch, and a legacy connection's op.
pub fn ws_frame(text: &str) {
    let _ = Hello::parse(text);
    match framing::decode(text) {
        Decoded::Message(message) => {
            let _ = framing::is_refresh(&message);
            let _ = framing::cancelled_id(&message);
        }
        Decoded::Reply(reply) => {
            let _ = serde_json::to_string(&reply);
        }
        Decoded::Drop(_) => {}
    }
    if let Ok(batch) = framing::split_batch(text, &["initialize"], 64) {
        assert!(batch.messages.len() + batch.answers.len() <= 64);
    }
    let legacy = Legacy::default();
    let step = legacy.on_frame(text);
    for message in &step.to_server {
        let _ = serde_json::to_string(message);
    }
}

/// An HTTP request to `/mcp`: `data` is header lines (`name: value`), an
/// empty line, then the body. The headers go through what admission reads
/// of them before any credential is checked (the credential itself, the
/// `Origin` and `Host` checks), the body through the framing of a POST.
pub fn http_request(data: &[u8]) {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let _ = admission::credential(&headers);
    let config = EdgeConfig {
        allowed_origins: vec!["https://app.example".into()],
        allowed_hosts: Some(vec!["localhost".into(), "127.0.0.1".into()]),
        ..EdgeConfig::default()
    };
    let _ = admission::check_origin_and_host(&config, &headers);
    let text = std::str::from_utf8(body).unwrap_or("\u{fffd}");
    let _ = framing::decode(text);
    let _ = framing::split_batch(text, &["initialize"], 64);
}
