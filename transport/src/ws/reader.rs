//! The reading half of a WebSocket connection: one select loop over the
//! socket and the connection's timers, which classifies each text frame
//! ([`classify`]) and then dispatches it.
//!
//! Timers: the credential's expiry (4401), the keep-alive ping and its
//! timeout (1011), and the check whether the MCP service has gone idle.
//! Each is made once per connection and reset, never re-armed per frame.

use std::sync::Arc;
use std::time::Duration;

use exai_auth::{Access, AuthError, Authenticator, Credential, UserId};
use exai_sessions::SessionId;
use futures::StreamExt as _;
use futures::stream::SplitStream;
use rmcp::model::ServerJsonRpcMessage;
use rmcp::model::{ClientJsonRpcMessage, ClientRequest, ErrorCode, ErrorData, RequestId};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::service::{Mcp, starts_lifecycle};
use super::{End, read_error};
use crate::deadline;
use crate::error::jsonrpc;
use crate::framing::{self, Decoded};
use crate::legacy::{self, Hello, Legacy};
use crate::lifecycle::LiveSession;
use crate::websocket::Socket;

/// What a text frame is, given what the connection has seen so far.
#[derive(Debug)]
pub(super) enum Frame<'a> {
    /// The legacy protocol's `hello`, as a connection's first frame.
    Hello(Hello),
    /// A frame of a connection that speaks the legacy protocol.
    Legacy(&'a str),
    /// A JSON-RPC batch, in a 2025-03-26 lifecycle.
    Batch(&'a str),
    /// Not a message: answered with this JSON-RPC error.
    Reply(Box<ServerJsonRpcMessage>),
    /// Not a message, and nothing to answer (a malformed notification).
    Drop(&'static str),
    /// `auth/refresh`: the edge's own method, never the MCP server's.
    Refresh(Box<ClientJsonRpcMessage>),
    /// An MCP message for the service.
    Mcp(Box<ClientJsonRpcMessage>),
}

/// What the classifier needs to know of the connection.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Seen<'a> {
    /// This is the connection's first text frame, which decides the
    /// protocol.
    pub(super) first: bool,
    /// The connection speaks the legacy protocol.
    pub(super) legacy: bool,
    /// The protocol version the client asked for in `initialize`.
    pub(super) protocol: Option<&'a str>,
}

/// Classifies one text frame.
pub(super) fn classify<'a>(text: &'a str, seen: Seen<'_>) -> Frame<'a> {
    if seen.first
        && let Some(hello) = Hello::parse(text)
    {
        return Frame::Hello(hello);
    }
    if seen.legacy {
        return Frame::Legacy(text);
    }
    if seen.protocol == Some(framing::BATCH_VERSION) && text.trim_start().starts_with('[') {
        return Frame::Batch(text);
    }
    match framing::decode(text) {
        Decoded::Message(message) if framing::is_refresh(&message) => match &*message {
            ClientJsonRpcMessage::Request(_) => Frame::Refresh(message),
            // A refresh sent as a notification has no answer to carry, and
            // its token must not reach the MCP server (which logs it).
            _ => Frame::Drop("auth/refresh sent as a notification"),
        },
        Decoded::Message(message) => Frame::Mcp(message),
        Decoded::Reply(reply) => Frame::Reply(reply),
        Decoded::Drop(why) => Frame::Drop(why),
    }
}

/// Reads frames until the connection ends, and says why it ended.
pub(super) struct Reader<S> {
    pub(super) live: LiveSession,
    pub(super) mcp: Mcp<S>,
    pub(super) stream: SplitStream<Socket>,
    /// For in-band `auth/refresh` and a `hello` with a credential.
    pub(super) auth: Arc<Authenticator>,
    /// Who opened the connection.
    pub(super) user: UserId,
    pub(super) ping_interval: Duration,
    pub(super) ping_timeout: Duration,
    pub(super) service_idle: Duration,
    /// When the credential that admitted the connection expires.
    pub(super) deadline: Option<Instant>,
    /// The session's id, for the legacy protocol's `hello_ack`.
    pub(super) session_id: SessionId,
    /// The protocol version the client asked for in `initialize`.
    pub(super) protocol: Option<String>,
    /// Whether the first text frame has been read.
    pub(super) decided: bool,
    /// Whether the client started a lifecycle (initialize, or a request
    /// carrying its protocol version). Until then rmcp accepts only
    /// requests; a stray notification would end the session, so it is
    /// dropped here instead.
    pub(super) lifecycle_started: bool,
    /// While the handler keeps refusing this connection's requests, the
    /// next frame is read only after a pause (see [`crate::Pace`]).
    pub(super) pace: crate::Pace,
    /// The most messages one batch may hold.
    pub(super) max_batch_members: usize,
}

/// After a frame: keep reading, or end the connection.
type Step = Result<(), End>;

impl<S: rmcp::ServerHandler + Clone> Reader<S> {
    /// The service and the socket's reading half, once reading is over;
    /// the rest is dropped.
    pub(super) fn into_parts(self) -> (Mcp<S>, SplitStream<Socket>) {
        (self.mcp, self.stream)
    }

    /// Reads until the connection ends. `hello_received`: the legacy
    /// protocol's `hello` was already read and accepted.
    pub(super) async fn serve(&mut self, hello_received: bool) -> End {
        if hello_received {
            self.decided = true;
            if let Err(end) = Box::pin(self.engage_legacy()).await {
                return end;
            }
        }
        self.read().await
    }

    async fn read(&mut self) -> End {
        let expiry = tokio::time::sleep_until(self.deadline.unwrap_or_else(Instant::now));
        // Fires for the next ping or, once a ping is out, at its timeout.
        let keepalive = tokio::time::sleep(self.ping_interval);
        let idle = tokio::time::sleep(self.service_idle);
        tokio::pin!(expiry, keepalive, idle);
        let mut ping_sent: Option<Instant> = None;
        loop {
            let running = self.mcp.is_running();
            let paused = self.pace.paused_until();
            let frame = tokio::select! {
                frame = self.stream.next(), if paused.is_none() => frame,
                // Refused requests: the next frame waits in the socket.
                () = tokio::time::sleep_until(paused.unwrap_or_else(Instant::now)), if paused.is_some() => continue,
                () = self.mcp.ended(), if running => return End::ServiceEnded,
                () = &mut idle, if running => {
                    let next = self.mcp.suspend_if_idle(self.service_idle);
                    idle.as_mut().reset(next);
                    continue;
                }
                () = &mut expiry, if self.deadline.is_some() => return End::TokenExpired,
                () = &mut keepalive => {
                    if ping_sent.is_some() {
                        return End::PingTimeout;
                    }
                    let now = Instant::now();
                    ping_sent = Some(now);
                    // A full queue means the client is not reading; the
                    // pong will not come and the timeout ends it.
                    let _ = self
                        .mcp
                        .outbound
                        .try_send(Box::new(Message::Ping(Default::default())));
                    keepalive.as_mut().reset(now + self.ping_timeout);
                    continue;
                }
            };
            let text = match frame {
                None | Some(Ok(Message::Close(_))) => return End::ClientClosed,
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Binary(_))) => return End::BinaryFrame,
                Some(Ok(Message::Pong(_))) => {
                    if let Some(sent) = ping_sent.take() {
                        keepalive.as_mut().reset(sent + self.ping_interval);
                    }
                    continue;
                }
                // Pings are answered by tungstenite; raw frames are only
                // ever written.
                Some(Ok(Message::Ping(_) | Message::Frame(_))) => continue,
                Some(Err(error)) => return read_error(error),
            };
            let deadline = self.deadline;
            if let Err(end) = self.dispatch(text.as_str()).await {
                return end;
            }
            // An `auth/refresh` may have moved the credential's expiry.
            if self.deadline != deadline
                && let Some(at) = self.deadline
            {
                expiry.as_mut().reset(at);
            }
        }
    }

    /// Classifies a text frame and acts on it.
    async fn dispatch(&mut self, text: &str) -> Step {
        let seen = Seen {
            first: !std::mem::replace(&mut self.decided, true),
            legacy: self.mcp.legacy.get().is_some(),
            protocol: self.protocol.as_deref(),
        };
        match classify(text, seen) {
            Frame::Hello(hello) => {
                Box::pin(self.check_hello(hello)).await?;
                Box::pin(self.engage_legacy()).await
            }
            Frame::Legacy(text) => self.legacy(text).await,
            Frame::Batch(text) => Box::pin(self.batch(text)).await,
            Frame::Reply(reply) => self.send(&reply).await,
            Frame::Drop(why) => {
                tracing::debug!(why, "dropped a frame");
                Ok(())
            }
            Frame::Refresh(message) => {
                let ClientJsonRpcMessage::Request(request) = *message else {
                    return Ok(());
                };
                let ClientRequest::CustomRequest(custom) = &request.request else {
                    return Ok(());
                };
                Box::pin(self.refresh(request.id.clone(), custom.params.as_ref())).await
            }
            Frame::Mcp(message) => self.message(message).await,
        }
    }

    /// An MCP message for the service.
    async fn message(&mut self, message: Box<ClientJsonRpcMessage>) -> Step {
        if let ClientJsonRpcMessage::Request(request) = &*message {
            self.live.record_activity();
            if let ClientRequest::InitializeRequest(initialize) = &request.request {
                self.protocol = Some(initialize.params.protocol_version.as_str().to_owned());
                self.live.describe(&initialize.params.client_info);
            }
        }
        if !self.lifecycle_started {
            match &*message {
                ClientJsonRpcMessage::Request(request) => {
                    self.lifecycle_started = starts_lifecycle(&request.request);
                }
                _ => {
                    tracing::debug!("dropped a notification sent before initialize");
                    return Ok(());
                }
            }
        }
        self.pass_on(message).await
    }

    /// Passes `message` on to the service; a cancellation first settles the
    /// batch the cancelled request was part of.
    async fn pass_on(&mut self, message: Box<ClientJsonRpcMessage>) -> Step {
        if let Some(id) = framing::cancelled_id(&message)
            && let Some(done) = self.mcp.batches.cancelled(id)
        {
            self.send(&done).await?;
        }
        self.mcp.send(message).await.map_err(|_| End::ServiceEnded)
    }

    /// A frame in the legacy protocol.
    async fn legacy(&mut self, text: &str) -> Step {
        let Some(legacy) = self.mcp.legacy.get().cloned() else {
            return Ok(());
        };
        let step = legacy.on_frame(text);
        if step.active {
            self.live.record_activity();
        }
        for reply in step.replies {
            self.send(&reply).await?;
        }
        for message in step.to_server.into_iter().map(Box::new) {
            self.mcp
                .send(message)
                .await
                .map_err(|_| End::ServiceEnded)?;
        }
        Ok(())
    }

    /// A `hello` on a connection that authenticated with headers: a
    /// credential in it must be valid and name the same user.
    async fn check_hello(&self, hello: Hello) -> Step {
        let Some(credential) = hello.credential else {
            return Ok(());
        };
        match self
            .auth
            .authenticate(Some(Credential::Bearer(&credential)), Access::User)
            .await
        {
            Ok(p) if p.user_id == self.user => Ok(()),
            _ => {
                let _ = self.send(&legacy::hello_refused("unauthorized")).await;
                Err(End::LegacyUnauthorized)
            }
        }
    }

    /// Switches to the legacy protocol: the MCP handshake the client never
    /// sends, then `hello_ack`.
    async fn engage_legacy(&mut self) -> Step {
        let _ = self.mcp.legacy.set(Arc::new(Legacy::default()));
        self.mcp.speaks_legacy();
        for message in Legacy::handshake() {
            self.mcp
                .send(Box::new(message))
                .await
                .map_err(|_| End::ServiceEnded)?;
        }
        self.send(&legacy::hello_ack(self.session_id.as_str()))
            .await
    }

    /// `auth/refresh {"token": "…"}`: a fresh credential for the same user
    /// moves the connection's expiry; another user's ends the connection.
    async fn refresh(&mut self, id: RequestId, params: Option<&serde_json::Value>) -> Step {
        let token = params
            .and_then(|p| p.get("token"))
            .and_then(serde_json::Value::as_str);
        let Some(token) = token else {
            let error = ErrorData::invalid_params("auth/refresh needs a string 'token'", None);
            return self
                .send(&ServerJsonRpcMessage::error(error, Some(id)))
                .await;
        };
        let result = self
            .auth
            .authenticate(Some(Credential::Bearer(token)), Access::User)
            .await;
        let reply = match result {
            Ok(fresh) if fresh.user_id == self.user => {
                self.mcp.metrics.credential_refresh("ok");
                self.deadline = deadline(fresh.expires_at);
                tracing::info!(expires_at = ?fresh.expires_at, "credential refreshed in band");
                serde_json::json!({
                    "jsonrpc": "2.0",
                    "id": id,
                    "result": { "expires_at": fresh.expires_at },
                })
            }
            Ok(_) => {
                self.mcp.metrics.credential_refresh("other_user");
                tracing::warn!("auth/refresh offered another user's token; closing");
                let error = auth_error(&AuthError::OtherUser);
                let _ = self
                    .send(&ServerJsonRpcMessage::error(error, Some(id)))
                    .await;
                return Err(End::OtherUser);
            }
            Err(refused) => {
                self.mcp.metrics.credential_refresh("refused");
                let error = ServerJsonRpcMessage::error(auth_error(&refused), Some(id));
                match serde_json::to_value(error) {
                    Ok(value) => value,
                    Err(_) => return Ok(()),
                }
            }
        };
        self.send(&reply).await
    }

    /// A batch (2025-03-26): its valid members go to the service, invalid
    /// ones are answered in the batch's reply; the reply is one array, sent
    /// when the last request is answered.
    async fn batch(&mut self, text: &str) -> Step {
        let batch = match framing::split_batch(
            text,
            &["initialize", framing::REFRESH],
            self.max_batch_members,
        ) {
            Ok(batch) => batch,
            Err(error) => return self.send(&error).await,
        };
        let ids = batch
            .messages
            .iter()
            .filter_map(|message| match message {
                ClientJsonRpcMessage::Request(request) => Some(request.id.clone()),
                _ => None,
            })
            .collect();
        if let Some(now) = self.mcp.batches.open(ids, batch.answers) {
            self.send(&now).await?;
        }
        for message in batch.messages {
            if matches!(message, ClientJsonRpcMessage::Request(_)) {
                self.live.record_activity();
            }
            self.pass_on(Box::new(message)).await?;
        }
        Ok(())
    }

    /// Queues `message` for the client; the connection ends when the
    /// writer is gone.
    async fn send(&self, message: &impl serde::Serialize) -> Step {
        let Ok(text) = serde_json::to_string(message) else {
            return Ok(());
        };
        self.mcp
            .outbound
            .send(Box::new(Message::Text(text.into())))
            .await
            .map_err(|_| End::SocketError)
    }
}

fn auth_error(error: &AuthError) -> ErrorData {
    ErrorData::new(
        ErrorCode(jsonrpc::INVALID_CREDENTIAL),
        format!("credential refused: {}", error.reason()),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    const HELLO: &str = r#"{"op":"hello","token":"t"}"#;

    fn kind(frame: &Frame<'_>) -> &'static str {
        match frame {
            Frame::Hello(_) => "hello",
            Frame::Legacy(_) => "legacy",
            Frame::Batch(_) => "batch",
            Frame::Reply(_) => "reply",
            Frame::Drop(_) => "drop",
            Frame::Refresh(_) => "refresh",
            Frame::Mcp(_) => "mcp",
        }
    }

    fn first() -> Seen<'static> {
        Seen {
            first: true,
            ..Seen::default()
        }
    }

    #[test]
    fn only_a_first_frame_can_be_a_hello() {
        assert_eq!(kind(&classify(HELLO, first())), "hello");
        assert_ne!(kind(&classify(HELLO, Seen::default())), "hello");
        assert_eq!(kind(&classify(INITIALIZE, first())), "mcp");
    }

    #[test]
    fn a_legacy_connection_hands_every_frame_to_the_translator() {
        let legacy = Seen {
            legacy: true,
            ..Seen::default()
        };
        for text in [INITIALIZE, "[1,2]", "garbage", HELLO] {
            assert_eq!(kind(&classify(text, legacy)), "legacy", "{text}");
        }
    }

    #[test]
    fn arrays_are_batches_only_in_a_2025_03_26_lifecycle() {
        let batch = r#" [{"jsonrpc":"2.0","id":1,"method":"ping"}]"#;
        let v2025 = Seen {
            protocol: Some(framing::BATCH_VERSION),
            ..Seen::default()
        };
        assert_eq!(kind(&classify(batch, v2025)), "batch");
        let later = Seen {
            protocol: Some("2025-06-18"),
            ..Seen::default()
        };
        assert_eq!(
            kind(&classify(batch, later)),
            "reply",
            "refused with an error"
        );
        assert_eq!(kind(&classify(batch, Seen::default())), "reply");
    }

    #[test]
    fn auth_refresh_is_the_edges_own_in_every_shape_of_request() {
        let refresh =
            r#"{"jsonrpc":"2.0","id":"r","method":"auth/refresh","params":{"token":"x"}}"#;
        assert_eq!(kind(&classify(refresh, Seen::default())), "refresh");
        assert_eq!(kind(&classify(refresh, first())), "refresh");
        let call = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
        assert_eq!(kind(&classify(call, Seen::default())), "mcp");
        let note = r#"{"jsonrpc":"2.0","method":"auth/refresh","params":{"token":"x"}}"#;
        assert_eq!(
            kind(&classify(note, Seen::default())),
            "drop",
            "a refresh notification never reaches the MCP server"
        );
    }

    #[test]
    fn what_is_not_a_message_is_answered_or_dropped() {
        assert_eq!(kind(&classify("not json", Seen::default())), "reply");
        assert_eq!(
            kind(&classify(r#"{"jsonrpc":"2.0","id":1}"#, Seen::default())),
            "reply"
        );
        assert_eq!(
            kind(&classify(
                r#"{"jsonrpc":"2.0","method":"tools/call","params":7}"#,
                Seen::default()
            )),
            "drop"
        );
    }
}
