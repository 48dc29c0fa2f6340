//! Every map writer converges when retried: a policy update that finds the maps not as the
//! agent left them (keys already removed, as a removal that failed halfway leaves them) is
//! applied whole, and CIDR identities no policy uses any more are given back.

use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use aya::maps::{MapData, lpm_trie::Key, lpm_trie::LpmTrie};
use mesh_common::{
    maps,
    policy::{IP_CIDR, IP_KEY_BITS, IpKey, PolicyEntry, PolicyKey},
};
use mesh_tests::{
    lab::Lab,
    manifests::{Mesh, PodManifest, eventually, namespace, nodes},
    privileges::privileged,
    scenario::pinned_map,
};

/// `server` admits the given /24 blocks (`10.<second>.<i>.0/24`, `blocks` of them).
fn cluster(lab: &Lab, second: u8, blocks: u8) -> String {
    let mut text = nodes(lab) + &namespace("t");
    for pod in ["client", "server"] {
        text += &PodManifest { labels: &[("app", pod)], ..Default::default() }.render("t", lab.pod(pod));
    }
    let peers: String = (0..blocks).map(|i| format!("        - ipBlock: {{cidr: 10.{second}.{i}.0/24}}\n")).collect();
    text + &format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: blocks, namespace: t}}
spec:
  podSelector: {{matchLabels: {{app: server}}}}
  ingress:
    - from:
{peers}      ports: [{{port: 80, protocol: TCP}}]
---
"
    )
}

/// The CIDR identities the node's identity map holds: (network, prefix length) → identity.
fn cidr_identities(lab: &Lab) -> Result<Vec<(Ipv4Addr, u32, u32)>, String> {
    let map: LpmTrie<MapData, IpKey, u32> =
        pinned_map(&lab.nodes[0].bpffs.join(maps::IDENTITIES)).map_err(|e| e.to_string())?;
    let mut out: Vec<(Ipv4Addr, u32, u32)> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(key, _)| u32::from_be(key.data().kind) == IP_CIDR)
        .map(|(key, id)| (Ipv4Addr::from(u32::from_be(key.data().addr)), key.prefix_len() - IP_KEY_BITS, id))
        .collect();
    out.sort();
    Ok(out)
}

/// Waits until the identity map holds exactly the blocks of `cluster(_, second, blocks)`.
fn wait_for_blocks(lab: &Lab, mesh: &Mesh, second: u8, blocks: u8) -> Vec<(Ipv4Addr, u32, u32)> {
    let want: Vec<(Ipv4Addr, u32)> = (0..blocks).map(|i| (Ipv4Addr::new(10, second, i, 0), 24)).collect();
    eventually(Duration::from_secs(15), || {
        let held = cidr_identities(lab)?;
        let got: Vec<(Ipv4Addr, u32)> = held.iter().map(|(addr, len, _)| (*addr, *len)).collect();
        if got == want { Ok(held) } else { Err(format!("the identity map holds {got:?}, want {want:?}")) }
    })
    .unwrap_or_else(|err| panic!("{err}\n{}", mesh.logs()))
}

#[test]
fn policy_updates_converge_after_keys_vanished_and_cidr_identities_are_reused() {
    if !privileged("policy_updates_converge_after_keys_vanished_and_cidr_identities_are_reused") {
        return;
    }
    let lab = Lab::new(&[&["client", "server"]]).expect("lab");
    let mesh = Mesh::start(&lab, &cluster(&lab, 200, 20), &[]).expect("mesh");
    let first = wait_for_blocks(&lab, &mesh, 200, 20);

    // Behind the agent's back, as a removal that failed halfway leaves the maps: some of the
    // identities and rule entries it holds are already gone.
    let bpffs = &lab.nodes[0].bpffs;
    let mut identities: LpmTrie<MapData, IpKey, u32> = pinned_map(&bpffs.join(maps::IDENTITIES)).expect("map");
    for (addr, len, _) in first.iter().step_by(4) {
        let key = Key::new(IP_KEY_BITS + len, IpKey { kind: IP_CIDR.to_be(), addr: u32::from(*addr).to_be() });
        identities.remove(&key).expect("remove an identity");
    }
    let mut policy: LpmTrie<MapData, PolicyKey, PolicyEntry> = pinned_map(&bpffs.join(maps::POLICY)).expect("map");
    let entries: Vec<Key<PolicyKey>> = policy.keys().filter_map(Result::ok).collect();
    assert!(entries.len() >= 20, "one entry per block at least, got {}", entries.len());
    for key in entries.iter().step_by(3) {
        policy.remove(key).expect("remove an entry");
    }

    // An update that removes all of them: applied whole (no NACK at every retry), with new
    // identities numbered after the old ones (both are held while the maps change).
    mesh.write(&cluster(&lab, 201, 20)).expect("manifests");
    let second = wait_for_blocks(&lab, &mesh, 201, 20);
    let old: BTreeSet<u32> = first.iter().map(|(_, _, id)| *id).collect();
    assert!(second.iter().all(|(_, _, id)| !old.contains(id)), "old {old:?}, new {second:?}");
    let log = mesh.agents[0].log();
    let applied = log.lines().rev().find(|line| line.contains("applied update")).expect("an applied update");
    assert!(applied.contains("ok=true"), "the last update failed: {applied}\n{}", mesh.logs());

    // Identities nobody uses were given back: the next blocks take the first ones' numbers
    // instead of counting on.
    mesh.write(&cluster(&lab, 202, 20)).expect("manifests");
    let third = wait_for_blocks(&lab, &mesh, 202, 20);
    let third_ids: BTreeSet<u32> = third.iter().map(|(_, _, id)| *id).collect();
    assert_eq!(third_ids, old, "freed identities are reused\n{}", mesh.logs());
    let policy_now: LpmTrie<MapData, PolicyKey, PolicyEntry> = pinned_map(&bpffs.join(maps::POLICY)).expect("map");
    let peers: BTreeSet<u32> = policy_now.keys().filter_map(Result::ok).map(|key| key.data().peer).collect();
    assert_eq!(peers, third_ids, "rule entries are keyed by exactly the current identities");
}
