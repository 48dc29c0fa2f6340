//! Reading the mesh's Prometheus endpoints in a lab, as a scraper does.

use std::{net::SocketAddr, path::Path, process::Command};

/// The operator's `/metrics` text at `addr` (on this host). Panics unless it answers 200.
pub fn operator(addr: SocketAddr) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).expect("metrics endpoint");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: operator\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// An agent's `/metrics` text on its default port (9965), read inside the node's network
/// namespace `netns` with curl.
pub fn agent(netns: &Path) -> String {
    let output = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["curl", "-sS", "--max-time", "5", "http://127.0.0.1:9965/metrics"])
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The value of the series `series` (name and labels, exactly as exposed) in `text`; 0 when
/// absent (a counter not yet counted).
pub fn value(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0)
}

/// The sum of metric `name`'s series whose labels include every one of `labels`
/// (`key="value"` each).
pub fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix('{')?;
            let (series, value) = rest.rsplit_once("} ")?;
            let parts: Vec<&str> = series.split(',').collect();
            labels.iter().all(|l| parts.contains(l)).then(|| value.trim().parse::<f64>().ok()).flatten()
        })
        .sum()
}
