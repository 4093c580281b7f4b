//! `zran bench startup` for real: a registry in a network namespace of its own behind a shaped
//! link, containerd with overlayfs and with zran's snapshotter, the python test image started
//! in each mode. The report's JSON holds every mode's answer, bytes over the link that agree
//! with the registry's own access log, zran's counters; the SVG parses and names every mode;
//! nothing (namespace, veth, processes, mounts) is left behind, after a complete run and after
//! SIGINT in the middle of one. Needs root, iproute2, docker-registry, skopeo, containerd, ctr,
//! ctr-remote and runc (skips with a message otherwise).

mod common;

use common::containerd::Sweep;
use common::harness::layouts;
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WORKLOAD: &str = r#"/usr/bin/python3.11 -c 'import json, email, http.client, sqlite3; print(json.dumps({"answer": 6 * 7}))'"#;
const EXPECT: &str = r#"{"answer": 42}"#;

fn zran() -> &'static str {
    env!("CARGO_BIN_EXE_zran")
}

/// zran's standard output for `args` (which must succeed).
fn zran_cmd(args: &[&str]) -> Vec<u8> {
    let o = Command::new(zran()).args(args).output().unwrap();
    assert!(o.status.success(), "zran {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: zran bench startup needs root");
        return false;
    }
    for tool in ["ip", "tc", "docker-registry", "skopeo", "containerd", "ctr", "ctr-remote", "runc"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output();
        if !found.is_ok_and(|o| o.status.success()) {
            eprintln!("skipping: {tool} is not installed");
            return false;
        }
    }
    true
}

fn has_convert() -> bool {
    Command::new(zran())
        .args(["convert", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn startup(work: &Path, modes: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(zran());
    c.args(["bench", "startup"])
        .arg(format!("oci:{}", layouts().join("python").display()))
        .args(["--workload", WORKLOAD, "--expect", EXPECT, "--modes", modes])
        .arg("--work")
        .arg(work)
        .args(extra);
    c
}

/// What a bench with this PID and work directory could have left.
fn leftovers(pid: u32, work: &Path) -> Vec<String> {
    let mut left = Vec::new();
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    for line in String::from_utf8_lossy(&ns.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name == format!("zranbench-{pid}") || name.starts_with(&format!("zranbench-{pid}-")) {
            left.push(format!("namespace {name}"));
        }
    }
    for e in std::fs::read_dir("/sys/class/net").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("zb{pid}")) {
            left.push(format!("interface {name}"));
        }
    }
    let needle = work.to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if p == std::process::id() {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&needle) {
            left.push(format!("process {p}: {cmd}"));
        }
    }
    for m in std::fs::read_to_string("/proc/self/mounts").unwrap().lines() {
        if let Some(mp) = m.split(' ').nth(1)
            && mp.starts_with(&needle)
        {
            left.push(format!("mount {mp}"));
        }
    }
    left
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("zran bench startup did not finish in {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn startup_compares_modes_with_consistent_counts() {
    if !can_run() {
        return;
    }
    let dir = tempfile::Builder::new().prefix("zran-bench-test").tempdir_in("/var/tmp").unwrap();
    let work = dir.path().join("work");
    let _sweep = Sweep(work.clone());
    let mut modes = vec!["full", "zran", "zran-trace", "zran-estargz"];
    if has_convert() {
        modes.push("zran-native");
    }
    modes.push("zran-zstdchunked");
    let (json, svg) = (dir.path().join("report.json"), dir.path().join("startup.svg"));
    let mut cmd = startup(&work, &modes.join(","), &["--runs", "1", "--rate", "400", "--delay", "3"]);
    cmd.arg("--json").arg(&json).arg("--plot").arg(&svg);
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let status = wait_exit(&mut child, Duration::from_secs(240));
    let mut out = String::new();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    eprintln!("{out}\n{err}");
    assert!(status.success(), "bench failed: {err}");

    // The table names every mode.
    assert!(out.contains("| mode | harness | prepare |"), "{out}");
    for m in &modes {
        assert!(out.contains(&format!("| {m} | containerd |")), "{m} missing from the table:\n{out}");
    }

    let r: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["schema"], "zran-bench-startup/1");
    assert_eq!(r["runs"], 1);
    assert_eq!(r["expect"], EXPECT);
    assert_eq!(r["workload"][0], "/usr/bin/python3.11");
    assert_eq!(r["workload"].as_array().unwrap().len(), 3);
    assert_eq!(r["link"]["rate_mbit"], 400.0);
    assert_eq!(r["link"]["delay_ms"], 3);
    let image_bytes = r["image_bytes"].as_u64().unwrap();
    assert!(image_bytes > 10_000_000, "python image of {image_bytes} bytes");
    let got: Vec<&str> = r["modes"].as_array().unwrap().iter().map(|m| m["mode"].as_str().unwrap()).collect();
    assert_eq!(got, modes);
    for m in r["modes"].as_array().unwrap() {
        let name = m["mode"].as_str().unwrap();
        assert_eq!(m["status"], "ok", "{name}: {m}");
        assert_eq!(m["harness"], "containerd");
        assert!(m["prepare"]["error"].is_null());
        let prep_bytes = m["prepare"]["bytes"].as_u64().unwrap();
        assert!(prep_bytes > 0, "{name}: prepared {prep_bytes} bytes");
        let samples = m["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 1, "{name}");
        let s = &samples[0];
        assert!(s["output"].as_str().unwrap().contains(EXPECT), "{name}: {}", s["output"]);
        let (total, pull, run) =
            (s["total_s"].as_f64().unwrap(), s["pull_s"].as_f64().unwrap(), s["run_s"].as_f64().unwrap());
        assert!(pull > 0.0 && run > 0.0 && (pull + run - total).abs() < 0.01, "{name}: {s}");
        // Every byte the registry says it sent for blobs crossed the link; the link carried
        // little else (headers, manifests, TCP/IP framing).
        let link = s["link_rx_bytes"].as_u64().unwrap();
        let blobs = s["registry_blob_bytes"].as_u64().unwrap();
        assert!(s["registry_blob_requests"].as_u64().unwrap() >= 1, "{name}: {s}");
        assert!(link >= blobs, "{name}: {link} bytes over the link < {blobs} blob bytes sent");
        assert!(
            link <= blobs + blobs / 10 + 2_000_000,
            "{name}: {link} bytes over the link, {blobs} blob bytes"
        );
        let summary = &m["summary"];
        assert_eq!(summary["total_s"]["median"].as_f64().unwrap(), total);
        match name {
            "full" => {
                assert!(blobs >= image_bytes, "full pull sent {blobs} of {image_bytes} bytes");
                assert_eq!(prep_bytes, image_bytes);
                assert!(s["file_bytes_read"].is_null());
                assert!(summary["speedup_vs_full"].as_f64().unwrap() == 1.0);
            }
            _ => {
                // Lazy: part of the image, and zran's counters saw the start's reads.
                assert!(blobs < image_bytes, "{name}: {blobs} of {image_bytes} bytes sent");
                let read = s["file_bytes_read"].as_u64().unwrap();
                let fetched = s["bytes_fetched"].as_u64().unwrap();
                assert!(read > 1_000_000 && fetched > 100_000, "{name}: read {read}, fetched {fetched}");
                assert!(fetched <= blobs, "{name}: fetched {fetched} > {blobs} sent");
                let amp = summary["read_amplification"].as_f64().unwrap();
                assert!((amp - fetched as f64 / read as f64).abs() < 1e-9);
                assert!(summary["speedup_vs_full"].as_f64().unwrap() > 0.0);
            }
        }
        if name == "zran" {
            assert!(prep_bytes < image_bytes / 10, "artifact of {prep_bytes} bytes");
        }
        if name == "zran-trace" {
            // A start was recorded and its trace is the artifact's prefetch table.
            assert_eq!(m["prepare"]["step"], "zran generate --prefetch-trace --push", "{m}");
            let trace = std::fs::read_dir(work.join("traces"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.extension().is_some_and(|x| x == "json"))
                .expect("the recorded trace");
            let t: Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
            let paths: Vec<&str> =
                t["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
            assert!(paths.contains(&"/usr/bin/python3.11"), "{paths:?}");
            let art = work.join("artifact-trace");
            let v: Value =
                serde_json::from_slice(&zran_cmd(&["inspect", "--json", art.to_str().unwrap()])).unwrap();
            assert_eq!(v["prefetch"], serde_json::json!(paths), "the prefetch table is the trace");
        }
    }

    // The chart: XML, one label per mode.
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    let parsed = Command::new("python3")
        .args(["-c", "import sys, xml.etree.ElementTree as E; E.parse(sys.argv[1])"])
        .arg(&svg)
        .output()
        .unwrap();
    assert!(parsed.status.success(), "SVG does not parse: {}", String::from_utf8_lossy(&parsed.stderr));
    for m in &modes {
        assert!(
            svg_text.contains(&format!(">\n{m}\n<")) || svg_text.contains(&format!(">{m}<")),
            "{m} not in the SVG"
        );
    }

    let left = leftovers(pid, &work);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[test]
fn startup_cleans_up_on_sigint() {
    if !can_run() {
        return;
    }
    let dir = tempfile::Builder::new().prefix("zran-bench-test").tempdir_in("/var/tmp").unwrap();
    let work = dir.path().join("work");
    let _sweep = Sweep(work.clone());
    let mut child = startup(&work, "full,zran", &["--runs", "3", "--rate", "50", "--delay", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Wait until a start is under way: containerd up in the start's directory.
    let end = Instant::now() + Duration::from_secs(120);
    let sock = work.join("run/containerd/ctd.sock");
    while !sock.exists() {
        assert!(child.try_wait().unwrap().is_none(), "the bench ended before any start");
        assert!(Instant::now() < end, "no start began in 120 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(800));
    let before = leftovers(pid, &work);
    assert!(before.iter().any(|l| l.starts_with("namespace")), "no namespace during the run: {before:#?}");
    assert!(before.iter().any(|l| l.starts_with("interface")), "no veth during the run: {before:#?}");
    assert!(before.iter().any(|l| l.contains("containerd")), "no containerd during the run: {before:#?}");
    // SAFETY: a signal to the child by its PID.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "an interrupted bench exits with an error");
    assert!(err.contains("interrupted"), "{err}");
    let left = leftovers(pid, &work);
    assert!(left.is_empty(), "left behind after SIGINT: {left:#?}");
}

/// The harness used where containerd is missing (forced here): full is skopeo + umoci, zran is
/// `zran mount`, the workload runs in chroot of the tree; unshaped link, no forwarder.
#[test]
fn startup_in_chroot_unshaped() {
    if !can_run() {
        return;
    }
    let dir = tempfile::Builder::new().prefix("zran-bench-test").tempdir_in("/var/tmp").unwrap();
    let work = dir.path().join("work");
    let _sweep = Sweep(work.clone());
    let json = dir.path().join("report.json");
    let mut cmd =
        startup(&work, "full,zran,zran-trace", &["--runs", "1", "--rate", "0", "--delay", "0", "--chroot"]);
    let mut child =
        cmd.arg("--json").arg(&json).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let status = wait_exit(&mut child, Duration::from_secs(180));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "bench failed: {err}");
    let r: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["link"]["rate_mbit"], 0.0);
    assert_eq!(r["link"]["delay_ms"], 0);
    for m in r["modes"].as_array().unwrap() {
        assert_eq!(m["status"], "ok", "{m}");
        assert_eq!(m["harness"], "chroot");
        let s = &m["samples"][0];
        assert!(s["output"].as_str().unwrap().contains(EXPECT), "{s}");
        let (link, blobs) =
            (s["link_rx_bytes"].as_u64().unwrap(), s["registry_blob_bytes"].as_u64().unwrap());
        assert!(link >= blobs && link <= blobs + blobs / 10 + 2_000_000, "{m}");
        if m["mode"] == "zran-trace" {
            // Recorded by `zran mount --record-trace` in chroot.
            let t: Value =
                serde_json::from_slice(&std::fs::read(work.join("traces/trace.json")).unwrap()).unwrap();
            assert_eq!(t["files"][0]["path"], "/usr/bin/python3.11", "{t}");
        }
        if m["mode"] == "zran" || m["mode"] == "zran-trace" {
            assert!(s["file_bytes_read"].as_u64().unwrap() > 1_000_000, "{s}");
            assert!(blobs < r["image_bytes"].as_u64().unwrap(), "{s}");
        }
    }
    let left = leftovers(pid, &work);
    assert!(left.is_empty(), "left behind: {left:#?}");
}
