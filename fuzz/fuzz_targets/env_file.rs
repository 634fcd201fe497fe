//! The daemon's env file (`--env-file`, `.env`): its lines, then every
//! setting they give, checked as `exai-daemon --check-config` checks
//! them. Errors are fine (each names its setting); a panic is not.
#![no_main]

use exai_daemon::config::{DaemonArgs, env_file};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(values) = env_file::parse(data) else {
        return;
    };
    if let Ok(args) = exai_daemon::config::parse::<DaemonArgs>(["exai-daemon"], &values) {
        let _ = args.into_config(&values);
    }
});
