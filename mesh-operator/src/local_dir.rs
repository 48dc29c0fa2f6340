//! Local mode: a directory of Kubernetes manifests stands in for the API server. Every file
//! (`*.yaml`, `*.yml`, `*.json`, multi-document YAML too) is read; on a change, only the
//! files that changed are read again. Each bad object is one error naming its file, its
//! kind/namespace/name and the field; every valid object still applies.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use k8s_openapi::api::{
    core::v1::{Node, ServiceAccount},
    networking::v1::NetworkPolicy,
};
use mesh_common::names::{is_dns_label, is_dns_subdomain};
use serde::de::DeserializeOwned;

use crate::{
    cluster::{ClusterView, Object, ObjectKey},
    crd::{BackendTrafficPolicy, ClusterMeshPolicy, MeshPolicy, PeerAuthentication},
    grpc_route::GrpcRoute,
    http_route::HttpRoute,
};

/// What the operator reads, as `apiVersion kind`.
pub const KINDS: [(&str, &str); 13] = [
    ("v1", "Namespace"),
    ("v1", "Pod"),
    ("v1", "Service"),
    ("discovery.k8s.io/v1", "EndpointSlice"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("v1", "Node"),
    ("v1", "ServiceAccount"),
    ("mesh.dev/v1alpha1", "MeshPolicy"),
    ("mesh.dev/v1alpha1", "ClusterMeshPolicy"),
    ("mesh.dev/v1alpha1", "PeerAuthentication"),
    ("mesh.dev/v1alpha1", "BackendTrafficPolicy"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("gateway.networking.k8s.io/v1", "GRPCRoute"),
];

/// One problem with one object (or, when it cannot be split into objects, one file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {object}: {field}: {message}")]
pub struct ManifestError {
    pub file: String,
    /// `Kind/namespace/name`, or `document N` when the object has no usable identity.
    pub object: String,
    pub field: String,
    pub message: String,
}

/// A change to the objects the directory holds.
#[derive(Debug, Clone, PartialEq)]
pub enum ObjectChange {
    Upsert(ObjectKey, Object),
    Remove(ObjectKey),
}

impl ObjectChange {
    pub fn apply(self, view: &mut ClusterView) {
        match self {
            Self::Upsert(key, object) => view.upsert(&key, object),
            Self::Remove(key) => view.remove(&key),
        }
    }
}

/// The directory's files and, for each, the objects it holds: their keys and a fingerprint of
/// their text, enough to tell what a re-read changed (the objects themselves live in the
/// cluster view only).
pub struct LocalDir {
    root: PathBuf,
    files: BTreeMap<PathBuf, BTreeMap<ObjectKey, u64>>,
    /// Which file an object comes from (the first one, if two define it).
    owner: BTreeMap<ObjectKey, PathBuf>,
}

impl LocalDir {
    pub fn new(root: &Path) -> Self {
        Self { root: root.to_owned(), files: BTreeMap::new(), owner: BTreeMap::new() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads every manifest file under the root.
    pub fn load(&mut self) -> Result<(Vec<ObjectChange>, Vec<ManifestError>), std::io::Error> {
        let mut files = Vec::new();
        collect_files(&self.root, &mut files)?;
        Ok(self.reload(&files))
    }

    /// Reads `paths` again (files or directories; gone ones lose their objects) and returns
    /// what changed.
    pub fn reload(&mut self, paths: &[PathBuf]) -> (Vec<ObjectChange>, Vec<ManifestError>) {
        let mut touched = BTreeSet::new();
        for path in paths {
            if path.is_dir() {
                let mut found = Vec::new();
                let _ = collect_files(path, &mut found);
                touched.extend(found);
                touched.extend(self.files.keys().filter(|f| f.starts_with(path)).cloned());
            } else if is_manifest(path) || self.files.contains_key(path) {
                touched.insert(path.clone());
            }
        }
        let mut errors = Vec::new();
        let mut changes = Vec::new();
        for (file, (objects, file_errors)) in parse_files(touched.into_iter().collect()) {
            let before = self.files.remove(&file).unwrap_or_default();
            let mut kept = BTreeMap::new();
            for (key, object, fingerprint) in objects {
                match self.owner.get(&key) {
                    Some(other) if *other != file => errors.push(ManifestError {
                        file: file.display().to_string(),
                        object: key.to_string(),
                        field: "metadata.name".into(),
                        message: format!("already defined in {}; this one is ignored", other.display()),
                    }),
                    _ => {
                        if before.get(&key) != Some(&fingerprint) {
                            changes.push(ObjectChange::Upsert(key.clone(), object));
                        }
                        self.owner.insert(key.clone(), file.clone());
                        kept.insert(key, fingerprint);
                    }
                }
            }
            // An object whose new version is refused keeps its previous one: an invalid edit
            // never takes a policy (or anything else) away.
            // A file that cannot be read or parsed at all keeps every object it had.
            let refused: BTreeSet<String> = file_errors.iter().map(|e| e.object.clone()).collect();
            let whole_file = refused.contains("(file)");
            for (key, fingerprint) in &before {
                if !kept.contains_key(key) && (whole_file || refused.contains(&key.to_string())) {
                    kept.insert(key.clone(), *fingerprint);
                }
            }
            for key in before.keys().filter(|key| !kept.contains_key(*key)) {
                self.owner.remove(key);
                changes.push(ObjectChange::Remove(key.clone()));
            }
            errors.extend(file_errors);
            if !kept.is_empty() {
                self.files.insert(file, kept);
            }
        }
        (changes, errors)
    }
}

fn fingerprint(document: &serde_json::Value) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    document.hash(&mut hasher);
    hasher.finish()
}

fn is_manifest(path: &Path) -> bool {
    let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
    let ext = path.extension().and_then(|e| e.to_str());
    !hidden && matches!(ext, Some("yaml" | "yml" | "json"))
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), std::io::Error> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if path.is_dir() && !hidden {
            collect_files(&path, out)?;
        } else if is_manifest(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// A file's objects (each with a fingerprint of its document) and its errors.
pub type Parsed = (Vec<(ObjectKey, Object, u64)>, Vec<ManifestError>);

/// Parses `files` (a gone one has no objects) on every core, in order. Parsing is CPU-bound
/// (serde-saphyr reads about 4 MB/s): a directory of 10,000 services takes about 3 s on one core.
fn parse_files(files: Vec<PathBuf>) -> Vec<(PathBuf, Parsed)> {
    let parse = |file: &PathBuf| if file.is_file() { parse_file(file) } else { (Vec::new(), Vec::new()) };
    let threads = std::thread::available_parallelism().map_or(1, usize::from).min(files.len());
    if threads <= 1 {
        return files
            .into_iter()
            .map(|file| {
                let parsed = parse(&file);
                (file, parsed)
            })
            .collect();
    }
    let chunk = files.len().div_ceil(threads);
    let parsed: Vec<Parsed> = std::thread::scope(|scope| {
        let workers: Vec<_> =
            files.chunks(chunk).map(|part| scope.spawn(move || part.iter().map(parse).collect::<Vec<_>>())).collect();
        workers.into_iter().flat_map(|worker| worker.join().expect("parsing a manifest panicked")).collect()
    });
    files.into_iter().zip(parsed).collect()
}

/// The objects of one file (each with a fingerprint of its document), and one error per
/// object (or document) that is not valid.
pub fn parse_file(path: &Path) -> Parsed {
    let file = path.display().to_string();
    match mesh_common::yaml::read_file(path) {
        Ok(text) => parse_text(&file, &text),
        Err(err) => {
            let error =
                ManifestError { file, object: "(file)".into(), field: "(file)".into(), message: err.to_string() };
            (Vec::new(), vec![error])
        }
    }
}

/// The objects of one file's `text` (named `file` in errors).
pub fn parse_text(file: &str, text: &str) -> Parsed {
    let error = |object: String, field: &str, message: String| ManifestError {
        file: file.to_owned(),
        object,
        field: field.into(),
        message,
    };
    // A syntax error or a limit refuses the whole file: nothing in it can be trusted.
    let documents = match mesh_common::yaml::documents::<serde_json::Value>(text) {
        Ok(documents) => documents,
        Err(err) => return (Vec::new(), vec![error("(file)".into(), "(syntax)", err.to_string())]),
    };
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (n, value) in documents.into_iter().enumerate() {
        match object(&value) {
            Ok(Some((key, object))) => objects.push((key, object, fingerprint(&value))),
            Ok(None) => {}
            Err((object, field, message)) => {
                errors.push(error(object.unwrap_or_else(|| format!("document {}", n + 1)), &field, message))
            }
        }
    }
    (objects, errors)
}

type ObjectResult = Result<Option<(ObjectKey, Object)>, (Option<String>, String, String)>;

/// One document -> one object. `Ok(None)`: a valid object of a kind the model does not use.
fn object(value: &serde_json::Value) -> ObjectResult {
    let text = |field: &str| value.get(field).and_then(|v| v.as_str()).map(str::to_owned);
    let api_version = text("apiVersion").ok_or((None, "apiVersion".to_owned(), "missing".to_owned()))?;
    let kind = text("kind").ok_or((None, "kind".to_owned(), "missing".to_owned()))?;
    let known = KINDS.iter().find(|(v, k)| *v == api_version && *k == kind);
    let Some((_, kind)) = known else {
        let list: Vec<String> = KINDS.iter().map(|(v, k)| format!("{v} {k}")).collect();
        return Err((
            Some(format!("{kind} (apiVersion {api_version})")),
            "kind".into(),
            format!("not a kind the operator reads: use one of {}", list.join(", ")),
        ));
    };
    let metadata = value.get("metadata");
    let name = metadata.and_then(|m| m.get("name")).and_then(|n| n.as_str()).unwrap_or_default().to_owned();
    let cluster_scoped = matches!(*kind, "Namespace" | "Node" | "ClusterMeshPolicy");
    let namespace = if cluster_scoped {
        String::new()
    } else {
        metadata.and_then(|m| m.get("namespace")).and_then(|n| n.as_str()).unwrap_or("default").to_owned()
    };
    let key = ObjectKey { kind, namespace: namespace.clone(), name: name.clone() };
    let here = Some(key.to_string());
    if !is_dns_subdomain(&name) {
        return Err((
            here,
            "metadata.name".into(),
            format!("{name:?} is not a valid name: lowercase letters, digits, '-' and '.'"),
        ));
    }
    if !cluster_scoped && !is_dns_label(&namespace) {
        return Err((here, "metadata.namespace".into(), format!("{namespace:?} is not a valid namespace name")));
    }
    let wrong = |(field, message): (String, String)| (here.clone(), field, message);
    let object = match *kind {
        "Namespace" => Object::Namespace(Box::new(typed_from(value).map_err(wrong)?)),
        "Pod" => Object::Pod(Box::new(typed_from(value).map_err(wrong)?)),
        "Service" => Object::Service(Box::new(typed_from(value).map_err(wrong)?)),
        "EndpointSlice" => Object::EndpointSlice(Box::new(typed_from(value).map_err(wrong)?)),
        "NetworkPolicy" => Object::NetworkPolicy(Box::new(typed_from::<NetworkPolicy>(value).map_err(wrong)?)),
        "Node" => Object::Node(Box::new(typed_from::<Node>(value).map_err(wrong)?)),
        "MeshPolicy" => Object::MeshPolicy(Box::new(typed_from::<MeshPolicy>(value).map_err(wrong)?)),
        "ClusterMeshPolicy" => {
            Object::ClusterMeshPolicy(Box::new(typed_from::<ClusterMeshPolicy>(value).map_err(wrong)?))
        }
        "PeerAuthentication" => {
            Object::PeerAuthentication(Box::new(typed_from::<PeerAuthentication>(value).map_err(wrong)?))
        }
        "BackendTrafficPolicy" => {
            Object::BackendTrafficPolicy(Box::new(typed_from::<BackendTrafficPolicy>(value).map_err(wrong)?))
        }
        "HTTPRoute" => Object::HttpRoute(Box::new(typed_from::<HttpRoute>(value).map_err(wrong)?)),
        "GRPCRoute" => Object::GrpcRoute(Box::new(typed_from::<GrpcRoute>(value).map_err(wrong)?)),
        // Checked, then set aside: nothing in the model comes from a ServiceAccount object.
        _ => return typed_from::<ServiceAccount>(value).map(|_| None).map_err(wrong),
    };
    ClusterView::check(&key, &object).map_err(|invalid| (here.clone(), invalid.field, invalid.message))?;
    Ok(Some((key, object)))
}

/// Deserialises a typed object, naming the field on failure. Straight from the borrowed
/// document: a copy of it per object was a tenth of `mesh-operator check`'s time.
fn typed_from<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let field = err.path().to_string();
        (if field == "." { "(object)".into() } else { field }, err.into_inner().to_string())
    })
}

/// Local mode for one manifest text the operator does not control, from bytes to the model
/// agents receive: parsed, validated, put in a cluster view with in-memory identities and
/// translated. What the fuzz targets (`fuzz/`) and the property tests drive. Returns the
/// model's resources, and every error (each naming its field).
pub fn model_of_text(text: &str) -> (Vec<mesh_common::api::Resource>, Vec<String>) {
    let (objects, errors) = parse_text("input.yaml", text);
    let mut messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let identities = crate::identity::IdentityAllocator::open(None).expect("an in-memory table opens");
    let mut view = ClusterView::new(identities);
    for (key, object, _) in objects {
        view.upsert(&key, object);
    }
    let (changes, model_errors) = view.changes();
    messages.extend(model_errors.iter().map(ToString::to_string));
    (changes.into_iter().filter_map(|(_, resource)| resource).collect(), messages)
}
