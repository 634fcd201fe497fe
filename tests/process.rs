//! `exai-daemon` as a process of its own, for what an in-process daemon
//! cannot show: a daemon killed with SIGKILL or paused with SIGSTOP, its
//! own memory, its own log.

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::TEST_SECRET;

/// An `exai-daemon` process on `127.0.0.1:0`, with the harness's JWT
/// secret, killed on drop. (The binary's path comes from its own package's
/// tests, `CARGO_BIN_EXE_exai-daemon`, or from `cargo xtask bench`.)
pub struct DaemonProcess {
    child: tokio::process::Child,
    /// Its process id.
    pub pid: u32,
    /// Its `ws://…/mcp` URL.
    pub url: String,
    /// Its `/metrics` URL.
    pub metrics: String,
    /// Everything it logged.
    log: Arc<Mutex<String>>,
    _data: tempfile::TempDir,
}

impl DaemonProcess {
    /// Starts `binary` with `env` (over the harness's defaults: the JWT
    /// secret, text logs at `warn,exai_daemon=info`), once it has said
    /// where it listens.
    pub async fn start(binary: &Path, env: &[(&str, &str)]) -> DaemonProcess {
        let data = tempfile::tempdir().unwrap();
        let mut child = tokio::process::Command::new(binary)
            .args(["--port", "0", "--data-dir"])
            .arg(data.path())
            .env(
                "SUPABASE_JWT_SECRET",
                std::str::from_utf8(TEST_SECRET).unwrap(),
            )
            .env("EXAI_LOG_FORMAT", "text")
            .env("RUST_LOG", "warn,exai_daemon=info")
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
            child.stderr.take().unwrap(),
        ));
        let log = Arc::new(Mutex::new(String::new()));
        let url = loop {
            let line =
                lines.next_line().await.unwrap().unwrap_or_else(|| {
                    panic!("the daemon did not start:\n{}", log.lock().unwrap())
                });
            if let Some(rest) = line.split("url=").nth(1) {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
            let mut log = log.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        };
        let kept = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut log = kept.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let metrics = format!(
            "{}/metrics",
            url.replacen("ws://", "http://", 1).trim_end_matches("/mcp")
        );
        DaemonProcess {
            child,
            pid,
            url,
            metrics,
            log,
            _data: data,
        }
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends it `signal` (`KILL`, `STOP`, `CONT`).
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill -{signal} {}", self.pid);
    }

    /// Kills it (SIGKILL: no close is recorded, no goodbye sent) and waits
    /// until it is gone.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
