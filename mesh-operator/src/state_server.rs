//! The gRPC state stream (`mesh.v1.StateStream/Subscribe`): one stream per agent.

use std::{
    collections::BTreeMap,
    pin::Pin,
    sync::{Arc, Mutex},
};

use mesh_common::api::{AgentMessage, StateUpdate, agent_message, state_stream_server::StateStream};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use crate::model_store::ModelStore;

/// What the operator knows of each agent, from its stream.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AgentStatus {
    pub connected: bool,
    pub acked_version: u64,
    /// The last NACK: version and error.
    pub last_nack: Option<(u64, String)>,
}

#[derive(Clone)]
pub struct StateServer {
    pub store: Arc<Mutex<ModelStore>>,
    pub agents: Arc<Mutex<BTreeMap<String, AgentStatus>>>,
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<StateUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl StateStream for StateServer {
    type SubscribeStream = UpdateStream;

    async fn subscribe(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<UpdateStream>, Status> {
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(AgentMessage { kind: Some(agent_message::Kind::Hello(hello)) }) => hello,
            _ => return Err(Status::invalid_argument("the first message of a stream must be Hello")),
        };
        if hello.node.is_empty() {
            return Err(Status::invalid_argument("Hello.node is empty: set the agent's node name"));
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
        self.agents.lock().expect("agents lock").entry(node.clone()).or_default().connected = true;

        let (sender, receiver) = mpsc::channel(64);
        let store = self.store.clone();
        let agents = self.agents.clone();
        tokio::spawn(async move {
            let mut live = subscription.live;
            for update in subscription.initial {
                if sender.send(Ok((*update).clone())).await.is_err() {
                    return;
                }
            }
            loop {
                tokio::select! {
                    update = live.recv() => {
                        let update = match update {
                            Ok(update) => (*update).clone(),
                            // Too far behind: start it over from a snapshot.
                            Err(RecvError::Lagged(_)) => store.lock().expect("store lock").snapshot(),
                            Err(RecvError::Closed) => break,
                        };
                        if sender.send(Ok(update)).await.is_err() {
                            break;
                        }
                    }
                    message = inbound.message() => match message {
                        Ok(Some(message)) => record(&agents, &node, message),
                        Ok(None) => break,
                        Err(status) => {
                            tracing::info!(node, "agent stream ended: {status}");
                            break;
                        }
                    },
                }
            }
            agents.lock().expect("agents lock").entry(node.clone()).or_default().connected = false;
            tracing::info!(node, "agent disconnected");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

fn record(agents: &Mutex<BTreeMap<String, AgentStatus>>, node: &str, message: AgentMessage) {
    let mut agents = agents.lock().expect("agents lock");
    let status = agents.entry(node.to_owned()).or_default();
    match message.kind {
        Some(agent_message::Kind::Ack(ack)) => {
            status.acked_version = status.acked_version.max(ack.version);
            tracing::debug!(node, version = ack.version, "ACK");
        }
        Some(agent_message::Kind::Nack(nack)) => {
            let rejected: Vec<String> = nack.rejected.iter().map(ToString::to_string).collect();
            tracing::warn!(node, version = nack.version, rejected = ?rejected, "NACK: {}", nack.error);
            status.last_nack = Some((nack.version, nack.error));
        }
        _ => tracing::warn!(node, "unexpected message after Hello; ignored"),
    }
}
