//! `exai connect`: the stdio bridge for MCP clients that launch a command
//! (VSCode's `mcp.json`, Claude Desktop, Cursor).
//!
//! Standard input and output carry newline-delimited JSON-RPC, as the MCP
//! stdio transport defines; every message is relayed unchanged to and from
//! the daemon's WebSocket, one message per text frame. The bridge reads only
//! as much of each message as it needs to keep four promises:
//!
//! - **Nothing hangs.** A request in flight when the socket drops is answered
//!   with a JSON-RPC error ([`jsonrpc::CONNECTION_LOST`]); a message that
//!   arrives while the bridge reconnects waits up to `--wait`, and a request
//!   that waited that long is answered with [`jsonrpc::NOT_CONNECTED`].
//! - **The session survives.** The bridge reconnects with jittered
//!   exponential backoff, asks to resume its session (`Mcp-Session-Id`), and
//!   replays the client's `initialize` on the new socket (answering it
//!   itself), so the editor never notices.
//! - **The sign-in stays fresh.** A stored sign-in is refreshed before its
//!   access token expires and handed to the daemon in band (`auth/refresh`).
//! - **Standard output is protocol only.** Logs go to standard error.
//!
//! Close codes that mean "stop" end the bridge with a one-line reason: an
//! administrator killed the session (4410), or the daemon refuses the
//! credential on reconnect (401/403).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::SinkExt as _;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::{CommandError, close, jsonrpc};

mod credential;
mod ledger;
mod link;

pub(crate) use credential::Credential;
use credential::Token;
use ledger::each;
pub(crate) use ledger::{FromDaemon, Ledger};
use link::{
    Established, Failure, Link, LinkEvent, Replay, backoff, establish, join_some, next_event,
    sleep_until_some,
};

/// Refresh a stored sign-in this long before its access token expires.
const REFRESH_BEFORE: Duration = Duration::from_secs(120);
/// After a failed refresh, try again this much later.
const REFRESH_RETRY: Duration = Duration::from_secs(30);
/// Most messages held while the daemon is unreachable.
const MAX_QUEUED: usize = 1024;
/// Reconnect delays: the first attempt is immediate, then about 250 ms,
/// doubling up to about 10 s.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// A connection that lasted at least this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// How long the daemon may take to answer the replayed `initialize`.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(10);
/// After this many "session is connected" refusals in a row (the daemon has
/// not yet noticed the old socket is gone), start a new session instead.
const MAX_CONFLICTS: u32 = 3;

/// How `exai connect` behaves.
pub(crate) struct Options {
    /// The daemon's MCP WebSocket URL.
    pub(crate) url: String,
    /// How long a message waits for the daemon while reconnecting.
    pub(crate) wait: Duration,
}

/// Relays standard input and output to the daemon until standard input ends
/// (`Ok`) or the daemon ends the bridge for good (`Err`, with the reason).
pub(crate) async fn run(options: Options, credential: Credential) -> Result<(), CommandError> {
    let lines = read_stdin();
    let bridge = Bridge {
        url: options.url,
        wait: options.wait,
        credential: Arc::new(credential),
        out: tokio::io::stdout(),
        session: None,
        ledger: Ledger::default(),
        queued: VecDeque::new(),
        attempt: 0,
        conflicts: 0,
        up_since: None,
        link: Link::Down(Instant::now()),
        refresh_at: None,
        refreshing: None,
    };
    bridge.relay(lines).await
}

/// Standard input, one line per message, read on a plain thread so that a
/// blocked read never keeps the process from exiting.
fn read_stdin() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}

struct Bridge {
    url: String,
    wait: Duration,
    credential: Arc<Credential>,
    out: tokio::io::Stdout,
    /// The daemon's session id, for resuming.
    session: Option<String>,
    /// What the relayed messages left to remember.
    ledger: Ledger,
    /// Messages waiting for a connection, with when they arrived.
    queued: VecDeque<(Instant, String)>,
    /// Failed attempts since the last stable connection.
    attempt: u32,
    conflicts: u32,
    up_since: Option<Instant>,
    link: Link,
    /// When the sign-in is due for a refresh.
    refresh_at: Option<Instant>,
    refreshing: Option<JoinHandle<Result<Token, CommandError>>>,
}

impl Bridge {
    async fn relay(mut self, mut lines: mpsc::Receiver<String>) -> Result<(), CommandError> {
        self.connect_now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let refresh_due = self.refresh_at.filter(|_| self.refreshing.is_none());
            tokio::select! {
                line = lines.recv() => match line {
                    Some(line) => self.on_client_line(line).await?,
                    None => {
                        self.close().await;
                        return Ok(());
                    }
                },
                event = next_event(&mut self.link) => self.on_link(event).await?,
                () = sleep_until_some(refresh_due) => self.start_refresh(),
                refreshed = join_some(&mut self.refreshing) => {
                    self.refreshing = None;
                    self.on_refreshed(refreshed).await?;
                }
                _ = tick.tick() => self.expire_queued().await?,
            }
        }
    }

    /// Starts an attempt to connect now.
    fn connect_now(&mut self) {
        let replay = self.ledger.initialize.clone().map(|initialize| Replay {
            initialize,
            initialized: self.ledger.initialized,
        });
        self.link = Link::Connecting(tokio::spawn(establish(
            self.url.clone(),
            self.credential.clone(),
            self.session.clone(),
            replay,
        )));
    }

    /// Waits before the next attempt, longer after each failure.
    fn retry_later(&mut self) {
        let delay = backoff(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        tracing::info!(delay_ms = delay.as_millis() as u64, "reconnecting");
        self.link = Link::Down(Instant::now() + delay);
    }

    async fn on_link(&mut self, event: LinkEvent) -> Result<(), CommandError> {
        match event {
            LinkEvent::Frame(text) => self.on_daemon_frame(text).await,
            LinkEvent::Other => Ok(()),
            LinkEvent::RetryNow => {
                self.connect_now();
                Ok(())
            }
            LinkEvent::Lost(frame, why) => self.lost(frame, why).await,
            LinkEvent::Attempt(Ok(established)) => self.established(established).await,
            LinkEvent::Attempt(Err(failure)) => match failure {
                Failure::Fatal(error) => {
                    self.give_up(&error).await?;
                    Err(error)
                }
                Failure::SessionGone => {
                    tracing::info!("the previous session is gone; opening a new one");
                    self.session = None;
                    self.connect_now();
                    Ok(())
                }
                Failure::Conflict => {
                    self.conflicts += 1;
                    if self.conflicts >= MAX_CONFLICTS {
                        tracing::info!("the previous session is still attached; opening a new one");
                        self.session = None;
                    }
                    self.retry_later();
                    Ok(())
                }
                Failure::Retry(why) => {
                    tracing::warn!("cannot reach the daemon: {why}");
                    self.retry_later();
                    Ok(())
                }
            },
        }
    }

    async fn established(&mut self, established: Established) -> Result<(), CommandError> {
        let Established {
            socket,
            session,
            token,
            resumed,
        } = established;
        match (&session, resumed) {
            (Some(id), true) => tracing::info!(session = %id, "reconnected; session resumed"),
            (Some(id), false) => tracing::info!(session = %id, "connected"),
            (None, _) => tracing::info!("connected"),
        }
        self.session = session.or(self.session.take());
        self.conflicts = 0;
        self.up_since = Some(Instant::now());
        self.link = Link::Up(socket);
        self.schedule_refresh(&token);
        for (_, line) in std::mem::take(&mut self.queued) {
            self.send_to_daemon(line).await?;
        }
        Ok(())
    }

    /// The socket dropped: answer what was in flight, then reconnect (or
    /// stop, when the daemon said so).
    async fn lost(&mut self, frame: Option<CloseFrame>, why: String) -> Result<(), CommandError> {
        if let Some(handle) = self.refreshing.take() {
            handle.abort();
        }
        self.refresh_at = None;
        let stable = self
            .up_since
            .take()
            .is_some_and(|t| t.elapsed() >= STABLE_AFTER);
        if stable {
            self.attempt = 0;
        }
        let code = frame.as_ref().map(|f| u16::from(f.code));
        let reason = frame
            .as_ref()
            .map(|f| f.reason.to_string())
            .filter(|r| !r.is_empty())
            .unwrap_or(why);
        let message = format!(
            "the connection to the exai daemon was lost ({reason}) before the answer arrived; \
             the request may or may not have run"
        );
        for id in self.ledger.unanswered() {
            self.write(&error_response(id, jsonrpc::CONNECTION_LOST, &message))
                .await?;
        }
        let fatal = match code {
            Some(close::SESSION_KILLED) => Some("an administrator ended this session"),
            Some(close::OTHER_USER) => {
                Some("the daemon closed the connection: another user's credential")
            }
            _ => None,
        };
        if let Some(fatal) = fatal {
            let error = CommandError::Ended(fatal.to_owned());
            self.give_up(&error).await?;
            return Err(error);
        }
        tracing::warn!(code, "connection to the daemon lost: {reason}");
        if self.attempt == 0 {
            self.attempt = 1;
            self.connect_now();
        } else {
            self.retry_later();
        }
        Ok(())
    }

    /// A line from the client: relay it, or hold it until connected.
    async fn on_client_line(&mut self, line: String) -> Result<(), CommandError> {
        if line.trim().is_empty() {
            return Ok(());
        }
        if matches!(self.link, Link::Up(_)) {
            return self.send_to_daemon(line).await;
        }
        if self.queued.len() >= MAX_QUEUED {
            return self
                .refuse(&line, "too many messages are waiting for the exai daemon")
                .await;
        }
        self.queued.push_back((Instant::now(), line));
        Ok(())
    }

    /// Sends a client message; if the socket is gone it will be answered by
    /// [`Bridge::lost`] like any other request in flight.
    async fn send_to_daemon(&mut self, line: String) -> Result<(), CommandError> {
        self.ledger.sending(&line);
        let Link::Up(socket) = &mut self.link else {
            self.queued.push_back((Instant::now(), line));
            return Ok(());
        };
        if let Err(error) = socket.sink.send(Message::Text(line.into())).await {
            return self.lost(None, error.to_string()).await;
        }
        Ok(())
    }

    /// A frame from the daemon: to the client, unless it answers one of the
    /// bridge's own requests.
    async fn on_daemon_frame(&mut self, text: String) -> Result<(), CommandError> {
        match self.ledger.received(&text) {
            FromDaemon::NotJson => {
                tracing::warn!("the daemon sent a frame that is not JSON; passed on as is");
                self.write_raw(&text).await
            }
            FromDaemon::Own(answers) => {
                for refused in answers {
                    match refused {
                        Some(error) => {
                            tracing::warn!("the daemon refused the refreshed token: {error}")
                        }
                        None => tracing::info!("token refreshed"),
                    }
                }
                Ok(())
            }
            // One line per message: a frame with a line break is written
            // again without it.
            FromDaemon::ForClient(message) if text.contains('\n') => self.write(&message).await,
            FromDaemon::ForClient(_) => self.write_raw(&text).await,
        }
    }

    /// Answers requests that waited too long for a connection.
    async fn expire_queued(&mut self) -> Result<(), CommandError> {
        let message = format!(
            "the exai daemon has been unreachable for {}; the request was not sent",
            humantime::format_duration(self.wait)
        );
        while let Some((since, _)) = self.queued.front() {
            if since.elapsed() < self.wait {
                break;
            }
            let Some((_, line)) = self.queued.pop_front() else {
                break;
            };
            self.refuse(&line, &message).await?;
        }
        Ok(())
    }

    /// Answers every request in `line` with [`jsonrpc::NOT_CONNECTED`];
    /// notifications cannot be answered, so they are logged.
    async fn refuse(&mut self, line: &str, why: &str) -> Result<(), CommandError> {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            tracing::warn!("dropped a message that is not JSON: {why}");
            return Ok(());
        };
        for message in each(&message) {
            match message
                .get("id")
                .filter(|_| message.get("method").is_some())
            {
                Some(id) => {
                    let answer = error_response(id.clone(), jsonrpc::NOT_CONNECTED, why);
                    self.write(&answer).await?;
                }
                None => {
                    let method = message.get("method").and_then(Value::as_str);
                    tracing::warn!(method, "dropped a notification or response: {why}");
                }
            }
        }
        Ok(())
    }

    /// Stopping for good: whatever waits is answered with `error`.
    async fn give_up(&mut self, error: &CommandError) -> Result<(), CommandError> {
        let why = format!("exai connect stopped: {error}");
        for (_, line) in std::mem::take(&mut self.queued) {
            self.refuse(&line, &why).await?;
        }
        for id in self.ledger.unanswered() {
            let answer = error_response(id, jsonrpc::CONNECTION_LOST, &why);
            self.write(&answer).await?;
        }
        Ok(())
    }

    /// Plans the next refresh: `REFRESH_BEFORE` ahead of expiry, or halfway
    /// there for a token that lives shorter than that.
    fn schedule_refresh(&mut self, token: &Token) {
        self.refresh_at = token.refreshable_until.map(|expires_at| {
            let left = (UNIX_EPOCH + Duration::from_secs(expires_at))
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            let wait = left.saturating_sub(REFRESH_BEFORE).max(left / 2);
            Instant::now() + wait.max(Duration::from_secs(1))
        });
    }

    fn start_refresh(&mut self) {
        self.refresh_at = None;
        let credential = self.credential.clone();
        // A little more than REFRESH_BEFORE, so that a timer firing a moment
        // early still refreshes.
        let margin = REFRESH_BEFORE + Duration::from_secs(5);
        self.refreshing = Some(tokio::spawn(async move { credential.fresh(margin).await }));
    }

    async fn on_refreshed(
        &mut self,
        refreshed: Result<Result<Token, CommandError>, tokio::task::JoinError>,
    ) -> Result<(), CommandError> {
        let token = match refreshed {
            Ok(Ok(token)) => token,
            Ok(Err(error)) => {
                tracing::warn!("could not refresh the sign-in: {error}; trying again shortly");
                self.refresh_at = Some(Instant::now() + REFRESH_RETRY);
                return Ok(());
            }
            Err(_) => return Ok(()),
        };
        self.schedule_refresh(&token);
        let Link::Up(socket) = &mut self.link else {
            return Ok(());
        };
        let request = self
            .ledger
            .own_request("auth/refresh", json!({ "token": token.value }));
        if let Err(error) = socket
            .sink
            .send(Message::Text(request.to_string().into()))
            .await
        {
            return self.lost(None, error.to_string()).await;
        }
        Ok(())
    }

    /// Standard input ended: close the socket politely.
    async fn close(&mut self) {
        if let Link::Up(socket) = &mut self.link {
            let _ = socket.sink.send(Message::Close(None)).await;
        }
    }

    async fn write(&mut self, message: &Value) -> Result<(), CommandError> {
        self.write_raw(&message.to_string()).await
    }

    async fn write_raw(&mut self, line: &str) -> Result<(), CommandError> {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.out
            .write_all(&bytes)
            .await
            .map_err(CommandError::Output)?;
        self.out.flush().await.map_err(CommandError::Output)
    }
}

fn error_response(id: Value, code: i32, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}
