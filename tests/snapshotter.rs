//! `zran snapshotter` under a real containerd (Debian's 1.6, with its own root, state and socket,
//! and a `proxy_plugins` entry pointing at zran's socket) and runc, with images from a real
//! registry: containerd pulls and unpacks layers into snapshots zran keeps, a container runs
//! from them, the image as containerd mounts it equals the truth, a `kill -9` of the
//! snapshotter loses nothing, the API's rules hold as `ctr snapshots` sees them, and removing
//! the image removes every snapshot and its data.

mod common;

use common::containerd::{
    Sweep, containerd, ctr, layer_bytes_served, layers, ok, push_layout, served, snapshotter, zran_mounts,
};
use common::harness::{TestRegistry, repo_root};
use common::truth::{compare, walk};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

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

/// The hex of the python image's manifest digest in the registry (the serving process's key).
fn python_manifest_hex(host: &str) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_zran"))
        .args(["inspect", "--json", &format!("{host}/python:latest")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["manifest"].as_str().unwrap_or_else(|| panic!("{v}")).trim_start_matches("sha256:").to_string()
}

fn snapshot_keys(sock: &Path) -> Vec<String> {
    let out = ok(ctr(sock, &["snapshots", "--snapshotter", "zran", "ls"]), "snapshots ls");
    out.lines().skip(1).filter_map(|l| l.split_whitespace().next().map(str::to_string)).collect()
}

#[test]
fn containers_run_from_snapshots_zran_keeps() {
    let reg = TestRegistry::start("plain");
    let work = tempfile::tempdir().unwrap();
    let _sweep = Sweep(work.path().to_path_buf());
    let root = work.path().join("zran");
    let zsock = work.path().join("zran.sock");
    let mut zran = snapshotter(&root, &zsock, &work.path().join("zran.log"), &[]);
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
    let _zran = snapshotter(&root, &zsock, &work.path().join("zran-2.log"), &[]);
    // containerd redials a proxy plugin with a backoff (at most 3 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ctr(&sock, &["snapshots", "--snapshotter", "zran", "ls"]).status.success() {
        assert!(Instant::now() < deadline, "containerd did not reach the restarted snapshotter");
        std::thread::sleep(Duration::from_millis(200));
    }
    // (The view may still be there: the garbage collector removes it in its own time.)
    let keys: Vec<String> = snapshot_keys(&sock).into_iter().filter(|k| k != "v1").collect();
    assert_eq!(keys, layers);
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

/// A reader run in a container: every regular file under /usr, in order, its sha256 (or
/// `ERR<errno>`) written to /out/log, `delay` seconds apart; `DONE` at the end.
const READER: &str = r#"
import hashlib, os, sys, time
out = open('/out/log', 'w', buffering=1)
delay = float(sys.argv[1])
for root, dirs, files in os.walk('/usr'):
    dirs.sort()
    for f in sorted(files):
        p = os.path.join(root, f)
        if os.path.islink(p) or not os.path.isfile(p):
            continue
        try:
            with open(p, 'rb') as fh:
                h = hashlib.sha256(fh.read()).hexdigest()
        except OSError as e:
            h = 'ERR%d' % e.errno
        out.write(p + ' ' + h + '\n')
        time.sleep(delay)
out.write('DONE\n')
"#;

/// What the reader saw, checked against the truth: (files read right, paths that failed).
/// A file read with wrong bytes fails the test.
fn reader_results(log: &Path, image: &str) -> (usize, Vec<String>) {
    let text = std::fs::read_to_string(log).unwrap();
    assert!(
        text.ends_with("DONE\n"),
        "the reader did not finish: {}",
        &text[text.len().saturating_sub(300)..]
    );
    let truth = common::truth::by_path(&common::truth::truth(image));
    let (mut ok, mut failed) = (0, Vec::new());
    for line in text.lines().filter(|l| *l != "DONE") {
        let (path, h) = line.rsplit_once(' ').unwrap();
        if h.starts_with("ERR") {
            assert_eq!(h, "ERR5", "{path}: only EIO is allowed");
            failed.push(path.to_string());
            continue;
        }
        let want = truth.get(path).unwrap_or_else(|| panic!("{path} is not in the image"));
        assert_eq!(want["sha256"].as_str(), Some(h), "{path}: wrong bytes");
        ok += 1;
    }
    (ok, failed)
}

/// Push `python-sibling`: the python test image's first layer and a layer of its own
/// (`/hello.txt`), made here.
fn push_sibling(dir: &Path, image: &str) {
    let layout = dir.join("sibling");
    let script = r#"
import gzip, hashlib, io, json, os, shutil, sys, tarfile
src, dst = sys.argv[1], sys.argv[2]
shutil.copytree(src, dst)
blobs = os.path.join(dst, "blobs/sha256")
def put(b):
    h = hashlib.sha256(b).hexdigest()
    open(os.path.join(blobs, h), "wb").write(b)
    return "sha256:" + h, len(b)
raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
    data = b"hello from a sibling\n"
    ti = tarfile.TarInfo("hello.txt"); ti.size = len(data); ti.mtime = 1700000000
    t.addfile(ti, io.BytesIO(data))
tar = raw.getvalue()
ld, ls = put(gzip.compress(tar, mtime=0))
index = json.load(open(os.path.join(dst, "index.json")))
m = json.load(open(os.path.join(blobs, index["manifests"][0]["digest"].split(":")[1])))
c = json.load(open(os.path.join(blobs, m["config"]["digest"].split(":")[1])))
c["rootfs"]["diff_ids"] = c["rootfs"]["diff_ids"][:1] + ["sha256:" + hashlib.sha256(tar).hexdigest()]
c["history"] = c.get("history", [])[:1] + [{"created_by": "sibling"}]
c["config"]["Labels"] = {"org.zran.testimage": "python-sibling"}
cd, cs = put(json.dumps(c).encode())
m["config"]["digest"], m["config"]["size"] = cd, cs
m["layers"] = m["layers"][:1] + [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": ls}]
nd, ns = put(json.dumps(m).encode())
index["manifests"][0]["digest"], index["manifests"][0]["size"] = nd, ns
json.dump(index, open(os.path.join(dst, "index.json"), "w"))
"#;
    let st = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(repo_root().join("target/testimages/layouts/python"))
        .arg(&layout)
        .status()
        .unwrap();
    assert!(st.success(), "making the sibling image");
    push_layout(&format!("oci:{}", layout.display()), image);
}

#[test]
fn images_start_lazily_through_containerd() {
    let reg = TestRegistry::start("plain");
    let host = reg.host();
    let work = tempfile::tempdir().unwrap();
    let _sweep = Sweep(work.path().to_path_buf());
    let root = work.path().join("zran");
    let zsock = work.path().join("zran.sock");
    let zlog = work.path().join("zran.log");
    // Each image's start-up trace recorded (the snapshotter's `record_traces`).
    let traces = work.path().join("traces");
    let config = work.path().join("zran.toml");
    std::fs::write(
        &config,
        format!("[mount]\nrecord_traces = \"{}\"\ntrace_window = 120\n", traces.display()),
    )
    .unwrap();
    let mut zran = snapshotter(&root, &zsock, &zlog, &["--config", config.to_str().unwrap()]);
    let (_ctd, sock) = containerd(work.path(), &zsock);
    let python = format!("{host}/python:latest");

    // The artifact stored beside the image.
    let art = work.path().join("art");
    let g = Command::new(env!("CARGO_BIN_EXE_zran"))
        .args(["generate", &python, "-o"])
        .arg(&art)
        .arg("--push")
        .output()
        .unwrap();
    ok(g, "generate --push");

    let rpull = |image: &str| {
        ok(
            Command::new("ctr-remote")
                .arg("-a")
                .arg(&sock)
                .args(["image", "rpull", "--plain-http", "--snapshotter", "zran", image])
                .output()
                .unwrap(),
            "rpull",
        )
    };
    let run = |image: &str, id: &str, extra: &[&str], cmd: &[&str]| {
        let mut a = vec!["run", "--rm", "--snapshotter", "zran"];
        a.extend_from_slice(extra);
        a.extend_from_slice(&[image, id]);
        a.extend_from_slice(cmd);
        ctr(&sock, &a)
    };
    let answer = ["/usr/bin/python3.11", "-c", "import json, email; print(json.dumps({'answer': 6 * 7}))"];

    // 1. The image with an artifact: containerd downloads no layer, the container runs, and
    //    the registry serves a small part of the layers.
    let base = layer_bytes_served(&reg, "python");
    rpull(&python);
    assert_eq!(layer_bytes_served(&reg, "python") - base, 0, "rpull downloaded layers");
    assert_eq!(ok(run(&python, "p1", &[], &answer), "run").trim(), r#"{"answer": 42}"#);
    let total: u64 = layers("python").iter().map(|l| l.1).sum();
    let fetched = layer_bytes_served(&reg, "python") - base;
    // (What the start reads, and the layer data after each miss, fetched beside it.)
    assert!(fetched > 0 && fetched < total * 3 / 4, "{fetched} of {total} bytes of layers served");
    // (The container's snapshot may be gone already, and the image's mount with it.)
    assert!(zran_mounts(&root).len() <= 1, "one serving process for the image");
    // The serving process recorded the start: the interpreter first, then what it imported.
    let manifest = python_manifest_hex(&host);
    let trace = traces.join(format!("{manifest}.json"));
    let t0 = std::time::Instant::now();
    let paths = loop {
        let t: Value =
            std::fs::read(&trace).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null);
        let paths: Vec<String> = t["files"]
            .as_array()
            .map(|a| a.iter().map(|f| f["path"].as_str().unwrap_or("").to_string()).collect())
            .unwrap_or_default();
        if paths.iter().any(|p| p.ends_with("/email/__init__.py")) || t0.elapsed() > Duration::from_secs(10) {
            break paths;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // (The runtime reads /etc/passwd and /etc/group from the image first.)
    let at = |name: &str| paths.iter().position(|p| p.ends_with(name));
    let (py, json) = (at("/usr/bin/python3.11"), at("/json/__init__.py"));
    assert!(py.is_some() && json.is_some() && py < json, "{}: {paths:?}", trace.display());
    assert!(at("/etc/passwd").is_some(), "{paths:?}");

    // The container's view of the image (a view of its top layer) is the truth.
    let top = top_chain_id(&repo_root().join("target/testimages/layouts/python"));
    let mounts =
        ok(ctr(&sock, &["snapshots", "--snapshotter", "zran", "view", "--mounts", "pv", &top]), "view");
    let mounts: Value = serde_json::from_str(&mounts).unwrap();
    assert_eq!(mounts[0]["Type"], "bind", "{mounts}");
    let src = mounts[0]["Source"].as_str().unwrap();
    assert!(zran_mounts(&root).iter().any(|m| m.contains(src)), "{src} is the image's FUSE mount");
    let mnt = work.path().join("view");
    std::fs::create_dir(&mnt).unwrap();
    assert!(Command::new("mount").args(["--bind", "-o", "ro", src]).arg(&mnt).status().unwrap().success());
    let walked = walk(&mnt);
    let _ = Command::new("umount").arg(&mnt).status();
    assert!(compare("python", &walked, false) > 1000);
    // (ctr made the view under a lease of its own, which the garbage collector removes.)

    // 1b. An image without an artifact that shares the python image's first layer (a sibling
    //     from the same base): containerd finds that layer committed as remote and unpacks
    //     only its own layer, on the served image's first layer (indexed for it), and it runs.
    let sibling = format!("{host}/python-sibling:latest");
    push_sibling(work.path(), &sibling);
    rpull(&sibling);
    let out = ok(run(&sibling, "s1", &[], &["/bin/busybox", "cat", "/hello.txt"]), "run the sibling");
    assert_eq!(out.trim(), "hello from a sibling");
    let probe = ["/bin/busybox", "sh", "-c", "test -e /usr/bin/python3.11 && echo python || echo base only"];
    let out = ok(run(&sibling, "s2", &[], &probe), "probe the sibling");
    assert_eq!(out.trim(), "base only", "the sibling has the first layer only");

    // 2. eStargz without --enable-stargz, like any image without an artifact: containerd
    //    pulls and unpacks it, it runs, nothing more is mounted.
    let estargz = format!("{host}/python-estargz:latest");
    rpull(&estargz);
    assert_eq!(ok(run(&estargz, "n1", &[], &answer), "run plain").trim(), r#"{"answer": 42}"#);
    let mounts = zran_mounts(&root);
    assert!(
        !mounts.iter().any(|m| m.contains("/python-estargz@")),
        "a plain image is not served through FUSE: {mounts:?}"
    );
    let snapshotter_stats = || -> Value {
        let o =
            Command::new(env!("CARGO_BIN_EXE_zran")).arg("stats").arg("--snapshotter").arg(&root).output();
        serde_json::from_str(&ok(o.unwrap(), "zran stats")).unwrap()
    };
    let stats = snapshotter_stats();
    assert_eq!(stats["images"][&python]["served_as"], "artifact", "{stats}");
    let m = &stats["images"][&python]["mount"];
    assert!(m["pid"].as_u64().unwrap() > 0, "{stats}");
    assert!(m["stats"]["chunks_verified"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(m["stats"]["digest_failures"], 0, "{stats}");
    assert_eq!(stats["images"][&estargz]["served_as"], "plain", "{stats}");
    assert!(stats["images"][&estargz]["reason"].as_str().unwrap().contains("no zran artifact"), "{stats}");
    ok(ctr(&sock, &["image", "rm", "--sync", &estargz]), "image rm");

    // 3. kill -9 of the snapshotter while a container reads from its image: the container
    //    reads on, every byte right; a new snapshotter lists every snapshot, containers start.
    let out = work.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("reader.py"), READER).unwrap();
    let bind = format!("type=bind,src={},dst=/out,options=rbind:rw", out.display());
    // (Less the view made above, which the garbage collector removes in its own time.)
    let keys_now = || -> Vec<String> { snapshot_keys(&sock).into_iter().filter(|k| k != "pv").collect() };
    let keys = keys_now();
    // A reader container in the background: `python3.11 -B /out/SCRIPT DELAY` from `image`.
    let reader_in = |image: &str, id: &str, script: &str, delay: &str| {
        let (sock, bind) = (sock.clone(), bind.clone());
        let (image, id, script, delay) =
            (image.to_string(), id.to_string(), format!("/out/{script}"), delay.to_string());
        std::thread::spawn(move || {
            let args = ["run", "--rm", "--snapshotter", "zran", "--mount", &bind, &image, &id];
            let cmd = ["/usr/bin/python3.11", "-B", &script, &delay];
            ctr(&sock, &[&args[..], &cmd[..]].concat())
        })
    };
    let reader = reader_in(&python, "r1", "reader.py", "0.003");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(out.join("log")).map_or(0, |t| t.lines().count()) < 50 {
        assert!(Instant::now() < deadline, "the reader did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    zran.0.kill().unwrap();
    zran.0.wait().unwrap();
    drop(zran);
    let read_before = std::fs::read_to_string(out.join("log")).unwrap().lines().count();
    // (This one serves eStargz images too.)
    let zran = snapshotter(&root, &zsock, &work.path().join("zran-2.log"), &["--enable-stargz"]);
    ok(reader.join().unwrap(), "the reader");
    let (read, failed) = reader_results(&out.join("log"), "python");
    assert!(failed.is_empty(), "reads failed: {failed:?}");
    assert!(read > read_before + 100, "read {read}, {read_before} before the kill");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ctr(&sock, &["snapshots", "--snapshotter", "zran", "ls"]).status.success() {
        assert!(Instant::now() < deadline, "containerd did not reach the restarted snapshotter");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(keys_now(), keys);
    assert_eq!(ok(run(&python, "p2", &[], &answer), "run after restart").trim(), r#"{"answer": 42}"#);

    // A serving process that dies (kill -9) under a running container is replaced at the next
    // container's start.
    ok(
        ctr(&sock, &["run", "-d", "--snapshotter", "zran", &python, "keep", "/bin/busybox", "sleep", "600"]),
        "run -d",
    );
    let stats = snapshotter_stats();
    let pid = stats["images"][&python]["mount"]["pid"].as_u64().unwrap();
    assert_eq!(stats["images"][&python]["mount"]["live"], true, "{stats}");
    ok(Command::new("kill").args(["-9", &pid.to_string()]).output().unwrap(), "kill the serving process");
    assert_eq!(ok(run(&python, "p3", &[], &answer), "run after its death").trim(), r#"{"answer": 42}"#);
    // The new serving process found every chunk of the image in the cache (the walk of the
    // view above read them all): that container ran on the kernel's EROFS over the cache.
    let stats = snapshotter_stats();
    let m = &stats["images"][&python]["mount"];
    assert_eq!(m["served"], "kernel-erofs", "{stats}");
    assert_ne!(m["pid"].as_u64().unwrap(), pid, "{stats}");
    let mnt = m["mountpoint"].as_str().unwrap();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        info.lines().any(|l| l.split(' ').nth(4) == Some(mnt) && l.contains(" - erofs ")),
        "{mnt} is not an EROFS mount"
    );
    let _ = ctr(&sock, &["task", "kill", "-s", "SIGKILL", "keep"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ctr(&sock, &["task", "rm", "keep"]).status.success() {
        assert!(Instant::now() < deadline, "the task did not end");
        std::thread::sleep(Duration::from_millis(100));
    }
    ok(ctr(&sock, &["container", "rm", "keep"]), "container rm");

    // 4. eStargz with --enable-stargz: served from the TOCs, no layer downloaded.
    let estargz_base = layer_bytes_served(&reg, "python-estargz");
    rpull(&estargz);
    let toc_reads = layer_bytes_served(&reg, "python-estargz") - estargz_base;
    let total_estargz: u64 = layers("python-estargz").iter().map(|l| l.1).sum();
    assert!(toc_reads < total_estargz / 20, "rpull read {toc_reads} bytes of eStargz layers (TOCs only)");
    assert_eq!(ok(run(&estargz, "e1", &[], &answer), "run eStargz").trim(), r#"{"answer": 42}"#);
    let stats: Value = serde_json::from_slice(&std::fs::read(root.join("stats.json")).unwrap()).unwrap();
    assert_eq!(stats["images"][&estargz]["served_as"], "estargz", "{stats}");

    // 5. A byte changed in the registry's storage: EIO for the files in that chunk only, the
    //    rest read right. The eStargz image, of which only the workload above was read (the
    //    python image is all in the cache after the walk); the reader's own start is read
    //    before the change.
    let (big, _) = layers("python-estargz").into_iter().max_by_key(|l| l.1).unwrap();
    let data = reg.blob_data(&big);
    let mut bytes = std::fs::read(&data).unwrap();
    let at = bytes.len() / 2;
    std::fs::remove_file(out.join("log")).unwrap();
    let go = out.join("go");
    let script = "import hashlib, os, time\nwhile not os.path.exists('/out/go'): time.sleep(0.02)\nexec(open('/out/reader.py').read())";
    std::fs::write(out.join("tamper.py"), script).unwrap();
    let tamper = reader_in(&estargz, "t1", "tamper.py", "0");
    std::thread::sleep(Duration::from_secs(2));
    bytes[at] ^= 0x55;
    std::fs::write(&data, &bytes).unwrap();
    std::fs::write(&go, "").unwrap();
    ok(tamper.join().unwrap(), "the tampered reader");
    let (read, failed) = reader_results(&out.join("log"), "python-estargz");
    assert!(!failed.is_empty(), "a changed byte in a layer must fail some read");
    assert!(failed.len() < read / 4, "{} failed, {read} read", failed.len());
    bytes[at] ^= 0x55;
    std::fs::write(&data, &bytes).unwrap();

    // 6. Removal: every snapshot goes, every serving process stops, the cache can be pruned.
    for image in [&python, &estargz, &sibling] {
        ok(ctr(&sock, &["image", "rm", "--sync", image]), "image rm");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !snapshot_keys(&sock).is_empty() || !zran_mounts(&root).is_empty() {
        assert!(Instant::now() < deadline, "left: {:?} {:?}", snapshot_keys(&sock), zran_mounts(&root));
        std::thread::sleep(Duration::from_millis(100));
    }

    // 7. zstd:chunked (made here by skopeo; the same layers as python once uncompressed, so
    //    only now that python's snapshots are gone) with --enable-stargz: served from its
    //    TOCs, no layer downloaded, the registry sends a small part of the layers.
    let zc_layout = work.path().join("python-zc");
    ok(
        Command::new("skopeo")
            .args(["copy", "-q", "--dest-compress-format", "zstd:chunked"])
            .arg(format!("oci:{}:latest", repo_root().join("target/testimages/layouts/python").display()))
            .arg(format!("oci:{}:latest", zc_layout.display()))
            .output()
            .unwrap(),
        "skopeo copy zstd:chunked",
    );
    let zstd_chunked = format!("{host}/python-zc:latest");
    push_layout(&format!("oci:{}:latest", zc_layout.display()), &zstd_chunked);
    let zc_index: Value =
        serde_json::from_slice(&std::fs::read(zc_layout.join("index.json")).unwrap()).unwrap();
    let zc_blob = |d: &str| zc_layout.join("blobs/sha256").join(d.trim_start_matches("sha256:"));
    let zc_manifest: Value = serde_json::from_slice(
        &std::fs::read(zc_blob(zc_index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let zc_layers: Vec<(String, u64)> = zc_manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect();
    let zc_served = || {
        let s = served(&reg);
        zc_layers.iter().map(|(h, _)| s.get(h).copied().unwrap_or(0)).sum::<u64>()
    };
    rpull(&zstd_chunked);
    let toc_reads = zc_served();
    let total_zc: u64 = zc_layers.iter().map(|l| l.1).sum();
    assert!(toc_reads < total_zc / 10, "rpull read {toc_reads} bytes of zstd:chunked layers (TOCs only)");
    assert_eq!(ok(run(&zstd_chunked, "z1", &[], &answer), "run zstd:chunked").trim(), r#"{"answer": 42}"#);
    let read = zc_served();
    assert!(read < total_zc / 2, "the start read {read} of {total_zc} bytes");
    let stats: Value = serde_json::from_slice(&std::fs::read(root.join("stats.json")).unwrap()).unwrap();
    assert_eq!(stats["images"][&zstd_chunked]["served_as"], "toc", "{stats}");

    ok(ctr(&sock, &["image", "rm", "--sync", &zstd_chunked]), "image rm");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !snapshot_keys(&sock).is_empty() || !zran_mounts(&root).is_empty() {
        assert!(Instant::now() < deadline, "left: {:?} {:?}", snapshot_keys(&sock), zran_mounts(&root));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(std::fs::read_dir(root.join("snapshots")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(root.join("images")).unwrap().count(), 0);
    let cache = root.join("cache");
    ok(
        Command::new(env!("CARGO_BIN_EXE_zran"))
            .args(["cache", "prune", "--cache-dir"])
            .arg(&cache)
            .output()
            .unwrap(),
        "cache prune",
    );
    let left = std::fs::read_dir(cache.join("blobs")).map_or(0, |d| d.count());
    assert_eq!(left, 0, "cached blobs left after pruning");
    drop(zran);
}
