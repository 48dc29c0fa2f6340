//! The mutual-TLS tunnel (HBONE) between two lab nodes' agents, driven by the agent's own
//! sending side (`mesh_agent::tunnel::hbone::connect`) from inside node-0's network namespace
//! with a certificate node-0's agent could hold: a connection reaches a pod on node-1 through
//! node-1's agent; a CONNECT to a pod of another identity or of another node is refused with
//! its reason; a client or server chain from another CA fails the handshake; the receiving
//! agent counts all of it in its metrics.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use mesh_agent::{
    identity::{Issued, ca_client::CaClient},
    operator_stream::Tls,
    tunnel::{
        HBONE_PORT,
        hbone::{self, Source, TunnelError},
    },
};
use mesh_common::identity::{SpiffeId, TrustDomain};
use mesh_tests::{
    agent::{Agent, observer_socket},
    labnet, meshctl, metrics,
    operator::Operator,
    privileges::privileged,
    scenario::demo,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const ECHO_PORT: u16 = 9000;
const REPLY: &str = "through-the-tunnel";
/// What the client sends (and the server echoes).
const MARKER: &str = "plaintext-marker-0123456789\n";

fn spiffe(sa: &str) -> SpiffeId {
    SpiffeId::new(TrustDomain::default(), "demo", sa).expect("valid")
}

/// Waits (bounded) until `node`'s agent holds a valid certificate for every one of `identities`.
fn wait_for_certificates(lab: &mesh_tests::lab::Lab, node: &str, identities: &[&str]) {
    let identities: Vec<String> = identities.iter().map(|sa| spiffe(sa).to_string()).collect();
    meshctl::wait_for_certificates(lab, node, &identities);
}

/// A certificate for `identity` from the CA, asked for with the bundle in `dir`.
fn issue(endpoint: &str, dir: &Path, identity: &SpiffeId) -> Result<Issued, String> {
    let ca = CaClient { endpoint: endpoint.to_owned(), tls: Tls { dir: dir.to_owned(), bootstrap: None } };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        let channel = ca.channel().map_err(|e| e.to_string())?;
        ca.issue(channel, identity).await.map_err(|e| e.to_string())
    })
}

/// Opens a tunnel from inside `netns` and returns what the pod answered, or why it failed.
fn through_tunnel(
    netns: &Path,
    source: &Issued,
    roots: &[String],
    from: SocketAddr,
    peer: SocketAddr,
    target: SocketAddr,
    destination: &SpiffeId,
) -> Result<String, TunnelError> {
    mesh_agent::netns::run_in(Some(netns), || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(async {
            let source = Source { issued: source, roots, address: from };
            // Already in the namespace: the agent's own sockets are this thread's.
            let sockets = mesh_agent::netns::Sockets::new(None).expect("no namespace to enter");
            let mut stream = hbone::connect(&sockets, source, peer, target, destination).await?;
            // labnet answers its line, then echoes until the client closes its side.
            stream.write_all(MARKER.as_bytes()).await.expect("writes through the tunnel");
            stream.shutdown().await.expect("closes its side through the tunnel");
            let mut reply = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply))
                .await
                .expect("the pod answers and closes within 10 s")
                .expect("reads through the tunnel");
            Ok(String::from_utf8_lossy(&reply).into_owned())
        })
    })
    .expect("node-0's namespace")
}

use mesh_tests::metrics::value as metric;

/// A two-node demo lab with the operator's CA, both agents over mutual TLS (node-1's with
/// `node1_args` too), a server in intruder (node-1; no policy isolates it), and the certificate
/// node-0's agent would hold for its client pod.
struct Setup {
    lab: mesh_tests::lab::Lab,
    manifests: std::path::PathBuf,
    operator: Operator,
    agents: Vec<Agent>,
    client: Issued,
    roots: Vec<String>,
}

fn setup(node1_args: &[&str]) -> Setup {
    let (lab, manifests) = demo::lab().expect("lab");
    let (operator, bundles) = Operator::start_with_pki(&lab, &manifests, &[]).expect("operator serves");
    let agents: Vec<Agent> = lab
        .nodes
        .iter()
        .zip(&bundles)
        .enumerate()
        .map(|(n, (node, bundle))| {
            let bundle = bundle.display().to_string();
            let extra = if n == 1 { node1_args } else { &[] };
            let args = [&["--tls-dir", bundle.as_str()], extra].concat();
            Agent::follow(&lab, node, &operator.tls_endpoint(), &args).expect("agent ready over TLS")
        })
        .collect();
    labnet::serve(&lab, lab.pod(demo::INTRUDER), ECHO_PORT, REPLY).expect("a server in intruder");
    wait_for_certificates(&lab, "node-1", &["intruder", "web"]);
    let client = issue(&operator.tls_endpoint(), &bundles[0], &spiffe("client")).expect("client's certificate");
    let roots = vec![client.chain_pem.last().expect("a root").clone()];
    Setup { lab, manifests, operator, agents, client, roots }
}

#[test]
fn a_connection_crosses_nodes_through_the_mutual_tls_tunnel_and_every_refusal_says_why() {
    if !privileged("a_connection_crosses_nodes_through_the_mutual_tls_tunnel_and_every_refusal_says_why") {
        return;
    }
    let Setup { lab, manifests, operator: _operator, agents: _agents, client, roots } = setup(&[]);
    let intruder = lab.pod(demo::INTRUDER);
    let (node0, node1) = (&lab.nodes[0], &lab.nodes[1]);
    let peer = SocketAddr::from((node1.ip, HBONE_PORT));
    let from = SocketAddr::from((lab.pod(demo::CLIENT).ip, 40_000));
    let tunnel = |source: &Issued, roots: &[String], target: SocketAddr, destination: &SpiffeId| {
        through_tunnel(&node0.netns_path, source, roots, from, peer, target, destination)
    };

    let reply = tunnel(&client, &roots, (intruder.ip, ECHO_PORT).into(), &spiffe("intruder"))
        .expect("the pod's answer through the tunnel");
    assert_eq!(reply, format!("{REPLY}\n{MARKER}"));

    // Asked for web's identity (which node-1 holds) but sent to intruder: refused, with why.
    let err = tunnel(&client, &roots, (intruder.ip, ECHO_PORT).into(), &spiffe("web")).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, TunnelError::Refused { status, .. } if status == 400), "{text}");
    assert!(text.contains("not the identity this connection was opened for"), "{text}");

    // web-a is a pod of node-0, not of node-1.
    let web_a = lab.pod("web-a");
    let err = tunnel(&client, &roots, (web_a.ip, demo::WEB_PORT).into(), &spiffe("web")).unwrap_err();
    assert!(err.to_string().contains("is no pod of this node"), "{err}");

    // A client chain from another CA fails the handshake on node-1's side ...
    let rogue_pki = lab.dir.join("rogue-pki");
    let rogue_bundle = Operator::issue(&lab, &rogue_pki, "rogue").expect("another CA's bundle");
    let read = |file: &str| std::fs::read_to_string(rogue_bundle.join(file)).expect("bundle file");
    let rogue = Issued {
        key_pem: read("tls.key"),
        chain_pem: vec![read("tls.crt"), read("ca.crt")],
        serial: String::new(),
        issuer: String::new(),
        not_before: 0,
        not_after: i64::MAX,
    };
    let err = tunnel(&rogue, &roots, (intruder.ip, ECHO_PORT).into(), &spiffe("intruder")).unwrap_err();
    assert!(matches!(err, TunnelError::Handshake { .. } | TunnelError::Http { .. }), "{err}");
    // ... and a client that trusts another root refuses node-1's chain.
    let err = tunnel(&client, &[read("ca.crt")], (intruder.ip, ECHO_PORT).into(), &spiffe("intruder")).unwrap_err();
    assert!(matches!(err, TunnelError::Handshake { .. }), "{err}");
    assert!(err.to_string().to_lowercase().contains("issuer"), "{err}");

    // A PeerAuthentication that makes intruder's port plaintext only: never tunnelled.
    let mut opened = 1;
    let disable = "apiVersion: mesh.dev/v1alpha1\nkind: PeerAuthentication\nmetadata: {name: intruder-plain, namespace: demo}\nspec:\n  selector: {matchLabels: {app: intruder}}\n  mtls: {mode: STRICT}\n  portLevelMtls:\n    '9000': {mode: DISABLE}\n";
    std::fs::write(manifests.join("peer-authentication.yaml"), disable).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let err = loop {
        match tunnel(&client, &roots, (intruder.ip, ECHO_PORT).into(), &spiffe("intruder")) {
            Err(err) => break err,
            Ok(_) => {
                opened += 1;
                assert!(Instant::now() < deadline, "the DISABLE port is still tunnelled after 15 s");
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(err.to_string().contains("DISABLE"), "{err}");
    // meshctl shows it, with the tunnel's counts and who issued the certificates.
    let text = meshctl::run(&observer_socket(&lab, "node-1"), &["status"]).stdout;
    let intruder_line = text.lines().find(|l| l.trim_start().starts_with("demo/intruder")).unwrap_or_default();
    assert!(intruder_line.contains(" STRICT ") && intruder_line.contains("9000=DISABLE"), "{text}");
    assert!(text.contains(&format!("Tunnel (HBONE) on 0.0.0.0:{HBONE_PORT}:")), "{text}");
    assert!(text.contains("issued by "), "{text}");

    // node-1's agent counted it all.
    let text = metrics::agent(&node1.netns_path);
    assert_eq!(metric(&text, "mesh_tunnel_inbound_streams_total{result=\"opened\"}") as u32, opened, "{text}");
    assert_eq!(metric(&text, "mesh_tunnel_inbound_streams_total{result=\"refused\"}"), 3.0, "{text}");
    assert!(metric(&text, "mesh_tunnel_inbound_handshakes_total{result=\"failed\"}") >= 1.0, "{text}");
    assert!(metric(&text, "mesh_tunnel_inbound_bytes_total{direction=\"to_pod\"}") >= MARKER.len() as f64, "{text}");
    assert!(
        metric(&text, "mesh_tunnel_inbound_bytes_total{direction=\"from_pod\"}") >= (REPLY.len() + MARKER.len()) as f64,
        "{text}"
    );
}

/// What the main thread tells the thread holding a tunnelled connection.
enum Step {
    Echo,
    Close,
}

#[test]
fn a_stopping_agent_refuses_new_tunnels_and_drains_the_open_ones() {
    if !privileged("a_stopping_agent_refuses_new_tunnels_and_drains_the_open_ones") {
        return;
    }
    let Setup { lab, operator: _operator, agents, client, roots, .. } = setup(&["--tunnel-drain-seconds", "30"]);
    let intruder = lab.pod(demo::INTRUDER);
    let (node0, node1) = (&lab.nodes[0], &lab.nodes[1]);
    let peer = SocketAddr::from((node1.ip, HBONE_PORT));
    let from = SocketAddr::from((lab.pod(demo::CLIENT).ip, 40_001));
    let target = SocketAddr::from((intruder.ip, ECHO_PORT));

    // A connection held open through node-1's agent, driven step by step from here.
    let (steps, step_rx) = std::sync::mpsc::channel::<Step>();
    let (said, heard) = std::sync::mpsc::channel::<String>();
    let netns = node0.netns_path.clone();
    let (source, held_roots) = (client.clone(), roots.clone());
    let holder = std::thread::spawn(move || {
        mesh_agent::netns::run_in(Some(&netns), move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async {
                let sockets = mesh_agent::netns::Sockets::new(None).expect("no namespace to enter");
                let source = Source { issued: &source, roots: &held_roots, address: from };
                let mut stream =
                    hbone::connect(&sockets, source, peer, target, &spiffe("intruder")).await.expect("a tunnel");
                let read_some = async |stream: &mut hbone::Stream| {
                    let mut buf = vec![0u8; 256];
                    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await;
                    String::from_utf8_lossy(&buf[..n.map_or(0, |n| n.unwrap_or(0))]).into_owned()
                };
                said.send(read_some(&mut stream).await).unwrap();
                while let Ok(step) = step_rx.recv() {
                    match step {
                        Step::Echo => {
                            let wrote = stream.write_all(MARKER.as_bytes()).await;
                            let echo = if wrote.is_ok() { read_some(&mut stream).await } else { String::new() };
                            said.send(echo).unwrap();
                        }
                        Step::Close => {
                            let _ = stream.shutdown().await;
                            let mut rest = Vec::new();
                            let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
                            return;
                        }
                    }
                }
            })
        })
        .expect("node-0's namespace");
    });
    let first = heard.recv_timeout(Duration::from_secs(15)).expect("the held connection opens");
    assert_eq!(first, format!("{REPLY}\n"));

    // SIGTERM: node-1's agent stops taking tunnels ...
    let agent = &agents[1];
    lab.signal(agent.pid, libc::SIGTERM).expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        match through_tunnel(&node0.netns_path, &client, &roots, from, peer, target, &spiffe("intruder")) {
            Err(err) => break err,
            Ok(_) => assert!(Instant::now() < deadline, "a stopping agent still takes new tunnels after 10 s"),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Refused at connect, or reset if it reached the listener's queue as it closed.
    assert!(matches!(refused, TunnelError::Connect { .. } | TunnelError::Handshake { .. }), "{refused}");
    // ... while the open one still carries bytes both ways, and the agent waits for it.
    steps.send(Step::Echo).unwrap();
    assert_eq!(heard.recv_timeout(Duration::from_secs(15)).expect("an echo"), MARKER, "{}", agent.log());
    assert!(lab.try_wait(agent.pid).expect("a lab process").is_none(), "the agent left before its tunnel ended");

    // Once it ends, the agent exits cleanly, well before its 30 s grace period.
    steps.send(Step::Close).unwrap();
    holder.join().expect("the holder thread");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = lab.try_wait(agent.pid).expect("a lab process") {
            break status;
        }
        assert!(Instant::now() < deadline, "the agent did not exit once its last tunnel ended:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "agent exit: {status}\n{}", agent.log());
    assert!(agent.log().contains("draining tunnels"), "{}", agent.log());
}
