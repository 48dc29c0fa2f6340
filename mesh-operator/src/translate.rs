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
use mesh_common::{api, cidr};

/// The label that ties an EndpointSlice to its service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Pod annotation: the pod's load-balancing weight as a service backend, 1 to [`MAX_WEIGHT`].
pub const WEIGHT_ANNOTATION: &str = "mesh.dev/weight";
use mesh_common::service_lb::MAX_WEIGHT;

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
/// The Service annotation that chooses how traffic from outside reaches backends on other
/// nodes: `snat` (source NAT to the node) or `dsr` (direct server return).
pub const LB_MODE_ANNOTATION: &str = "mesh.dev/lb-mode";

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
            app_protocol: p.app_protocol.clone().unwrap_or_default(),
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
    out.external_traffic_local = match spec.external_traffic_policy.as_deref() {
        None | Some("Cluster") => false,
        Some("Local") => true,
        Some(other) => {
            return Err(invalid(
                "spec.externalTrafficPolicy",
                format!("unknown value {other:?}: use Cluster or Local"),
            ));
        }
    };
    if let Some(port) = spec.health_check_node_port {
        out.health_check_node_port = self::port("spec.healthCheckNodePort".into(), port)?;
    }
    if let Some(mode) = svc.metadata.annotations.as_ref().and_then(|a| a.get(LB_MODE_ANNOTATION)) {
        if !matches!(mode.as_str(), "snat" | "dsr") {
            return Err(invalid(
                format!("metadata.annotations[{LB_MODE_ANNOTATION}]"),
                format!("{mode:?} is not a load-balancing mode: use snat or dsr"),
            ));
        }
        out.lb_mode = mode.clone();
    }
    for (i, range) in spec.load_balancer_source_ranges.iter().flatten().enumerate() {
        let range = range.trim();
        if range.parse::<mesh_common::cidr::IpNet>().is_err() {
            return Err(invalid(
                format!("spec.loadBalancerSourceRanges[{i}]"),
                format!("{range:?} is not a CIDR: write it as 203.0.113.0/24"),
            ));
        }
        out.load_balancer_source_ranges.push(range.to_owned());
    }
    let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
    for (i, entry) in ingress.into_iter().flatten().enumerate() {
        if let Some(ip) = &entry.ip {
            // An IPv6 load-balancer address: not balanced here (IPv4 only).
            if ip.parse::<std::net::Ipv4Addr>().is_ok() {
                out.load_balancer_ips.push(ip.clone());
            } else if ip.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(invalid(
                    format!("status.loadBalancer.ingress[{i}].ip"),
                    format!("{ip:?} is not an IP address"),
                ));
            }
        }
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
    /// From [`WEIGHT_ANNOTATION`]; 0 when not set.
    pub weight: u32,
    /// Its controller as (kind, name), see [`workload`]; empty strings when it has none.
    pub workload: (String, String),
}

/// The workload a pod belongs to, named as Hubble names it: the Deployment of a ReplicaSet
/// (the ReplicaSet's name without its pod-template hash), else the controlling owner itself.
pub fn workload(pod: &Pod) -> (String, String) {
    let Some(owner) = pod.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true)) else {
        return (String::new(), String::new());
    };
    if owner.kind == "ReplicaSet"
        && let Some((deployment, hash)) = owner.name.rsplit_once('-')
        && !hash.is_empty()
        && hash.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return ("Deployment".to_owned(), deployment.to_owned());
    }
    (owner.kind.clone(), owner.name.clone())
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
    let weight = match pod.metadata.annotations.as_ref().and_then(|a| a.get(WEIGHT_ANNOTATION)) {
        None => 0,
        Some(text) => match text.parse::<u32>() {
            Ok(w) if (1..=MAX_WEIGHT).contains(&w) => w,
            _ => {
                return Err(invalid(
                    format!("metadata.annotations[{WEIGHT_ANNOTATION}]"),
                    format!("{text:?} is not a weight: use an integer from 1 to {MAX_WEIGHT}"),
                ));
            }
        },
    };
    let spec = pod.spec.as_ref();
    Ok(PodFacts {
        weight,
        node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        ips,
        ready,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        service_account: spec.and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into()),
        workload: workload(pod),
    })
}

/// The named ports of `pod`'s containers (unnamed ones and invalid numbers left out).
pub fn named_ports(pod: &Pod) -> Vec<api::NamedPort> {
    let Some(spec) = pod.spec.as_ref() else { return Vec::new() };
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let name = p.name.clone()?;
            let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                "UDP" => api::Protocol::Udp,
                "SCTP" => api::Protocol::Sctp,
                _ => api::Protocol::Tcp,
            };
            let number = u32::try_from(p.container_port).ok().filter(|n| (1..=65_535).contains(n))?;
            Some(api::NamedPort { name, protocol: protocol as i32, number })
        })
        .collect()
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
        let svc: Service = mesh_common::yaml::document(yaml).unwrap();
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
            ("spec: {clusterIP: 10.96.0.1, externalTrafficPolicy: Nearby}", "spec.externalTrafficPolicy"),
            ("spec: {clusterIP: 10.96.0.1, healthCheckNodePort: 0}", "spec.healthCheckNodePort"),
            (
                "metadata: {annotations: {mesh.dev/lb-mode: maglev}}\nspec: {clusterIP: 10.96.0.1}",
                "metadata.annotations[mesh.dev/lb-mode]",
            ),
            (
                "spec: {clusterIP: 10.96.0.1}\nstatus: {loadBalancer: {ingress: [{ip: 192.0.2.300}]}}",
                "status.loadBalancer.ingress[0].ip",
            ),
            (
                "spec: {clusterIP: 10.96.0.1, loadBalancerSourceRanges: [10.0.0.0/8, 10.0.0.1/33]}",
                "spec.loadBalancerSourceRanges[1]",
            ),
        ];
        for (yaml, field) in cases {
            assert_eq!(service_yaml(yaml).unwrap_err().field, field, "{yaml}");
        }
    }

    #[test]
    fn external_traffic_settings_are_read() {
        let svc = service_yaml(
            "metadata: {annotations: {mesh.dev/lb-mode: dsr}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  loadBalancerSourceRanges: [203.0.113.0/24, 2001:db8::/32]
  ports: [{port: 80, nodePort: 30080}]
status: {loadBalancer: {ingress: [{ip: 192.0.2.10}, {ip: 2001:db8::1}, {hostname: lb.example.com}]}}",
        )
        .unwrap();
        assert!(svc.external_traffic_local);
        assert_eq!(svc.health_check_node_port, 32_000);
        assert_eq!(svc.load_balancer_ips, ["192.0.2.10"]);
        assert_eq!(svc.lb_mode, "dsr");
        assert_eq!(svc.load_balancer_source_ranges, ["203.0.113.0/24", "2001:db8::/32"]);
        assert_eq!(svc.ports[0].node_port, 30_080);
    }

    #[test]
    fn headless_services_are_marked() {
        assert!(service_yaml("spec: {clusterIP: None, ports: [{port: 80}]}").unwrap().headless);
    }

    #[test]
    fn slices_keep_conditions_with_kubernetes_defaults() {
        let slice: EndpointSlice = mesh_common::yaml::document(
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
            mesh_common::yaml::document("addressType: IPv4\nmetadata: {name: x}\nendpoints: []").unwrap();
        assert!(endpoint_slice("default", "x", &unlabelled).unwrap_err().field.contains(SERVICE_NAME_LABEL));
    }

    #[test]
    fn port_names_follow_iana() {
        assert!(is_port_name("http") && is_port_name("h2c-web") && is_port_name("web8080"));
        assert!(!is_port_name("8080") && !is_port_name("-a") && !is_port_name("a--b") && !is_port_name("Web"));
        assert!(!is_port_name("averyveryverylongname"));
    }
}

/// A Node: its addresses (InternalIP first, then the others) and pod CIDRs.
pub fn node(name: &str, node: &k8s_openapi::api::core::v1::Node) -> Result<api::Node, Invalid> {
    let mut addresses: Vec<(bool, String)> = Vec::new();
    for (i, a) in node.status.iter().flat_map(|s| s.addresses.iter().flatten()).enumerate() {
        if matches!(a.type_.as_str(), "InternalIP" | "ExternalIP") {
            a.address.parse::<std::net::IpAddr>().map_err(|_| {
                invalid(format!("status.addresses[{i}].address"), format!("{:?} is not an IP address", a.address))
            })?;
            addresses.push((a.type_ != "InternalIP", a.address.clone()));
        }
    }
    addresses.sort_by_key(|(external, _)| *external);
    let spec = node.spec.as_ref();
    let pod_cidrs =
        spec.and_then(|s| s.pod_cidrs.clone()).or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]));
    let pod_cidrs = pod_cidrs.unwrap_or_default();
    for (i, cidr) in pod_cidrs.iter().enumerate() {
        cidr::parse(cidr).map_err(|message| invalid(format!("spec.podCIDRs[{i}]"), message))?;
    }
    Ok(api::Node { name: name.into(), addresses: addresses.into_iter().map(|(_, a)| a).collect(), pod_cidrs })
}

/// A NetworkPolicy, normalised; every selector operator, CIDR, port and protocol checked.
pub fn network_policy(
    namespace: &str,
    name: &str,
    policy: &k8s_openapi::api::networking::v1::NetworkPolicy,
) -> Result<api::NetworkPolicy, Invalid> {
    let spec = policy.spec.as_ref().ok_or_else(|| invalid("spec", "a NetworkPolicy needs a spec"))?;
    let types = spec.policy_types.clone();
    for (i, t) in types.iter().flatten().enumerate() {
        if t != "Ingress" && t != "Egress" {
            return Err(invalid(
                format!("spec.policyTypes[{i}]"),
                format!("unknown policy type {t:?}: use Ingress or Egress"),
            ));
        }
    }
    // Kubernetes: without policyTypes, Ingress always, Egress when there are egress rules.
    let has = |t: &str| types.as_ref().is_some_and(|types| types.iter().any(|x| x == t));
    let (ingress_isolated, egress_isolated) = match &types {
        Some(_) => (has("Ingress"), has("Egress")),
        None => (true, spec.egress.is_some()),
    };
    let mut out = api::NetworkPolicy {
        namespace: namespace.into(),
        name: name.into(),
        pod_selector: Some(selector("spec.podSelector", spec.pod_selector.as_ref())?),
        ingress_isolated,
        egress_isolated,
        ..Default::default()
    };
    for (i, rule) in spec.ingress.iter().flatten().enumerate() {
        out.ingress.push(policy_rule(
            &format!("spec.ingress[{i}]"),
            "from",
            rule.from.as_deref(),
            rule.ports.as_deref(),
        )?);
    }
    for (i, rule) in spec.egress.iter().flatten().enumerate() {
        out.egress.push(policy_rule(&format!("spec.egress[{i}]"), "to", rule.to.as_deref(), rule.ports.as_deref())?);
    }
    Ok(out)
}

/// A PeerAuthentication, checked: ports are numbers 1-65535, set only with a selector (as
/// Istio requires). `mesh_wide`: it is in the mesh's root namespace and has no selector.
pub fn peer_authentication(
    namespace: &str,
    name: &str,
    spec: &crate::crd::PeerAuthenticationSpec,
    root_namespace: &str,
) -> Result<api::PeerAuthentication, Invalid> {
    use crate::crd::MtlsMode;
    let mode = |mode: MtlsMode| match mode {
        MtlsMode::Unset => api::MtlsMode::Unset,
        MtlsMode::Disable => api::MtlsMode::Disable,
        MtlsMode::Permissive => api::MtlsMode::Permissive,
        MtlsMode::Strict => api::MtlsMode::Strict,
    } as i32;
    if !spec.port_level_mtls.is_empty() && spec.selector.is_none() {
        return Err(invalid(
            "spec.portLevelMtls",
            "per-port modes need a selector: add spec.selector naming the pods whose ports these are",
        ));
    }
    let mut port_modes = std::collections::HashMap::new();
    for (port, setting) in &spec.port_level_mtls {
        let number = port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
            invalid(format!("spec.portLevelMtls.{port}"), "not a port number: use a container port, 1-65535")
        })?;
        port_modes.insert(u32::from(number), mode(setting.mode));
    }
    Ok(api::PeerAuthentication {
        namespace: namespace.into(),
        name: name.into(),
        mesh_wide: namespace == root_namespace && spec.selector.is_none(),
        selector: spec.selector.as_ref().map(|s| selector("spec.selector", Some(s))).transpose()?,
        mode: spec.mtls.as_ref().map_or(api::MtlsMode::Unset as i32, |m| mode(m.mode)),
        port_modes,
    })
}

/// The parts of a MeshPolicy or ClusterMeshPolicy the model takes.
pub struct MeshPolicyParts<'a> {
    pub namespace_selector: Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    pub pod_selector: Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    pub priority: Option<u32>,
    pub mode: Option<crate::crd::PolicyMode>,
    pub ingress: &'a [crate::crd::MeshRule],
    pub egress: &'a [crate::crd::MeshRule],
}

/// A MeshPolicy (`namespace` given) or ClusterMeshPolicy (`namespace` empty), normalised;
/// priority, selectors, peers and ports checked.
pub fn mesh_policy(namespace: &str, name: &str, parts: &MeshPolicyParts<'_>) -> Result<api::MeshPolicy, Invalid> {
    use crate::crd::{DEFAULT_PRIORITY, MAX_PRIORITY, PolicyMode, RuleAction};
    let priority = parts.priority.unwrap_or(DEFAULT_PRIORITY);
    if priority > MAX_PRIORITY {
        return Err(invalid("spec.priority", format!("{priority} is out of range: use 0 (first) to {MAX_PRIORITY}")));
    }
    let mut out = api::MeshPolicy {
        namespace: namespace.into(),
        name: name.into(),
        pod_selector: Some(selector("spec.podSelector", parts.pod_selector)?),
        namespace_selector: parts
            .namespace_selector
            .map(|s| selector("spec.namespaceSelector", Some(s)))
            .transpose()?,
        priority,
        audit: parts.mode == Some(PolicyMode::Audit),
        ..Default::default()
    };
    for (list, rules, way) in [(&mut out.ingress, parts.ingress, "ingress"), (&mut out.egress, parts.egress, "egress")]
    {
        for (i, rule) in rules.iter().enumerate() {
            let field = format!("spec.{way}[{i}]");
            let checked = policy_rule(&field, "peers", Some(&rule.peers), Some(&rule.ports))?;
            let principals = principals(&field, way, rule)?;
            let http = http_requests(&field, rule, &checked.ports)?;
            list.push(api::MeshRule {
                action: match rule.action {
                    RuleAction::Allow => api::RuleAction::Allow,
                    RuleAction::Deny => api::RuleAction::Deny,
                } as i32,
                peers: checked.peers,
                ports: checked.ports,
                principals,
                http,
            });
        }
    }
    Ok(out)
}

/// At most this many HTTP request matches per rule, and of each part per match.
const MAX_HTTP_MATCHES: usize = 16;

/// A rule's HTTP requests, checked: only on an ingress rule with principals (the destination's
/// agent knows a client only by the identity it proved) and with ports, single ports (these
/// ports are then served through the agent, so they must be named one by one).
fn http_requests(
    field: &str,
    rule: &crate::crd::MeshRule,
    ports: &[api::PolicyPort],
) -> Result<Vec<api::HttpRequestMatch>, Invalid> {
    use crate::crd::HttpPathType;
    if rule.http.is_empty() {
        return Ok(Vec::new());
    }
    let here = format!("{field}.http");
    if rule.principals.is_empty() {
        return Err(invalid(
            &here,
            "an HTTP rule is decided by the destination's agent, which knows a client only by the identity it proved: name the clients by principals (an ingress rule)",
        ));
    }
    if ports.is_empty() || ports.iter().any(|p| p.end_port != 0 || p.protocol != api::Protocol::Tcp as i32) {
        return Err(invalid(
            format!("{field}.ports"),
            "an HTTP rule names its TCP ports one by one (no endPort): they are served through the agents",
        ));
    }
    if rule.http.len() > MAX_HTTP_MATCHES {
        return Err(invalid(&here, format!("at most {MAX_HTTP_MATCHES} request matches")));
    }
    let mut out = Vec::new();
    for (i, m) in rule.http.iter().enumerate() {
        let at = format!("{here}[{i}]");
        if m.methods.len() > MAX_HTTP_MATCHES || m.paths.len() > MAX_HTTP_MATCHES || m.headers.len() > MAX_HTTP_MATCHES
        {
            return Err(invalid(&at, format!("at most {MAX_HTTP_MATCHES} methods, paths and headers each")));
        }
        for (j, method) in m.methods.iter().enumerate() {
            if !mesh_common::http_route::METHODS.contains(&method.as_str()) {
                return Err(invalid(
                    format!("{at}.methods[{j}]"),
                    format!("{method:?} is not a method: one of {}", mesh_common::http_route::METHODS.join(", ")),
                ));
            }
        }
        let mut paths = Vec::new();
        for (j, path) in m.paths.iter().enumerate() {
            mesh_common::http_route::check_path(&path.value)
                .map_err(|e| invalid(format!("{at}.paths[{j}].value"), e))?;
            let prefix = path.kind == HttpPathType::PathPrefix;
            let value = if prefix { path.value.trim_end_matches('/').to_owned() } else { path.value.clone() };
            paths.push(api::HttpPathMatch { prefix, value });
        }
        let mut headers = Vec::new();
        for (j, header) in m.headers.iter().enumerate() {
            if !mesh_common::http_route::is_header_name(&header.name) {
                return Err(invalid(
                    format!("{at}.headers[{j}].name"),
                    format!("{:?} is not a header name", header.name),
                ));
            }
            headers.push(api::NameValue { name: header.name.to_ascii_lowercase(), value: header.value.clone() });
        }
        out.push(api::HttpRequestMatch { methods: m.methods.clone(), paths, headers });
    }
    Ok(out)
}

/// A rule's principals, checked: ingress only, not with peers, each a SPIFFE ID or a
/// namespace and service account.
fn principals(field: &str, way: &str, rule: &crate::crd::MeshRule) -> Result<Vec<api::Principal>, Invalid> {
    use mesh_common::identity::{SpiffeId, TrustDomain};
    if rule.principals.is_empty() {
        return Ok(Vec::new());
    }
    if way != "ingress" {
        return Err(invalid(
            format!("{field}.principals"),
            "principals name the clients of an ingress rule: move the rule to spec.ingress (an egress rule's peers are destinations)",
        ));
    }
    if !rule.peers.is_empty() {
        return Err(invalid(
            format!("{field}.principals"),
            "a rule names its clients by peers or by principals, not both: split it into two rules",
        ));
    }
    let mut out = Vec::new();
    for (j, principal) in rule.principals.iter().enumerate() {
        let here = format!("{field}.principals[{j}]");
        let (trust_domain, namespace, service_account) =
            match (&principal.spiffe_id, &principal.namespace, &principal.service_account) {
                (Some(uri), None, None) => {
                    let id: SpiffeId = uri.parse().map_err(|e| invalid(format!("{here}.spiffeId"), format!("{e}")))?;
                    (id.trust_domain().to_string(), id.namespace().to_owned(), id.service_account().to_owned())
                }
                (None, Some(namespace), Some(service_account)) => {
                    let id = SpiffeId::new(TrustDomain::default(), namespace, service_account)
                        .map_err(|e| invalid(&here, format!("{e}")))?;
                    (String::new(), id.namespace().to_owned(), id.service_account().to_owned())
                }
                _ => {
                    return Err(invalid(
                        &here,
                        "give either spiffeId, or namespace and serviceAccount (both), not a mix",
                    ));
                }
            };
        out.push(api::Principal { trust_domain, namespace, service_account });
    }
    Ok(out)
}

fn policy_rule(
    field: &str,
    peers_field: &str,
    peers: Option<&[k8s_openapi::api::networking::v1::NetworkPolicyPeer]>,
    ports: Option<&[k8s_openapi::api::networking::v1::NetworkPolicyPort]>,
) -> Result<api::PolicyRule, Invalid> {
    let mut rule = api::PolicyRule::default();
    for (j, peer) in peers.into_iter().flatten().enumerate() {
        let here = format!("{field}.{peers_field}[{j}]");
        let ip_block = match &peer.ip_block {
            Some(block) => {
                if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
                    return Err(invalid(here, "ipBlock cannot be combined with podSelector or namespaceSelector"));
                }
                let cidr = cidr::parse(&block.cidr).map_err(|m| invalid(format!("{here}.ipBlock.cidr"), m))?;
                for (k, except) in block.except.iter().flatten().enumerate() {
                    let inner = cidr::parse(except).map_err(|m| invalid(format!("{here}.ipBlock.except[{k}]"), m))?;
                    if !cidr.contains(&inner) {
                        return Err(invalid(
                            format!("{here}.ipBlock.except[{k}]"),
                            format!("{except} is not within {}", block.cidr),
                        ));
                    }
                }
                Some(api::IpBlock { cidr: block.cidr.clone(), except: block.except.clone().unwrap_or_default() })
            }
            None if peer.pod_selector.is_none() && peer.namespace_selector.is_none() => {
                return Err(invalid(here, "a peer needs podSelector, namespaceSelector or ipBlock"));
            }
            None => None,
        };
        rule.peers.push(api::PolicyPeer {
            pod_selector: peer
                .pod_selector
                .as_ref()
                .map(|s| selector(&format!("{here}.podSelector"), Some(s)))
                .transpose()?,
            namespace_selector: peer
                .namespace_selector
                .as_ref()
                .map(|s| selector(&format!("{here}.namespaceSelector"), Some(s)))
                .transpose()?,
            ip_block,
        });
    }
    for (j, p) in ports.into_iter().flatten().enumerate() {
        let here = format!("{field}.ports[{j}]");
        let port = match &p.port {
            None => None,
            Some(IntOrString::Int(n)) => Some(api::policy_port::Port::Number(port(format!("{here}.port"), *n)?)),
            Some(IntOrString::String(s)) if is_port_name(s) => Some(api::policy_port::Port::Name(s.clone())),
            Some(IntOrString::String(s)) => {
                return Err(invalid(format!("{here}.port"), format!("{s:?} is neither a port number nor a port name")));
            }
        };
        let end_port = match (p.end_port, &port) {
            (None, _) => 0,
            (Some(end), Some(api::policy_port::Port::Number(start))) => {
                let end = self::port(format!("{here}.endPort"), end)?;
                if end < *start {
                    return Err(invalid(format!("{here}.endPort"), format!("{end} is below port {start}")));
                }
                end
            }
            (Some(_), _) => return Err(invalid(format!("{here}.endPort"), "endPort needs a numeric port")),
        };
        rule.ports.push(api::PolicyPort {
            protocol: protocol(format!("{here}.protocol"), p.protocol.as_deref())? as i32,
            port,
            end_port,
        });
    }
    Ok(rule)
}

/// A label selector; `None` is the empty selector (everything).
fn selector(
    field: &str,
    selector: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> Result<api::LabelSelector, Invalid> {
    let mut out = api::LabelSelector::default();
    let Some(selector) = selector else { return Ok(out) };
    out.match_labels = selector.match_labels.clone().unwrap_or_default().into_iter().collect();
    for (i, e) in selector.match_expressions.iter().flatten().enumerate() {
        let here = format!("{field}.matchExpressions[{i}]");
        let values = e.values.clone().unwrap_or_default();
        let operator = match e.operator.as_str() {
            "In" => api::SelectorOperator::In,
            "NotIn" => api::SelectorOperator::NotIn,
            "Exists" => api::SelectorOperator::Exists,
            "DoesNotExist" => api::SelectorOperator::DoesNotExist,
            other => {
                return Err(invalid(
                    format!("{here}.operator"),
                    format!("unknown operator {other:?}: use In, NotIn, Exists or DoesNotExist"),
                ));
            }
        };
        let needs_values = matches!(operator, api::SelectorOperator::In | api::SelectorOperator::NotIn);
        if needs_values == values.is_empty() {
            let message = if needs_values {
                "In and NotIn need at least one value"
            } else {
                "Exists and DoesNotExist take no values"
            };
            return Err(invalid(format!("{here}.values"), message));
        }
        out.match_expressions.push(api::LabelRequirement { key: e.key.clone(), operator: operator as i32, values });
    }
    Ok(out)
}

#[cfg(test)]
mod policy_tests {
    use super::*;

    fn policy(yaml: &str) -> Result<api::NetworkPolicy, Invalid> {
        let p: k8s_openapi::api::networking::v1::NetworkPolicy = mesh_common::yaml::document(yaml).unwrap();
        network_policy("prod", "p", &p)
    }

    #[test]
    fn a_policy_is_normalised_with_kubernetes_defaults() {
        let p = policy(
            "spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: team, operator: In, values: [a, b]}]}
      podSelector: {matchLabels: {app: web}}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    ports:
    - {port: 5432}
    - {protocol: UDP, port: 1000, endPort: 2000}
    - {port: metrics}",
        )
        .unwrap();
        assert!(p.ingress_isolated && !p.egress_isolated, "no policyTypes and no egress: ingress only");
        let peers = &p.ingress[0].peers;
        assert!(
            peers[0].pod_selector.is_some() && peers[0].namespace_selector.is_some() && peers[0].ip_block.is_none()
        );
        assert_eq!(peers[1].ip_block.as_ref().unwrap().except, vec!["10.1.0.0/16"]);
        let ports = &p.ingress[0].ports;
        assert_eq!((ports[1].protocol, ports[1].end_port), (api::Protocol::Udp as i32, 2000));
        assert_eq!(ports[2].port, Some(api::policy_port::Port::Name("metrics".into())));
        let egress_only = policy("spec: {podSelector: {}, policyTypes: [Egress]}").unwrap();
        assert!(!egress_only.ingress_isolated && egress_only.egress_isolated && egress_only.egress.is_empty());
    }

    #[test]
    fn bad_policies_are_refused_with_the_field() {
        let cases = [
            (
                "spec: {podSelector: {matchExpressions: [{key: a, operator: Like, values: [x]}]}}",
                "spec.podSelector.matchExpressions[0].operator",
            ),
            (
                "spec: {podSelector: {matchExpressions: [{key: a, operator: In}]}}",
                "spec.podSelector.matchExpressions[0].values",
            ),
            (
                "spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}",
                "spec.ingress[0].from[0].ipBlock.cidr",
            ),
            (
                "spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]}",
                "spec.ingress[0].from[0].ipBlock.except[0]",
            ),
            ("spec: {podSelector: {}, egress: [{ports: [{port: 70000}]}]}", "spec.egress[0].ports[0].port"),
            (
                "spec: {podSelector: {}, egress: [{ports: [{protocol: ICMP, port: 80}]}]}",
                "spec.egress[0].ports[0].protocol",
            ),
            (
                "spec: {podSelector: {}, egress: [{ports: [{port: 90, endPort: 80}]}]}",
                "spec.egress[0].ports[0].endPort",
            ),
            ("spec: {podSelector: {}, policyTypes: [Sideways]}", "spec.policyTypes[0]"),
        ];
        for (yaml, field) in cases {
            assert_eq!(policy(yaml).unwrap_err().field, field, "{yaml}");
        }
    }

    fn cluster_mesh_policy(yaml: &str) -> Result<api::MeshPolicy, Invalid> {
        let p: crate::crd::ClusterMeshPolicy = mesh_common::yaml::document(&format!(
            "{{apiVersion: mesh.dev/v1alpha1, kind: ClusterMeshPolicy, metadata: {{name: p}}, {yaml}}}"
        ))
        .unwrap();
        let spec = &p.spec;
        mesh_policy(
            "",
            "p",
            &MeshPolicyParts {
                namespace_selector: spec.namespace_selector.as_ref(),
                pod_selector: spec.pod_selector.as_ref(),
                priority: spec.priority,
                mode: spec.mode,
                ingress: &spec.ingress,
                egress: &spec.egress,
            },
        )
    }

    #[test]
    fn a_mesh_policy_is_normalised() {
        let p = cluster_mesh_policy(
            "spec: {namespaceSelector: {matchLabels: {ns: z}}, mode: Audit, egress: [{action: Deny, ports: [{port: 53, protocol: UDP}]}]}",
        )
        .unwrap();
        assert_eq!(p.priority, crate::crd::DEFAULT_PRIORITY);
        assert!(p.audit);
        assert_eq!(p.namespace_selector.unwrap().match_labels["ns"], "z");
        assert_eq!(p.egress[0].action, api::RuleAction::Deny as i32);
        assert_eq!(p.egress[0].ports[0].protocol, api::Protocol::Udp as i32);
        assert!(p.egress[0].peers.is_empty() && p.ingress.is_empty());
    }

    #[test]
    fn bad_mesh_policies_are_refused_with_the_field() {
        let cases = [
            ("spec: {priority: 1001}", "spec.priority"),
            (
                "spec: {namespaceSelector: {matchExpressions: [{key: a, operator: Is}]}}",
                "spec.namespaceSelector.matchExpressions[0].operator",
            ),
            (
                "spec: {ingress: [{action: Deny, peers: [{ipBlock: {cidr: 300.0.0.0/8}}]}]}",
                "spec.ingress[0].peers[0].ipBlock.cidr",
            ),
            ("spec: {egress: [{action: Allow, ports: [{port: 0}]}]}", "spec.egress[0].ports[0].port"),
            ("spec: {egress: [{action: Allow, ports: [{protocol: GRE}]}]}", "spec.egress[0].ports[0].protocol"),
            (
                "spec: {egress: [{action: Allow, principals: [{namespace: a, serviceAccount: b}]}]}",
                "spec.egress[0].principals",
            ),
            (
                "spec: {ingress: [{action: Allow, peers: [{podSelector: {}}], principals: [{namespace: a, serviceAccount: b}]}]}",
                "spec.ingress[0].principals",
            ),
            (
                "spec: {ingress: [{action: Allow, principals: [{namespace: a, serviceAccount: b}, {spiffeId: 'spiffe://cluster.local/ns/a'}]}]}",
                "spec.ingress[0].principals[1].spiffeId",
            ),
            ("spec: {ingress: [{action: Allow, principals: [{namespace: a}]}]}", "spec.ingress[0].principals[0]"),
            (
                "spec: {ingress: [{action: Allow, principals: [{spiffeId: 'spiffe://cluster.local/ns/a/sa/b', namespace: a}]}]}",
                "spec.ingress[0].principals[0]",
            ),
            (
                "spec: {ingress: [{action: Allow, principals: [{namespace: A_B, serviceAccount: b}]}]}",
                "spec.ingress[0].principals[0]",
            ),
            // HTTP rules: with principals, ports one by one, known methods, valid paths and names.
            (
                "spec: {ingress: [{action: Allow, ports: [{port: 80}], http: [{methods: [GET]}]}]}",
                "spec.ingress[0].http",
            ),
            (
                "spec: {ingress: [{action: Allow, principals: [{namespace: a, serviceAccount: b}], http: [{methods: [GET]}]}]}",
                "spec.ingress[0].ports",
            ),
            (
                "spec: {ingress: [{action: Allow, ports: [{port: 80, endPort: 90}], principals: [{namespace: a, serviceAccount: b}], http: [{methods: [GET]}]}]}",
                "spec.ingress[0].ports",
            ),
            (
                "spec: {ingress: [{action: Allow, ports: [{port: 80}], principals: [{namespace: a, serviceAccount: b}], http: [{methods: [get]}]}]}",
                "spec.ingress[0].http[0].methods[0]",
            ),
            (
                "spec: {ingress: [{action: Allow, ports: [{port: 80}], principals: [{namespace: a, serviceAccount: b}], http: [{paths: [{type: Exact, value: 'a/../b'}]}]}]}",
                "spec.ingress[0].http[0].paths[0].value",
            ),
            (
                "spec: {ingress: [{action: Allow, ports: [{port: 80}], principals: [{namespace: a, serviceAccount: b}], http: [{headers: [{name: 'x y', value: v}]}]}]}",
                "spec.ingress[0].http[0].headers[0].name",
            ),
        ];
        for (yaml, field) in cases {
            assert_eq!(cluster_mesh_policy(yaml).unwrap_err().field, field, "{yaml}");
        }
    }

    #[test]
    fn http_rules_are_normalised() {
        let p = cluster_mesh_policy(
            "spec: {ingress: [{action: Deny, ports: [{port: 8081}], principals: [{namespace: demo, serviceAccount: client}], http: [{methods: [GET, HEAD], paths: [{type: PathPrefix, value: /public/}, {type: Exact, value: /x}], headers: [{name: X-Debug, value: '1'}]}]}]}",
        )
        .unwrap();
        let m = &p.ingress[0].http[0];
        assert_eq!(m.methods, ["GET", "HEAD"]);
        assert_eq!(
            m.paths,
            [
                api::HttpPathMatch { prefix: true, value: "/public".into() },
                api::HttpPathMatch { prefix: false, value: "/x".into() }
            ],
            "a prefix without its trailing '/'"
        );
        assert_eq!(m.headers, [api::NameValue { name: "x-debug".into(), value: "1".into() }]);
    }

    #[test]
    fn principals_are_normalised_to_identities() {
        let p = cluster_mesh_policy(
            "spec: {ingress: [{action: Allow, ports: [{port: 80}], principals: [{namespace: demo, serviceAccount: client}, {spiffeId: 'spiffe://example.org/ns/x/sa/y'}]}]}",
        )
        .unwrap();
        let principals = &p.ingress[0].principals;
        assert_eq!(
            principals,
            &[
                api::Principal {
                    trust_domain: String::new(),
                    namespace: "demo".into(),
                    service_account: "client".into()
                },
                api::Principal {
                    trust_domain: "example.org".into(),
                    namespace: "x".into(),
                    service_account: "y".into()
                },
            ]
        );
        assert!(p.ingress[0].peers.is_empty());
    }

    fn peer(namespace: &str, yaml: &str) -> Result<api::PeerAuthentication, Invalid> {
        let p: crate::crd::PeerAuthentication = mesh_common::yaml::document(&format!(
            "{{apiVersion: mesh.dev/v1alpha1, kind: PeerAuthentication, metadata: {{name: p, namespace: {namespace}}}, {yaml}}}"
        ))
        .unwrap();
        peer_authentication(namespace, "p", &p.spec, crate::crd::DEFAULT_ROOT_NAMESPACE)
    }

    #[test]
    fn a_peer_authentication_is_mesh_wide_only_in_the_root_namespace_without_a_selector() {
        let root = peer("mesh-system", "spec: {mtls: {mode: STRICT}}").unwrap();
        assert!(root.mesh_wide && root.selector.is_none());
        assert_eq!(root.mode, api::MtlsMode::Strict as i32);
        let namespace = peer("demo", "spec: {mtls: {mode: PERMISSIVE}}").unwrap();
        assert!(!namespace.mesh_wide);
        let selected = peer(
            "mesh-system",
            "spec: {selector: {matchLabels: {app: web}}, portLevelMtls: {'8080': {mode: DISABLE}}}",
        )
        .unwrap();
        assert!(!selected.mesh_wide, "a selector makes it a workload policy, even in the root namespace");
        assert_eq!(selected.mode, api::MtlsMode::Unset as i32);
        assert_eq!(selected.port_modes[&8080], api::MtlsMode::Disable as i32);
    }

    #[test]
    fn bad_peer_authentications_are_refused_with_the_field() {
        let err = peer("demo", "spec: {portLevelMtls: {'8080': {mode: STRICT}}}").unwrap_err();
        assert_eq!(err.field, "spec.portLevelMtls");
        assert!(err.message.contains("spec.selector"), "{err:?}");
        let err = peer("demo", "spec: {selector: {}, portLevelMtls: {http: {mode: STRICT}}}").unwrap_err();
        assert_eq!(err.field, "spec.portLevelMtls.http");
        let err = peer("demo", "spec: {selector: {}, portLevelMtls: {'0': {mode: STRICT}}}").unwrap_err();
        assert_eq!(err.field, "spec.portLevelMtls.0");
        let typo = mesh_common::yaml::document::<crate::crd::PeerAuthentication>(
            "{apiVersion: mesh.dev/v1alpha1, kind: PeerAuthentication, metadata: {name: p}, spec: {mtls: {mode: STRIKT}}}",
        );
        assert!(typo.is_err(), "an unknown mode is refused when read");
    }
}
