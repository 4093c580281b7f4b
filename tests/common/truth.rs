//! The truth trees of the test images (`testimages/truth.py`), and comparisons with them.

use super::harness::repo_root;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// The truth listing of a test image.
pub fn truth(name: &str) -> Value {
    let path = repo_root().join("target/testimages/truth").join(format!("{name}.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// A listing's entries by path.
pub fn by_path(v: &Value) -> BTreeMap<String, Value> {
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap().to_string(), e.clone()))
        .collect()
}

/// `truth.py --walk` of a directory: the same listing as the truth files.
pub fn walk(dir: &Path) -> Value {
    let out = tempfile::NamedTempFile::new().unwrap();
    let s = Command::new("/usr/bin/python3")
        .arg(repo_root().join("testimages/truth.py"))
        .args(["--walk", dir.to_str().unwrap(), out.path().to_str().unwrap()])
        .status()
        .unwrap();
    assert!(s.success());
    serde_json::from_slice(&std::fs::read(out.path()).unwrap()).unwrap()
}

/// Compare a walked tree with the truth, every field, content included. eStargz TOCs keep
/// whole seconds; directories no layer describes have no time to compare.
pub fn compare(name: &str, got: &Value, whole_seconds: bool) -> usize {
    let truth = truth(name);
    let want = by_path(&truth);
    let got_map = by_path(got);
    let wk: BTreeSet<&String> = want.keys().collect();
    let gk: BTreeSet<&String> = got_map.keys().collect();
    assert_eq!(gk, wk, "{name}: paths");
    for (path, w) in &want {
        let g = &got_map[path];
        for field in ["type", "mode", "uid", "gid", "size", "sha256", "target", "major", "minor", "xattrs"] {
            assert_eq!(g.get(field), w.get(field), "{name} {path}: {field}");
        }
        if w.get("implicit").and_then(Value::as_bool) == Some(true) || w["mtime"].is_null() {
            continue;
        }
        if whole_seconds {
            let (sec, nsec) = (w["mtime"]["sec"].as_i64().unwrap(), w["mtime"]["nsec"].as_i64().unwrap());
            assert_eq!(
                g["mtime"]["sec"].as_i64(),
                Some(sec + i64::from(nsec >= 500_000_000)),
                "{name} {path}: mtime"
            );
        } else {
            assert_eq!(g["mtime"], w["mtime"], "{name} {path}: mtime");
        }
    }
    assert_eq!(got["hardlink_groups"], truth["hardlink_groups"], "{name}: hardlink groups");
    want.len()
}
