//! Loading the kernel programs, attaching them, and leaving (or keeping) them on exit.
//!
//! Maps are pinned by name in the node's bpffs directory, and every link is pinned under
//! `links/` as soon as it is attached (named with this agent's generation), so the programs
//! stay attached however the agent ends: a crashed or SIGKILLed agent leaves the datapath
//! running on the last state it wrote, as Cilium's does. The next agent attaches its own
//! links and then removes the pins of the one before, so the datapath never has a gap. An
//! agent stopped without keep-datapath removes its pins (which detaches everything).

use std::{
    collections::BTreeMap,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, SockOps, TcAttachType, Xdp,
        cgroup_sock_addr::CgroupSockAddrLinkId,
        links::{FdLink, PinnedLink},
        sock_ops::SockOpsLinkId,
        tc::SchedClassifierLinkId,
        xdp::{XdpLinkId, XdpMode as AttachMode},
    },
};
use mesh_common::{maps, programs};

use crate::{
    config::XdpMode,
    devices::Device,
    netns,
    pod_iface::{self, PodInterface},
    policy_table::{PolicyTable, PolicyTableError},
    service_lb::{Capacities, ServiceLbError, ServiceTable},
    state_file::Pod,
};

/// The programs, built by `build.rs` from `mesh-ebpf`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mesh"));

/// Where pinned links live inside the node's bpffs directory.
const LINKS_DIR: &str = "links";

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("cannot create the bpffs directory {path}: {source}")]
    PinDir { path: PathBuf, source: std::io::Error },
    #[error(
        "loading the eBPF object failed: {0}; if a map's capacity changed, remove the pinned maps of this node (or give a new MESH_BPFFS directory)"
    )]
    Load(#[from] aya::EbpfError),
    #[error("program {name} is not in the loaded object")]
    MissingProgram { name: &'static str },
    #[error("program {name}: {source}")]
    Program { name: &'static str, source: aya::programs::ProgramError },
    #[error("cannot open cgroup {path}: {source}; check MESH_CGROUP")]
    Cgroup { path: PathBuf, source: std::io::Error },
    #[error("attaching {name} to {target} failed: {source}")]
    Attach { name: &'static str, target: String, source: aya::programs::ProgramError },
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error(transparent)]
    PodInterface(#[from] pod_iface::PodIfaceError),
    #[error(transparent)]
    ServiceLb(#[from] ServiceLbError),
    #[error("pinning link {path} failed: {reason}")]
    PinLink { path: PathBuf, reason: String },
    #[error("map {map} is not in the loaded object")]
    MissingMap { map: &'static str },
    #[error("map {map} has an unexpected type: {reason}")]
    MapType { map: &'static str, reason: String },
    #[error(
        "map {map} is pinned at {path} with capacity {pinned}, but {wanted} is configured: set the capacity back, or stop the agent without --keep-datapath (which removes the pins) and start it with the new capacity"
    )]
    CapacityChanged { map: &'static str, path: PathBuf, pinned: u32, wanted: u32 },
}

enum LinkId {
    Cgroup(CgroupSockAddrLinkId),
    SockOps(SockOpsLinkId),
    Tc(SchedClassifierLinkId),
    Xdp(XdpLinkId),
}

/// One attachment the agent made, pinned.
struct Attachment {
    program: &'static str,
    /// What it is attached to, for logs and pin names: `cgroup` or an interface name.
    target: String,
    link: PinnedLink,
}

/// A pod whose interface carries the TC programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedPod {
    pub pod: String,
    pub ip: std::net::Ipv4Addr,
    pub iface: PodInterface,
}

/// The loaded programs and what they are attached to.
pub struct Datapath {
    ebpf: Ebpf,
    bpffs: PathBuf,
    /// The socket hooks on the node cgroup.
    attachments: Vec<Attachment>,
    /// That cgroup, once attached.
    cgroup: Option<PathBuf>,
    capacities: Capacities,
    /// Each local pod (by name) with its interface and its two TC links.
    pods: BTreeMap<String, (AttachedPod, Vec<Attachment>)>,
    /// Links a previous agent left pinned; removed once this agent's own are attached.
    previous_links: Vec<PathBuf>,
    /// This agent's links directory and the suffix of its pins.
    links_dir: PathBuf,
    generation: String,
    /// A level of `mesh_common::flows::aggregation`: at `MAXIMUM`, `sockops` stays detached.
    flow_aggregation: u8,
    /// The external interfaces' programs, by program and interface name: the interface, its
    /// link, and how it was attached (`xdp native`, `xdp generic (...)`, `tcx ingress`).
    devices: BTreeMap<(&'static str, String), (Device, Attachment, String)>,
}

impl Datapath {
    /// Loads the object, reusing the maps pinned in `bpffs` (created if missing) when their
    /// capacities are the configured ones, with the socket programs reporting at
    /// `flow_aggregation` (a level of `mesh_common::flows::aggregation`).
    pub fn load(bpffs: &Path, capacities: Capacities, flow_aggregation: u8) -> Result<Self, DatapathError> {
        std::fs::create_dir_all(bpffs).map_err(|source| DatapathError::PinDir { path: bpffs.to_owned(), source })?;
        let links_dir = bpffs.join(LINKS_DIR);
        let previous_links = std::fs::read_dir(&links_dir)
            .map(|dir| dir.filter_map(Result::ok).map(|entry| entry.path()).collect())
            .unwrap_or_default();
        std::fs::create_dir_all(&links_dir)
            .map_err(|source| DatapathError::PinDir { path: links_dir.clone(), source })?;
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        // bpffs refuses names with a '.'.
        let generation = format!("{}_{}", since_epoch.as_millis(), std::process::id());
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(bpffs);
        for (map, wanted) in capacities.by_map() {
            let path = bpffs.join(map);
            if let Ok(pinned) = aya::maps::MapData::from_pin(&path)
                && let Ok(info) = pinned.info()
                && info.max_entries() != wanted
            {
                return Err(DatapathError::CapacityChanged { map, path, pinned: info.max_entries(), wanted });
            }
            loader.map_max_entries(map, wanted);
        }
        loader.override_global(mesh_common::flows::aggregation::GLOBAL, &flow_aggregation, true);
        let ebpf = loader.load(OBJECT)?;
        tracing::info!(bpffs = %bpffs.display(), maps = ?maps::ALL, ?capacities, "programs loaded, maps pinned");
        Ok(Self {
            ebpf,
            bpffs: bpffs.to_owned(),
            attachments: Vec::new(),
            cgroup: None,
            capacities,
            pods: BTreeMap::new(),
            previous_links,
            links_dir,
            generation,
            flow_aggregation,
            devices: BTreeMap::new(),
        })
    }

    /// Attaches the socket hooks (`connect4`, `sendmsg4`, `recvmsg4`, `getpeername4`) to the
    /// cgroup v2 directory `cgroup`, and `sockops` if the tunnel is on (it tells the agent
    /// where redirected connections go) or the flow aggregation level is below `maximum`.
    pub fn attach_cgroup(&mut self, cgroup: &Path, tunnel: bool) -> Result<(), DatapathError> {
        let file =
            std::fs::File::open(cgroup).map_err(|source| DatapathError::Cgroup { path: cgroup.to_owned(), source })?;
        for name in programs::SOCKET_HOOKS {
            let program: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            program.load().map_err(|source| DatapathError::Program { name, source })?;
            let id = program
                .attach(file.as_fd(), CgroupAttachMode::default())
                .map_err(|source| DatapathError::Attach { name, target: cgroup.display().to_string(), source })?;
            tracing::info!(program = name, cgroup = %cgroup.display(), "attached");
            let attachment = self.pin(name, "cgroup", LinkId::Cgroup(id))?;
            self.attachments.push(attachment);
        }
        self.cgroup = Some(cgroup.to_owned());
        if self.flow_aggregation == mesh_common::flows::aggregation::MAXIMUM && !tunnel {
            tracing::info!(program = programs::SOCKOPS, "not attached: flow aggregation is maximum (no socket events)");
            return Ok(());
        }
        let name = programs::SOCKOPS;
        let program: &mut SockOps = program(&mut self.ebpf, name)?;
        program.load().map_err(|source| DatapathError::Program { name, source })?;
        let id = program.attach(file.as_fd(), CgroupAttachMode::default()).map_err(|source| DatapathError::Attach {
            name,
            target: cgroup.display().to_string(),
            source,
        })?;
        tracing::info!(program = name, cgroup = %cgroup.display(), "attached");
        let attachment = self.pin(name, "cgroup", LinkId::SockOps(id))?;
        self.attachments.push(attachment);
        Ok(())
    }

    /// Every attachment: (program, where it is attached, the pod it serves).
    pub fn programs(&self) -> Vec<(&'static str, String, String)> {
        let cgroup = self.cgroup.as_deref().map(|c| c.display().to_string()).unwrap_or_default();
        let mut all: Vec<_> =
            self.attachments.iter().map(|a| (a.program, format!("cgroup {cgroup}"), String::new())).collect();
        for (pod, links) in self.pods.values() {
            for link in links {
                let hook = if link.program == programs::FROM_POD { "tcx ingress" } else { "tcx egress" };
                all.push((link.program, format!("{hook} {}", link.target), pod.pod.clone()));
            }
        }
        for (device, link, how) in self.devices.values() {
            all.push((link.program, format!("{how} {}", device.name), String::new()));
        }
        all
    }

    /// The flow event ring buffer and its lost-event counter, taken out of the object.
    pub fn flow_events(&mut self) -> Result<(RingBuf<MapData>, PerCpuArray<MapData, u64>), DatapathError> {
        let events = self.ebpf.take_map(maps::EVENTS).ok_or(DatapathError::MissingMap { map: maps::EVENTS })?;
        let lost = self.ebpf.take_map(maps::EVENTS_LOST).ok_or(DatapathError::MissingMap { map: maps::EVENTS_LOST })?;
        let events = RingBuf::try_from(events)
            .map_err(|source| DatapathError::MapType { map: maps::EVENTS, reason: source.to_string() })?;
        let lost = PerCpuArray::try_from(lost)
            .map_err(|source| DatapathError::MapType { map: maps::EVENTS_LOST, reason: source.to_string() })?;
        Ok((events, lost))
    }

    /// The tunnel's maps, taken out of the object: the destination table and listener (to
    /// write) and the redirected connections' origins (to read).
    pub fn tunnel_redirect(
        &mut self,
    ) -> Result<
        (crate::tunnel::redirect::Redirect, crate::tunnel::redirect::Origins),
        crate::tunnel::redirect::RedirectError,
    > {
        crate::tunnel::redirect::Redirect::new(&mut self.ebpf, &self.bpffs)
    }

    /// The node's bpffs directory, where every map is pinned.
    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    /// Makes the TC programs sit on exactly the interfaces of `pods`: attaches the new ones
    /// (finding each interface from the route to the pod's address, inside `netns`) and
    /// detaches the ones gone. Returns one error per pod that could not be attached; those
    /// are tried again at the next call.
    pub fn sync_pods(&mut self, netns: Option<&Path>, pods: &[Pod]) -> Vec<DatapathError> {
        let mut errors = Vec::new();
        let gone: Vec<String> = self
            .pods
            .iter()
            .filter(|(name, (attached, _))| !pods.iter().any(|p| &p.name == *name && attached.ip == p.ip))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            let (attached, links) = self.pods.remove(&name).expect("listed above");
            for attachment in links {
                if let Err(err) = detach(attachment) {
                    errors.push(err);
                }
            }
            tracing::info!(pod = %name, iface = %attached.iface.name, "detached TC programs");
        }
        let new: Vec<&Pod> = pods.iter().filter(|p| !self.pods.contains_key(&p.name)).collect();
        if new.is_empty() {
            return errors;
        }
        for name in [programs::FROM_POD, programs::TO_POD] {
            let loaded = program::<SchedClassifier>(&mut self.ebpf, name).and_then(|program| {
                if program.fd().is_ok() {
                    Ok(())
                } else {
                    program.load().map_err(|source| DatapathError::Program { name, source })
                }
            });
            if let Err(err) = loaded {
                errors.push(err);
                return errors;
            }
        }
        let (ebpf, links_dir, generation) = (&mut self.ebpf, &self.links_dir, &self.generation);
        let attached =
            netns::run_in(netns, || {
                new.iter()
                    .map(|pod| {
                        let iface = pod_iface::find(&pod.name, pod.ip)?;
                        let mut links = Vec::new();
                        for (name, hook) in
                            [(programs::FROM_POD, TcAttachType::Ingress), (programs::TO_POD, TcAttachType::Egress)]
                        {
                            let program: &mut SchedClassifier = program(ebpf, name)?;
                            let attached = program
                                .attach(iface.ifindex, hook)
                                .map_err(|source| DatapathError::Attach { name, target: iface.name.clone(), source });
                            let pinned = attached
                                .and_then(|id| pin(ebpf, links_dir, generation, name, &iface.name, LinkId::Tc(id)));
                            match pinned {
                                Ok(attachment) => links.push(attachment),
                                Err(err) => {
                                    links.into_iter().for_each(|link| drop(detach(link)));
                                    return Err(err);
                                }
                            }
                        }
                        Ok((AttachedPod { pod: pod.name.clone(), ip: pod.ip, iface }, links))
                    })
                    .collect::<Vec<Result<_, DatapathError>>>()
            });
        match attached {
            Err(err) => errors.push(err.into()),
            Ok(results) => {
                for result in results {
                    match result {
                        Ok((pod, links)) => {
                            tracing::info!(pod = %pod.pod, ip = %pod.ip, iface = %pod.iface.name, ifindex = pod.iface.ifindex, "attached TC programs (tcx ingress + egress)");
                            self.pods.insert(pod.pod.clone(), (pod, links));
                        }
                        Err(err) => errors.push(err),
                    }
                }
            }
        }
        errors
    }

    /// Makes XDP (`mesh_from_wire`, the prefilter) sit on exactly the interfaces `xdp`, and TC
    /// ingress (`mesh_from_netdev`, services from outside) on exactly `tc` (interfaces of the
    /// node's namespace): attaches the new ones (XDP in `mode`; native falls back to generic,
    /// and says why), detaches the ones gone. Returns one error per attachment that failed;
    /// those are tried again at the next call.
    pub fn sync_devices(
        &mut self,
        netns: Option<&Path>,
        xdp: &[Device],
        tc: &[Device],
        mode: XdpMode,
    ) -> Vec<DatapathError> {
        let mut errors = Vec::new();
        let wanted = |program: &str, device: &Device| {
            if program == programs::FROM_WIRE { xdp.contains(device) } else { tc.contains(device) }
        };
        let gone: Vec<(&'static str, String)> = self
            .devices
            .iter()
            .filter(|((program, _), (attached, _, _))| !wanted(program, attached))
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            let (_, link, _) = self.devices.remove(&key).expect("listed above");
            if let Err(err) = detach(link) {
                errors.push(err);
            }
            tracing::info!(program = key.0, device = %key.1, "detached");
        }
        let new: Vec<(&'static str, &Device)> = xdp
            .iter()
            .map(|d| (programs::FROM_WIRE, d))
            .chain(tc.iter().map(|d| (programs::FROM_NETDEV, d)))
            .filter(|(program, d)| !self.devices.contains_key(&(*program, d.name.clone())))
            .collect();
        for name in [programs::FROM_WIRE, programs::FROM_NETDEV] {
            if !new.iter().any(|(program, _)| *program == name) {
                continue;
            }
            let loaded = if name == programs::FROM_WIRE {
                program::<Xdp>(&mut self.ebpf, name).and_then(|program| match program.fd() {
                    Ok(_) => Ok(()),
                    Err(_) => program.load().map_err(|source| DatapathError::Program { name, source }),
                })
            } else {
                program::<SchedClassifier>(&mut self.ebpf, name).and_then(|program| match program.fd() {
                    Ok(_) => Ok(()),
                    Err(_) => program.load().map_err(|source| DatapathError::Program { name, source }),
                })
            };
            if let Err(err) = loaded {
                errors.push(err);
                return errors;
            }
        }
        if new.is_empty() {
            return errors;
        }
        let (ebpf, links_dir, generation) = (&mut self.ebpf, &self.links_dir, &self.generation);
        let previous = &self.previous_links;
        let attached = netns::run_in(netns, || {
            new.iter()
                .map(|&(name, device)| {
                    let target = || device.name.clone();
                    let (id, how) = if name == programs::FROM_NETDEV {
                        let program: &mut SchedClassifier = program(ebpf, name)?;
                        let id = program
                            .attach(device.ifindex, TcAttachType::Ingress)
                            .map_err(|source| DatapathError::Attach { name, target: target(), source })?;
                        (LinkId::Tc(id), "tcx ingress".to_owned())
                    } else {
                        let program: &mut Xdp = program(ebpf, name)?;
                        // An interface holds one XDP link: a previous agent's (kept datapath,
                        // rolling update) gets this agent's program in place, atomically.
                        let prefix = format!("{name}-{}-", device.name.replace('.', "_"));
                        let taken = previous
                            .iter()
                            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix)))
                            .and_then(|path| {
                                let link = FdLink::from(PinnedLink::from_pin(path).ok()?);
                                program.attach_to_link(aya::programs::xdp::XdpLink::try_from(link).ok()?).ok()
                            });
                        if let Some(id) = taken {
                            let link = pin(ebpf, links_dir, generation, name, &device.name, LinkId::Xdp(id))?;
                            return Ok((name, device.clone(), link, "xdp (the previous agent's link)".to_owned()));
                        }
                        let mut attach = |flags| {
                            program
                                .attach(device.ifindex, flags)
                                .map_err(|source| DatapathError::Attach { name, target: target(), source })
                        };
                        let (id, how) = match mode {
                            XdpMode::Generic => (attach(AttachMode::Skb)?, "xdp generic".to_owned()),
                            XdpMode::Native => match attach(AttachMode::Driver) {
                                Ok(id) => (id, "xdp native".to_owned()),
                                Err(native) => {
                                    let id = attach(AttachMode::Skb)?;
                                    tracing::warn!(device = %device.name, "native XDP refused ({native}): attached in generic mode");
                                    (id, format!("xdp generic (native refused: {native})"))
                                }
                            },
                        };
                        (LinkId::Xdp(id), how)
                    };
                    let link = pin(ebpf, links_dir, generation, name, &device.name, id)?;
                    Ok((name, device.clone(), link, how))
                })
                .collect::<Vec<Result<_, DatapathError>>>()
        });
        match attached {
            Err(err) => errors.push(err.into()),
            Ok(results) => {
                for result in results {
                    match result {
                        Ok((name, device, link, how)) => {
                            tracing::info!(program = name, device = %device.name, ifindex = device.ifindex, %how, "attached");
                            self.devices.insert((name, device.name.clone()), (device, link, how));
                        }
                        Err(err) => errors.push(err),
                    }
                }
            }
        }
        errors
    }

    /// The pods whose interfaces carry the TC programs.
    pub fn attached_pods(&self) -> impl Iterator<Item = &AttachedPod> {
        self.pods.values().map(|(pod, _)| pod)
    }

    /// The service maps, taken out of the object for the caller to program.
    pub fn service_table(&mut self) -> Result<ServiceTable, DatapathError> {
        let services = self.ebpf.take_map(maps::SERVICES).ok_or(ServiceLbError::MissingMap { map: maps::SERVICES })?;
        let backends = self.ebpf.take_map(maps::BACKENDS).ok_or(ServiceLbError::MissingMap { map: maps::BACKENDS })?;
        let addrs =
            self.ebpf.take_map(maps::BACKEND_ADDRS).ok_or(ServiceLbError::MissingMap { map: maps::BACKEND_ADDRS })?;
        let filter =
            self.ebpf.take_map(maps::BACKEND_FILTER).ok_or(ServiceLbError::MissingMap { map: maps::BACKEND_FILTER })?;
        Ok(ServiceTable::new(services, backends, addrs, filter, self.capacities)?)
    }

    /// The maps of services from outside, taken out of the object for the caller to program.
    pub fn nodeport_table(&mut self) -> Result<crate::nodeport::NodePortTable, crate::nodeport::NodePortError> {
        let c = self.capacities;
        crate::nodeport::NodePortTable::new(&mut self.ebpf, c.maglev_size, c.maglev_tables, c.services)
    }

    /// The policy maps, taken out of the object for the caller to program.
    pub fn policy_table(&mut self) -> Result<PolicyTable, PolicyTableError> {
        PolicyTable::new(&mut self.ebpf, self.capacities)
    }

    /// Removes the pinned links of a previous agent: this agent's own are attached by now.
    pub fn take_over(&mut self) {
        for path in std::mem::take(&mut self.previous_links) {
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::info!(link = %path.display(), "took over from the previous agent's link"),
                Err(err) => tracing::warn!(link = %path.display(), "cannot remove a previous agent's link: {err}"),
            }
        }
    }

    /// Pins a link this agent just attached.
    fn pin(&mut self, program: &'static str, target: &str, id: LinkId) -> Result<Attachment, DatapathError> {
        pin(&mut self.ebpf, &self.links_dir, &self.generation, program, target, id)
    }

    /// Ends the agent's hold on the datapath. With `keep`, the links stay pinned and the maps
    /// stay: the programs go on running. Without, everything is detached and the pins are
    /// removed.
    pub fn shutdown(mut self, keep: bool) -> Result<(), DatapathError> {
        let pod_links = std::mem::take(&mut self.pods).into_values().flat_map(|(_, links)| links);
        let device_links = std::mem::take(&mut self.devices).into_values().map(|(_, link, _)| link);
        let all: Vec<Attachment> =
            std::mem::take(&mut self.attachments).into_iter().chain(pod_links).chain(device_links).collect();
        if keep {
            drop(all);
            tracing::info!(bpffs = %self.bpffs.display(), "datapath kept: links and maps stay pinned");
            return Ok(());
        }
        let mut first_error = None;
        for attachment in all {
            if let Err(err) = detach(attachment) {
                first_error.get_or_insert(err);
            }
        }
        let bpffs = self.bpffs.clone();
        drop(self);
        for map in maps::ALL {
            let _ = std::fs::remove_file(bpffs.join(map));
        }
        let _ = std::fs::remove_dir_all(bpffs.join(LINKS_DIR));
        let _ = std::fs::remove_dir(&bpffs);
        tracing::info!(bpffs = %bpffs.display(), "datapath detached, pins removed");
        first_error.map_or(Ok(()), Err)
    }
}

/// Takes the link `id` of `program` from the object and pins it under `links_dir`: from now
/// on it outlives the agent until its pin is removed.
fn pin(
    ebpf: &mut Ebpf,
    links_dir: &Path,
    generation: &str,
    program: &'static str,
    target: &str,
    id: LinkId,
) -> Result<Attachment, DatapathError> {
    let path = links_dir.join(format!("{program}-{}-{generation}", target.replace('.', "_")));
    let link = take_link(ebpf, program, id).map_err(|reason| DatapathError::PinLink { path: path.clone(), reason })?;
    let _ = std::fs::remove_file(&path);
    let link = link.pin(&path).map_err(|err| DatapathError::PinLink { path: path.clone(), reason: err.to_string() })?;
    Ok(Attachment { program, target: target.to_owned(), link })
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, DatapathError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or(DatapathError::MissingProgram { name })?;
    program.try_into().map_err(|source| DatapathError::Program { name, source })
}

/// Removes the pin of `attachment`; closing its last descriptor detaches the program.
fn detach(attachment: Attachment) -> Result<(), DatapathError> {
    let Attachment { program, target, link } = attachment;
    link.unpin().map(drop).map_err(|err| DatapathError::PinLink {
        path: PathBuf::from(format!("{program} on {target}")),
        reason: format!("cannot remove the pin: {err}"),
    })
}

fn take_link(ebpf: &mut Ebpf, name: &'static str, id: LinkId) -> Result<FdLink, String> {
    let err = |e: &dyn std::fmt::Display| format!("{name}: {e}");
    match id {
        LinkId::Cgroup(id) => {
            let program: &mut CgroupSockAddr = program(ebpf, name).map_err(|e| err(&e))?;
            let link = program.take_link(id).map_err(|e| err(&e))?;
            FdLink::try_from(link).map_err(|e| err(&e))
        }
        LinkId::SockOps(id) => {
            let program: &mut SockOps = program(ebpf, name).map_err(|e| err(&e))?;
            let link = program.take_link(id).map_err(|e| err(&e))?;
            FdLink::try_from(link).map_err(|e| err(&e))
        }
        LinkId::Tc(id) => {
            let program: &mut SchedClassifier = program(ebpf, name).map_err(|e| err(&e))?;
            let link = program.take_link(id).map_err(|e| err(&e))?;
            FdLink::try_from(link).map_err(|e| err(&e))
        }
        LinkId::Xdp(id) => {
            let program: &mut Xdp = program(ebpf, name).map_err(|e| err(&e))?;
            let link = program.take_link(id).map_err(|e| err(&e))?;
            FdLink::try_from(link).map_err(|e| err(&e))
        }
    }
}
