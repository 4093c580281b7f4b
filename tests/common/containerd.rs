//! A private containerd (its own root, state and socket; a `proxy_plugins` entry for zran's
//! socket; optionally its CRI plugin with zran as the snapshotter), `zran snapshotter`, and
//! what the test registry served, for the snapshotter's tests.

#![allow(dead_code)]

use super::harness::{TestRegistry, repo_root};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A daemon this test started, killed when dropped.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn wait_for(path: &Path, what: &str, d: &mut Daemon) {
    let deadline = Instant::now() + Duration::from_secs(20);
    // Connectable, not only there: a killed predecessor leaves its socket file behind.
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        if let Some(s) = d.0.try_wait().unwrap() {
            panic!("{what} exited ({s}) before listening");
        }
        assert!(Instant::now() < deadline, "{what} did not listen in 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn snapshotter(root: &Path, sock: &Path, log: &Path, extra: &[&str]) -> Daemon {
    let mut d = Daemon(
        Command::new(env!("CARGO_BIN_EXE_zran"))
            .arg("snapshotter")
            .arg("--root")
            .arg(root)
            .arg("--address")
            .arg(sock)
            .arg("-v")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for(sock, "zran snapshotter", &mut d);
    d
}

pub fn containerd(dir: &Path, zran_sock: &Path) -> (Daemon, PathBuf) {
    containerd_with(dir, zran_sock, None)
}

/// containerd with its CRI plugin (zran as its snapshotter, labels passed to it, the sandbox
/// image `pause`) when `pause` is given.
pub fn containerd_with(dir: &Path, zran_sock: &Path, pause: Option<&str>) -> (Daemon, PathBuf) {
    let sock = dir.join("containerd.sock");
    let config = format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
{disabled}
[grpc]
  address = "{s}"
[proxy_plugins]
  [proxy_plugins.zran]
    type = "snapshot"
    address = "{z}"
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{d}/opt"
{cri}"#,
        d = dir.display(),
        s = sock.display(),
        z = zran_sock.display(),
        disabled = if pause.is_some() { "" } else { r#"disabled_plugins = ["io.containerd.grpc.v1.cri"]"# },
        cri = match pause {
            None => String::new(),
            Some(p) => format!(
                r#"  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{p}"
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "zran"
      disable_snapshot_annotations = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "{d}/cni"
"#,
                d = dir.display()
            ),
        }
    );
    std::fs::write(dir.join("config.toml"), config).unwrap();
    let mut d = Daemon(
        Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("containerd.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for(&sock, "containerd", &mut d);
    (d, sock)
}

pub fn ctr(sock: &Path, args: &[&str]) -> Output {
    Command::new("ctr").arg("-a").arg(sock).args(args).output().unwrap()
}

pub fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Bytes the registry sent for each blob (its access log: `"GET /v2/R/blobs/sha256:H ..." S N`).
pub fn served(reg: &TestRegistry) -> std::collections::HashMap<String, u64> {
    let log = std::fs::read_to_string(reg.dir.path().join("registry.log")).unwrap_or_default();
    let mut out = std::collections::HashMap::new();
    for line in log.lines() {
        let Some(i) = line.find("\"GET /v2/") else { continue };
        let rest = &line[i + 1..];
        let Some(j) = rest.find("/blobs/sha256:") else { continue };
        let hex: String = rest[j + 14..].chars().take(64).collect();
        let fields: Vec<&str> = rest.split_once("\" ").map_or("", |x| x.1).split_whitespace().collect();
        if let [status, bytes, ..] = fields[..]
            && (status == "200" || status == "206")
        {
            *out.entry(hex).or_default() += bytes.parse::<u64>().unwrap_or(0);
        }
    }
    out
}

/// The layers of a test image (digest hex, size).
pub fn layers(name: &str) -> Vec<(String, u64)> {
    let layout = repo_root().join("target/testimages/layouts").join(name);
    let read = |d: &str| -> Value {
        let hex = d.trim_start_matches("sha256:");
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()).unwrap()
    };
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest = read(index["manifests"][0]["digest"].as_str().unwrap());
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Bytes of `name`'s layers the registry has sent in all.
pub fn layer_bytes_served(reg: &TestRegistry, name: &str) -> u64 {
    let s = served(reg);
    layers(name).iter().map(|(h, _)| s.get(h).copied().unwrap_or(0)).sum()
}

/// The FUSE mounts zran serves under `dir` (lines of /proc/self/mountinfo).
pub fn zran_mounts(dir: &Path) -> Vec<String> {
    let dir = format!(" {}/", dir.display());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(" - fuse") && l.contains(" zran:") && l.contains(&dir))
        .map(str::to_string)
        .collect()
}

/// Copy an image (`oci:LAYOUT[:TAG]`) to the test registry as `image`, with skopeo.
pub fn push_layout(layout: &str, image: &str) {
    let o = Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false", layout, &format!("docker://{image}")])
        .output()
        .unwrap();
    ok(o, &format!("skopeo copy {layout}"));
}

/// Whatever a test left under its directory, gone when dropped (also when the test fails):
/// processes whose command line names the directory (containerd, its shims, the snapshotter,
/// serving processes: all started by this test, as the directory is its own), then every
/// mount under it, deepest first.
pub struct Sweep(pub PathBuf);

impl Drop for Sweep {
    fn drop(&mut self) {
        let dir = format!("{}/", self.0.display());
        let me = std::process::id().to_string();
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let pid = p.file_name().to_string_lossy().into_owned();
                if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmd).contains(&dir) {
                    let _ = Command::new("kill").args(["-9", &pid]).status();
                }
            }
        }
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
            .filter(|m| m.starts_with(&dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
}
