//! `exai connect`'s stdio bridge: lines from the editor and frames from
//! the daemon, interleaved as the input says, through the bridge's
//! bookkeeping of requests in flight and of its own requests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    exai_cli::fuzzing::bridge_lines(data);
});
