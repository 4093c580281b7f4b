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
        } else if w["mtime"].is_null() {
            // A directory the unpacker wrote into at apply time (containerd): no time to compare.
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

fn inspect_files_with_log(image: &str) -> (Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_zran"))
        .args(["inspect", "--files", "--json", image])
        .env_remove("ZRAN_LOG")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{image}: {log}");
    (serde_json::from_slice(&out.stdout).unwrap(), log)
}

/// The layer digests of a layout's manifest, and each layer's tar stream.
fn layers(name: &str) -> Vec<(String, Vec<u8>)> {
    let layout = layouts().join(name);
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let blob =
        |d: &str| std::fs::read(layout.join("blobs/sha256").join(d.trim_start_matches("sha256:"))).unwrap();
    let manifest: Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let d = l["digest"].as_str().unwrap().to_string();
            let mut tar = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(blob(&d).as_slice()), &mut tar)
                .unwrap();
            (d, tar)
        })
        .collect()
}

#[test]
fn lenient_tar_streams_are_read_with_a_warning_naming_layer_and_offset() {
    let dir = layouts();
    // What each layer's warning says (none for garbage after the end blocks, which Go's
    // reader never looks at). Every layer umoci insert writes ends without its end blocks.
    let umoci: Vec<Option<&str>> = layers("umoci-insert")
        .iter()
        .map(|(_, tar)| {
            Some(if tar.len() % 512 == 0 {
                "without its end-of-archive blocks"
            } else {
                "without the last entry's padding"
            })
        })
        .collect();
    assert_eq!(umoci.len(), 5);
    assert_eq!(umoci.iter().filter(|w| w == &&Some("without the last entry's padding")).count(), 2);
    let quirks = vec![
        Some("one end-of-archive block instead of two"),
        None,
        Some("without its end-of-archive blocks"),
        Some("without the last entry's padding"),
    ];
    for (name, want) in [("umoci-insert", umoci), ("tarquirks", quirks)] {
        let (ours, log) = inspect_files_with_log(&format!("oci:{}", dir.join(name).display()));
        let n = compare(name, &ours);
        assert!(n >= 12, "{name}: only {n} entries");
        let layers = layers(name);
        assert_eq!(layers.len(), want.len(), "{name}");
        for ((digest, tar), want) in layers.iter().zip(want) {
            let line = log.lines().find(|l| l.contains(&format!("layer {digest}: ")));
            match want {
                None => assert!(line.is_none(), "{name} {digest}: {log}"),
                Some(what) => {
                    let line = line.unwrap_or_else(|| panic!("{name}: no warning for layer {digest}: {log}"));
                    assert!(
                        line.contains("WARN")
                            && line.contains(what)
                            && line.contains(&format!("offset {}", tar.len())),
                        "{line}"
                    );
                }
            }
        }
    }
}

#[test]
fn names_resolve_inside_the_root_as_containerds_overlayfs_snapshotter_applies_them() {
    let dir = layouts();
    let ours = inspect_files(&format!("oci:{}", dir.join("paths").display()));
    let n = compare("paths", &ours);
    assert!(n > 20, "only {n} entries");
    // What the truth (containerd's overlayfs snapshotter) holds, so that the comparison above
    // means something: layer 1's own links are followed; layer 2 does not follow them.
    let truth = truth("paths");
    let kind = |p: &str| {
        truth["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == p)
            .map(|e| e["type"].as_str().unwrap().to_string())
    };
    for (p, t) in [
        ("/escape.txt", "file"),
        ("/b.txt", "file"),
        ("/etc/from-lnk", "file"),
        ("/etc/from-rel", "file"),
        ("/etc/from-climb", "file"),
        ("/etc/from-layer3", "file"),
        ("/made/by/a/link/file", "file"),
        ("/hard-climbing", "file"),
        ("/lnk", "dir"),
        ("/lnk/from-layer2", "file"),
        ("/etc/group", "file"),
        ("/chain1", "dir"),
        ("/chain2", "symlink"),
        ("/etc/from-chain", "file"),
        ("/optlink", "dir"),
        ("/optlink/new-after", "file"),
        ("/opt/old1", "file"),
        ("/opt/sub/old2", "file"),
        ("/up", "symlink"),
        ("/d/rel", "dir"),
        ("/d/rel/from-up", "file"),
        ("/lnk3", "symlink"),
    ] {
        assert_eq!(kind(p).as_deref(), Some(t), "truth {p}");
    }
    for gone in ["/etc/shadow", "/etc/from-layer2", "/lnk/group", "/chain1/from-chain", "/etc/from-up"] {
        assert_eq!(kind(gone), None, "truth {gone}");
    }
}

#[test]
fn loops_and_missing_hardlink_targets_are_errors_naming_the_entry() {
    // Hand-made layouts: a symlink loop below an entry, and a hardlink whose target, clamped
    // to the root, does not exist. umoci and containerd refuse both.
    let work = tempfile::tempdir().unwrap();
    let script = r#"
import io, sys, tarfile
sys.path.insert(0, sys.argv[1])
import oci
def entry(L, name, typ, link=""):
    ti = tarfile.TarInfo(name); ti.type = typ; ti.linkname = link; ti.mtime = oci.EPOCH
    L.starts.append(L.buf.tell()); L.tf.addfile(ti, io.BytesIO(b"") if typ == tarfile.REGTYPE else None)
for out, kind in ((sys.argv[2], "loop"), (sys.argv[3], "hardlink")):
    L = oci.Layer()
    if kind == "loop":
        L.symlink("a", "b"); L.symlink("b", "/a"); entry(L, "a/x", tarfile.REGTYPE)
    else:
        entry(L, "hl", tarfile.LNKTYPE, "../../etc/nope")
    lay = oci.Layout(out); lay.tag(lay.image([L], {})); lay.close()
"#;
    let (a, b) = (work.path().join("loop"), work.path().join("hardlink"));
    let s = Command::new("/usr/bin/python3")
        .args([
            "-c",
            script,
            repo_root().join("testimages").to_str().unwrap(),
            a.to_str().unwrap(),
            b.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(s.success());
    for (layout, want) in [
        (&a, ["\"a/x\"", "too many levels of symbolic links"]),
        (&b, ["\"hl\"", "\"etc/nope\", which does not exist"]),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_zran"))
            .args(["inspect", "--files", &format!("oci:{}", layout.display())])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(want.iter().all(|w| err.contains(w)) && err.contains("layer 0"), "{err}");
        let umoci = Command::new("umoci")
            .args(["raw", "unpack", "--image", &format!("{}:latest", layout.display())])
            .arg(work.path().join("rootfs"))
            .output()
            .unwrap();
        assert!(!umoci.status.success(), "umoci unpacked {}", layout.display());
        let _ = std::fs::remove_dir_all(work.path().join("rootfs"));
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
