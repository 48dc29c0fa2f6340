//! Property tests of every input the mesh does not control, on stable and in the test
//! command: the same entry points as the fuzz targets (`fuzz/`, `cargo xtask fuzz`), fed with
//! inputs mutated from the project's own examples by a seeded generator (set
//! `MESH_PROPTEST_SEED` to replay a run; the seed of a failure is in its message). Properties:
//! no panic, bounded time, and every refusal names its field.

use std::time::{Duration, Instant};

use mesh_agent::untrusted::{self, Follower};
use mesh_common::{
    api::{Resource, StateUpdate},
    hubble::{
        flow::{EventTypeFilter, FlowFilter, TcpFlags},
        observer::GetFlowsRequest,
    },
};
use prost::Message as _;

/// Inputs per property and run.
const CASES: usize = 1_500;
/// The longest any one input may take (debug build).
const SLOWEST: Duration = Duration::from_secs(2);

/// xorshift64*: small, seeded, reproducible.
struct Gen(u64);

impl Gen {
    fn new(salt: u64) -> Self {
        let seed = std::env::var("MESH_PROPTEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_cafe);
        Self((seed ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.below(from.len())]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    /// `seed` changed by 1 to 8 edits: bytes flipped, tokens inserted, ranges deleted,
    /// duplicated or cut off.
    fn mutate(&mut self, seed: &[u8], tokens: &[&[u8]]) -> Vec<u8> {
        let mut out = seed.to_vec();
        for _ in 0..1 + self.below(8) {
            let at = self.below(out.len() + 1);
            match self.below(6) {
                0 if !out.is_empty() => {
                    let i = at.min(out.len() - 1);
                    out[i] ^= 1 << self.below(8);
                }
                1 => {
                    let token = self.pick(tokens).to_vec();
                    let times = if self.chance(10) { 1 + self.below(2_000) } else { 1 };
                    for _ in 0..times {
                        out.splice(at..at, token.iter().copied());
                    }
                }
                2 => {
                    let end = (at + self.below(64)).min(out.len());
                    out.drain(at..end);
                }
                3 => {
                    let end = (at + self.below(256)).min(out.len());
                    let copy = out[at..end].to_vec();
                    out.splice(at..at, copy);
                }
                4 => out.truncate(at),
                _ => {
                    let byte = self.next() as u8;
                    out.insert(at, byte);
                }
            }
        }
        out
    }
}

fn timed<T>(what: &str, input: &[u8], run: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = run();
    assert!(
        started.elapsed() < SLOWEST,
        "{what} took {:?} on {:?}",
        started.elapsed(),
        String::from_utf8_lossy(&input[..input.len().min(300)])
    );
    out
}

fn examples() -> Vec<Vec<u8>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut seeds = Vec::new();
    for dir in ["deploy/examples", "deploy/static", "deploy/mtls"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("the examples") {
            seeds.push(std::fs::read(entry.expect("an entry").path()).expect("readable"));
        }
    }
    seeds.push(MORE_KINDS.as_bytes().to_vec());
    seeds
}

/// Kinds the examples lack: an EndpointSlice, a Node, a ServiceAccount, a ClusterMeshPolicy,
/// a PeerAuthentication, an HTTPRoute, a BackendTrafficPolicy; and a Service reached from
/// outside with every setting of it.
const MORE_KINDS: &str = "apiVersion: v1
kind: Service
metadata: {name: north, namespace: demo, annotations: {mesh.dev/lb-mode: dsr}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.50
  selector: {app: web}
  externalTrafficPolicy: Local
  healthCheckNodePort: 32100
  externalIPs: [198.51.100.7]
  loadBalancerSourceRanges: [203.0.113.0/24, 2001:db8::/32]
  sessionAffinity: ClientIP
  ports: [{port: 80, targetPort: 8080, nodePort: 30080, protocol: TCP}]
status: {loadBalancer: {ingress: [{ip: 192.0.2.10}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.0.3], nodeName: node-0, targetRef: {kind: Pod, name: web-a}, conditions: {ready: true}}
---
apiVersion: v1
kind: Node
metadata: {name: node-0}
spec: {podCIDRs: [10.244.0.0/24]}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: demo}
---
apiVersion: mesh.dev/v1alpha1
kind: ClusterMeshPolicy
metadata: {name: audit-all}
spec:
  mode: Audit
  podSelector: {}
  ingress:
  - action: Deny
    from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]
    ports: [{port: 80, endPort: 90, protocol: TCP}]
---
apiVersion: mesh.dev/v1alpha1
kind: PeerAuthentication
metadata: {name: web, namespace: demo}
spec:
  selector: {matchLabels: {app: web}}
  mtls: {mode: STRICT}
  portLevelMtls: {'9090': {mode: PERMISSIVE}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-canary, namespace: demo}
spec:
  parentRefs: [{group: '', kind: Service, name: web, port: 80}]
  rules:
  - name: canary
    matches:
    - path: {type: RegularExpression, value: '/v[0-9]+/.*'}
      headers: [{name: x-canary, value: 'yes'}]
      queryParams: [{name: q, type: RegularExpression, value: '[a-z]+'}]
      method: GET
    filters:
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-route, value: canary}], remove: [x-debug]}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: web, port: 80}, fraction: {numerator: 1, denominator: 10}}}
    backendRefs: [{name: web, port: 80, weight: 98}, {name: web, port: 80, weight: 2}]
    timeouts: {request: 10s, backendRequest: 2s}
    retry: {codes: [503], attempts: 2, backoff: 100ms}
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}}]
---
apiVersion: mesh.dev/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: web, namespace: demo}
spec:
  targetRefs: [{group: '', kind: Service, name: web}]
  outlierDetection: {consecutive5xxErrors: 3, consecutiveGatewayErrors: 2, baseEjectionTime: 10s, maxEjectionTime: 1m, maxEjectionPercent: 50}
  connectionPool: {maxConnections: 10, maxPendingRequests: 5, maxRequests: 100}
---
apiVersion: mesh.dev/v1alpha1
kind: MeshPolicy
metadata: {name: web-public-reads, namespace: demo}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - action: Allow
    ports: [{port: 8081}]
    principals: [{namespace: demo, serviceAccount: client}]
    http: [{methods: [GET], paths: [{type: PathPrefix, value: /public}], headers: [{name: x-team, value: web}]}]
";

const YAML_TOKENS: &[&[u8]] = &[
    b"[",
    b"]",
    b"{",
    b"}",
    b"- ",
    b": ",
    b"\n",
    b"  ",
    b"---\n",
    b"&a ",
    b"*a",
    b"!!binary ",
    b"? ",
    b"|\n",
    b">-\n",
    b"\"",
    b"'",
    b"#",
    b"0x1F",
    b"-1",
    b"99999999999999999999",
    b"1e400",
    b"~",
    b"null",
    b"true",
    b"yes",
    b"\xff",
    b"\t",
    b"%YAML 1.1\n",
    b"<<: *a\n",
    b"podIP: 10.244.0.999",
    b"port: 70000",
    b"name: Bad_Name",
    b"kind: Pod\n",
    b"apiVersion: v1\n",
    b"metadata: {}\n",
    b"selector: {matchExpressions: [{key: a, operator: In}]}",
    b"mode: DISABLE",
    b"portLevelMtls: {'0': {mode: STRICT}}",
    b"type: RegularExpression",
    b"value: '(a{1000}){1000}'",
    b"weight: 0",
    b"kind: Service",
    b"group: ''",
    b"statusCode: 305",
];

/// Manifests of every kind the operator reads, through local mode into the model.
#[test]
fn hostile_manifests_are_refused_with_the_field_named_and_never_panic() {
    let seeds = examples();
    let mut generator = Gen::new(1);
    for case in 0..CASES {
        let seed = generator.below(seeds.len());
        let input = generator.mutate(&seeds[seed], YAML_TOKENS);
        let text = String::from_utf8_lossy(&input);
        let (_, errors) = timed("manifests", &input, || mesh_operator::local_dir::model_of_text(&text));
        for error in errors {
            // `file: object: field: message`, or the model's `object: problem`.
            let parts: Vec<&str> = error.splitn(4, ": ").collect();
            assert!(parts.len() >= 2 && parts.iter().all(|p| !p.trim().is_empty()), "case {case}: {error:?}");
        }
    }
}

/// The model of the examples, as the operator streams it.
fn example_update() -> StateUpdate {
    let upserts: Vec<Resource> = examples()
        .iter()
        .flat_map(|seed| mesh_operator::local_dir::model_of_text(&String::from_utf8_lossy(seed)).0)
        .collect();
    // And a workload CA's trust bundle, as the operator sends it in every full snapshot.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ca = mesh_operator::workload_ca::WorkloadCa::open(dir.path(), Default::default(), Duration::from_secs(3600))
        .expect("a workload CA");
    let workload_roots = vec![ca.root_pem().to_owned()];
    StateUpdate { epoch: "e".into(), version: 1, full: true, upserts, workload_roots, ..Default::default() }
}

/// State stream messages as an agent decodes and applies them, one after another.
#[test]
fn hostile_state_updates_never_panic() {
    let seed = example_update().encode_to_vec();
    let mut generator = Gen::new(2);
    let mut follower = Follower::default();
    follower.apply(&seed).expect("the examples apply");
    let tokens: &[&[u8]] =
        &[b"\x0a\x00", b"\x22\xff\xff\xff\x0f", b"\x12\x04", b"\x18\x01", b"\x08\x80\x80\x80\x80\x10"];
    for case in 0..CASES {
        let input = generator.mutate(&seed, tokens);
        if case % 50 == 0 {
            follower = Follower::default();
        }
        let _ = timed("state update", &input, || follower.apply(&input));
    }
}

const FILTER_VALUES: &[&str] = &[
    "10.0.0.1",
    "10.0.0.0/8",
    "10.0.0.0/33",
    "::1",
    "",
    "*",
    "demo/",
    "demo/web",
    "/",
    "a/b/c",
    "app=web",
    "app in (a,b)",
    "!app",
    "app notin ()",
    "((",
    "80",
    "65536",
    "-1",
    "tcp",
    "udp",
    "icmp",
    "gre",
    "node-*",
    "*-0",
    "\u{0}",
    "é",
    "404",
    "5+",
    "2xx",
    "GET",
    "get",
    "^/api/v[0-9]+$",
    "(",
    "a{1000}{1000}",
    "4bf92f3577b34da6a3ce929d0e0e4736",
];

fn strings(generator: &mut Gen) -> Vec<String> {
    (0..generator.below(3)).map(|_| (*generator.pick(FILTER_VALUES)).to_owned()).collect()
}

fn filter(generator: &mut Gen) -> FlowFilter {
    FlowFilter {
        source_ip: strings(generator),
        destination_ip: strings(generator),
        source_pod: strings(generator),
        destination_pod: strings(generator),
        source_label: strings(generator),
        destination_label: strings(generator),
        source_service: strings(generator),
        destination_service: strings(generator),
        protocol: strings(generator),
        source_port: strings(generator),
        destination_port: strings(generator),
        node_name: strings(generator),
        http_status_code: strings(generator),
        http_method: strings(generator),
        http_path: strings(generator),
        http_url: strings(generator),
        trace_id: strings(generator),
        verdict: (0..generator.below(3)).map(|_| generator.below(8) as i32 - 1).collect(),
        reply: (0..generator.below(2)).map(|_| generator.chance(50)).collect(),
        encrypted: (0..generator.below(2)).map(|_| generator.chance(50)).collect(),
        tcp_flags: (0..generator.below(2))
            .map(|_| TcpFlags { syn: generator.chance(50), ..Default::default() })
            .collect(),
        event_type: (0..generator.below(2))
            .map(|_| EventTypeFilter {
                r#type: generator.below(200) as i32,
                match_sub_type: generator.chance(50),
                sub_type: generator.below(10) as i32,
            })
            .collect(),
        source_fqdn: if generator.chance(5) { vec!["x".into()] } else { Vec::new() },
        ip_version: if generator.chance(5) { vec![2] } else { Vec::new() },
        ..Default::default()
    }
}

/// The bytes of one flow event, as the ring buffer gives them.
const EVENT_LEN: usize = size_of::<mesh_common::flows::FlowEvent>();

/// Observer requests (any gRPC client may send them) and flow events judged by them.
#[test]
fn hostile_flow_filters_are_refused_naming_the_field_and_never_panic() {
    let mut generator = Gen::new(3);
    let fields = [
        "source_ip",
        "destination_ip",
        "source_pod",
        "destination_pod",
        "source_label",
        "destination_label",
        "source_service",
        "destination_service",
        "protocol",
        "source_port",
        "destination_port",
        "node_name",
        "http_status_code",
        "http_method",
        "http_path",
        "http_url",
        "trace_id",
        "source_fqdn",
        "ip_version",
    ];
    for case in 0..CASES {
        let request = GetFlowsRequest {
            whitelist: (0..generator.below(3)).map(|_| filter(&mut generator)).collect(),
            blacklist: (0..generator.below(2)).map(|_| filter(&mut generator)).collect(),
            ..Default::default()
        };
        let mut bytes = request.encode_to_vec();
        if generator.chance(20) {
            bytes = generator.mutate(&bytes, &[b"\x0a", b"\xff", b"\x12\x00"]);
        }
        let events: Vec<Vec<u8>> =
            (0..4).map(|_| (0..EVENT_LEN + generator.below(3)).map(|_| generator.next() as u8).collect()).collect();
        let events: Vec<&[u8]> = events.iter().map(Vec::as_slice).collect();
        match timed("flow request", &bytes, || untrusted::flow_request(&bytes, &events)) {
            Ok(_) => {}
            Err(err) if err.starts_with("not a GetFlowsRequest") => {}
            Err(err) => assert!(fields.iter().any(|f| err.contains(f)), "case {case}: {err}"),
        }
    }
}

/// The agent's static state file.
#[test]
fn hostile_state_files_are_refused_naming_the_field_and_never_panic() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/static/web-state.yaml");
    let seed = std::fs::read(root).expect("the static example");
    assert!(untrusted::state_file(&String::from_utf8_lossy(&seed)).is_ok(), "the example is valid");
    let mut generator = Gen::new(4);
    for case in 0..CASES {
        let input = generator.mutate(&seed, YAML_TOKENS);
        let text = String::from_utf8_lossy(&input);
        if let Err(err) = timed("state file", &input, || untrusted::state_file(&text)) {
            let (field, message) = err.split_once(": ").unwrap_or(("", ""));
            assert!(!field.is_empty() && !message.is_empty(), "case {case}: {err:?}");
        }
    }
}

/// The agent's command line.
#[test]
fn hostile_agent_configuration_is_refused_naming_the_key_and_never_panics() {
    let flags = [
        "--node-name",
        "--cgroup",
        "--bpffs",
        "--netns",
        "--operator",
        "--state-file",
        "--services-max",
        "--backends-max",
        "--events-bytes",
        "--flow-buffer",
        "--observer-address",
        "--observer-socket",
        "--metrics-address",
        "--tls-dir",
        "--keep-datapath",
        "--conntrack-max",
    ];
    let values = [
        "node-0",
        "Node_0",
        "",
        "/",
        "/sys/fs/cgroup",
        "/nonexistent",
        "0",
        "1",
        "4096",
        "4097",
        "4294967296",
        "-5",
        "http://127.0.0.1:1",
        "ftp://x",
        "off",
        "127.0.0.1:0",
        "[::1]:0",
        "999.0.0.1:1",
        "a".repeat(300).leak(),
    ];
    let mut generator = Gen::new(5);
    for case in 0..CASES / 3 {
        let mut args = Vec::new();
        for _ in 0..generator.below(8) {
            args.push((*generator.pick(&flags)).to_owned());
            if generator.chance(85) {
                args.push((*generator.pick(&values)).to_owned());
            }
        }
        let input = args.join(" ");
        if let Err(err) = timed("config", input.as_bytes(), || untrusted::config(&args)) {
            let named =
                err.contains("MESH_") || err.contains("--") || err.contains("argument") || err.contains("Usage");
            assert!(named, "case {case} ({input}): {err}");
        }
    }
}

/// `der` as the PEM block `label`.
fn pem_of(label: &str, der: Vec<u8>) -> String {
    pem::encode(&pem::Pem::new(label, der))
}

/// The workload CA's answer to a certificate request, as the agent checks it: the protobuf
/// mutated, and the leaf's DER mutated inside a well-formed answer.
#[test]
fn hostile_certificate_answers_never_panic_and_only_the_right_chain_is_taken() {
    use mesh_common::{
        identity::{SpiffeId, TrustDomain, csr_for},
        istio_ca::IstioCertificateResponse,
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = mesh_operator::workload_ca::WorkloadCa::open(dir.path(), TrustDomain::default(), Duration::from_secs(600))
        .unwrap();
    let (namespace, account) = untrusted::ANSWER_IDENTITY;
    let (key, csr) = csr_for(&SpiffeId::new(TrustDomain::default(), namespace, account).unwrap()).unwrap();
    let (chain, _) = ca.sign(ca.read_csr(&csr).unwrap(), Duration::from_secs(600)).unwrap();
    let public_key = key.public_key_raw().to_vec();
    let seed = IstioCertificateResponse { cert_chain: chain.clone() }.encode_to_vec();
    untrusted::certificate_answer(&seed, &public_key).expect("the CA's own answer is taken");
    let leaf_der = pem::parse(&chain[0]).unwrap().into_contents();
    let mut generator = Gen::new(6);
    let mut taken = 0;
    for case in 0..CASES {
        let input = if case % 2 == 0 {
            generator.mutate(&seed, &[b"\x0a\x00", b"\x0a\x05-----", b"\x0a\x80\x01"])
        } else {
            let der = generator.mutate(&leaf_der, &[b"\x30\x82", b"\x06\x03\x55\x1d\x11", b"\xff"]);
            IstioCertificateResponse { cert_chain: vec![pem_of("CERTIFICATE", der), chain[1].clone()] }.encode_to_vec()
        };
        match timed("certificate answer", &input, || untrusted::certificate_answer(&input, &public_key)) {
            // A mutation that kept the key and the identity (a bit of the signature, say): the
            // channel to the CA is what authenticates the answer.
            Ok(_) => taken += 1,
            Err(err) => assert!(!err.is_empty(), "case {case}"),
        }
    }
    assert!(taken < CASES / 2, "{taken} of {CASES} mutated answers were taken");
}

/// CSRs, as the operator's workload CA reads them from any caller: the text mutated, and the
/// DER mutated inside well-formed PEM.
#[test]
fn hostile_csrs_are_refused_and_never_panic() {
    use mesh_common::identity::{SpiffeId, TrustDomain, csr_for};
    let dir = tempfile::tempdir().unwrap();
    let ca = mesh_operator::workload_ca::WorkloadCa::open(dir.path(), TrustDomain::default(), Duration::from_secs(600))
        .unwrap();
    let (_, csr) = csr_for(&SpiffeId::new(TrustDomain::default(), "demo", "web").unwrap()).unwrap();
    ca.read_csr(&csr).expect("a CSR as agents make them is read");
    let der = pem::parse(&csr).unwrap().into_contents();
    let mut generator = Gen::new(7);
    for case in 0..CASES {
        let input = if case % 2 == 0 {
            generator.mutate(csr.as_bytes(), &[b"-----BEGIN CERTIFICATE REQUEST-----\n", b"AAAA", b"\n"])
        } else {
            let der = generator.mutate(&der, &[b"\x30\x82", b"\x06\x03\x55\x1d\x11", b"\x86\x10spiffe://", b"\xff"]);
            pem_of("CERTIFICATE REQUEST", der).into_bytes()
        };
        let text = String::from_utf8_lossy(&input);
        if let Ok(read) = timed("csr", &input, || ca.read_csr(&text)) {
            // Whatever got through names one identity of the trust domain and nothing else.
            assert_eq!(read.identity.trust_domain(), &TrustDomain::default(), "case {case}");
        }
    }
}

/// A tunnel's CONNECT as the receiving agent judges it: the client's leaf, the server name it
/// asked for, the CONNECT's target and its `Forwarded` client, each mutated. Whatever is taken
/// goes to the node's pod, was asked for under that pod's server name, and comes from the one
/// pod of the client's identity.
#[test]
fn hostile_tunnel_requests_are_refused_and_never_panic() {
    use mesh_common::identity::{SpiffeId, TrustDomain, csr_for};
    let dir = tempfile::tempdir().unwrap();
    let ca = mesh_operator::workload_ca::WorkloadCa::open(dir.path(), TrustDomain::default(), Duration::from_secs(600))
        .unwrap();
    let (_, csr) = csr_for(&SpiffeId::new(TrustDomain::default(), "demo", "client").unwrap()).unwrap();
    let (chain, _) = ca.sign(ca.read_csr(&csr).unwrap(), Duration::from_secs(600)).unwrap();
    let leaf = pem::parse(&chain[0]).unwrap().into_contents();
    let (namespace, account) = untrusted::ANSWER_IDENTITY;
    let destination = SpiffeId::new(TrustDomain::default(), namespace, account).unwrap();
    let name = mesh_agent::tunnel::tls::server_name(&destination).unwrap().to_str().into_owned();
    let target = format!("{}:8080", untrusted::TUNNEL_POD);
    let forwarded = format!("for=\"{}:40000\"", untrusted::TUNNEL_CLIENT);
    let taken = untrusted::tunnel_request(&leaf, &name, &target, &forwarded).expect("a well-formed CONNECT is taken");
    assert_eq!((taken.0.to_string(), taken.1), (target.clone(), untrusted::TUNNEL_CLIENT));
    // Another pod's address, or none: refused.
    for other in ["for=\"10.244.1.8:1\"", "", "by=10.244.1.7"] {
        assert!(untrusted::tunnel_request(&leaf, &name, &target, other).is_err(), "{other:?} taken");
    }
    let mut generator = Gen::new(8);
    let mut refused = 0;
    for case in 0..CASES {
        let (mut der, mut server_name, mut uri, mut from) =
            (leaf.clone(), name.clone(), target.clone(), forwarded.clone());
        match case % 4 {
            0 => der = generator.mutate(&leaf, &[b"\x30\x82", b"\x86\x10spiffe://", b"\xff"]),
            1 => server_name = String::from_utf8_lossy(&generator.mutate(name.as_bytes(), &[b".", b"web"])).into(),
            2 => uri = String::from_utf8_lossy(&generator.mutate(target.as_bytes(), &[b":", b"[::1]", b"/"])).into(),
            _ => {
                from = String::from_utf8_lossy(&generator.mutate(forwarded.as_bytes(), &[b";", b",", b"\"", b"for="]))
                    .into()
            }
        }
        let input = [der.as_slice(), server_name.as_bytes(), uri.as_bytes(), from.as_bytes()].concat();
        match timed("tunnel request", &input, || untrusted::tunnel_request(&der, &server_name, &uri, &from)) {
            Ok((address, client)) => {
                assert_eq!(address.ip(), untrusted::TUNNEL_POD, "case {case}");
                assert_eq!(client, untrusted::TUNNEL_CLIENT, "case {case}");
                assert_eq!(server_name, name, "case {case}: taken under another server name");
            }
            Err(err) => {
                assert!(!err.is_empty(), "case {case}");
                refused += 1;
            }
        }
    }
    assert!(refused > CASES / 3, "only {refused} of {CASES} mutated requests were refused");
}

/// Pieces of request targets: path elements, encodings, queries, absolute forms.
const TARGET_TOKENS: &[&[u8]] = &[
    b"/",
    b"//",
    b"/api/v2/",
    b"/static",
    b"/old",
    b"?q=1",
    b"&q=2",
    b"#frag",
    b"%2F",
    b"%",
    b"..",
    b"http://web:80",
    b"*",
    b" ",
    b"\x00",
    "é".as_bytes(),
];

/// Header names and values a pod may send, hostile ones included.
const REQUEST_HEADERS: &[(&str, &str)] = &[
    ("host", "web"),
    ("host", "web:8080"),
    ("host", "[::1]:80"),
    ("host", ""),
    ("x-version", "v2"),
    ("x-version", "vX"),
    ("x-remove", "1"),
    ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ("traceparent", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"),
    ("traceparent", "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"),
    ("traceparent", "\u{e9}"),
    ("connection", "upgrade, x-version"),
    ("connection", ",,,"),
    ("upgrade", "websocket"),
    ("te", "trailers"),
    ("bad name", "x"),
    ("x-bad-value", "a\nb"),
];

/// HTTP requests any pod may send to a Service with routes, taken as the L7 proxy takes them.
#[test]
fn hostile_http_requests_are_routed_or_refused_and_never_panic() {
    // Each rule of the fixed routes, first.
    let web = [("host", "web")];
    assert_eq!(
        untrusted::http_request("GET", "/api/v2/x", &[("host", "web"), ("x-version", "v2"), ("x-remove", "1")]),
        Ok("rule 0 GET /full host=rewritten.demo trace= url=http://web/api/v2/x".into())
    );
    assert_eq!(
        untrusted::http_request("GET", "/static/a?q=1", &web),
        Ok("rule 1 GET /a?q=1 host=rewritten.demo trace= url=http://web/static/a?q=1".into())
    );
    assert_eq!(untrusted::http_request("POST", "/", &web), Ok("rule 2 POST / host=web trace= url=http://web/".into()));
    assert_eq!(
        untrusted::http_request("GET", "/old/page", &web),
        Ok("rule 3 redirect https://elsewhere.demo:8443/moved/page".into())
    );
    assert_eq!(untrusted::http_request("GET", "/nothing", &web), Ok("404 http://web/nothing trace=".into()));
    let mut generator = Gen::new(5);
    let methods = ["GET", "POST", "PUT", "HEAD", "OPTIONS", "BREW", "G ET", "", "get"];
    let seeds = ["/api/v2/x", "/static/a?q=1", "/", "/old/page", "http://web/static?q=1"];
    for case in 0..CASES {
        let method = *generator.pick(&methods);
        let seed = *generator.pick(&seeds);
        let target = String::from_utf8_lossy(&generator.mutate(seed.as_bytes(), TARGET_TOKENS)).into_owned();
        let headers: Vec<(&str, &str)> = (0..generator.below(6)).map(|_| *generator.pick(REQUEST_HEADERS)).collect();
        match timed("http request", target.as_bytes(), || untrusted::http_request(method, &target, &headers)) {
            Ok(out) => assert!(out.starts_with("rule ") || out.starts_with("404 "), "case {case}: {out}"),
            Err(err) => assert!(
                ["method: ", "target: ", "header", "request: "].iter().any(|p| err.starts_with(p)),
                "case {case}: {err}"
            ),
        }
        match timed("judged request", target.as_bytes(), || untrusted::judged_request(method, &target, &headers)) {
            Ok(out) => assert!(out == "allowed" || out.starts_with("denied by "), "case {case}: {out}"),
            Err(err) => {
                assert!(["method: ", "target: ", "header"].iter().any(|p| err.starts_with(p)), "case {case}: {err}")
            }
        }
    }
}

/// HTTP requests judged by a pod's HTTP rules: the fixed rules' cases, then hostile ones.
#[test]
fn judged_requests_follow_the_rules() {
    let team = [("x-team", "web")];
    assert_eq!(untrusted::judged_request("GET", "/public/a", &team), Ok("allowed".into()));
    assert_eq!(untrusted::judged_request("HEAD", "/public", &team), Ok("allowed".into()));
    assert_eq!(
        untrusted::judged_request("GET", "/public/secret", &team),
        Ok("denied by MeshPolicy demo/secret ingress rule 0".into())
    );
    let isolated = Ok("denied by no rule allows it (MeshPolicy demo/reads isolate the pod)".to_owned());
    assert_eq!(untrusted::judged_request("POST", "/public/a", &team), isolated);
    assert_eq!(untrusted::judged_request("GET", "/public/a", &[]), isolated, "the header is required");
    assert_eq!(untrusted::judged_request("GET", "/publicity", &team), isolated);
    assert_eq!(untrusted::judged_request("GET", "http://web/public/x?q=1", &team), Ok("allowed".into()));
}
