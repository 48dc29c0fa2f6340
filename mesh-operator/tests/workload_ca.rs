//! The workload CA over its real wire: Istio's `CreateCertificate` on a TLS gRPC server with
//! node certificates, as an agent (or any client of Istio's certificate API) calls it.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use mesh_common::{
    api::{Kind, Resource, Workload, resource},
    identity::{SpiffeId, TrustDomain, csr_for},
    istio_ca::{
        IstioCertificateRequest, istio_certificate_service_client::IstioCertificateServiceClient,
        istio_certificate_service_server::IstioCertificateServiceServer,
    },
    model::OPERATOR_TLS_NAME,
};
use mesh_operator::{
    ca_server::{CaServer, IMPERSONATED_IDENTITY},
    metrics::Metrics,
    model_store::ModelStore,
    pki::{Bundle, Pki},
    workload_ca::WorkloadCa,
};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

fn web_on_node_0() -> ModelStore {
    let mut store = ModelStore::new("test".into());
    let workload = Workload {
        namespace: "demo".into(),
        name: "web-a".into(),
        node: "node-0".into(),
        service_account: "web".into(),
        ips: vec!["10.244.0.10".into()],
        ..Workload::default()
    };
    let resource = Resource { kind: Some(resource::Kind::Workload(Box::new(workload))) };
    store.commit(vec![((Kind::Workload as i32, "demo".into(), "web-a".into()), Some(resource))]);
    store
}

/// A client of the CA at `address`, with `bundle`'s certificate or none.
async fn client(
    address: std::net::SocketAddr,
    ca: &str,
    bundle: Option<&Bundle>,
) -> IstioCertificateServiceClient<Channel> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name(OPERATOR_TLS_NAME);
    if let Some(bundle) = bundle {
        tls = tls.identity(Identity::from_pem(&bundle.cert, &bundle.key));
    }
    let channel = Endpoint::from_shared(format!("https://{address}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    IstioCertificateServiceClient::new(channel)
}

fn request(identity: &SpiffeId, impersonated: Option<&str>) -> IstioCertificateRequest {
    let (_key, csr) = csr_for(identity).unwrap();
    let metadata = impersonated.map(|id| prost_types::Struct {
        fields: [(
            IMPERSONATED_IDENTITY.to_owned(),
            prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(id.to_owned())) },
        )]
        .into(),
    });
    IstioCertificateRequest { csr, validity_duration: 120, metadata }
}

#[tokio::test]
async fn the_ca_signs_only_for_a_node_that_runs_the_identity() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::open(dir.path()).unwrap();
    let server = pki.server(&["127.0.0.1".to_owned()]).unwrap();
    let (node0, node1) = (pki.node("node-0").unwrap(), pki.node("node-1").unwrap());
    let ca = Arc::new(WorkloadCa::open(dir.path(), TrustDomain::default(), Duration::from_secs(3600)).unwrap());
    let metrics = Arc::new(Metrics::default());
    let service = CaServer { ca: ca.clone(), store: Arc::new(Mutex::new(web_on_node_0())), metrics: metrics.clone() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(server.server_tls())
            .unwrap()
            .add_service(IstioCertificateServiceServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let web = SpiffeId::new(TrustDomain::default(), "demo", "web").unwrap();

    // node-0 runs demo/web: signed, leaf first (for that identity, for the asked lifetime),
    // then the workload root, which signed the leaf.
    let chain = client(address, pki.ca_pem(), Some(&node0))
        .await
        .create_certificate(request(&web, Some(&web.to_string())))
        .await
        .expect("signed")
        .into_inner()
        .cert_chain;
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1], ca.root_pem());
    let (leaf_der, root_der) = (pem::parse(&chain[0]).unwrap(), pem::parse(&chain[1]).unwrap());
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der.contents()).unwrap();
    let (_, root) = x509_parser::parse_x509_certificate(root_der.contents()).unwrap();
    leaf.verify_signature(Some(root.public_key())).expect("the leaf is signed by the root");
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert_eq!(format!("{:?}", san.value.general_names), format!("[URI({:?})]", web.to_string()));
    assert_eq!(leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp(), 120 + 60);

    // Refused, each with PERMISSION_DENIED (or UNAUTHENTICATED without a node certificate)
    // and a message that says why.
    let other_sa = SpiffeId::new(TrustDomain::default(), "demo", "admin").unwrap();
    let cases: [(Option<&Bundle>, IstioCertificateRequest, Code, &str); 4] = [
        (
            Some(&node1),
            request(&web, None),
            Code::PermissionDenied,
            "node \"node-1\" runs no pod of namespace \"demo\"",
        ),
        (Some(&node0), request(&other_sa, None), Code::PermissionDenied, "service account \"admin\""),
        (Some(&node0), request(&other_sa, Some(&web.to_string())), Code::PermissionDenied, "but the CSR names"),
        (None, request(&web, None), Code::Unauthenticated, "a node certificate is required"),
    ];
    for (bundle, request, code, message) in cases {
        let status = client(address, pki.ca_pem(), bundle).await.create_certificate(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(message), "{:?} lacks {message:?}", status.message());
    }
    let text = metrics.render(0, 0);
    for line in [
        "mesh_ca_certificates_issued_total 1",
        "mesh_ca_requests_refused_total{reason=\"not_on_node\"} 2",
        "mesh_ca_requests_refused_total{reason=\"identity_mismatch\"} 1",
        "mesh_ca_requests_refused_total{reason=\"unauthenticated\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} missing in:\n{text}");
    }
}
