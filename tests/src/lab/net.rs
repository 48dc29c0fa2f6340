//! Building the lab's namespaces, links, addresses, routes and cgroups.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
};

use super::{Lab, LabError, Node, POD_GATEWAY, PREFIX, Pod, Result};

/// The fabric's bridge, in the fabric namespace.
const BRIDGE: &str = "br0";

/// Node `n`'s address on the fabric (172.18.0.0/16, as kind's docker network).
fn node_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 18, 0, (n + 2) as u8)
}

/// Pod `p` of node `n`: 10.244.n.(p+2) (kind's 10.244.0.0/16 pod range).
fn pod_ip(n: usize, p: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, n as u8, (p + 2) as u8)
}

pub(super) fn build(lab: &mut Lab, layout: &[&[&str]]) -> Result<()> {
    let prefix = lab.netns_prefix();
    std::fs::create_dir_all(&lab.bpffs_root).map_err(|source| LabError::Io {
        what: "creating",
        path: lab.bpffs_root.clone(),
        source,
    })?;
    mkdir_cgroup(&lab.cgroup_root)?;
    mkdir_cgroup(&lab.system_cgroup())?;

    let fabric = lab.fabric_netns();
    netns_add(&fabric)?;
    ip(&fabric, &["link", "add", BRIDGE, "type", "bridge"])?;
    ip(&fabric, &["link", "set", BRIDGE, "up"])?;

    for (n, pod_names) in layout.iter().enumerate() {
        let name = format!("node-{n}");
        let netns = format!("{prefix}{name}");
        netns_add(&netns)?;
        let cgroup = lab.cgroup_root.join(&name);
        mkdir_cgroup(&cgroup)?;
        sysctls(
            &netns,
            &[
                ("net/ipv4/ip_forward", "1"),
                ("net/ipv4/conf/all/rp_filter", "0"),
                ("net/ipv4/conf/default/rp_filter", "0"),
            ],
        )?;

        // The node's uplink into the fabric: eth0 in the node, n<N> on the bridge.
        let uplink = format!("n{n}");
        ip(&netns, &["link", "add", "eth0", "type", "veth", "peer", "name", &uplink, "netns", &fabric])?;
        ip(&fabric, &["link", "set", &uplink, "master", BRIDGE, "up"])?;
        ip(&netns, &["addr", "add", &format!("{}/16", node_ip(n)), "dev", "eth0"])?;
        ip(&netns, &["link", "set", "eth0", "up"])?;

        let mut node = Node {
            name: name.clone(),
            ip: node_ip(n),
            pod_cidr: format!("10.244.{n}.0/24"),
            netns_path: netns_path(&netns),
            netns,
            cgroup,
            bpffs: lab.bpffs_root.join(&name),
            pods: Vec::new(),
        };
        for (p, pod_name) in pod_names.iter().enumerate() {
            node.pods.push(add_pod(lab, &node, &prefix, n, p, pod_name)?);
        }
        lab.nodes.push(node);
    }

    // Every node routes the other nodes' pod CIDRs via their fabric address.
    for node in &lab.nodes {
        for other in lab.nodes.iter().filter(|o| o.name != node.name) {
            ip(&node.netns, &["route", "add", &other.pod_cidr, "via", &other.ip.to_string()])?;
        }
    }
    Ok(())
}

/// A namespace outside every node, on the fabric as the nodes' external interfaces are: its
/// `eth0` (`address`/16) is a port of the fabric's bridge, so it reaches every node's address
/// directly, as a client on the nodes' network would, and each node's pods through it.
pub(super) fn add_outside(lab: &Lab, index: usize, address: Ipv4Addr) -> Result<super::Outside> {
    let name = format!("outside-{index}");
    let netns = format!("{}{name}", lab.netns_prefix());
    netns_add(&netns)?;
    let fabric = lab.fabric_netns();
    let port = format!("o{index}");
    ip(&netns, &["link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &fabric])?;
    ip(&fabric, &["link", "set", &port, "master", BRIDGE, "up"])?;
    ip(&netns, &["addr", "add", &format!("{address}/16"), "dev", "eth0"])?;
    ip(&netns, &["link", "set", "eth0", "up"])?;
    // As a router of the nodes' network would: each node's pods through that node.
    for node in &lab.nodes {
        ip(&netns, &["route", "add", &node.pod_cidr, "via", &node.ip.to_string()])?;
    }
    Ok(super::Outside { name, ip: address, netns_path: netns_path(&netns), netns, fabric_port: port })
}

fn add_pod(lab: &Lab, node: &Node, prefix: &str, n: usize, p: usize, name: &str) -> Result<Pod> {
    let netns = format!("{prefix}{name}");
    netns_add(&netns)?;
    // Host side: l<id><node>p<pod>, unique per lab and within 15 characters.
    let host_iface = format!("l{}{n}p{p}", lab.id);
    let pod_ip = pod_ip(n, p);
    ip(&node.netns, &["link", "add", &host_iface, "type", "veth", "peer", "name", "eth0", "netns", &netns])?;
    // The pods' gateway is an address of every host-side veth (as the ptp CNI plugin does),
    // so the node answers the pod's ARP for it and routes what the pod sends.
    ip(&node.netns, &["addr", "add", &format!("{POD_GATEWAY}/32"), "dev", &host_iface, "scope", "link"])?;
    ip(&node.netns, &["link", "set", &host_iface, "up"])?;
    ip(&node.netns, &["route", "add", &format!("{pod_ip}/32"), "dev", &host_iface, "scope", "link"])?;

    ip(&netns, &["addr", "add", &format!("{pod_ip}/32"), "dev", "eth0"])?;
    ip(&netns, &["link", "set", "eth0", "up"])?;
    ip(&netns, &["route", "add", &POD_GATEWAY.to_string(), "dev", "eth0", "scope", "link"])?;
    ip(&netns, &["route", "add", "default", "via", &POD_GATEWAY.to_string(), "dev", "eth0"])?;

    let host_ifindex = ifindex(&node.netns, &host_iface)?;
    let cgroup = node.cgroup.join(name);
    mkdir_cgroup(&cgroup)?;
    Ok(Pod {
        name: name.to_owned(),
        node: node.name.clone(),
        ip: pod_ip,
        netns_path: netns_path(&netns),
        netns,
        host_iface,
        host_ifindex,
        cgroup,
    })
}

/// The index of `iface` in `netns` (`ip -o link show` starts with "<index>: ").
pub(crate) fn ifindex(netns: &str, iface: &str) -> Result<u32> {
    let mut command = Command::new("ip");
    command.args(["-n", netns, "-o", "link", "show", "dev", iface]);
    let output = command.output().map_err(|source| LabError::Io { what: "running", path: "ip".into(), source })?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split(':').next().and_then(|index| index.trim().parse().ok()).ok_or_else(|| LabError::Command {
        command: format!("ip -n {netns} -o link show dev {iface}"),
        message: format!("no interface index in {text:?} {}", String::from_utf8_lossy(&output.stderr).trim()),
    })
}

pub(crate) fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

fn netns_add(name: &str) -> Result<()> {
    debug_assert!(name.starts_with(PREFIX));
    run(Command::new("ip").args(["netns", "add", name]))?;
    ip(name, &["link", "set", "lo", "up"])
}

/// `ip -n <netns> <args>`.
fn ip(netns: &str, args: &[&str]) -> Result<()> {
    run(Command::new("ip").arg("-n").arg(netns).args(args))
}

pub(super) fn run(command: &mut Command) -> Result<()> {
    let output = command.output().map_err(|source| LabError::Io {
        what: "running",
        path: PathBuf::from(command.get_program()),
        source,
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(LabError::Command {
        command: format!("{command:?}").replace('"', ""),
        message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

fn mkdir_cgroup(path: &Path) -> Result<()> {
    std::fs::create_dir(path).map_err(|source| LabError::Io { what: "creating cgroup", path: path.to_owned(), source })
}

/// Writes `/proc/sys/<key>` inside `netns`, from a thread that entered it: /proc/sys/net is
/// per network namespace, and a thread is much cheaper than `ip netns exec sysctl`.
fn sysctls(netns: &str, settings: &[(&str, &str)]) -> Result<()> {
    let path = netns_path(netns);
    let file =
        std::fs::File::open(&path).map_err(|source| LabError::Io { what: "opening", path: path.clone(), source })?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                use std::os::fd::AsRawFd as _;
                // SAFETY: an open namespace file; setns affects this thread only.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let source = std::io::Error::last_os_error();
                    return Err(LabError::Io { what: "entering", path: path.clone(), source });
                }
                for (key, value) in settings {
                    // /proc/sys/net shows the namespace of the thread that opens it.
                    let file = Path::new("/proc/sys").join(key);
                    std::fs::write(&file, value).map_err(|source| LabError::Io {
                        what: "writing",
                        path: file,
                        source,
                    })?;
                }
                Ok(())
            })
            .join()
            .expect("the sysctl thread does not panic")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_documented_plan() {
        assert_eq!(node_ip(0), Ipv4Addr::new(172, 18, 0, 2));
        assert_eq!(pod_ip(1, 0), Ipv4Addr::new(10, 244, 1, 2));
    }
}
