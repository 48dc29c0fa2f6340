//! Every case of the upstream NetworkPolicy e2e suite (kubernetes/kubernetes
//! `test/e2e/network/netpol/network_policy.go`) in one lab of the upstream model: 3 namespaces
//! × 3 pods over 2 nodes, probed through ClusterIPs with real TCP and UDP clients, each probe
//! a 9×9 matrix compared cell by cell. `NETPOL_CASE=<text>` runs only the cases whose name
//! contains it.

use std::time::Instant;

use mesh_tests::{
    netpol::{model_lab::ModelLab, upstream},
    privileges::privileged,
};

#[test]
fn upstream_network_policy_cases() {
    if !privileged("upstream_network_policy_cases") {
        return;
    }
    let filter = std::env::var("NETPOL_CASE").unwrap_or_default();
    let mut model = ModelLab::start(&[]).expect("the model lab starts");
    let mut failures = Vec::new();
    let mut ran = 0;
    for case in upstream::cases().iter().filter(|c| c.name.contains(&filter)) {
        let started = Instant::now();
        let result = model.run(case);
        eprintln!(
            "{} {} ({} ms)",
            if result.is_ok() { "ok  " } else { "FAIL" },
            case.name,
            started.elapsed().as_millis()
        );
        ran += 1;
        if let Err(err) = result {
            failures.push(format!("--- {}: {err}", case.name));
        }
    }
    assert!(ran > 0, "no case matches NETPOL_CASE={filter:?}");
    assert!(
        failures.is_empty(),
        "{} of {ran} upstream cases failed:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        model.mesh.logs()
    );
}
