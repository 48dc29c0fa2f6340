//! `cargo xtask fuzz`: every fuzz target of `fuzz/` under libFuzzer (`cargo fuzz`, installed
//! if missing), each for `--runs` executions, with corpora seeded from the project's own
//! inputs (deploy/examples, deploy/static, the examples' model as a state update). Prints
//! executions and findings per target and writes `target/bench/fuzz.json`; fails on a finding
//! (its input is left under `fuzz/artifacts/<target>/`).

use std::path::Path;

use anyhow::{Context as _, bail};
use prost::Message as _;

use crate::{
    bench::{Report, Row},
    cargo,
};

/// The targets, each with what it reads.
pub const TARGETS: [(&str, &str); 9] = [
    ("manifests", "manifests of every kind local mode reads, YAML and JSON, multi-document"),
    ("state_update", "state stream messages, decoded and applied as an agent does"),
    ("flow_request", "Observer GetFlows requests and their filters"),
    ("state_file", "the agent's static state file"),
    ("agent_config", "the agent's command line"),
    ("csr", "certificate signing requests, as the workload CA reads them"),
    ("certificate_answer", "the workload CA's answers, as an agent checks them"),
    (
        "tunnel_request",
        "tunnel CONNECTs (client leaf, server name, target, Forwarded), as the receiving agent judges them",
    ),
    (
        "http_request",
        "HTTP requests from pods (method, target, headers), as the L7 proxy routes, rewrites and traces them",
    ),
];

pub fn run(runs: u64, only: Option<&str>) -> anyhow::Result<()> {
    let root = cargo::workspace_root();
    ensure_cargo_fuzz()?;
    let fuzz_dir = root.join("fuzz");
    // The same dependency versions as the workspace.
    std::fs::copy(root.join("Cargo.lock"), fuzz_dir.join("Cargo.lock")).context("copying Cargo.lock into fuzz/")?;
    seed(&root)?;
    let mut rows = Vec::new();
    let mut findings = Vec::new();
    for (target, what) in TARGETS.iter().filter(|(t, _)| only.is_none_or(|o| o == *t)) {
        println!("==> fuzz {target}: {what}");
        let output = std::process::Command::new("cargo")
            .current_dir(&fuzz_dir)
            // cargo-fuzz passes nightly flags (-Z); the pinned stable toolchain takes them so.
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", target, "--sanitizer", "none", "--release", "--"])
            .arg(format!("-runs={runs}"))
            .args(["-timeout=10", "-rss_limit_mb=2048", "-max_len=262144", "-print_final_stats=1"])
            .output()
            .context("running cargo fuzz")?;
        let log = String::from_utf8_lossy(&output.stderr);
        std::fs::write(root.join(format!("target/bench/fuzz-{target}.log")), log.as_bytes())?;
        let executions = log
            .lines()
            .rev()
            .filter_map(|line| line.strip_prefix("stat::number_of_executed_units:"))
            .find_map(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let crashed = !output.status.success();
        println!(
            "    {executions} executions, {}",
            if crashed { "a finding (see fuzz/artifacts)" } else { "no finding" }
        );
        if crashed {
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            println!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            findings.push((*target).to_owned());
        }
        let row = |metric: &str, value: f64| Row {
            case: (*target).into(),
            scale: runs,
            metric: metric.into(),
            value,
            unit: "count".into(),
            baseline: None,
            ratio: None,
        };
        rows.push(row("executions", executions as f64));
        rows.push(row("findings", f64::from(u8::from(crashed))));
    }
    let report = Report { bench: "fuzz".into(), rows, notes: Vec::new() };
    report.print();
    report.write()?;
    if !findings.is_empty() {
        bail!("fuzzing found inputs that break {findings:?}: their inputs are in fuzz/artifacts/");
    }
    Ok(())
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let found =
        std::process::Command::new("cargo").args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success());
    if !found {
        println!("==> installing cargo-fuzz (cargo install cargo-fuzz --locked)");
        cargo::run(&["install", "cargo-fuzz", "--locked", "--version", "0.13.1"], &[])?;
    }
    Ok(())
}

/// Seeds each target's corpus from the project's own inputs.
fn seed(root: &Path) -> anyhow::Result<()> {
    let corpus = |target: &str| -> anyhow::Result<std::path::PathBuf> {
        let dir = root.join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    };
    let mut manifests = Vec::new();
    for dir in ["deploy/examples", "deploy/mtls", "deploy/l7", "deploy/crds", "deploy/kubernetes"] {
        for entry in std::fs::read_dir(root.join(dir)).with_context(|| format!("reading {dir}"))? {
            let path = entry?.path();
            manifests
                .push((path.file_name().unwrap_or_default().to_string_lossy().into_owned(), std::fs::read(&path)?));
        }
    }
    // Kinds no file of deploy/ has an object of.
    let peer = "apiVersion: mesh.dev/v1alpha1\nkind: PeerAuthentication\nmetadata: {name: web, namespace: demo}\nspec:\n  selector: {matchLabels: {app: web}}\n  mtls: {mode: STRICT}\n  portLevelMtls: {'9090': {mode: PERMISSIVE}}\n";
    manifests.push(("peer-authentication.yaml".to_owned(), peer.as_bytes().to_vec()));
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web-canary, namespace: demo}\nspec:\n  parentRefs: [{group: '', kind: Service, name: web, port: 80}]\n  rules:\n  - matches: [{path: {type: RegularExpression, value: '/v[0-9]+/.*'}, headers: [{name: x-canary, value: 'yes'}], method: GET}]\n    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-route, value: canary}]}}]\n    backendRefs: [{name: web, port: 80, weight: 98}, {name: web, port: 80, weight: 2}]\n    timeouts: {request: 10s}\n";
    manifests.push(("http-route.yaml".to_owned(), route.as_bytes().to_vec()));
    let north = "apiVersion: v1\nkind: Service\nmetadata: {name: north, namespace: demo, annotations: {mesh.dev/lb-mode: dsr}}\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.50\n  selector: {app: web}\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32100\n  externalIPs: [198.51.100.7]\n  loadBalancerSourceRanges: [203.0.113.0/24, 2001:db8::/32]\n  sessionAffinity: ClientIP\n  ports: [{port: 80, targetPort: 8080, nodePort: 30080, protocol: TCP}]\nstatus: {loadBalancer: {ingress: [{ip: 192.0.2.10}]}}\n---\n";
    manifests.push(("service-from-outside.yaml".to_owned(), north.as_bytes().to_vec()));
    for (name, text) in &manifests {
        std::fs::write(corpus("manifests")?.join(name), text)?;
    }
    let state = std::fs::read(root.join("deploy/static/web-state.yaml"))?;
    std::fs::write(corpus("state_file")?.join("web-state.yaml"), &state)?;
    // The examples' model, as the operator streams it.
    let upserts: Vec<mesh_common::api::Resource> = manifests
        .iter()
        .filter(|(name, _)| name.ends_with(".yaml"))
        .flat_map(|(_, text)| mesh_operator::local_dir::model_of_text(&String::from_utf8_lossy(text)).0)
        .collect();
    // A workload CA: its root in the state update's trust bundle (as every full snapshot of an
    // operator with a CA has), and a CSR and answer below.
    use mesh_common::identity::{SpiffeId, TrustDomain, csr_for};
    let ca_dir = root.join("target/fuzz-seed-ca");
    let _ = std::fs::remove_dir_all(&ca_dir);
    let ca = mesh_operator::workload_ca::WorkloadCa::open(
        &ca_dir,
        TrustDomain::default(),
        std::time::Duration::from_secs(3600),
    )?;
    let workload_roots = vec![ca.root_pem().to_owned()];
    let update = mesh_common::api::StateUpdate {
        epoch: "e".into(),
        version: 1,
        full: true,
        upserts,
        workload_roots,
        ..Default::default()
    };
    std::fs::write(corpus("state_update")?.join("examples"), update.encode_to_vec())?;
    let request = mesh_common::hubble::observer::GetFlowsRequest {
        whitelist: vec![mesh_common::hubble::flow::FlowFilter {
            source_pod: vec!["demo/client".into()],
            destination_ip: vec!["10.96.0.0/12".into()],
            destination_port: vec!["80".into()],
            source_label: vec!["app in (web,client)".into()],
            ..Default::default()
        }],
        ..Default::default()
    };
    std::fs::write(corpus("flow_request")?.join("example"), request.encode_to_vec())?;
    // A CSR as agents make them and the CA's answer to it; each as text and as DER (the
    // targets' first byte says which).
    // The identity the agent's check expects (`mesh_agent::untrusted::ANSWER_IDENTITY`).
    let (_, csr) = csr_for(&SpiffeId::new(TrustDomain::default(), "demo", "web")?)?;
    let (chain, _) = ca.sign(ca.read_csr(&csr)?, std::time::Duration::from_secs(3600))?;
    std::fs::remove_dir_all(&ca_dir)?;
    let der = |text: &str| -> anyhow::Result<Vec<u8>> { Ok(pem::parse(text)?.into_contents()) };
    std::fs::write(corpus("csr")?.join("pem"), [b"\0".as_slice(), csr.as_bytes()].concat())?;
    std::fs::write(corpus("csr")?.join("der"), [b"\x01".as_slice(), &der(&csr)?].concat())?;
    let answer = mesh_common::istio_ca::IstioCertificateResponse { cert_chain: chain.clone() }.encode_to_vec();
    std::fs::write(corpus("certificate_answer")?.join("answer"), [b"\0".as_slice(), &answer].concat())?;
    std::fs::write(corpus("certificate_answer")?.join("leaf"), [b"\x01".as_slice(), &der(&chain[0])?].concat())?;
    // A CONNECT to the pod `mesh_agent::untrusted::tunnel_request` judges for, under its
    // identity's server name (`mesh_agent::tunnel::tls::server_name`).
    let (name, target, forwarded) = ("demo.web.hbone.mesh.internal", "10.244.0.2:8080", "for=\"10.244.1.7:40000\"");
    let lengths = [name.len() as u8, target.len() as u8, forwarded.len() as u8];
    let request =
        [lengths.as_slice(), name.as_bytes(), target.as_bytes(), forwarded.as_bytes(), &der(&chain[0])?].concat();
    std::fs::write(corpus("tunnel_request")?.join("connect"), request)?;
    let args = ["--node-name", "node-0", "--cgroup", "/sys/fs/cgroup", "--operator", "http://127.0.0.1:15150"];
    std::fs::write(corpus("agent_config")?.join("example"), args.join("\0"))?;
    Ok(())
}
