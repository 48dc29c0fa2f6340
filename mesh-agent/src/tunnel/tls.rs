//! TLS for the tunnel: TLS 1.3 only, ALPN `h2`, both ends authenticated by workload
//! certificates of the operator's CA, each end's identity the one SPIFFE ID (URI SAN) of its
//! certificate.
//!
//! One agent serves every pod of its node on one port, so the client says which identity it
//! wants to reach in the server name (SNI): `<namespace>.<service-account>.<SNI_SUFFIX>`
//! (the namespace is a DNS label, so the first dot ends it). The server presents that
//! identity's certificate and later refuses a CONNECT to a pod of another identity; the client
//! accepts only a chain to a trusted root naming exactly the identity it asked for.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use mesh_common::identity::SpiffeId;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject as _},
    server::{
        ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
    sign::CertifiedKey,
};

use crate::identity::{Certificates, Issued};

/// The tunnel's application protocol.
pub const ALPN_H2: &[u8] = b"h2";
/// What ends the server name a client sends.
pub const SNI_SUFFIX: &str = "hbone.mesh.internal";

/// The crypto the tunnel uses (ring, as the rest of the agent).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server name that asks for `identity`'s certificate.
pub fn server_name(identity: &SpiffeId) -> Result<ServerName<'static>, String> {
    let name = format!("{}.{}.{SNI_SUFFIX}", identity.namespace(), identity.service_account());
    ServerName::try_from(name.clone()).map_err(|err| format!("{identity} makes no server name ({name}): {err}"))
}

/// The identity a server name asks for, in the server's trust domain.
fn identity_of(name: &str, certificates: &Certificates) -> Option<SpiffeId> {
    let (namespace, service_account) = name.strip_suffix(SNI_SUFFIX)?.strip_suffix('.')?.split_once('.')?;
    SpiffeId::new(certificates.trust_domain().clone(), namespace, service_account).ok()
}

/// The one SPIFFE ID a certificate names.
pub fn identity_in(certificate: &CertificateDer<'_>) -> Result<SpiffeId, String> {
    use x509_parser::{extensions::GeneralName, prelude::FromDer as _};
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(certificate.as_ref())
        .map_err(|err| format!("not a certificate: {err}"))?;
    let names = parsed.subject_alternative_name().map_err(|err| format!("broken subject alternative names: {err}"))?;
    let uris: Vec<&str> = names
        .iter()
        .flat_map(|san| san.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris[..] {
        [uri] => uri.parse().map_err(|err| format!("its URI {uri} is not a workload identity: {err}")),
        _ => Err(format!("it names {} URIs, not one SPIFFE ID", uris.len())),
    }
}

/// A key and chain as rustls signs with them.
pub fn certified_key(issued: &Issued, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, String> {
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).map_err(|err| format!("the key: {err}"))?;
    let chain = issued
        .chain_pem
        .iter()
        .map(|pem| CertificateDer::from_pem_slice(pem.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("the chain: {err}"))?;
    let signing = provider.key_provider.load_private_key(key).map_err(|err| format!("the key: {err}"))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// Trusted roots (PEM), as rustls checks chains against them.
fn root_store(roots: &[String]) -> RootCertStore {
    let mut store = RootCertStore::empty();
    for pem in roots {
        if let Ok(der) = CertificateDer::from_pem_slice(pem.as_bytes()) {
            let _ = store.add(der);
        }
    }
    store
}

/// The server side: presents the certificate the client's server name asks for, requires a
/// client certificate from a trusted root.
pub fn server_config(certificates: Certificates) -> Result<Arc<rustls::ServerConfig>, Error> {
    let provider = provider();
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(ClientVerifier {
            certificates: certificates.clone(),
            provider: provider.clone(),
        }))
        .with_cert_resolver(Arc::new(ServerCertificates { certificates, provider, loaded: Mutex::default() }));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The client side: presents `source`'s certificate, accepts only a server proving `expected`
/// with a chain to one of `roots` (PEM).
pub fn client_config(
    source: &Issued,
    expected: SpiffeId,
    roots: &[String],
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = provider();
    let key = certified_key(source, &provider)?;
    let verifier = ServerVerifier { expected, roots: Arc::new(root_store(roots)), provider: provider.clone() };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|err| err.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(ClientCertificate(key)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct ClientCertificate(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCertificate {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Picks the certificate of the identity the server name asks for (made into a rustls key
/// once per issued certificate).
struct ServerCertificates {
    certificates: Certificates,
    provider: Arc<CryptoProvider>,
    /// By identity: the serial it was made from and the key.
    loaded: Mutex<HashMap<SpiffeId, (String, Arc<CertifiedKey>)>>,
}

impl std::fmt::Debug for ServerCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerCertificates")
    }
}

impl ResolvesServerCert for ServerCertificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let identity = identity_of(hello.server_name()?, &self.certificates)?;
        let issued = self.certificates.get(&identity)?;
        let mut loaded = self.loaded.lock().expect("never poisoned");
        if let Some((serial, key)) = loaded.get(&identity)
            && *serial == issued.serial
        {
            return Some(key.clone());
        }
        let key = certified_key(&issued, &self.provider)
            .inspect_err(|err| tracing::error!(%identity, "cannot use the workload certificate: {err}"))
            .ok()?;
        loaded.insert(identity, (issued.serial.clone(), key.clone()));
        Some(key)
    }
}

/// The handshake-signature methods both verifiers share (the traits differ, the checks do
/// not): TLS 1.2 is never negotiated (the configs offer 1.3 only); a TLS 1.3 signature is
/// checked with the tunnel's crypto (`self.provider`).
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            Err(Error::General("the tunnel speaks TLS 1.3 only".into()))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider.signature_verification_algorithms.supported_schemes()
        }
    };
}

/// Requires a client chain to one of the roots trusted now (they change with a rotation).
struct ClientVerifier {
    certificates: Certificates,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientVerifier")
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let roots = root_store(&self.certificates.roots());
        if roots.is_empty() {
            return Err(Error::General("this agent holds no workload certificate yet, so trusts no root".into()));
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|err| Error::General(err.to_string()))?;
        verifier.verify_client_cert(end_entity, intermediates, now)?;
        identity_in(end_entity).map_err(|err| Error::InvalidCertificate(CertificateError::Other(other(err))))?;
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

/// Accepts a server chain to a trusted root whose leaf names exactly `expected`.
#[derive(Debug)]
struct ServerVerifier {
    expected: SpiffeId,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

fn other(message: String) -> rustls::OtherError {
    rustls::OtherError(Arc::new(std::io::Error::other(message)))
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let found =
            identity_in(end_entity).map_err(|err| Error::InvalidCertificate(CertificateError::Other(other(err))))?;
        if found != self.expected {
            return Err(Error::InvalidCertificate(CertificateError::Other(other(format!(
                "the peer is {found}, not {}",
                self.expected
            )))));
        }
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

#[cfg(test)]
mod tests {
    use mesh_common::identity::TrustDomain;

    use super::*;

    #[test]
    fn a_server_name_asks_for_exactly_one_identity_of_the_servers_trust_domain() {
        let certificates = Certificates::new(TrustDomain::default(), true);
        let dotted = SpiffeId::new(TrustDomain::default(), "demo", "web.frontend").unwrap();
        let name = server_name(&dotted).unwrap();
        assert_eq!(name.to_str(), "demo.web.frontend.hbone.mesh.internal");
        assert_eq!(identity_of(&name.to_str(), &certificates), Some(dotted));
        for other in
            ["demo.web.example.com", "demo.hbone.mesh.internal", "hbone.mesh.internal", "Demo.web.hbone.mesh.internal"]
        {
            assert_eq!(identity_of(other, &certificates), None, "{other}");
        }
    }
}
