//! Workload identities: SPIFFE IDs of the form
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, as Istio and Linkerd name a
//! Kubernetes workload. One definition for the operator's CA, the agent's certificates and
//! tunnels, and policy principals.

use std::{fmt, str::FromStr};

use crate::names::{is_dns_label, is_dns_subdomain};

/// The trust domain when none is configured, as in Istio.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Where the operator and the agents read the trust domain from (they must agree).
pub const ENV_TRUST_DOMAIN: &str = "MESH_TRUST_DOMAIN";
/// The URI scheme of a SPIFFE ID.
const SCHEME: &str = "spiffe://";
/// The SPIFFE specification's bound on a trust domain name.
const TRUST_DOMAIN_MAX: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("{0:?} is not a SPIFFE ID: it must start with \"spiffe://\"")]
    Scheme(String),
    #[error(
        "trust domain {0:?} is not valid: use 1 to 255 lowercase letters, digits, '.', '-' and '_' (for example \"cluster.local\")"
    )]
    TrustDomain(String),
    #[error("{0:?} is not a workload identity: the path must be /ns/<namespace>/sa/<service-account>")]
    Path(String),
    #[error("namespace {0:?} in a SPIFFE ID is not a valid namespace name (an RFC 1123 label)")]
    Namespace(String),
    #[error("service account {0:?} in a SPIFFE ID is not a valid ServiceAccount name (an RFC 1123 subdomain)")]
    ServiceAccount(String),
}

/// A trust domain, validated as the SPIFFE specification names them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TrustDomain {
    fn default() -> Self {
        Self(DEFAULT_TRUST_DOMAIN.to_owned())
    }
}

impl FromStr for TrustDomain {
    type Err = IdentityError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let valid = !name.is_empty()
            && name.len() <= TRUST_DOMAIN_MAX
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'));
        if valid { Ok(Self(name.to_owned())) } else { Err(IdentityError::TrustDomain(name.to_owned())) }
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Kubernetes workload's identity: its namespace and service account in a trust domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    namespace: String,
    service_account: String,
}

impl SpiffeId {
    /// The identity of `service_account` in `namespace`; both must be valid Kubernetes names.
    pub fn new(trust_domain: TrustDomain, namespace: &str, service_account: &str) -> Result<Self, IdentityError> {
        if !is_dns_label(namespace) {
            return Err(IdentityError::Namespace(namespace.to_owned()));
        }
        if !is_dns_subdomain(service_account) {
            return Err(IdentityError::ServiceAccount(service_account.to_owned()));
        }
        Ok(Self { trust_domain, namespace: namespace.to_owned(), service_account: service_account.to_owned() })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        let rest = uri.strip_prefix(SCHEME).ok_or_else(|| IdentityError::Scheme(uri.to_owned()))?;
        let (domain, path) = rest.split_once('/').ok_or_else(|| IdentityError::Path(uri.to_owned()))?;
        let trust_domain = domain.parse()?;
        match path.split('/').collect::<Vec<_>>()[..] {
            ["ns", namespace, "sa", service_account] => Self::new(trust_domain, namespace, service_account),
            _ => Err(IdentityError::Path(uri.to_owned())),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

/// A new private key and a certificate signing request for `identity`, as the agent makes
/// them for each workload of its node: ECDSA P-256, the identity as the request's only subject
/// alternative name, no subject. The key stays with the caller; only the CSR leaves the node.
pub fn csr_for(identity: &SpiffeId) -> Result<(rcgen::KeyPair, String), rcgen::Error> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(identity.to_string().try_into()?)];
    let csr = params.serialize_request(&key)?;
    Ok((key, csr.pem()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_reads_back_as_it_was_written() {
        for uri in [
            "spiffe://cluster.local/ns/default/sa/default",
            "spiffe://example.org/ns/demo/sa/web",
            "spiffe://td_1-x.y/ns/a/sa/build.bot",
        ] {
            let id: SpiffeId = uri.parse().unwrap();
            assert_eq!(id.to_string(), uri);
        }
        let id = SpiffeId::new(TrustDomain::default(), "demo", "client").unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/demo/sa/client");
        assert_eq!((id.namespace(), id.service_account()), ("demo", "client"));
    }

    #[test]
    fn what_is_not_a_workload_identity_is_refused_with_the_part_named() {
        let err = |uri: &str| uri.parse::<SpiffeId>().unwrap_err();
        assert!(matches!(err("https://cluster.local/ns/a/sa/b"), IdentityError::Scheme(_)));
        assert!(matches!(err("spiffe://cluster.local"), IdentityError::Path(_)));
        assert!(matches!(err("spiffe://Cluster.Local/ns/a/sa/b"), IdentityError::TrustDomain(_)));
        assert!(matches!(err("spiffe:///ns/a/sa/b"), IdentityError::TrustDomain(_)));
        assert!(matches!(err("spiffe://cluster.local/ns/a/sa/b/extra"), IdentityError::Path(_)));
        assert!(matches!(err("spiffe://cluster.local/sa/b/ns/a"), IdentityError::Path(_)));
        assert!(matches!(err("spiffe://cluster.local/ns/a/sa/"), IdentityError::ServiceAccount(_)));
        assert!(matches!(err("spiffe://cluster.local/ns/A/sa/b"), IdentityError::Namespace(_)));
        assert!(matches!(err("spiffe://cluster.local/ns/a.b/sa/b"), IdentityError::Namespace(_)));
        assert!(matches!(err("spiffe://cluster.local/ns/a/sa/b%2Fc"), IdentityError::ServiceAccount(_)));
        assert!(matches!(err(&format!("spiffe://{}/ns/a/sa/b", "x".repeat(256))), IdentityError::TrustDomain(_)));
        // Each message names the offending part and says what is expected.
        assert!(err("spiffe://cluster.local/ns/A/sa/b").to_string().contains("\"A\""));
    }
}
