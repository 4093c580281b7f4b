//! The push tar parser against the `tar` crate as an oracle: archives it writes (ustar, GNU,
//! PAX), pushed in arbitrary pieces, and every layer of the test images.

mod common;

use proptest::prelude::*;
use std::io::Read;
use zran::tar::{Entry, EntryKind, TarError, TarParser, TarWarning};

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

/// Parse `archive` pushed in pieces: entries and warnings, or the error.
fn parse(archive: &[u8], pieces: &[usize]) -> Result<(Vec<Entry>, Vec<TarWarning>), TarError> {
    let mut p = TarParser::new();
    let mut at = 0usize;
    let mut cut = pieces.iter().cycle();
    while at < archive.len() {
        let n = (*cut.next().unwrap_or(&512)).max(1).min(archive.len() - at);
        p.push(at as u64, &archive[at..at + n], &mut |_, _, _| {})?;
        at += n;
    }
    p.finish()?;
    Ok((p.entries().to_vec(), p.warnings().to_vec()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A stream may end as Go's archive/tar lets it: after one end block, without end
    /// blocks, right after the last file's data; or carry garbage after its end blocks. The
    /// entries are the whole archive's, with a warning naming where it ended (none for the
    /// garbage). Cut inside the last file's data, it is an error naming that file.
    #[test]
    fn streams_end_where_go_lets_them(
        items in prop::collection::vec(item_strategy(), 0..12),
        gnu in any::<bool>(),
        how in 0u8..4,
        garbage in prop::collection::vec(1u8..=255, 1..1500),
        pieces in prop::collection::vec(1usize..2000, 1..8),
    ) {
        let archive = build(&items, gnu, 1_700_000_000, 1000);
        let (whole, none) = parse(&archive, &[archive.len().max(1)]).unwrap();
        prop_assert!(none.is_empty());
        let body = archive.len() - 1024;
        prop_assert!(archive[body..].iter().all(|&b| b == 0));
        let last_data = whole.last().filter(|e| e.kind == EntryKind::File).map(|e| (e.data_offset + e.size) as usize);
        let (stream, warning): (Vec<u8>, Option<&str>) = match how {
            0 => (archive[..body + 512].to_vec(), Some("one end-of-archive block")),
            1 => (archive[..body].to_vec(), (body > 0).then_some("without its end-of-archive blocks")),
            2 => match last_data {
                Some(end) if end % 512 != 0 => (archive[..end].to_vec(), Some("without the last entry's padding")),
                _ => (archive[..body].to_vec(), (body > 0).then_some("without its end-of-archive blocks")),
            },
            _ => ([archive.as_slice(), &garbage].concat(), None),
        };
        let (entries, warnings) = parse(&stream, &pieces).unwrap();
        prop_assert_eq!(&entries, &whole);
        match warning {
            None => prop_assert!(warnings.is_empty(), "{:?}", warnings),
            Some(w) => {
                prop_assert_eq!(warnings.len(), 1);
                prop_assert!(warnings[0].message.contains(w), "{}", warnings[0]);
                prop_assert_eq!(warnings[0].offset, stream.len() as u64);
            }
        }
        if let (Some(end), Some(e)) = (last_data, whole.last().filter(|e| e.size > 0)) {
            let cut = end - 1 - (garbage[0] as usize % e.size as usize);
            let err = parse(&archive[..cut], &pieces).unwrap_err();
            prop_assert_eq!(err.offset, cut as u64);
            let name = String::from_utf8_lossy(&e.path).into_owned();
            prop_assert_eq!(err.path.as_deref(), Some(name.as_str()));
            prop_assert!(err.message.contains("middle of the entry's data"), "{}", err);
        }
        // Cut inside an entry's first header block: an error at that block.
        if !whole.is_empty() {
            let e = &whole[garbage[0] as usize % whole.len()];
            let cut = e.header_offset as usize + 1 + garbage.len() % 511;
            let err = parse(&archive[..cut], &pieces).unwrap_err();
            prop_assert_eq!(err.offset, e.header_offset);
            prop_assert!(err.message.contains("inside a header block"), "{}", err);
        }
    }
}

/// One header block made by hand: `fields` are (offset, bytes), the checksum is computed.
fn block(fields: &[(usize, &[u8])]) -> Vec<u8> {
    let mut b = vec![0u8; 512];
    for (at, bytes) in fields {
        b[*at..*at + bytes.len()].copy_from_slice(bytes);
    }
    b[148..156].copy_from_slice(b"        ");
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    b
}

#[test]
fn old_formats_as_go_reads_them() {
    let common: [(usize, &[u8]); 4] =
        [(100, b"0000644\0"), (108, b"0000000\0"), (116, b"0000000\0"), (136, b"14000000000\0")];
    let with = |name: &[u8], rest: &[(usize, &[u8])]| {
        let mut f: Vec<(usize, &[u8])> = vec![(0, name)];
        f.extend_from_slice(&common);
        f.extend_from_slice(rest);
        block(&f)
    };
    // v7: no magic. The bytes after the link name are not part of the header: an owner name
    // and device numbers that would not parse are ignored; a type 0 name ending in '/' is a
    // directory, and carries no data whatever its size says.
    let v7 = with(
        b"v7/",
        &[(124, b"00000001000\0"), (156, b"\0"), (265, b"junk"), (329, b"9x9x9x9\0"), (345, b"prefix")],
    );
    // Old GNU: magic "ustar " and version " \0": no prefix (atime and ctime are there).
    let gnu = with(
        b"gnu",
        &[(124, b"00000000003\0"), (156, b"0"), (257, b"ustar  \0"), (265, b"root"), (345, b"12345670123\0")],
    );
    // star: ustar with "tar\0" at 508: a 131-byte prefix, then atime and ctime.
    let star = with(
        b"f",
        &[
            (124, b"00000000000\0"),
            (156, b"0"),
            (257, b"ustar\x0000"),
            (345, b"pre"),
            (476, b"12345670123\0"),
            (508, b"tar\0"),
        ],
    );
    let mut archive = [v7, gnu, b"abc".to_vec(), vec![0; 509], star].concat();
    archive.extend_from_slice(&[0u8; 1024]);
    let (entries, warnings) = parse(&archive, &[100]).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    type Seen<'a> = (&'a [u8], EntryKind, u64, &'a [u8], u32);
    let got: Vec<Seen> =
        entries.iter().map(|e| (e.path.as_slice(), e.kind, e.size, e.uname.as_slice(), e.devmajor)).collect();
    assert_eq!(
        got,
        [
            (&b"v7"[..], EntryKind::Directory, 0, &b""[..], 0),
            (b"gnu", EntryKind::File, 3, b"root", 0),
            (b"pre/f", EntryKind::File, 0, b"", 0),
        ]
    );
    assert_eq!(entries[1].data_offset, 1024);
}

#[test]
fn header_only_types_carry_no_data_whatever_their_size() {
    // As Go's reader (and Python's tarfile): links, devices, directories and fifos have no
    // data; the next header follows at once.
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind) in [
        ("d", tar::EntryType::Directory),
        ("s", tar::EntryType::Symlink),
        ("h", tar::EntryType::Link),
        ("c", tar::EntryType::Char),
        ("f", tar::EntryType::Fifo),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(4096);
        if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
            h.set_link_name("d").unwrap();
        }
        h.set_path(name).unwrap();
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
    }
    let archive = b.into_inner().unwrap();
    let (entries, warnings) = parse(&archive, &[512]).unwrap();
    assert!(warnings.is_empty());
    assert_eq!(
        entries.iter().map(|e| e.path.as_slice()).collect::<Vec<_>>(),
        [&b"d"[..], b"s", b"h", b"c", b"f"]
    );
    assert!(entries.iter().all(|e| e.size == 0));
}

#[test]
fn how_a_stream_may_not_end() {
    let archive = build(&[Item::File { name: "f".into(), data: vec![7; 100], xattr: None }], false, 0, 0);
    // One zero block, then a header: the end marker is two blocks or none.
    let mut bad = archive[..1024].to_vec();
    bad.extend_from_slice(&[0; 512]);
    bad.extend_from_slice(&archive[..512]);
    let err = parse(&bad, &[512]).unwrap_err();
    assert!(err.message.contains("after an end-of-archive block") && err.offset == 1536, "{err}");
    // One zero block, then half a block: Go's ReadFull fails there too.
    let err = parse(&archive[..1024 + 512 + 100], &[512]).unwrap_err();
    assert!(err.message.contains("inside a header block") && err.offset == 1536, "{err}");
    // A PAX header and nothing after it: Go stops there without an error; a warning here.
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("path", &b"long/name"[..])]).unwrap();
    let pax = b.into_inner().unwrap();
    let end = pax.len() - 1024;
    let (entries, warnings) = parse(&pax[..end], &[7]).unwrap();
    assert!(entries.is_empty());
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].message.contains("extension header") && warnings[0].offset == 0, "{}", warnings[0]);
    // Cut inside the PAX records: an error.
    let err = parse(&pax[..520], &[7]).unwrap_err();
    assert!(err.message.contains("inside an extension header"), "{err}");
}

#[test]
fn global_pax_headers_apply_to_nothing() {
    // containerd, docker and podman skip the global header Go's reader hands them; umoci
    // refuses the layer. Its records (and an extension header before it) change no entry.
    let body = b"12 uid=4242\n20 mtime=1234567890\n18 path=elsewhere\n";
    let size = format!("{:011o}\0", body.len());
    let g = block(&[
        (0, b"pax_global_header"),
        (100, b"0000644\0"),
        (124, size.as_bytes()),
        (156, b"g"),
        (257, b"ustar\x0000"),
    ]);
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("path", &b"lost/by/the/global/header"[..])]).unwrap();
    let lost = b.into_inner().unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_path("f").unwrap();
    h.set_size(2);
    h.set_uid(7);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    let mut archive = lost[..lost.len() - 1024].to_vec();
    archive.extend_from_slice(&g);
    archive.extend_from_slice(&body[..]);
    archive.resize(archive.len().next_multiple_of(512), 0);
    archive.extend_from_slice(h.as_bytes());
    archive.extend_from_slice(b"x\n");
    archive.resize(archive.len().next_multiple_of(512) + 1024, 0);
    let (entries, warnings) = parse(&archive, &[100]).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(entries.len(), 1);
    assert_eq!((entries[0].path.as_slice(), entries[0].uid, entries[0].mtime), (&b"f"[..], 7, 1_700_000_000));
    assert_eq!(entries[0].header_offset, archive.len() as u64 - 2048);
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
