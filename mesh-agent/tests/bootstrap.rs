//! The agent bootstraps its node's bundle from the operator's NodeBootstrap service (the
//! real one, over real TLS, its token reviewed by a mock API server) and writes it where its
//! state stream will look for it.

use std::os::unix::fs::PermissionsExt as _;

use http::{Request, Response};
use kube::client::Body;
use mesh_common::api::node_bootstrap_server::NodeBootstrapServer;
use mesh_operator::{bootstrap::BootstrapServer, pki::Pki};

const AGENT: &str = "system:serviceaccount:mesh-system:mesh-agent";

#[tokio::test]
async fn the_agent_writes_the_bundle_it_bootstrapped() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::open(&dir.path().join("pki")).unwrap();
    let server = pki.server(&["127.0.0.1".into()]).unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &server.ca).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "the-token\n").unwrap();

    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        let mut handle = Box::pin(handle);
        let (request, send) = handle.next_request().await.unwrap();
        let body: serde_json::Value =
            serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap();
        assert_eq!(body["spec"]["token"], "the-token", "the token is sent without its newline");
        let review = serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": {
            "authenticated": true,
            "user": {"username": AGENT, "extra": {"authentication.kubernetes.io/node-name": ["node-1"]}}
        }});
        send.send_response(Response::new(Body::from(serde_json::to_vec(&review).unwrap())));
    });
    let bootstrap = BootstrapServer {
        pki: std::sync::Arc::new(pki),
        client: Some(kube::Client::new(service, "default")),
        agent_account: AGENT.into(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("https://{}", listener.local_addr().unwrap());
    let tls = server.server_tls();
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(NodeBootstrapServer::new(bootstrap))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let bundle_dir = dir.path().join("tls");
    mesh_agent::operator_stream::bootstrap(&endpoint, &ca_file, &token_file, "node-1", &bundle_dir)
        .await
        .expect("bootstrapped");
    let cert = std::fs::read_to_string(bundle_dir.join("tls.crt")).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert.as_bytes()).unwrap();
    assert_eq!(mesh_operator::pki::node_of(&pem.contents).as_deref(), Some("node-1"));
    assert_eq!(std::fs::read_to_string(bundle_dir.join("ca.crt")).unwrap(), server.ca);
    let key_mode = std::fs::metadata(bundle_dir.join("tls.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(key_mode, 0o600);
}
