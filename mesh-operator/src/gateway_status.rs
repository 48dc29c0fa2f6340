//! Writing the status of Gateway API objects (cluster mode): BackendTrafficPolicies' as
//! policy attachment (GEP-713) specifies (`status.ancestors`, one per target Service, with
//! `Accepted`; the operator owns that status whole, so server-side apply), and HTTPRoutes' and
//! GRPCRoutes' as a Gateway API implementation must: per Service parent, a `RouteParentStatus` with the operator's `controllerName` and the
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

/// A BackendTrafficPolicy whose status changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyStatusUpdate {
    pub namespace: String,
    pub name: String,
    pub ancestors: Vec<crate::cluster::PolicyAncestor>,
}

/// A status to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusUpdate {
    Route(RouteStatusUpdate),
    Policy(PolicyStatusUpdate),
}

impl StatusUpdate {
    fn key(&self) -> (&'static str, String, String) {
        match self {
            Self::Route(r) => (r.kind, r.namespace.clone(), r.name.clone()),
            Self::Policy(p) => ("BackendTrafficPolicy", p.namespace.clone(), p.name.clone()),
        }
    }
}

/// Writes each update until the sender goes away; bursts are coalesced (the latest per object).
pub async fn write_all(client: Client, mut updates: mpsc::UnboundedReceiver<StatusUpdate>) {
    while let Some(first) = updates.recv().await {
        let mut latest = BTreeMap::new();
        let mut next = Some(first);
        while let Some(update) = next {
            latest.insert(update.key(), update);
            next = updates.try_recv().ok();
        }
        for ((kind, namespace, name), update) in latest {
            let written = match &update {
                StatusUpdate::Route(route) => write(&client, route).await,
                StatusUpdate::Policy(policy) => write_policy(&client, policy).await,
            };
            if let Err(err) = written {
                tracing::warn!("cannot write the status of {kind}/{namespace}/{name}: {err}");
            }
        }
    }
}

/// Writes one BackendTrafficPolicy's status (server-side apply: the operator owns it); a
/// policy that is gone is left alone. A condition keeps its transition time while its status
/// stays.
pub async fn write_policy(client: &Client, update: &PolicyStatusUpdate) -> Result<(), kube::Error> {
    use crate::crd::{BackendTrafficPolicy, PolicyAncestorRef, PolicyAncestorStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    let api: Api<BackendTrafficPolicy> = Api::namespaced(client.clone(), &update.namespace);
    let Some(policy) = api.get_opt(&update.name).await? else { return Ok(()) };
    let previous = policy.status.map(|s| s.ancestors).unwrap_or_default();
    let generation = policy.metadata.generation;
    let ancestors: Vec<PolicyAncestorStatus> = update
        .ancestors
        .iter()
        .map(|a| {
            let ancestor_ref = PolicyAncestorRef {
                group: String::new(),
                kind: "Service".into(),
                namespace: update.namespace.clone(),
                name: a.service.clone(),
            };
            let status = if a.accepted { "True" } else { "False" };
            let since = previous
                .iter()
                .find(|p| p.ancestor_ref == ancestor_ref)
                .and_then(|p| p.conditions.iter().find(|c| c.type_ == "Accepted" && c.status == status))
                .map_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()), |c| c.last_transition_time.clone());
            let condition = Condition {
                type_: "Accepted".into(),
                status: status.into(),
                reason: a.reason.into(),
                message: a.message.clone(),
                last_transition_time: since,
                observed_generation: generation,
            };
            PolicyAncestorStatus { ancestor_ref, controller_name: CONTROLLER_NAME.into(), conditions: vec![condition] }
        })
        .collect();
    if ancestors == previous {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": "mesh.dev/v1alpha1",
        "kind": "BackendTrafficPolicy",
        "status": {"ancestors": ancestors},
    });
    api.patch_status(&update.name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await.map(drop)
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
