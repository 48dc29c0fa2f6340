//! The benchmarks' wire into a lab node: the object's `mesh_wire` XDP program on an outside
//! client's fabric port, sending every frame the client sends straight to a node's fabric port
//! as an XDP frame. The node then receives frames as from a NIC driver (a page each, XDP run
//! on it in place) rather than socket buffers that XDP on a veth must copy first. Everything it
//! makes (a pinned program) is under the lab's bpffs root and leaves with the lab.

use anyhow::Context as _;
use aya::{
    EbpfLoader,
    programs::{Xdp, links::FdLink, xdp::XdpMode},
};
use mesh_common::programs;

use crate::lab::Lab;

/// Sends everything the `outside`-th outside client sends to node `node`'s fabric port.
pub fn outside_to_node(lab: &Lab, outside: usize, node: usize) -> anyhow::Result<()> {
    let fabric = format!("{}fabric", lab.netns_prefix());
    // A wire carries complete checksums: the client's stack computes them (no offload to
    // leave partial ones in frames that no device will finish).
    let client = format!("{}outside-{outside}", lab.netns_prefix());
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", &client, "ethtool", "-K", "eth0", "tx", "off"])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running ethtool")?;
    anyhow::ensure!(status.success(), "turning checksum offload off on outside-{outside}'s eth0");
    let to = ifindex(&fabric, &format!("n{node}"))?;
    let dir = lab.bpffs_root().join("wire");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&dir)
        .override_global("WIRE_TO", &to, true)
        .load(mesh_agent::datapath::OBJECT)
        .context("loading the object")?;
    let program: &mut Xdp = ebpf.program_mut(programs::WIRE).context("no wire program in the object")?.try_into()?;
    program.load().context("loading the wire program")?;
    // Attached from a thread in the fabric's namespace (an interface index means something
    // only there); the link is pinned, so it outlives this process and leaves with the lab.
    let netns = std::path::Path::new("/run/netns").join(&fabric);
    let port = format!("o{outside}");
    let from = ifindex(&fabric, &port)?;
    let link = mesh_agent::netns::run_in(Some(&netns), || program.attach(from, XdpMode::Driver))?
        .with_context(|| format!("attaching the wire program to {port} (native XDP)"))?;
    let link = FdLink::try_from(program.take_link(link)?).context("the wire's link")?;
    link.pin(dir.join(&port)).context("pinning the wire's link")?;
    Ok(())
}

/// The index of `iface` in namespace `netns`.
fn ifindex(netns: &str, iface: &str) -> anyhow::Result<u32> {
    let output = std::process::Command::new("ip").args(["-n", netns, "-j", "link", "show", iface]).output()?;
    let links: serde_json::Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("ip link show {iface}: {}", String::from_utf8_lossy(&output.stderr)))?;
    links[0]["ifindex"].as_u64().and_then(|i| u32::try_from(i).ok()).with_context(|| format!("no index for {iface}"))
}
