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
    try_walk(dir, false).expect("truth.py --walk")
}

/// `truth.py --walk` of a directory, `--unreadable-ok` if asked (a file that cannot be read is
/// listed as "unreadable"); `None` when truth.py fails, so that the caller can unmount first.
pub fn try_walk(dir: &Path, unreadable_ok: bool) -> Option<Value> {
    let out = tempfile::NamedTempFile::new().unwrap();
    let s = Command::new("/usr/bin/python3")
        .arg(repo_root().join("testimages/truth.py"))
        .arg("--walk")
        .args(unreadable_ok.then_some("--unreadable-ok"))
        .args([dir.to_str().unwrap(), out.path().to_str().unwrap()])
        .status()
        .unwrap();
    s.success().then(|| serde_json::from_slice(&std::fs::read(out.path()).unwrap()).unwrap())
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

/// Where what a reader shows of an artifact may differ from the truth, and how.
#[derive(Default)]
pub struct Rules {
    /// eStargz TOCs keep whole seconds (rounded).
    pub whole_seconds: bool,
    /// nydusd's own rules (`Rafs::get_inode_attr`): the root directory shows mode 0755, and
    /// an mtime of 0 (also that of a directory no layer describes) shows the time the
    /// filesystem was set up, which lies in this range of seconds.
    pub nydusd_start: Option<std::ops::RangeInclusive<i64>>,
    /// A `sha256` that stands for content the reader could not give: not compared, listed.
    pub unreadable: Option<&'static str>,
}

/// Leave out the TOC and landmark files that an eStargz layer read as plain tar shows.
pub fn drop_estargz_meta(got: &mut BTreeMap<String, Value>) {
    for meta in ["/stargz.index.json", "/.prefetch.landmark", "/.no.prefetch.landmark"] {
        got.remove(meta);
    }
}

/// Compare entries by path with the truth of `name`, every field, under `rules`; returns the
/// paths whose content was unreadable.
pub fn compare_with(name: &str, got: &BTreeMap<String, Value>, rules: &Rules) -> Vec<String> {
    let want = by_path(&truth(name));
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{name}: paths");
    let mut unreadable = Vec::new();
    for (path, w) in &want {
        let g = &got[path];
        for field in ["type", "uid", "gid", "size", "sha256", "target", "major", "minor", "xattrs"] {
            if field == "sha256" && rules.unreadable.is_some_and(|u| g[field] == u) {
                unreadable.push(path.clone());
                continue;
            }
            assert_eq!(g.get(field), w.get(field), "{name} {path}: {field}");
        }
        let mode = match rules.nydusd_start {
            Some(_) if path == "/" => serde_json::json!(0o755),
            _ => w["mode"].clone(),
        };
        assert_eq!(g["mode"], mode, "{name} {path}: mode");
        let (gs, gn) = (g["mtime"]["sec"].as_i64().unwrap(), g["mtime"]["nsec"].as_i64().unwrap());
        let stored = match &w["mtime"] {
            // A directory no layer describes: the artifact stores mtime 0.
            Value::Null => (0, 0),
            m => {
                let (sec, nsec) = (m["sec"].as_i64().unwrap(), m["nsec"].as_i64().unwrap());
                if rules.whole_seconds { (sec + i64::from(nsec >= 500_000_000), 0) } else { (sec, nsec) }
            }
        };
        let applied = w["mtime"].is_null() && w.get("implicit").and_then(Value::as_bool) != Some(true);
        match &rules.nydusd_start {
            // A directory the unpacker wrote into at apply time (containerd): no time to compare.
            _ if applied => {}
            Some(start) if stored.0 == 0 => {
                assert!(start.contains(&gs), "{name} {path}: mtime 0 shown as {gs}, not nydusd's start")
            }
            _ if w["mtime"].is_null() => {}
            _ => assert_eq!((gs, gn), stored, "{name} {path}: mtime"),
        }
    }
    unreadable
}

/// Hardlink groups (sorted names of each inode with more than one) in the truth's form.
pub fn hardlink_groups(by_ino: &std::collections::HashMap<u64, Vec<String>>) -> Value {
    let mut groups: Vec<Vec<String>> = by_ino.values().filter(|g| g.len() > 1).cloned().collect();
    for g in &mut groups {
        g.sort();
    }
    groups.sort();
    serde_json::to_value(&groups).unwrap()
}
