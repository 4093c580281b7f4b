//! `zran generate` against Nydus's own parsers (the crates.io crates `nydus-rafs`,
//! `nydus-storage` and `nydus-utils`): `RafsSuper` loads `image.boot` and walks the tree, and
//! every inode's attributes, xattrs, symlink target and hardlink identity must equal the truth
//! (umoci's unpack). Each layer's blob.meta (zran contexts for gzip layers, chunk info v1 for
//! eStargz layers) is loaded by `BlobCompressionContextInfo` from its compressed form, through a
//! `BlobReader` over the artifact file, exactly as nydusd fetches it from a registry; the cache
//! file Nydus writes must equal zran's own cache form, and an eStargz blob's chunk infos must
//! say what the bootstrap says of each chunk. Then every
//! chunk of every file is decoded from the original layer blob by Nydus's zran decoder (eStargz
//! chunks by its gzip decompressor), its sha256 checked against the chunk digest, and the
//! file's content against the truth.

mod common;
#[path = "common/nydus_view.rs"]
mod nydus_view;

use common::harness::{ESTARGZ_IMAGES, IMAGES, layout_blob, layouts};
use common::truth::{Rules, compare_with, drop_estargz_meta};
use nydus_api::ConfigV2;
use nydus_rafs::metadata::{RafsInodeExt, RafsSuper};
use nydus_storage::backend::BlobReader;
use nydus_storage::device::{BlobChunkInfo, BlobFeatures, BlobInfo};
use nydus_storage::meta::BlobCompressionContextInfo;
use nydus_utils::compress::{self, zlib_random::ZranDecoder};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

fn generate(image: &str, out: &Path, args: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_zran"))
        .args(["generate", image, "-o"])
        .arg(out)
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "generate {image}: {}", String::from_utf8_lossy(&o.stderr));
}

/// Nydus's view of one blob: its blob.meta (gzip layers) and the original layer blob.
struct Blob {
    info: Arc<BlobInfo>,
    meta: Option<BlobCompressionContextInfo>,
    data: std::fs::File,
    /// The zran contexts Nydus 2.2's decoder (nydus-utils 0.4) could not decode.
    old_decoder_fails: RefCell<BTreeSet<u32>>,
    /// Those its current decoder (nydus-utils 0.5) could not decode either: a chunk that ends
    /// where the layer's gzip stream ends, with the end code in the same byte.
    new_decoder_fails: RefCell<BTreeSet<u32>>,
}

/// What a file's content shows as when Nydus cannot decode one of its chunks.
const UNDECODABLE: &str = "undecodable by Nydus";

/// Load each gzip blob's blob.meta with Nydus from the artifact's compressed file, and check
/// the cache file it writes against zran's own cache form; the same for each eStargz blob's
/// chunk info v1.
fn load_blobs(
    name: &str,
    rs: &RafsSuper,
    art: &Path,
    layout: &Path,
    cache: &Path,
) -> (Vec<Blob>, ChunkInfosV1) {
    let ours = zran::rafs::reader::read_bootstrap(&std::fs::read(art.join("image.boot")).unwrap()).unwrap();
    let infos = rs.superblock.get_blob_infos();
    assert_eq!(infos.len(), ours.blobs.len(), "{name}: blob count");
    let mut out = Vec::new();
    let mut v1s = ChunkInfosV1::new();
    for (info, spec) in infos.into_iter().zip(&ours.blobs) {
        let id = info.blob_id();
        assert_eq!(id, spec.id, "{name}: blob id");
        assert_eq!(info.chunk_count(), spec.chunk_count, "{name}: chunk count of {id}");
        let data = std::fs::File::open(layout_blob(layout, &id)).unwrap();
        assert_eq!(info.compressed_size(), data.metadata().unwrap().len(), "{name}: {id} size");
        let path = art.join(format!("{id}.blob.meta"));
        let meta = if info.has_feature(BlobFeatures::ZRAN) {
            let decoded = zran::rafs::meta::BlobMeta::decode(&std::fs::read(&path).unwrap(), spec).unwrap();
            Some(nydus_meta(name, &info, art, cache, &decoded.encode_cache().unwrap()))
        } else {
            // An eStargz blob: chunk info v1 in a blob.meta of its own, a "legacy stargz" blob
            // to Nydus (gzip chunks, each a member inflated alone).
            assert!(info.is_legacy_stargz(), "{name}: {id} is not a legacy stargz blob to Nydus");
            assert!(info.has_feature(BlobFeatures::SEPARATE) && info.meta_ci_is_valid(), "{name}: {id}");
            let decoded = zran::rafs::meta::StargzMeta::decode(&std::fs::read(&path).unwrap(), spec).unwrap();
            v1s.insert(
                info.blob_index(),
                nydus_meta(name, &info, art, cache, &decoded.encode_cache().unwrap()),
            );
            None
        };
        out.push(Blob {
            info,
            meta,
            data,
            old_decoder_fails: RefCell::default(),
            new_decoder_fails: RefCell::default(),
        });
    }
    (out, v1s)
}

/// One chunk's bytes, decoded by Nydus from the original layer blob (None where zran.json
/// says no Nydus release can: checked by the caller).
fn decode_chunk(name: &str, path: &Path, blob: &Blob, c: &dyn BlobChunkInfo) -> Option<Vec<u8>> {
    let read = |offset: u64, len: usize| {
        let mut buf = vec![0u8; len];
        blob.data.read_exact_at(&mut buf, offset).unwrap();
        buf
    };
    match &blob.meta {
        Some(meta) => {
            // The blob.meta's chunk info must say what the bootstrap's chunk table says.
            let mc = meta.get_chunk_info(c.id() as usize);
            assert_eq!(
                (
                    mc.compressed_offset(),
                    mc.compressed_size(),
                    mc.uncompressed_offset(),
                    mc.uncompressed_size()
                ),
                (c.compressed_offset(), c.compressed_size(), c.uncompressed_offset(), c.uncompressed_size()),
                "{name} {}: chunk {} in blob.meta and bootstrap",
                path.display(),
                c.id()
            );
            let zi = meta.get_zran_index(c.id()).unwrap();
            let zo = meta.get_zran_offset(c.id()).unwrap() as usize;
            let (ctx, dict) = meta.get_zran_context(zi).unwrap();
            let input = read(ctx.in_offset, ctx.in_len as usize);
            let mut out = vec![0u8; ctx.out_len as usize];
            let new = ZranDecoder::new().unwrap().uncompress(&ctx, Some(dict), &input, &mut out);
            // Nydus 2.2's nydusd decodes with nydus-utils 0.4, which cannot go on past the end
            // of a gzip member: every context must decode with it too, to the same bytes.
            let old = nydus_utils_04::compress::zlib_random::ZranContext {
                in_offset: ctx.in_offset,
                out_offset: ctx.out_offset,
                in_len: ctx.in_len,
                out_len: ctx.out_len,
                ctx_byte: ctx.ctx_byte,
                ctx_bits: ctx.ctx_bits,
                dict: Vec::new(),
            };
            let mut out_04 = vec![0u8; ctx.out_len as usize];
            let old = nydus_utils_04::compress::zlib_random::ZranDecoder::new().unwrap().uncompress(
                &old,
                Some(dict),
                &input,
                &mut out_04,
            );
            // Failures only where zran.json says so (checked by the caller).
            match (new, old) {
                (Ok(_), Ok(_)) => assert!(
                    out_04 == out,
                    "{name} {}: the two Nydus decoders disagree on context {zi}",
                    path.display()
                ),
                (Ok(_), Err(_)) => {
                    blob.old_decoder_fails.borrow_mut().insert(zi);
                }
                (Err(_), Err(_)) => {
                    blob.old_decoder_fails.borrow_mut().insert(zi);
                    blob.new_decoder_fails.borrow_mut().insert(zi);
                    return None;
                }
                (Err(e), Ok(_)) => panic!(
                    "{name} {}: Nydus cannot inflate chunk {} from context {zi}, Nydus 2.2 can: {e}",
                    path.display(),
                    c.id()
                ),
            }
            Some(out[zo..zo + c.uncompressed_size() as usize].to_vec())
        }
        None => {
            assert!(c.is_compressed());
            let input = read(c.compressed_offset(), c.compressed_size() as usize);
            let mut out = vec![0u8; c.uncompressed_size() as usize];
            let n = compress::decompress(&input, &mut out, compress::Algorithm::GZip).unwrap();
            assert_eq!(n, out.len(), "{name} {}: eStargz chunk {}", path.display(), c.id());
            Some(out)
        }
    }
}

/// Nydus's view of each eStargz blob's chunk info v1, by blob index.
type ChunkInfosV1 = HashMap<u32, BlobCompressionContextInfo>;

/// Load a blob.meta with Nydus from the artifact's compressed file, as nydusd fetches it; the
/// cache file it writes must be `cache_form`, and must load alone (no backend), as a second
/// nydusd start would use it.
fn nydus_meta(
    name: &str,
    info: &BlobInfo,
    art: &Path,
    cache: &Path,
    cache_form: &[u8],
) -> BlobCompressionContextInfo {
    let id = info.blob_id();
    let path = art.join(format!("{id}.blob.meta"));
    let reader: Arc<dyn BlobReader> = Arc::new(nydus_view::FileReader {
        file: std::fs::File::open(&path).unwrap(),
        metrics: Default::default(),
    });
    let prefix = cache.join(&id);
    let prefix = prefix.to_str().unwrap();
    let m = BlobCompressionContextInfo::new(prefix, info, Some(&reader), false)
        .unwrap_or_else(|e| panic!("{name}: Nydus rejects the blob.meta of {id}: {e}"));
    let written = std::fs::read(format!("{prefix}.blob.meta")).unwrap();
    assert!(written == cache_form, "{name}: Nydus's cache form of {id} differs");
    BlobCompressionContextInfo::new(prefix, info, None, false)
        .unwrap_or_else(|e| panic!("{name}: Nydus rejects its cached blob.meta of {id}: {e}"));
    assert_eq!(m.get_chunk_count(), info.chunk_count() as usize, "{name}: {id}");
    m
}

/// Each eStargz chunk of a file: Nydus's chunk info v1 must say what its reading of the
/// bootstrap's chunk table says, and the chunk is compressed.
fn v1_agrees(name: &str, inode: &dyn RafsInodeExt, path: &Path, v1s: &ChunkInfosV1) {
    if !inode.is_reg() {
        return;
    }
    for i in 0..inode.get_chunk_count() {
        let c = inode.get_chunk_info(i).unwrap();
        let Some(v1) = v1s.get(&c.blob_index()) else { continue };
        nydus_view::chunk_agrees(name, path, v1, c.as_ref(), true);
    }
}

/// What Nydus sees of one path, in the truth's terms.
fn entry(name: &str, inode: &dyn RafsInodeExt, path: &Path, blobs: &[Blob]) -> Value {
    let mut e = nydus_view::attributes(name, inode, path);
    if e["type"] != "file" {
        return e;
    }
    let attr = inode.get_attr();
    let mut content = Vec::with_capacity(attr.size as usize);
    let mut decodable = true;
    for i in 0..inode.get_chunk_count() {
        let c = inode.get_chunk_info(i).unwrap();
        let blob = &blobs[c.blob_index() as usize];
        assert_eq!(blob.info.blob_index(), c.blob_index());
        let Some(bytes) = decode_chunk(name, path, blob, c.as_ref()) else {
            decodable = false;
            content.resize(content.len() + c.uncompressed_size() as usize, 0);
            continue;
        };
        assert_eq!(
            Sha256::digest(&bytes).as_slice(),
            c.chunk_id().data.as_slice(),
            "{name} {}: chunk {i} does not match its digest",
            path.display()
        );
        content.extend_from_slice(&bytes);
    }
    assert_eq!(content.len() as u64, attr.size, "{name} {}: size", path.display());
    e["size"] = attr.size.into();
    e["sha256"] = if decodable { hex::encode(Sha256::digest(&content)).into() } else { UNDECODABLE.into() };
    e
}

fn check(name: &str, args: &[&str]) -> usize {
    nydus_view::log_to_stderr();
    let layout = layouts().join(name);
    let work = tempfile::tempdir().unwrap();
    let art = work.path().join("art");
    generate(&format!("oci:{}", layout.display()), &art, args);
    let (rs, _) = RafsSuper::load_from_file(art.join("image.boot"), Arc::new(ConfigV2::default()), false)
        .unwrap_or_else(|e| panic!("{name}: Nydus cannot load image.boot: {e}"));
    assert!(rs.meta.is_v6(), "{name}: not RAFS v6 to Nydus");
    let cache = work.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let (blobs, v1s) = load_blobs(name, &rs, &art, &layout, &cache);

    let zran_json: Value = serde_json::from_slice(&std::fs::read(art.join("zran.json")).unwrap()).unwrap();
    let mut walked = nydus_view::walk(name, &rs, |inode, path| {
        v1_agrees(name, inode, path, &v1s);
        entry(name, inode, path, &blobs)
    });
    let as_tar = args.contains(&"--ignore-toc");
    if as_tar {
        drop_estargz_meta(&mut walked.got);
        let got = &walked.got;
        walked.by_ino.retain(|_, names| names.iter().all(|n| got.contains_key(n)));
    }
    let rules = Rules {
        whole_seconds: name.ends_with("-estargz") && !as_tar,
        nydusd_start: None,
        unreadable: Some(UNDECODABLE),
    };
    compare_with(name, &walked.got, &rules);
    nydus_view::check_hardlinks(name, &walked);
    // Nydus 2.2's decoder fails exactly on the contexts zran.json counts for each layer.
    let mut past = 0;
    for blob in &blobs {
        let record = zran_json["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["digest"] == format!("sha256:{}", blob.info.blob_id()))
            .unwrap();
        let counted = record.get("contexts_past_member_end").and_then(Value::as_u64).unwrap_or(0);
        let failed = blob.old_decoder_fails.borrow();
        assert!(blob.new_decoder_fails.borrow().is_subset(&failed));
        assert_eq!(
            failed.len() as u64,
            counted,
            "{name} {}: contexts Nydus 2.2 cannot decode: {failed:?}",
            blob.info.blob_id()
        );
        past += counted;
    }
    // And `inspect DIR` says so.
    let o = Command::new(env!("CARGO_BIN_EXE_zran")).arg("inspect").arg(&art).output().unwrap();
    let said = String::from_utf8_lossy(&o.stdout);
    let line = format!("nydus 2.2  cannot decode {past} checkpoints");
    assert_eq!(said.contains(&line), past > 0, "{name}: inspect says\n{said}");
    walked.got.len()
}

#[test]
fn nydus_reads_the_bootstrap_and_blob_meta_and_decodes_every_chunk() {
    for &name in IMAGES {
        let n = check(name, &[]);
        assert!(n > 5, "{name}: {n} entries");
    }
}

/// eStargz layers indexed as plain gzip: a gzip member per file and per TOC chunk, so most
/// contexts end where a member ends.
#[test]
fn nydus_decodes_estargz_layers_indexed_as_gzip() {
    for &name in ESTARGZ_IMAGES {
        let n = check(name, &["--ignore-toc"]);
        assert!(n > 50, "{name}: {n} entries");
    }
}

/// The prefetch table (`--prefetch-files`) as Nydus reads it: the files' inodes, in order.
#[test]
fn nydus_reads_the_prefetch_table() {
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("prefetch");
    std::fs::write(&list, "/usr/bin/python3.11\n/usr/lib/python3.11/json/__init__.py\n/etc/passwd\n")
        .unwrap();
    let art = work.path().join("art");
    generate(
        &format!("oci:{}", layouts().join("python").display()),
        &art,
        &["--prefetch-files", list.to_str().unwrap()],
    );
    let (rs, mut reader) =
        RafsSuper::load_from_file(art.join("image.boot"), Arc::new(ConfigV2::default()), false).unwrap();
    let inos = rs.get_prefetched_inos(&mut reader).unwrap();
    // (Nydus names a v6 inode only when reached from its parent: compare by inode instead.)
    let want: Vec<u64> = ["/usr/bin/python3.11", "/usr/lib/python3.11/json/__init__.py", "/etc/passwd"]
        .iter()
        .map(|p| rs.ino_from_path(Path::new(p)).unwrap())
        .collect();
    assert_eq!(inos.iter().map(|&i| u64::from(i)).collect::<Vec<_>>(), want);
}
