//! The upstream model running in a lab: 9 pods over 2 nodes, the operator in local mode and
//! one agent per node, and the steps of a [`Case`] played against it.

use std::{collections::BTreeMap, fmt::Write as _, net::Ipv4Addr, time::Duration};

use super::{Case, NAMESPACES, Protocol, Reachability, Step, all_pods};
use crate::{
    lab::{Lab, LabError, Result},
    labnet,
    manifests::{self, Mesh, PodManifest},
};

/// How long one probe waits for a connection or a reply.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long a matrix may take to become the expected one after a change (upstream allows 10 s).
const SETTLE: Duration = Duration::from_secs(12);

/// The container ports of every pod.
const PORTS: [(&str, u16, &str); 6] = [
    ("serve-80-tcp", 80, "TCP"),
    ("serve-80-udp", 80, "UDP"),
    ("serve-81-tcp", 81, "TCP"),
    ("serve-81-udp", 81, "UDP"),
    ("serve-80-sctp", 80, "SCTP"),
    ("serve-81-sctp", 81, "SCTP"),
];

/// The lab pod of model pod `ns/pod`: `ns-pod`.
fn lab_name(pod: &str) -> String {
    pod.replace('/', "-")
}

type Labels = Vec<(String, String)>;

/// The model's objects: labels, policies and whatever a test adds.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub namespace_labels: BTreeMap<String, Labels>,
    pub pod_labels: BTreeMap<String, Labels>,
    /// (kind, namespace, name) -> YAML document.
    pub policies: BTreeMap<(String, String, String), String>,
}

impl Objects {
    /// The model's starting point: `ns: <name>` and `pod: <name>` labels, no policy.
    pub fn fresh() -> Self {
        let namespace_labels =
            NAMESPACES.iter().map(|ns| ((*ns).to_owned(), vec![("ns".to_owned(), (*ns).to_owned())])).collect();
        let pod_labels = all_pods()
            .into_iter()
            .map(|p| {
                let name = p.split_once('/').expect("ns/pod").1.to_owned();
                (p, vec![("pod".to_owned(), name)])
            })
            .collect();
        Self { namespace_labels, pod_labels, policies: BTreeMap::new() }
    }
}

/// The model in a lab.
pub struct ModelLab {
    pub lab: Lab,
    pub mesh: Mesh,
    pub objects: Objects,
}

/// The address of model pod `pod`'s service.
pub fn service_ip(pod: &str) -> Ipv4Addr {
    let index = all_pods().iter().position(|p| p == pod).expect("a model pod");
    Ipv4Addr::new(10, 96, 1, 10 + index as u8)
}

impl ModelLab {
    /// Builds the lab, starts the servers (TCP and UDP on 80 and 81 in every pod, each
    /// answering its model name) and the mesh with `agent_args`.
    pub fn start(agent_args: &[&str]) -> Result<Self> {
        let pods = all_pods();
        let names: Vec<String> = pods.iter().map(|p| lab_name(p)).collect();
        let node0: Vec<&str> = names.iter().step_by(2).map(String::as_str).collect();
        let node1: Vec<&str> = names.iter().skip(1).step_by(2).map(String::as_str).collect();
        let lab = Lab::new(&[&node0, &node1])?;
        for (model, name) in pods.iter().zip(&names) {
            for port in [80, 81] {
                labnet::serve(&lab, lab.pod(name), port, model)?;
            }
        }
        let objects = Objects::fresh();
        let mesh = Mesh::start(&lab, &render(&lab, &objects), agent_args)?;
        Ok(Self { lab, mesh, objects })
    }

    /// Writes the current objects as the cluster's manifests.
    pub fn write(&self) -> Result<()> {
        self.mesh.write(&render(&self.lab, &self.objects))
    }

    /// `text` with every `{ip:ns/pod}` replaced by that pod's address.
    pub fn substitute(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for pod in all_pods() {
            out = out.replace(&format!("{{ip:{pod}}}"), &self.lab.pod(&lab_name(&pod)).ip.to_string());
        }
        out
    }

    /// Adds or replaces the policies of `yaml` (one or more documents).
    pub fn apply(&mut self, yaml: &str) -> std::result::Result<(), String> {
        for doc in self.substitute(yaml).split("\n---").filter(|d| !d.trim().is_empty()) {
            let value: serde_json::Value =
                mesh_common::yaml::document(doc).map_err(|(field, e)| format!("{field}: {e}: {doc}"))?;
            let field = |path: &[&str]| {
                let mut v = &value;
                for p in path {
                    v = &v[*p];
                }
                v.as_str().unwrap_or_default().to_owned()
            };
            let key = (field(&["kind"]), field(&["metadata", "namespace"]), field(&["metadata", "name"]));
            self.objects.policies.insert(key, format!("{}\n", doc.trim_end()));
        }
        Ok(())
    }

    /// Probes every pod's service on `port`/`protocol` from every pod: model pod pairs that
    /// got their destination's answer.
    pub fn probe(&self, port: u16, protocol: Protocol) -> Result<BTreeMap<(String, String), bool>> {
        let pods = all_pods();
        let targets: Vec<String> = pods.iter().map(|p| format!("{}:{port}", service_ip(p))).collect();
        let protocol = match protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => return Err(LabError::Layout("this kernel has no SCTP".into())),
        };
        let results: Vec<Result<BTreeMap<String, Option<String>>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = pods
                .iter()
                .map(|from| {
                    let targets = targets.join(",");
                    scope.spawn(move || {
                        let mut command = self.lab.pod_command(self.lab.pod(&lab_name(from)), labnet::binary())?;
                        command.args(["probe", "--to", &targets, "--protocol", protocol]);
                        command.args(["--timeout-ms", &PROBE_TIMEOUT.as_millis().to_string()]);
                        let output = self.lab.run(&mut command, PROBE_TIMEOUT * 3 + Duration::from_secs(5))?;
                        serde_json::from_slice(&output.stdout).map_err(|err| LabError::Command {
                            command: "labnet probe".into(),
                            message: format!("{err}: {}", String::from_utf8_lossy(&output.stderr)),
                        })
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("a probe thread")).collect()
        });
        let mut observed = BTreeMap::new();
        for (from, result) in pods.iter().zip(results) {
            let replies = result?;
            for (to, target) in pods.iter().zip(&targets) {
                let reached = replies.get(target).and_then(Option::as_deref) == Some(to.as_str());
                observed.insert((from.clone(), to.clone()), reached);
            }
        }
        Ok(observed)
    }

    /// Probes until the matrix is `expect` (off the diagonal) or [`SETTLE`] passes; the
    /// mismatching cells otherwise.
    pub fn expect(&self, port: u16, protocol: Protocol, expect: &Reachability) -> std::result::Result<(), String> {
        let deadline = std::time::Instant::now() + SETTLE;
        loop {
            let observed = self.probe(port, protocol).map_err(|e| e.to_string())?;
            let wrong = mismatches(expect, &observed);
            if wrong.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(format!(
                    "{protocol:?}/{port}: {} cells differ:\n{}\nexpected:\n{}observed:\n{}",
                    wrong.len(),
                    wrong.join("\n"),
                    table(&expect.cells),
                    table(&observed)
                ));
            }
        }
    }

    /// Plays `case` from the model's starting point; the first failing step's error.
    pub fn run(&mut self, case: &Case) -> std::result::Result<(), String> {
        self.objects = Objects::fresh();
        for (index, step) in case.steps.iter().enumerate() {
            let at = |e: String| format!("step {index} ({}): {e}", step_name(step));
            match step {
                Step::Apply(yaml) => self.apply(yaml).map_err(at)?,
                Step::Delete { namespace, name } => {
                    self.objects.policies.retain(|(_, ns, n), _| !(ns == namespace && n == name));
                }
                Step::NamespaceLabels { namespace, labels } => {
                    self.objects.namespace_labels.insert((*namespace).to_owned(), owned(labels));
                }
                Step::PodLabels { pod, labels } => {
                    self.objects.pod_labels.insert((*pod).to_owned(), owned(labels));
                }
                Step::Probe { protocol: Protocol::Sctp, .. } => continue,
                Step::Probe { port, protocol, expect } => {
                    self.write().map_err(|e| at(e.to_string()))?;
                    self.expect(*port, *protocol, expect).map_err(at)?;
                    continue;
                }
            }
        }
        // A case ending with changes (or only SCTP probes) still has them applied.
        self.write().map_err(|e| e.to_string())
    }
}

fn owned(labels: &[(&str, &str)]) -> Labels {
    labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn step_name(step: &Step) -> &'static str {
    match step {
        Step::Apply(_) => "apply",
        Step::Delete { .. } => "delete",
        Step::NamespaceLabels { .. } => "namespace labels",
        Step::PodLabels { .. } => "pod labels",
        Step::Probe { .. } => "probe",
    }
}

/// The off-diagonal cells where `observed` differs from `expect`.
pub fn mismatches(expect: &Reachability, observed: &BTreeMap<(String, String), bool>) -> Vec<String> {
    expect
        .cells
        .iter()
        .filter(|((from, to), _)| from != to)
        .filter(|(cell, want)| observed.get(*cell) != Some(*want))
        .map(|((from, to), want)| format!("  {from} -> {to}: expected {}, got {}", verdict(*want), verdict(!*want)))
        .collect()
}

fn verdict(reached: bool) -> &'static str {
    if reached { "reachable" } else { "blocked" }
}

/// A matrix as rows of `X` (reachable) and `.` (blocked), sources down, destinations across.
pub fn table(cells: &BTreeMap<(String, String), bool>) -> String {
    let pods = all_pods();
    let mut out = format!("     {}\n", pods.join(" "));
    for from in &pods {
        let _ = write!(out, "{from}");
        for to in &pods {
            let mark = if cells.get(&(from.clone(), to.clone())) == Some(&true) { "X" } else { "." };
            let _ = write!(out, "   {mark}");
        }
        out.push('\n');
    }
    out
}

/// The whole cluster as manifests: nodes, namespaces, pods, services and the policies.
pub fn render(lab: &Lab, objects: &Objects) -> String {
    let mut out = manifests::nodes(lab);
    for ns in NAMESPACES {
        let _ = write!(out, "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n");
        let labels = &objects.namespace_labels[ns];
        if !labels.is_empty() {
            out.push_str("  labels:\n");
            for (k, v) in labels {
                let _ = writeln!(out, "    {k}: \"{v}\"");
            }
        }
        out.push_str("---\n");
    }
    for pod in all_pods() {
        let (ns, name) = pod.split_once('/').expect("ns/pod");
        let labels: Vec<(&str, &str)> =
            objects.pod_labels[&pod].iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let manifest = PodManifest { name: Some(name), labels: &labels, ports: &PORTS, ..Default::default() };
        out.push_str(&manifest.render(ns, lab.pod(&lab_name(&pod))));
        let mut spec = format!("  clusterIP: {}\n  selector:\n    pod: {name}\n  ports:\n", service_ip(&pod));
        for (port_name, number, protocol) in PORTS.iter().filter(|(_, _, p)| *p != "SCTP") {
            let _ = writeln!(
                spec,
                "    - {{name: {port_name}, port: {number}, targetPort: {number}, protocol: {protocol}}}"
            );
        }
        out.push_str(&manifests::service(ns, &format!("s-{ns}-{name}"), &spec));
    }
    for doc in objects.policies.values() {
        out.push_str(doc);
        out.push_str("---\n");
    }
    out
}

/// Flows judged per (action, reason, direction) on every node, summed over rules and CPUs,
/// read from the verdict counters the agents pinned.
pub fn verdicts(lab: &Lab) -> Result<BTreeMap<(u8, u8, u8), u64>> {
    use aya::maps::{MapData, PerCpuHashMap};
    use mesh_common::policy::{VerdictCount, VerdictKey};
    let mut out = BTreeMap::new();
    for node in &lab.nodes {
        let map: PerCpuHashMap<MapData, VerdictKey, VerdictCount> =
            crate::scenario::pinned_map(&node.bpffs.join(mesh_common::maps::VERDICTS))?;
        for (key, per_cpu) in map.iter().filter_map(std::result::Result::ok) {
            let flows: u64 = per_cpu.iter().map(|c| c.flows).sum();
            *out.entry((key.action, key.reason, key.direction)).or_default() += flows;
        }
    }
    Ok(out)
}
