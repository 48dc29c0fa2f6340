//! Which connections to a pod must be mutual TLS: PeerAuthentications resolved for one
//! workload, as Istio resolves them. The most specific scope that sets a mode decides
//! (workload selector, then namespace, then mesh-wide); `UNSET` inherits; with nothing set the
//! mode is PERMISSIVE. Per-port modes come from the workload-level policy only (an `UNSET`
//! port inherits the pod's mode). Where several policies of one scope apply, Istio takes the
//! oldest; the model carries no creation time, so the first by name decides here.

use std::collections::BTreeMap;

use mesh_common::{
    api::{self, MtlsMode, resource},
    model::ResourceSet,
};

/// A workload's effective mutual-TLS mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    Disable,
    Permissive,
    Strict,
}

impl Mode {
    fn of(mode: i32) -> Option<Self> {
        match MtlsMode::try_from(mode).ok()? {
            MtlsMode::Unset => None,
            MtlsMode::Disable => Some(Self::Disable),
            MtlsMode::Permissive => Some(Self::Permissive),
            MtlsMode::Strict => Some(Self::Strict),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "DISABLE",
            Self::Permissive => "PERMISSIVE",
            Self::Strict => "STRICT",
        }
    }
}

/// One workload's modes: for every port, but those listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadMtls {
    pub mode: Mode,
    pub ports: BTreeMap<u16, Mode>,
}

impl WorkloadMtls {
    /// The mode of connections to `port`.
    pub fn for_port(&self, port: u16) -> Mode {
        self.ports.get(&port).copied().unwrap_or(self.mode)
    }
}

/// The PeerAuthentications of `model` resolved for `workload`.
pub fn resolve(model: &ResourceSet, workload: &api::Workload) -> WorkloadMtls {
    let (mut mesh, mut namespace, mut selected) = (None, None, None);
    for resource in model.of_kind(api::Kind::PeerAuthentication) {
        let Some(resource::Kind::PeerAuthentication(p)) = &resource.kind else { continue };
        if p.mesh_wide {
            mesh = mesh.or(Some(p.as_ref()));
        } else if p.namespace != workload.namespace {
            continue;
        } else if let Some(selector) = &p.selector {
            if crate::policy::selects(selector, |key| workload.labels.get(key).map(String::as_str)) {
                selected = selected.or(Some(p.as_ref()));
            }
        } else {
            namespace = namespace.or(Some(p.as_ref()));
        }
    }
    let mode =
        [selected, namespace, mesh].into_iter().flatten().find_map(|p| Mode::of(p.mode)).unwrap_or(Mode::Permissive);
    let ports = selected
        .into_iter()
        .flat_map(|p| p.port_modes.iter())
        .filter_map(|(port, m)| Some((u16::try_from(*port).ok()?, Mode::of(*m).unwrap_or(mode))))
        .collect();
    WorkloadMtls { mode, ports }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(namespace: &str, name: &str, mesh_wide: bool, app: Option<&str>, mode: MtlsMode) -> api::Resource {
        api::Resource {
            kind: Some(resource::Kind::PeerAuthentication(Box::new(api::PeerAuthentication {
                namespace: namespace.into(),
                name: name.into(),
                mesh_wide,
                selector: app.map(|app| api::LabelSelector {
                    match_labels: [("app".to_owned(), app.to_owned())].into(),
                    ..Default::default()
                }),
                mode: mode as i32,
                port_modes: Default::default(),
            }))),
        }
    }

    fn workload(namespace: &str, app: &str) -> api::Workload {
        api::Workload {
            namespace: namespace.into(),
            name: format!("{app}-0"),
            labels: [("app".to_owned(), app.to_owned())].into(),
            ..Default::default()
        }
    }

    fn model(resources: Vec<api::Resource>) -> ResourceSet {
        let mut set = ResourceSet::default();
        resources.into_iter().for_each(|r| set.insert(r));
        set
    }

    #[test]
    fn strict_pods_are_this_nodes_pods_with_a_strict_mode() {
        let on = |app: &str, node: &str| {
            let name = format!("{app}-{node}");
            let workload = api::Workload { node: node.into(), name, ..workload("demo", app) };
            api::Resource { kind: Some(resource::Kind::Workload(Box::new(workload))) }
        };
        let pods = vec![on("web", "node-0"), on("db", "node-0"), on("web", "node-1")];
        assert!(super::super::strict_pods(&model(pods.clone()), "node-0").is_empty(), "nothing STRICT");
        let strict = peer("demo", "web", false, Some("web"), MtlsMode::Strict);
        let set = model([pods, vec![strict]].concat());
        assert_eq!(super::super::strict_pods(&set, "node-0"), vec!["demo/web-node-0".to_owned()]);
    }

    #[test]
    fn the_most_specific_scope_that_sets_a_mode_decides() {
        let web = workload("demo", "web");
        assert_eq!(resolve(&model(vec![]), &web).mode, Mode::Permissive, "nothing set: PERMISSIVE");
        let mesh = peer("mesh-system", "default", true, None, MtlsMode::Strict);
        assert_eq!(resolve(&model(vec![mesh.clone()]), &web).mode, Mode::Strict);
        let namespace = peer("demo", "ns", false, None, MtlsMode::Disable);
        assert_eq!(resolve(&model(vec![mesh.clone(), namespace.clone()]), &web).mode, Mode::Disable);
        let unset = peer("demo", "web-unset", false, Some("web"), MtlsMode::Unset);
        let set = model(vec![mesh.clone(), namespace.clone(), unset]);
        assert_eq!(resolve(&set, &web).mode, Mode::Disable, "an UNSET workload policy inherits");
        let strict = peer("demo", "web-strict", false, Some("web"), MtlsMode::Strict);
        let set = model(vec![mesh.clone(), namespace.clone(), strict]);
        assert_eq!(resolve(&set, &web).mode, Mode::Strict);
        assert_eq!(resolve(&set, &workload("demo", "api")).mode, Mode::Disable, "the selector picks web only");
        assert_eq!(resolve(&set, &workload("other", "web")).mode, Mode::Strict, "other namespaces: the mesh's");
    }

    #[test]
    fn ports_come_from_the_workload_policy_and_unset_ports_inherit() {
        let mut selected = peer("demo", "web", false, Some("web"), MtlsMode::Strict);
        if let Some(resource::Kind::PeerAuthentication(p)) = &mut selected.kind {
            p.port_modes = [(8080, MtlsMode::Disable as i32), (9090, MtlsMode::Unset as i32)].into();
        }
        let resolved = resolve(&model(vec![selected]), &workload("demo", "web"));
        assert_eq!(resolved.for_port(8080), Mode::Disable);
        assert_eq!(resolved.for_port(9090), Mode::Strict);
        assert_eq!(resolved.for_port(80), Mode::Strict);
    }
}
