//! The scenario the foundation's tests and the demo share: one node, a client pod, and a
//! service `web` (a virtual IP) balanced over two backend pods that answer with their names.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
};

use aya::maps::{Map, MapData, MapError, PerCpuHashMap};
use mesh_common::pod_traffic::PodTraffic;

use crate::{
    lab::{Lab, LabError, Node, Pod, Result},
    labnet,
};

/// The service's virtual address (in kind's service range).
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const SERVICE_PORT: u16 = 80;
pub const BACKEND_PORT: u16 = 8080;
pub const CLIENT: &str = "client";
pub const BACKENDS: [&str; 2] = ["backend-a", "backend-b"];

/// `VIP:SERVICE_PORT`.
pub fn service_addr() -> SocketAddr {
    SocketAddr::from((VIP, SERVICE_PORT))
}

/// A one-node lab with the client and the two backends, each backend serving its own name.
pub fn web_lab() -> Result<Lab> {
    let lab = Lab::new(&[&[CLIENT, BACKENDS[0], BACKENDS[1]]])?;
    for backend in BACKENDS {
        labnet::serve(&lab, lab.pod(backend), BACKEND_PORT, backend)?;
    }
    Ok(lab)
}

/// The agent's state file for `web_lab`: its pods, and `web` over both backends.
pub fn web_state(lab: &Lab) -> String {
    let pods: String = [CLIENT, BACKENDS[0], BACKENDS[1]]
        .iter()
        .map(|name| format!("  - {{name: {name}, ip: {}}}\n", lab.pod(name).ip))
        .collect();
    let backends: String = BACKENDS.iter().map(|b| format!("      - {{pod: {b}, port: {BACKEND_PORT}}}\n")).collect();
    format!("pods:\n{pods}services:\n  - name: web\n    ip: {VIP}\n    port: {SERVICE_PORT}\n    backends:\n{backends}")
}

/// Waits (bounded, 30 s) until the agent of `lab.nodes[from]` sends connections to the pod at
/// `ip` through the tunnel (its redirect map holds the pod as tunnelled) and the agent of
/// `lab.nodes[to]`, the pod's, requires it (its inbound map holds the pod as STRICT).
pub fn wait_for_tunnel(lab: &Lab, from: usize, to: usize, ip: Ipv4Addr) -> Result<()> {
    wait_for_maps(lab, from, Some(to), ip)
}

/// Waits (bounded, 30 s) until the agent of `lab.nodes[from]` sends connections to the pod at
/// `ip` through the tunnel (a principal rule's pod: its own node does not drop plaintext).
pub fn wait_for_redirect(lab: &Lab, from: usize, ip: Ipv4Addr) -> Result<()> {
    wait_for_maps(lab, from, None, ip)
}

fn wait_for_maps(lab: &Lab, from: usize, to: Option<usize>, ip: Ipv4Addr) -> Result<()> {
    use aya::maps::HashMap;
    use mesh_common::tunnel::{TUNNEL, TunnelDestKey};
    let key = TunnelDestKey { addr: u32::from_ne_bytes(ip.octets()), port: 0, _pad: 0 };
    let holds = |node: usize, map: &str| {
        pinned_map::<HashMap<MapData, TunnelDestKey, u32>>(&lab.nodes[node].bpffs.join(map))
            .is_ok_and(|m| m.get(&key, 0).is_ok_and(|mode| mode == TUNNEL))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !(holds(from, mesh_common::maps::TUNNEL_DESTS)
        && to.is_none_or(|to| holds(to, mesh_common::maps::MTLS_INBOUND)))
    {
        if std::time::Instant::now() > deadline {
            let inbound = to.map(|to| format!(" and {}'s inbound map", lab.nodes[to].name)).unwrap_or_default();
            return Err(LabError::Command {
                command: format!("waiting for the tunnel to {ip}"),
                message: format!("not in {}'s tunnel map{inbound} within 30 s", lab.nodes[from].name),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}

/// What the TC programs counted on `pod`'s host-side interface, summed over CPUs, read from
/// the map the agent of `node` pinned.
pub fn pod_traffic(node: &Node, pod: &Pod) -> Result<PodTraffic> {
    let map: PerCpuHashMap<MapData, u32, PodTraffic> = pinned_map(&node.bpffs.join(mesh_common::maps::POD_TRAFFIC))?;
    let mut total = PodTraffic::default();
    if let Ok(per_cpu) = map.get(&pod.host_ifindex, 0) {
        per_cpu.iter().for_each(|cpu| total.add(cpu));
    }
    Ok(total)
}

/// The map pinned at `path` (by an agent), as the map type `T`.
pub fn pinned_map<T: TryFrom<Map, Error = MapError>>(path: &Path) -> Result<T> {
    let map_error = |err: &dyn std::fmt::Display| LabError::Command {
        command: format!("reading {}", path.display()),
        message: err.to_string(),
    };
    let data = MapData::from_pin(path).map_err(|e| map_error(&e))?;
    T::try_from(Map::from_map_data(data).map_err(|e| map_error(&e))?).map_err(|e| map_error(&e))
}

/// The demo cluster of `deploy/examples/`: node-0 runs `client` and `web-a`, node-1 runs
/// `web-b` and `intruder`; service `demo/web` (10.96.0.10:80) selects both web pods, target
/// port `http`; `policy.yaml` lets `client` in and keeps `intruder` out.
pub mod demo {
    use std::path::{Path, PathBuf};

    use crate::{
        lab::{Lab, LabError, Result},
        labnet,
    };

    pub const NODES: [&[&str]; 2] = [&["client", "web-a"], &["web-b", "intruder"]];
    pub const WEB: [&str; 2] = ["web-a", "web-b"];
    pub const CLIENT: &str = "client";
    /// The client the demo's policy denies.
    pub const INTRUDER: &str = "intruder";
    pub const WEB_PORT: u16 = 8080;

    /// `deploy/examples/` of this repository.
    pub fn examples() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples")
    }

    /// A lab shaped like the examples, with the examples copied into `<lab dir>/manifests`
    /// (where a test may change them) and the web pods serving their names. Fails if the
    /// lab's pod addresses are not the ones the manifests give.
    pub fn lab() -> Result<(Lab, PathBuf)> {
        let lab = Lab::new(&NODES)?;
        let manifests = lab.dir.join("manifests");
        let io = |path: &Path, source| LabError::Io { what: "copying", path: path.to_owned(), source };
        std::fs::create_dir_all(&manifests).map_err(|e| io(&manifests, e))?;
        let mut text = String::new();
        for entry in std::fs::read_dir(examples()).map_err(|e| io(&examples(), e))? {
            let path = entry.map_err(|e| io(&examples(), e))?.path();
            let content = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
            std::fs::write(manifests.join(path.file_name().expect("a file")), &content).map_err(|e| io(&path, e))?;
            text.push_str(&content);
        }
        for pod in NODES.iter().flat_map(|pods| pods.iter()) {
            let ip = lab.pod(pod).ip.to_string();
            if !text.contains(&format!("name: {pod}\n")) || !text.contains(&format!("podIP: {ip}")) {
                return Err(LabError::Layout(format!("deploy/examples must give pod {pod} the lab's address {ip}")));
            }
        }
        for web in WEB {
            labnet::serve(&lab, lab.pod(web), WEB_PORT, web)?;
        }
        Ok((lab, manifests))
    }
}
