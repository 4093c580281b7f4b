//! Merged trees against the truth: `zran inspect --files --json` of every plain test image,
//! from the OCI layout and from a real registry, compared field by field with what umoci
//! unpacks (`testimages/truth.py`).

mod common;

use common::harness::{TestRegistry, layouts, repo_root};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

fn inspect_files(image: &str) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_zran"))
        .args(["inspect", "--files", "--json", image])
        .output()
        .unwrap();
    assert!(out.status.success(), "{image}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn truth(name: &str) -> Value {
    let path = repo_root().join("target/testimages/truth").join(format!("{name}.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// Compare one image's tree with its truth; returns the number of entries compared.
fn compare(name: &str, ours: &Value) -> usize {
    compare_with(name, ours, false)
}

/// With `whole_seconds`, mtimes are compared rounded to the second: an eStargz TOC records
/// `modtime` in whole seconds (stargz-snapshotter rounds when it writes it), so a tree made from
/// the TOC has the times a stargz-snapshotter mount shows, not the tar headers' nanoseconds.
fn compare_with(name: &str, ours: &Value, whole_seconds: bool) -> usize {
    let truth = truth(name);
    let want: BTreeMap<String, &Value> = truth["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap().to_string(), e))
        .collect();
    let got: BTreeMap<String, &Value> = ours["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap().to_string(), e))
        .collect();
    let wk: BTreeSet<&String> = want.keys().collect();
    let gk: BTreeSet<&String> = got.keys().collect();
    let extra: Vec<_> = gk.difference(&wk).collect();
    let missing: Vec<_> = wk.difference(&gk).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{name}: extra paths {extra:?}, missing paths {missing:?}"
    );
    for (path, w) in &want {
        let g = got[path];
        for field in ["type", "mode", "uid", "gid", "size", "target", "major", "minor"] {
            assert_eq!(g.get(field), w.get(field), "{name} {path}: {field}");
        }
        // umoci gives directories no layer describes the time of the unpack; zran has no time
        // for them either.
        if w.get("implicit").and_then(Value::as_bool) == Some(true) {
            assert!(g["mtime"].is_null(), "{name} {path}: implicit directory with an mtime");
        } else if whole_seconds {
            let (sec, nsec) = (w["mtime"]["sec"].as_i64().unwrap(), w["mtime"]["nsec"].as_i64().unwrap());
            let rounded = sec + i64::from(nsec >= 500_000_000);
            assert_eq!(g["mtime"]["sec"].as_i64(), Some(rounded), "{name} {path}: mtime");
            assert_eq!(g["mtime"]["nsec"].as_i64(), Some(0), "{name} {path}: mtime");
        } else {
            assert_eq!(g["mtime"], w["mtime"], "{name} {path}: mtime");
        }
        // umoci skips empty-valued xattrs and security.selinux; zran keeps what the image says.
        let gx: BTreeMap<&String, &Value> = g["xattrs"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, v)| v.as_str() != Some("") && k.as_str() != "security.selinux")
            .collect();
        let wx: BTreeMap<&String, &Value> = w["xattrs"].as_object().unwrap().iter().collect();
        assert_eq!(gx, wx, "{name} {path}: xattrs");
    }
    // Hardlink groups: the same sets of names share an inode.
    let mut ours_groups: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for (path, g) in &got {
        if g["type"] != "dir" && g["nlink"].as_u64().unwrap_or(1) > 1 {
            ours_groups.entry(g["inode"].as_u64().unwrap()).or_default().insert(path.clone());
        }
    }
    let ours_groups: BTreeSet<BTreeSet<String>> = ours_groups.into_values().collect();
    let want_groups: BTreeSet<BTreeSet<String>> = truth["hardlink_groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect())
        .collect();
    assert_eq!(ours_groups, want_groups, "{name}: hardlink groups");
    // Link counts of files equal the size of their group.
    for group in &want_groups {
        for p in group {
            assert_eq!(got[p]["nlink"].as_u64(), Some(group.len() as u64), "{name} {p}: nlink");
        }
    }
    want.len()
}

#[test]
fn trees_from_layouts_equal_the_truth() {
    let dir = layouts();
    for name in ["python", "edge"] {
        let ours = inspect_files(&format!("oci:{}", dir.join(name).display()));
        let n = compare(name, &ours);
        assert!(n > 100, "{name}: only {n} entries");
    }
}

#[test]
fn trees_from_a_registry_equal_the_truth() {
    let reg = TestRegistry::start("plain");
    for name in ["python", "edge"] {
        let ours = inspect_files(&format!("{}/{name}", reg.host()));
        compare(name, &ours);
    }
    // eStargz from the registry: the TOCs alone, and only the layers' tails crossed the wire.
    for name in ["python-estargz", "edge-estargz"] {
        let ours = inspect_files(&format!("{}/{name}", reg.host()));
        compare_with(name, &ours, true);
        let image =
            zran::oci::open(&format!("{}/{name}", reg.host()).parse().unwrap(), &Default::default()).unwrap();
        let tails: u64 = image
            .manifest
            .layers
            .iter()
            .map(|l| {
                let toc = zran::estargz::read_toc(image.source.as_ref(), l, Default::default()).unwrap();
                l.size.min(zran::estargz::toc::TAIL_READ).max(l.size - toc.footer.toc_offset)
            })
            .sum();
        let fetched = ours["bytes_fetched"].as_u64().unwrap();
        // Manifests and configs are a few KiB; the rest must be the tails.
        assert!(fetched <= tails + 16384, "{name}: fetched {fetched}, tails {tails}");
    }
}

#[test]
fn estargz_trees_from_their_tocs() {
    let dir = layouts();
    for name in ["python-estargz", "edge-estargz"] {
        let ours = inspect_files(&format!("oci:{}", dir.join(name).display()));
        compare_with(name, &ours, true);
        // Only the tails of the layers were read, never a whole layer.
        let layout = zran::oci::open(
            &format!("oci:{}", dir.join(name).display()).parse().unwrap(),
            &Default::default(),
        )
        .unwrap();
        let total: u64 = layout.manifest.layers.iter().map(|l| l.size).sum();
        let fetched = ours["bytes_fetched"].as_u64().unwrap();
        let max_tails: u64 =
            layout.manifest.layers.iter().map(|l| l.size.min(zran::estargz::toc::TAIL_READ)).sum::<u64>()
                + 65536;
        assert!(fetched <= max_tails && fetched < total, "{name}: fetched {fetched} of {total}");
    }
}
