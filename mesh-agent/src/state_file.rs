//! The static state file: this node's pods and the services to balance across them. The
//! control-plane stream replaces it; it stays as a test input.
//!
//! ```yaml
//! pods:
//!   - name: backend-a
//!     ip: 10.244.0.3
//! services:
//!   - name: web
//!     ip: 10.96.0.10
//!     port: 80
//!     protocol: TCP        # TCP (default) or UDP
//!     backends:
//!       - pod: backend-a
//!         port: 8080
//! ```

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    #[serde(default)]
    pub pods: Vec<Pod>,
    #[serde(default)]
    pub services: Vec<Service>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub ip: Ipv4Addr,
    pub port: Port,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub backends: Vec<BackendRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendRef {
    /// Name of a pod under `pods:`.
    pub pod: String,
    pub port: Port,
}

/// A TCP/UDP port, 1 to 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Port(pub u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = i64::deserialize(deserializer)?;
        match u16::try_from(value) {
            Ok(port) if port != 0 => Ok(Self(port)),
            _ => Err(serde::de::Error::custom(format_args!("port {value} is out of range: use 1 to 65535"))),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
pub enum Protocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

impl Protocol {
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => mesh_common::proto::TCP,
            Self::Udp => mesh_common::proto::UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        })
    }
}

/// What is wrong with a state file: the file, the field (a path such as
/// `services[0].backends[1].pod`) and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// Unreadable, or over the size limit.
    #[error("{file}: {source}")]
    Read { file: PathBuf, source: mesh_common::yaml::YamlError },
    #[error("{file}: {field}: {message}")]
    Invalid { file: PathBuf, field: String, message: String },
}

impl StateFile {
    /// Reads, parses and validates `file`.
    pub fn load(file: &Path) -> Result<Self, StateFileError> {
        let text = mesh_common::yaml::read_file(file)
            .map_err(|source| StateFileError::Read { file: file.to_owned(), source })?;
        Self::parse(&text).map_err(|(field, message)| StateFileError::Invalid { file: file.to_owned(), field, message })
    }

    /// Parses and validates `text`; an error is `(field, message)`.
    pub fn parse(text: &str) -> Result<Self, (String, String)> {
        let state: Self = mesh_common::yaml::document(text)?;
        state.validate()?;
        Ok(state)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let mut pod_names = HashSet::new();
        let mut pod_ips = HashMap::new();
        for (i, pod) in self.pods.iter().enumerate() {
            if !crate::config::is_dns_subdomain(&pod.name) {
                return Err((
                    format!("pods[{i}].name"),
                    format!("{:?} is not a valid pod name: use lowercase letters, digits, '-' and '.'", pod.name),
                ));
            }
            if !pod_names.insert(pod.name.as_str()) {
                return Err((format!("pods[{i}].name"), format!("pod {:?} is declared twice", pod.name)));
            }
            if let Some(other) = pod_ips.insert(pod.ip, pod.name.as_str()) {
                return Err((format!("pods[{i}].ip"), format!("{} is already the address of pod {other:?}", pod.ip)));
            }
            if pod.ip.is_unspecified() || pod.ip.is_broadcast() || pod.ip.is_multicast() {
                return Err((format!("pods[{i}].ip"), format!("{} cannot be a pod address", pod.ip)));
            }
        }
        let mut frontends = HashSet::new();
        for (i, service) in self.services.iter().enumerate() {
            if !crate::config::is_dns_subdomain(&service.name) {
                return Err((format!("services[{i}].name"), format!("{:?} is not a valid service name", service.name)));
            }
            if service.ip.is_unspecified() || service.ip.is_broadcast() || service.ip.is_multicast() {
                return Err((format!("services[{i}].ip"), format!("{} cannot be a service address", service.ip)));
            }
            if !frontends.insert((service.ip, service.port, service.protocol)) {
                return Err((
                    format!("services[{i}]"),
                    format!(
                        "{}:{}/{} is already the address of another service",
                        service.ip, service.port.0, service.protocol
                    ),
                ));
            }
            if service.backends.len() > usize::from(u16::MAX) {
                return Err((
                    format!("services[{i}].backends"),
                    format!("{} backends; at most {} are allowed", service.backends.len(), u16::MAX),
                ));
            }
            for (j, backend) in service.backends.iter().enumerate() {
                if !pod_names.contains(backend.pod.as_str()) {
                    return Err((
                        format!("services[{i}].backends[{j}].pod"),
                        format!("no pod named {:?}: declare it under `pods:`", backend.pod),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The file as model resources for `node`: its pods are that node's workloads; each
    /// service gets one EndpointSlice per distinct backend port.
    pub fn resources(&self, node: &str) -> mesh_common::model::ResourceSet {
        use mesh_common::api::{self, resource::Kind as R};
        const NAMESPACE: &str = "default";
        let wrap = |kind| api::Resource { kind: Some(kind) };
        let mut set = mesh_common::model::ResourceSet::default();
        let mut insert = |resource: api::Resource| set.insert(resource);
        for pod in &self.pods {
            insert(wrap(R::Workload(Box::new(api::Workload {
                namespace: NAMESPACE.into(),
                name: pod.name.clone(),
                node: node.into(),
                ips: vec![pod.ip.to_string()],
                ..Default::default()
            }))));
        }
        for service in &self.services {
            let protocol = match service.protocol {
                Protocol::Tcp => api::Protocol::Tcp,
                Protocol::Udp => api::Protocol::Udp,
            } as i32;
            insert(wrap(R::Service(api::Service {
                namespace: NAMESPACE.into(),
                name: service.name.clone(),
                cluster_ips: vec![service.ip.to_string()],
                ports: vec![api::ServicePort {
                    name: "port".into(),
                    protocol,
                    port: u32::from(service.port.0),
                    ..Default::default()
                }],
                ..Default::default()
            })));
            let mut by_port: std::collections::BTreeMap<u16, Vec<api::Endpoint>> = std::collections::BTreeMap::new();
            for backend in &service.backends {
                let ip = self.pod_ip(&backend.pod).expect("validated: every backend names a pod");
                by_port.entry(backend.port.0).or_default().push(api::Endpoint {
                    addresses: vec![ip.to_string()],
                    node: node.into(),
                    pod: backend.pod.clone(),
                    ready: true,
                    serving: true,
                    terminating: false,
                });
            }
            for (port, endpoints) in by_port {
                insert(wrap(R::EndpointSlice(api::EndpointSlice {
                    namespace: NAMESPACE.into(),
                    name: format!("{}-{port}", service.name),
                    service: service.name.clone(),
                    ports: vec![api::EndpointPort { name: "port".into(), protocol, port: u32::from(port) }],
                    endpoints,
                })));
            }
        }
        set
    }

    /// The address of the pod named `name`.
    pub fn pod_ip(&self, name: &str) -> Option<Ipv4Addr> {
        self.pods.iter().find(|pod| pod.name == name).map(|pod| pod.ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "
pods:
  - {name: a, ip: 10.244.0.3}
  - {name: b, ip: 10.244.0.4}
services:
  - name: web
    ip: 10.96.0.10
    port: 80
    backends: [{pod: a, port: 8080}, {pod: b, port: 8080}]
";

    fn error_of(text: &str) -> (String, String) {
        StateFile::parse(text).unwrap_err()
    }

    #[test]
    fn a_valid_file_parses() {
        let state = StateFile::parse(GOOD).unwrap();
        assert_eq!(state.services[0].protocol, Protocol::Tcp);
        assert_eq!(state.services[0].port, Port(80));
        assert_eq!(state.pod_ip("b"), Some(Ipv4Addr::new(10, 244, 0, 4)));
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let state = StateFile::parse(include_str!("../../deploy/static/web-state.yaml")).unwrap();
        assert_eq!(state.services[0].backends.len(), 2);
    }

    #[test]
    fn an_unknown_pod_is_named_with_its_field() {
        let (field, message) = error_of(&GOOD.replace("{pod: b,", "{pod: zed,"));
        assert_eq!(field, "services[0].backends[1].pod");
        assert!(message.contains("\"zed\""), "{message}");
    }

    #[test]
    fn a_bad_ip_is_named_with_its_field() {
        let (field, message) = error_of(&GOOD.replace("10.96.0.10", "10.96.0.300"));
        assert_eq!(field, "services[0].ip");
        assert!(message.contains("IP"), "{message}");
    }

    #[test]
    fn ports_out_of_range_are_named_with_their_field() {
        let (field, message) = error_of(&GOOD.replace("port: 80\n", "port: 70000\n"));
        assert_eq!(field, "services[0].port");
        assert!(message.contains("70000"), "{message}");
        let (field, _) = error_of(&GOOD.replace("{pod: a, port: 8080}", "{pod: a, port: 0}"));
        assert_eq!(field, "services[0].backends[0].port");
    }

    #[test]
    fn unknown_keys_duplicates_and_bad_protocols_are_refused() {
        assert_eq!(error_of(&GOOD.replace("port: 80\n", "port: 80\n    prot: TCP\n")).0, "services[0].prot");
        assert_eq!(error_of(&GOOD.replace("port: 80\n", "port: 80\n    protocol: ICMP\n")).0, "services[0].protocol");
        assert_eq!(error_of(&GOOD.replace("10.244.0.4", "10.244.0.3")).0, "pods[1].ip");
        assert_eq!(error_of(&GOOD.replace("name: b", "name: a")).0, "pods[1].name");
    }
}
