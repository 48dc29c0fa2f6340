//! The node's external interfaces, where XDP runs: named by configuration, or (`auto`) every
//! interface of the node's namespace holding one of the node's addresses, as Cilium's device
//! detection picks the interfaces with a node IP. Run on a thread inside that namespace.

use std::{ffi::CStr, net::Ipv4Addr};

/// An interface XDP is (to be) attached to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Device {
    pub name: String,
    pub ifindex: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot list the interfaces' addresses: {0}")]
    Addresses(std::io::Error),
    #[error("{key}: there is no interface {name} in the node's network namespace: name one that exists")]
    Missing { key: &'static str, name: String },
}

/// The interfaces holding any of `addresses` (IPv4), each once, by name.
pub fn holding(addresses: &[Ipv4Addr]) -> Result<Vec<Device>, DeviceError> {
    let mut found = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` on success; it is freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(DeviceError::Addresses(std::io::Error::last_os_error()));
    }
    let mut at = list;
    while !at.is_null() {
        // SAFETY: a node of the list getifaddrs returned, valid until freeifaddrs.
        let entry = unsafe { &*at };
        at = entry.ifa_next;
        if entry.ifa_addr.is_null() || entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: `ifa_addr` points at a sockaddr whose family says its type.
        if i32::from(unsafe { (*entry.ifa_addr).sa_family }) != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in.
        let addr = unsafe { (*entry.ifa_addr.cast::<libc::sockaddr_in>()).sin_addr.s_addr };
        if !addresses.contains(&Ipv4Addr::from(u32::from_be(addr))) {
            continue;
        }
        // SAFETY: `ifa_name` is a NUL-terminated string of the list.
        let name = unsafe { CStr::from_ptr(entry.ifa_name) }.to_string_lossy().into_owned();
        // SAFETY: the name is a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(entry.ifa_name) };
        if ifindex != 0 {
            found.push(Device { name, ifindex });
        }
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    found.sort();
    found.dedup();
    Ok(found)
}

/// The interfaces `names`, each of which must exist.
pub fn named(names: &[String]) -> Result<Vec<Device>, DeviceError> {
    names
        .iter()
        .map(|name| {
            let missing = || DeviceError::Missing { key: crate::config::ENV_DEVICES, name: name.clone() };
            let c_name = std::ffi::CString::new(name.as_str()).map_err(|_| missing())?;
            // SAFETY: a valid C string.
            match unsafe { libc::if_nametoindex(c_name.as_ptr()) } {
                0 => Err(missing()),
                ifindex => Ok(Device { name: name.clone(), ifindex }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_holds_its_address_and_a_missing_name_is_named() {
        let found = holding(&[Ipv4Addr::LOCALHOST]).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].name, "lo");
        assert_eq!(named(&["lo".into()]).unwrap(), found);
        let err = named(&["nosuchiface0".into()]).unwrap_err().to_string();
        assert!(err.contains("MESH_DEVICES") && err.contains("nosuchiface0"), "{err}");
    }
}
