//! Identities: the security-relevant labels of a pod (its namespace's labels, its own labels,
//! its service account) map to a number, the same on every node and across operator restarts.
//!
//! The allocation table is persisted (a JSON file in local mode) before a new number is used,
//! so a restarted operator hands out the same numbers for the same label sets.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// The first number given to a workload identity; those below are reserved (host, world, …).
pub const FIRST_WORKLOAD_IDENTITY: u32 = 256;

/// Pod labels that say nothing about security (they change with every rollout) and would
/// only multiply identities.
const IGNORED_POD_LABELS: [&str; 4] =
    ["pod-template-hash", "controller-revision-hash", "statefulset.kubernetes.io/pod-name", "pod-template-generation"];

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read the identity table {path}: {source}; fix or remove it (identities are then renumbered)")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the identity table {path} is not valid: {source}; fix or remove it (identities are then renumbered)")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("cannot write the identity table {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("all {0} identity numbers are in use")]
    Exhausted(u32),
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Table {
    /// Canonical label set -> identity.
    identities: BTreeMap<String, u32>,
}

/// Allocates identities and keeps them stable.
#[derive(Debug)]
pub struct IdentityAllocator {
    table: Table,
    next: u32,
    path: Option<PathBuf>,
    /// Numbers given since the table was last written.
    unsaved: bool,
}

impl IdentityAllocator {
    /// An allocator persisted at `path` (loaded if it exists); `None`: in memory only.
    pub fn open(path: Option<&Path>) -> Result<Self, IdentityError> {
        let table = match path {
            Some(path) if path.exists() => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| IdentityError::Read { path: path.to_owned(), source })?;
                serde_json::from_str(&text).map_err(|source| IdentityError::Parse { path: path.to_owned(), source })?
            }
            _ => Table::default(),
        };
        let next = table.identities.values().max().map_or(FIRST_WORKLOAD_IDENTITY, |max| max + 1);
        Ok(Self { table, next, path: path.map(Path::to_owned), unsaved: false })
    }

    /// The identity of a label set, allocating a new one if needed. A new number is written
    /// to the table file by [`Self::flush`], which must succeed before it is published.
    pub fn identity(&mut self, labels: &SecurityLabels) -> Result<u32, IdentityError> {
        let canonical = labels.canonical();
        if let Some(id) = self.table.identities.get(&canonical) {
            return Ok(*id);
        }
        let id = self.next;
        self.next = self.next.checked_add(1).ok_or(IdentityError::Exhausted(u32::MAX))?;
        self.table.identities.insert(canonical, id);
        self.unsaved = true;
        Ok(id)
    }

    /// Writes the numbers given since the last flush, durably (once per batch of changes, not
    /// once per pod: a burst of new pods rewrote the whole table for each).
    pub fn flush(&mut self) -> Result<(), IdentityError> {
        if self.unsaved {
            self.persist()?;
            self.unsaved = false;
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.table.identities.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.identities.is_empty()
    }

    fn persist(&self) -> Result<(), IdentityError> {
        let Some(path) = &self.path else { return Ok(()) };
        let write = |source| IdentityError::Write { path: path.clone(), source };
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_string_pretty(&self.table).expect("the table serialises");
        // Written whole, synced, then renamed into place and the rename synced: after a crash
        // the table is the old one or the new one, never empty or half-written.
        let mut file = std::fs::File::create(&tmp).map_err(write)?;
        std::io::Write::write_all(&mut file, text.as_bytes()).map_err(write)?;
        file.sync_all().map_err(write)?;
        std::fs::rename(&tmp, path).map_err(write)?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(write)
    }
}

/// What an identity is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityLabels {
    pub namespace: String,
    pub namespace_labels: BTreeMap<String, String>,
    pub pod_labels: BTreeMap<String, String>,
    pub service_account: String,
}

impl SecurityLabels {
    /// One string per label set, the same whatever the order the labels came in.
    pub fn canonical(&self) -> String {
        let mut parts =
            vec![format!("k8s:namespace={}", self.namespace), format!("k8s:serviceaccount={}", self.service_account)];
        parts.extend(self.namespace_labels.iter().map(|(k, v)| format!("ns:{k}={v}")));
        parts.extend(
            self.pod_labels
                .iter()
                .filter(|(k, _)| !IGNORED_POD_LABELS.contains(&k.as_str()))
                .map(|(k, v)| format!("pod:{k}={v}")),
        );
        parts.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(ns: &str, app: &str, hash: &str) -> SecurityLabels {
        SecurityLabels {
            namespace: ns.into(),
            namespace_labels: BTreeMap::from([("team".into(), "a".into())]),
            pod_labels: BTreeMap::from([("app".into(), app.into()), ("pod-template-hash".into(), hash.into())]),
            service_account: "default".into(),
        }
    }

    #[test]
    fn same_labels_same_identity_and_rollout_hashes_do_not_count() {
        let mut ids = IdentityAllocator::open(None).unwrap();
        let web = ids.identity(&labels("prod", "web", "abc")).unwrap();
        assert_eq!(web, FIRST_WORKLOAD_IDENTITY);
        assert_eq!(ids.identity(&labels("prod", "web", "def")).unwrap(), web);
        assert_ne!(ids.identity(&labels("prod", "db", "abc")).unwrap(), web);
        assert_ne!(ids.identity(&labels("dev", "web", "abc")).unwrap(), web);
        assert_eq!(ids.len(), 3);
    }

    #[test]
    fn identities_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identities.json");
        let (web, db) = {
            let mut ids = IdentityAllocator::open(Some(&path)).unwrap();
            let given =
                (ids.identity(&labels("p", "web", "1")).unwrap(), ids.identity(&labels("p", "db", "1")).unwrap());
            // Written once per batch, at the flush, not once per new number.
            assert!(!path.exists());
            ids.flush().unwrap();
            given
        };
        assert!(!path.with_extension("tmp").exists(), "the temporary file was renamed into place");
        let mut ids = IdentityAllocator::open(Some(&path)).unwrap();
        // Asked in the other order, and a new one after them.
        assert_eq!(ids.identity(&labels("p", "db", "2")).unwrap(), db);
        assert_eq!(ids.identity(&labels("p", "web", "2")).unwrap(), web);
        assert_eq!(ids.identity(&labels("p", "cache", "1")).unwrap(), db.max(web) + 1);
    }

    #[test]
    fn a_corrupt_table_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identities.json");
        std::fs::write(&path, "{not json").unwrap();
        let err = IdentityAllocator::open(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("fix or remove it"), "{err}");
    }

    #[test]
    fn a_table_that_cannot_be_written_holds_new_workloads_back() {
        use crate::cluster::ClusterView;

        let dir = tempfile::tempdir().unwrap();
        // A directory where the table should be: every write fails.
        let path = dir.path().join("identities.json");
        std::fs::create_dir(path.with_extension("tmp")).unwrap();
        let mut view = ClusterView::new(IdentityAllocator::open(Some(&path)).unwrap());
        let pod: k8s_openapi::api::core::v1::Pod = mesh_common::yaml::document(
            "metadata: {name: a, namespace: n, labels: {app: a}}\nspec: {nodeName: node-0, containers: []}\nstatus: {podIP: 10.0.0.1}\n",
        )
        .unwrap();
        let key = crate::cluster::ObjectKey { kind: "Pod", namespace: "n".into(), name: "a".into() };
        view.upsert(&key, crate::cluster::Object::Pod(Box::new(pod)));
        let (changes, errors) = view.changes();
        assert!(
            changes.iter().all(|((kind, _, _), r)| *kind != mesh_common::api::Kind::Workload as i32 || r.is_none())
        );
        assert!(errors.iter().any(|e| e.object == "identity table"), "{errors:?}");
        // Once it can be written, the workload is published.
        std::fs::remove_dir(path.with_extension("tmp")).unwrap();
        let (changes, errors) = view.changes();
        assert!(errors.is_empty(), "{errors:?}");
        assert!(changes.iter().any(|((kind, _, name), r)| *kind == mesh_common::api::Kind::Workload as i32
            && name == "a"
            && r.is_some()));
    }
}
