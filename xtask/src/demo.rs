//! `cargo xtask demo`: the mesh on the local lab, end to end: mesh-operator in local mode
//! reads `deploy/examples/`, one agent per node follows it, and a client pod's connections to
//! the service are answered by backends on both nodes, while the example policy keeps a second
//! client out and the agents say which rule decided each verdict. Then web becomes STRICT
//! (`deploy/mtls/web-strict.yaml`): the client's connections to the other node go through
//! the agents' mutual-TLS tunnel, and plaintext from outside the mesh is dropped with its reason.
//! Then a canary release by an HTTPRoute (`deploy/l7/web-canary.yaml`): 10% of the requests to
//! web-http go to web-v2 through the client node's L7 proxy, shown as L7 flows; then a failing
//! v2 instance is ejected by outlier detection (`deploy/l7/web-v2-outliers.yaml`), and an HTTP
//! rule denies /admin (`deploy/l7/web-no-admin.yaml`).

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use mesh_tests::{
    agent::Agent,
    lab::{Lab, Placement},
    labnet, manifests, metrics,
    operator::{Operator, free_port},
    scenario::{self, demo},
};

use crate::cargo;

/// Connections the demo's client makes.
const CONNECTIONS: u32 = 20;
/// The canary step: the web pods' HTTP echo port, the routed Service's address (as
/// `deploy/l7/web-canary.yaml` gives it), and the client's requests.
const CANARY_PORT: u16 = 8081;
const CANARY_VIP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 96, 0, 20);
const CANARY_REQUESTS: u32 = 200;
/// The failing v2 instance's port (`deploy/l7/web-v2-outliers.yaml`) and the requests sent to v2
/// to show its ejection.
const FAILING_PORT: u16 = 8082;
const EJECTION_REQUESTS: u32 = 40;

pub fn run(keep: bool) -> anyhow::Result<()> {
    cargo::run(&["build", "--bins"], &[])?;

    step("Bringing up a local lab shaped like deploy/examples/demo.yaml");
    let (lab, manifests) = demo::lab().context("bringing up the lab")?;
    describe(&lab);
    println!("  web-a and web-b answer TCP {} with their own name", demo::WEB_PORT);

    let client = Placement::pod(lab.pod(demo::CLIENT));
    step(&format!("Before the mesh: client -> {} (service demo/web)", scenario::service_addr()));
    show(&labnet::connect(&lab, &client, scenario::service_addr(), 1, Duration::from_secs(1))?);

    step("Starting mesh-operator in local mode on deploy/examples/, its stream mutual TLS");
    let pki = lab.dir.join("pki");
    let mut bundles = Vec::new();
    for node in &lab.nodes {
        bundles
            .push(Operator::issue(&lab, &pki, &node.name).with_context(|| format!("issuing {}'s bundle", node.name))?);
        println!("  issued {}'s certificate (mesh-operator issue --node {})", node.name, node.name);
    }
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let pki_arg = pki.display().to_string();
    let operator =
        Operator::start_with(&lab, &manifests, listen, &["--pki-dir", &pki_arg]).context("starting the operator")?;
    for line in operator.log().lines().filter(|l| {
        l.contains("serving") || l.contains("invalid") || l.contains("model updated") || l.contains("mutual TLS")
    }) {
        println!("  operator: {}", trim_log(line));
    }

    step("Starting one mesh-agent per node, following the operator with its node's certificate");
    let mut agents = Vec::new();
    for (node, bundle) in lab.nodes.iter().zip(&bundles) {
        let bundle = bundle.display().to_string();
        // `low`: the demo shows each translation at connect() (and keeps each connection's
        // close); the default reports neither, for speed (MESH_FLOW_AGGREGATION).
        let agent =
            Agent::follow(&lab, node, &operator.tls_endpoint(), &["--tls-dir", &bundle, "--flow-aggregation", "low"])
                .with_context(|| format!("starting the agent of {}", node.name))?;
        for line in agent
            .log()
            .lines()
            .filter(|l| l.contains("attached") || l.contains("service programmed") || l.contains("connected to"))
        {
            println!("  {}: {}", node.name, trim_log(line));
        }
        agents.push(agent);
    }

    step(&format!("With the mesh: client makes {CONNECTIONS} connections to {}", scenario::service_addr()));
    let after = labnet::connect(&lab, &client, scenario::service_addr(), CONNECTIONS, Duration::from_secs(2))?;
    show(&after);

    step("Network policy (deploy/examples/policy.yaml): intruder, on node-1, tries the same service");
    let intruder = Placement::pod(lab.pod(demo::INTRUDER));
    let denied = labnet::connect(&lab, &intruder, scenario::service_addr(), 3, Duration::from_millis(700))?;
    show(&denied);
    // The agents log what their policy decided each second, with the rule that decided it.
    std::thread::sleep(Duration::from_millis(1500));
    println!("  why, as the agents explain each verdict:");
    let mut ipv6 = 0;
    for agent in &agents {
        for line in agent.log().lines().filter(|l| l.contains("verdict ") && l.contains("by ")) {
            // The pods' IPv6 link-local chatter, dropped at isolated pods: counted, not listed.
            if line.contains("UNSUPPORTED_L3_PROTOCOL") {
                ipv6 += 1;
                continue;
            }
            println!("    {}: {}", agent.node, trim_log(line).trim_start_matches("mesh_agent: verdict "));
        }
    }
    if ipv6 > 0 {
        println!(
            "    (and {ipv6} reports of IPv6 link-local packets dropped at the isolated web pods: UNSUPPORTED_L3_PROTOCOL)"
        );
    }

    step(
        "Flows, live: meshctl observe -f on both agents' Observer API (Hubble's), while the client and the intruder connect again",
    );
    let meshctl = mesh_tests::built_binary("meshctl");
    let mut followers = Vec::new();
    for agent in &agents {
        let socket = format!("unix://{}", agent.observer_socket(&lab).display());
        println!("  $ meshctl --server {socket} observe -f --print-node-name --not --verdict TRACED");
        followers.push(
            std::process::Command::new(&meshctl)
                .args(["--server", &socket, "observe", "-f", "--print-node-name", "--not", "--verdict", "TRACED"])
                .spawn()
                .context("starting meshctl observe")?,
        );
    }
    std::thread::sleep(Duration::from_millis(700));
    let live = labnet::connect(&lab, &client, scenario::service_addr(), 2, Duration::from_secs(2))?;
    let kept_out = labnet::connect(&lab, &intruder, scenario::service_addr(), 1, Duration::from_millis(700))?;
    std::thread::sleep(Duration::from_millis(800));
    // The followers never end by themselves: the demo started them, and ends them.
    for mut follower in followers {
        let _ = follower.kill();
        let _ = follower.wait();
    }
    println!(
        "  (client: {} of 2 answered; intruder: {} of 1. TRANSLATED: the socket's service address became a backend; FORWARDED: a flow's start and end at each pod; DROPPED: with its reason)",
        live.ok, kept_out.ok
    );
    println!("  While the mesh runs, the same view: meshctl --server unix://<lab dir>/observer-<node>.sock observe -f");
    println!("  (filters as hubble's: --pod demo/client, --verdict DROPPED, --to-service demo/web, -o json, ...)");

    step("What the TC programs counted on each pod's interface (from the pinned maps)");
    println!(
        "  {:<8} {:<7} {:>10} {:>11} {:>10} {:>11}",
        "pod", "node", "pkts sent", "bytes sent", "pkts recv", "bytes recv"
    );
    for node in &lab.nodes {
        for pod in &node.pods {
            let t = scenario::pod_traffic(node, pod)?;
            println!(
                "  {:<8} {:<7} {:>10} {:>11} {:>10} {:>11}",
                pod.name, node.name, t.from_pod_packets, t.from_pod_bytes, t.to_pod_packets, t.to_pod_bytes
            );
        }
    }

    step("Workload identities: each agent's certificates from the operator's CA (meshctl status)");
    // Issued within milliseconds of the agents' first update; bounded wait all the same.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (certified, sections) = loop {
        let mut sections = Vec::new();
        for agent in &agents {
            let socket = format!("unix://{}", agent.observer_socket(&lab).display());
            let status = std::process::Command::new(&meshctl)
                .args(["--server", &socket, "status"])
                .output()
                .context("running meshctl status")?;
            let text = String::from_utf8_lossy(&status.stdout).into_owned();
            let section: Vec<String> =
                text.lines().skip_while(|l| !l.starts_with("Workload certificates")).map(str::to_owned).collect();
            sections.push((agent.node.clone(), section));
        }
        let certified = sections.iter().flat_map(|(_, s)| s).filter(|l| l.contains(" valid ")).count();
        if certified == 4 || std::time::Instant::now() > deadline {
            break (certified, sections);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for (node, section) in sections {
        println!("  {node}:");
        for line in section {
            println!("  {line}");
        }
    }
    println!("  (keys made on each node and kept in its agent's memory; renewed at half-life)");

    step("Mutual TLS: web becomes STRICT (deploy/mtls/web-strict.yaml), and the model gets the nodes' addresses");
    std::fs::write(manifests.join("nodes.yaml"), manifests::nodes(&lab)).context("writing nodes.yaml")?;
    let strict_file = cargo::workspace_root().join("deploy/mtls/web-strict.yaml");
    std::fs::copy(&strict_file, manifests.join("web-strict.yaml"))
        .with_context(|| format!("copying {}", strict_file.display()))?;
    scenario::wait_for_tunnel(&lab, 0, 1, lab.pod("web-b").ip)?;
    println!("  node-0's agent now sends connections to web-b (node-1) through the tunnel; node-1 requires it");
    let strict = labnet::connect(&lab, &client, scenario::service_addr(), CONNECTIONS, Duration::from_secs(2))?;
    show(&strict);
    let tunnelled = metrics::value(
        &metrics::agent(&lab.nodes[0].netns_path),
        "mesh_tunnel_outbound_connections_total{result=\"tunnelled\"}",
    );
    println!(
        "  {tunnelled} of them went to web-b through node-0's agent: HTTP/2 CONNECT over TLS 1.3 to node-1:15008 (HBONE), \
         both ends with their workload certificates; those to web-a, on the client's own node, stayed in the kernel"
    );
    let observe = |agent: &Agent, args: &[&str]| -> anyhow::Result<String> {
        let socket = format!("unix://{}", agent.observer_socket(&lab).display());
        let output = std::process::Command::new(&meshctl)
            .args(["--server", &socket, "observe", "--print-node-name"])
            .args(args)
            .output()
            .context("running meshctl observe")?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    println!(
        "  web-b still sees the client pod itself (the agent connects from its address), and the flow says the tunnel\n  \
         carried it, with both workload identities (namespace/service account):"
    );
    println!("  $ meshctl observe --encrypted --from-pod demo/client --to-pod demo/web-b --last 2");
    let encrypted =
        observe(&agents[1], &["--encrypted", "--from-pod", "demo/client", "--to-pod", "demo/web-b", "--last", "2"])?;
    print!("{}", indent(&encrypted));

    step("L7 canary (deploy/l7/web-canary.yaml): an HTTPRoute sends 10% of web-http's requests to web-v2");
    for web in demo::WEB {
        labnet::http_echo(&lab, lab.pod(web), "demo", CANARY_PORT)?;
    }
    let canary_file = cargo::workspace_root().join("deploy/l7/web-canary.yaml");
    std::fs::copy(&canary_file, manifests.join("web-canary.yaml"))
        .with_context(|| format!("copying {}", canary_file.display()))?;
    let canary_service = SocketAddr::from((CANARY_VIP, 80));
    // Routed once the client's node agent has the route (its proxy answers; 404 would mean
    // the route is not there yet, a refused connection that the redirect is not).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while labnet::http_get(&lab, &client, canary_service, "/", &[], 1)?.statuses.get(&200) != Some(&1) {
        anyhow::ensure!(std::time::Instant::now() < deadline, "web-http never answered through the L7 proxy");
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("  $ curl http://{canary_service}/   x {CANARY_REQUESTS}   (from the client pod, over keep-alive)");
    let split = labnet::http_get(&lab, &client, canary_service, "/", &[], CANARY_REQUESTS)?;
    let count = |pod: &str| split.pods.get(pod).copied().unwrap_or_default();
    println!(
        "  answered by web-a (v1): {}, by web-b (v2): {} ({:.1}% canary); errors: {:?}",
        count("web-a"),
        count("web-b"),
        100.0 * f64::from(count("web-b")) / f64::from(CANARY_REQUESTS),
        split.errors
    );
    let always = labnet::http_get(&lab, &client, canary_service, "/", &["x-canary: always"], 5)?;
    println!("  with x-canary: always, web-b answered {} of 5", always.pods.get("web-b").copied().unwrap_or_default());
    std::thread::sleep(Duration::from_millis(300));
    println!("  $ meshctl observe --type l7 --pod demo/web-b --last 2   (node-0, where the client's proxy runs)");
    let l7 = observe(&agents[0], &["--type", "l7", "--pod", "demo/web-b", "--last", "2"])?;
    print!("{}", indent(&l7));

    step("Outlier detection (deploy/l7/web-v2-outliers.yaml): a failing web-v2 instance is ejected");
    labnet::failing_http_echo(&lab, lab.pod("web-b"), "demo", FAILING_PORT, 500)?;
    let outliers_file = cargo::workspace_root().join("deploy/l7/web-v2-outliers.yaml");
    std::fs::copy(&outliers_file, manifests.join("web-v2-outliers.yaml"))
        .with_context(|| format!("copying {}", outliers_file.display()))?;
    println!("  web-b:{FAILING_PORT} joins web-v2 answering 500 to everything; web-v2 ejects after 3 consecutive 5xx");
    // The agents have the policy once the failing instance answers through the proxy.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut first = labnet::http_get(&lab, &client, canary_service, "/", &["x-canary: always"], 1)?;
    while !first.statuses.contains_key(&500) {
        anyhow::ensure!(std::time::Instant::now() < deadline, "the failing web-v2 instance never got a request");
        first = labnet::http_get(&lab, &client, canary_service, "/", &["x-canary: always"], 1)?;
    }
    println!("  $ curl -H 'x-canary: always' http://{canary_service}/   x {EJECTION_REQUESTS}");
    let ejecting = labnet::http_get(&lab, &client, canary_service, "/", &["x-canary: always"], EJECTION_REQUESTS)?;
    let failed = ejecting.statuses.get(&500).copied().unwrap_or_default();
    println!(
        "  answers by status: {:?} (with the first 500 above, {} by the failing instance, then it was out)",
        ejecting.statuses,
        failed + 1
    );
    println!("  $ meshctl status   (node-0, where the client's proxy runs)");
    let status = std::process::Command::new(&meshctl)
        .args(["--server", &format!("unix://{}", agents[0].observer_socket(&lab).display()), "status"])
        .output()
        .context("running meshctl status")?;
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    let ejected: String =
        status.lines().skip_while(|l| !l.starts_with("Ejected endpoints")).map(|l| format!("{l}\n")).collect();
    print!("{}", indent(&ejected));
    let failing = format!("{}:{FAILING_PORT}", lab.pod("web-b").ip);
    let scraped = metrics::agent(&lab.nodes[0].netns_path);
    let ejections: Vec<&str> = scraped.lines().filter(|l| l.starts_with("mesh_l7_outlier_ejected{")).collect();
    for line in &ejections {
        println!("  metric: {line}");
    }

    step("HTTP rules (deploy/l7/web-no-admin.yaml): the client may not reach /admin on web's echo port");
    let rules_file = cargo::workspace_root().join("deploy/l7/web-no-admin.yaml");
    std::fs::copy(&rules_file, manifests.join("web-no-admin.yaml"))
        .with_context(|| format!("copying {}", rules_file.display()))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut admin = labnet::http_get(&lab, &client, canary_service, "/admin", &[], 10)?;
    while admin.statuses.get(&403) != Some(&10) {
        anyhow::ensure!(std::time::Instant::now() < deadline, "GET /admin was never denied: {admin:?}");
        std::thread::sleep(Duration::from_millis(200));
        admin = labnet::http_get(&lab, &client, canary_service, "/admin", &[], 10)?;
    }
    let other = labnet::http_get(&lab, &client, canary_service, "/reports", &[], 10)?;
    println!("  $ curl http://{canary_service}/admin x 10: {:?}; /reports x 10: {:?}", admin.statuses, other.statuses);
    std::thread::sleep(Duration::from_millis(300));
    // web-http's requests without x-canary go to web-a, on the client's node: that node's proxy
    // applies web-a's rules itself.
    println!("  $ meshctl observe --type l7 --verdict DROPPED --last 2   (node-0, the client's node)");
    let admin_denied = observe(&agents[0], &["--type", "l7", "--verdict", "DROPPED", "--last", "2"])?;
    print!("{}", indent(&admin_denied));
    let rules = observe(&agents[0], &["--type", "l7", "--verdict", "DROPPED", "--last", "1", "-o", "json"])?;
    let rule = rules
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["flow"]["extensions"]["rule"].as_str().map(str::to_owned))
        .next()
        .unwrap_or_default();
    println!("  the rule, in the flow's extensions (-o json): {rule}");

    step(
        "Plaintext from outside the mesh: a process on node-1's host, in no pod, connects straight to web-a on node-0",
    );
    let host = Placement { netns: Some(lab.nodes[1].netns_path.clone()), cgroup: lab.system_cgroup() };
    let web_a = SocketAddr::from((lab.pod("web-a").ip, demo::WEB_PORT));
    let plaintext = labnet::connect(&lab, &host, web_a, 2, Duration::from_millis(700))?;
    show(&plaintext);
    std::thread::sleep(Duration::from_millis(300));
    println!("  $ meshctl observe --drop-reason-desc AUTH_REQUIRED --last 2   (node-0)");
    let dropped = observe(&agents[0], &["--drop-reason-desc", "AUTH_REQUIRED", "--last", "2"])?;
    print!("{}", indent(&dropped));

    if keep {
        keep_running(&lab, &agents)?;
    }

    step("Stopping the agents and the operator (SIGTERM): programs detached, pins removed");
    for agent in agents {
        println!("  agent of {} exited: {}", agent.node, lab.stop(agent.pid, Duration::from_secs(10))?);
    }
    println!("  operator exited: {}", lab.stop(operator.pid, Duration::from_secs(10))?);
    drop(lab);
    step("Lab removed: no namespace, cgroup, pin or process of it remains");

    let balanced = after.ok == CONNECTIONS && demo::WEB.iter().all(|b| after.replies.contains_key(*b));
    anyhow::ensure!(balanced, "the demo's connections were not all answered by both backends: {after:?}");
    anyhow::ensure!(denied.ok == 0, "the policy let the intruder in: {denied:?}");
    // client and web on node-0, web and intruder on node-1.
    anyhow::ensure!(certified == 4, "the agents hold {certified} of 4 valid workload certificates");
    let both = strict.ok == CONNECTIONS && demo::WEB.iter().all(|b| strict.replies.contains_key(*b));
    anyhow::ensure!(
        both,
        "with web STRICT, the client's connections were not all answered by both backends: {strict:?}"
    );
    anyhow::ensure!(tunnelled > 0.0, "with web STRICT, no connection went through the tunnel");
    anyhow::ensure!(
        encrypted.contains("mTLS demo/client => demo/web"),
        "web-b's flows do not show the client's connections as tunnelled with both identities: {encrypted}"
    );
    anyhow::ensure!(plaintext.ok == 0, "plaintext from outside the mesh reached a STRICT pod: {plaintext:?}");
    anyhow::ensure!(dropped.contains("Authentication required"), "no AUTH_REQUIRED drop was reported: {dropped:?}");
    // 10% of 200: more than 6 standard deviations (2.1 points) from either bound.
    let canary_share = f64::from(count("web-b")) / f64::from(CANARY_REQUESTS);
    anyhow::ensure!(
        split.statuses.get(&200) == Some(&CANARY_REQUESTS) && (0.01..=0.25).contains(&canary_share),
        "the canary split was not about 90/10: {split:?}"
    );
    anyhow::ensure!(always.pods.get("web-b") == Some(&5), "x-canary: always did not reach web-v2: {always:?}");
    anyhow::ensure!(
        l7.contains("http-request") && l7.contains("http-response"),
        "node-0's L7 flows do not show the canary's requests: {l7}"
    );
    anyhow::ensure!(
        // Two more after the first (three in a row; one more if the first came before the
        // policy reached the agent), then every answer from the healthy instance.
        (2..=3).contains(&failed) && ejecting.statuses.get(&200) == Some(&(EJECTION_REQUESTS - failed)),
        "the failing web-v2 instance was not ejected after 3 failures: {ejecting:?}"
    );
    anyhow::ensure!(ejected.contains(&failing), "meshctl status does not list {failing} as ejected: {ejected}");
    anyhow::ensure!(other.statuses.get(&200) == Some(&10), "requests other than /admin were refused: {other:?}");
    anyhow::ensure!(
        admin_denied.contains("http-request DROPPED") && rule == "MeshPolicy demo/web-no-admin ingress rule 0",
        "no dropped L7 flow of GET /admin naming the rule on node-0: {admin_denied} {rule:?}"
    );
    anyhow::ensure!(ejections.iter().any(|l| l.contains(&failing)), "no mesh_l7_outlier_ejected series for {failing}");
    println!(
        "\nThe service answered the client through the mesh, from both nodes, the policy kept the intruder out, and with web STRICT\nthe client's connections to the other node went through mutual TLS while plaintext from outside was dropped;\nan HTTPRoute sent 10% of web-http's requests to the canary through the client's L7 proxy, a failing canary instance was ejected,\nand an HTTP rule denied GET /admin at the web pods' nodes.\nRun it again with: make demo (KEEP=1 keeps it running, with a live service map in the browser)"
    );
    Ok(())
}

/// `make demo KEEP=1`: the lab and the mesh stay up, the service map (`meshctl ui`) serves both
/// agents' flows, and the client (every second) and the intruder (every five) keep connecting,
/// until Ctrl-C; then the demo goes on to its cleanup.
fn keep_running(lab: &Lab, agents: &[Agent]) -> anyhow::Result<()> {
    step("The mesh keeps running (KEEP=1): the service map");
    // Hubble UI's port when it is free.
    let listen = if std::net::TcpListener::bind("127.0.0.1:12000").is_ok() { "127.0.0.1:12000" } else { "127.0.0.1:0" };
    let (pid, address) = mesh_tests::meshctl::start_ui(lab, agents, listen)?;
    println!("  $ meshctl ui --agent unix://<node-0's socket> --agent unix://<node-1's socket>");
    println!(
        "  Open http://{address}/ in a browser (from another machine: ssh -L {}:{address} <this host>).",
        address.rsplit(':').next().unwrap_or("12000")
    );
    println!("  The client connects to demo/web every second, the intruder every five: the edges, their rates and,");
    println!("  on a click, their flows with drop reasons and policies update live. Observe from a shell as well:");
    for agent in agents {
        println!("    meshctl --server unix://{} observe -f", agent.observer_socket(lab).display());
    }
    println!("  Press Ctrl-C to stop the mesh and remove the lab.");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (client, intruder) = (Placement::pod(lab.pod(demo::CLIENT)), Placement::pod(lab.pod(demo::INTRUDER)));
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for second in 0u64.. {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let _ = labnet::connect(lab, &client, scenario::service_addr(), 1, Duration::from_secs(1));
                if second % 5 == 0 {
                    let _ = labnet::connect(lab, &intruder, scenario::service_addr(), 1, Duration::from_millis(300));
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        crate::lab::wait_for_interrupt(Duration::from_secs(24 * 3600));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let _ = lab.stop(pid, Duration::from_secs(5));
    Ok(())
}

/// `text` with each line indented as the demo's output is.
fn indent(text: &str) -> String {
    text.lines().map(|line| format!("    {line}\n")).collect()
}

fn step(text: &str) {
    println!("\n==> {text}");
}

/// A tracing line without its timestamp and level.
fn trim_log(line: &str) -> &str {
    line.split_once(" INFO ").map_or(line, |(_, rest)| rest.trim())
}

fn describe(lab: &Lab) {
    for node in &lab.nodes {
        println!("  {} ({}), pods {}:", node.name, node.ip, node.pod_cidr);
        for pod in &node.pods {
            println!("    {:<8} {:<12} host interface {}", pod.name, pod.ip.to_string(), pod.host_iface);
        }
    }
}

fn show(summary: &labnet::Summary) {
    println!("  answered {} of {}", summary.ok, summary.ok + summary.failed);
    for (reply, count) in &summary.replies {
        println!("    {count:>3} x reply from {reply:?}");
    }
    for (error, count) in &summary.errors {
        println!("    {count:>3} x failed: {error}");
    }
}
