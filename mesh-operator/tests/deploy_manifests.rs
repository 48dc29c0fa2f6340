//! Every Kubernetes manifest under `deploy/` (CRDs, the operator and agent, examples), and what
//! every kustomize overlay of `deploy/kustomize/overlays` renders (`kubectl kustomize`), is
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
        } else if path.extension().is_some_and(|e| e == "yaml") && !path.ends_with("kustomization.yaml") {
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

/// `kubectl kustomize dir`: the rendered YAML.
fn kustomize(dir: &Path) -> String {
    let output = Command::new("kubectl").arg("kustomize").arg(dir).output().unwrap_or_else(|err| {
        panic!("kubectl cannot run ({err}): `make test` installs it (Debian's kubernetes-client)")
    });
    assert!(
        output.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The rendered objects of one kind.
fn of_kind<'a>(objects: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// The value of env variable `name` of the first container of a workload.
fn env<'a>(workload: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    workload["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
}

#[test]
fn every_kustomize_overlay_renders_and_validates() {
    let overlays = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kustomize/overlays");
    let mut names: Vec<String> =
        std::fs::read_dir(&overlays).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["default", "local-demo", "production"]);
    let out = tempfile::tempdir().unwrap();
    for name in &names {
        let rendered = kustomize(&overlays.join(name));
        let file = out.path().join(format!("{name}.yaml"));
        std::fs::write(&file, &rendered).unwrap();
        let output = validate(std::slice::from_ref(&file));
        let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success() && report.contains("passed"), "overlay {name}:\n{report}");
        let objects: Vec<serde_json::Value> = mesh_common::yaml::documents(&rendered).unwrap();
        // Every overlay installs the whole mesh: its CRDs, one operator, one agent DaemonSet,
        // with the images `cargo xtask image` builds.
        assert_eq!(of_kind(&objects, "CustomResourceDefinition").len(), mesh_operator::crd::all().len(), "{name}");
        let [operator] = of_kind(&objects, "Deployment")[..] else { panic!("{name}: not one Deployment") };
        let [agent] = of_kind(&objects, "DaemonSet")[..] else { panic!("{name}: not one DaemonSet") };
        let image = |w: &serde_json::Value| w["spec"]["template"]["spec"]["containers"][0]["image"].clone();
        assert_eq!(image(operator), "mesh/mesh-operator:0.1.0", "{name}");
        assert_eq!(image(agent), "mesh/mesh-agent:0.1.0", "{name}");
        // The trust domain: operator and agents agree, and it is a valid one.
        let (theirs, ours) = (env(operator, "MESH_TRUST_DOMAIN"), env(agent, "MESH_TRUST_DOMAIN"));
        assert_eq!(theirs, ours, "{name}: the operator's and the agents' trust domains differ");
        if let Some(domain) = ours {
            domain.parse::<mesh_common::identity::TrustDomain>().unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let args = operator["spec"]["template"]["spec"]["containers"][0]["args"].as_array().unwrap();
        match name.as_str() {
            "production" => {
                assert_eq!(ours, Some("prod.example.com"));
                for key in ["MESH_SERVICES_MAX", "MESH_BACKENDS_MAX", "MESH_POLICY_MAX", "MESH_CONNTRACK_MAX"] {
                    let value: u32 = env(agent, key).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{key}"));
                    assert!(value > 0 && value <= 1 << 24, "{key}: {value}");
                }
            }
            "local-demo" => {
                // The operator follows the demo's manifests from a ConfigMap; nothing refers
                // to the TLS bootstrap, which local mode does not serve.
                assert_eq!(args[0], "local");
                let [manifests] = &of_kind(&objects, "ConfigMap")[..] else { panic!("local-demo: no ConfigMap") };
                for (file, text) in manifests["data"].as_object().unwrap() {
                    let (parsed, errors) = mesh_operator::local_dir::parse_text(file, text.as_str().unwrap());
                    assert!(errors.is_empty() && !parsed.is_empty(), "{file}: {errors:?}");
                }
                assert!(!rendered.contains("MESH_TLS_DIR") && !rendered.contains("name: mesh-ca\n"), "{rendered}");
                assert!(env(agent, "MESH_OPERATOR").is_some_and(|o| o.starts_with("http://")));
            }
            _ => assert_eq!(args[0], "cluster", "{name}"),
        }
    }
}
