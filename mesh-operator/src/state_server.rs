//! The gRPC state stream (`mesh.v1.StateStream/Subscribe`): one stream per agent.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
};

use mesh_common::{
    api::{AgentMessage, StateUpdate, agent_message, state_stream_server::StateStream},
    model::update_parts,
};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use crate::{model_store::ModelStore, node_status::AgentEvent};

#[derive(Clone)]
pub struct StateServer {
    pub store: Arc<Mutex<ModelStore>>,
    /// Serve a stream only to the node the client certificate names (mutual TLS).
    pub require_node_cert: bool,
    /// Where agent events go to be reported on `MeshNode` status (cluster mode).
    pub events: Option<tokio::sync::mpsc::UnboundedSender<AgentEvent>>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<StateUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl StateStream for StateServer {
    type SubscribeStream = UpdateStream;

    async fn subscribe(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<UpdateStream>, Status> {
        let certified_node = if self.require_node_cert {
            let certs = request.peer_certs().ok_or_else(|| {
                Status::unauthenticated(
                    "a client certificate is required: give the agent its node bundle (MESH_TLS_DIR)",
                )
            })?;
            let node = certs.first().and_then(|cert| crate::pki::node_of(cert.as_ref()));
            Some(node.ok_or_else(|| {
                Status::unauthenticated("the client certificate is not a node certificate of this CA")
            })?)
        } else {
            None
        };
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(AgentMessage { kind: Some(agent_message::Kind::Hello(hello)) }) => hello,
            _ => return Err(Status::invalid_argument("the first message of a stream must be Hello")),
        };
        if hello.node.is_empty() {
            return Err(Status::invalid_argument("Hello.node is empty: set the agent's node name"));
        }
        if let Some(certified) = certified_node
            && certified != hello.node
        {
            tracing::warn!(certified, claimed = hello.node, "refused a stream: the certificate names another node");
            return Err(Status::permission_denied(format!(
                "the client certificate is node {certified:?}'s but Hello names {:?}: each agent needs its own node's bundle",
                hello.node
            )));
        }
        let node = hello.node.clone();
        let subscription = self.store.lock().expect("store lock").subscribe(&hello.epoch, hello.version);
        tracing::info!(
            node,
            from_epoch = hello.epoch,
            from_version = hello.version,
            sending = subscription.initial.len(),
            full = subscription.initial.first().is_some_and(|u| u.full),
            "agent connected"
        );
        let events = self.events.clone();
        let metrics = self.metrics.clone();
        metrics.connected(true);
        let epoch = self.store.lock().expect("store lock").epoch().to_owned();
        emit(&events, AgentEvent::Connected { node: node.clone(), epoch });

        let (sender, receiver) = mpsc::channel(64);
        let store = self.store.clone();
        tokio::spawn(async move {
            let mut live = subscription.live;
            for update in subscription.initial {
                for part in update_parts(&update) {
                    if sender.send(Ok(part)).await.is_err() {
                        return;
                    }
                }
            }
            'stream: loop {
                tokio::select! {
                    update = live.recv() => {
                        let parts = match update {
                            Ok(update) => update_parts(&update),
                            // Too far behind: start it over from a snapshot.
                            Err(RecvError::Lagged(_)) => update_parts(&store.lock().expect("store lock").snapshot()),
                            Err(RecvError::Closed) => break,
                        };
                        for part in parts {
                            if sender.send(Ok(part)).await.is_err() {
                                break 'stream;
                            }
                        }
                    }
                    message = inbound.message() => match message {
                        Ok(Some(message)) => {
                            if let Some(event) = record(&node, message) {
                                match &event {
                                    AgentEvent::Acked { version, .. } => metrics.reply(&node, Some(*version)),
                                    AgentEvent::Nacked { .. } => metrics.reply(&node, None),
                                    _ => {}
                                }
                                emit(&events, event);
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::info!(node, "agent stream ended: {status}");
                            break;
                        }
                    },
                }
            }
            metrics.connected(false);
            emit(&events, AgentEvent::Disconnected { node: node.clone() });
            tracing::info!(node, "agent disconnected");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

fn emit(events: &Option<tokio::sync::mpsc::UnboundedSender<AgentEvent>>, event: AgentEvent) {
    if let Some(events) = events {
        let _ = events.send(event);
    }
}

/// Logs an ACK or NACK; returns the event to report.
fn record(node: &str, message: AgentMessage) -> Option<AgentEvent> {
    match message.kind {
        Some(agent_message::Kind::Ack(ack)) => {
            tracing::debug!(node, version = ack.version, "ACK");
            Some(AgentEvent::Acked { node: node.to_owned(), version: ack.version })
        }
        Some(agent_message::Kind::Nack(nack)) => {
            let rejected: Vec<String> = nack.rejected.iter().map(ToString::to_string).collect();
            tracing::warn!(node, version = nack.version, rejected = ?rejected, "NACK: {}", nack.error);
            Some(AgentEvent::Nacked { node: node.to_owned(), version: nack.version, error: nack.error })
        }
        _ => {
            tracing::warn!(node, "unexpected message after Hello; ignored");
            None
        }
    }
}
