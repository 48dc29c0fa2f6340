//! Cluster mode: the Kubernetes API server is the source. One kube-rs watcher per kind the
//! model uses (Namespace, Pod, Service, EndpointSlice, NetworkPolicy, Node, the project's
//! MeshPolicy, ClusterMeshPolicy, PeerAuthentication and BackendTrafficPolicy, and Gateway API's
//! HTTPRoute and GRPCRoute when their CRDs are installed); their events become the same object changes local mode
//! makes from files, so
//! both go through one translation. A watch that breaks is resumed by the watcher (re-listing
//! when it must); after a re-list, objects that disappeared meanwhile are removed. Objects are
//! kept without `managedFields` and the last-applied annotation (as kube's examples strip
//! them): the model never reads them and they are often the larger part of an object.
//!
//! The re-list diff (`KindState`) stays here rather than in a kube `reflector`: a reflector's
//! store swaps in a re-list whole and says nothing about what left, and the model is fed
//! changes, not snapshots; `KindState` keeps only the keys applied.

use std::{collections::BTreeSet, fmt::Debug};

use futures::{Stream, StreamExt as _, stream};
use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, Client, Resource, ResourceExt as _,
    runtime::{WatchStreamExt as _, watcher},
};
use serde::de::DeserializeOwned;

use crate::{
    cluster::{ClusterView, Object, ObjectKey},
    crd::{BackendTrafficPolicy, ClusterMeshPolicy, MeshPolicy, PeerAuthentication},
    grpc_route::GrpcRoute,
    http_route::HttpRoute,
    local_dir::ObjectChange,
};

/// How many kinds are watched (the serving gate waits for each to be listed, or found not
/// installed).
pub const KINDS: usize = 12;
/// How often a kind whose CRD is not installed is looked for again.
pub const CRD_POLL: std::time::Duration = std::time::Duration::from_secs(30);

/// What one watcher event means for the model.
#[derive(Debug)]
pub struct Batch {
    pub changes: Vec<ObjectChange>,
    /// Objects the model cannot take (left as they were), and watch errors.
    pub problems: Vec<String>,
    /// Set when this batch completes a (re-)list of that kind.
    pub listed: Option<&'static str>,
}

/// A kind the model takes from the API server.
trait Watched: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static {
    const KIND: &'static str;
    fn into_object(self) -> Object;
}

impl Watched for Namespace {
    const KIND: &'static str = "Namespace";
    fn into_object(self) -> Object {
        Object::Namespace(Box::new(self))
    }
}

impl Watched for Pod {
    const KIND: &'static str = "Pod";
    fn into_object(self) -> Object {
        Object::Pod(Box::new(self))
    }
}

impl Watched for Service {
    const KIND: &'static str = "Service";
    fn into_object(self) -> Object {
        Object::Service(Box::new(self))
    }
}

impl Watched for NetworkPolicy {
    const KIND: &'static str = "NetworkPolicy";
    fn into_object(self) -> Object {
        Object::NetworkPolicy(Box::new(self))
    }
}

impl Watched for MeshPolicy {
    const KIND: &'static str = "MeshPolicy";
    fn into_object(self) -> Object {
        Object::MeshPolicy(Box::new(self))
    }
}

impl Watched for PeerAuthentication {
    const KIND: &'static str = "PeerAuthentication";
    fn into_object(self) -> Object {
        Object::PeerAuthentication(Box::new(self))
    }
}

impl Watched for BackendTrafficPolicy {
    const KIND: &'static str = "BackendTrafficPolicy";
    fn into_object(self) -> Object {
        Object::BackendTrafficPolicy(Box::new(self))
    }
}

impl Watched for ClusterMeshPolicy {
    const KIND: &'static str = "ClusterMeshPolicy";
    fn into_object(self) -> Object {
        Object::ClusterMeshPolicy(Box::new(self))
    }
}

impl Watched for HttpRoute {
    const KIND: &'static str = "HTTPRoute";
    fn into_object(self) -> Object {
        Object::HttpRoute(Box::new(self))
    }
}

impl Watched for GrpcRoute {
    const KIND: &'static str = "GRPCRoute";
    fn into_object(self) -> Object {
        Object::GrpcRoute(Box::new(self))
    }
}

impl Watched for Node {
    const KIND: &'static str = "Node";
    fn into_object(self) -> Object {
        Object::Node(Box::new(self))
    }
}

impl Watched for EndpointSlice {
    const KIND: &'static str = "EndpointSlice";
    fn into_object(self) -> Object {
        Object::EndpointSlice(Box::new(self))
    }
}

/// Every watched kind's changes, merged, as they come.
pub fn watch(client: Client) -> impl Stream<Item = Batch> + Send {
    stream::select_all([
        watch_kind::<Namespace>(client.clone()).boxed(),
        watch_kind::<Pod>(client.clone()).boxed(),
        watch_kind::<Service>(client.clone()).boxed(),
        watch_kind::<EndpointSlice>(client.clone()).boxed(),
        watch_kind::<NetworkPolicy>(client.clone()).boxed(),
        watch_kind::<MeshPolicy>(client.clone()).boxed(),
        watch_kind::<ClusterMeshPolicy>(client.clone()).boxed(),
        watch_kind::<PeerAuthentication>(client.clone()).boxed(),
        watch_kind::<BackendTrafficPolicy>(client.clone()).boxed(),
        watch_installed::<HttpRoute>(client.clone()).boxed(),
        watch_installed::<GrpcRoute>(client.clone()).boxed(),
        watch_kind::<Node>(client).boxed(),
    ])
}

/// A kind whose CRD another project installs (Gateway API's routes): while it is not
/// installed, the kind counts as listed and empty (the operator serves without it, saying so)
/// and is looked for again every [`CRD_POLL`]; once it is installed, it is watched as the
/// others are.
fn watch_installed<K: Watched>(client: Client) -> impl Stream<Item = Batch> + Send {
    let api: Api<K> = Api::all(client.clone());
    stream::once(async move {
        let present = installed(&api).await;
        (present, api)
    })
    .flat_map(move |(present, api)| {
        let absent = (!present).then(|| Batch {
            changes: Vec::new(),
            problems: vec![format!(
                "the {} CRD ({}) is not installed: mesh routes of that kind are off until it is (install Gateway API's standard CRDs; the operator looks again every {}s)",
                K::KIND,
                K::group(&()),
                CRD_POLL.as_secs()
            )],
            listed: Some(K::KIND),
        });
        let wait = stream::once(async move {
            if present {
                return;
            }
            loop {
                tokio::time::sleep(CRD_POLL).await;
                if installed(&api).await {
                    tracing::info!("the {} CRD is installed now: watching {}s", K::KIND, K::KIND);
                    return;
                }
            }
        })
        .filter_map(|()| async { None::<Batch> });
        stream::iter(absent).chain(wait).chain(watch_kind::<K>(client.clone()))
    })
}

/// Whether the API server serves `K` (a 404 for its list: its CRD is not installed). Any
/// other error counts as installed: the watcher retries it and reports what it meets.
async fn installed<K: Watched>(api: &Api<K>) -> bool {
    match api.list_metadata(&kube::api::ListParams::default().limit(1)).await {
        Err(kube::Error::Api(status)) => !status.is_not_found(),
        _ => true,
    }
}

fn watch_kind<K: Watched>(client: Client) -> impl Stream<Item = Batch> + Send {
    let api: Api<K> = Api::all(client);
    let mut state = KindState::<K>::default();
    watcher(api, watcher::Config::default()).default_backoff().map(move |event| match event {
        Ok(event) => state.on(event),
        Err(err) => {
            Batch { changes: Vec::new(), problems: vec![format!("watching {}s: {err}", K::KIND)], listed: None }
        }
    })
}

/// Which objects a watcher of one kind has applied (the objects themselves live in the view;
/// unchanged ones make no new version there), and the re-list in progress.
struct KindState<K> {
    applied: BTreeSet<ObjectKey>,
    relisting: Option<Vec<K>>,
}

impl<K> Default for KindState<K> {
    fn default() -> Self {
        Self { applied: BTreeSet::new(), relisting: None }
    }
}

impl<K: Watched> KindState<K> {
    fn on(&mut self, event: watcher::Event<K>) -> Batch {
        let mut batch = Batch { changes: Vec::new(), problems: Vec::new(), listed: None };
        match event {
            watcher::Event::Apply(object) => self.apply(object, &mut batch),
            watcher::Event::Delete(object) => {
                let key = key_of(&object);
                if self.applied.remove(&key) {
                    batch.changes.push(ObjectChange::Remove(key));
                }
            }
            watcher::Event::Init => self.relisting = Some(Vec::new()),
            watcher::Event::InitApply(object) => self.relisting.get_or_insert_with(Vec::new).push(object),
            watcher::Event::InitDone => {
                let listed = self.relisting.take().unwrap_or_default();
                let keys: BTreeSet<ObjectKey> = listed.iter().map(key_of).collect();
                let gone: Vec<ObjectKey> = self.applied.iter().filter(|k| !keys.contains(*k)).cloned().collect();
                for key in gone {
                    self.applied.remove(&key);
                    batch.changes.push(ObjectChange::Remove(key));
                }
                for object in listed {
                    self.apply(object, &mut batch);
                }
                batch.listed = Some(K::KIND);
            }
        }
        batch
    }

    /// An object as it is now: applied if the model can take it; else the previous version
    /// stays.
    fn apply(&mut self, mut object: K, batch: &mut Batch) {
        strip(&mut object);
        let key = key_of(&object);
        let object = object.into_object();
        if let Err(invalid) = ClusterView::check(&key, &object) {
            batch.problems.push(format!("{key}: {invalid}; its previous version stays in force"));
            return;
        }
        self.applied.insert(key.clone());
        batch.changes.push(ObjectChange::Upsert(key, object));
    }
}

/// What the model never reads and the API server adds to every object.
fn strip<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
    if let Some(annotations) = object.meta_mut().annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

fn key_of<K: Watched>(object: &K) -> ObjectKey {
    ObjectKey { kind: K::KIND, namespace: object.namespace().unwrap_or_default(), name: object.name_any() }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};

    use super::*;

    #[test]
    fn objects_are_kept_without_managed_fields_or_the_last_applied_annotation() {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("web-a".into()),
                namespace: Some("demo".into()),
                managed_fields: Some(vec![ManagedFieldsEntry {
                    manager: Some("kubectl".into()),
                    ..Default::default()
                }]),
                annotations: Some(
                    [(LAST_APPLIED.to_owned(), "{...}".to_owned()), ("team".to_owned(), "web".to_owned())].into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut state = KindState::<Pod>::default();
        let batch = state.on(watcher::Event::Apply(pod));
        let [ObjectChange::Upsert(_, Object::Pod(kept))] = batch.changes.as_slice() else {
            panic!("one upsert expected: {batch:?}")
        };
        assert!(kept.metadata.managed_fields.is_none());
        let annotations = kept.metadata.annotations.as_ref().expect("the other annotations stay");
        assert_eq!(annotations.keys().collect::<Vec<_>>(), ["team"]);
    }
}
