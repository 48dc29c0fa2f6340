//! This node's policy in the kernel's form, and the maps that hold it.
//!
//! [`kernel_form`] turns the compiled policy of the local pods ([`crate::policy`]) into map
//! entries: every pod address with its identity, every ipBlock CIDR with a node-local CIDR
//! identity, per local pod and direction its isolation flags, and per (pod, direction, peer
//! identity) the rule prefixes, each holding the decision of the rules that cover it (so the
//! kernel's longest match is the answer). [`PolicyTable`] writes the difference to the maps,
//! after checking that the whole result fits.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuHashMap, lpm_trie::Key, lpm_trie::LpmTrie};
use mesh_common::{
    api, cidr, maps,
    policy::{
        ALLOW, ANY_PEER, ANY_PROTO_BITS, AUDIT, DENY, Decision, DirectionPolicy, EGRESS, Endpoint, HAS_RULES, INGRESS,
        IP_CIDR, IP_KEY_BITS, IP_POD, IP_PRINCIPAL, ISOLATED, ISOLATED_AUDIT, IpKey, PROTO_BITS, PolicyEntry,
        PolicyKey, VerdictCount, VerdictKey,
    },
    proto,
};

use crate::{
    config::{ENV_IDENTITIES_MAX, ENV_POLICY_MAX},
    flows::view::drop_reason_name,
    map_write::converged,
    policy::{Action, Cidr, Direction, EndpointPolicy, Peer, PolicyRef, PortSpec, RuleRef, Way},
    service_lb::Capacities,
};

/// CIDR identities are numbered from here (pod identities are far below).
pub const FIRST_CIDR_IDENTITY: u32 = 1 << 24;

/// What a rule id in the kernel stands for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Attribution {
    Rule(RuleRef),
    /// A default deny (or audit): no rule matched and this policy isolates the pod.
    Isolation {
        policy: PolicyRef,
        way: Way,
    },
}

impl std::fmt::Display for Attribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rule(rule) => rule.fmt(f),
            Self::Isolation { policy, way } => write!(f, "{policy} {way} isolation (default deny)"),
        }
    }
}

/// How long a rule id no policy uses any more stays explained: established flows keep the
/// rule that admitted them (and its verdict counters) this long after the rule went away.
pub const RETIRED_RULE_GRACE: Duration = Duration::from_secs(600);

/// Numbers that must stay stable while the agent runs: rule ids (flows remember them) and
/// CIDR identities (entries are keyed by them). Both are freed when nothing uses them: a CIDR
/// identity as soon as no map entry holds it (and its number is given again), a rule id after
/// [`RETIRED_RULE_GRACE`] (never given again while the agent runs: conntrack entries and
/// verdict counters may still name it; 2^32 ids outlast any agent).
#[derive(Debug, Default)]
pub struct Numbering {
    rules: HashMap<Attribution, u32>,
    by_id: HashMap<u32, Attribution>,
    last_rule: u32,
    /// Rule ids no applied policy uses, since when.
    retired: HashMap<u32, Instant>,
    cidrs: BTreeMap<Cidr, u32>,
    next_cidr: u32,
    /// CIDR identities given back, reused smallest first.
    free_cidrs: BTreeSet<u32>,
}

impl Numbering {
    /// The id of `what`; ids start at 1 (0: no rule).
    pub fn rule(&mut self, what: Attribution) -> u32 {
        if let Some(id) = self.rules.get(&what) {
            self.retired.remove(id);
            return *id;
        }
        self.last_rule = self.last_rule.checked_add(1).expect("fewer than 2^32 rules in one agent's life");
        let id = self.last_rule;
        self.by_id.insert(id, what.clone());
        self.rules.insert(what, id);
        id
    }

    /// What rule id `id` stands for.
    pub fn attribution(&self, id: u32) -> Option<&Attribution> {
        self.by_id.get(&id)
    }

    /// Every rule id with what it stands for, in id order.
    pub fn attributions(&self) -> impl Iterator<Item = (u32, &Attribution)> {
        let mut all: Vec<(u32, &Attribution)> = self.by_id.iter().map(|(id, what)| (*id, what)).collect();
        all.sort_unstable_by_key(|(id, _)| *id);
        all.into_iter()
    }

    /// How many rule ids and CIDR identities are held (retired rules included).
    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        (self.by_id.len(), self.cidrs.len())
    }

    /// Takes over the CIDR identities a previous agent left in the maps, so a CIDR keeps its
    /// number and no number stands for two CIDRs while the maps change.
    fn adopt_cidrs(&mut self, held: &KernelPolicy) {
        for (&(kind, cidr), &id) in &held.identities {
            if kind == IP_CIDR && id >= FIRST_CIDR_IDENTITY {
                self.cidrs.insert(cidr, id);
                self.next_cidr = self.next_cidr.max(id - FIRST_CIDR_IDENTITY + 1);
            }
        }
        let taken: BTreeSet<u32> = self.cidrs.values().copied().collect();
        self.free_cidrs =
            (FIRST_CIDR_IDENTITY..FIRST_CIDR_IDENTITY + self.next_cidr).filter(|id| !taken.contains(id)).collect();
    }

    fn cidr(&mut self, cidr: Cidr) -> u32 {
        if let Some(id) = self.cidrs.get(&cidr) {
            return *id;
        }
        let id = self.free_cidrs.pop_first().unwrap_or_else(|| {
            self.next_cidr += 1;
            FIRST_CIDR_IDENTITY + self.next_cidr - 1
        });
        self.cidrs.insert(cidr, id);
        id
    }

    /// After `held` is what the maps hold: CIDR identities not in it are given back, rule ids
    /// not in it are retired, and those retired for longer than `grace` are forgotten
    /// (returned, so their counters can go too).
    fn collect(&mut self, held: &KernelPolicy, now: Instant, grace: Duration) -> Vec<u32> {
        let cidrs_held: BTreeSet<Cidr> =
            held.identities.keys().filter(|(kind, _)| *kind == IP_CIDR).map(|(_, cidr)| *cidr).collect();
        let free = &mut self.free_cidrs;
        self.cidrs.retain(|cidr, id| {
            let keep = cidrs_held.contains(cidr);
            if !keep {
                free.insert(*id);
            }
            keep
        });
        let used = rules_used(held);
        for id in self.by_id.keys() {
            if !used.contains(id) {
                self.retired.entry(*id).or_insert(now);
            }
        }
        self.retired.retain(|id, _| !used.contains(id));
        let forgotten: Vec<u32> =
            self.retired.iter().filter(|(_, since)| now.duration_since(**since) >= grace).map(|(id, _)| *id).collect();
        for id in &forgotten {
            self.retired.remove(id);
            if let Some(what) = self.by_id.remove(id) {
                self.rules.remove(&what);
            }
        }
        forgotten
    }
}

/// The rule ids `policy` refers to.
fn rules_used(policy: &KernelPolicy) -> BTreeSet<u32> {
    let mut used = BTreeSet::new();
    for entry in policy.entries.values() {
        used.extend([entry.enforced.rule, entry.with_audit.rule]);
    }
    used.extend(policy.prefilter.values().copied());
    for endpoint in policy.endpoints.values() {
        for direction in [endpoint.ingress, endpoint.egress] {
            used.extend([direction.isolating_rule, direction.audit_isolating_rule]);
        }
    }
    used.remove(&0);
    used
}

/// A local pod with its policy and host-side interface.
#[derive(Debug, Clone, Copy)]
pub struct LocalEndpoint<'a> {
    pub ifindex: u32,
    pub policy: &'a EndpointPolicy,
}

/// An LPM key of the policy map: prefix length and data.
pub type PolicyPrefix = (u32, PolicyKey);
/// An LPM key of the identity map: kind and prefix.
pub type IdentityPrefix = (u32, Cidr);

/// The maps' desired content.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KernelPolicy {
    pub identities: BTreeMap<IdentityPrefix, u32>,
    pub endpoints: BTreeMap<u32, Endpoint>,
    pub entries: BTreeMap<PolicyPrefix, PolicyEntry>,
    /// Policy map entries each policy brought (a prefix several rules share counts for each).
    pub entries_by_policy: BTreeMap<PolicyRef, usize>,
    /// The XDP prefilter: CIDR -> the id of the deny rule it stands for (0: passes).
    pub prefilter: BTreeMap<Cidr, u32>,
}

/// The prefilter's kernel form: each CIDR with its rule's id.
pub fn prefilter_form(entries: &[crate::prefilter::Entry], numbering: &mut Numbering) -> BTreeMap<Cidr, u32> {
    entries
        .iter()
        .map(|e| (e.cidr, e.rule.as_ref().map_or(0, |rule| numbering.rule(Attribution::Rule(rule.clone())))))
        .collect()
}

/// One rule's contribution for one peer identity: a protocol (`None`: all) and a port range
/// (`None`: all ports of it).
#[derive(Debug, Clone)]
struct Item<'a> {
    proto: Option<u8>,
    ports: Option<(u16, u16)>,
    decision: Decision,
    audit: bool,
    policy: &'a PolicyRef,
}

/// Compiles the kernel form of `endpoints`' policy; `workloads` are every pod of the cluster
/// (their addresses are the pod half of the identity map).
pub fn kernel_form(
    endpoints: &[LocalEndpoint<'_>],
    workloads: &[&api::Workload],
    numbering: &mut Numbering,
    principals: &crate::principals::Numbering,
) -> KernelPolicy {
    let mut out = KernelPolicy::default();
    for w in workloads {
        for ip in w.ips.iter().filter_map(|ip| ip.parse::<Ipv4Addr>().ok()) {
            out.identities.insert((IP_POD, cidr::host(ip)), w.identity);
        }
    }
    // This node's pods whose service account a principal rule names: what the kernel knows a
    // client that came in on a local pod's interface as.
    if !principals.is_empty() {
        let local: BTreeSet<&str> = endpoints.iter().map(|e| e.policy.pod.as_str()).collect();
        for w in workloads {
            let Some(number) = principals.account(&w.namespace, &w.service_account) else { continue };
            if !local.contains(format!("{}/{}", w.namespace, w.name).as_str()) {
                continue;
            }
            for ip in w.ips.iter().filter_map(|ip| ip.parse::<Ipv4Addr>().ok()) {
                out.identities.insert((IP_PRINCIPAL, cidr::host(ip)), crate::principals::identity(number));
            }
        }
    }
    // Every CIDR and except of every block: an address's most specific one says which blocks
    // hold it (a block holds it if the block's CIDR contains that one and no except does).
    let mut cidrs: BTreeSet<Cidr> = BTreeSet::new();
    for endpoint in endpoints {
        for direction in [&endpoint.policy.ingress, &endpoint.policy.egress] {
            for rule in &direction.rules {
                for peer in &rule.peers {
                    if let Peer::Block { cidr, except } = peer {
                        cidrs.insert(*cidr);
                        cidrs.extend(except.iter().copied());
                    }
                }
            }
        }
    }
    for cidr in &cidrs {
        out.identities.insert((IP_CIDR, *cidr), numbering.cidr(*cidr));
    }
    for endpoint in endpoints {
        let mut value = Endpoint::default();
        for (direction, way, code) in
            [(&endpoint.policy.ingress, "ingress", INGRESS), (&endpoint.policy.egress, "egress", EGRESS)]
        {
            let mut flags = DirectionPolicy::default();
            if let Some(policy) = direction.isolated_by.first() {
                flags.flags |= ISOLATED;
                flags.isolating_rule = numbering.rule(Attribution::Isolation { policy: policy.clone(), way });
            }
            if let Some(policy) = direction.audit_isolated_by.first() {
                flags.flags |= ISOLATED_AUDIT;
                flags.audit_isolating_rule = numbering.rule(Attribution::Isolation { policy: policy.clone(), way });
            }
            let items = items(endpoint, direction, code, workloads, &cidrs, numbering, principals);
            if !items.is_empty() {
                flags.flags |= HAS_RULES;
            }
            for (peer, items) in items {
                write_entries(&mut out, endpoint.ifindex, code, peer, &items);
            }
            if code == INGRESS {
                value.ingress = flags;
            } else {
                value.egress = flags;
            }
        }
        if value != Endpoint::default() {
            out.endpoints.insert(endpoint.ifindex, value);
        }
    }
    out
}

/// The items of one direction's rules, by peer identity, in decision order.
fn items<'a>(
    endpoint: &LocalEndpoint<'_>,
    direction: &'a Direction,
    code: u8,
    workloads: &[&api::Workload],
    cidrs: &BTreeSet<Cidr>,
    numbering: &mut Numbering,
    principals: &crate::principals::Numbering,
) -> BTreeMap<u32, Vec<Item<'a>>> {
    let mut by_peer: BTreeMap<u32, Vec<Item>> = BTreeMap::new();
    // A deny rule for some HTTP requests denies no connection: its agent applies it.
    for rule in direction.rules.iter().filter(|rule| !rule.requests_only()) {
        let decision = Decision {
            rule: numbering.rule(Attribution::Rule(rule.rule.clone())),
            priority: rule.priority,
            action: if rule.action == Action::Deny { DENY } else { ALLOW },
            _pad: 0,
        };
        let item = |proto, ports| Item { proto, ports, decision, audit: rule.audit, policy: &rule.rule.policy };
        let any = [Peer::Any];
        let peers = if rule.peers.is_empty() { &any[..] } else { &rule.peers[..] };
        let peer_ids: BTreeSet<u32> =
            peers.iter().flat_map(|peer| peer_identities(peer, cidrs, numbering, principals)).collect();
        let Some(specs) = &rule.ports else {
            for peer in &peer_ids {
                by_peer.entry(*peer).or_default().push(item(None, None));
            }
            continue;
        };
        for spec in specs {
            match spec {
                PortSpec::Range { protocol, first, last } => {
                    let ports = (*first > 1 || *last < u16::MAX).then_some((*first, *last));
                    for peer in &peer_ids {
                        by_peer.entry(*peer).or_default().push(item(Some(proto_number(*protocol)), ports));
                    }
                }
                PortSpec::Named { protocol, name } if code == INGRESS => {
                    // The local pod's own port of that name.
                    for number in named(&endpoint.policy.named_ports, *protocol, name) {
                        for peer in &peer_ids {
                            by_peer
                                .entry(*peer)
                                .or_default()
                                .push(item(Some(proto_number(*protocol)), Some((number, number))));
                        }
                    }
                }
                PortSpec::Named { protocol, name } => {
                    // Each destination pod's port of that name, for that pod's identity.
                    for w in workloads.iter().filter(|w| peers.iter().any(|p| pod_in_peer(p, w))) {
                        for number in named(&w.named_ports, *protocol, name) {
                            by_peer
                                .entry(w.identity)
                                .or_default()
                                .push(item(Some(proto_number(*protocol)), Some((number, number))));
                        }
                    }
                }
            }
        }
    }
    by_peer
}

/// The identities standing for `peer` in the policy map.
fn peer_identities(
    peer: &Peer,
    cidrs: &BTreeSet<Cidr>,
    numbering: &Numbering,
    principals: &crate::principals::Numbering,
) -> Vec<u32> {
    match peer {
        Peer::Any => vec![ANY_PEER],
        // A principal of another trust domain is never authenticated here: no identity.
        Peer::Principals(named) => named.iter().filter_map(|p| principals.identity(p)).collect(),
        Peer::Identities(ids) => ids.iter().copied().collect(),
        Peer::Block { cidr, except } => {
            // The CIDRs inside the block (in address order, starting at the block's) and outside
            // every except.
            let end = u64::from(cidr::first(cidr)) + (1u64 << (32 - u32::from(cidr.prefix_len())));
            cidrs
                .range(*cidr..)
                .take_while(|c| u64::from(cidr::first(c)) < end)
                .filter(|c| {
                    c.prefix_len() >= cidr.prefix_len()
                        && !except.iter().any(|e| e.prefix_len() <= c.prefix_len() && e.contains(&c.network()))
                })
                .filter_map(|c| numbering.cidrs.get(c).copied())
                .collect()
        }
    }
}

/// Whether pod `w` is one of the pods `peer` stands for.
fn pod_in_peer(peer: &Peer, w: &api::Workload) -> bool {
    match peer {
        Peer::Any => true,
        Peer::Identities(ids) => ids.contains(&w.identity),
        // Ingress only: never an egress rule's destination.
        Peer::Principals(_) => false,
        Peer::Block { cidr, except } => w
            .ips
            .iter()
            .filter_map(|ip| ip.parse::<Ipv4Addr>().ok())
            .any(|ip| cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))),
    }
}

/// The numbers of the container ports named `name` for `protocol`.
fn named(ports: &[api::NamedPort], protocol: api::Protocol, name: &str) -> Vec<u16> {
    ports
        .iter()
        .filter(|p| p.name == name && p.protocol == protocol as i32)
        .filter_map(|p| u16::try_from(p.number).ok())
        .collect()
}

fn proto_number(protocol: api::Protocol) -> u8 {
    match protocol {
        api::Protocol::Udp => proto::UDP,
        api::Protocol::Sctp => proto::SCTP,
        _ => proto::TCP,
    }
}

/// The prefixes (value, length in bits) that cover `first..=last` of the 16-bit port space.
pub fn port_prefixes(first: u16, last: u16) -> Vec<(u16, u32)> {
    let mut out = Vec::new();
    let (mut low, high) = (u32::from(first), u32::from(last));
    while low <= high {
        // The largest aligned block starting at `low` that stays within `high`.
        let mut size = if low == 0 { 1 << 16 } else { 1 << low.trailing_zeros() };
        while low + size - 1 > high {
            size >>= 1;
        }
        out.push((u16::try_from(low).expect("a port"), 16 - size.trailing_zeros()));
        low += size;
    }
    out
}

/// The protocol/port prefix of an item: (protocol or 0, port range or full).
fn item_prefixes(item: &Item<'_>) -> Vec<(u32, u8, u16)> {
    match (item.proto, item.ports) {
        (None, _) => vec![(ANY_PROTO_BITS, 0, 0)],
        (Some(proto), None) => vec![(PROTO_BITS, proto, 0)],
        (Some(proto), Some((first, last))) => {
            port_prefixes(first, last).into_iter().map(|(port, bits)| (PROTO_BITS + bits, proto, port)).collect()
        }
    }
}

/// Whether `item` covers the whole prefix (`bits`, `proto`, `port`).
fn covers(item: &Item<'_>, bits: u32, proto: u8, port: u16) -> bool {
    match item.proto {
        None => true,
        Some(p) if bits < PROTO_BITS || p != proto => false,
        Some(_) => item.ports.is_none_or(|(first, last)| {
            let size = 1u32 << (16 - (bits - PROTO_BITS));
            u32::from(first) <= u32::from(port) && u32::from(port) + size - 1 <= u32::from(last)
        }),
    }
}

/// The entries of one (endpoint, direction, peer): one per distinct prefix of its items, each
/// holding the first covering item's decision (items are in decision order), once from the
/// enforcing items and once from all.
fn write_entries(out: &mut KernelPolicy, endpoint: u32, direction: u8, peer: u32, items: &[Item<'_>]) {
    let mut prefixes: BTreeSet<(u32, u8, u16)> = BTreeSet::new();
    for item in items {
        let mine = item_prefixes(item);
        *out.entries_by_policy.entry(item.policy.clone()).or_default() += mine.len();
        prefixes.extend(mine);
    }
    for (bits, proto, port) in prefixes {
        let mut covering = items.iter().filter(|item| covers(item, bits, proto, port));
        let first = covering.clone().next();
        let enforced = covering.find(|item| !item.audit);
        let entry = PolicyEntry {
            enforced: enforced.map(|item| item.decision).unwrap_or_default(),
            with_audit: first.map(|item| item.decision).unwrap_or_default(),
        };
        let key = PolicyKey { endpoint, peer, direction, proto, port: port.to_be() };
        out.entries.insert((bits, key), entry);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyTableError {
    #[error("map {map} is not in the loaded object (was the agent built from another mesh-ebpf?)")]
    MissingMap { map: &'static str },
    #[error("map {map} has an unexpected type or layout: {source}")]
    MapType { map: &'static str, source: MapError },
    #[error(
        "the policy needs {needed} entries in map {map} but its capacity is {capacity}: raise {key}, or shrink the largest policies ({largest}); nothing was applied, the previous policy stays in force"
    )]
    Capacity { map: &'static str, needed: usize, capacity: u32, key: &'static str, largest: String },
    #[error("cannot count the possible CPUs (/sys/devices/system/cpu/possible): {0}")]
    Cpus(std::io::Error),
    #[error("writing map {map} failed: {source}; the policy is partly applied and is tried again")]
    Write { map: &'static str, source: MapError },
}

/// What one apply changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PolicyStats {
    pub identities: usize,
    pub endpoints: usize,
    pub entries: usize,
    pub prefilter: usize,
    pub removed: usize,
}

/// The policy maps, owned, with a copy of what they hold.
pub struct PolicyTable {
    identities: LpmTrie<MapData, IpKey, u32>,
    endpoints: BpfHashMap<MapData, u32, Endpoint>,
    policy: LpmTrie<MapData, PolicyKey, PolicyEntry>,
    revision: Array<MapData, u32>,
    verdicts: PerCpuHashMap<MapData, VerdictKey, VerdictCount>,
    /// The verdict counters last reported.
    reported: HashMap<VerdictKey, VerdictCount>,
    /// What the maps hold (every write that succeeded).
    current: KernelPolicy,
    /// Something changed since the revision was last bumped.
    revision_pending: bool,
    numbering: Numbering,
    capacities: Capacities,
    prefilter: crate::prefilter::PrefilterMaps,
}

fn map_type(map: &'static str) -> impl FnOnce(MapError) -> PolicyTableError {
    move |source| PolicyTableError::MapType { map, source }
}

fn write(map: &'static str) -> impl FnOnce(MapError) -> PolicyTableError {
    move |source| PolicyTableError::Write { map, source }
}

fn ip_key(kind: u32, cidr: Cidr) -> Key<IpKey> {
    Key::new(IP_KEY_BITS + u32::from(cidr.prefix_len()), IpKey { kind: kind.to_be(), addr: cidr::first(&cidr).to_be() })
}

impl PolicyTable {
    /// Takes the maps out of `ebpf`; what they hold (a previous agent's policy) is read, so the
    /// first apply writes only differences and removes what is gone.
    pub fn new(ebpf: &mut aya::Ebpf, capacities: Capacities) -> Result<Self, PolicyTableError> {
        let mut take = |map: &'static str| ebpf.take_map(map).ok_or(PolicyTableError::MissingMap { map });
        let identities: LpmTrie<MapData, IpKey, u32> =
            LpmTrie::try_from(take(maps::IDENTITIES)?).map_err(map_type(maps::IDENTITIES))?;
        let endpoints: BpfHashMap<MapData, u32, Endpoint> =
            BpfHashMap::try_from(take(maps::ENDPOINTS)?).map_err(map_type(maps::ENDPOINTS))?;
        let policy: LpmTrie<MapData, PolicyKey, PolicyEntry> =
            LpmTrie::try_from(take(maps::POLICY)?).map_err(map_type(maps::POLICY))?;
        let revision = Array::try_from(take(maps::POLICY_REVISION)?).map_err(map_type(maps::POLICY_REVISION))?;
        let verdicts = PerCpuHashMap::try_from(take(maps::VERDICTS)?).map_err(map_type(maps::VERDICTS))?;
        let mut current = KernelPolicy::default();
        for (key, value) in identities.iter().filter_map(Result::ok) {
            let data = key.data();
            let cidr = cidr::v4(u32::from_be(data.addr), (key.prefix_len() - IP_KEY_BITS) as u8);
            current.identities.insert((u32::from_be(data.kind), cidr), value);
        }
        for (key, value) in endpoints.iter().filter_map(Result::ok) {
            current.endpoints.insert(key, value);
        }
        for (key, value) in policy.iter().filter_map(Result::ok) {
            current.entries.insert((key.prefix_len(), key.data()), value);
        }
        let prefilter = crate::prefilter::PrefilterMaps::new(ebpf, capacities.prefilter)?;
        current.prefilter = prefilter.held();
        let mut numbering = Numbering::default();
        numbering.adopt_cidrs(&current);
        let mut table = Self {
            identities,
            endpoints,
            policy,
            revision,
            verdicts,
            reported: HashMap::new(),
            current,
            revision_pending: false,
            numbering,
            capacities,
            prefilter,
        };
        // Counts from before this agent are not news.
        table.verdict_report();
        Ok(table)
    }

    /// The verdicts counted since the last report, each explained: one line per (rule,
    /// verdict, reason, direction) that judged new flows or dropped packets.
    pub fn verdict_report(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        for (key, per_cpu) in self.verdicts.iter().filter_map(Result::ok) {
            let total = per_cpu.iter().fold(VerdictCount::default(), |sum, c| VerdictCount {
                flows: sum.flows + c.flows,
                dropped_packets: sum.dropped_packets + c.dropped_packets,
            });
            let before = self.reported.insert(key, total).unwrap_or_default();
            let (flows, dropped) = (total.flows - before.flows, total.dropped_packets - before.dropped_packets);
            if flows == 0 && dropped == 0 {
                continue;
            }
            let verdict = match key.action {
                DENY => format!("DROPPED ({}, {})", drop_reason_name(u32::from(key.reason)), key.reason),
                AUDIT => "AUDIT".to_owned(),
                _ => "FORWARDED".to_owned(),
            };
            let why = match self.numbering.attribution(key.rule) {
                Some(what) => what.to_string(),
                None if key.rule == 0 => "no policy selects the pod this way".to_owned(),
                None => format!("rule {} of an earlier agent", key.rule),
            };
            let direction = if key.direction == INGRESS { "ingress" } else { "egress" };
            lines.push(format!("{verdict} {direction}: {flows} new flows, {dropped} packets dropped; by {why}"));
        }
        lines
    }

    /// What rule id `id` (in conntrack entries and verdict counters) stands for.
    pub fn attribution(&self, id: u32) -> Option<&Attribution> {
        self.numbering.attribution(id)
    }

    /// Every rule id this agent numbered, with what it stands for.
    pub fn attributions(&self) -> impl Iterator<Item = (u32, &Attribution)> {
        self.numbering.attributions()
    }

    /// Whether the prefilter holds a CIDR that drops (XDP has work).
    pub fn prefilter_active(&self) -> bool {
        self.current.prefilter.values().any(|rule| *rule != 0)
    }

    /// Makes the maps hold the kernel form of `endpoints`' policy and the `prefilter`. Checked whole before
    /// anything is written: if it does not fit, nothing changes. A write that fails leaves
    /// the copy of the maps true to what they hold (every write that succeeded is in it, a
    /// key found already gone counts as removed), so the next apply writes what is left and
    /// converges.
    pub fn apply(
        &mut self,
        endpoints: &[LocalEndpoint<'_>],
        workloads: &[&api::Workload],
        principals: &crate::principals::Numbering,
        prefilter: &[crate::prefilter::Entry],
    ) -> Result<PolicyStats, PolicyTableError> {
        let mut desired = kernel_form(endpoints, workloads, &mut self.numbering, principals);
        desired.prefilter = prefilter_form(prefilter, &mut self.numbering);
        self.check_fits(&desired)?;
        let stats = self.write(&desired)?;
        self.current.entries_by_policy = desired.entries_by_policy;
        let forgotten: BTreeSet<u32> =
            self.numbering.collect(&self.current, Instant::now(), RETIRED_RULE_GRACE).into_iter().collect();
        if !forgotten.is_empty() {
            // The counters of a forgotten rule would never be explained again: one pass over
            // the counters for all of them.
            let gone: Vec<VerdictKey> =
                self.verdicts.keys().filter_map(Result::ok).filter(|key| forgotten.contains(&key.rule)).collect();
            for key in gone {
                self.reported.remove(&key);
                converged(self.verdicts.remove(&key)).map_err(write(maps::VERDICTS))?;
            }
        }
        Ok(stats)
    }

    /// Writes the difference between the maps and `desired`, keeping `current` true to the
    /// maps after every write.
    fn write(&mut self, desired: &KernelPolicy) -> Result<PolicyStats, PolicyTableError> {
        let mut stats = PolicyStats::default();
        // New and changed first (identities, rules, then the flags that make pods use them),
        // then what is gone, then the revision that makes remembered verdicts stale.
        let current = &mut self.current;
        for (&(kind, cidr), &id) in &desired.identities {
            if current.identities.get(&(kind, cidr)) != Some(&id) {
                self.revision_pending = true;
                self.identities.insert(&ip_key(kind, cidr), &id, 0).map_err(write(maps::IDENTITIES))?;
                current.identities.insert((kind, cidr), id);
                stats.identities += 1;
            }
        }
        for (&(bits, key), entry) in &desired.entries {
            if current.entries.get(&(bits, key)) != Some(entry) {
                self.revision_pending = true;
                self.policy.insert(&Key::new(bits, key), entry, 0).map_err(write(maps::POLICY))?;
                current.entries.insert((bits, key), *entry);
                stats.entries += 1;
            }
        }
        for (&ifindex, value) in &desired.endpoints {
            if current.endpoints.get(&ifindex) != Some(value) {
                self.revision_pending = true;
                self.endpoints.insert(&ifindex, value, 0).map_err(write(maps::ENDPOINTS))?;
                current.endpoints.insert(ifindex, *value);
                stats.endpoints += 1;
            }
        }
        let gone: Vec<u32> = current.endpoints.keys().filter(|k| !desired.endpoints.contains_key(k)).copied().collect();
        for ifindex in gone {
            self.revision_pending = true;
            converged(self.endpoints.remove(&ifindex)).map_err(write(maps::ENDPOINTS))?;
            current.endpoints.remove(&ifindex);
            stats.removed += 1;
        }
        let gone: Vec<PolicyPrefix> =
            current.entries.keys().filter(|k| !desired.entries.contains_key(k)).copied().collect();
        for (bits, key) in gone {
            self.revision_pending = true;
            converged(self.policy.remove(&Key::new(bits, key))).map_err(write(maps::POLICY))?;
            current.entries.remove(&(bits, key));
            stats.removed += 1;
        }
        let gone: Vec<IdentityPrefix> =
            current.identities.keys().filter(|k| !desired.identities.contains_key(k)).copied().collect();
        for (kind, cidr) in gone {
            self.revision_pending = true;
            converged(self.identities.remove(&ip_key(kind, cidr))).map_err(write(maps::IDENTITIES))?;
            current.identities.remove(&(kind, cidr));
            stats.removed += 1;
        }
        // The prefilter is read by XDP only (no verdict of it is remembered): no revision.
        let written = self.prefilter.write(&desired.prefilter);
        current.prefilter = self.prefilter.held();
        let (written, removed) = written?;
        stats.prefilter += written;
        stats.removed += removed;
        if self.revision_pending {
            let revision = self.revision.get(&0, 0).unwrap_or(0).wrapping_add(1);
            self.revision.set(0, &revision, 0).map_err(write(maps::POLICY_REVISION))?;
            self.revision_pending = false;
        }
        Ok(stats)
    }

    /// Refuses `desired` if the maps cannot hold it together with what they hold now (new
    /// entries are written before old ones are removed).
    fn check_fits(&self, desired: &KernelPolicy) -> Result<(), PolicyTableError> {
        self.prefilter.check_fits(&desired.prefilter)?;
        let union = |now: usize, new: usize, same: usize| now + new - same;
        let same_entries = desired.entries.keys().filter(|k| self.current.entries.contains_key(k)).count();
        let needed = union(self.current.entries.len(), desired.entries.len(), same_entries);
        if needed > self.capacities.policy as usize {
            let mut largest: Vec<(&PolicyRef, &usize)> = desired.entries_by_policy.iter().collect();
            largest.sort_by_key(|(_, n)| std::cmp::Reverse(**n));
            let largest =
                largest.iter().take(3).map(|(p, n)| format!("{p}: {n} entries")).collect::<Vec<_>>().join(", ");
            return Err(PolicyTableError::Capacity {
                map: maps::POLICY,
                needed,
                capacity: self.capacities.policy,
                key: ENV_POLICY_MAX,
                largest,
            });
        }
        let same_ids = desired.identities.keys().filter(|k| self.current.identities.contains_key(k)).count();
        let needed = union(self.current.identities.len(), desired.identities.len(), same_ids);
        if needed > self.capacities.identities as usize {
            return Err(PolicyTableError::Capacity {
                map: maps::IDENTITIES,
                needed,
                capacity: self.capacities.identities,
                key: ENV_IDENTITIES_MAX,
                largest: "pod addresses and ipBlock CIDRs".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use mesh_common::policy::{AUDIT, better};

    /// What the kernel decides for a new flow, computed from `kernel` the way
    /// `mesh-ebpf/src/policy.rs` does (longest-prefix lookups, then the same combination).
    pub(crate) fn judge(
        kernel: &KernelPolicy,
        ifindex: u32,
        direction: u8,
        peer: Ipv4Addr,
        proto: u8,
        port: u16,
    ) -> u8 {
        judge_as(kernel, ifindex, direction, peer, None, proto, port)
    }

    /// [`judge`] for a client that proved principal identity `principal` (the tunnel's mark,
    /// or a local pod's [`IP_PRINCIPAL`] entry).
    pub(crate) fn judge_as(
        kernel: &KernelPolicy,
        ifindex: u32,
        direction: u8,
        peer: Ipv4Addr,
        principal: Option<u32>,
        proto: u8,
        port: u16,
    ) -> u8 {
        let Some(endpoint) = kernel.endpoints.get(&ifindex) else { return ALLOW };
        let policy = if direction == INGRESS { endpoint.ingress } else { endpoint.egress };
        if policy.flags == 0 {
            return ALLOW;
        }
        let mut enforced = Decision::default();
        let mut with_audit = Decision::default();
        if policy.flags & HAS_RULES != 0 {
            let pod = kernel.identities.get(&(IP_POD, cidr::host(peer))).copied();
            let cidr = (0..=32u8)
                .rev()
                .find_map(|len| kernel.identities.get(&(IP_CIDR, cidr::v4(u32::from(peer), len))))
                .copied();
            for id in [pod, cidr, principal, Some(ANY_PEER)].into_iter().flatten() {
                let found = (ANY_PROTO_BITS..=PROTO_BITS + 16).rev().find_map(|bits| {
                    if bits > ANY_PROTO_BITS && bits < PROTO_BITS {
                        return None;
                    }
                    let (p, port) = if bits == ANY_PROTO_BITS {
                        (0, 0)
                    } else {
                        let len = bits - PROTO_BITS;
                        let mask = if len == 0 { 0 } else { u16::MAX << (16 - len) };
                        (proto, port & mask)
                    };
                    let key = PolicyKey { endpoint: ifindex, peer: id, direction, proto: p, port: port.to_be() };
                    kernel.entries.get(&(bits, key))
                });
                if let Some(entry) = found {
                    if better(&entry.enforced, &enforced) {
                        enforced = entry.enforced;
                    }
                    if better(&entry.with_audit, &with_audit) {
                        with_audit = entry.with_audit;
                    }
                }
            }
        }
        if enforced.action == DENY || (enforced.action == 0 && policy.flags & ISOLATED != 0) {
            return DENY;
        }
        if with_audit.action == DENY || (with_audit.action == 0 && policy.flags & ISOLATED_AUDIT != 0) {
            return AUDIT;
        }
        ALLOW
    }

    #[test]
    fn port_ranges_become_aligned_prefixes() {
        assert_eq!(port_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(port_prefixes(80, 81), vec![(80, 15)]);
        assert_eq!(port_prefixes(79, 81), vec![(79, 16), (80, 15)]);
        assert_eq!(port_prefixes(0, u16::MAX), vec![(0, 0)]);
        assert_eq!(port_prefixes(1, u16::MAX).len(), 16);
        // Every port of a range is covered exactly once, nothing outside it.
        for (first, last) in [(1u16, 1000u16), (1024, 65535), (3000, 3001), (5, 5)] {
            let prefixes = port_prefixes(first, last);
            let covered: u32 = prefixes.iter().map(|(_, bits)| 1u32 << (16 - bits)).sum();
            assert_eq!(covered, u32::from(last - first) + 1);
            for (value, bits) in prefixes {
                let size = 1u32 << (16 - bits);
                assert_eq!(u32::from(value) % size, 0, "aligned");
                assert!(u32::from(value) >= u32::from(first) && u32::from(value) + size - 1 <= u32::from(last));
            }
        }
    }

    #[test]
    fn rule_ids_are_stable_and_explained() {
        let mut numbering = Numbering::default();
        let policy = PolicyRef { kind: "NetworkPolicy", namespace: "x".into(), name: "p".into() };
        let rule = Attribution::Rule(RuleRef { policy: policy.clone(), way: "ingress", index: 2 });
        let a = numbering.rule(rule.clone());
        let b = numbering.rule(Attribution::Isolation { policy, way: "ingress" });
        assert_ne!(a, b);
        assert_eq!(numbering.rule(rule.clone()), a);
        assert_eq!(numbering.attribution(a), Some(&rule));
        assert_eq!(numbering.attribution(0), None);
        assert_eq!(rule.to_string(), "NetworkPolicy x/p ingress rule 2");
    }

    #[test]
    fn unused_numbers_are_freed_cidrs_at_once_rules_after_the_grace() {
        let mut numbering = Numbering::default();
        let cidr = |n: u32| cidr::v4((10 << 24) | (n << 8), 24);
        let a = numbering.cidr(cidr(1));
        let b = numbering.cidr(cidr(2));
        let policy = PolicyRef { kind: "NetworkPolicy", namespace: "x".into(), name: "p".into() };
        let rule = numbering.rule(Attribution::Rule(RuleRef { policy, way: "ingress", index: 0 }));
        // The maps hold only cidr(2), and an entry of the rule.
        let mut held = KernelPolicy::default();
        held.identities.insert((IP_CIDR, cidr(2)), b);
        let decision = Decision { rule, priority: 0, action: ALLOW, _pad: 0 };
        let key = PolicyKey { endpoint: 1, peer: b, direction: INGRESS, proto: proto::TCP, port: 0 };
        held.entries.insert((96, key), PolicyEntry { enforced: decision, with_audit: decision });
        let now = Instant::now();
        assert!(numbering.collect(&held, now, RETIRED_RULE_GRACE).is_empty());
        assert_eq!(numbering.held(), (1, 1));
        // The freed number is given again; a held CIDR keeps its own.
        assert_eq!(numbering.cidr(cidr(3)), a);
        assert_eq!(numbering.cidr(cidr(2)), b);
        // A rule nothing uses stays explained through the grace, then is forgotten, and its id
        // is never given again.
        let empty = KernelPolicy::default();
        assert!(numbering.collect(&empty, now, RETIRED_RULE_GRACE).is_empty());
        assert!(numbering.attribution(rule).is_some());
        assert_eq!(numbering.collect(&empty, now + RETIRED_RULE_GRACE, RETIRED_RULE_GRACE), vec![rule]);
        assert_eq!(numbering.attribution(rule), None);
        assert_eq!(numbering.held(), (0, 0));
        let policy = PolicyRef { kind: "NetworkPolicy", namespace: "x".into(), name: "p".into() };
        assert!(numbering.rule(Attribution::Rule(RuleRef { policy, way: "ingress", index: 0 })) > rule);
    }

    #[test]
    fn a_new_agent_keeps_the_cidr_numbers_it_finds_in_the_maps() {
        let cidr = |n: u32| cidr::v4((10 << 24) | (n << 8), 24);
        let mut held = KernelPolicy::default();
        held.identities.insert((IP_CIDR, cidr(1)), FIRST_CIDR_IDENTITY + 4);
        held.identities.insert((IP_POD, cidr::v4(1, 32)), 7);
        let mut numbering = Numbering::default();
        numbering.adopt_cidrs(&held);
        assert_eq!(numbering.cidr(cidr(1)), FIRST_CIDR_IDENTITY + 4);
        // Numbers below the highest one found are free; none is given twice.
        let more: BTreeSet<u32> = (2..8).map(|n| numbering.cidr(cidr(n))).collect();
        assert_eq!(more.len(), 6);
        assert!(!more.contains(&(FIRST_CIDR_IDENTITY + 4)));
        assert!(more.contains(&FIRST_CIDR_IDENTITY));
    }
}
