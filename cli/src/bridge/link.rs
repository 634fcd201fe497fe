//! The link to the daemon: its states, one connection attempt (a fresh
//! token, the upgrade resuming the session, the client's handshake
//! replayed), what can happen on it, and the backoff between attempts.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use super::credential::{Credential, Token};
use super::ledger::OWN_ID_PREFIX;
use super::{BACKOFF_BASE, BACKOFF_CAP, REFRESH_BEFORE, REPLAY_TIMEOUT};
use crate::CommandError;
use crate::client::{self, ClientError, Socket};

/// The state of the socket to the daemon.
pub(super) enum Link {
    /// Connected and relaying.
    Up(Duplex),
    /// Waiting until the instant of the next attempt.
    Down(Instant),
    /// An attempt is running.
    Connecting(JoinHandle<Result<Established, Failure>>),
}

/// The two halves of the socket.
pub(super) struct Duplex {
    pub(super) sink: SplitSink<Socket, Message>,
    pub(super) stream: SplitStream<Socket>,
}

/// A connection made, authenticated and (when resumed) re-initialized.
pub(super) struct Established {
    pub(super) socket: Duplex,
    pub(super) session: Option<String>,
    pub(super) token: Token,
    pub(super) resumed: bool,
}

/// Why an attempt to connect failed.
pub(super) enum Failure {
    /// Trying again cannot help (the credential is refused, the URL is
    /// wrong, nobody is signed in).
    Fatal(CommandError),
    /// The session to resume is gone (expired, or the daemon forgot it).
    SessionGone,
    /// The session to resume is still attached to a connection.
    Conflict,
    /// Worth trying again later.
    Retry(String),
}

/// What happened on the link.
pub(super) enum LinkEvent {
    Frame(String),
    Lost(Option<CloseFrame>, String),
    Other,
    RetryNow,
    Attempt(Result<Established, Failure>),
}

/// The client's handshake, replayed on a new connection.
pub(super) struct Replay {
    pub(super) initialize: Value,
    pub(super) initialized: bool,
}

/// One attempt: a fresh token, the upgrade (resuming `session`), and the
/// replayed handshake.
pub(super) async fn establish(
    url: String,
    credential: Arc<Credential>,
    session: Option<String>,
    replay: Option<Replay>,
) -> Result<Established, Failure> {
    let token = credential
        .fresh(REFRESH_BEFORE)
        .await
        .map_err(|error| match error {
            CommandError::Unreachable(why) => Failure::Retry(why),
            other => Failure::Fatal(other),
        })?;
    let (socket, opened) = client::open(&url, &token.value, session.as_deref())
        .await
        .map_err(|error| match error {
            ClientError::Refused { status: 404, .. } if session.is_some() => Failure::SessionGone,
            ClientError::Refused { status: 409, .. } => Failure::Conflict,
            ClientError::Refused {
                status: status @ (401 | 403),
                reason,
            } => Failure::Fatal(CommandError::SignIn(format!(
                "the daemon refused the credential (HTTP {status}): {reason}"
            ))),
            ClientError::InvalidUrl(_) | ClientError::InvalidToken => {
                Failure::Fatal(CommandError::Client(error))
            }
            other => Failure::Retry(crate::error_chain(&other)),
        })?;
    let resumed = session.is_some() && opened == session;
    let (sink, stream) = socket.split();
    let mut socket = Duplex { sink, stream };
    if let Some(replay) = replay {
        tokio::time::timeout(REPLAY_TIMEOUT, replay_handshake(&mut socket, replay))
            .await
            .map_err(|_| Failure::Retry("the daemon did not answer initialize".into()))??;
    }
    Ok(Established {
        socket,
        session: opened,
        token,
        resumed,
    })
}

/// Sends the client's `initialize` under the bridge's own id, waits for the
/// answer (which the client already had), then `notifications/initialized`.
pub(super) async fn replay_handshake(socket: &mut Duplex, replay: Replay) -> Result<(), Failure> {
    let id = format!("{OWN_ID_PREFIX}initialize");
    let mut initialize = replay.initialize;
    initialize["id"] = Value::String(id.clone());
    let send_failed = |e: tokio_tungstenite::tungstenite::Error| Failure::Retry(e.to_string());
    socket
        .sink
        .send(Message::Text(initialize.to_string().into()))
        .await
        .map_err(send_failed)?;
    loop {
        let frame = socket.stream.next().await;
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | None => {
                return Err(Failure::Retry("closed during initialize".into()));
            }
            Some(Err(error)) => return Err(Failure::Retry(error.to_string())),
            Some(Ok(_)) => continue,
        };
        let Ok(answer) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if answer.get("id").and_then(Value::as_str) != Some(id.as_str()) {
            continue;
        }
        if let Some(error) = answer.pointer("/error/message").and_then(Value::as_str) {
            return Err(Failure::Retry(format!("initialize refused: {error}")));
        }
        break;
    }
    if replay.initialized {
        let notification = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        socket
            .sink
            .send(Message::Text(notification.to_string().into()))
            .await
            .map_err(send_failed)?;
    }
    Ok(())
}

pub(super) async fn next_event(link: &mut Link) -> LinkEvent {
    match link {
        Link::Up(socket) => match socket.stream.next().await {
            Some(Ok(Message::Text(text))) => LinkEvent::Frame(text.to_string()),
            Some(Ok(Message::Close(frame))) => LinkEvent::Lost(frame, "closed".into()),
            Some(Ok(_)) => LinkEvent::Other,
            Some(Err(error)) => LinkEvent::Lost(None, error.to_string()),
            None => LinkEvent::Lost(None, "closed".into()),
        },
        Link::Down(at) => {
            tokio::time::sleep_until(*at).await;
            LinkEvent::RetryNow
        }
        Link::Connecting(handle) => match handle.await {
            Ok(result) => LinkEvent::Attempt(result),
            Err(error) => LinkEvent::Attempt(Err(Failure::Retry(error.to_string()))),
        },
    }
}

pub(super) async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

pub(super) async fn join_some<T>(
    handle: &mut Option<JoinHandle<T>>,
) -> Result<T, tokio::task::JoinError> {
    match handle {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

/// Jittered exponential backoff: attempt 0 is immediate; then a delay drawn
/// from the upper half of `BACKOFF_BASE × 2^(attempt-1)`, capped.
pub(super) fn backoff(attempt: u32) -> Duration {
    if attempt == 0 {
        return Duration::ZERO;
    }
    let ceiling = BACKOFF_BASE
        .saturating_mul(1 << (attempt - 1).min(16))
        .min(BACKOFF_CAP);
    let half = ceiling / 2;
    half + half.mul_f64(rand::random_range(0.0..=1.0))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        assert_eq!(backoff(0), Duration::ZERO);
        for attempt in 1..40 {
            let delay = backoff(attempt);
            let ceiling = BACKOFF_BASE
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(BACKOFF_CAP);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{attempt}: {delay:?}"
            );
        }
        let draws: HashSet<Duration> = (0..20).map(|_| backoff(5)).collect();
        assert!(draws.len() > 1, "the delay is jittered");
    }
}
