//! `zran snapshotter` under a real containerd (Debian's 1.6, with its own root, state and socket,
//! and a `proxy_plugins` entry pointing at zran's socket) and runc, with images from a real
//! registry: containerd pulls and unpacks layers into snapshots zran keeps, a container runs
//! from them, the image as containerd mounts it equals the truth, a `kill -9` of the
//! snapshotter loses nothing, the API's rules hold as `ctr snapshots` sees them, and removing
//! the image removes every snapshot and its data.

mod common;

use common::harness::{TestRegistry, repo_root};
use common::truth::{compare, walk};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A daemon this test started, killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(path: &Path, what: &str, d: &mut Daemon) {
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

fn snapshotter(root: &Path, sock: &Path, log: &Path) -> Daemon {
    let mut d = Daemon(
        Command::new(env!("CARGO_BIN_EXE_zran"))
            .arg("snapshotter")
            .arg("--root")
            .arg(root)
            .arg("--address")
            .arg(sock)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for(sock, "zran snapshotter", &mut d);
    d
}

fn containerd(dir: &Path, zran_sock: &Path) -> (Daemon, PathBuf) {
    let sock = dir.join("containerd.sock");
    let config = format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{s}"
[proxy_plugins]
  [proxy_plugins.zran]
    type = "snapshot"
    address = "{z}"
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{d}/opt"
"#,
        d = dir.display(),
        s = sock.display(),
        z = zran_sock.display()
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

fn ctr(sock: &Path, args: &[&str]) -> Output {
    Command::new("ctr").arg("-a").arg(sock).args(args).output().unwrap()
}

fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// The chain id of the top layer of a test image: the key containerd commits it under.
fn top_chain_id(layout: &Path) -> String {
    let blob = |d: &str| -> Value {
        let (alg, hex) = d.split_once(':').unwrap();
        serde_json::from_slice(&std::fs::read(layout.join("blobs").join(alg).join(hex)).unwrap()).unwrap()
    };
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest = blob(index["manifests"][0]["digest"].as_str().unwrap());
    let config = blob(manifest["config"]["digest"].as_str().unwrap());
    let mut chain: Option<String> = None;
    for d in config["rootfs"]["diff_ids"].as_array().unwrap() {
        let d = d.as_str().unwrap();
        chain = Some(match chain {
            None => d.to_string(),
            Some(c) => {
                use sha2::Digest;
                format!("sha256:{}", hex::encode(sha2::Sha256::digest(format!("{c} {d}"))))
            }
        });
    }
    chain.unwrap()
}

fn snapshot_keys(sock: &Path) -> Vec<String> {
    let out = ok(ctr(sock, &["snapshots", "--snapshotter", "zran", "ls"]), "snapshots ls");
    out.lines().skip(1).filter_map(|l| l.split_whitespace().next().map(str::to_string)).collect()
}

#[test]
fn containers_run_from_snapshots_zran_keeps() {
    let reg = TestRegistry::start("plain");
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("zran");
    let zsock = work.path().join("zran.sock");
    let mut zran = snapshotter(&root, &zsock, &work.path().join("zran.log"));
    let (_ctd, sock) = containerd(work.path(), &zsock);
    let image = format!("{}/python:latest", reg.host());

    // Pull: containerd unpacks every layer into snapshots zran prepares and commits.
    ok(ctr(&sock, &["image", "pull", "--plain-http", "--snapshotter", "zran", &image]), "pull");
    let layers = snapshot_keys(&sock);
    assert_eq!(layers.len(), 3, "one committed snapshot per layer: {layers:?}");
    let run = |id: &str| {
        ok(
            ctr(
                &sock,
                &[
                    "run",
                    "--rm",
                    "--snapshotter",
                    "zran",
                    &image,
                    id,
                    "/usr/bin/python3.11",
                    "-c",
                    "import json, email; print(json.dumps({'answer': 6 * 7}))",
                ],
            ),
            "run",
        )
    };
    assert_eq!(run("c1").trim(), r#"{"answer": 42}"#);

    // The image as containerd mounts it (a view of the top layer) equals the truth.
    let top = top_chain_id(&repo_root().join("target/testimages/layouts/python"));
    let mounts =
        ok(ctr(&sock, &["snapshots", "--snapshotter", "zran", "view", "--mounts", "v1", &top]), "view");
    let mounts: Value = serde_json::from_str(&mounts).unwrap();
    let m = &mounts[0];
    assert_eq!(m["Type"], "overlay", "{mounts}");
    let opts: Vec<&str> = m["Options"].as_array().unwrap().iter().map(|o| o.as_str().unwrap()).collect();
    let mnt = work.path().join("view");
    std::fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &format!("ro,{}", opts.join(","))])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success());
    let walked = walk(&mnt);
    let _ = Command::new("umount").arg(&mnt).status();
    assert!(compare("python", &walked, false) > 1000);
    // (ctr made the view under a lease of its own, which the garbage collector removes.)

    // The API's rules, as containerd passes them on.
    let snap = |args: &[&str]| {
        let mut a = vec!["snapshots", "--snapshotter", "zran"];
        a.extend_from_slice(args);
        ctr(&sock, &a)
    };
    ok(snap(&["prepare", "a1", &top]), "prepare");
    let e = snap(&["prepare", "a1", &top]);
    assert!(!e.status.success() && String::from_utf8_lossy(&e.stderr).contains("already exists"));
    let e = snap(&["prepare", "a2", "sha256:nope"]);
    assert!(!e.status.success() && String::from_utf8_lossy(&e.stderr).contains("not found"));
    ok(snap(&["commit", "c-a1", "a1"]), "commit");
    ok(snap(&["prepare", "a3", "c-a1"]), "prepare on a committed snapshot");
    let e = snap(&["rm", "c-a1"]);
    assert!(!e.status.success(), "a parent with a child cannot go");
    ok(snap(&["label", "a3", "x=y"]), "label");
    let info: Value = serde_json::from_str(&ok(snap(&["info", "a3"]), "info")).unwrap();
    assert_eq!(info["Labels"]["x"], "y", "{info}");
    ok(snap(&["rm", "a3"]), "rm");
    ok(snap(&["rm", "c-a1"]), "rm");

    // kill -9: the snapshots survive, and containers start again.
    zran.0.kill().unwrap();
    zran.0.wait().unwrap();
    drop(zran);
    let _zran = snapshotter(&root, &zsock, &work.path().join("zran-2.log"));
    // containerd redials a proxy plugin with a backoff (at most 3 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ctr(&sock, &["snapshots", "--snapshotter", "zran", "ls"]).status.success() {
        assert!(Instant::now() < deadline, "containerd did not reach the restarted snapshotter");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(snapshot_keys(&sock), layers);
    assert_eq!(run("c2").trim(), r#"{"answer": 42}"#);

    // Removing the image removes its snapshots and their data.
    ok(ctr(&sock, &["image", "rm", "--sync", &image]), "image rm");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !snapshot_keys(&sock).is_empty() {
        assert!(Instant::now() < deadline, "snapshots left: {:?}", snapshot_keys(&sock));
        std::thread::sleep(Duration::from_millis(100));
    }
    let left: Vec<_> = std::fs::read_dir(root.join("snapshots")).unwrap().collect();
    assert!(left.is_empty(), "data left: {left:?}");
}
