//! An HTTP request to `/mcp`: header lines, an empty line, the body; what
//! the edge reads of them before and after authentication.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    exai_transport::fuzzing::http_request(data);
});
