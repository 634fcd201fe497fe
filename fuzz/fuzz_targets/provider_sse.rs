//! A model provider's streamed answer (server-sent events of deltas), cut
//! into reads where the input says, as a network delivers it: parsed by
//! the provider exactly as from a socket. Whatever the bytes, an answer or
//! a typed error, never a panic; an answer only after `data: [DONE]`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    exai_providers::fuzzing::sse(data);
});
