//! The cases of upstream network_policy.go (kubernetes/kubernetes test/e2e/network/netpol), in file order, as lab
//! steps.
//!
//! One [`Case`] per upstream `It`: the 42 of "NetworkPolicy between server and client", then the 3 of "... using
//! UDP" and the 3 of "... using SCTP" (`[Feature:SCTPConnectivity]`). The UDP and SCTP contexts reuse the TCP
//! contexts' `It` texts, so those names carry a ` (UDP)` / ` (SCTP)` suffix to stay unique.
//!
//! Policies are written as the Go objects upstream builds them: `SetSpecIngressRules` / `SetSpecEgressRules`
//! append `Ingress` / `Egress` to `policyTypes` (in call order) and set the rule list, empty when called without
//! rules; a nil protocol is left out (the API server defaults it to TCP); `{ip:ns/pod}` stands for a pod's IP.
//!
//! Upstream now gives every test only the pods it needs ("x/a", "x/b", ...); the lab always runs the full 3×3
//! model, as upstream itself did before that change. Where a reduced topology let upstream leave out an
//! expectation that the 9-pod model needs, the expectation of the 9-pod upstream version is added and marked.
//! Upstream's namespaces carry only `kubernetes.io/metadata.name` (the lab's extra `ns: <name>` label is not
//! selected by any upstream policy), and its `DeferCleanup` label resets are not needed: every case starts fresh.

use super::*;

/// The case `name` with `steps`.
fn case(name: &'static str, steps: Vec<Step>) -> Case {
    Case { name, steps }
}

/// A NetworkPolicy document `namespace/name` whose spec is `spec`: block YAML, indented as convenient (the common
/// indentation is removed; blank lines are dropped).
fn np(namespace: &str, name: &str, spec: &str) -> String {
    let lines: Vec<&str> = spec.lines().filter(|l| !l.trim().is_empty()).collect();
    let indent = lines.iter().map(|l| l.len() - l.trim_start().len()).min().unwrap_or(0);
    let mut doc = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n"
    );
    for line in lines {
        doc.push_str("  ");
        doc.push_str(&line[indent..]);
        doc.push('\n');
    }
    doc
}

/// Applies one NetworkPolicy.
fn apply(namespace: &str, name: &str, spec: &str) -> Step {
    Step::Apply(np(namespace, name, spec))
}

/// A probe on `port`/`protocol` expecting `expect`.
fn probe(port: u16, protocol: Protocol, expect: Reachability) -> Step {
    Step::Probe { port, protocol, expect }
}

/// Everything reachable (upstream `NewReachability(AllPodStrings(), true)`).
fn all() -> Reachability {
    Reachability::new(true)
}

/// The `Peer` matching every pod (upstream `&Peer{}`).
fn any() -> Peer {
    Peer::default()
}

/// Every case, in upstream file order.
pub fn cases() -> Vec<Case> {
    let mut cases = tcp_cases();
    cases.extend(udp_cases());
    cases.extend(sctp_cases());
    cases
}

/// `Context("NetworkPolicy between server and client")`.
fn tcp_cases() -> Vec<Case> {
    use Protocol::{Tcp, Udp};
    vec![
        case(
            "should support a 'default-deny-ingress' policy",
            vec![
                apply(
                    "x",
                    "deny-ingress",
                    r"
                    podSelector: {}
                    policyTypes: [Ingress]
                    ingress: []
                    ",
                ),
                probe(80, Tcp, all().expect_peer(any(), in_namespace("x"), false)),
            ],
        ),
        case(
            "should support a 'default-deny-all' policy",
            vec![
                apply(
                    "x",
                    "deny-all",
                    r"
                    podSelector: {}
                    policyTypes: [Ingress, Egress]
                    ingress: []
                    egress: []
                    ",
                ),
                probe(
                    80,
                    Tcp,
                    all().expect_peer(any(), in_namespace("x"), false).expect_peer(in_namespace("x"), any(), false),
                ),
            ],
        ),
        case(
            "should enforce policy to allow traffic from pods within server namespace based on PodSelector",
            vec![
                apply(
                    "x",
                    "x-a-allows-x-b",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - podSelector: {matchLabels: {pod: b}}
                    ",
                ),
                probe(80, Tcp, all().expect_all_ingress(pod("x", "a"), false).expect("x/b", "x/a", true)),
            ],
        ),
        case(
            "should enforce policy to allow ingress traffic for a target",
            vec![
                apply(
                    "x",
                    "deny-all",
                    r"
                    podSelector: {}
                    policyTypes: [Ingress]
                    ingress: []
                    ",
                ),
                apply(
                    "x",
                    "allow-all-to-a",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - podSelector: {}
                            namespaceSelector: {}
                    ",
                ),
                probe(
                    80,
                    Tcp,
                    all()
                        .expect_all_ingress(pod("x", "a"), true)
                        .expect_all_ingress(pod("x", "b"), false)
                        // 9-pod model (upstream's reduced topology has no x/c here).
                        .expect_all_ingress(pod("x", "c"), false),
                ),
            ],
        ),
        case(
            "should enforce policy to allow ingress traffic from pods in all namespaces",
            vec![
                apply(
                    "x",
                    "allow-from-another-ns",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - namespaceSelector: {}
                    ",
                ),
                probe(80, Tcp, all()),
            ],
        ),
        case(
            "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector",
            vec![
                apply(
                    "x",
                    "allow-client-a-via-ns-selector",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
                    ",
                ),
                probe(
                    80,
                    Tcp,
                    all()
                        // disallow all traffic from the x or z namespaces
                        .expect_peer(in_namespace("x"), pod("x", "a"), false)
                        .expect_peer(in_namespace("z"), pod("x", "a"), false),
                ),
            ],
        ),
        case(
            "should enforce policy based on PodSelector with MatchExpressions",
            vec![
                apply(
                    "x",
                    "x-a-allows-x-b",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - podSelector:
                              matchExpressions:
                                - {key: pod, operator: In, values: [b]}
                    ",
                ),
                probe(80, Tcp, all().expect_all_ingress(pod("x", "a"), false).expect("x/b", "x/a", true)),
            ],
        ),
        case(
            "should enforce policy based on NamespaceSelector with MatchExpressions",
            vec![
                apply(
                    "x",
                    "allow-ns-y-match-selector",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - namespaceSelector:
                              matchExpressions:
                                - {key: kubernetes.io/metadata.name, operator: In, values: [y]}
                    ",
                ),
                probe(
                    80,
                    Tcp,
                    all()
                        // disallow all traffic from the x or z namespaces
                        .expect_peer(in_namespace("x"), pod("x", "a"), false)
                        .expect_peer(in_namespace("z"), pod("x", "a"), false),
                ),
            ],
        ),
        case(
            "should enforce policy based on PodSelector or NamespaceSelector",
            vec![
                apply(
                    "x",
                    "allow-ns-y-match-selector",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - namespaceSelector:
                              matchExpressions:
                                - {key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}
                          - podSelector: {matchLabels: {pod: b}}
                    ",
                ),
                probe(80, Tcp, all().expect("x/a", "x/a", false).expect("x/c", "x/a", false)),
            ],
        ),
        case(
            "should enforce policy based on PodSelector and NamespaceSelector",
            vec![
                apply(
                    "x",
                    "allow-ns-y-podselector-and-nsselector",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - namespaceSelector:
                              matchExpressions:
                                - {key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}
                            podSelector: {matchLabels: {pod: b}}
                    ",
                ),
                probe(
                    80,
                    Tcp,
                    all()
                        .expect_all_ingress(pod("x", "a"), false)
                        .expect("y/b", "x/a", true)
                        .expect("z/b", "x/a", true),
                ),
            ],
        ),
        case(
            "should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
            vec![
                apply(
                    "x",
                    "allow-ns-y-z-pod-b-c",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - namespaceSelector:
                              matchExpressions:
                                - {key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}
                            podSelector:
                              matchExpressions:
                                - {key: pod, operator: In, values: [b, c]}
                    ",
                ),
                probe(
                    80,
                    Tcp,
                    all()
                        .expect_peer(in_namespace("x"), pod("x", "a"), false)
                        .expect("y/a", "x/a", false)
                        // 9-pod model (upstream's reduced topology has no z/a here).
                        .expect("z/a", "x/a", false),
                ),
            ],
        ),
        case(
            "should enforce policy based on any PodSelectors",
            vec![
                apply(
                    "x",
                    "allow-ns-x-pod-b-c",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - podSelector: {matchLabels: {pod: b}}
                          - podSelector: {matchLabels: {pod: c}}
                    ",
                ),
                probe(
                    80,
                    Tcp,
                    all()
                        .expect_all_ingress(pod("x", "a"), false)
                        .expect("x/b", "x/a", true)
                        .expect("x/c", "x/a", true),
                ),
            ],
        ),
        case(
            "should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and \
             NamespaceSelector",
            vec![
                apply(
                    "x",
                    "allow-ns-y-pod-a-via-namespace-pod-selector",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
                            podSelector: {matchLabels: {pod: a}}
                    ",
                ),
                probe(80, Tcp, all().expect_all_ingress(pod("x", "a"), false).expect("y/a", "x/a", true)),
            ],
        ),
        case(
            "should enforce policy based on Ports",
            vec![
                apply(
                    "x",
                    "allow-client-a-via-ns-selector",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
                        ports:
                          - {port: 81, protocol: TCP}
                    ",
                ),
                probe(
                    81,
                    Tcp,
                    all()
                        .expect_peer(in_namespace("x"), pod("x", "a"), false)
                        .expect_peer(in_namespace("y"), pod("x", "a"), true)
                        .expect_peer(in_namespace("z"), pod("x", "a"), false),
                ),
            ],
        ),
        case("should enforce multiple, stacked policies with overlapping podSelectors", {
            let allow = all()
                .expect_peer(in_namespace("x"), pod("x", "a"), false)
                .expect_peer(in_namespace("y"), pod("x", "a"), true)
                .expect_peer(in_namespace("z"), pod("x", "a"), false);
            vec![
                apply(
                    "x",
                    "allow-client-a-via-ns-selector",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
                        ports:
                          - {port: 81, protocol: TCP}
                    ",
                ),
                probe(81, Tcp, allow.clone()),
                probe(80, Tcp, all().expect_all_ingress(pod("x", "a"), false)),
                apply(
                    "x",
                    "allow-client-a-via-ns-selector-80",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
                        ports:
                          - {port: 80, protocol: TCP}
                    ",
                ),
                probe(80, Tcp, allow),
            ]
        }),
        case(
            "should support allow-all policy",
            vec![
                apply(
                    "x",
                    "allow-all",
                    r"
                    podSelector: {}
                    policyTypes: [Ingress]
                    ingress:
                      - {}
                    ",
                ),
                probe(80, Tcp, all()),
                probe(81, Tcp, all()),
            ],
        ),
        case(
            "should allow ingress access on one named port",
            vec![
                apply(
                    "x",
                    "allow-all",
                    r"
                    podSelector: {}
                    policyTypes: [Ingress]
                    ingress:
                      - ports:
                          - port: serve-81-tcp
                    ",
                ),
                probe(81, Tcp, all()),
                probe(80, Tcp, all().expect_peer(any(), in_namespace("x"), false)),
            ],
        ),
        case(
            "should allow ingress access from namespace on one named port",
            vec![
                apply(
                    "x",
                    "allow-client-a-via-ns-selector-80",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
                        ports:
                          - {port: serve-80-tcp, protocol: TCP}
                    ",
                ),
                probe(
                    80,
                    Tcp,
                    all()
                        // disallow all traffic from the x or z namespaces
                        .expect_peer(in_namespace("x"), pod("x", "a"), false)
                        .expect_peer(in_namespace("z"), pod("x", "a"), false),
                ),
                probe(81, Tcp, all().expect_all_ingress(pod("x", "a"), false)),
            ],
        ),
        case(
            "should allow egress access on one named port",
            vec![
                apply(
                    "x",
                    "allow-egress",
                    r"
                    podSelector: {}
                    policyTypes: [Egress]
                    egress:
                      - ports:
                          - port: serve-80-tcp
                    ",
                ),
                probe(80, Tcp, all()),
                probe(81, Tcp, all().expect_peer(in_namespace("x"), any(), false)),
            ],
        ),
        case(
            "should enforce updated policy",
            vec![
                apply(
                    "x",
                    "allow-all-mutate-to-deny-all",
                    r"
                    podSelector: {}
                    policyTypes: [Ingress]
                    ingress:
                      - {}
                    ",
                ),
                probe(81, Tcp, all()),
                // UpdatePolicy: the same object with `Spec.Ingress = []`.
                apply(
                    "x",
                    "allow-all-mutate-to-deny-all",
                    r"
                    podSelector: {}
                    policyTypes: [Ingress]
                    ingress: []
                    ",
                ),
                probe(81, Tcp, all().expect_peer(any(), in_namespace("x"), false)),
            ],
        ),
        case(
            "should allow ingress access from updated namespace",
            vec![
                apply(
                    "x",
                    "allow-client-a-via-ns-selector",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - namespaceSelector: {matchLabels: {ns2: updated}}
                    ",
                ),
                probe(80, Tcp, all().expect_all_ingress(pod("x", "a"), false)),
                // AddNamespaceLabel(y, ns2=updated): adds to the existing labels.
                Step::NamespaceLabels {
                    namespace: "y",
                    labels: vec![("kubernetes.io/metadata.name", "y"), ("ns", "y"), ("ns2", "updated")],
                },
                probe(
                    80,
                    Tcp,
                    all().expect_all_ingress(pod("x", "a"), false).expect_peer(in_namespace("y"), any(), true),
                ),
            ],
        ),
        case(
            "should allow ingress access from updated pod",
            vec![
                apply(
                    "x",
                    "allow-client-a-via-pod-selector",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - podSelector: {matchLabels: {pod: b, pod2: updated}}
                    ",
                ),
                probe(80, Tcp, all().expect_all_ingress(pod("x", "a"), false)),
                // AddPodLabels(x/b, {pod: b, pod2: updated}): merged into the existing labels.
                Step::PodLabels { pod: "x/b", labels: vec![("pod", "b"), ("pod2", "updated")] },
                probe(80, Tcp, all().expect_all_ingress(pod("x", "a"), false).expect("x/b", "x/a", true)),
            ],
        ),
        case(
            "should deny ingress from pods on other namespaces",
            vec![
                apply(
                    "x",
                    "deny-empty-policy",
                    r"
                    podSelector: {}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - podSelector: {}
                    ",
                ),
                probe(
                    80,
                    Tcp,
                    all()
                        // disallow all traffic from the y or z namespaces to x
                        .expect_peer(in_namespace("y"), in_namespace("x"), false)
                        .expect_peer(in_namespace("z"), in_namespace("x"), false),
                ),
            ],
        ),
        case(
            "should deny ingress access to updated pod",
            vec![
                apply(
                    "x",
                    "deny-ingress-via-label-selector",
                    r"
                    podSelector: {matchLabels: {target: isolated}}
                    policyTypes: [Ingress]
                    ingress: []
                    ",
                ),
                probe(80, Tcp, all()),
                // AddPodLabels(x/a, {target: isolated}): merged into the existing labels.
                Step::PodLabels { pod: "x/a", labels: vec![("pod", "a"), ("target", "isolated")] },
                probe(80, Tcp, all().expect_all_ingress(pod("x", "a"), false)),
            ],
        ),
        case(
            "should deny egress from pods based on PodSelector",
            vec![
                apply(
                    "x",
                    "deny-egress-pod-a",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Egress]
                    egress: []
                    ",
                ),
                probe(80, Tcp, all().expect_all_egress(pod("x", "a"), false)),
            ],
        ),
        case(
            "should deny egress from all pods in a namespace",
            vec![
                apply(
                    "x",
                    "deny-egress-ns-x",
                    r"
                    podSelector: {}
                    policyTypes: [Egress]
                    egress: []
                    ",
                ),
                probe(80, Tcp, all().expect_peer(in_namespace("x"), any(), false)),
            ],
        ),
        case(
            "should work with Ingress, Egress specified together",
            vec![
                // Upstream overwrites PolicyTypes with [Egress, Ingress] after adding the egress rule.
                apply(
                    "x",
                    "allow-client-a-via-pod-selector",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Egress, Ingress]
                    ingress:
                      - from:
                          - podSelector: {matchLabels: {pod: b}}
                    egress:
                      - ports:
                          - port: 80
                    ",
                ),
                probe(80, Tcp, all().expect_all_ingress(pod("x", "a"), false).expect("x/b", "x/a", true)),
                probe(
                    81,
                    Tcp,
                    all()
                        .expect_all_ingress(pod("x", "a"), false)
                        .expect_all_egress(pod("x", "a"), false)
                        .expect("x/b", "x/a", true),
                ),
            ],
        ),
        case(
            "should support denying of egress traffic on the client side (even if the server explicitly allows this \
             traffic)",
            vec![
                apply(
                    "x",
                    "allow-to-ns-y-pod-a",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Egress]
                    egress:
                      - to:
                          - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
                            podSelector: {matchLabels: {pod: a}}
                    ",
                ),
                Step::Apply(
                    [
                        np(
                            "y",
                            "allow-from-xa-on-ya-match-selector",
                            r"
                            podSelector: {matchLabels: {pod: a}}
                            policyTypes: [Ingress]
                            ingress:
                              - from:
                                  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}
                                    podSelector: {matchLabels: {pod: a}}
                            ",
                        ),
                        np(
                            "y",
                            "allow-from-xa-on-yb-match-selector",
                            r"
                            podSelector: {matchLabels: {pod: b}}
                            policyTypes: [Ingress]
                            ingress:
                              - from:
                                  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}
                                    podSelector: {matchLabels: {pod: a}}
                            ",
                        ),
                    ]
                    .join("---\n"),
                ),
                probe(
                    80,
                    Tcp,
                    all()
                        .expect_peer(pod("x", "a"), any(), false)
                        .expect_peer(any(), pod("y", "a"), false)
                        .expect_peer(pod("x", "a"), pod("y", "a"), true)
                        .expect_peer(any(), pod("y", "b"), false),
                ),
            ],
        ),
        case(
            "should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector \
             and NamespaceSelector",
            vec![
                apply(
                    "x",
                    "allow-to-ns-y-pod-a",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Egress]
                    egress:
                      - to:
                          - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
                            podSelector: {matchLabels: {pod: a}}
                    ",
                ),
                probe(80, Tcp, all().expect_all_egress(pod("x", "a"), false).expect("x/a", "y/a", true)),
            ],
        ),
        case(
            "should enforce ingress policy allowing any port traffic to a server on a specific protocol",
            vec![
                apply(
                    "x",
                    "allow-ingress-by-proto",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Ingress]
                    ingress:
                      - ports:
                          - protocol: TCP
                    ",
                ),
                probe(80, Tcp, all()),
                probe(80, Udp, all().expect_peer(any(), pod("x", "a"), false)),
            ],
        ),
        case(
            "should enforce multiple ingress policies with ingress allow-all policy taking precedence",
            vec![
                apply(
                    "x",
                    "allow-ingress-port-80",
                    r"
                    podSelector: {}
                    policyTypes: [Ingress]
                    ingress:
                      - ports:
                          - port: 80
                    ",
                ),
                probe(81, Tcp, all().expect_peer(any(), in_namespace("x"), false)),
                apply(
                    "x",
                    "allow-ingress",
                    r"
                    podSelector: {}
                    policyTypes: [Ingress]
                    ingress:
                      - {}
                    ",
                ),
                probe(81, Tcp, all()),
            ],
        ),
        case(
            "should enforce multiple egress policies with egress allow-all policy taking precedence",
            vec![
                apply(
                    "x",
                    "allow-egress-port-80",
                    r"
                    podSelector: {}
                    policyTypes: [Egress]
                    egress:
                      - ports:
                          - port: 80
                    ",
                ),
                probe(81, Tcp, all().expect_peer(in_namespace("x"), any(), false)),
                apply(
                    "x",
                    "allow-egress",
                    r"
                    podSelector: {}
                    policyTypes: [Egress]
                    egress:
                      - {}
                    ",
                ),
                probe(81, Tcp, all()),
            ],
        ),
        case(
            "should stop enforcing policies after they are deleted",
            vec![
                apply(
                    "x",
                    "deny-all",
                    r"
                    podSelector: {}
                    policyTypes: [Ingress, Egress]
                    ingress: []
                    egress: []
                    ",
                ),
                probe(
                    80,
                    Tcp,
                    all().expect_peer(in_namespace("x"), any(), false).expect_peer(any(), in_namespace("x"), false),
                ),
                // cleanNetworkPolicies: every policy of x, y and z (only this one), then upstream sleeps 3 s.
                Step::Delete { namespace: "x", name: "deny-all" },
                probe(80, Tcp, all()),
            ],
        ),
        case(
            "should allow egress access to server in CIDR block",
            vec![
                apply(
                    "x",
                    "allow-client-a-via-cidr-egress-rule",
                    r#"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Egress]
                    egress:
                      - to:
                          - ipBlock: {cidr: "{ip:y/b}/32"}
                    "#,
                ),
                probe(80, Tcp, all().expect_all_egress(pod("x", "a"), false).expect("x/a", "y/b", true)),
            ],
        ),
        case(
            "should enforce except clause while egress access to server in CIDR block",
            vec![
                // Upstream: makeLargeCIDRForIP(x/b's IP), the /4 holding x/b, written with its host bits cleared;
                // here the pod's own address with /4 (the same set of addresses).
                apply(
                    "x",
                    "allow-client-a-via-cidr-egress-rule",
                    r#"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Egress]
                    egress:
                      - to:
                          - ipBlock:
                              cidr: "{ip:x/b}/4"
                              except: ["{ip:x/b}/32"]
                    "#,
                ),
                probe(80, Tcp, all().expect("x/a", "x/b", false)),
            ],
        ),
        case(
            "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed",
            vec![
                apply(
                    "x",
                    "allow-client-a-via-cidr-egress-rule",
                    r#"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Egress]
                    egress:
                      - to:
                          - ipBlock:
                              cidr: "{ip:x/b}/4"
                              except: ["{ip:x/b}/32"]
                    "#,
                ),
                probe(80, Tcp, all().expect("x/a", "x/b", false)),
                // UpdatePolicy with a new object of the same name.
                apply(
                    "x",
                    "allow-client-a-via-cidr-egress-rule",
                    r#"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Egress]
                    egress:
                      - to:
                          - ipBlock: {cidr: "{ip:x/b}/32"}
                    "#,
                ),
                probe(80, Tcp, all().expect_all_egress(pod("x", "a"), false).expect("x/a", "x/b", true)),
            ],
        ),
        case(
            "should enforce policies to check ingress and egress policies can be controlled independently based on \
             PodSelector",
            vec![
                apply(
                    "x",
                    "allow-egress-for-target",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Egress]
                    egress:
                      - {}
                    ",
                ),
                probe(80, Tcp, all()),
                apply(
                    "x",
                    "deny-ingress-via-label-selector",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Ingress]
                    ingress: []
                    ",
                ),
                probe(80, Tcp, all().expect_all_ingress(pod("x", "a"), false)),
            ],
        ),
        case(
            "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP",
            vec![
                apply(
                    "x",
                    "deny-ingress",
                    r"
                    podSelector: {}
                    policyTypes: [Ingress]
                    ingress: []
                    ",
                ),
                apply(
                    "x",
                    "allow-only-sctp-ingress-on-port-81",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Ingress]
                    ingress:
                      - ports:
                          - {port: 81, protocol: SCTP}
                    ",
                ),
                probe(81, Tcp, all().expect_peer(any(), in_namespace("x"), false)),
            ],
        ),
        case(
            "should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't \
             support SCTP",
            vec![
                apply(
                    "x",
                    "allow-only-sctp-ingress-on-port-80",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Ingress]
                    ingress:
                      - ports:
                          - {port: 80, protocol: SCTP}
                    ",
                ),
                probe(81, Tcp, all().expect_all_ingress(pod("x", "a"), false)),
            ],
        ),
        case(
            "should not allow access by TCP when a policy specifies only UDP",
            vec![
                apply(
                    "x",
                    "allow-only-udp-ingress-on-port-81",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Ingress]
                    ingress:
                      - ports:
                          - {port: 81, protocol: UDP}
                    ",
                ),
                probe(81, Tcp, all().expect_all_ingress(pod("x", "a"), false)),
            ],
        ),
        case(
            "should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label",
            vec![
                apply(
                    "x",
                    "allow-client-a-via-ns-selector-for-immutable-ns-label",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
                    ",
                ),
                probe(
                    80,
                    Tcp,
                    all()
                        // disallow all traffic from the x or z namespaces
                        .expect_peer(in_namespace("x"), pod("x", "a"), false)
                        .expect_peer(in_namespace("z"), pod("x", "a"), false),
                ),
            ],
        ),
        case(
            "should enforce policy based on NamespaceSelector with MatchExpressions using default ns label",
            vec![
                apply(
                    "x",
                    "allow-ns-y-match-selector-for-immutable-ns-label",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Egress]
                    egress:
                      - to:
                          - namespaceSelector:
                              matchExpressions:
                                - {key: kubernetes.io/metadata.name, operator: NotIn, values: [y]}
                    ",
                ),
                probe(80, Tcp, all().expect_peer(pod("x", "a"), in_namespace("y"), false)),
            ],
        ),
    ]
}

/// `Context("NetworkPolicy between server and client using UDP")` (`Netpol [LinuxOnly]`).
fn udp_cases() -> Vec<Case> {
    protocol_cases(
        Protocol::Udp,
        "UDP",
        [
            "should support a 'default-deny-ingress' policy (UDP)",
            "should enforce policy based on Ports (UDP)",
            "should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and \
             NamespaceSelector (UDP)",
        ],
    )
}

/// `Context("NetworkPolicy between server and client using SCTP")` (`Netpol [Feature:SCTPConnectivity]
/// [LinuxOnly]`): the policies are applied, the SCTP probes are skipped on this kernel.
fn sctp_cases() -> Vec<Case> {
    protocol_cases(
        Protocol::Sctp,
        "SCTP",
        [
            "should support a 'default-deny-ingress' policy (SCTP)",
            "should enforce policy based on Ports (SCTP)",
            "should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and \
             NamespaceSelector (SCTP)",
        ],
    )
}

/// The three tests the UDP and SCTP contexts share, written for `protocol` (`name` as in YAML).
fn protocol_cases(protocol: Protocol, name: &str, [deny, ports, pod_and_ns]: [&'static str; 3]) -> Vec<Case> {
    vec![
        case(
            deny,
            vec![
                apply(
                    "x",
                    "deny-all",
                    r"
                    podSelector: {}
                    policyTypes: [Ingress]
                    ingress: []
                    ",
                ),
                probe(80, protocol, all().expect_peer(any(), in_namespace("x"), false)),
            ],
        ),
        case(
            ports,
            vec![
                apply(
                    "x",
                    "allow-ingress-on-port-81-ns-x",
                    &r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
                        ports:
                          - {port: 81, protocol: PROTOCOL}
                    "
                    .replace("PROTOCOL", name),
                ),
                probe(
                    81,
                    protocol,
                    all()
                        // disallow all traffic from the x or z namespaces
                        .expect_peer(in_namespace("x"), pod("x", "a"), false)
                        .expect_peer(in_namespace("z"), pod("x", "a"), false),
                ),
            ],
        ),
        case(
            pod_and_ns,
            vec![
                apply(
                    "x",
                    "allow-ns-y-pod-a-via-namespace-pod-selector",
                    r"
                    podSelector: {matchLabels: {pod: a}}
                    policyTypes: [Ingress]
                    ingress:
                      - from:
                          - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
                            podSelector: {matchLabels: {pod: a}}
                    ",
                ),
                probe(80, protocol, all().expect_all_ingress(pod("x", "a"), false).expect("y/a", "x/a", true)),
            ],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn every_upstream_test_is_a_case_with_a_unique_name() {
        let cases = cases();
        assert_eq!(cases.len(), 48, "42 TCP-context tests, 3 UDP, 3 SCTP");
        let names: BTreeSet<_> = cases.iter().map(|c| c.name).collect();
        assert_eq!(names.len(), cases.len(), "case names are unique");
    }

    #[test]
    fn every_case_applies_a_policy_and_probes() {
        for case in cases() {
            assert!(case.steps.iter().any(|s| matches!(s, Step::Apply(_))), "{}: no Apply", case.name);
            assert!(case.steps.iter().any(|s| matches!(s, Step::Probe { .. })), "{}: no Probe", case.name);
        }
    }

    #[test]
    fn every_document_is_a_network_policy_of_the_model() {
        for case in cases() {
            for step in &case.steps {
                let Step::Apply(yaml) = step else { continue };
                for doc in yaml.split("---\n") {
                    assert!(doc.starts_with("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"), "{doc}");
                    assert!(
                        NAMESPACES.iter().any(|ns| doc.contains(&format!("\n  namespace: {ns}\n"))),
                        "{}: {doc}",
                        case.name
                    );
                    assert!(doc.contains("\nspec:\n  podSelector: "), "{}: {doc}", case.name);
                    assert!(!doc.contains('\t'), "{}: tabs in {doc}", case.name);
                    for placeholder in doc.split("{ip:").skip(1) {
                        let pod = placeholder.split('}').next().unwrap_or_default();
                        assert!(all_pods().iter().any(|p| p == pod), "{}: unknown pod {pod}", case.name);
                    }
                }
            }
        }
    }

    #[test]
    fn only_the_sctp_context_probes_sctp_alone() {
        let sctp_only: Vec<_> = cases()
            .into_iter()
            .filter(|c| {
                c.steps.iter().all(|s| !matches!(s, Step::Probe { protocol: Protocol::Tcp | Protocol::Udp, .. }))
            })
            .map(|c| c.name)
            .collect();
        assert_eq!(sctp_only.len(), 3);
        assert!(sctp_only.iter().all(|n| n.ends_with(" (SCTP)")));
    }

    #[test]
    fn np_dedents_the_spec() {
        let doc = np("x", "p", "\n    podSelector: {}\n    ingress:\n      - {}\n  ");
        assert_eq!(
            doc,
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: x\n\
             spec:\n  podSelector: {}\n  ingress:\n    - {}\n"
        );
    }
}
