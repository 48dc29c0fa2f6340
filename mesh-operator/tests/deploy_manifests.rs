//! Every Kubernetes manifest under `deploy/` (CRDs, the operator and agent, examples) is
//! valid against the Kubernetes schemas, checked with the real validator (PyPI's
//! `kubernetes-validate`, installed by `make test`).

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
    for dir in ["crds", "kubernetes", "examples"] {
        manifests(&deploy.join(dir), &mut files);
    }
    assert!(files.len() >= 5, "{files:?}");
    let output = validate(&files);
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{report}");
    for file in &files {
        assert!(
            report.contains(&format!("{} passed", file.display())),
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
