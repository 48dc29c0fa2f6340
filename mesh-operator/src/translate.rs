//! Kubernetes objects -> the mesh model. The same functions serve local mode (objects read
//! from files) and cluster mode (objects from the API server). Each checks what the mesh
//! relies on and names the field that is wrong.

use std::{collections::BTreeMap, net::Ipv4Addr};

use k8s_openapi::{
    api::{
        core::v1::{Pod, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use mesh_common::api;

/// The label that ties an EndpointSlice to its service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A field that is wrong: its path in the object, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid { field: field.into(), message: message.into() }
}

fn port(field: String, value: i32) -> Result<u32, Invalid> {
    if (1..=65535).contains(&value) {
        Ok(value as u32)
    } else {
        Err(invalid(field, format!("port {value} is out of range: use 1 to 65535")))
    }
}

fn protocol(field: String, value: Option<&str>) -> Result<api::Protocol, Invalid> {
    match value.unwrap_or("TCP") {
        "TCP" => Ok(api::Protocol::Tcp),
        "UDP" => Ok(api::Protocol::Udp),
        "SCTP" => Ok(api::Protocol::Sctp),
        other => Err(invalid(field, format!("unknown protocol {other:?}: use TCP, UDP or SCTP"))),
    }
}

fn ipv4(field: String, value: &str) -> Result<Ipv4Addr, Invalid> {
    value.parse().map_err(|_| invalid(field, format!("{value:?} is not an IPv4 address")))
}

/// A Service, normalised.
pub fn service(namespace: &str, name: &str, svc: &Service) -> Result<api::Service, Invalid> {
    let spec = svc.spec.as_ref().ok_or_else(|| invalid("spec", "a Service needs a spec"))?;
    let mut out = api::Service { namespace: namespace.into(), name: name.into(), ..Default::default() };
    let ips: Vec<&String> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.iter().collect(),
        (_, Some(ip)) => vec![ip],
        _ => vec![],
    };
    for (i, ip) in ips.iter().enumerate() {
        if ip.as_str() == "None" {
            out.headless = true;
        } else if ip.contains(':') {
            // IPv6 cluster IPs: the datapath is IPv4 only for now (ARCHITECTURE.md).
        } else {
            ipv4(format!("spec.clusterIPs[{i}]"), ip)?;
            out.cluster_ips.push((*ip).clone());
        }
    }
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let target = match &p.target_port {
            None => Some(api::service_port::Target::TargetPortNumber(port(format!("spec.ports[{i}].port"), p.port)?)),
            Some(IntOrString::Int(n)) => {
                Some(api::service_port::Target::TargetPortNumber(port(format!("spec.ports[{i}].targetPort"), *n)?))
            }
            Some(IntOrString::String(s)) => match s.parse::<i32>() {
                Ok(n) => {
                    Some(api::service_port::Target::TargetPortNumber(port(format!("spec.ports[{i}].targetPort"), n)?))
                }
                Err(_) if is_port_name(s) => Some(api::service_port::Target::TargetPortName(s.clone())),
                Err(_) => {
                    return Err(invalid(
                        format!("spec.ports[{i}].targetPort"),
                        format!("{s:?} is neither a port number nor a port name"),
                    ));
                }
            },
        };
        out.ports.push(api::ServicePort {
            name: p.name.clone().unwrap_or_default(),
            protocol: protocol(format!("spec.ports[{i}].protocol"), p.protocol.as_deref())? as i32,
            port: port(format!("spec.ports[{i}].port"), p.port)?,
            node_port: p.node_port.map(|n| port(format!("spec.ports[{i}].nodePort"), n)).transpose()?.unwrap_or(0),
            target,
        });
    }
    if spec.session_affinity.as_deref() == Some("ClientIP") {
        let timeout = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .unwrap_or(10_800);
        if !(1..=86_400).contains(&timeout) {
            return Err(invalid(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                format!("{timeout} is out of range 1-86400"),
            ));
        }
        out.affinity_timeout_seconds = timeout as u32;
    } else if let Some(other) = spec.session_affinity.as_deref().filter(|a| *a != "None") {
        return Err(invalid("spec.sessionAffinity", format!("unknown value {other:?}: use None or ClientIP")));
    }
    out.internal_traffic_local = match spec.internal_traffic_policy.as_deref() {
        None | Some("Cluster") => false,
        Some("Local") => true,
        Some(other) => {
            return Err(invalid(
                "spec.internalTrafficPolicy",
                format!("unknown value {other:?}: use Cluster or Local"),
            ));
        }
    };
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        ipv4(format!("spec.externalIPs[{i}]"), ip)?;
        out.external_ips.push(ip.clone());
    }
    Ok(out)
}

/// An EndpointSlice, normalised. `Ok(None)` for a slice of another address family.
pub fn endpoint_slice(
    namespace: &str,
    name: &str,
    slice: &EndpointSlice,
) -> Result<Option<api::EndpointSlice>, Invalid> {
    if slice.address_type != "IPv4" {
        return Ok(None);
    }
    let service = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)).ok_or_else(|| {
        invalid(format!("metadata.labels[{SERVICE_NAME_LABEL}]"), "missing: it names the slice's service")
    })?;
    let mut out = api::EndpointSlice {
        namespace: namespace.into(),
        name: name.into(),
        service: service.clone(),
        ..Default::default()
    };
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let Some(number) = p.port else { continue };
        out.ports.push(api::EndpointPort {
            name: p.name.clone().unwrap_or_default(),
            protocol: protocol(format!("ports[{i}].protocol"), p.protocol.as_deref())? as i32,
            port: port(format!("ports[{i}].port"), number)?,
        });
    }
    for (i, e) in slice.endpoints.iter().enumerate() {
        for (j, address) in e.addresses.iter().enumerate() {
            ipv4(format!("endpoints[{i}].addresses[{j}]"), address)?;
        }
        let conditions = e.conditions.as_ref();
        // Kubernetes: an unknown `ready` means ready; `serving` defaults to `ready`.
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        out.endpoints.push(api::Endpoint {
            addresses: e.addresses.clone(),
            node: e.node_name.clone().unwrap_or_default(),
            pod: e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone())
                .unwrap_or_default(),
            ready,
            serving: conditions.and_then(|c| c.serving).unwrap_or(ready),
            terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
        });
    }
    Ok(Some(out))
}

/// A pod's addresses, node and readiness, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    pub node: String,
    pub ips: Vec<String>,
    pub ready: bool,
    pub terminating: bool,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
}

pub fn pod_facts(pod: &Pod) -> Result<PodFacts, Invalid> {
    let status = pod.status.as_ref();
    let mut ips = Vec::new();
    if let Some(pod_ips) = status.and_then(|s| s.pod_ips.as_ref()).filter(|ips| !ips.is_empty()) {
        for (i, ip) in pod_ips.iter().enumerate() {
            if !ip.ip.contains(':') {
                ipv4(format!("status.podIPs[{i}].ip"), &ip.ip)?;
                ips.push(ip.ip.clone());
            }
        }
    } else if let Some(ip) = status.and_then(|s| s.pod_ip.as_ref())
        && !ip.contains(':')
    {
        ipv4("status.podIP".into(), ip)?;
        ips.push(ip.clone());
    }
    // Ready: the Ready condition when there is one; else (hand-written local-mode pods) a
    // pod with an address that is Running, or has no phase, is taken as ready.
    let ready = match status.and_then(|s| s.conditions.as_ref()).and_then(|c| c.iter().find(|c| c.type_ == "Ready")) {
        Some(condition) => condition.status == "True",
        None => !ips.is_empty() && matches!(status.and_then(|s| s.phase.as_deref()), None | Some("Running")),
    };
    let spec = pod.spec.as_ref();
    Ok(PodFacts {
        node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        ips,
        ready,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        service_account: spec.and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into()),
    })
}

/// The port number `target` names in `pod`'s containers (a named targetPort).
pub fn named_port(pod: &Pod, target: &str, protocol: api::Protocol) -> Option<u32> {
    let wanted = match protocol {
        api::Protocol::Udp => "UDP",
        api::Protocol::Sctp => "SCTP",
        _ => "TCP",
    };
    pod.spec.as_ref()?.containers.iter().flat_map(|c| c.ports.iter().flatten()).find_map(|p| {
        (p.name.as_deref() == Some(target) && p.protocol.as_deref().unwrap_or("TCP") == wanted)
            .then_some(p.container_port as u32)
    })
}

/// An IANA service name, as Kubernetes allows for port names: 1-15 lowercase alphanumerics
/// and '-', at least one letter, no leading, trailing or double '-'.
pub fn is_port_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service_yaml(yaml: &str) -> Result<api::Service, Invalid> {
        let svc: Service = serde_yaml::from_str(yaml).unwrap();
        service("default", "web", &svc)
    }

    #[test]
    fn a_service_is_normalised() {
        let svc = service_yaml(
            "spec:
  clusterIP: 10.96.0.10
  sessionAffinity: ClientIP
  internalTrafficPolicy: Local
  ports:
  - {name: http, port: 80, targetPort: web}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
  - {name: plain, port: 8080}",
        )
        .unwrap();
        assert_eq!(svc.cluster_ips, vec!["10.96.0.10"]);
        assert_eq!(svc.affinity_timeout_seconds, 10_800);
        assert!(svc.internal_traffic_local && !svc.headless);
        assert_eq!(svc.ports[0].target, Some(api::service_port::Target::TargetPortName("web".into())));
        assert_eq!(svc.ports[1].protocol, api::Protocol::Udp as i32);
        assert_eq!(svc.ports[2].target, Some(api::service_port::Target::TargetPortNumber(8080)));
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            ("spec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}", "spec.clusterIPs[0]"),
            ("spec: {clusterIP: 10.96.0.1, ports: [{port: 70000}]}", "spec.ports[0].port"),
            ("spec: {clusterIP: 10.96.0.1, ports: [{port: 80, protocol: ICMP}]}", "spec.ports[0].protocol"),
            ("spec: {clusterIP: 10.96.0.1, ports: [{port: 80, targetPort: Bad_Name}]}", "spec.ports[0].targetPort"),
            ("spec: {clusterIP: 10.96.0.1, sessionAffinity: Sticky}", "spec.sessionAffinity"),
        ];
        for (yaml, field) in cases {
            assert_eq!(service_yaml(yaml).unwrap_err().field, field, "{yaml}");
        }
    }

    #[test]
    fn headless_services_are_marked() {
        assert!(service_yaml("spec: {clusterIP: None, ports: [{port: 80}]}").unwrap().headless);
    }

    #[test]
    fn slices_keep_conditions_with_kubernetes_defaults() {
        let slice: EndpointSlice = serde_yaml::from_str(
            "addressType: IPv4
metadata: {name: web-abc, labels: {kubernetes.io/service-name: web}}
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.244.0.3], nodeName: node-0}
- {addresses: [10.244.1.3], conditions: {ready: false, serving: true, terminating: true}}",
        )
        .unwrap();
        let out = endpoint_slice("default", "web-abc", &slice).unwrap().unwrap();
        assert_eq!(out.service, "web");
        assert!(out.endpoints[0].ready && out.endpoints[0].serving && !out.endpoints[0].terminating);
        assert!(!out.endpoints[1].ready && out.endpoints[1].serving && out.endpoints[1].terminating);
        let unlabelled: EndpointSlice =
            serde_yaml::from_str("addressType: IPv4\nmetadata: {name: x}\nendpoints: []").unwrap();
        assert!(endpoint_slice("default", "x", &unlabelled).unwrap_err().field.contains(SERVICE_NAME_LABEL));
    }

    #[test]
    fn port_names_follow_iana() {
        assert!(is_port_name("http") && is_port_name("h2c-web") && is_port_name("web8080"));
        assert!(!is_port_name("8080") && !is_port_name("-a") && !is_port_name("a--b") && !is_port_name("Web"));
        assert!(!is_port_name("averyveryverylongname"));
    }
}
