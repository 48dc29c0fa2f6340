//! The mesh's images run as its Kubernetes manifests run them (issue 15): the operator's and the
//! agent's images are built from scratch (`mesh_tests::image`, the debug binaries) into a store
//! of the test's own, and started with podman from `deploy/kubernetes/operator.yaml` and
//! `agent.yaml` themselves: every field of their pod specs is translated to podman's options
//! (host network → the lab node's namespace, hostPath mounts, capabilities, user, read-only
//! root, memory limit, probes), and a field the translation does not know fails the test, so
//! the manifests cannot drift from what was run. Only what a cluster alone has is put in place
//! by the test, each named in `Local`: the node's name, the operator's address, the lab node's
//! cgroup and bpffs directory, emptyDir and PVC directories, and local mode in place of the
//! projected-token bootstrap (the operator serves the lab's manifests, the agents get their
//! node bundles as `mesh-operator issue` makes them). Then the demo's checks pass through them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use mesh_tests::{
    image::{self, Inputs, Store},
    lab::{Lab, Placement},
    labnet,
    operator::Operator,
    privileges::privileged,
    scenario::{self, demo},
};
use serde_json::{Value, json};

/// The operator runs as this user (its manifest's `runAsUser`); its volumes are its own.
const OPERATOR_UID: u32 = 65532;

/// A workload of `deploy/kubernetes`: its pod spec (whose one container is the mesh's).
struct Workload {
    what: String,
    pod: Value,
}

impl Workload {
    fn read(file: &str, kind: &str) -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes").join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let objects: Vec<Value> = mesh_common::yaml::documents(&text).expect("valid YAML");
        let object = objects
            .into_iter()
            .find(|o| o["kind"] == kind)
            .unwrap_or_else(|| panic!("{} has no {kind}", path.display()));
        Self { what: format!("{file} {kind}"), pod: object["spec"]["template"]["spec"].clone() }
    }

    fn container(&self) -> &Value {
        let containers = self.pod["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1, "{}: one container expected", self.what);
        &containers[0]
    }
}

/// What the test puts where a cluster would have something of its own.
#[derive(Default)]
struct Local {
    /// The container's name (the lab's id in it).
    name: String,
    /// The network namespace its pod network is (the lab node's).
    netns: PathBuf,
    /// In place of the container's `args` (the operator's local mode).
    args: Option<Vec<String>>,
    /// Variables given another value (`Some`) or dropped (`None`); every `valueFrom` must be here.
    env: BTreeMap<&'static str, Option<String>>,
    /// Variables the lab needs beside the manifest's.
    extra_env: Vec<(&'static str, String)>,
    /// The directory of each non-hostPath volume (`None`: dropped with what needs it).
    volumes: BTreeMap<&'static str, Option<PathBuf>>,
    /// Mounts the lab needs beside the manifest's: (source, target), read-only.
    extra_mounts: Vec<(PathBuf, &'static str)>,
}

/// A probe as the kubelet would run it, on the pod's address.
#[derive(Debug, Clone, PartialEq)]
enum Probe {
    Http { port: u16, path: String },
    Tcp { port: u16 },
}

/// How podman runs a workload, translated from its manifest.
#[derive(Debug)]
struct Run {
    args: Vec<String>,
    image: String,
    readiness: Option<Probe>,
    liveness: Option<Probe>,
    /// `uid:gid` it runs as, when the manifest says.
    user: Option<(u32, u32)>,
    /// Directories it writes to (its emptyDirs and PVCs), to be owned by its user.
    writable: Vec<PathBuf>,
}

/// Collects the fields the translation does not know.
struct Unknown(Vec<String>);

impl Unknown {
    fn keys(&mut self, object: &Value, at: &str, known: &[&str]) {
        if let Some(map) = object.as_object() {
            for key in map.keys().filter(|k| !known.contains(&k.as_str())) {
                self.0.push(format!("{at}.{key}"));
            }
        }
    }

    fn value(&mut self, at: &str, value: &Value) {
        self.0.push(format!("{at} = {value}"));
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `podman run` options for `workload` with `local`'s replacements, or every field that could
/// not be translated (named by its path).
fn translate(workload: &Workload, local: &Local) -> Result<Run, Vec<String>> {
    let pod = &workload.pod;
    let container = workload.container();
    let mut unknown = Unknown(Vec::new());
    let mut args: Vec<String> = vec!["--name".into(), local.name.clone()];
    // Scheduling, DNS and API access have no meaning for one container on one machine.
    unknown.keys(
        pod,
        "spec",
        &[
            "serviceAccountName",
            "automountServiceAccountToken",
            "hostNetwork",
            "dnsPolicy",
            "priorityClassName",
            "tolerations",
            "terminationGracePeriodSeconds",
            "securityContext",
            "containers",
            "volumes",
        ],
    );
    // Host network or its own: either way the lab node's namespace (the operator's pod
    // address is then its node's).
    args.push(format!("--network=ns:{}", local.netns.display()));
    if let Some(grace) = pod.get("terminationGracePeriodSeconds") {
        args.push(format!("--stop-timeout={}", text(grace)));
    }
    let mut user = None;
    let mut run_as = (None, None);
    if let Some(context) = pod.get("securityContext") {
        unknown.keys(
            context,
            "spec.securityContext",
            &["runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "seccompProfile"],
        );
        run_as = (context["runAsUser"].as_u64(), context["runAsGroup"].as_u64());
        if let Some(seccomp) = context.get("seccompProfile") {
            seccomp_option(seccomp, "spec.securityContext.seccompProfile", &mut args, &mut unknown);
        }
        if context["runAsNonRoot"] == true && run_as.0.is_none_or(|uid| uid == 0) {
            unknown.value("spec.securityContext.runAsNonRoot without runAsUser", &context["runAsNonRoot"]);
        }
        if let Some(group) = context.get("fsGroup") {
            args.push(format!("--group-add={}", text(group)));
        }
    }
    if let (Some(uid), gid) = run_as {
        let gid = gid.unwrap_or(uid);
        args.push(format!("--user={uid}:{gid}"));
        user = Some((uid as u32, gid as u32));
    }

    unknown.keys(
        container,
        "container",
        &[
            "name",
            "image",
            "args",
            "env",
            "ports",
            "readinessProbe",
            "livenessProbe",
            "resources",
            "securityContext",
            "volumeMounts",
        ],
    );
    for (key, value) in &local.env {
        if !container["env"].as_array().is_some_and(|env| env.iter().any(|e| e["name"] == *key)) {
            unknown.value(&format!("the test replaces {key}, which the manifest does not set"), &json!(value));
        }
    }
    for variable in container["env"].as_array().into_iter().flatten() {
        let name = text(&variable["name"]);
        match local.env.get(name.as_str()) {
            Some(Some(value)) => args.push(format!("--env={name}={value}")),
            Some(None) => {}
            None if variable.get("value").is_some() => args.push(format!("--env={name}={}", text(&variable["value"]))),
            None => {
                unknown.value(&format!("container.env.{name}: from the cluster, and the test gives none"), variable)
            }
        }
    }
    for (name, value) in &local.extra_env {
        args.push(format!("--env={name}={value}"));
    }

    // Probes name ports by name or number.
    let port = |value: &Value| -> Option<u16> {
        match value {
            Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            Value::String(name) => container["ports"]
                .as_array()?
                .iter()
                .find(|p| p["name"] == name.as_str())
                .and_then(|p| p["containerPort"].as_u64())
                .and_then(|n| u16::try_from(n).ok()),
            _ => None,
        }
    };
    let probe = |key: &str, unknown: &mut Unknown| -> Option<Probe> {
        let probe = container.get(key)?;
        let at = format!("container.{key}");
        unknown.keys(probe, &at, &["httpGet", "tcpSocket", "periodSeconds", "initialDelaySeconds"]);
        if let Some(get) = probe.get("httpGet") {
            unknown.keys(get, &format!("{at}.httpGet"), &["path", "port"]);
            match port(&get["port"]) {
                Some(port) => return Some(Probe::Http { port, path: text(&get["path"]) }),
                None => unknown.value(&format!("{at}.httpGet.port"), &get["port"]),
            }
        } else if let Some(tcp) = probe.get("tcpSocket") {
            unknown.keys(tcp, &format!("{at}.tcpSocket"), &["port"]);
            match port(&tcp["port"]) {
                Some(port) => return Some(Probe::Tcp { port }),
                None => unknown.value(&format!("{at}.tcpSocket.port"), &tcp["port"]),
            }
        } else {
            unknown.value(&at, probe);
        }
        None
    };
    let readiness = probe("readinessProbe", &mut unknown);
    let liveness = probe("livenessProbe", &mut unknown);

    if let Some(resources) = container.get("resources") {
        // Requests only schedule; the memory limit is enforced.
        unknown.keys(resources, "container.resources", &["requests", "limits"]);
        if let Some(limits) = resources.get("limits") {
            unknown.keys(limits, "container.resources.limits", &["memory"]);
            let memory = text(&limits["memory"]);
            match memory
                .strip_suffix("Mi")
                .map(|n| format!("{n}m"))
                .or(memory.strip_suffix("Gi").map(|n| format!("{n}g")))
            {
                Some(memory) => args.push(format!("--memory={memory}")),
                None => unknown.value("container.resources.limits.memory", &limits["memory"]),
            }
        }
    }
    if let Some(context) = container.get("securityContext") {
        let at = "container.securityContext";
        unknown.keys(
            context,
            at,
            &["privileged", "allowPrivilegeEscalation", "readOnlyRootFilesystem", "capabilities", "seccompProfile"],
        );
        if let Some(seccomp) = context.get("seccompProfile") {
            seccomp_option(seccomp, &format!("{at}.seccompProfile"), &mut args, &mut unknown);
        }
        if context["privileged"] == true {
            args.push("--privileged".into());
        }
        if context["allowPrivilegeEscalation"] == false {
            args.push("--security-opt=no-new-privileges".into());
        }
        if context["readOnlyRootFilesystem"] == true {
            // No tmpfs of podman's own either: what the container writes is its volumes.
            args.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
        }
        if let Some(capabilities) = context.get("capabilities") {
            unknown.keys(capabilities, &format!("{at}.capabilities"), &["drop", "add"]);
            for (key, flag) in [("drop", "--cap-drop"), ("add", "--cap-add")] {
                for capability in capabilities[key].as_array().into_iter().flatten() {
                    args.push(format!("{flag}={}", text(capability).to_lowercase()));
                }
            }
        }
    }

    let mut writable = Vec::new();
    let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let name = text(&mount["name"]);
        let at = format!("container.volumeMounts.{name}");
        unknown.keys(mount, &at, &["name", "mountPath", "readOnly", "mountPropagation"]);
        let Some(volume) = volumes.iter().find(|v| v["name"] == name.as_str()) else {
            unknown.value(&format!("{at}: no such volume"), mount);
            continue;
        };
        let source = if let Some(host) = volume.get("hostPath") {
            unknown.keys(host, &format!("spec.volumes.{name}.hostPath"), &["path", "type"]);
            Some(PathBuf::from(text(&host["path"])))
        } else {
            let source = volume.as_object().and_then(|v| v.keys().find(|k| *k != "name")).cloned().unwrap_or_default();
            if !["emptyDir", "persistentVolumeClaim", "configMap", "projected"].contains(&source.as_str()) {
                unknown.value(&format!("spec.volumes.{name}"), volume);
            }
            match local.volumes.get(name.as_str()) {
                Some(Some(dir)) => {
                    if ["emptyDir", "persistentVolumeClaim"].contains(&source.as_str()) {
                        writable.push(dir.clone());
                    }
                    Some(dir.clone())
                }
                Some(None) => None,
                None => {
                    unknown.value(&format!("spec.volumes.{name}: the test gives it no directory"), volume);
                    None
                }
            }
        };
        let Some(source) = source else { continue };
        let mut options = vec![];
        if mount["readOnly"] == true {
            options.push("ro");
        }
        match mount.get("mountPropagation").map(text).as_deref() {
            None | Some("None") => {}
            Some("HostToContainer") => options.push("rslave"),
            Some(_) => unknown.value(&format!("{at}.mountPropagation"), &mount["mountPropagation"]),
        }
        let options = if options.is_empty() { String::new() } else { format!(":{}", options.join(",")) };
        args.push(format!("--volume={}:{}{options}", source.display(), text(&mount["mountPath"])));
    }
    for (source, target) in &local.extra_mounts {
        args.push(format!("--volume={}:{target}:ro", source.display()));
    }

    let image = text(&container["image"]);
    args.push(image.clone());
    let container_args: Vec<String> = match &local.args {
        Some(replaced) => replaced.clone(),
        None => container["args"].as_array().into_iter().flatten().map(text).collect(),
    };
    args.extend(container_args);
    if unknown.0.is_empty() { Ok(Run { args, image, readiness, liveness, user, writable }) } else { Err(unknown.0) }
}

/// A seccomp profile as podman's option: the runtime's default is podman's default (nothing to
/// say), Unconfined is none. A pod that says nothing is Unconfined in Kubernetes unless the
/// kubelet defaults to its runtime's, so the manifests say which they need.
fn seccomp_option(profile: &Value, at: &str, args: &mut Vec<String>, unknown: &mut Unknown) {
    if profile == &json!({"type": "Unconfined"}) {
        args.push("--security-opt=seccomp=unconfined".into());
    } else if profile != &json!({"type": "RuntimeDefault"}) {
        unknown.value(at, profile);
    }
}

/// podman with the test's store and runc (crun refuses this machine's hybrid cgroup layout).
struct Podman {
    store: Store,
    dir: PathBuf,
    containers: Vec<String>,
}

impl Podman {
    fn command(&self) -> Command {
        let mut command = self.store.command("podman");
        command.args(["--runtime", "runc", "--events-backend", "file"]);
        command
    }

    fn output(&self, args: &[&str]) -> std::process::Output {
        self.command().args(args).output().expect("podman runs (make test installs it)")
    }

    fn start(&mut self, run: &Run) {
        let name = run.args[1].clone();
        self.containers.push(name.clone());
        let output = self.command().args(["run", "--detach"]).args(limits()).args(&run.args).output().expect("podman");
        assert!(output.status.success(), "podman run {:?}: {}", run.args, String::from_utf8_lossy(&output.stderr));
    }

    fn logs(&self, name: &str) -> String {
        let output = self.output(&["logs", name]);
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
    }

    fn all_logs(&self) -> String {
        self.containers.iter().map(|name| format!("--- {name}:\n{}\n", self.logs(name))).collect()
    }

    fn running(&self, name: &str) -> bool {
        let output = self.output(&["inspect", "--format", "{{.State.Running}}", name]);
        String::from_utf8_lossy(&output.stdout).trim() == "true"
    }
}

/// Limits the container may have here: podman's defaults (and `--ulimit=host`, as podman raises
/// its own) ask for more open files than this machine's hard limit, and runc then cannot set
/// them; nor more than 32,768 processes, which runc's init is refused above on this kernel.
fn limits() -> [String; 2] {
    let mut files = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut files) }, 0);
    let files = files.rlim_max.min(1 << 20);
    [format!("--ulimit=nofile={files}:{files}"), "--ulimit=nproc=32768:32768".into()]
}

impl Drop for Podman {
    fn drop(&mut self) {
        if !self.containers.is_empty() {
            let mut args = vec!["rm", "--force", "--time", "5"];
            args.extend(self.containers.iter().map(String::as_str));
            let output = self.output(&args);
            if !output.status.success() {
                eprintln!("podman rm: {}", String::from_utf8_lossy(&output.stderr));
            }
        }
        let _ = self.output(&["rmi", "--all", "--force"]);
        if let Err(err) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("removing {}: {err}", self.dir.display());
        }
    }
}

/// `probe` as the kubelet runs it against a pod at `ip` of `node`'s network: whether it passed.
fn probe_passes(lab: &Lab, node: &Placement, ip: std::net::Ipv4Addr, probe: &Probe) -> bool {
    match probe {
        Probe::Http { port, path } => labnet::http_get(lab, node, (ip, *port).into(), path, &[], 1)
            .is_ok_and(|report| (200..400).contains(&report.last_status) && report.errors.is_empty()),
        Probe::Tcp { port } => {
            let netns = node.netns.as_ref().expect("a node namespace");
            let output = Command::new("nsenter")
                .arg(format!("--net={}", netns.display()))
                .args(["ss", "--listening", "--tcp", "--numeric", "--no-header"])
                .output()
                .expect("nsenter and ss");
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .any(|line| line.split_whitespace().nth(3).is_some_and(|local| local.ends_with(&format!(":{port}"))))
        }
    }
}

/// Waits (bounded) until `probe` passes for container `name`, which must keep running.
fn wait_for_probe(podman: &Podman, lab: &Lab, node: &Placement, ip: std::net::Ipv4Addr, name: &str, probe: &Probe) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !probe_passes(lab, node, ip, probe) {
        assert!(podman.running(name), "{name} stopped:\n{}", podman.all_logs());
        assert!(Instant::now() < deadline, "{name}: {probe:?} did not pass in 60 s:\n{}", podman.all_logs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid, gid);
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

fn node_placement(lab: &Lab, node: usize) -> Placement {
    Placement { netns: Some(lab.nodes[node].netns_path.clone()), cgroup: lab.system_cgroup() }
}

#[test]
fn a_field_the_podman_translation_does_not_know_fails_the_agreement() {
    let mut agent = Workload::read("agent.yaml", "DaemonSet");
    let local = agent_local("lab", &PathBuf::from("/run/netns/x"), "node-0", "https://x", &PathBuf::new());
    let run = translate(&agent, &local).unwrap_or_else(|unknown| panic!("agent.yaml: {unknown:?}"));
    assert!(run.args.contains(&"--cap-add=bpf".to_owned()) && run.args.contains(&"--cap-drop=all".to_owned()));
    assert!(run.args.contains(&"--read-only".to_owned()), "{:?}", run.args);
    assert_eq!(run.readiness, Some(Probe::Http { port: 9965, path: "/ready".into() }));
    agent.pod["hostPID"] = json!(true);
    agent.pod["containers"][0]["securityContext"]["capabilities"]["add"] = json!(["BPF", "SYS_ADMIN"]);
    agent.pod["containers"][0]["volumeMounts"][0]["mountPropagation"] = json!("Bidirectional");
    let unknown = translate(&agent, &local).expect_err("hostPID is not translated");
    assert!(unknown.iter().any(|u| u == "spec.hostPID"), "{unknown:?}");
    assert!(unknown.iter().any(|u| u.starts_with("container.volumeMounts.bpffs.mountPropagation")), "{unknown:?}");
    // A capability is translated, whatever it is: the privileged test runs with exactly these.
    let run = translate(
        &Workload::read("operator.yaml", "Deployment"),
        &operator_local("lab", Path::new("/x"), "10.0.0.1", Path::new("/m"), Path::new("/d")),
    )
    .unwrap_or_else(|unknown| panic!("operator.yaml: {unknown:?}"));
    assert_eq!(run.user, Some((OPERATOR_UID, OPERATOR_UID)));
    assert_eq!(run.readiness, Some(Probe::Http { port: 15151, path: "/ready".into() }));
    assert_eq!(run.liveness, Some(Probe::Tcp { port: 15150 }));
}

/// The agent of `node` as the lab runs it: its node's name, the operator's address and the
/// lab node's cgroup and bpffs directory; no bootstrap token (its bundle is put in its `run`
/// volume, `dir`).
fn agent_local(lab_id: &str, netns: &Path, node: &str, operator: &str, dir: &Path) -> Local {
    Local {
        name: format!("{lab_id}-agent-{node}"),
        netns: netns.to_owned(),
        env: BTreeMap::from([
            ("MESH_NODE_NAME", Some(node.to_owned())),
            ("MESH_OPERATOR", Some(operator.to_owned())),
            ("MESH_BOOTSTRAP_TOKEN", None),
            ("MESH_CA_FILE", None),
        ]),
        volumes: BTreeMap::from([("bootstrap-token", None), ("operator-ca", None), ("run", Some(dir.to_owned()))]),
        ..Local::default()
    }
}

/// The operator in local mode on `manifests`, its CA in its `state` volume (`state`), its name
/// for agents `server_name`, its `run` volume `run`.
fn operator_local(lab_id: &str, netns: &Path, server_name: &str, manifests: &Path, dir: &Path) -> Local {
    Local {
        name: format!("{lab_id}-operator"),
        netns: netns.to_owned(),
        args: Some(vec![
            "local".into(),
            "--manifests=/etc/mesh/manifests".into(),
            "--pki-dir=/var/lib/mesh/pki".into(),
            format!("--server-name={server_name}"),
        ]),
        env: BTreeMap::from([("MESH_NAMESPACE", Some("mesh-system".to_owned()))]),
        volumes: BTreeMap::from([("state", Some(dir.join("state"))), ("run", Some(dir.join("run")))]),
        extra_mounts: vec![(manifests.to_owned(), "/etc/mesh/manifests")],
        ..Local::default()
    }
}

#[test]
fn the_images_run_the_demo_as_the_daemonset_and_the_deployment_run_them() {
    if !privileged("the_images_run_the_demo_as_the_daemonset_and_the_deployment_run_them") {
        return;
    }
    let (lab, manifests) = demo::lab().expect("lab");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("images-{}", lab.id));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::in_dir(&dir.join("store"));
    let mut podman = Podman { store: store.clone(), dir: dir.clone(), containers: Vec::new() };

    // The images, from the binaries the other tests run.
    let inputs = Inputs {
        bin_dir: mesh_tests::built_binary("mesh-agent").parent().expect("target/debug").to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        revision: "test".into(),
        epoch: 0,
        out_dir: dir.clone(),
        store,
    };
    let agent_image = image::build(&image::AGENT, &inputs, &inputs.version).expect("the agent's image");
    let operator_image = image::build(&image::OPERATOR, &inputs, &inputs.version).expect("the operator's image");
    // Reproducible: the same binaries and labels give the same digest.
    let again = image::build(&image::OPERATOR, &inputs, "again").expect("the operator's image again");
    assert_eq!(again.digest, operator_image.digest, "the same inputs gave another image");
    for built in [&agent_image, &operator_image] {
        let labels = podman.output(&["image", "inspect", "--format", "{{json .Labels}}", &built.reference]);
        let labels: Value = serde_json::from_slice(&labels.stdout).expect("labels");
        assert_eq!(labels["org.opencontainers.image.version"], inputs.version, "{labels}");
        assert_eq!(labels["org.opencontainers.image.revision"], "test", "{labels}");
    }

    // The operator, in node-0's network, its CA made beforehand (the agents' bundles come from it).
    let node0 = &lab.nodes[0];
    let operator_dir = dir.join("operator");
    let state = operator_dir.join("state");
    std::fs::create_dir_all(operator_dir.join("run")).unwrap();
    let bundles: Vec<PathBuf> = lab
        .nodes
        .iter()
        .map(|node| Operator::issue(&lab, &state.join("pki"), &node.name).expect("a node bundle"))
        .collect();
    let operator = translate(
        &Workload::read("operator.yaml", "Deployment"),
        &operator_local(&lab.id, &node0.netns_path, &node0.ip.to_string(), &manifests, &operator_dir),
    )
    .unwrap_or_else(|unknown| panic!("operator.yaml has fields this test does not run: {unknown:?}"));
    assert_eq!(operator.image, operator_image.reference, "operator.yaml names another image than the one built");
    let (uid, gid) = operator.user.expect("operator.yaml runs it as a user of its own");
    for writable in &operator.writable {
        chown_tree(writable, uid, gid);
    }
    podman.start(&operator);
    let at_node0 = node_placement(&lab, 0);
    for probe in [&operator.readiness, &operator.liveness].into_iter().flatten() {
        wait_for_probe(&podman, &lab, &at_node0, node0.ip, &operator.args[1], probe);
    }

    // One agent per node, in its node's network.
    let endpoint = format!("https://{}:15150", node0.ip);
    let mut agents = Vec::new();
    for (index, (node, bundle)) in lab.nodes.iter().zip(&bundles).enumerate() {
        let run_dir = dir.join(format!("run-{}", node.name));
        copy_dir(bundle, &run_dir.join("tls"));
        let mut local = agent_local(&lab.id, &node.netns_path, &node.name, &endpoint, &run_dir);
        local.env.insert("MESH_CGROUP", Some(node.cgroup.display().to_string()));
        // Two labs on one host would share the default `/sys/fs/bpf/mesh/<node>`.
        local.extra_env.push(("MESH_BPFFS", node.bpffs.display().to_string()));
        let agent = translate(&Workload::read("agent.yaml", "DaemonSet"), &local)
            .unwrap_or_else(|unknown| panic!("agent.yaml has fields this test does not run: {unknown:?}"));
        assert_eq!(agent.image, agent_image.reference, "agent.yaml names another image than the one built");
        assert!(agent.args.contains(&"--cap-drop=all".to_owned()), "{:?}", agent.args);
        podman.start(&agent);
        agents.push((index, agent));
    }
    for (index, agent) in &agents {
        let probe = agent.readiness.as_ref().expect("agent.yaml has a readiness probe");
        wait_for_probe(&podman, &lab, &node_placement(&lab, *index), lab.nodes[*index].ip, &agent.args[1], probe);
    }

    // The demo's checks: the client reaches both web pods through the Service; the intruder
    // is kept out.
    let client = Placement::pod(lab.pod(demo::CLIENT));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let summary =
            labnet::connect(&lab, &client, scenario::service_addr(), 20, Duration::from_secs(2)).expect("client runs");
        let answered: Vec<&str> = summary.replies.keys().map(String::as_str).collect();
        if summary.failed == 0 && answered == demo::WEB {
            break;
        }
        assert!(Instant::now() < deadline, "the client's connections: {summary:?}\n{}", podman.all_logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    let intruder = Placement::pod(lab.pod(demo::INTRUDER));
    let denied = labnet::connect(&lab, &intruder, scenario::service_addr(), 3, Duration::from_millis(700))
        .expect("intruder runs");
    assert_eq!(denied.ok, 0, "the policy must keep the intruder out: {denied:?}");

    // meshctl in the agent's image finds its agent where the DaemonSet puts it, and shows
    // the intruder's drop with its policy: at the node of the web pod each attempt reached
    // (the Service balances them; all three may have gone to one node).
    let agent1 = &agents[1].1.args[1];
    let status = podman.output(&["exec", agent1, "meshctl", "status"]);
    let status_text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success() && status_text.contains("node-1"), "meshctl status: {status:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    'observed: loop {
        let mut seen = Vec::new();
        for (_, agent) in &agents {
            let observed = podman.output(&[
                "exec",
                &agent.args[1],
                "meshctl",
                "observe",
                "--from-pod",
                "demo/intruder",
                "--verdict",
                "DROPPED",
                "--output",
                "json",
            ]);
            let flows = String::from_utf8_lossy(&observed.stdout);
            if observed.status.success()
                && flows.contains("\"POLICY_DENY\"")
                && flows.contains("MeshPolicy demo/deny-intruder")
            {
                break 'observed;
            }
            seen.push(observed);
        }
        assert!(Instant::now() < deadline, "no dropped flow of the intruder on either node: {seen:?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Both stop on SIGTERM within their grace period, cleanly.
    for name in podman.containers.clone() {
        let output = podman.output(&["stop", &name]);
        assert!(output.status.success(), "podman stop {name}: {output:?}");
        let code = podman.output(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
        assert_eq!(String::from_utf8_lossy(&code.stdout).trim(), "0", "{name}:\n{}", podman.logs(&name));
    }
}
