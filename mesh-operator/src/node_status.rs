//! Reporting each agent's state on its `MeshNode` (cluster mode): Connected, Synced (False
//! with the NACK's error), the acknowledged version. Server-side apply with the operator's
//! field manager; bursts of ACKs are coalesced into one patch per node per round.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use tokio::sync::mpsc;

use crate::crd::{FIELD_MANAGER, MeshNode, MeshNodeStatus};

/// How often status is written at most, per node.
pub const ROUND: Duration = Duration::from_millis(500);

/// Something an agent's stream did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    Connected { node: String, epoch: String },
    Disconnected { node: String },
    Acked { node: String, version: u64 },
    Nacked { node: String, version: u64, error: String },
}

impl AgentEvent {
    fn node(&self) -> &str {
        match self {
            Self::Connected { node, .. }
            | Self::Disconnected { node }
            | Self::Acked { node, .. }
            | Self::Nacked { node, .. } => node,
        }
    }
}

/// Writes the events to the nodes' `MeshNode` status until the sender goes away.
pub async fn report(client: Client, mut events: mpsc::UnboundedReceiver<AgentEvent>) {
    let api: Api<MeshNode> = Api::all(client.clone());
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client);
    let mut statuses: BTreeMap<String, MeshNodeStatus> = BTreeMap::new();
    // Each MeshNode is owned by its Node (so a removed node takes it along): the Node's uid,
    // looked up until found.
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    while let Some(first) = events.recv().await {
        let mut changed = std::collections::BTreeSet::new();
        let mut next = Some(first);
        while let Some(event) = next {
            changed.insert(event.node().to_owned());
            apply(statuses.entry(event.node().to_owned()).or_default(), &event);
            next = events.try_recv().ok();
        }
        for node in changed {
            if !owners.contains_key(&node) {
                match nodes.get_opt(&node).await {
                    Ok(found) => {
                        if let Some(uid) = found.and_then(|n| n.metadata.uid) {
                            owners.insert(node.clone(), uid);
                        }
                    }
                    Err(err) => tracing::warn!(
                        node,
                        "cannot read the Node (the MeshNode is written without its owner for now): {err}"
                    ),
                }
            }
            if let Err(err) = write(&api, &node, owners.get(&node).map(String::as_str), &statuses[&node]).await {
                tracing::warn!(node, "cannot write MeshNode status: {err}");
            }
        }
        tokio::time::sleep(ROUND).await;
    }
}

async fn write(
    api: &Api<MeshNode>,
    node: &str,
    owner_uid: Option<&str>,
    status: &MeshNodeStatus,
) -> Result<(), kube::Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut metadata = serde_json::json!({"name": node});
    if let Some(uid) = owner_uid {
        metadata["ownerReferences"] =
            serde_json::json!([{"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}]);
    }
    let object =
        serde_json::json!({"apiVersion": "mesh.dev/v1alpha1", "kind": "MeshNode", "metadata": metadata, "spec": {}});
    api.patch(node, &params, &Patch::Apply(object)).await?;
    let status = serde_json::json!({"apiVersion": "mesh.dev/v1alpha1", "kind": "MeshNode", "status": status});
    api.patch_status(node, &params, &Patch::Apply(status)).await?;
    Ok(())
}

/// Folds one event into a node's status.
pub fn apply(status: &mut MeshNodeStatus, event: &AgentEvent) {
    match event {
        AgentEvent::Connected { epoch, .. } => {
            status.epoch.clone_from(epoch);
            set(&mut status.conditions, "Connected", true, "StreamOpen", "the agent follows the state stream");
        }
        AgentEvent::Disconnected { .. } => {
            set(
                &mut status.conditions,
                "Connected",
                false,
                "StreamClosed",
                "the agent's stream ended; it keeps its datapath and reconnects",
            );
        }
        AgentEvent::Acked { version, .. } => {
            status.acked_version = status.acked_version.max(*version);
            set(&mut status.conditions, "Synced", true, "Applied", &format!("applied version {version}"));
        }
        AgentEvent::Nacked { version, error, .. } => {
            set(&mut status.conditions, "Synced", false, "Rejected", &format!("version {version}: {error}"));
        }
    }
}

/// Sets a condition; its transition time changes only when its status does.
fn set(conditions: &mut Vec<Condition>, type_: &str, ok: bool, reason: &str, message: &str) {
    let status = if ok { "True" } else { "False" }.to_owned();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(condition) => {
            if condition.status != status {
                condition.last_transition_time = now;
            }
            condition.status = status;
            condition.reason = reason.to_owned();
            condition.message = message.to_owned();
        }
        None => conditions.push(Condition {
            type_: type_.to_owned(),
            status,
            reason: reason.to_owned(),
            message: message.to_owned(),
            last_transition_time: now,
            observed_generation: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nack_turns_synced_false_with_the_error_and_an_ack_back() {
        let mut status = MeshNodeStatus::default();
        apply(&mut status, &AgentEvent::Connected { node: "n".into(), epoch: "e1".into() });
        apply(&mut status, &AgentEvent::Acked { node: "n".into(), version: 3 });
        apply(
            &mut status,
            &AgentEvent::Nacked { node: "n".into(), version: 4, error: "map mesh_backend is full".into() },
        );
        let synced = status.conditions.iter().find(|c| c.type_ == "Synced").unwrap();
        assert_eq!((synced.status.as_str(), synced.reason.as_str()), ("False", "Rejected"));
        assert!(synced.message.contains("map mesh_backend is full"));
        assert_eq!(status.acked_version, 3);
        apply(&mut status, &AgentEvent::Acked { node: "n".into(), version: 5 });
        assert_eq!(status.conditions.iter().find(|c| c.type_ == "Synced").unwrap().status, "True");
        assert_eq!((status.acked_version, status.epoch.as_str()), (5, "e1"));
    }
}
