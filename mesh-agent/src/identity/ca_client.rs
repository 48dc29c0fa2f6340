//! The agent's side of Istio's certificate API: a key and CSR made here, signed by the
//! operator's workload CA over the same mutual TLS as the state stream (the node certificate
//! is what entitles the agent to its pods' identities), and the answer checked before use.

use std::time::Duration;

use mesh_common::{
    identity::{SpiffeId, csr_for},
    istio_ca::{IstioCertificateRequest, istio_certificate_service_client::IstioCertificateServiceClient},
    model::{STREAM_CONNECT_TIMEOUT, STREAM_KEEPALIVE_INTERVAL, STREAM_KEEPALIVE_TIMEOUT},
};
use tonic::transport::{Channel, Endpoint};

use super::Issued;
use crate::operator_stream::{StreamError, Tls, tls_config};

/// The longest a certificate request may take, the CA's signing included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// ztunnel's metadata key naming the identity asked for.
const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot reach the workload CA: {0}")]
    Connect(#[from] StreamError),
    #[error("the workload CA at {endpoint} is not a valid address: {source}")]
    Endpoint { endpoint: String, source: tonic::transport::Error },
    #[error("the workload CA refused {identity}: {status}", status = .status.message())]
    Refused { identity: SpiffeId, status: tonic::Status },
    #[error("the workload CA did not answer within {REQUEST_TIMEOUT:?}")]
    Timeout,
    #[error("cannot make a key and CSR: {0}")]
    Key(String),
    #[error("the workload CA's answer for {identity} is unusable: {reason}")]
    Answer { identity: SpiffeId, reason: String },
}

/// The operator's workload CA, reached with this node's bundle.
#[derive(Debug, Clone)]
pub struct CaClient {
    pub endpoint: String,
    pub tls: Tls,
}

impl CaClient {
    /// A channel for one round of requests; the bundle is read again each time, so a renewed
    /// node certificate is used. It connects at the first request.
    pub fn channel(&self) -> Result<Channel, CertError> {
        let endpoint_error = |source| CertError::Endpoint { endpoint: self.endpoint.clone(), source };
        let endpoint = Endpoint::from_shared(self.endpoint.clone())
            .map_err(endpoint_error)?
            .connect_timeout(STREAM_CONNECT_TIMEOUT)
            .http2_keep_alive_interval(STREAM_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(STREAM_KEEPALIVE_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .tls_config(tls_config(&self.tls.dir)?)
            .map_err(endpoint_error)?;
        Ok(endpoint.connect_lazy())
    }

    /// A new key and a certificate for `identity`. Making the key and checking the answer are
    /// CPU work: on a blocking thread.
    pub async fn issue(&self, channel: Channel, identity: &SpiffeId) -> Result<Issued, CertError> {
        let for_csr = identity.clone();
        let (key_pem, public_key, csr) = tokio::task::spawn_blocking(move || {
            csr_for(&for_csr).map(|(key, csr)| (key.serialize_pem(), key.public_key_raw().to_vec(), csr))
        })
        .await
        .map_err(|err| CertError::Key(err.to_string()))?
        .map_err(|err| CertError::Key(err.to_string()))?;
        let metadata = prost_types::Struct {
            fields: [(
                IMPERSONATED_IDENTITY.to_owned(),
                prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(identity.to_string())) },
            )]
            .into(),
        };
        // validity_duration 0: the CA's configured lifetime.
        let request = IstioCertificateRequest { csr, validity_duration: 0, metadata: Some(metadata) };
        let answer = tokio::time::timeout(
            REQUEST_TIMEOUT,
            IstioCertificateServiceClient::new(channel).create_certificate(request),
        )
        .await
        .map_err(|_| CertError::Timeout)?
        .map_err(|status| CertError::Refused { identity: identity.clone(), status })?
        .into_inner();
        let identity = identity.clone();
        tokio::task::spawn_blocking(move || {
            let chain_pem = answer.cert_chain;
            match check_chain(&chain_pem, &identity, &public_key) {
                Ok(Checked { serial, issuer, not_before, not_after }) => {
                    Ok(Issued { key_pem, chain_pem, serial, issuer, not_before, not_after })
                }
                Err(reason) => Err(CertError::Answer { identity, reason }),
            }
        })
        .await
        .map_err(|err| CertError::Key(err.to_string()))?
    }
}

/// What [`check_chain`] read from a leaf it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Hex.
    pub serial: String,
    pub issuer: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

/// Checks that `chain` (PEM, leaf first) names exactly `identity` for the key whose public
/// half is `public_key`, and is valid now.
pub fn check_chain(chain: &[String], identity: &SpiffeId, public_key: &[u8]) -> Result<Checked, String> {
    use x509_parser::{extensions::GeneralName, pem::parse_x509_pem};
    let leaf_pem = chain.first().ok_or("the chain is empty")?;
    if chain.len() < 2 {
        return Err("the chain has no root after the leaf".into());
    }
    let (_, pem) = parse_x509_pem(leaf_pem.as_bytes()).map_err(|err| format!("the leaf is not PEM: {err}"))?;
    let leaf = pem.parse_x509().map_err(|err| format!("the leaf is not a certificate: {err}"))?;
    if leaf.public_key().subject_public_key.data.as_ref() != public_key {
        return Err("the leaf is not for the key this agent made".into());
    }
    let names: Vec<String> = leaf
        .subject_alternative_name()
        .map_err(|err| format!("the leaf's subject alternative names are broken: {err}"))?
        .map(|san| {
            san.value
                .general_names
                .iter()
                .map(|name| match name {
                    GeneralName::URI(uri) => (*uri).to_owned(),
                    other => format!("{other:?}"),
                })
                .collect()
        })
        .unwrap_or_default();
    if names != [identity.to_string()] {
        return Err(format!("the leaf names {names:?}, not only {identity}"));
    }
    let validity = leaf.validity();
    let (not_before, not_after) = (validity.not_before.timestamp(), validity.not_after.timestamp());
    if not_after <= super::unix_now() {
        return Err("the leaf has expired already".into());
    }
    Ok(Checked {
        serial: leaf.raw_serial_as_string().replace(':', ""),
        issuer: leaf.issuer().to_string(),
        not_before,
        not_after,
    })
}

#[cfg(test)]
mod tests {
    use mesh_common::identity::TrustDomain;
    use mesh_operator::workload_ca::WorkloadCa;

    use super::*;

    fn id(ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::new(TrustDomain::default(), ns, sa).unwrap()
    }

    /// A chain the operator's CA signs for a CSR of `identity`, and the CSR key's public half.
    fn signed(ca: &WorkloadCa, identity: &SpiffeId, ttl: Duration) -> (Vec<String>, Vec<u8>) {
        let (key, csr) = csr_for(identity).unwrap();
        let (chain, _) = ca.sign(ca.read_csr(&csr).unwrap(), ttl).unwrap();
        (chain, key.public_key_raw().to_vec())
    }

    #[test]
    fn the_chain_is_taken_for_its_key_and_identity_only() {
        let dir = tempfile::tempdir().unwrap();
        let ca = WorkloadCa::open(dir.path(), TrustDomain::default(), Duration::from_secs(3600)).unwrap();
        let web = id("demo", "web");
        let (chain, key) = signed(&ca, &web, Duration::from_secs(600));
        let Checked { serial, issuer, not_before, not_after } = check_chain(&chain, &web, &key).unwrap();
        assert!(issuer.contains("CN="), "the workload CA's subject: {issuer}");
        assert!(!serial.is_empty() && serial.chars().all(|c| c.is_ascii_hexdigit()), "{serial}");
        let now = crate::identity::unix_now();
        assert!(not_before <= now && (not_after - now - 600).abs() <= 5, "{not_before} {not_after} {now}");

        // Another identity's chain, another key, a chain without its root, nothing.
        let err = check_chain(&chain, &id("demo", "client"), &key).unwrap_err();
        assert!(err.contains("not only spiffe://cluster.local/ns/demo/sa/client"), "{err}");
        let (_, other_key) = signed(&ca, &web, Duration::from_secs(600));
        assert_eq!(check_chain(&chain, &web, &other_key).unwrap_err(), "the leaf is not for the key this agent made");
        assert!(check_chain(&chain[..1], &web, &key).unwrap_err().contains("no root"));
        assert!(check_chain(&[], &web, &key).unwrap_err().contains("empty"));
        let garbage = vec!["not a certificate".to_owned(), chain[1].clone()];
        assert!(check_chain(&garbage, &web, &key).unwrap_err().contains("not PEM"));
    }
}
