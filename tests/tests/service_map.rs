//! The live service map in a real browser (issue 15): the demo lab with the operator and one
//! agent per node, `meshctl ui` following both agents' Observer APIs, and Debian's chromium,
//! headless, driven over the DevTools protocol. The map must show the client→web edge as
//! forwarded and the intruder→web edge as dropped, take new traffic in while it is open, and list
//! an edge's recent flows (the drop reason and the policy) when a user clicks it; the screenshot
//! is written to `target/ui/service-map.png`.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use mesh_tests::{
    agent::Agent,
    browser::Browser,
    lab::Placement,
    labnet,
    operator::{Operator, free_port},
    privileges::privileged,
    scenario::{self, demo},
};
use serde_json::Value;

/// The edges the page drew: source, target, verdict and total of each.
const EDGES: &str = "JSON.stringify([...document.querySelectorAll('g.edge')].map(g => ({source: g.dataset.source, \
                     target: g.dataset.target, verdict: g.dataset.verdict, total: Number(g.dataset.total)})))";

fn edges(browser: &mut Browser) -> Vec<Value> {
    let drawn = browser.evaluate(EDGES).expect("the page answers");
    serde_json::from_str(drawn.as_str().unwrap_or("[]")).expect("edges as JSON")
}

fn total(edges: &[Value], source: &str, target: &str, verdict: &str) -> Option<u64> {
    edges
        .iter()
        .find(|e| e["source"] == source && e["target"] == target && e["verdict"] == verdict)
        .and_then(|e| e["total"].as_u64())
}

#[test]
fn the_service_map_shows_forwarded_and_dropped_edges_live_and_lists_an_edges_flows() {
    if !privileged("the_service_map_shows_forwarded_and_dropped_edges_live_and_lists_an_edges_flows") {
        return;
    }
    let (lab, manifests) = demo::lab().expect("lab");
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let operator = Operator::start(&lab, &manifests, listen).expect("operator serves");
    let agents: Vec<Agent> = lab
        .nodes
        .iter()
        .map(|node| Agent::follow(&lab, node, &operator.endpoint(), &[]).expect("agent ready"))
        .collect();
    let logs = || agents.iter().map(Agent::log).collect::<String>();

    // Traffic before the map starts: it replays what the agents kept.
    let client = Placement::pod(lab.pod(demo::CLIENT));
    let answered = labnet::connect(&lab, &client, scenario::service_addr(), 10, Duration::from_secs(2)).unwrap();
    assert_eq!(answered.ok, 10, "{answered:?}\n{}", logs());
    let intruder = Placement::pod(lab.pod(demo::INTRUDER));
    let denied = labnet::connect(&lab, &intruder, scenario::service_addr(), 2, Duration::from_millis(700)).unwrap();
    assert_eq!(denied.ok, 0, "{denied:?}");

    // meshctl ui on both agents.
    let (_, address) = mesh_tests::meshctl::start_ui(&lab, &agents, "127.0.0.1:0").expect("meshctl ui serves");

    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).parent().expect("target").join("ui");
    let mut browser =
        Browser::launch(&lab.dir.join("chromium"), 1400, 800).expect("chromium starts (make test installs it)");
    browser.navigate(&format!("http://{address}/")).expect("the map opens");

    // Both edges, with their verdicts.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut drawn = Vec::new();
    while Instant::now() < deadline {
        drawn = edges(&mut browser);
        if total(&drawn, "demo/client", "demo/web", "forwarded").is_some()
            && total(&drawn, "demo/intruder", "demo/web", "dropped").is_some()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        total(&drawn, "demo/client", "demo/web", "forwarded").is_some(),
        "no client→web forwarded edge: {drawn:#?}"
    );
    assert!(
        total(&drawn, "demo/intruder", "demo/web", "dropped").is_some(),
        "no intruder→web dropped edge: {drawn:#?}"
    );
    assert!(
        total(&drawn, "demo/intruder", "demo/web", "forwarded").is_none(),
        "the intruder was forwarded: {drawn:#?}"
    );

    // Live: new connections raise the edge's count while the page is open.
    let before = total(&drawn, "demo/client", "demo/web", "forwarded").unwrap();
    labnet::connect(&lab, &client, scenario::service_addr(), 10, Duration::from_secs(2)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = total(&edges(&mut browser), "demo/client", "demo/web", "forwarded").unwrap_or(0);
        if now >= before + 10 {
            break;
        }
        assert!(Instant::now() < deadline, "the map did not update: {before} → {now}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // A click on the dropped edge's label lists its flows: the drop reason and the policy.
    let label = browser
        .evaluate(
            "(() => { const g = [...document.querySelectorAll('g.edge')].find(g => g.dataset.source === 'demo/intruder' \
             && g.dataset.verdict === 'dropped'); const r = g.querySelector('text').getBoundingClientRect(); \
             return [r.x + r.width / 2, r.y + r.height / 2]; })()",
        )
        .unwrap();
    let (x, y) = (label[0].as_f64().unwrap(), label[1].as_f64().unwrap());
    browser.click(x, y).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut listed = String::new();
    while Instant::now() < deadline {
        listed = browser
            .evaluate(
                "document.getElementById('edge-title').innerText + '\\n' + document.getElementById('flows').innerText",
            )
            .unwrap()
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if listed.contains("POLICY_DENY") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(listed.contains("demo/intruder → demo/web: dropped"), "{listed}");
    assert!(listed.contains("POLICY_DENY") && listed.contains("MeshPolicy demo/deny-intruder"), "{listed}");
    assert!(listed.contains("demo/intruder") && listed.contains(":8080"), "{listed}");

    let screenshot = target.join("service-map.png");
    browser.screenshot(&screenshot).expect("a screenshot");
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 10_000, "an empty screenshot");
    println!("screenshot: {}", screenshot.display());
}
