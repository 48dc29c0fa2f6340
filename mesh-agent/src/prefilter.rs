//! The XDP prefilter: which source CIDRs are dropped on the node's external interfaces before
//! the stack sees them ([`compile`]), and the maps that hold them ([`PrefilterMaps`]).
//!
//! A CIDR is prefiltered when dropping it early changes no verdict the policy gives at the
//! pods, only where it is taken: it is an ipBlock of an ingress `Deny` rule, without ports,
//! principals or HTTP matches, of an enforcing ClusterMeshPolicy that selects every pod of
//! every namespace; it holds no cluster address (no node address, pod CIDR or pod address);
//! and no allow rule that decides before it (a lower priority number, of any enforcing
//! MeshPolicy or ClusterMeshPolicy) could admit an address of it. NetworkPolicy rules decide
//! after every mesh rule, so they never do. Such a CIDR is dropped for the node itself too (its
//! own sockets, NodePorts), as Cilium's prefilter drops its list. A block that does not qualify
//! stays enforced at the pods by TC, and the agent logs why it was left out.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use aya::maps::{MapData, PerCpuArray, PerCpuValues, lpm_trie::Key, lpm_trie::LpmTrie};
use mesh_common::{
    api::{self, Kind, resource},
    cidr, maps,
    model::ResourceSet,
    prefilter::{PrefilterCount, PrefilterEntry},
};

use crate::{
    config::ENV_PREFILTER_MAX,
    map_write::converged,
    policy::{CLUSTER_MESH_POLICY, Cidr, MESH_POLICY, PolicyRef, RuleRef},
    policy_table::PolicyTableError,
};

/// One CIDR of the prefilter: the deny rule it stands for, or `None` for an `except` of a
/// denied block (passes, unless a wider block of another rule denies it: then that rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub cidr: Cidr,
    pub rule: Option<RuleRef>,
}

/// The prefilter of a model, and the deny blocks left to the pods, each with why.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Compiled {
    pub entries: Vec<Entry>,
    pub left_out: Vec<String>,
}

/// Whether an absent or empty selector: every pod (namespace).
fn selects_all(selector: Option<&api::LabelSelector>) -> bool {
    selector.is_none_or(|s| s.match_labels.is_empty() && s.match_expressions.is_empty())
}

fn overlaps(a: &Cidr, b: &Cidr) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The prefilter of `model` (see the module's documentation for what qualifies).
pub fn compile(model: &ResourceSet) -> Compiled {
    let policies: Vec<&api::MeshPolicy> = crate::principals::mesh_policies(model).collect();
    // Every address of the cluster, with what it is.
    let mut cluster: Vec<(Cidr, String)> = Vec::new();
    for r in model.of_kind(Kind::Node) {
        let Some(resource::Kind::Node(n)) = &r.kind else { continue };
        for a in n.addresses.iter().filter_map(|a| a.parse::<Ipv4Addr>().ok()) {
            cluster.push((cidr::host(a), format!("node {} address {a}", n.name)));
        }
        for c in n.pod_cidrs.iter().filter_map(|c| cidr::parse_v4(c)) {
            cluster.push((c, format!("node {} pod CIDR {c}", n.name)));
        }
    }
    for w in crate::policy::workloads(model) {
        for a in w.ips.iter().filter_map(|a| a.parse::<Ipv4Addr>().ok()) {
            cluster.push((cidr::host(a), format!("pod {}/{} address {a}", w.namespace, w.name)));
        }
    }
    // Enforcing allow rules that could admit addresses: (priority, the blocks; None: anyone).
    let mut allows: Vec<(u32, Option<Cidr>, String)> = Vec::new();
    for p in policies.iter().filter(|p| !p.audit) {
        for (index, rule) in p.ingress.iter().enumerate() {
            if rule.action != api::RuleAction::Allow as i32 || !rule.principals.is_empty() {
                continue; // principals are pods that proved who they are: never outside addresses
            }
            let name = format!("{} rule {index}", policy_ref(p));
            if rule.peers.is_empty() {
                allows.push((p.priority, None, name.clone()));
            }
            for block in rule.peers.iter().filter_map(|peer| peer.ip_block.as_ref()) {
                if let Some(c) = cidr::parse_v4(&block.cidr) {
                    allows.push((p.priority, Some(c), name.clone()));
                }
            }
        }
    }
    let mut out = Compiled::default();
    // (priority, rule, block): the deny blocks that qualify, deciding order first.
    let mut denies: Vec<(u32, RuleRef, Cidr, Vec<Cidr>)> = Vec::new();
    for p in &policies {
        let every_pod = p.namespace.is_empty()
            && selects_all(p.pod_selector.as_ref())
            && selects_all(p.namespace_selector.as_ref())
            && !p.audit;
        if !every_pod {
            continue;
        }
        let policy = PolicyRef { kind: CLUSTER_MESH_POLICY, namespace: String::new(), name: p.name.clone() };
        for (index, rule) in p.ingress.iter().enumerate() {
            let only_blocks = !rule.peers.is_empty() && rule.peers.iter().all(|peer| peer.ip_block.is_some());
            let whole = rule.ports.is_empty() && rule.principals.is_empty() && rule.http.is_empty();
            if rule.action != api::RuleAction::Deny as i32 || !only_blocks || !whole {
                continue;
            }
            let rule_ref = RuleRef { policy: policy.clone(), way: "ingress", index };
            for block in rule.peers.iter().filter_map(|peer| peer.ip_block.as_ref()) {
                let Some(c) = cidr::parse_v4(&block.cidr) else { continue };
                if let Some((_, what)) = cluster.iter().find(|(addr, _)| overlaps(addr, &c)) {
                    out.left_out.push(format!("{rule_ref}: {c} holds a cluster address ({what})"));
                    continue;
                }
                if let Some((_, _, by)) =
                    allows.iter().find(|(prio, block, _)| *prio < p.priority && block.is_none_or(|b| overlaps(&b, &c)))
                {
                    out.left_out.push(format!("{rule_ref}: {c} may be allowed first by {by}"));
                    continue;
                }
                let except = block.except.iter().filter_map(|e| cidr::parse_v4(e)).collect();
                denies.push((p.priority, rule_ref.clone(), c, except));
            }
        }
    }
    denies.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut by_cidr: BTreeMap<Cidr, Option<RuleRef>> = BTreeMap::new();
    for (_, rule, c, _) in &denies {
        by_cidr.entry(*c).or_insert_with(|| Some(rule.clone()));
    }
    for (_, _, block, excepts) in &denies {
        for e in excepts.iter().filter(|e| block.contains(*e)) {
            if by_cidr.contains_key(e) {
                continue; // denied as a block of its own
            }
            // What the trie would answer without this except: the longest other denied block
            // holding it that does not except it too.
            let wider = denies
                .iter()
                .filter(|(_, _, other, other_excepts)| {
                    other != block && other.contains(e) && !other_excepts.iter().any(|x| x.contains(e))
                })
                .max_by_key(|(_, _, other, _)| other.prefix_len())
                .map(|(_, rule, _, _)| rule.clone());
            by_cidr.insert(*e, wider);
        }
    }
    out.entries = by_cidr.into_iter().map(|(cidr, rule)| Entry { cidr, rule }).collect();
    out
}

fn policy_ref(p: &api::MeshPolicy) -> PolicyRef {
    let kind = if p.namespace.is_empty() { CLUSTER_MESH_POLICY } else { MESH_POLICY };
    PolicyRef { kind, namespace: p.namespace.clone(), name: p.name.clone() }
}

/// One CIDR's drops, summed over the CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub cidr: Cidr,
    pub rule: u32,
    pub packets: u64,
    pub bytes: u64,
}

/// The prefilter's maps, owned, with a copy of what they hold.
pub struct PrefilterMaps {
    cidrs: LpmTrie<MapData, u32, PrefilterEntry>,
    counts: PerCpuArray<MapData, PrefilterCount>,
    current: BTreeMap<Cidr, PrefilterEntry>,
    capacity: u32,
    /// Possible CPUs: the per-CPU values of one slot.
    cpus: usize,
}

fn key(c: &Cidr) -> Key<u32> {
    Key::new(u32::from(c.prefix_len()), cidr::first(c).to_be())
}

impl PrefilterMaps {
    /// Takes the maps out of `ebpf`; what they hold (a previous agent's) is read, so the first
    /// write changes only differences and the counters of kept CIDRs go on.
    pub fn new(ebpf: &mut aya::Ebpf, capacity: u32) -> Result<Self, PolicyTableError> {
        let mut take = |map: &'static str| ebpf.take_map(map).ok_or(PolicyTableError::MissingMap { map });
        let cidrs: LpmTrie<MapData, u32, PrefilterEntry> = LpmTrie::try_from(take(maps::PREFILTER)?)
            .map_err(|source| PolicyTableError::MapType { map: maps::PREFILTER, source })?;
        let counts = PerCpuArray::try_from(take(maps::PREFILTER_COUNTS)?)
            .map_err(|source| PolicyTableError::MapType { map: maps::PREFILTER_COUNTS, source })?;
        let current = cidrs
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (cidr::v4(u32::from_be(k.data()), k.prefix_len() as u8), v))
            .collect();
        let cpus = aya::util::nr_cpus().map_err(|(_, err)| PolicyTableError::Cpus(err))?.get() as usize;
        Ok(Self { cidrs, counts, current, capacity, cpus })
    }

    /// The CIDRs held, with their rule ids (0: passes).
    pub fn held(&self) -> BTreeMap<Cidr, u32> {
        self.current.iter().map(|(c, e)| (*c, e.rule)).collect()
    }

    /// Refuses `desired` (CIDR -> rule id) if the map cannot hold it beside what it holds now
    /// (new entries are written before old ones go).
    pub fn check_fits(&self, desired: &BTreeMap<Cidr, u32>) -> Result<(), PolicyTableError> {
        let new = desired.keys().filter(|c| !self.current.contains_key(c)).count();
        let needed = self.current.len() + new;
        if needed > self.capacity as usize {
            return Err(PolicyTableError::Capacity {
                map: maps::PREFILTER,
                needed,
                capacity: self.capacity,
                key: ENV_PREFILTER_MAX,
                largest: "ClusterMeshPolicy deny CIDRs and their excepts".into(),
            });
        }
        Ok(())
    }

    /// Makes the map hold `desired`: a new CIDR takes the lowest free counter slot (zeroed
    /// first); a changed rule keeps its slot; then what is gone is removed. A failed write
    /// leaves the copy true to the map, so the next write converges. Returns the entries
    /// written and removed.
    pub fn write(&mut self, desired: &BTreeMap<Cidr, u32>) -> Result<(usize, usize), PolicyTableError> {
        let write = |map: &'static str| move |source| PolicyTableError::Write { map, source };
        let (mut written, mut removed) = (0, 0);
        let mut used: BTreeSet<u32> = self.current.values().map(|e| e.slot).collect();
        for (c, &rule) in desired {
            let slot = match self.current.get(c) {
                Some(e) if e.rule == rule => continue,
                Some(e) => e.slot,
                None => {
                    let slot = (0..self.capacity).find(|s| !used.contains(s)).expect("checked to fit");
                    let zero = PerCpuValues::try_from(vec![PrefilterCount::default(); self.cpus])
                        .map_err(PolicyTableError::Cpus)?;
                    self.counts.set(slot, zero, 0).map_err(write(maps::PREFILTER_COUNTS))?;
                    used.insert(slot);
                    slot
                }
            };
            let entry = PrefilterEntry { rule, slot };
            self.cidrs.insert(&key(c), &entry, 0).map_err(write(maps::PREFILTER))?;
            self.current.insert(*c, entry);
            written += 1;
        }
        let gone: Vec<Cidr> = self.current.keys().filter(|c| !desired.contains_key(c)).copied().collect();
        for c in gone {
            converged(self.cidrs.remove(&key(&c))).map_err(write(maps::PREFILTER))?;
            self.current.remove(&c);
            removed += 1;
        }
        Ok((written, removed))
    }
}

/// What each denying CIDR of the prefilter pinned in `bpffs` dropped, summed over the CPUs
/// (read at scrape time, as the other kernel counters are); empty when nothing is pinned.
pub fn dropped(bpffs: &std::path::Path) -> Vec<Dropped> {
    let open = |map: &str| aya::maps::MapData::from_pin(bpffs.join(map)).ok().map(aya::maps::Map::from_map_data);
    let (Some(Ok(cidrs)), Some(Ok(counts))) = (open(maps::PREFILTER), open(maps::PREFILTER_COUNTS)) else {
        return Vec::new();
    };
    let (Ok(cidrs), Ok(counts)) = (
        LpmTrie::<MapData, u32, PrefilterEntry>::try_from(cidrs),
        PerCpuArray::<MapData, PrefilterCount>::try_from(counts),
    ) else {
        return Vec::new();
    };
    cidrs
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, e)| e.rule != 0)
        .map(|(k, e)| {
            let (packets, bytes) = counts
                .get(&e.slot, 0)
                .map_or((0, 0), |per_cpu| per_cpu.iter().fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes)));
            Dropped { cidr: cidr::v4(u32::from_be(k.data()), k.prefix_len() as u8), rule: e.rule, packets, bytes }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(cidr: &str, except: &[&str]) -> api::PolicyPeer {
        api::PolicyPeer {
            ip_block: Some(api::IpBlock { cidr: cidr.into(), except: except.iter().map(|e| (*e).into()).collect() }),
            ..Default::default()
        }
    }

    fn rule(action: api::RuleAction, peers: Vec<api::PolicyPeer>) -> api::MeshRule {
        api::MeshRule { action: action as i32, peers, ..Default::default() }
    }

    fn cluster_policy(name: &str, priority: u32, ingress: Vec<api::MeshRule>) -> api::MeshPolicy {
        api::MeshPolicy { name: name.into(), priority, ingress, ..Default::default() }
    }

    fn model(policies: Vec<api::MeshPolicy>) -> ResourceSet {
        let mut set = ResourceSet::default();
        set.insert(api::Resource {
            kind: Some(resource::Kind::Node(api::Node {
                name: "node-0".into(),
                addresses: vec!["172.18.0.2".into()],
                pod_cidrs: vec!["10.244.0.0/24".into()],
            })),
        });
        for p in policies {
            set.insert(api::Resource { kind: Some(resource::Kind::MeshPolicy(Box::new(p))) });
        }
        set
    }

    fn entries(compiled: &Compiled) -> Vec<(String, String)> {
        compiled
            .entries
            .iter()
            .map(|e| (e.cidr.to_string(), e.rule.as_ref().map_or("pass".to_owned(), ToString::to_string)))
            .collect()
    }

    #[test]
    fn a_cluster_deny_of_outside_blocks_is_prefiltered_with_its_excepts() {
        let deny = cluster_policy(
            "blocklist",
            10,
            vec![rule(
                api::RuleAction::Deny,
                vec![block("198.51.100.0/24", &["198.51.100.128/25"]), block("203.0.113.7/32", &[])],
            )],
        );
        let compiled = compile(&model(vec![deny]));
        assert_eq!(
            entries(&compiled),
            [
                ("198.51.100.0/24".into(), "ClusterMeshPolicy blocklist ingress rule 0".into()),
                ("198.51.100.128/25".into(), "pass".into()),
                ("203.0.113.7/32".into(), "ClusterMeshPolicy blocklist ingress rule 0".into()),
            ]
        );
        assert!(compiled.left_out.is_empty(), "{:?}", compiled.left_out);
    }

    #[test]
    fn cluster_addresses_earlier_allows_and_narrower_policies_are_left_to_the_pods() {
        let holds_node =
            cluster_policy("wide", 10, vec![rule(api::RuleAction::Deny, vec![block("172.18.0.0/16", &[])])]);
        let allowed_first =
            cluster_policy("late", 50, vec![rule(api::RuleAction::Deny, vec![block("192.0.2.0/24", &[])])]);
        let allow = api::MeshPolicy {
            namespace: "demo".into(),
            name: "partners".into(),
            priority: 20,
            ingress: vec![rule(api::RuleAction::Allow, vec![block("192.0.2.0/28", &[])])],
            ..Default::default()
        };
        let audit = api::MeshPolicy {
            audit: true,
            ..cluster_policy("audit", 1, vec![rule(api::RuleAction::Deny, vec![block("100.64.0.0/10", &[])])])
        };
        let some_pods = api::MeshPolicy {
            pod_selector: Some(api::LabelSelector {
                match_labels: [("app".to_owned(), "web".to_owned())].into(),
                match_expressions: vec![],
            }),
            ..cluster_policy("web-only", 1, vec![rule(api::RuleAction::Deny, vec![block("100.64.0.0/10", &[])])])
        };
        let with_ports = api::MeshPolicy {
            ingress: vec![api::MeshRule {
                ports: vec![api::PolicyPort { protocol: api::Protocol::Tcp as i32, ..Default::default() }],
                ..rule(api::RuleAction::Deny, vec![block("100.64.0.0/10", &[])])
            }],
            ..cluster_policy("ports", 1, vec![])
        };
        let compiled = compile(&model(vec![holds_node, allowed_first, allow, audit, some_pods, with_ports]));
        assert_eq!(entries(&compiled), []);
        let why = compiled.left_out.join("\n");
        assert!(why.contains("172.18.0.0/16 holds a cluster address (node node-0 address 172.18.0.2)"), "{why}");
        assert!(why.contains("192.0.2.0/24 may be allowed first by MeshPolicy demo/partners rule 0"), "{why}");
        assert_eq!(compiled.left_out.len(), 2, "{why}");
    }

    #[test]
    fn an_except_covered_by_another_block_keeps_that_blocks_rule() {
        let a = cluster_policy(
            "a",
            10,
            vec![rule(api::RuleAction::Deny, vec![block("198.51.0.0/16", &["198.51.100.0/24"])])],
        );
        let b = cluster_policy("b", 20, vec![rule(api::RuleAction::Deny, vec![block("198.0.0.0/8", &[])])]);
        let compiled = compile(&model(vec![a, b]));
        assert_eq!(
            entries(&compiled),
            [
                ("198.0.0.0/8".into(), "ClusterMeshPolicy b ingress rule 0".into()),
                ("198.51.0.0/16".into(), "ClusterMeshPolicy a ingress rule 0".into()),
                ("198.51.100.0/24".into(), "ClusterMeshPolicy b ingress rule 0".into()),
            ]
        );
    }
}
