//! IP fragments at TC: a UDP datagram larger than the MTU leaves its pod in fragments, and
//! only the first carries the ports. The whole datagram gets the first fragment's verdict: it
//! arrives through an allowed port, is dropped at a denied one, and no flow with made-up
//! ports (0) is recorded anywhere.

use std::{net::SocketAddr, time::Duration};

use aya::maps::{HashMap, MapData, PerCpuHashMap};
use mesh_common::{
    maps,
    policy::{CtEntry, CtKey, DENY, VerdictCount, VerdictKey, reason},
    proto,
};
use mesh_tests::{
    lab::{Lab, Placement},
    labnet,
    manifests::{Mesh, PodManifest, namespace, nodes},
    privileges::privileged,
    scenario::pinned_map,
};

/// Larger than the lab's MTU (1500): three fragments.
const DATAGRAM: usize = 4000;

fn cluster(lab: &Lab) -> String {
    let mut text = nodes(lab) + &namespace("t");
    for pod in ["client", "server"] {
        text += &PodManifest { labels: &[("app", pod)], ..Default::default() }.render("t", lab.pod(pod));
    }
    // server admits the client on UDP 80 only: 81 is denied by isolation.
    text + "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: udp-80, namespace: t}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
    - from: [{podSelector: {matchLabels: {app: client}}}]
      ports: [{port: 80, protocol: UDP}]
---
"
}

#[test]
fn fragmented_datagrams_take_the_first_fragments_verdict() {
    if !privileged("fragmented_datagrams_take_the_first_fragments_verdict") {
        return;
    }
    let lab = Lab::new(&[&["client", "server"]]).expect("lab");
    let server = lab.pod("server");
    for port in [80, 81] {
        labnet::serve(&lab, server, port, &format!("server-{port}")).expect("server");
    }
    let mesh = Mesh::start(&lab, &cluster(&lab), &[]).expect("mesh");
    let client = Placement::pod(lab.pod("client"));
    let send = |port: u16, size: usize, count: u32| {
        let to = SocketAddr::from((server.ip, port));
        labnet::udp_sized(&lab, &client, to, count, Duration::from_millis(500), size).expect("client runs")
    };

    // Allowed: every fragmented datagram arrives whole (the server answers only what it
    // received), as do small ones.
    let allowed = send(80, DATAGRAM, 10);
    assert_eq!(allowed.ok, 10, "fragmented datagrams to the allowed port: {allowed:?}\n{}", mesh.logs());
    assert_eq!(send(80, 4, 3).ok, 3);
    // Denied: none arrives, small or fragmented.
    let denied = send(81, DATAGRAM, 3);
    assert_eq!(denied.ok, 0, "fragmented datagrams to the denied port: {denied:?}");
    assert_eq!(send(81, 4, 2).ok, 0);

    // Every flow has its real ports: no UDP flow with port 0, at the client (not under
    // policy) nor at the server.
    let bpffs = &lab.nodes[0].bpffs;
    let conntrack: HashMap<MapData, CtKey, CtEntry> = pinned_map(&bpffs.join(maps::CONNTRACK)).expect("map");
    let udp: Vec<CtKey> = conntrack.keys().filter_map(Result::ok).filter(|key| key.proto == proto::UDP).collect();
    assert!(!udp.is_empty(), "the datagrams were tracked");
    let phantom: Vec<&CtKey> = udp.iter().filter(|key| key.sport == 0 || key.dport == 0).collect();
    assert!(phantom.is_empty(), "flows with made-up ports: {phantom:?}");
    // The denied datagrams were dropped by isolation, whole: 3 fragments each, plus the small
    // ones, and nothing dropped for a lack of ports.
    let verdicts: PerCpuHashMap<MapData, VerdictKey, VerdictCount> =
        pinned_map(&bpffs.join(maps::VERDICTS)).expect("map");
    let dropped = |why: u8| -> u64 {
        verdicts
            .iter()
            .filter_map(Result::ok)
            .filter(|(key, _)| key.action == DENY && key.reason == why)
            .map(|(_, per_cpu)| per_cpu.iter().map(|c| c.dropped_packets).sum::<u64>())
            .sum()
    };
    assert!(dropped(reason::POLICY_DENIED) >= 3 * 3 + 2, "{}", dropped(reason::POLICY_DENIED));
    assert_eq!(dropped(reason::FRAG_NOT_FOUND), 0);
}
