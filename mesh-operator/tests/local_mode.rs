//! Local mode on real manifests: translation, derived endpoints, identities, bad input, and
//! incremental re-reads, from files to versioned model updates.

use std::path::Path;

use mesh_common::api::{Kind, Resource, resource};
use mesh_operator::{
    cluster::ClusterView,
    identity::IdentityAllocator,
    local_dir::{LocalDir, ManifestError},
    model_store::ModelStore,
};

const DEMO: &str = include_str!("../../deploy/examples/demo.yaml");

struct Operator {
    dir: LocalDir,
    view: ClusterView,
    store: ModelStore,
}

impl Operator {
    fn load(root: &Path) -> (Self, Vec<ManifestError>) {
        let mut operator = Self {
            dir: LocalDir::new(root),
            view: ClusterView::new(IdentityAllocator::open(None).unwrap()),
            store: ModelStore::new("test".into()),
        };
        let (changes, errors) = operator.dir.load().unwrap();
        operator.commit(changes);
        (operator, errors)
    }

    fn reload(&mut self, paths: &[&Path]) -> Vec<ManifestError> {
        let paths: Vec<_> = paths.iter().map(|p| p.to_path_buf()).collect();
        let (changes, errors) = self.dir.reload(&paths);
        self.commit(changes);
        errors
    }

    fn commit(&mut self, changes: Vec<mesh_operator::local_dir::ObjectChange>) {
        changes.into_iter().for_each(|c| c.apply(&mut self.view));
        let (resources, errors) = self.view.changes();
        assert!(errors.is_empty(), "{errors:?}");
        self.store.commit(resources);
    }

    fn get(&self, kind: Kind, ns: &str, name: &str) -> Option<&Resource> {
        self.store.get(&(kind as i32, ns.into(), name.into()))
    }

    fn slices_of(&self, service: &str) -> Vec<mesh_common::api::EndpointSlice> {
        self.store
            .snapshot()
            .upserts
            .into_iter()
            .filter_map(|r| match r.kind {
                Some(resource::Kind::EndpointSlice(s)) if s.service == service => Some(s),
                _ => None,
            })
            .collect()
    }

    fn identity(&self, pod: &str) -> u32 {
        match &self.get(Kind::Workload, "demo", pod).unwrap().kind {
            Some(resource::Kind::Workload(w)) => w.identity,
            _ => unreachable!(),
        }
    }
}

#[test]
fn the_demo_manifests_become_the_model() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("demo.yaml"), DEMO).unwrap();
    let (operator, errors) = Operator::load(dir.path());
    assert!(errors.is_empty(), "{errors:?}");

    let Some(resource::Kind::Service(web)) = &operator.get(Kind::Service, "demo", "web").unwrap().kind else {
        panic!()
    };
    assert_eq!(web.cluster_ips, vec!["10.96.0.10"]);

    // No EndpointSlice in the files: the endpoints are derived from the selected pods, with
    // the named target port resolved from their container ports.
    let slices = operator.slices_of("web");
    assert_eq!(slices.len(), 1, "{slices:?}");
    assert_eq!(slices[0].ports[0].port, 8080);
    let mut addresses: Vec<&str> = slices[0].endpoints.iter().map(|e| e.addresses[0].as_str()).collect();
    addresses.sort();
    assert_eq!(addresses, vec!["10.244.0.3", "10.244.1.2"]);
    assert!(slices[0].endpoints.iter().all(|e| e.ready && !e.node.is_empty()));

    // Same labels, same identity; other labels, another one.
    assert_eq!(operator.identity("web-a"), operator.identity("web-b"));
    assert_ne!(operator.identity("web-a"), operator.identity("client"));
}

#[test]
fn bad_objects_are_reported_one_by_one_and_the_rest_applies() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("demo.yaml"), DEMO).unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: v1
kind: Service
metadata: {name: bad-port, namespace: demo}
spec: {clusterIP: 10.96.0.11, ports: [{port: 70000}]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cm}
---
apiVersion: v1
kind: Service
metadata: {name: good, namespace: demo}
spec: {clusterIP: 10.96.0.12, ports: [{port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: bad-ip, namespace: demo}
spec: {nodeName: node-0, containers: [{name: c}]}
status: {podIP: 10.244.0.999}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad-selector, namespace: demo}
spec: {podSelector: {matchExpressions: [{key: app, operator: Like, values: [web]}]}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: demo}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
",
    )
    .unwrap();
    std::fs::write(dir.path().join("broken.yaml"), "a: [b\n").unwrap();
    let (operator, errors) = Operator::load(dir.path());
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 5, "{lines:#?}");
    let expect = [
        ("bad.yaml", "Service/demo/bad-port", "spec.ports[0].port"),
        ("bad.yaml", "ConfigMap (apiVersion v1)", "kind"),
        ("bad.yaml", "Pod/demo/bad-ip", "status.podIP"),
        ("bad.yaml", "NetworkPolicy/demo/bad-selector", "spec.podSelector.matchExpressions[0].operator"),
        ("broken.yaml", "(file)", "(syntax)"),
    ];
    for (file, object, field) in expect {
        assert!(
            errors.iter().any(|e| e.file.ends_with(file) && e.object == object && e.field == field),
            "no error for {file} {object} {field}: {lines:#?}"
        );
    }
    assert!(operator.get(Kind::Service, "demo", "good").is_some(), "the valid objects still apply");
    assert!(operator.get(Kind::Service, "demo", "web").is_some());
    assert!(operator.get(Kind::Service, "demo", "bad-port").is_none());
    assert!(operator.get(Kind::NetworkPolicy, "demo", "deny-all").is_some());
    assert!(operator.get(Kind::NetworkPolicy, "demo", "bad-selector").is_none());
}

#[test]
fn changed_files_are_reread_and_only_real_changes_make_versions() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo.yaml");
    std::fs::write(&demo, DEMO).unwrap();
    let (mut operator, _) = Operator::load(dir.path());
    let version = operator.store.version();

    // Rewriting the same content is no change.
    std::fs::write(&demo, DEMO).unwrap();
    assert!(operator.reload(&[&demo]).is_empty());
    assert_eq!(operator.store.version(), version);

    // web-b's label changes: it leaves the service.
    std::fs::write(
        &demo,
        DEMO.replacen("app: web\nspec:\n  nodeName: node-1", "app: old\nspec:\n  nodeName: node-1", 1),
    )
    .unwrap();
    operator.reload(&[&demo]);
    assert_eq!(operator.store.version(), version + 1);
    let slices = operator.slices_of("web");
    assert_eq!(slices[0].endpoints.len(), 1, "{slices:?}");
    assert_eq!(slices[0].endpoints[0].pod, "web-a");

    // An explicit EndpointSlice for the service replaces the derived one.
    let slice = dir.path().join("slice.yaml");
    std::fs::write(
        &slice,
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 9090}]
endpoints: [{addresses: [10.244.1.2], nodeName: node-1, conditions: {ready: true}}]
",
    )
    .unwrap();
    operator.reload(&[&slice]);
    let slices = operator.slices_of("web");
    assert_eq!(slices.len(), 1, "{slices:?}");
    assert_eq!((slices[0].name.as_str(), slices[0].ports[0].port), ("web-1", 9090));

    // The file goes: the derived endpoints come back.
    std::fs::remove_file(&slice).unwrap();
    operator.reload(&[&slice]);
    assert_eq!(operator.slices_of("web")[0].ports[0].port, 8080);
}

#[test]
fn an_invalid_edit_keeps_the_previous_version_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    let policy = |priority: u32| {
        format!(
            "apiVersion: mesh.dev/v1alpha1
kind: MeshPolicy
metadata: {{name: deny-y, namespace: x}}
spec:
  priority: {priority}
  ingress: [{{action: Deny, peers: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}]}}]
"
        )
    };
    std::fs::write(&file, policy(100)).unwrap();
    let (mut operator, errors) = Operator::load(dir.path());
    assert!(errors.is_empty(), "{errors:?}");
    let priority = |operator: &Operator| match &operator.get(Kind::MeshPolicy, "x", "deny-y").map(|r| &r.kind) {
        Some(Some(resource::Kind::MeshPolicy(p))) => Some(p.priority),
        _ => None,
    };
    assert_eq!(priority(&operator), Some(100));
    // Out of range: refused with the field named, and the policy stays as it was.
    std::fs::write(&file, policy(5000)).unwrap();
    let errors = operator.reload(&[&file]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!((errors[0].object.as_str(), errors[0].field.as_str()), ("MeshPolicy/x/deny-y", "spec.priority"));
    assert_eq!(priority(&operator), Some(100));
    // A valid edit applies; removing the file removes it.
    std::fs::write(&file, policy(7)).unwrap();
    assert!(operator.reload(&[&file]).is_empty());
    assert_eq!(priority(&operator), Some(7));
    std::fs::remove_file(&file).unwrap();
    operator.reload(&[&file]);
    assert_eq!(priority(&operator), None);
}

#[test]
fn hostile_manifests_are_refused_in_time_with_the_limit_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("demo.yaml"), DEMO).unwrap();
    let depth = mesh_common::yaml::MAX_DEPTH;
    let hostile = [
        ("brackets.yaml", "[".repeat(100_000), format!("nested deeper than {depth} levels")),
        (
            "maps.yaml",
            "a:\n".to_owned() + &(1..200).map(|i| format!("{}b:\n", "  ".repeat(i))).collect::<String>(),
            format!("nested deeper than {depth} levels"),
        ),
        (
            "laughs.yaml",
            (1..40).fold(String::from("a0: &a0 [x, x]\n"), |text, i| {
                text + &format!("a{i}: &a{i} [*a{p}, *a{p}]\n", p = i - 1)
            }),
            "over a limit".to_owned(),
        ),
    ];
    for (file, text, _) in &hostile {
        std::fs::write(dir.path().join(file), text).unwrap();
    }
    // The real command a user runs, in a debug build.
    let started = std::time::Instant::now();
    let output =
        std::process::Command::new(env!("CARGO_BIN_EXE_mesh-operator")).arg("check").arg(dir.path()).output().unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}{stderr}");
    assert!(elapsed < std::time::Duration::from_secs(5), "took {elapsed:?}");
    for (file, _, message) in &hostile {
        let line = stdout
            .lines()
            .chain(stderr.lines())
            .find(|l| l.contains(file))
            .unwrap_or_else(|| panic!("no error for {file}:\n{stdout}{stderr}"));
        assert!(line.contains(message.as_str()), "{line}");
    }
    // The demo's objects are still read.
    let (operator, _) = Operator::load(dir.path());
    assert!(operator.get(Kind::Service, "demo", "web").is_some());
}
