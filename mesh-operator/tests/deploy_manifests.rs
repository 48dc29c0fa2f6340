//! Every Kubernetes manifest under `deploy/` (CRDs, the operator and agent, examples) is
//! valid against the Kubernetes schemas, checked with the real validator (PyPI's
//! `kubernetes-validate`, installed by `make test`). The project's own resources, which that
//! validator has no schema for, are checked by the operator's parser (the Rust types the CRDs
//! are generated from, and the operator's validation).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

const VALIDATOR: &str = "kubernetes-validate";
const KUBERNETES_VERSION: &str = "1.34.0";

fn validate(files: &[PathBuf]) -> std::process::Output {
    Command::new(VALIDATOR).args(["--strict", "-k", KUBERNETES_VERSION]).args(files).output().unwrap_or_else(|err| {
        panic!("{VALIDATOR} cannot run ({err}): `make test` installs it (pip install kubernetes-validate)")
    })
}

fn manifests(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            manifests(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
}

#[test]
fn every_manifest_in_deploy_passes_the_kubernetes_schemas() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut files = Vec::new();
    // deploy/static holds the agent's own state-file format, not Kubernetes objects.
    for dir in ["crds", "kubernetes", "examples", "mtls"] {
        manifests(&deploy.join(dir), &mut files);
    }
    assert!(files.len() >= 5, "{files:?}");
    // The project's own resources go to the operator's parser; the rest of their files to the
    // validator as well (it skips, with a warning, what it has no schema for).
    for file in files.iter().filter(|f| std::fs::read_to_string(f).unwrap().contains("apiVersion: mesh.dev/")) {
        let (objects, errors) = mesh_operator::local_dir::parse_file(file);
        assert!(errors.is_empty(), "{}: {errors:?}", file.display());
        let ours = |kind: &str| kind.contains("MeshPolicy") || kind == "PeerAuthentication";
        assert!(objects.iter().any(|(key, _, _)| ours(key.kind)), "{}", file.display());
    }
    let output = validate(&files);
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{report}");
    for file in &files {
        let kubernetes_only = !std::fs::read_to_string(file).unwrap().contains("apiVersion: mesh.dev/");
        assert!(
            !kubernetes_only || report.contains(&format!("{} passed", file.display())),
            "{} was not validated:\n{report}",
            file.display()
        );
    }
}

#[test]
fn the_validator_rejects_an_invalid_manifest() {
    // The control: the same validator, a DaemonSet with a wrongly typed field.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: x}\nspec:\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      hostNetwork: yes-please\n      containers: [{name: c, image: i}]\n",
    )
    .unwrap();
    assert!(!validate(&[bad]).status.success(), "a DaemonSet with hostNetwork: yes-please passed");
}
