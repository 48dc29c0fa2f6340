//! Finding a pod's host-side interface the way a CNI-adjacent agent must: from the route to
//! the pod's address, with no assumption about the address plan or interface names.

use std::{ffi::CString, net::Ipv4Addr};

/// A pod's interface on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    pub name: String,
    pub ifindex: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PodIfaceError {
    #[error("cannot read the routing table ({path}): {source}")]
    Routes { path: &'static str, source: std::io::Error },
    #[error(
        "no route to pod {pod} ({ip}) on this node: is the pod running here, and is MESH_NETNS the node's namespace?"
    )]
    NoRoute { pod: String, ip: Ipv4Addr },
    #[error("pod {pod} ({ip}) is routed via gateway {gateway} on {iface}: it is not on this node")]
    ViaGateway { pod: String, ip: Ipv4Addr, gateway: Ipv4Addr, iface: String },
    #[error("interface {iface} of pod {pod} has no index: {source}")]
    Index { pod: String, iface: String, source: std::io::Error },
}

/// The IPv4 main routing table of the calling *thread's* network namespace.
const ROUTES: &str = "/proc/thread-self/net/route";
/// `RTF_GATEWAY` in the route flags.
const RTF_GATEWAY: u32 = 0x2;

/// One route of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    iface: String,
    dest: u32,
    mask: u32,
    gateway: Ipv4Addr,
    flags: u32,
    metric: u32,
}

/// Looks up the interface the calling thread's namespace routes `ip` through.
pub fn find(pod: &str, ip: Ipv4Addr) -> Result<PodInterface, PodIfaceError> {
    let table = std::fs::read_to_string(ROUTES).map_err(|source| PodIfaceError::Routes { path: ROUTES, source })?;
    let routes = parse_routes(&table);
    let route = longest_match(&routes, ip).ok_or(PodIfaceError::NoRoute { pod: pod.to_owned(), ip })?;
    if route.flags & RTF_GATEWAY != 0 {
        return Err(PodIfaceError::ViaGateway {
            pod: pod.to_owned(),
            ip,
            gateway: route.gateway,
            iface: route.iface.clone(),
        });
    }
    let index_error = |source| PodIfaceError::Index { pod: pod.to_owned(), iface: route.iface.clone(), source };
    let name = CString::new(route.iface.as_str())
        .map_err(|_| index_error(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    // SAFETY: `name` is a valid C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(index_error(std::io::Error::last_os_error()));
    }
    Ok(PodInterface { name: route.iface.clone(), ifindex })
}

/// Parses `/proc/net/route`: addresses are network-order words printed as host-order hex.
fn parse_routes(table: &str) -> Vec<Route> {
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            Some(Route {
                iface: f[0].to_owned(),
                dest: hex(f[1])?,
                gateway: Ipv4Addr::from(hex(f[2])?.to_ne_bytes()),
                flags: hex(f[3])?,
                metric: f[6].parse().ok()?,
                mask: hex(f[7])?,
            })
        })
        .collect()
}

/// The most specific route to `ip`, the lowest metric among equals.
fn longest_match(routes: &[Route], ip: Ipv4Addr) -> Option<&Route> {
    let addr = u32::from_ne_bytes(ip.octets());
    routes
        .iter()
        .filter(|r| addr & r.mask == r.dest)
        .max_by_key(|r| (u32::from_be(r.mask).leading_ones(), std::cmp::Reverse(r.metric)))
}

#[cfg(test)]
mod tests {
    use super::*;

    // From a node of the lab: a default route, a /24 via gateway, two /32 pod routes.
    const TABLE: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010012AC\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0001F40A\t030012AC\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0
vethA\t0300F40A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0
vethB\t0400F40A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0
";

    #[test]
    fn the_most_specific_route_wins() {
        let routes = parse_routes(TABLE);
        assert_eq!(routes.len(), 4);
        assert_eq!(longest_match(&routes, Ipv4Addr::new(10, 244, 0, 3)).unwrap().iface, "vethA");
        assert_eq!(longest_match(&routes, Ipv4Addr::new(10, 244, 0, 4)).unwrap().iface, "vethB");
        let remote = longest_match(&routes, Ipv4Addr::new(10, 244, 1, 9)).unwrap();
        assert_eq!(remote.gateway, Ipv4Addr::new(172, 18, 0, 3));
        assert_ne!(remote.flags & RTF_GATEWAY, 0);
        assert_eq!(longest_match(&routes, Ipv4Addr::new(8, 8, 8, 8)).unwrap().mask, 0);
    }

    #[test]
    fn the_lowest_metric_wins_among_equals() {
        let routes = vec![
            Route { iface: "a".into(), dest: 0, mask: 0, gateway: Ipv4Addr::UNSPECIFIED, flags: 1, metric: 100 },
            Route { iface: "b".into(), dest: 0, mask: 0, gateway: Ipv4Addr::UNSPECIFIED, flags: 1, metric: 10 },
        ];
        assert_eq!(longest_match(&routes, Ipv4Addr::LOCALHOST).unwrap().iface, "b");
    }
}
