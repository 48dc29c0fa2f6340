//! Kubernetes object names, one definition for every crate (apimachinery's
//! `IsDNS1123Label` and `IsDNS1123Subdomain`).

/// An RFC 1123 label, as namespace names are: 1 to 63 lowercase letters, digits and '-',
/// starting and ending with a letter or digit.
pub fn is_dns_label(name: &str) -> bool {
    name.len() <= 63 && is_label_part(name)
}

/// An RFC 1123 subdomain, as most object names (pods, services, nodes) are: at most 253
/// characters, dot-separated parts each as a label (Kubernetes does not bound a part's
/// length apart from the whole).
pub fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_label_part)
}

fn is_label_part(part: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = part.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => alnum(first) && alnum(last) && bytes.iter().all(|&b| alnum(b) || b == b'-'),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_kubernetes_validates_them() {
        for ok in ["a", "node-0", "kind-worker2", "ip-10-0-0-1.ec2.internal", "0a", &"x".repeat(63)] {
            assert!(is_dns_label(ok) || ok.contains('.'), "{ok}");
            assert!(is_dns_subdomain(ok), "{ok}");
        }
        for bad in ["", "Node", "-a", "a-", "a..b", "a_b", ".a", "a."] {
            assert!(!is_dns_label(bad), "{bad}");
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
        // The bounds: 63 for a label, 253 for a subdomain (whose parts may be longer than 63).
        assert!(!is_dns_label(&"x".repeat(64)));
        assert!(is_dns_subdomain(&"x".repeat(64)));
        assert!(is_dns_subdomain(&"x".repeat(253)));
        assert!(!is_dns_subdomain(&"x".repeat(254)));
        assert!(!is_dns_label("a.b"));
    }
}
