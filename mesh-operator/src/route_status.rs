//! Writing HTTPRoute and GRPCRoute status (cluster mode), as a Gateway API implementation
//! must: per Service parent, a `RouteParentStatus` with the operator's `controllerName` and the
//! `Accepted` and `ResolvedRefs` conditions (`observedGeneration`, and `lastTransitionTime`
//! kept while a condition's status stays). `status.parents` is shared with other
//! implementations (a route may also have Gateway parents) and is not a keyed list, so the
//! operator reads it, replaces only its own entries, and writes it back guarded by the
//! resourceVersion it read; a conflict is read and tried again.

use std::collections::BTreeMap;

use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::{
    crd::FIELD_MANAGER,
    grpc_route::GrpcRoute,
    http_route::{HttpRoute, ParentStatus},
};

/// The `controllerName` of the operator's entries.
pub const CONTROLLER_NAME: &str = "mesh.dev/mesh-operator";
/// Tries of one write when others write the same route meanwhile.
const TRIES: usize = 3;

/// A route whose status changed: its kind (`HTTPRoute` or `GRPCRoute`), namespace, name, and
/// its status per Service parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteStatusUpdate {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub parents: Vec<ParentStatus>,
}

/// Writes each update until the sender goes away; bursts are coalesced (the latest per route).
pub async fn write_all(client: Client, mut updates: mpsc::UnboundedReceiver<RouteStatusUpdate>) {
    while let Some(first) = updates.recv().await {
        let mut latest = BTreeMap::new();
        let mut next = Some(first);
        while let Some(update) = next {
            latest.insert((update.kind, update.namespace.clone(), update.name.clone()), update);
            next = updates.try_recv().ok();
        }
        for update in latest.into_values() {
            if let Err(err) = write(&client, &update).await {
                tracing::warn!(
                    "cannot write the status of {}/{}/{}: {err}",
                    update.kind,
                    update.namespace,
                    update.name
                );
            }
        }
    }
}

/// Writes one route's status; a route that is gone is left alone.
pub async fn write(client: &Client, update: &RouteStatusUpdate) -> Result<(), kube::Error> {
    let resource = if update.kind == "GRPCRoute" {
        ApiResource::erase::<GrpcRoute>(&())
    } else {
        ApiResource::erase::<HttpRoute>(&())
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &update.namespace, &resource);
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() };
    for _ in 0..TRIES {
        let Some(object) = api.get_opt(&update.name).await? else { return Ok(()) };
        let previous: Vec<Value> = object.data["status"]["parents"].as_array().cloned().unwrap_or_default();
        let parents = merged(&previous, &update.parents, object.metadata.generation.unwrap_or(0));
        if parents == previous {
            return Ok(());
        }
        let patch = json!({
            "metadata": {"resourceVersion": object.metadata.resource_version},
            "status": {"parents": parents},
        });
        match api.patch_status(&update.name, &params, &Patch::Merge(&patch)).await {
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            other => return other.map(drop),
        }
    }
    Ok(())
}

/// `previous` with the operator's entries replaced by `ours` (other controllers' kept, in
/// place, ours after them).
pub fn merged(previous: &[Value], ours: &[ParentStatus], generation: i64) -> Vec<Value> {
    let mine = |p: &&Value| p["controllerName"] == CONTROLLER_NAME;
    let mut parents: Vec<Value> = previous.iter().filter(|p| !mine(p)).cloned().collect();
    let now =
        serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()))
            .unwrap_or(Value::Null);
    for parent in ours {
        let mut parent_ref = json!({"group": "", "kind": "Service", "namespace": parent.parent.namespace, "name": parent.parent.service});
        if parent.parent.port != 0 {
            parent_ref["port"] = json!(parent.parent.port);
        }
        let before = previous.iter().filter(mine).find(|p| p["parentRef"] == parent_ref);
        let conditions: Vec<Value> = parent
            .conditions
            .iter()
            .map(|c| {
                let status = if c.status { "True" } else { "False" };
                let was = before
                    .and_then(|b| b["conditions"].as_array())
                    .and_then(|cs| cs.iter().find(|old| old["type"] == c.kind && old["status"] == status));
                json!({
                    "type": c.kind,
                    "status": status,
                    "reason": c.reason,
                    "message": c.message,
                    "observedGeneration": generation,
                    "lastTransitionTime": was.map_or(now.clone(), |old| old["lastTransitionTime"].clone()),
                })
            })
            .collect();
        parents.push(json!({"parentRef": parent_ref, "controllerName": CONTROLLER_NAME, "conditions": conditions}));
    }
    parents
}
