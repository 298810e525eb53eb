//! Pods wired by a real containerd, driven through the CRI as the kubelet drives it: a private
//! containerd (Debian's package) whose CRI plugin calls our `ciliate-cni` from a conflist, our
//! agent, two pods from a tiny image built here from busybox, traffic between them, a policy
//! that stops it, and teardown that leaves nothing behind.

mod common;

use std::collections::BTreeSet;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ciliate_e2e::cri::{self, ImageClient, RuntimeClient};
use ciliate_testutil::{privileged, privileged_required, unique_name};
use common::{text, Node};
use serde_json::{json, Value};

/// The image containerd runs for sandboxes and containers, imported under this name.
const IMAGE: &str = "docker.io/library/ciliate-test:1";
/// The network name in the conflist; libcni names its result cache after it.
const NETWORK: &str = "ciliate";
/// Where libcni (inside containerd) caches each attachment's result.
const CNI_CACHE: &str = "/var/lib/cni/results";

/// The standard `loopback` plugin (Debian's containernetworking-plugins): containerd's CRI
/// runs it on every pod before the configured network, and fails the pod without it.
const LOOPBACK: &str = "/usr/lib/cni/loopback";

/// Programs the test needs besides ours; `None` when all are there.
fn missing_tools() -> Option<String> {
    let mut missing: Vec<&str> = [
        "containerd",
        "ctr",
        "containerd-shim-runc-v2",
        "runc",
        "busybox",
        "tar",
        "sha256sum",
    ]
    .into_iter()
    .filter(|t| {
        !Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
    .collect();
    if !Path::new(LOOPBACK).exists() {
        missing.push(LOOPBACK);
    }
    (!missing.is_empty()).then(|| format!("{} not installed", missing.join(", ")))
}

/// A private containerd: its own root, state, socket, CNI directories and config under one
/// temp dir, running in the node's network namespace (where a runtime runs: the plugin makes
/// the host side of each veth there). Everything it made is undone on drop.
struct Containerd {
    dir: tempfile::TempDir,
    socket: PathBuf,
    child: Option<Child>,
    /// Pods' cgroups go under this parent (in every hierarchy), so drop finds them.
    cgroup_parent: String,
    /// `/var/run/netns` before we started: new `cni-*` entries are ours.
    netns_before: BTreeSet<String>,
    /// libcni's result cache before we started: new entries of our network are ours (a
    /// failed DEL leaves them), and the directory goes if we made it.
    cni_cache_before: Option<BTreeSet<String>>,
    /// Whether `/run/containerd` (where containerd 1.6 puts shim sockets, whatever its
    /// `--state`) existed before: if not, we remove it once empty.
    run_dir_existed: bool,
}

/// The directory containerd 1.6 keeps shim sockets in (`s/`), fixed at build time.
const RUN_DIR: &str = "/run/containerd";

impl Containerd {
    fn start(node: &Node) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ctd")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        for sub in ["root", "state", "cni/bin", "cni/conf", "opt"] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        std::os::unix::fs::symlink(common::bin("ciliate-cni"), d.join("cni/bin/ciliate-cni"))
            .expect("link ciliate-cni");
        std::os::unix::fs::symlink(LOOPBACK, d.join("cni/bin/loopback")).expect("link loopback");
        std::fs::write(
            d.join("cni/conf/10-ciliate.conflist"),
            serde_json::to_string_pretty(&conflist(node)).expect("json"),
        )
        .expect("write conflist");
        let p = |s: &str| d.join(s).display().to_string();
        let config = format!(
            r#"version = 2
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  # The pause container asks for oom_score_adj -998, which needs CAP_SYS_RESOURCE; where the
  # test itself runs without it (nested, as on our CI machines) that fails every pod. This
  # keeps scores at or above containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
"#,
            opt = p("opt"),
            runc = p("state/runc"),
            bin = p("cni/bin"),
            conf = p("cni/conf"),
        );
        std::fs::write(d.join("config.toml"), config).expect("write config.toml");
        let socket = d.join("containerd.sock");
        let log = File::create(d.join("containerd.log")).expect("log");
        let netns_before = cni_netns();
        let run_dir_existed = Path::new(RUN_DIR).exists();
        let cni_cache_before = Path::new(CNI_CACHE).exists().then(cni_cache);
        let child = node
            .netns
            .command("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--state")
            .arg(d.join("state"))
            .arg("--address")
            .arg(&socket)
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        let mut ctd = Self {
            dir,
            socket,
            child: Some(child),
            cgroup_parent: format!("/{}", unique_name("ctdcg")),
            netns_before,
            run_dir_existed,
            cni_cache_before,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ctd.ctr(&["version"]).status.success() {
            if let Some(status) = ctd.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("containerd exited with {status}:\n{}", ctd.log());
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not come up:\n{}",
                ctd.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
        ctd.import_image();
        ctd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()
            .expect("run ctr")
    }

    /// Builds an OCI image layout (one layer: a static busybox) and imports it as
    /// [`IMAGE`], the way an air-gapped node gets its images.
    fn import_image(&self) {
        let d = self.dir.path().join("image");
        let blobs = d.join("oci/blobs/sha256");
        std::fs::create_dir_all(d.join("rootfs/bin")).expect("mkdir");
        std::fs::create_dir_all(&blobs).expect("mkdir");
        let busybox = which("busybox");
        std::fs::copy(&busybox, d.join("rootfs/bin/busybox")).expect("copy busybox");
        // Containers exec applets by name through PATH.
        let out = Command::new(d.join("rootfs/bin/busybox"))
            .arg("--list")
            .output()
            .expect("busybox --list");
        for applet in ["sh", "sleep", "httpd", "nc", "printf"] {
            assert!(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .any(|l| l == applet),
                "{} has no {applet} applet",
                busybox.display()
            );
            std::os::unix::fs::symlink("busybox", d.join("rootfs/bin").join(applet))
                .expect("applet link");
        }
        let layer = d.join("layer.tar");
        let out = Command::new("tar")
            .args(["--owner=0", "--group=0", "--numeric-owner", "-C"])
            .arg(d.join("rootfs"))
            .arg("-cf")
            .arg(&layer)
            .arg("bin")
            .output()
            .expect("tar");
        assert!(out.status.success(), "tar: {}", text(&out));
        let layer = std::fs::read(&layer).expect("layer");
        let blob = |bytes: &[u8]| -> Value {
            let digest = sha256(bytes);
            std::fs::write(blobs.join(&digest), bytes).expect("write blob");
            json!({"digest": format!("sha256:{digest}"), "size": bytes.len()})
        };
        let layer_desc = blob(&layer);
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": ["PATH=/bin"],
                // The sandbox ("pause") container: sleeps until killed.
                "Entrypoint": ["/bin/busybox"],
                "Cmd": ["sleep", "1000000"],
            },
            "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
        }))
        .expect("json");
        let mut config_desc = blob(&config);
        config_desc["mediaType"] = json!("application/vnd.oci.image.config.v1+json");
        let mut layer_desc = layer_desc;
        layer_desc["mediaType"] = json!("application/vnd.oci.image.layer.v1.tar");
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_desc,
            "layers": [layer_desc],
        }))
        .expect("json");
        let mut manifest_desc = blob(&manifest);
        manifest_desc["mediaType"] = json!("application/vnd.oci.image.manifest.v1+json");
        manifest_desc["annotations"] = json!({"io.containerd.image.name": IMAGE});
        std::fs::write(
            d.join("oci/index.json"),
            json!({"schemaVersion": 2, "manifests": [manifest_desc]}).to_string(),
        )
        .expect("index.json");
        std::fs::write(
            d.join("oci/oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .expect("oci-layout");
        let archive = d.join("image.tar");
        let out = Command::new("tar")
            .arg("-C")
            .arg(d.join("oci"))
            .arg("-cf")
            .arg(&archive)
            .arg(".")
            .output()
            .expect("tar");
        assert!(out.status.success(), "tar: {}", text(&out));
        let archive = archive.display().to_string();
        let out = self.ctr(&["images", "import", "--snapshotter", "native", &archive]);
        assert!(out.status.success(), "ctr images import: {}", text(&out));
    }

    /// Undoes what a failed test may have left: pods (through the CRI, so CNI DEL runs),
    /// containerd and its shims, containers, mounts, namespaces and cgroups.
    fn teardown(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            let socket = self.socket.clone();
            let _ = rt.block_on(async move {
                tokio::time::timeout(Duration::from_secs(20), remove_all_pods(&socket)).await
            });
        }
        let _ = child.kill();
        let _ = child.wait();
        let dir = self.dir.path().display().to_string();
        // Shims name our socket on their command line; containers live in the pods'
        // namespaces, which are ours if they are new.
        for pid in procs() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&dir) {
                kill(pid);
            }
        }
        let netns: Vec<String> = cni_netns()
            .difference(&self.netns_before)
            .cloned()
            .collect();
        for ns in &netns {
            let out = Command::new("ip").args(["netns", "pids", ns]).output();
            for pid in out
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
            {
                kill(pid);
            }
        }
        thread::sleep(Duration::from_millis(200));
        // Mounts under our directory (rootfs, shm), deepest first, then pod namespaces.
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
            .filter(|m| m.starts_with(&dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
        for ns in netns {
            let _ = Command::new("ip").args(["netns", "delete", &ns]).status();
        }
        remove_cgroups(&self.cgroup_parent);
        let before = self.cni_cache_before.clone().unwrap_or_default();
        for entry in cni_cache().difference(&before) {
            let _ = std::fs::remove_file(Path::new(CNI_CACHE).join(entry));
        }
        if self.cni_cache_before.is_none() {
            let _ = std::fs::remove_dir(CNI_CACHE);
            let _ = std::fs::remove_dir(Path::new(CNI_CACHE).parent().unwrap_or(Path::new("/")));
        }
        if !self.run_dir_existed {
            let _ = std::fs::remove_dir(Path::new(RUN_DIR).join("s"));
            let _ = std::fs::remove_dir(RUN_DIR);
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("---- containerd log ----\n{}", self.log());
        }
        self.teardown();
    }
}

/// The conflist the README gives, pointing at this node's agent, with the capability that
/// makes containerd pass the pod's annotations (our labels come from one).
fn conflist(node: &Node) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "plugins": [{
            "type": "ciliate-cni",
            "agentSocket": node.socket,
            "capabilities": {"io.kubernetes.cri.pod-annotations": true},
        }],
    })
}

fn which(tool: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .expect("sh");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn sha256(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bytes)
        .expect("write");
    let out = child.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_owned()
}

/// `cni-*` entries of /var/run/netns (containerd's pod namespaces).
fn cni_netns() -> BTreeSet<String> {
    std::fs::read_dir("/var/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("cni-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Our network's entries in libcni's result cache.
fn cni_cache() -> BTreeSet<String> {
    std::fs::read_dir(CNI_CACHE)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{NETWORK}-")))
                .collect()
        })
        .unwrap_or_default()
}

fn procs() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

fn kill(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Removes `parent` (and the pods' cgroups below it) from every cgroup hierarchy.
fn remove_cgroups(parent: &str) {
    fn rmdir_tree(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    rmdir_tree(&e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if matches!(f.get(2), Some(&"cgroup" | &"cgroup2")) {
            rmdir_tree(&Path::new(f[1]).join(parent.trim_start_matches('/')));
        }
    }
}

/// Cgroup directories named `parent` that still exist.
fn cgroups_left(parent: &str) -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            matches!(f.get(2), Some(&"cgroup" | &"cgroup2"))
                .then(|| Path::new(f[1]).join(parent.trim_start_matches('/')))
        })
        .filter(|p| p.exists())
        .collect()
}

async fn remove_all_pods(socket: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut rt = RuntimeClient::new(cri::connect(socket).await?);
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await?
        .into_inner()
        .items;
    for p in pods {
        let id = p.id;
        let _ = rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await;
        let _ = rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await;
    }
    Ok(())
}

/// A pod as the kubelet describes it to the runtime.
fn sandbox_config(
    namespace: &str,
    name: &str,
    app: &str,
    cgroup_parent: &str,
) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}-{}", std::process::id()),
            namespace: namespace.into(),
            attempt: 0,
        }),
        hostname: name.into(),
        labels: [("app".to_owned(), app.to_owned())].into(),
        // containerd hands CNI the pod's annotations, never its labels: the plugin reads
        // them from this one.
        annotations: [("ciliate.io/labels".to_owned(), format!("app={app}"))].into(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates and starts a container running `args` in the pod.
async fn start_container(
    rt: &mut RuntimeClient,
    pod_id: &str,
    pod_config: &cri::PodSandboxConfig,
    args: &[&str],
) -> String {
    let id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "main".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: IMAGE.into(),
                    ..Default::default()
                }),
                command: vec!["/bin/busybox".into()],
                args: args.iter().map(|a| (*a).to_owned()).collect(),
                ..Default::default()
            }),
            sandbox_config: Some(pod_config.clone()),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("StartContainer");
    id
}

async fn exec(rt: &mut RuntimeClient, container: &str, cmd: &[&str]) -> cri::ExecSyncResponse {
    rt.exec_sync(cri::ExecSyncRequest {
        container_id: container.into(),
        cmd: cmd.iter().map(|a| (*a).to_owned()).collect(),
        timeout: 20,
    })
    .await
    .expect("ExecSync")
    .into_inner()
}

/// The pod's address as the runtime reports it, and its network namespace.
async fn pod_network(rt: &mut RuntimeClient, pod_id: &str) -> (Ipv4Addr, String) {
    let status = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.into(),
            verbose: true,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner();
    let ip = status
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .expect("status.network.ip");
    let info: Value =
        serde_json::from_str(status.info.get("info").expect("verbose info")).expect("info is JSON");
    let netns = info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["type"] == "network"))
        .and_then(|n| n["path"].as_str())
        .expect("network namespace in the runtime spec")
        .to_owned();
    (ip.parse().expect("IPv4 pod address"), netns)
}

/// Reruns CHECK the way libcni does: with the result it cached at ADD as `prevResult` and
/// the CNI_ARGS it cached.
fn cni_check(node: &Node, ctd_conflist: &Value, pod_id: &str, netns: &str) -> common::CniOutcome {
    let cache_path = format!("{CNI_CACHE}/{NETWORK}-{pod_id}-eth0");
    let cache: Value = serde_json::from_slice(
        &std::fs::read(&cache_path).unwrap_or_else(|e| panic!("{cache_path}: {e}")),
    )
    .expect("libcni cache is JSON");
    let args: Vec<String> = cache["cniArgs"]
        .as_array()
        .expect("cniArgs")
        .iter()
        .map(|kv| {
            format!(
                "{}={}",
                kv[0].as_str().unwrap_or(""),
                kv[1].as_str().unwrap_or("")
            )
        })
        .collect();
    let mut conf = ctd_conflist["plugins"][0].clone();
    conf["cniVersion"] = ctd_conflist["cniVersion"].clone();
    conf["name"] = json!(NETWORK);
    conf["prevResult"] = cache["result"].clone();
    node.cni(
        &[
            ("CNI_COMMAND", "CHECK"),
            ("CNI_CONTAINERID", pod_id),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", &args.join(";")),
        ],
        &conf.to_string(),
    )
}

#[test]
fn containerd_runs_pods_wired_by_ciliate_cni_through_the_cri() {
    privileged!();
    if let Some(why) = missing_tools() {
        assert!(
            !privileged_required(),
            "containerd test cannot run ({why}) and CILIATE_REQUIRE_PRIVILEGED=1: run scripts/install-deps"
        );
        eprintln!(
            "\n!!! SKIPPED containerd test: {why} (scripts/install-deps installs them). !!!\n"
        );
        return;
    }
    let node = Node::start("10.231.0.0/24");
    let base_links = node.links();
    let mut ctd = Containerd::start(&node);
    let conflist = conflist(&node);
    let ns = "shop";
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let channel = cri::connect(&ctd.socket).await.expect("connect to the CRI");
        let mut runtime = RuntimeClient::new(channel.clone());
        let mut images = ImageClient::new(channel);

        let version = runtime
            .version(cri::VersionRequest::default())
            .await
            .expect("Version")
            .into_inner();
        assert_eq!(version.runtime_name, "containerd");
        assert_eq!(version.runtime_api_version, "v1");
        // containerd loaded our conflist: the network is ready.
        let status = runtime
            .status(cri::StatusRequest { verbose: true })
            .await
            .expect("Status")
            .into_inner();
        let conditions = status.status.expect("status").conditions;
        assert!(
            conditions.iter().all(|c| c.status),
            "runtime not ready: {conditions:?}"
        );
        let listed = images
            .list_images(cri::ListImagesRequest::default())
            .await
            .expect("ListImages")
            .into_inner()
            .images;
        assert!(
            listed
                .iter()
                .any(|i| i.repo_tags.iter().any(|t| t == IMAGE)),
            "{IMAGE} not among the CRI's images: {listed:?}"
        );

        // Two pods, as the kubelet asks for them.
        let mut pods = Vec::new();
        for (name, app) in [("server-0", "server"), ("client-0", "client")] {
            let config = sandbox_config(ns, name, app, &ctd.cgroup_parent);
            let id = runtime
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(config.clone()),
                    runtime_handler: String::new(),
                })
                .await
                .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}"))
                .into_inner()
                .pod_sandbox_id;
            let (ip, netns) = pod_network(&mut runtime, &id).await;
            pods.push((name, app, id, config, ip, netns));
        }

        // Each is our endpoint, named and labelled from the PodSandboxConfig, with the address
        // and namespace containerd reports.
        let endpoints = node.cli_json(&["endpoint", "list"]);
        let endpoints = endpoints.as_array().expect("endpoint list");
        assert_eq!(endpoints.len(), 2, "{endpoints:?}");
        for (name, app, id, _, ip, netns) in &pods {
            assert!(
                netns.starts_with("/var/run/netns/cni-"),
                "containerd's pod namespace: {netns}"
            );
            assert_eq!(
                ip.octets()[..3],
                [10, 231, 0],
                "{ip} is not of the node's pod CIDR"
            );
            let ep = node.cli_json(&["endpoint", "get", &format!("{ns}/{name}")]);
            assert_eq!(ep["ipv4"], ip.to_string(), "{ep}");
            assert_eq!(ep["containerId"], id.as_str(), "{ep}");
            assert_eq!(ep["netns"], netns.as_str(), "{ep}");
            let labels = ep["labels"].to_string();
            assert!(labels.contains(&format!("k8s:app={app}")), "{ep}");
            assert!(
                labels.contains(&format!("k8s:io.kubernetes.pod.namespace={ns}")),
                "{ep}"
            );
            // CHECK as libcni runs it, from containerd's own cache, passes.
            let check = cni_check(&node, &conflist, id, netns);
            assert!(check.ok, "CHECK {name}: {}\n{}", check.stdout, check.stderr);
        }

        // A web server in one, a client in the other.
        let (_, _, server_id, server_cfg, server_ip, _) = &pods[0];
        let (_, _, client_id, client_cfg, _, _) = &pods[1];
        let server = start_container(
            &mut runtime,
            server_id,
            server_cfg,
            &["httpd", "-f", "-p", "8080", "-h", "/etc"],
        )
        .await;
        let client =
            start_container(&mut runtime, client_id, client_cfg, &["sleep", "1000000"]).await;
        // HTTP by hand through nc: busybox's wget crashes in an image without NSS files.
        let get =
            |ip: &str| format!("printf 'GET /hostname HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 8080");
        let fetch_cmd = get(&server_ip.to_string());
        let fetch = ["sh", "-c", fetch_cmd.as_str()];
        // httpd listens a moment after its container starts.
        let deadline = Instant::now() + Duration::from_secs(15);
        let got = loop {
            let r = exec(&mut runtime, &client, &fetch).await;
            if r.exit_code == 0 || Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let body = String::from_utf8_lossy(&got.stdout).into_owned();
        assert!(
            got.exit_code == 0
                && body.starts_with("HTTP/1.1 200")
                && body.trim_end().ends_with("\nserver-0"),
            "client -> server: exit {}: {body}{}",
            got.exit_code,
            String::from_utf8_lossy(&got.stderr)
        );

        // A policy that denies it: the same request now fails, dropped by our datapath.
        let policy = format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
             metadata: {{name: server-deny-client, namespace: {ns}}}\n\
             spec:\n  endpointSelector: {{matchLabels: {{app: server}}}}\n  \
             ingressDeny:\n  - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n"
        );
        let path = ctd.dir.path().join("deny.yaml");
        std::fs::write(&path, policy).expect("write policy");
        let out = node.cli(&["policy", "import", "-f", &path.display().to_string()]);
        assert!(out.status.success(), "policy import: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let revision = stdout
            .lines()
            .find_map(|l| l.strip_prefix("Revision: "))
            .unwrap_or_else(|| panic!("no revision in {stdout:?}"));
        let out = node.cli(&["policy", "wait", revision]);
        assert!(out.status.success(), "policy wait: {}", text(&out));
        let denied = exec(&mut runtime, &client, &fetch).await;
        assert_ne!(
            denied.exit_code,
            0,
            "the request passed the deny policy: {}",
            String::from_utf8_lossy(&denied.stdout)
        );
        let drops = node.observe(&[
            "--verdict",
            "DROPPED",
            "--from-pod",
            &format!("{ns}/client-0"),
            "--to-pod",
            &format!("{ns}/server-0"),
        ]);
        assert!(!drops.is_empty(), "no DROPPED flow client -> server");
        // The server itself is untouched: it still answers itself.
        let own = exec(&mut runtime, &server, &["sh", "-c", &get("127.0.0.1")]).await;
        assert_eq!(own.exit_code, 0, "{}", String::from_utf8_lossy(&own.stderr));

        // Teardown as the kubelet does it: stop (CNI DEL), then remove.
        for (name, _, id, _, _, netns) in &pods {
            runtime
                .stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await
                .unwrap_or_else(|e| panic!("StopPodSandbox {name}: {e}"));
            // A second stop is what the kubelet does too: idempotent.
            runtime
                .stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await
                .unwrap_or_else(|e| panic!("second StopPodSandbox {name}: {e}"));
            runtime
                .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await
                .unwrap_or_else(|e| panic!("RemovePodSandbox {name}: {e}"));
            assert!(!Path::new(netns).exists(), "{netns} left behind");
            let cache = format!("{CNI_CACHE}/{NETWORK}-{id}-eth0");
            assert!(!Path::new(&cache).exists(), "{cache} left behind");
        }
        // A pod whose namespace someone removed behind containerd's back: containerd then
        // runs DEL without CNI_NETNS, and the endpoint still goes with StopPodSandbox.
        let config = sandbox_config(ns, "orphan-0", "orphan", &ctd.cgroup_parent);
        let id = runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .expect("RunPodSandbox orphan-0")
            .into_inner()
            .pod_sandbox_id;
        let (_, netns) = pod_network(&mut runtime, &id).await;
        let name = netns.rsplit('/').next().unwrap_or_default();
        ciliate_testutil::run("ip", &["netns", "delete", name]);
        assert_eq!(node.endpoint_count(), 1);
        for step in ["stop", "remove"] {
            let pod_sandbox_id = id.clone();
            let r = if step == "stop" {
                runtime
                    .stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id })
                    .await
                    .map(|_| ())
            } else {
                runtime
                    .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id })
                    .await
                    .map(|_| ())
            };
            r.unwrap_or_else(|e| panic!("{step} orphan-0: {e}"));
        }
        assert_eq!(
            node.endpoint_count(),
            0,
            "orphan-0's endpoint outlived its pod"
        );

        let left = runtime
            .list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await
            .expect("ListPodSandbox")
            .into_inner()
            .items;
        assert!(left.is_empty(), "pods left: {left:?}");
    });

    // Nothing of the pods is left in the agent, the node's namespace or the datapath.
    node.assert_no_pod_left(&base_links);
    assert!(
        cgroups_left(&ctd.cgroup_parent)
            .iter()
            .all(|cg| std::fs::read_dir(cg)
                .map(|d| d.flatten().all(|e| !e.path().is_dir()))
                .unwrap_or(true)),
        "pod cgroups left under {}",
        ctd.cgroup_parent
    );
    // containerd did not complain about the network on the way.
    let complaints: Vec<String> = ctd
        .log()
        .lines()
        .filter(|l| l.contains("level=error") && (l.contains("cni") || l.contains("network")))
        .map(str::to_owned)
        .collect();
    assert!(
        complaints.is_empty(),
        "containerd logged:\n{}",
        complaints.join("\n")
    );
    ctd.teardown();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let dir = ctd.dir.path().display().to_string();
    assert!(
        !mounts.lines().any(|l| l.contains(&dir)),
        "mounts left under {dir}"
    );
}
