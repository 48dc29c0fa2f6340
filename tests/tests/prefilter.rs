//! The XDP prefilter: a ClusterMeshPolicy that denies a CIDR outside the cluster to every pod
//! keeps it off the nodes at XDP. Two clients outside the cluster (on the nodes' network) reach
//! a pod through its node; once the policy denies 172.18.200.0/22 except 172.18.200.0/24, the
//! one in the except still connects and the one in the rest does not; its drops are counted
//! against the CIDR with the rule that denies it, and reported as flows (`--from-ip`). Removing
//! the policy lets it in again and takes XDP off the interface.

use std::{net::SocketAddr, time::Duration};

use mesh_tests::{
    lab::{Lab, Placement},
    labnet,
    manifests::{Mesh, PodManifest, eventually, namespace, nodes},
    meshctl, metrics,
    privileges::privileged,
};

const BLOCKLIST: &str = "apiVersion: mesh.dev/v1alpha1
kind: ClusterMeshPolicy
metadata: {name: blocklist}
spec:
  priority: 10
  ingress:
    - action: Deny
      peers: [{ipBlock: {cidr: 172.18.200.0/22, except: [172.18.200.0/24]}}]
---
";

fn cluster(lab: &Lab) -> String {
    nodes(lab)
        + &namespace("t")
        + &PodManifest { labels: &[("app", "web")], ..Default::default() }.render("t", lab.pod("web"))
}

#[test]
fn a_denied_outside_cidr_is_dropped_at_xdp_and_nothing_else() {
    if !privileged("a_denied_outside_cidr_is_dropped_at_xdp_and_nothing_else") {
        return;
    }
    let lab = Lab::new(&[&["web"]]).expect("lab");
    let web = lab.pod("web");
    labnet::serve(&lab, web, 80, "web").expect("server");
    let allowed = lab.add_outside(0, "172.18.200.10".parse().unwrap()).expect("outside client");
    let denied = lab.add_outside(1, "172.18.201.10".parse().unwrap()).expect("outside client");
    let (allowed, denied) = (lab.outside_placement(&allowed), lab.outside_placement(&denied));
    let mesh = Mesh::start(&lab, &cluster(&lab), &[]).expect("mesh");
    let to = SocketAddr::from((web.ip, 80));
    let connect = |from: &Placement, count| {
        labnet::connect(&lab, from, to, count, Duration::from_millis(500)).expect("client runs").ok
    };
    assert_eq!(connect(&allowed, 3), 3, "before the policy\n{}", mesh.logs());
    assert_eq!(connect(&denied, 3), 3, "before the policy\n{}", mesh.logs());
    let node = &lab.nodes[0];
    let socket = mesh.agents[0].observer_socket(&lab);
    let xdp_attached = || meshctl::run(&socket, &["status"]).stdout.contains("xdp");
    assert!(!xdp_attached(), "XDP is attached only while it has work");

    mesh.write(&format!("{}{BLOCKLIST}", cluster(&lab))).expect("manifests");
    eventually(Duration::from_secs(10), || {
        if connect(&denied, 1) == 0 { Ok(()) } else { Err("still connects".to_owned()) }
    })
    .unwrap_or_else(|err| panic!("the denied CIDR: {err}\n{}", mesh.logs()));
    assert_eq!(connect(&denied, 3), 0, "the denied CIDR");
    assert_eq!(connect(&allowed, 5), 5, "the except passes\n{}", mesh.logs());
    let status = meshctl::run(&socket, &["status"]).stdout;
    assert!(status.contains("xdp native eth0"), "XDP in native mode on the node's interface: {status}");

    // Counted against the CIDR, with the rule; the node's drop counter includes them.
    let text = metrics::agent(&node.netns_path);
    let series = "mesh_prefilter_dropped_packets_total{cidr=\"172.18.200.0/22\",policy=\"ClusterMeshPolicy blocklist ingress rule 0\"}";
    assert!(metrics::value(&text, series) >= 3.0, "{series} in:\n{text}");
    assert_eq!(metrics::sum(&text, "mesh_prefilter_dropped_packets_total", &["cidr=\"172.18.200.0/24\""]), 0.0);
    assert!(metrics::sum(&text, "hubble_drop_total", &["reason=\"POLICY_DENY\""]) >= 3.0, "{text}");
    // Sampled into flows with the drop reason and the policy, found by the client's address.
    let flows = meshctl::flows(&socket, &["--from-ip", "172.18.201.10"]);
    let dropped = flows.iter().find(|f| f["verdict"] == "DROPPED").unwrap_or_else(|| panic!("{flows:#?}"));
    assert_eq!(dropped["drop_reason_desc"], "POLICY_DENY", "{dropped:#}");
    assert_eq!(dropped["IP"]["destination"], web.ip.to_string(), "{dropped:#}");
    assert_eq!(dropped["ingress_denied_by"][0]["name"], "blocklist", "{dropped:#}");
    assert!(
        meshctl::flows(&socket, &["--from-ip", "172.18.200.10", "--verdict", "DROPPED"]).is_empty(),
        "the except's client is never dropped"
    );

    // Without the policy: in again, and XDP comes off.
    mesh.write(&cluster(&lab)).expect("manifests");
    eventually(Duration::from_secs(10), || {
        if connect(&denied, 1) == 1 { Ok(()) } else { Err("still dropped".to_owned()) }
    })
    .unwrap_or_else(|err| panic!("after the policy went: {err}\n{}", mesh.logs()));
    eventually(Duration::from_secs(5), || if xdp_attached() { Err("XDP still attached".to_owned()) } else { Ok(()) })
        .unwrap_or_else(|err| panic!("{err}"));
    mesh.stop(&lab).expect("the mesh stops cleanly");
}
