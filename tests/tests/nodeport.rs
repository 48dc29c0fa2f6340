//! Services from outside the cluster: a client on the nodes' network (the lab's `outside`)
//! reaches NodePorts through either node, for backends on either node. With
//! `externalTrafficPolicy: Cluster` a flow reaching a backend on the other node is source-NATed
//! to the node (the backend sees the node's address) and a backend here sees the client's; with
//! `Local` only this node's backends answer, always seeing the client's address, and a node
//! without one drops the flow (`SERVICE_BACKEND_NOT_FOUND`, in its flows). The same client flow
//! (address and port) through either node reaches the same backend: Maglev. Each node answers
//! the `healthCheckNodePort` of a `Local` service as kube-proxy does: 200 with local
//! endpoints, 503 without. With direct server
//! return (`mesh.dev/lb-mode: dsr`) a backend on the other node sees the client's address and
//! its node answers the client itself: a capture on the balancing node's link shows the
//! source-NATed answers passing it and no DSR answer. One client port through three frontends
//! to one backend at once: the first flow keeps the client's port, the others get other ports
//! at the backend's node (the client's address kept), and all three work together. A load-balancer address
//! with `loadBalancerSourceRanges` admits the clients in them and drops the others.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use mesh_tests::{
    capture::Capture,
    lab::Lab,
    labnet,
    manifests::{self, Mesh, PodManifest, eventually, namespace, nodes},
    meshctl,
    privileges::privileged,
};

const NS: &str = "t";

fn cluster(lab: &Lab) -> String {
    let mut text = nodes(lab) + &namespace(NS);
    for (pod, only) in [("web-0", "no"), ("web-1", "yes")] {
        text +=
            &PodManifest { labels: &[("app", "web"), ("only", only)], ..Default::default() }.render(NS, lab.pod(pod));
    }
    for (name, port, policy, selector, health) in [
        ("web", 30080, "Cluster", "{app: web}", ""),
        ("web-local", 30081, "Local", "{app: web}", "  healthCheckNodePort: 32101\n"),
        ("one", 30082, "Local", "{only: \"yes\"}", "  healthCheckNodePort: 32102\n"),
        ("hold", 30084, "Cluster", "{only: \"yes\"}", ""),
    ] {
        text += &manifests::service(
            NS,
            name,
            &format!(
                "  type: NodePort\n  clusterIP: 10.96.0.{}\n  externalTrafficPolicy: {policy}\n{health}  selector: {selector}\n  ports:\n    - {{port: 80, targetPort: 8080, nodePort: {port}}}\n",
                port - 30000
            ),
        );
    }
    text += &manifests::service(
        NS,
        "web-dsr",
        "  type: NodePort\n  selector: {only: \"yes\"}\n  ports:\n    - {port: 80, targetPort: 8080, nodePort: 30083}\n",
    )
    .replace("metadata:\n  name: web-dsr\n", "metadata:\n  name: web-dsr\n  annotations: {mesh.dev/lb-mode: dsr}\n");
    text += &manifests::service(
        NS,
        "lb",
        &format!(
            "  type: LoadBalancer\n  clusterIP: 10.96.0.85\n  selector: {{app: web}}\n  loadBalancerSourceRanges: [{OUTSIDE}/32]\n  ports:\n    - {{port: 80, targetPort: 8080, nodePort: 30085}}\n"
        ),
    )
    .replace("---\n", &format!("status: {{loadBalancer: {{ingress: [{{ip: {LB_IP}}}]}}}}\n---\n"));
    text
}

/// The outside client, and the load-balancer address of `lb` (routed to node-0 by the
/// outside clients, as a cloud load balancer would send its traffic to a node).
const OUTSIDE: &str = "172.18.200.10";
const LB_IP: &str = "192.0.2.10";

#[test]
fn nodeports_from_outside_through_either_node() {
    if !privileged("nodeports_from_outside_through_either_node") {
        return;
    }
    let lab = Lab::new(&[&["web-0"], &["web-1"]]).expect("lab");
    for pod in ["web-0", "web-1"] {
        labnet::serve(&lab, lab.pod(pod), 8080, &format!("{pod} {{peer}} {{peer_port}}")).expect("server");
    }
    let outside = lab.add_outside(0, OUTSIDE.parse().unwrap()).expect("outside client");
    let client = lab.outside_placement(&outside);
    let mesh = Mesh::start(&lab, &cluster(&lab), &[]).expect("mesh");
    let node_ip = |n: usize| lab.nodes[n].ip;
    let connect = |n: usize, port: u16, count: u32| {
        labnet::connect(&lab, &client, SocketAddr::from((node_ip(n), port)), count, Duration::from_millis(1000))
            .expect("client runs")
    };
    // The agents attach TC to the nodes' interfaces once the frontends are programmed.
    eventually(Duration::from_secs(10), || {
        let s = connect(0, 30080, 1);
        if s.ok == 1 { Ok(()) } else { Err(format!("{s:?}")) }
    })
    .unwrap_or_else(|err| panic!("node-0:30080 never answered: {err}\n{}", mesh.logs()));

    // Cluster: every node answers, from backends on both nodes; a backend on the other node
    // sees the node (source NAT), one on the same node sees the client.
    for n in 0..2 {
        let summary = connect(n, 30080, 30);
        assert_eq!(summary.ok, 30, "node-{n}:30080 {summary:?}\n{}", mesh.logs());
        let mut backends = BTreeSet::new();
        for reply in summary.replies.keys() {
            let (pod, peer) = reply.split_once(' ').expect("pod and peer");
            let seen: std::net::Ipv4Addr = peer.split(' ').next().unwrap().parse().expect("an address");
            let here = lab.pod(pod).node == lab.nodes[n].name;
            let expected = if here { outside.ip } else { node_ip(n) };
            assert_eq!(seen, expected, "node-{n} to {pod}: the backend saw {seen}");
            backends.insert(pod.to_owned());
        }
        assert_eq!(backends.len(), 2, "node-{n}:30080 reached {backends:?}");
        // The client sees the frontend it connected to.
        assert!(summary.peers.keys().all(|p| p == &format!("{}:30080", node_ip(n))), "{:?}", summary.peers);
    }

    // Maglev: one client flow (address and port) reaches the same backend through either node.
    // Below the ephemeral range: no earlier connection of this client left one in TIME_WAIT.
    for port in 20000..20012 {
        let via = |n: usize| {
            let s = labnet::connect_from(
                &lab,
                &client,
                SocketAddr::from((node_ip(n), 30080)),
                port,
                Duration::from_secs(1),
            )
            .expect("client runs");
            assert_eq!(s.ok, 1, "from port {port} via node-{n}: {s:?}");
            s.replies.keys().next().unwrap().split_once(' ').unwrap().0.to_owned()
        };
        assert_eq!(via(0), via(1), "client port {port}: different backends through the two nodes");
    }

    // Local: each node's own backend, seeing the client's address.
    for n in 0..2 {
        let summary = connect(n, 30081, 5);
        let expected = format!("web-{n} {} ", outside.ip);
        assert_eq!(summary.ok, 5, "node-{n}:30081 {summary:?}");
        assert!(summary.replies.keys().all(|r| r.starts_with(&expected)), "node-{n}:30081 {:?}", summary.replies);
    }
    // Local without a backend on node-0: dropped there, answered by node-1.
    assert_eq!(connect(0, 30082, 2).ok, 0, "node-0 has no backend of `one`");
    assert_eq!(connect(1, 30082, 2).ok, 2, "node-1 has web-1");
    // healthCheckNodePort, as kube-proxy answers it: 200 where the node has a local endpoint.
    let health = |n: usize, port: u16| {
        let to = SocketAddr::from((node_ip(n), port));
        let report = labnet::http_get(&lab, &client, to, "/", &[], 1).expect("client runs");
        report.statuses.keys().next().copied().unwrap_or(0)
    };
    assert_eq!((health(0, 32101), health(1, 32101)), (200, 200), "web-local has an endpoint on each node");
    assert_eq!((health(0, 32102), health(1, 32102)), (503, 200), "one has its endpoint on node-1 only");
    let socket = mesh.agents[0].observer_socket(&lab);
    let dropped = meshctl::flows(&socket, &["--from-ip", &outside.ip.to_string(), "--verdict", "DROPPED"]);
    assert!(
        dropped.iter().any(
            |f| f["drop_reason_desc"] == "SERVICE_BACKEND_NOT_FOUND" && f["l4"]["TCP"]["destination_port"] == 30082
        ),
        "{dropped:#?}"
    );
    // Every flow from outside is in the flows, from the client to its backend, with its service.
    let forwarded = meshctl::flows(&socket, &["--from-ip", &outside.ip.to_string(), "--verdict", "FORWARDED"]);
    assert!(
        forwarded
            .iter()
            .any(|f| f["IP"]["destination"] == lab.pod("web-1").ip.to_string()
                && f["destination_service"]["name"] == "web"),
        "{forwarded:#?}"
    );
    let status = meshctl::run(&socket, &["status"]).stdout;
    assert!(status.contains("tcx ingress eth0"), "{status}");

    // DSR to web-1 through node-0: the backend sees the client, and node-1 answers it directly.
    let capture = Capture::start(&lab.nodes[0].netns_path, "eth0").expect("a capture on node-0's link");
    let dsr = connect(0, 30083, 5);
    let snat = connect(0, 30080, 10);
    let segments = capture.stop();
    assert_eq!(dsr.ok, 5, "node-0:30083 (DSR) {dsr:?}\n{}", mesh.logs());
    assert!(
        dsr.replies.keys().all(|r| r.starts_with(&format!("web-1 {} ", outside.ip))),
        "DSR keeps the client: {:?}",
        dsr.replies
    );
    assert!(dsr.peers.keys().all(|p| p == &format!("{}:30083", node_ip(0))), "{:?}", dsr.peers);
    let from = |port: u16| segments.iter().filter(|s| s.sport == port && s.daddr == outside.ip).count();
    assert!(segments.iter().any(|s| s.dport == 30083), "the DSR requests came in on node-0's link");
    assert_eq!(
        from(30083),
        0,
        "a DSR answer passed node-0: {:?}",
        segments.iter().filter(|s| s.sport == 30083).collect::<Vec<_>>()
    );
    assert_eq!(snat.ok, 10, "{snat:?}");
    assert!(from(30080) > 0, "the source-NATed answers pass node-0 (the capture works)");

    // One client port through three frontends to web-1 at once: node-1's `one` (Local), node-0's
    // `web-dsr` (DSR to node-1) and node-1's `hold`. The pod holds one connection per client
    // address and port: the first keeps the client's port, the two others get other ports at
    // node-1 (the client's address kept: the pod and its policy see the client), and all three
    // carry traffic together.
    let port = 21000;
    let targets = [(1, 30082), (0, 30083), (1, 30084)].map(|(n, p)| SocketAddr::from((node_ip(n), p)));
    let seen = labnet::together(&lab, &client, &targets, port, Duration::from_secs(2)).expect("client runs");
    let mut ports = BTreeSet::new();
    for (conn, to) in seen.iter().zip(&targets) {
        assert!(conn.error.is_empty() && conn.echoed, "{to}: {conn:?}\n{}", mesh.logs());
        let (who, seen_port) =
            conn.reply.strip_prefix("web-1 ").and_then(|r| r.split_once(' ')).expect("web-1's reply");
        assert_eq!(who, outside.ip.to_string(), "{to}: who web-1 saw");
        ports.insert(seen_port.parse::<u16>().expect("a port"));
        assert_eq!(conn.peer, to.to_string(), "the client sees the frontend it connected to");
    }
    assert_eq!(ports.len(), 3, "one port per connection at web-1: {seen:?}");
    assert!(seen[0].reply.ends_with(&format!(" {port}")), "the first keeps the client's port: {seen:?}");
    // Once they ended (web-1 closed them: FIN), the port is the client's own again through yet
    // another frontend.
    std::thread::sleep(Duration::from_millis(200));
    let again =
        labnet::connect_from(&lab, &client, SocketAddr::from((node_ip(1), 30081)), port, Duration::from_secs(1))
            .expect("client runs");
    assert_eq!(again.replies.keys().collect::<Vec<_>>(), [&format!("web-1 {} {port}", outside.ip)], "{again:?}");

    // loadBalancerSourceRanges: the load-balancer address lets in the outside client's /32 and
    // drops another client's (with the reason, in the flows); `lb`'s NodePort is not restricted.
    let other = lab.add_outside(1, "172.18.200.11".parse().unwrap()).expect("a second outside client");
    for netns in [&outside.netns, &other.netns] {
        let routed = std::process::Command::new("ip")
            .args(["-n", netns, "route", "add", &format!("{LB_IP}/32"), "via", &node_ip(0).to_string()])
            .status()
            .expect("ip runs");
        assert!(routed.success(), "a route to {LB_IP} in {netns}");
    }
    let lb = SocketAddr::from((LB_IP.parse::<std::net::Ipv4Addr>().unwrap(), 80));
    let short = Duration::from_millis(700);
    let admitted = labnet::connect(&lab, &client, lb, 3, short).expect("client runs");
    assert_eq!(admitted.ok, 3, "{OUTSIDE} is in the ranges: {admitted:?}\n{}", mesh.logs());
    let other_client = lab.outside_placement(&other);
    assert_eq!(labnet::connect(&lab, &other_client, lb, 2, short).expect("client runs").ok, 0, "not in the ranges");
    let nodeport = labnet::connect(&lab, &other_client, SocketAddr::from((node_ip(0), 30085)), 2, short).unwrap();
    assert_eq!(nodeport.ok, 2, "the NodePort is not restricted: {nodeport:?}");
    let denied = meshctl::flows(&socket, &["--from-ip", &other.ip.to_string(), "--verdict", "DROPPED"]);
    assert!(denied.iter().any(|f| f["drop_reason_desc"] == "DENIED_BY_LB_SRC_RANGE_CHECK"), "{denied:#?}");
    mesh.stop(&lab).expect("the mesh stops cleanly");
}
