//! The push tar parser against the `tar` crate as an oracle: archives it writes (ustar, GNU,
//! PAX), pushed in arbitrary pieces, and every layer of the test images.

mod common;

use proptest::prelude::*;
use std::io::Read;
use zran::tar::{Entry, EntryKind, TarParser};

/// What the oracle sees for each entry: path, kind, size, data offset, data.
#[derive(Debug, PartialEq)]
struct Seen {
    path: Vec<u8>,
    kind: EntryKind,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    size: u64,
    link: Vec<u8>,
    data_offset: u64,
    /// None where the oracle cannot read them (it refuses binary PAX values).
    xattrs: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

fn norm(p: &[u8]) -> Vec<u8> {
    zran_norm(p)
}

fn zran_norm(p: &[u8]) -> Vec<u8> {
    let parts: Vec<&[u8]> = p.split(|&b| b == b'/').filter(|s| !s.is_empty() && *s != b".").collect();
    parts.join(&b'/')
}

fn oracle(archive: &[u8]) -> Vec<Seen> {
    let mut a = tar::Archive::new(archive);
    let mut out = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        let kind = match h.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
            tar::EntryType::Link => EntryKind::Hardlink,
            tar::EntryType::Symlink => EntryKind::Symlink,
            tar::EntryType::Char => EntryKind::Char,
            tar::EntryType::Block => EntryKind::Block,
            tar::EntryType::Directory => EntryKind::Directory,
            tar::EntryType::Fifo => EntryKind::Fifo,
            other => panic!("unexpected {other:?}"),
        };
        let path = norm(&e.path_bytes());
        let link = e.link_name_bytes().map(|l| l.to_vec()).unwrap_or_default();
        let link = if kind == EntryKind::Hardlink { norm(&link) } else { link };
        let pax_mtime = e.pax_extensions().ok().flatten().and_then(|ext| {
            ext.filter_map(Result::ok).find(|x| x.key_bytes() == b"mtime").and_then(|x| {
                std::str::from_utf8(x.value_bytes()).ok()?.split('.').next()?.parse::<i64>().ok()
            })
        });
        let xattrs = match e.pax_extensions() {
            Ok(Some(ext)) => ext
                .map(|x| x.ok().map(|x| (x.key_bytes().to_vec(), x.value_bytes().to_vec())))
                .collect::<Option<Vec<_>>>()
                .map(|v| {
                    let mut v: Vec<_> = v
                        .into_iter()
                        .filter_map(|(k, val)| k.strip_prefix(b"SCHILY.xattr.").map(|n| (n.to_vec(), val)))
                        .collect();
                    v.sort();
                    v
                }),
            Ok(None) => Some(Vec::new()),
            Err(_) => None,
        };
        out.push(Seen {
            path,
            kind,
            mode: h.mode().unwrap() & 0o7777,
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            // A PAX mtime overrides the header's (the tar crate's header() does not apply it).
            mtime: pax_mtime.unwrap_or(h.mtime().unwrap() as i64),
            size: if kind == EntryKind::File { e.size() } else { 0 },
            link,
            data_offset: e.raw_file_position(),
            xattrs,
        });
        let mut sink = Vec::new();
        e.read_to_end(&mut sink).unwrap();
    }
    out
}

fn ours(archive: &[u8], pieces: &[usize]) -> (Vec<Entry>, Vec<Vec<u8>>) {
    let mut p = TarParser::new();
    let mut data: Vec<Vec<u8>> = Vec::new();
    let mut at = 0usize;
    let mut cut = pieces.iter().cycle();
    while at < archive.len() {
        let n = (*cut.next().unwrap_or(&512)).max(1).min(archive.len() - at);
        p.push(at as u64, &archive[at..at + n], &mut |i, off, bytes| {
            if data.len() <= i {
                data.resize(i + 1, Vec::new());
            }
            assert_eq!(off as usize, data[i].len());
            data[i].extend_from_slice(bytes);
        })
        .unwrap();
        at += n;
    }
    p.finish().unwrap();
    (p.entries().to_vec(), data)
}

fn compare(archive: &[u8], pieces: &[usize]) {
    let want = oracle(archive);
    let (got, data) = ours(archive, pieces);
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let seen = Seen {
            path: g.path.clone(),
            kind: g.kind,
            mode: g.mode,
            uid: g.uid,
            gid: g.gid,
            mtime: g.mtime,
            size: g.size,
            link: g.link.clone(),
            data_offset: g.data_offset,
            xattrs: w.xattrs.as_ref().map(|_| g.xattrs.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        };
        assert_eq!(&seen, w, "entry {i}");
        if g.kind == EntryKind::File && g.size > 0 {
            let s = g.data_offset as usize;
            assert!(data[i] == archive[s..s + g.size as usize], "data of entry {i}");
        }
    }
}

#[derive(Debug, Clone)]
enum Item {
    File { name: String, data: Vec<u8>, xattr: Option<(String, Vec<u8>)> },
    Dir(String),
    Symlink(String, String),
    Hardlink(String),
}

fn build(items: &[Item], gnu: bool, mtime: u64, uid: u64) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut files = Vec::new();
    for item in items {
        let mut h = if gnu { tar::Header::new_gnu() } else { tar::Header::new_ustar() };
        h.set_mtime(mtime);
        h.set_uid(uid);
        h.set_gid(uid / 2);
        h.set_mode(0o4755);
        match item {
            Item::File { name, data, xattr } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                if let Some((k, v)) = xattr {
                    let key = format!("SCHILY.xattr.{k}");
                    b.append_pax_extensions([(key.as_str(), v.as_slice())]).unwrap();
                }
                b.append_data(&mut h, name, data.as_slice()).unwrap();
                files.push(name.clone());
            }
            Item::Dir(name) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, name, std::io::empty()).unwrap();
            }
            Item::Symlink(name, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, name, target).unwrap();
            }
            Item::Hardlink(name) => {
                if let Some(target) = files.first() {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    b.append_link(&mut h, name, target).unwrap();
                }
            }
        }
    }
    b.into_inner().unwrap()
}

fn name_strategy() -> impl Strategy<Value = String> {
    // Short and very long names (GNU long names, ustar prefixes), with ./ prefixes sometimes.
    (prop::collection::vec("[a-z0-9_é]{1,40}", 1..6), any::<bool>()).prop_map(|(parts, dot)| {
        let p = parts.join("/");
        if dot { format!("./{p}") } else { p }
    })
}

fn item_strategy() -> impl Strategy<Value = Item> {
    prop_oneof![
        (
            name_strategy(),
            prop::collection::vec(any::<u8>(), 0..3000),
            prop::option::of(("[a-z.]{1,20}", prop::collection::vec(any::<u8>(), 0..40)))
        )
            .prop_map(|(name, data, x)| Item::File {
                name,
                data,
                xattr: x.map(|(k, v)| (format!("user.{k}"), v))
            }),
        name_strategy().prop_map(Item::Dir),
        (name_strategy(), "[a-z/.]{1,200}").prop_map(|(n, t)| Item::Symlink(n, t)),
        name_strategy().prop_map(Item::Hardlink),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn matches_the_tar_crate(
        items in prop::collection::vec(item_strategy(), 0..20),
        gnu in any::<bool>(),
        big in any::<bool>(),
        pieces in prop::collection::vec(1usize..2000, 1..8),
    ) {
        // Large ids and far-future mtimes need GNU base-256 numbers.
        let (mtime, uid) = if big && gnu { (1u64 << 36, 1u64 << 33) } else { (1_700_000_000, 70_000) };
        let archive = build(&items, gnu, mtime, uid);
        compare(&archive, &pieces);
    }
}

#[test]
fn every_layer_of_the_test_images() {
    let dir = common::harness::layouts();
    let mut layers = 0;
    for name in ["python", "edge", "multi"] {
        let blobs = dir.join(name).join("blobs/sha256");
        for blob in std::fs::read_dir(&blobs).unwrap() {
            let bytes = std::fs::read(blob.unwrap().path()).unwrap();
            if bytes.len() < 2 || bytes[..2] != [0x1f, 0x8b] {
                continue; // manifests and configs
            }
            let tar = common::gunzip(&bytes);
            compare(&tar, &[65536, 1, 511, 100_000]);
            layers += 1;
        }
    }
    assert!(layers >= 6, "{layers} layers");
}

#[test]
fn hostile_archives() {
    // `../` climbing out of the root stops at the root, as containerd and umoci clean names.
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_entry_type(tar::EntryType::Regular);
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut h, "ok", std::io::empty()).unwrap();
    let mut raw = tar::Header::new_ustar();
    raw.as_mut_bytes()[..12].copy_from_slice(b"../etc/pass\0");
    raw.set_size(0);
    raw.set_entry_type(tar::EntryType::Regular);
    raw.set_cksum();
    b.append(&raw, std::io::empty()).unwrap();
    let archive = b.into_inner().unwrap();
    let mut p = TarParser::new();
    p.push(0, &archive, &mut |_, _, _| {}).unwrap();
    p.finish().unwrap();
    assert_eq!(p.entries()[1].path, b"etc/pass");

    // A corrupt checksum.
    let mut bad = build(&[Item::Dir("d".into())], false, 0, 0);
    bad[0] ^= 1;
    let err = TarParser::new().push(0, &bad, &mut |_, _, _| {}).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");

    // Truncated inside an entry.
    let archive = build(&[Item::File { name: "f".into(), data: vec![7; 5000], xattr: None }], true, 0, 0);
    let mut p = TarParser::new();
    p.push(0, &archive[..2000], &mut |_, _, _| {}).unwrap();
    let err = p.finish().unwrap_err();
    assert!(
        err.to_string().contains("middle of the entry's data")
            && err.to_string().contains("\"f\"")
            && err.to_string().contains("offset 2000"),
        "{err}"
    );

    // An absurd PAX header size is refused before anything is allocated.
    let mut x = tar::Header::new_ustar();
    x.set_entry_type(tar::EntryType::XHeader);
    x.set_size(1 << 40);
    x.set_path("pax").unwrap();
    x.set_cksum();
    let err = TarParser::new().push(0, x.as_bytes(), &mut |_, _, _| {}).unwrap_err();
    assert!(err.to_string().contains("extension header"), "{err}");

    // Arbitrary bytes never panic.
    let mut s = 1u64;
    for _ in 0..200 {
        let junk: Vec<u8> = (0..2048)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect();
        let mut p = TarParser::new();
        let _ = p.push(0, &junk, &mut |_, _, _| {}).and_then(|_| p.finish());
    }
}
