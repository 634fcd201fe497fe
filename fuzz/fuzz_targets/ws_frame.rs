//! A WebSocket text frame from a client: MCP framing, batches, the legacy
//! `hello` and ops. Must never panic, whatever the bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        exai_transport::fuzzing::ws_frame(text);
    }
});
