//! The socket as `rmcp` sees it: a [`Transport`] whose inbound side is the
//! reader's queue and whose outbound side is the writer's, holding batch
//! members for their batch, translating for the legacy protocol, and
//! swallowing the answer to a resumed service's replayed `initialize`.

use std::sync::Arc;

use rmcp::model::{ClientJsonRpcMessage, RequestId, ServerJsonRpcMessage};
use rmcp::service::RoleServer;
use rmcp::transport::Transport;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::Outbound;
use super::batch::{Batches, Held};
use super::in_flight::InFlight;
use crate::framing;
use crate::legacy::Legacy;

/// The socket as `rmcp` sees it.
pub(super) struct WsTransport {
    pub(super) inbound: mpsc::Receiver<Box<ClientJsonRpcMessage>>,
    pub(super) outbound: Outbound,
    /// Set once the connection speaks the legacy protocol: messages are
    /// translated into its frames.
    pub(super) legacy: Arc<std::sync::OnceLock<Arc<Legacy>>>,
    pub(super) in_flight: Arc<InFlight>,
    pub(super) batches: Arc<Batches>,
    /// The replayed `initialize` of a resumed service, whose answer the
    /// client already had.
    pub(super) swallow: Option<RequestId>,
}

#[derive(Debug, thiserror::Error)]
#[error("connection closed")]
pub(super) struct ConnectionClosed;

impl Transport<RoleServer> for WsTransport {
    type Error = ConnectionClosed;

    fn send(
        &mut self,
        item: ServerJsonRpcMessage,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let outbound = self.outbound.clone();
        let legacy = self.legacy.get().cloned();
        let in_flight = self.in_flight.clone();
        let mut answered = framing::answered_id(&item).cloned();
        let held = if self.swallow.is_some() && answered == self.swallow {
            // The replayed `initialize`: the client had its answer.
            self.swallow = None;
            answered = None;
            Held::Yes
        } else {
            self.batches.hold(item)
        };
        async move {
            let text = match (&legacy, held) {
                (_, Held::Yes) => {
                    if let Some(id) = &answered {
                        in_flight.done(id);
                    }
                    return Ok(());
                }
                (_, Held::Complete(answers)) => serde_json::to_string(&answers).ok(),
                (Some(legacy), Held::No(item)) => {
                    legacy.encode(&item).map(|frame| frame.to_string())
                }
                (None, Held::No(item)) => serde_json::to_string(&item).ok(),
            };
            let sent = match text {
                Some(text) => outbound
                    .send(Box::new(Message::Text(text.into())))
                    .await
                    .map_err(|_| ConnectionClosed),
                // Nothing to say in the legacy protocol.
                None if legacy.is_some() => Ok(()),
                None => Err(ConnectionClosed),
            };
            // A request is done once its answer is queued for the socket.
            if let Some(id) = &answered {
                in_flight.done(id);
            }
            sent
        }
    }

    fn receive(&mut self) -> impl Future<Output = Option<ClientJsonRpcMessage>> + Send {
        let next = self.inbound.recv();
        async move { next.await.map(|message| *message) }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.inbound.close();
        Ok(())
    }
}
