//! The project's MeshPolicy and ClusterMeshPolicy in the lab of the upstream model (3
//! namespaces × 3 pods over 2 nodes, probed through ClusterIPs): explicit denies win over
//! NetworkPolicy allows, priorities order rules, cluster-scoped policies select across
//! namespaces, audit mode reports without dropping; an invalid update leaves the policy in
//! force; a policy that does not fit the map is refused and the previous state stays.

use mesh_common::policy::{AUDIT, DENY, EGRESS, INGRESS, reason};
use mesh_tests::{
    netpol::{
        Case, Protocol, Reachability, Step, in_namespace,
        model_lab::{ModelLab, verdicts},
        pod,
    },
    privileges::privileged,
};

const ALLOW_ALL_TO_XA: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{}]
";

fn deny_y(priority: u32) -> String {
    format!(
        "apiVersion: mesh.dev/v1alpha1
kind: MeshPolicy
metadata: {{name: deny-y, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  priority: {priority}
  ingress:
    - action: Deny
      peers: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}]
"
    )
}

const ALLOW_Y_B: &str = "apiVersion: mesh.dev/v1alpha1
kind: MeshPolicy
metadata: {name: allow-y-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  priority: 50
  ingress:
    - action: Allow
      peers: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]
";

fn z_egress(name: &str, mode: &str) -> String {
    format!(
        "apiVersion: mesh.dev/v1alpha1
kind: ClusterMeshPolicy
metadata: {{name: {name}}}
spec:
  namespaceSelector: {{matchLabels: {{ns: z}}}}
  priority: 10
  mode: {mode}
  egress: [{{action: Deny}}]
"
    )
}

fn probe(expect: Reachability) -> Step {
    Step::Probe { port: 80, protocol: Protocol::Tcp, expect }
}

fn run(model: &mut ModelLab, case: &Case) {
    if let Err(err) = model.run(case) {
        panic!("{}: {err}\n{}", case.name, model.mesh.logs());
    }
}

#[test]
fn deny_priority_cluster_scope_and_audit() {
    if !privileged("deny_priority_cluster_scope_and_audit") {
        return;
    }
    let mut model = ModelLab::start(&[]).expect("the model lab starts");
    let y_blocked = Reachability::new(true).expect_peer(in_namespace("y"), pod("x", "a"), false);
    run(
        &mut model,
        &Case {
            name: "a deny wins over a NetworkPolicy allow; a lower priority allow wins over the deny",
            steps: vec![
                Step::Apply(format!("{ALLOW_ALL_TO_XA}---\n{}", deny_y(100))),
                probe(y_blocked.clone()),
                // An invalid update (priority out of range) is refused: the deny stays.
                Step::Apply(deny_y(5000)),
                probe(y_blocked.clone()),
                Step::Apply(deny_y(100)),
                // allow-y-b (priority 50) decides before deny-y (100): y/b is let in again.
                Step::Apply(ALLOW_Y_B.into()),
                probe(y_blocked.clone().expect("y/b", "x/a", true)),
                // Without the NetworkPolicy, allow-y-b's allow isolates x/a: the rest is denied.
                Step::Delete { namespace: "x", name: "allow-all" },
                probe(Reachability::new(true).expect_all_ingress(pod("x", "a"), false).expect("y/b", "x/a", true)),
            ],
        },
    );
    let counted = verdicts(&model.lab).expect("the verdict counters");
    let flows = |action, reason, direction| counted.get(&(action, reason, direction)).copied().unwrap_or(0);
    assert!(
        flows(DENY, reason::POLICY_DENY, INGRESS) > 0,
        "explicit denies are counted with their reason: {counted:?}"
    );
    assert!(flows(DENY, reason::POLICY_DENIED, INGRESS) > 0, "default denies are counted with theirs: {counted:?}");

    run(
        &mut model,
        &Case {
            name: "a ClusterMeshPolicy selects pods by namespace labels",
            steps: vec![
                Step::Apply(z_egress("no-z-egress", "Enforce")),
                probe(Reachability::new(true).expect_all_egress(in_namespace("z"), false)),
            ],
        },
    );
    let before = verdicts(&model.lab).expect("the verdict counters");
    run(
        &mut model,
        &Case {
            name: "the same policy in audit mode drops nothing",
            steps: vec![Step::Apply(z_egress("audit-z-egress", "Audit")), probe(Reachability::new(true))],
        },
    );
    let after = verdicts(&model.lab).expect("the verdict counters");
    let audited = |v: &std::collections::BTreeMap<(u8, u8, u8), u64>| v.get(&(AUDIT, 0, EGRESS)).copied().unwrap_or(0);
    // z's three pods each reach the eight others (their own is never judged).
    assert!(
        audited(&after) - audited(&before) >= 24,
        "z's egress flows are reported as audit: before {before:?}, after {after:?}"
    );
}

#[test]
fn a_policy_that_does_not_fit_is_refused_and_the_previous_stays() {
    if !privileged("a_policy_that_does_not_fit_is_refused_and_the_previous_stays") {
        return;
    }
    let mut model = ModelLab::start(&["--policy-max", "64"]).expect("the model lab starts");
    let y_blocked = Reachability::new(true).expect_peer(in_namespace("y"), pod("x", "a"), false);
    // 1-65534 is 30 prefixes per peer; over x's three pods on two nodes, more than 64 on one.
    let big = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: big, namespace: z}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 1, endPort: 65534}, {port: 1, endPort: 65534, protocol: UDP}]}]
";
    run(
        &mut model,
        &Case {
            name: "overflow",
            steps: vec![
                Step::Apply(format!("{ALLOW_ALL_TO_XA}---\n{}", deny_y(100))),
                probe(y_blocked.clone()),
                Step::Apply(big.into()),
                // z is not isolated (the big policy never applied); the deny is still in force.
                probe(y_blocked),
            ],
        },
    );
    let logs = model.mesh.logs();
    assert!(
        logs.contains("MESH_POLICY_MAX")
            && logs.contains("NetworkPolicy z/big")
            && logs.contains("nothing was applied"),
        "the refusal names the key and the policy:\n{logs}"
    );
}
