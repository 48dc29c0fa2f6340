//! The benchmarks' wire into a lab node: the object's `mesh_wire` XDP program on an outside
//! client's fabric port, sending every frame the client sends straight to a node's fabric port
//! as an XDP frame. The node then receives frames as from a NIC driver (a page each, XDP run
//! on it in place) rather than socket buffers that XDP on a veth must copy first. Everything it
//! makes (a pinned link) is under the lab's bpffs root and leaves with the lab.

use std::time::Duration;

use anyhow::Context as _;
use aya::{
    EbpfLoader,
    programs::{Xdp, links::FdLink, xdp::XdpMode},
};
use mesh_common::programs;

use crate::lab::{self, Lab, Outside};

/// Sends everything `outside` sends to node `node`'s fabric port.
pub fn outside_to_node(lab: &Lab, outside: &Outside, node: usize) -> anyhow::Result<()> {
    // A wire carries complete checksums: the client's stack computes them (no offload to
    // leave partial ones in frames that no device will finish).
    let mut ethtool = lab.placed_command(&lab.outside_placement(outside), "ethtool")?;
    ethtool.args(["-K", "eth0", "tx", "off"]);
    let output = lab.run(&mut ethtool, Duration::from_secs(10))?;
    anyhow::ensure!(
        output.status.success(),
        "turning checksum offload off on {}'s eth0: {}",
        outside.name,
        String::from_utf8_lossy(&output.stderr)
    );
    let fabric = lab.fabric_netns();
    let to = lab::ifindex(&fabric, &format!("n{node}"))?;
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
    let port = &outside.fabric_port;
    let from = lab::ifindex(&fabric, port)?;
    let link = mesh_agent::netns::run_in(Some(&lab::netns_path(&fabric)), || program.attach(from, XdpMode::Driver))?
        .with_context(|| format!("attaching the wire program to {port} (native XDP)"))?;
    let link = FdLink::try_from(program.take_link(link)?).context("the wire's link")?;
    link.pin(dir.join(port)).context("pinning the wire's link")?;
    Ok(())
}
