//! The workload CA: signs each workload's certificate, for its SPIFFE ID, from a CSR whose
//! key never left the node that made it. Its root is its own, apart from the state stream's
//! CA (`pki`): the two are trusted by different parties and rotated on their own schedules.
//!
//! Files, in the PKI directory: `workload-ca.crt` and `workload-ca.key` (mode 0600), created on
//! first use: the root that signs.
//!
//! Rotating the root (`mesh-operator rotate-workload-ca`, one step at a time, each taking effect
//! when the operator starts): `prepare` makes the next root (`workload-ca-next.*`), trusted but
//! not signing; `activate` makes it the signing root and keeps the old one's certificate
//! (`workload-ca-previous.crt`), still trusted; `retire` drops the old one once no certificate
//! it signed is left (after the longest lifetime). Every root of the directory is in the trust
//! bundle the operator streams to agents (`StateUpdate.workload_roots`), so in every step each
//! agent trusts every root a peer's chain may end in.

use std::{path::Path, time::Duration};

use mesh_common::identity::{SpiffeId, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::pki::{self, PkiError};

/// The root's certificate and key, in the PKI directory.
pub const ROOT_CERT: &str = "workload-ca.crt";
pub const ROOT_KEY: &str = "workload-ca.key";
/// A rotation's next root, trusted before it signs.
pub const NEXT_CERT: &str = "workload-ca-next.crt";
pub const NEXT_KEY: &str = "workload-ca-next.key";
/// A rotation's previous root, trusted until retired (no key: it signs nothing any more).
pub const PREVIOUS_CERT: &str = "workload-ca-previous.crt";
/// A certificate's lifetime when the request names none, as Istio's default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The shortest lifetime the CA gives (tests rotate certificates of a minute).
pub const MIN_TTL: Duration = Duration::from_secs(60);
/// How far before now a certificate starts, for clocks that are a little behind.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// The largest CSR the CA reads (a P-256 or RSA-4096 CSR is 1-3 KiB).
pub const MAX_CSR_BYTES: usize = 16 << 10;

#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("the CSR is larger than {MAX_CSR_BYTES} bytes")]
    TooLarge,
    #[error("the CSR cannot be read (PEM \"CERTIFICATE REQUEST\" with a valid self-signature expected): {0}")]
    Unreadable(rcgen::Error),
    #[error(
        "the CSR must name exactly one identity, as a URI subject alternative name, and nothing else (it names {0})"
    )]
    Names(String),
    #[error("the CSR names {0:?}, which is not a workload identity: {1}")]
    NotAnIdentity(String, mesh_common::identity::IdentityError),
    #[error("the CSR is for trust domain {0:?}; this CA signs for {1:?}")]
    TrustDomain(String, String),
    #[error("signing failed: {0}")]
    Sign(rcgen::Error),
}

/// The workload CA.
pub struct WorkloadCa {
    root_pem: String,
    /// Every root agents must trust now: the signing one, then the next or previous one.
    trusted: Vec<String>,
    issuer: Issuer<'static, KeyPair>,
    trust_domain: TrustDomain,
    max_ttl: Duration,
}

/// A CSR that was read and checked: the identity it names, ready to be signed.
pub struct Csr {
    pub identity: SpiffeId,
    params: CertificateSigningRequestParams,
}

impl WorkloadCa {
    /// Loads the root from `dir`, creating it first if there is none.
    pub fn open(dir: &Path, trust_domain: TrustDomain, max_ttl: Duration) -> Result<Self, PkiError> {
        let (cert_path, key_path) = (dir.join(ROOT_CERT), dir.join(ROOT_KEY));
        if !cert_path.exists() {
            std::fs::create_dir_all(dir).map_err(|source| PkiError::Io { path: dir.to_owned(), source })?;
            new_root(&cert_path, &key_path, &trust_domain)?;
            tracing::info!(dir = %dir.display(), %trust_domain, "created a new workload CA");
        }
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| PkiError::Io { path: path.to_owned(), source })
        };
        let root_pem = read(&cert_path)?;
        let mut trusted = vec![root_pem.clone()];
        for other in [NEXT_CERT, PREVIOUS_CERT] {
            let path = dir.join(other);
            if path.exists() {
                trusted.push(read(&path)?);
            }
        }
        let key = KeyPair::from_pem(&read(&key_path)?)
            .map_err(|source| PkiError::BadCa { path: key_path.clone(), source })?;
        let issuer =
            Issuer::from_ca_cert_pem(&root_pem, key).map_err(|source| PkiError::BadCa { path: cert_path, source })?;
        if trusted.len() > 1 {
            tracing::info!(roots = trusted.len(), "workload CA root rotation in progress: every root is trusted");
        }
        Ok(Self { root_pem, trusted, issuer, trust_domain, max_ttl: max_ttl.max(MIN_TTL) })
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Every root agents must trust now (PEM): the signing one first.
    pub fn trusted_roots(&self) -> &[String] {
        &self.trusted
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Reads `pem` and checks that it is a well-signed CSR for exactly one workload identity of
    /// this trust domain. Who may hold that identity is the caller's question.
    pub fn read_csr(&self, pem: &str) -> Result<Csr, CsrError> {
        if pem.len() > MAX_CSR_BYTES {
            return Err(CsrError::TooLarge);
        }
        let params = CertificateSigningRequestParams::from_pem(pem).map_err(CsrError::Unreadable)?;
        let uri = match &params.params.subject_alt_names[..] {
            [SanType::URI(uri)] => uri.as_str().to_owned(),
            names => return Err(CsrError::Names(describe(names))),
        };
        let identity: SpiffeId = uri.parse().map_err(|err| CsrError::NotAnIdentity(uri.clone(), err))?;
        if identity.trust_domain() != &self.trust_domain {
            return Err(CsrError::TrustDomain(identity.trust_domain().to_string(), self.trust_domain.to_string()));
        }
        Ok(Csr { identity, params })
    }

    /// Signs `csr` for `ttl` (0: [`DEFAULT_TTL`]; kept within [`MIN_TTL`] and the CA's
    /// maximum): the chain, leaf first and root last. Only the identity and the key come from
    /// the CSR; every other field is the CA's.
    pub fn sign(&self, csr: Csr, ttl: Duration) -> Result<(Vec<String>, Duration), CsrError> {
        let ttl = if ttl.is_zero() { DEFAULT_TTL } else { ttl }.clamp(MIN_TTL, self.max_ttl);
        let mut params = CertificateParams::default();
        let uri = csr.identity.to_string().try_into().map_err(CsrError::Sign)?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + ttl;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let request = CertificateSigningRequestParams { params, public_key: csr.params.public_key };
        let leaf = request.signed_by(&self.issuer).map_err(CsrError::Sign)?;
        Ok((vec![leaf.pem(), self.root_pem.clone()], ttl))
    }
}

/// A new self-signed root at `cert_path` and `key_path`. Its name carries the time it was
/// made, so that two roots of one trust domain are told apart (as leaves' issuers).
fn new_root(cert_path: &Path, key_path: &Path, trust_domain: &TrustDomain) -> Result<(), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let made = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    params.distinguished_name.push(DnType::CommonName, format!("mesh workload CA ({trust_domain}) {made}"));
    params.distinguished_name.push(DnType::OrganizationName, trust_domain.as_str());
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key)?;
    pki::write_private(key_path, &key.serialize_pem())?;
    pki::write(cert_path, &cert.pem())
}

/// One step of a root rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RotationStep {
    /// Make the next root: trusted everywhere, signing nothing yet.
    Prepare,
    /// The next root signs; the old one stays trusted.
    Activate,
    /// The old root is trusted no more (once every certificate it signed has expired).
    Retire,
}

/// Does `step` of a root rotation on the files of `dir`; what it did, for the operator's
/// user. Takes effect when the operator (re)starts. A step out of order is refused and changes
/// nothing.
pub fn rotate(dir: &Path, step: RotationStep, trust_domain: &TrustDomain) -> Result<String, PkiError> {
    let path = |name: &str| dir.join(name);
    let refuse = |message: &str| PkiError::Rotation(message.to_owned());
    let rename = |from: &str, to: &str| {
        std::fs::rename(path(from), path(to)).map_err(|source| PkiError::Io { path: path(from), source })
    };
    if !path(ROOT_CERT).exists() {
        return Err(refuse("there is no workload CA in this directory yet: start the operator with it first"));
    }
    match step {
        RotationStep::Prepare => {
            if path(NEXT_CERT).exists() || path(PREVIOUS_CERT).exists() {
                return Err(refuse("a rotation is under way: activate the next root, or retire the previous one"));
            }
            new_root(&path(NEXT_CERT), &path(NEXT_KEY), trust_domain)?;
            Ok(format!("made the next root ({NEXT_CERT}); restart the operator so that agents trust it, then activate"))
        }
        RotationStep::Activate => {
            if !path(NEXT_CERT).exists() {
                return Err(refuse("there is no next root: prepare one first"));
            }
            rename(ROOT_CERT, PREVIOUS_CERT)?;
            std::fs::remove_file(path(ROOT_KEY)).map_err(|source| PkiError::Io { path: path(ROOT_KEY), source })?;
            rename(NEXT_KEY, ROOT_KEY)?;
            rename(NEXT_CERT, ROOT_CERT)?;
            Ok(format!(
                "the next root signs; the old one is {PREVIOUS_CERT}, still trusted: restart the operator, and retire it once every certificate it signed has expired"
            ))
        }
        RotationStep::Retire => {
            if !path(PREVIOUS_CERT).exists() {
                return Err(refuse("there is no previous root to retire"));
            }
            std::fs::remove_file(path(PREVIOUS_CERT))
                .map_err(|source| PkiError::Io { path: path(PREVIOUS_CERT), source })?;
            Ok("the previous root is trusted no more: restart the operator".to_owned())
        }
    }
}

fn describe(names: &[SanType]) -> String {
    if names.is_empty() {
        return "none".to_owned();
    }
    names
        .iter()
        .map(|name| match name {
            SanType::URI(uri) => format!("URI {}", uri.as_str()),
            SanType::DnsName(dns) => format!("DNS {}", dns.as_str()),
            SanType::IpAddress(ip) => format!("IP {ip}"),
            SanType::Rfc822Name(mail) => format!("email {}", mail.as_str()),
            other => format!("{other:?}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use mesh_common::identity::csr_for;

    use super::*;

    fn ca(dir: &Path) -> WorkloadCa {
        WorkloadCa::open(dir, TrustDomain::default(), Duration::from_secs(7 * 24 * 3600)).unwrap()
    }

    fn id(ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::new(TrustDomain::default(), ns, sa).unwrap()
    }

    #[test]
    fn a_csr_is_signed_for_its_identity_with_the_root_last() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path());
        let (_key, pem) = csr_for(&id("demo", "web")).unwrap();
        let csr = ca.read_csr(&pem).unwrap();
        assert_eq!(csr.identity, id("demo", "web"));
        let (chain, ttl) = ca.sign(csr, Duration::from_secs(120)).unwrap();
        assert_eq!(ttl, Duration::from_secs(120));
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1], ca.root_pem());
        let der = der_of(&chain[0]);
        let (_, leaf) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert_eq!(format!("{:?}", san.value.general_names), "[URI(\"spiffe://cluster.local/ns/demo/sa/web\")]");
        let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
        assert_eq!(lifetime, 120 + CLOCK_SKEW.as_secs() as i64);
        assert!(!leaf.is_ca());
        // The same CA opens again from its files and signs with the same root.
        assert_eq!(self::ca(dir.path()).root_pem(), ca.root_pem());
    }

    #[test]
    fn lifetimes_are_kept_within_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let ca = WorkloadCa::open(dir.path(), TrustDomain::default(), Duration::from_secs(3600)).unwrap();
        for (asked, given) in [(0, 3600), (1, 60), (600, 600), (86_400, 3600)] {
            let (_key, pem) = csr_for(&id("a", "b")).unwrap();
            let (_, ttl) = ca.sign(ca.read_csr(&pem).unwrap(), Duration::from_secs(asked)).unwrap();
            assert_eq!(ttl, Duration::from_secs(given), "asked {asked} s");
        }
    }

    #[test]
    fn a_csr_for_anything_but_one_identity_of_this_domain_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path());
        let request = |names: Vec<SanType>| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::default();
            params.subject_alt_names = names;
            params.serialize_request(&key).unwrap().pem().unwrap()
        };
        let uri = |s: &str| SanType::URI(s.try_into().unwrap());
        let refused = |pem: String| ca.read_csr(&pem).err().expect("refused").to_string();
        assert!(refused(request(vec![])).contains("names none"));
        assert!(refused(request(vec![SanType::DnsName("web.demo".try_into().unwrap())])).contains("DNS web.demo"));
        let two = request(vec![uri("spiffe://cluster.local/ns/a/sa/b"), uri("spiffe://cluster.local/ns/c/sa/d")]);
        assert!(refused(two).contains("exactly one identity"));
        assert!(
            refused(request(vec![uri("spiffe://other.domain/ns/a/sa/b")])).contains("trust domain \"other.domain\"")
        );
        assert!(refused(request(vec![uri("spiffe://cluster.local/admin")])).contains("not a workload identity"));
        assert!(refused("not a csr".into()).contains("cannot be read"));
        assert!(refused("x".repeat(MAX_CSR_BYTES + 1)).contains("larger than"));
        // A CSR whose signature does not match its key is refused, whatever it names.
        let (_key, pem) = csr_for(&id("a", "b")).unwrap();
        let mut der = der_of(&pem);
        let last = der.len() - 1;
        der[last] ^= 0xff;
        let tampered = pem_of("CERTIFICATE REQUEST", &der);
        assert!(refused(tampered).contains("cannot be read"));
    }

    fn der_of(pem: &str) -> Vec<u8> {
        ::pem::parse(pem).unwrap().into_contents()
    }

    #[test]
    fn a_root_rotation_trusts_both_roots_before_the_new_one_signs_and_refuses_steps_out_of_order() {
        let dir = tempfile::tempdir().unwrap();
        let domain = TrustDomain::default();
        let old = ca(dir.path()).root_pem().to_owned();
        let rotate = |step| rotate(dir.path(), step, &domain);
        assert!(matches!(rotate(RotationStep::Activate), Err(PkiError::Rotation(_))), "nothing prepared");
        assert!(matches!(rotate(RotationStep::Retire), Err(PkiError::Rotation(_))), "nothing to retire");
        rotate(RotationStep::Prepare).unwrap();
        assert!(matches!(rotate(RotationStep::Prepare), Err(PkiError::Rotation(_))), "one rotation at a time");
        // Prepared: the old root still signs, both are trusted.
        let prepared = ca(dir.path());
        assert_eq!(prepared.root_pem(), old);
        assert_eq!(prepared.trusted_roots().len(), 2);
        let next = prepared.trusted_roots()[1].clone();
        assert_ne!(next, old);
        let (_key, pem) = csr_for(&id("demo", "web")).unwrap();
        let (chain, _) = prepared.sign(prepared.read_csr(&pem).unwrap(), Duration::ZERO).unwrap();
        assert_eq!(chain.last(), Some(&old));
        // Activated: the new root signs, the old one is still trusted.
        rotate(RotationStep::Activate).unwrap();
        let active = ca(dir.path());
        assert_eq!((active.root_pem(), active.trusted_roots()), (next.as_str(), &[next.clone(), old.clone()][..]));
        let (chain, _) = active.sign(active.read_csr(&pem).unwrap(), Duration::ZERO).unwrap();
        assert_eq!(chain.last(), Some(&next));
        // Retired: the new root alone.
        rotate(RotationStep::Retire).unwrap();
        assert_eq!(ca(dir.path()).trusted_roots(), &[next]);
    }

    fn pem_of(tag: &str, der: &[u8]) -> String {
        ::pem::encode(&::pem::Pem::new(tag, der.to_vec()))
    }
}
