//! The operator's CA for the state stream: it signs the operator's server certificate and one
//! client certificate per node. An agent proves its node with its certificate (the subject's
//! common name is the node name); the operator serves a stream only to the node its
//! certificate names.
//!
//! Files: the CA is `ca.crt` + `ca.key` in the PKI directory (created on first use, mode
//! 0600 for the key). A bundle for an agent or the server is a directory with `ca.crt`,
//! `tls.crt`, `tls.key`, as a Kubernetes TLS secret holds them.

use std::{
    net::IpAddr,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The organisation of every node certificate.
pub const NODE_ORGANIZATION: &str = "mesh:nodes";
/// The name agents verify the operator's certificate against.
pub use mesh_common::model::OPERATOR_TLS_NAME as SERVER_NAME;
pub use mesh_common::model::{TLS_CA_FILE as CA_CERT, TLS_CERT_FILE as TLS_CERT, TLS_KEY_FILE as TLS_KEY};
/// The CA's key, beside its certificate in the PKI directory.
pub const CA_KEY: &str = "ca.key";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{path}: not a usable CA: {source}; remove the PKI directory to start a new CA (every agent then needs a new bundle)"
    )]
    BadCa { path: PathBuf, source: rcgen::Error },
    #[error("issuing a certificate failed: {0}")]
    Issue(#[from] rcgen::Error),
    #[error("{0:?} is not a valid node name")]
    NodeName(String),
    #[error("root rotation: {0}; nothing was changed")]
    Rotation(String),
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

/// The CA.
pub struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    /// Loads the CA from `dir`, creating it first if there is none.
    pub fn open(dir: &Path) -> Result<Self, PkiError> {
        let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
        if !cert_path.exists() {
            std::fs::create_dir_all(dir).map_err(|source| PkiError::Io { path: dir.to_owned(), source })?;
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.distinguished_name = name("mesh CA", None);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages =
                vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
            let cert = params.self_signed(&key)?;
            write_private(&key_path, &key.serialize_pem())?;
            write(&cert_path, &cert.pem())?;
            tracing::info!(dir = %dir.display(), "created a new CA for the state stream");
        }
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| PkiError::Io { path: path.to_owned(), source })
        };
        let ca_pem = read(&cert_path)?;
        let key = KeyPair::from_pem(&read(&key_path)?)
            .map_err(|source| PkiError::BadCa { path: key_path.clone(), source })?;
        let issuer =
            Issuer::from_ca_cert_pem(&ca_pem, key).map_err(|source| PkiError::BadCa { path: cert_path, source })?;
        Ok(Self { ca_pem, issuer })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The operator's server certificate, for `names` (DNS names or IP addresses) besides
    /// [`SERVER_NAME`].
    pub fn server(&self, names: &[String]) -> Result<Bundle, PkiError> {
        let mut params = CertificateParams::new(vec![SERVER_NAME.to_owned()])?;
        for n in names {
            params.subject_alt_names.push(match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.clone().try_into()?),
            });
        }
        params.distinguished_name = name(SERVER_NAME, None);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// The client certificate of node `node`.
    pub fn node(&self, node: &str) -> Result<Bundle, PkiError> {
        let valid = !node.is_empty()
            && node.len() <= 253
            && node.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid {
            return Err(PkiError::NodeName(node.to_owned()));
        }
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(node, Some(NODE_ORGANIZATION));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, mut params: CertificateParams) -> Result<Bundle, PkiError> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Bundle { ca: self.ca_pem.clone(), cert: cert.pem(), key: key.serialize_pem() })
    }
}

impl Bundle {
    /// The server side of the operator's TLS with this (server) bundle. Client certificates
    /// are optional at the TLS layer so that an agent without one can bootstrap; the state
    /// stream itself refuses a stream without one.
    pub fn server_tls(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(tonic::transport::Certificate::from_pem(&self.ca))
            .client_auth_optional(true)
    }

    /// Writes `ca.crt`, `tls.crt` and `tls.key` (mode 0600) into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), PkiError> {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Io { path: dir.to_owned(), source })?;
        write(&dir.join(CA_CERT), &self.ca)?;
        write(&dir.join(TLS_CERT), &self.cert)?;
        write_private(&dir.join(TLS_KEY), &self.key)
    }
}

/// The node a client certificate (DER) names: its subject's common name, if it is a node
/// certificate.
pub fn node_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let organization = subject.iter_organization().next()?.as_str().ok()?;
    (organization == NODE_ORGANIZATION).then_some(())?;
    Some(subject.iter_common_name().next()?.as_str().ok()?.to_owned())
}

fn name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}

pub(crate) fn write(path: &Path, text: &str) -> Result<(), PkiError> {
    std::fs::write(path, text).map_err(|source| PkiError::Io { path: path.to_owned(), source })
}

pub(crate) fn write_private(path: &Path, text: &str) -> Result<(), PkiError> {
    use std::io::Write as _;
    let io = |source| PkiError::Io { path: path.to_owned(), source };
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_certificates_name_their_node_and_the_ca_persists() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::open(dir.path()).unwrap();
        let bundle = pki.node("node-1").unwrap();
        let der = rustls_pem_der(&bundle.cert);
        assert_eq!(node_of(&der).as_deref(), Some("node-1"));
        // The server certificate is not a node certificate.
        assert_eq!(node_of(&rustls_pem_der(&pki.server(&["127.0.0.1".into()]).unwrap().cert)), None);
        // Reopened: the same CA.
        let again = Pki::open(dir.path()).unwrap();
        assert_eq!(again.node("node-2").unwrap().ca, bundle.ca);
        assert!(pki.node("Bad_Name").is_err());
        let mode = std::fs::metadata(dir.path().join(CA_KEY)).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
    }

    fn rustls_pem_der(pem: &str) -> Vec<u8> {
        let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        parsed.contents
    }
}
