//! IP prefixes (CIDRs): one definition for every crate, `ipnet`'s types, read one way. The
//! agent's policy, the Observer's flow filters and the operator's translation all use these.

use core::net::Ipv4Addr;

pub use ipnet::{IpNet, Ipv4Net};

/// `a.b.c.d/n`, host bits cleared; `None` for anything else (IPv6 included: an IPv6 block
/// cannot match IPv4 traffic).
pub fn parse_v4(text: &str) -> Option<Ipv4Net> {
    text.parse::<Ipv4Net>().ok().map(|net| net.trunc())
}

/// An address (a /32) or a prefix, as flow filters take them.
pub fn parse_v4_or_host(text: &str) -> Option<Ipv4Net> {
    if text.contains('/') { parse_v4(text) } else { text.parse::<Ipv4Addr>().ok().map(host) }
}

/// An IPv4 or IPv6 prefix, as Kubernetes takes an ipBlock's; the error says what is wrong.
pub fn parse(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>().map(|net| net.trunc()).map_err(|_| match text.split_once('/') {
        Some((_, len)) if len.parse::<u8>().is_ok_and(|l| l > 32) && !text.contains(':') => {
            format!("{text:?}: prefix length /{len} is too long")
        }
        Some((_, len)) if len.parse::<u8>().is_ok_and(|l| l > 128) => {
            format!("{text:?}: prefix length /{len} is too long")
        }
        _ => format!("{text:?} is not a CIDR such as 10.0.0.0/8"),
    })
}

/// The /32 of `ip`.
pub fn host(ip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::from(ip)
}

/// The prefix of `len` bits (at most 32) at `addr` (host order), host bits cleared.
pub fn v4(addr: u32, len: u8) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::from(addr), len.min(32)).expect("at most 32 bits").trunc()
}

/// `net`'s first address in host order.
pub fn first(net: &Ipv4Net) -> u32 {
    u32::from(net.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_read_one_way() {
        assert_eq!(parse_v4("10.244.1.7/24"), Some(v4(u32::from(Ipv4Addr::new(10, 244, 1, 0)), 24)));
        assert!(parse_v4("0.0.0.0/0").unwrap().contains(&Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(parse_v4("fd00::/8"), None);
        assert_eq!(parse_v4("10.0.0.0/33"), None);
        assert_eq!(parse_v4("10.0.0.1"), None);
        assert_eq!(parse_v4_or_host("10.0.0.1"), Some(host(Ipv4Addr::new(10, 0, 0, 1))));
        assert!(parse("fd00::/8").is_ok());
        assert!(parse("10.0.0.0/33").unwrap_err().contains("too long"));
        assert!(parse("nonsense").unwrap_err().contains("is not a CIDR"));
        let outer = parse("10.0.0.0/8").unwrap();
        assert!(outer.contains(&parse("10.1.0.0/16").unwrap()));
        assert!(!outer.contains(&parse("fd00::/16").unwrap()));
    }
}
