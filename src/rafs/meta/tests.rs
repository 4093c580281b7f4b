//! Tests of the blob.meta: layouts, round trips, building from real gzip streams and decoding
//! every chunk the way Nydus's zran decoder does, corruption, and the golden file.

use super::format::{HEADER_SIZE, Header, MAGIC, chunk_flags, compressor, features};
use super::*;
use crate::gzip::{Checkpoint, Index, IndexBuilder, Requests, Sink};
use crate::layer::FileChunk;
use proptest::prelude::*;
use sha2::{Digest, Sha256};
use zerocopy::FromBytes;

// ---------------------------------------------------------------------------------------------
// Nydus's ZranDecoder, replayed.

/// Writes deflate bit streams: fields least significant bit first, Huffman codes most
/// significant bit first.
#[derive(Default)]
struct Bits {
    bytes: Vec<u8>,
    n: usize,
}

impl Bits {
    fn put(&mut self, value: u32, count: usize) {
        for k in 0..count {
            if self.n.is_multiple_of(8) {
                self.bytes.push(0);
            }
            let bit = ((value >> k) & 1) as u8;
            let last = self.bytes.len() - 1;
            self.bytes[last] |= bit << (self.n % 8);
            self.n += 1;
        }
    }

    fn code(&mut self, code: u32, len: usize) {
        for k in (0..len).rev() {
            self.put((code >> k) & 1, 1);
        }
    }

    /// A non-final fixed-Huffman block, empty or with one literal 144 (a 9-bit code).
    fn fixed_block(&mut self, literal: bool) {
        self.put(0, 1);
        self.put(1, 2);
        if literal {
            self.code(0b1_1001_0000, 9);
        }
        self.code(0, 7);
    }
}

/// Bytes that leave a raw inflater exactly where `inflatePrime(bits, byte >> (8 - bits))`
/// leaves a fresh one: complete empty blocks (and, for an odd bit count, one block with one
/// literal, which lands in the window before the dictionary and is never referenced), so
/// that exactly `bits` bits of the last byte are left over, and those are the primed bits.
/// The safe zlib-rs API has no `inflatePrime`; this reaches the same decoder state.
fn prime_prefix(bits: u8, byte: u8) -> Vec<u8> {
    let residue = 8 - usize::from(bits);
    let mut w = Bits::default();
    // 10 bits per empty block, 19 for the one with a literal.
    let empties = if residue % 2 == 1 {
        w.fixed_block(true);
        match residue {
            3 => 0,
            5 => 1,
            7 => 2,
            _ => 3,
        }
    } else {
        residue / 2
    };
    for _ in 0..empties {
        w.fixed_block(false);
    }
    w.put(u32::from(byte) >> (8 - bits), usize::from(bits));
    assert_eq!(w.n % 8, 0, "bits {bits}");
    w.bytes
}

/// Inflate a context's `out_len` bytes from exactly its `in_len` input bytes, step for step as
/// Nydus's `ZranDecoder::uncompress` (`utils/src/compress/zlib_random.rs`) does: raw inflate,
/// prime, dictionary, inflate without flushing; `Z_OK` must come with the output complete;
/// at a member's end skip the 8-byte trailer, parse the next header, inflate on with a fresh
/// raw state; anything else is an error.
fn nydus_uncompress(ctx: &ZranContext, input: &[u8]) -> Result<Vec<u8>, String> {
    use zlib_rs::{Inflate, InflateFlush, Status};
    if input.len() != ctx.in_len as usize {
        return Err("size of input buffer doesn't match".into());
    }
    let mut inf = Inflate::new(false, 15);
    if ctx.bits != 0 {
        let prefix = prime_prefix(ctx.bits & 7, ctx.prev_byte);
        let mut sink = [0u8; 4];
        let before = inf.total_in();
        inf.decompress(&prefix, &mut sink, InflateFlush::NoFlush).map_err(|e| format!("prime: {e:?}"))?;
        assert_eq!(inf.total_in() - before, prefix.len() as u64, "prime prefix not consumed");
    }
    inf.set_dictionary(&ctx.dict).map_err(|e| format!("set_dictionary: {e:?}"))?;
    let mut out = vec![0u8; ctx.out_len as usize];
    let (mut pos, mut used) = (0usize, 0usize);
    loop {
        let (in0, out0) = (inf.total_in(), inf.total_out());
        let r = inf.decompress(&input[pos..], &mut out[used..], InflateFlush::NoFlush);
        pos += (inf.total_in() - in0) as usize;
        used += (inf.total_out() - out0) as usize;
        match r {
            Ok(Status::Ok) => {
                return if used == out.len() { Ok(out) } else { Err(format!("size mismatch: {used}")) };
            }
            Ok(Status::StreamEnd) => {
                if input.len() - pos < 8 {
                    return Err("the input does not have a complete gzip trailer".into());
                }
                pos += 8;
                match crate::gzip::header::parse(&input[pos..]) {
                    Ok(Some(n)) => pos += n,
                    _ => return Err("failed to handle gzip multi member".into()),
                }
                inf = Inflate::new(false, 15);
            }
            Ok(Status::BufError) => return Err(format!("Z_BUF_ERROR after {used} bytes")),
            Err(e) => return Err(format!("{e:?}")),
        }
    }
}

#[test]
fn prime_prefix_leaves_the_bits() {
    for bits in 1..=7u8 {
        for byte in [0x00, 0xff, 0xa5] {
            let p = prime_prefix(bits, byte);
            // The primed bits are the high bits of the last byte, as in the stream itself.
            assert_eq!(p[p.len() - 1] >> (8 - bits), byte >> (8 - bits));
            if byte != 0 {
                // High bits may make an invalid block header; zeros start a stored block.
                continue;
            }
            // The blocks before them decode to nothing but the literal of odd counts.
            let mut inf = zlib_rs::Inflate::new(false, 15);
            let mut out = [0u8; 4];
            inf.decompress(&p, &mut out, zlib_rs::InflateFlush::NoFlush).unwrap();
            assert_eq!(inf.total_in(), p.len() as u64);
            assert_eq!(inf.total_out(), u64::from(bits % 2 == 1));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Building from real gzip streams.

/// Text-like data: compressible, with long and short matches, so that there are many blocks
/// and most boundaries fall inside a byte.
fn text(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "layer ",
        "chunk ",
        "zran ",
        "inflate ",
        "window ",
        "gzip ",
        "nydus ",
        "blob ",
        "meta ",
        "tar ",
        "checkpoint ",
        "deflate ",
        "\n",
        "0123456789 ",
        "container ",
        "image ",
    ];
    let mut s = seed;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let w = WORDS[(s >> 60) as usize];
        out.extend_from_slice(w.as_bytes());
        // Some noise, so that deflate blocks hold tens of KiB, not hundreds.
        for k in 0..4 {
            out.push(b'a' + ((s >> (24 + 5 * k)) & 31) as u8);
        }
        if (s >> 20) & 7 == 0 {
            out.push((s >> 32) as u8);
        }
    }
    out.truncate(len);
    out
}

/// One gzip member. The compressor ends a block (`Z_BLOCK`, no byte alignment) every 12000
/// bytes besides the blocks it ends on its own, so that there are many boundaries, most of
/// them inside a byte.
fn gzip_member(data: &[u8], level: i32) -> Vec<u8> {
    use zlib_rs::{DeflateConfig, DeflateFlush, Status};
    let config = DeflateConfig { level, window_bits: -15, ..Default::default() };
    let mut d = zlib_rs::Deflate::new_with_config(config);
    let mut raw = vec![0u8; data.len() + data.len() / 8 + 4096];
    let pieces: Vec<&[u8]> = data.chunks(12_000).collect();
    for (k, piece) in pieces.iter().enumerate() {
        let flush = if k + 1 == pieces.len() { DeflateFlush::Finish } else { DeflateFlush::Block };
        let before = d.total_in();
        let status = d.compress(piece, &mut raw[d.total_out() as usize..], flush).unwrap();
        assert_eq!(d.total_in() - before, piece.len() as u64);
        assert!(flush != DeflateFlush::Finish || status == Status::StreamEnd);
    }
    if pieces.is_empty() {
        let status = d.compress(&[], &mut raw, DeflateFlush::Finish).unwrap();
        assert_eq!(status, Status::StreamEnd);
    }
    raw.truncate(d.total_out() as usize);
    let mut gz = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    gz.extend_from_slice(&raw);
    gz.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    gz.extend_from_slice(&(data.len() as u32).to_le_bytes());
    gz
}

/// Asks for a checkpoint at every chunk start, as the tar sink does.
struct ChunkStarts(Vec<u64>);

impl Sink for ChunkStarts {
    fn data(
        &mut self,
        at: u64,
        bytes: &[u8],
        requests: &mut Requests,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let end = at + bytes.len() as u64;
        for &s in self.0.iter().filter(|&&s| s >= at && s < end) {
            requests.request(s);
        }
        Ok(())
    }
}

/// `files` as (start, len) regions of `data`, cut into `chunk` pieces.
fn file_chunks(data: &[u8], files: &[(usize, usize)], chunk: usize) -> Vec<FileChunk> {
    let mut out = Vec::new();
    for &(start, len) in files {
        let mut off = 0;
        while off < len {
            let n = chunk.min(len - off);
            let at = start + off;
            out.push(FileChunk {
                out: at as u64,
                len: n as u32,
                digest: Sha256::digest(&data[at..at + n]).into(),
            });
            off += n;
        }
    }
    out
}

/// Build, then check everything a reader of the result relies on, and decode every chunk
/// from its context alone as Nydus would.
fn build_and_check(data: &[u8], gz: &[u8], chunks: &[FileChunk], span: u64) -> (Index, BlobMeta, Vec<u32>) {
    let starts = chunks.iter().map(|c| c.out).collect();
    let index =
        IndexBuilder::new().span(span).request_slack(4096).build_with(gz, &mut ChunkStarts(starts)).unwrap();
    let (meta, ci_of) = BlobMeta::build(&index, chunks).unwrap();
    assert_eq!(ci_of.len(), chunks.len());
    assert_eq!(meta.digests.len(), meta.chunks.len());

    // The mapping: same digest and length, same entry; the entry has that digest.
    for (c, &ci) in chunks.iter().zip(&ci_of) {
        let info = &meta.chunks[ci as usize];
        assert_eq!(meta.digests[ci as usize], c.digest);
        assert_eq!(info.uncompressed_size, c.len);
    }
    // Synthetic addresses.
    let mut pos = 0;
    for c in &meta.chunks {
        assert_eq!(c.uncompressed_offset, pos);
        pos += u64::from(c.uncompressed_size).div_ceil(4096) * 4096;
    }
    assert_eq!(meta.uncompressed_size(), pos);

    // Every context, decoded from its own fields and compressed range only.
    let mut outputs = Vec::new();
    for (z, ctx) in meta.contexts.iter().enumerate() {
        let input = &gz[ctx.in_offset as usize..(ctx.in_offset + u64::from(ctx.in_len)) as usize];
        let out = nydus_uncompress(ctx, input).unwrap_or_else(|e| panic!("context {z} {ctx:?}: {e}"));
        let o = ctx.out_offset as usize;
        assert_eq!(out, data[o..o + out.len()], "context {z}");
        let cp = &index.checkpoints[index.checkpoint_for(ctx.out_offset)];
        assert_eq!((cp.out, cp.input, cp.bits), (ctx.out_offset, ctx.in_offset, ctx.bits));
        if ctx.bits > 0 {
            assert_eq!(ctx.prev_byte, gz[ctx.in_offset as usize - 1], "context {z}: the partial byte");
        }
        outputs.push(out);
    }
    for (ci, c) in meta.chunks.iter().enumerate() {
        let out = &outputs[c.zran_index as usize];
        let bytes = &out[c.zran_offset as usize..c.zran_offset as usize + c.uncompressed_size as usize];
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        assert_eq!(digest, meta.digests[ci], "chunk {ci}");
        // Its compressed range starts at its context's block and reaches past its end.
        let ctx = &meta.contexts[c.zran_index as usize];
        assert_eq!(c.compressed_offset, ctx.in_offset);
        assert!(c.compressed_offset + u64::from(c.compressed_size) <= gz.len() as u64);
    }

    // Both forms read back.
    let enc = meta.encode().unwrap();
    let back = decode_bytes(&enc.bytes).unwrap();
    assert_eq!(back.form, Form::Compressed);
    assert_eq!(back.meta, BlobMeta { digests: vec![], ..meta.clone() });
    let cache = meta.encode_cache().unwrap();
    let back = decode_bytes(&cache).unwrap();
    assert_eq!(back.form, Form::Cache);
    assert_eq!(back.meta, BlobMeta { digests: vec![], ..meta.clone() });
    // Planned without dictionaries and written from the index, one window at a time: the
    // same bytes.
    let plan = BlobMeta::plan(&index, chunks).unwrap();
    assert!(plan.meta.contexts.iter().all(|c| c.dict.is_empty()));
    assert_eq!(plan.ci_of, ci_of);
    assert_eq!(plan.meta.encode_from_index(&index, &plan.checkpoints).unwrap(), enc);
    assert!(plan.meta.encode_from_index(&index, &plan.checkpoints[1..]).is_err());
    (index, meta, ci_of)
}

#[test]
fn build_single_member_with_duplicates() {
    let mut data = text(600_000, 1);
    // File 2 is a copy of file 1: its chunks are stored once.
    let copy = data[10_000..110_000].to_vec();
    data[300_000..400_000].copy_from_slice(&copy);
    let gz = gzip_member(&data, 6);
    let files = [(10_000, 100_000), (150_000, 5), (150_512, 70_001), (300_000, 100_000), (450_000, 140_000)];
    let chunks = file_chunks(&data, &files, 32 * 1024);
    let (index, meta, ci_of) = build_and_check(&data, &gz, &chunks, 128 * 1024);
    assert!(index.checkpoints.len() > 5, "{} checkpoints", index.checkpoints.len());
    assert!(meta.contexts.iter().any(|c| c.bits > 0), "no context starts inside a byte");
    assert!(meta.contexts.iter().any(|c| !c.dict.is_empty() && c.dict.len() < 32768), "no sparse window");
    // File 4's chunks map to file 1's.
    let first = &ci_of[..4];
    let copy_of = &ci_of[chunks.iter().position(|c| c.out == 300_000).unwrap()..][..4];
    assert_eq!(first, copy_of);
    assert_eq!(meta.chunks.len(), chunks.len() - 4);
    // Only used checkpoints become contexts.
    assert!(meta.contexts.len() <= meta.chunks.len());
    assert!(meta.contexts.len() < index.checkpoints.len());
}

#[test]
fn build_across_members() {
    let data = text(400_000, 2);
    // Members end at 100000 (a file's last chunk ends there), 100000..250000, and the rest.
    let cuts = [0, 100_000, 250_000, data.len()];
    let mut gz = Vec::new();
    for w in cuts.windows(2) {
        gz.extend(gzip_member(&data[w[0]..w[1]], if w[0] == 0 { 9 } else { 1 }));
    }
    let files = [(20_000, 80_000), (100_000, 50_000), (200_000, 60_000), (330_000, 30_000)];
    let chunks = file_chunks(&data, &files, 16 * 1024);
    let (index, meta, _) = build_and_check(&data, &gz, &chunks, u64::MAX);
    assert_eq!(index.members, 3);

    // The context that ends where member 0 ends takes one byte of member 1's deflate data:
    // without it Nydus's decoder finds no input after the header and fails.
    let starts: Vec<&Checkpoint> = index.checkpoints.iter().filter(|c| c.out == 100_000).collect();
    assert_eq!(starts.len(), 1);
    let next = starts[0];
    let ctx = meta
        .contexts
        .iter()
        .find(|c| c.out_offset + u64::from(c.out_len) == 100_000)
        .expect("a context ending at the member boundary");
    assert_eq!(ctx.in_offset + u64::from(ctx.in_len), next.input + 1);
    let short = ZranContext { in_len: ctx.in_len - 1, ..ctx.clone() };
    let input = &gz[short.in_offset as usize..(short.in_offset + u64::from(short.in_len)) as usize];
    assert!(nydus_uncompress(&short, input).is_err());
}

#[test]
fn build_context_spanning_members() {
    // Few checkpoints: a context's output crosses a member boundary (trailer and header in
    // the middle of its input), as Nydus's decoder handles.
    let data = text(200_000, 3);
    let mut gz = gzip_member(&data[..90_000], 6);
    gz.extend(gzip_member(&data[90_000..], 6));
    let chunks = file_chunks(&data, &[(80_000, 30_000)], 1 << 20);
    let index = IndexBuilder::new().span(u64::MAX).build(&gz[..]).unwrap();
    let (meta, _) = BlobMeta::build(&index, &chunks).unwrap();
    assert_eq!(meta.contexts.len(), 1);
    let ctx = &meta.contexts[0];
    assert_eq!(ctx.out_offset, 0);
    let input = &gz[ctx.in_offset as usize..(ctx.in_offset + u64::from(ctx.in_len)) as usize];
    let out = nydus_uncompress(ctx, input).unwrap();
    assert_eq!(out, data[..110_000]);
}

#[test]
fn build_empty() {
    let gz = gzip_member(b"", 6);
    let index = IndexBuilder::new().build(&gz[..]).unwrap();
    let (meta, ci_of) = BlobMeta::build(&index, &[]).unwrap();
    assert!(meta.chunks.is_empty() && meta.contexts.is_empty() && ci_of.is_empty());
    let enc = meta.encode().unwrap();
    assert_eq!(enc.ci_compressor, compressor::NONE);
    assert_eq!(decode_bytes(&enc.bytes).unwrap().meta, meta);
}

/// An index by hand: checkpoints at (out, input).
fn fake_index(points: &[(u64, u64)], uncompressed: u64, compressed: u64) -> Index {
    Index {
        compressed_size: compressed,
        uncompressed_size: uncompressed,
        span: 1 << 20,
        members: 1,
        tail: [0; 8],
        checkpoints: points
            .iter()
            .map(|&(out, input)| Checkpoint {
                out,
                input,
                bits: 0,
                prev_byte: 0,
                member: 0,
                window_len: 0,
                window: vec![],
            })
            .collect(),
        member_ends: Vec::new(),
    }
}

fn chunk(out: u64, len: u32, tag: u8) -> FileChunk {
    FileChunk { out, len, digest: [tag; 32] }
}

#[test]
fn contexts_at_member_ends() {
    use crate::gzip::MemberEnd;
    // Two members: [0, 100) in compressed [10, 58), [100, 200) from 70; the first ends cleanly
    // after compressed byte 50, the second does not.
    let mut index = fake_index(&[(0, 10), (100, 70)], 200, 130);
    index.checkpoints[1].member = 1;
    index.member_ends = vec![
        MemberEnd { out: 100, input: 50, clean: true },
        MemberEnd { out: 200, input: 120, clean: false },
    ];
    // A chunk that ends with the first member stops at the last byte its data needs.
    let plan = BlobMeta::plan(&index, &[chunk(0, 100, 1)]).unwrap();
    assert_eq!(plan.meta.contexts[0].in_len, 40);
    assert!(plan.past_member_end.is_empty());
    // One that ends with the second runs to the end of the layer, and is counted.
    let plan = BlobMeta::plan(&index, &[chunk(0, 60, 1), chunk(100, 100, 2)]).unwrap();
    assert_eq!(plan.meta.contexts.len(), 2);
    assert_eq!(plan.meta.contexts[1].in_len, 60);
    assert_eq!(plan.past_member_end, vec![1]);
    // A chunk that crosses from one member into the next is counted too.
    let plan = BlobMeta::plan(&index, &[chunk(50, 100, 3)]).unwrap();
    assert_eq!(plan.past_member_end, vec![0]);
    // Without member ends (an index from a `.zidx`), nothing is known and nothing counted.
    index.member_ends.clear();
    let plan = BlobMeta::plan(&index, &[chunk(0, 100, 1)]).unwrap();
    assert!(plan.past_member_end.is_empty());
    assert_eq!(plan.meta.contexts[0].in_len, 61, "the next member's start and one byte");
}

#[test]
fn build_refuses_what_does_not_fit() {
    let index = fake_index(&[(0, 10), (1 << 20, 1000)], 1 << 34, 1 << 30);
    let err = |chunks: &[FileChunk]| BlobMeta::build(&index, chunks).unwrap_err().to_string();

    assert!(err(&[chunk(0, 0, 1)]).contains("length 0"));
    assert!(err(&[chunk(5, 1 << 24 | 1, 1)]).contains("length"));
    assert!(err(&[chunk((1 << 34) - 10, 11, 1)]).contains("past the end"));
    assert!(err(&[chunk(100, 10, 1), chunk(50, 10, 2)]).contains("before the previous"));
    // More than 16 MiB from the checkpoint to the chunk's end: more than Nydus decodes from a
    // zran context (its RAFS_MAX_CHUNK_SIZE).
    let e = err(&[chunk(1 << 33, 100, 1)]);
    assert!(e.contains("file chunk 0") && e.contains("Nydus decodes at most"), "{e}");
    let e = err(&[chunk((1 << 20) + (16 << 20) - 99, 100, 1)]);
    assert!(e.contains("Nydus decodes at most"), "{e}");
    // 2^30 compressed bytes from the checkpoint to past the chunk: not in 24 bits.
    let e = err(&[chunk((1 << 20) + 5, 100, 1)]);
    assert!(e.contains("24 bits"), "{e}");
    // A compressed offset past 40 bits.
    let index = fake_index(&[(0, 1 << 41)], 1000, (1 << 41) + 100);
    let e = BlobMeta::build(&index, &[chunk(0, 10, 1)]).unwrap_err().to_string();
    assert!(e.contains("40 bits"), "{e}");
    // No checkpoint at 0.
    let index = fake_index(&[(5, 1)], 1000, 100);
    assert!(BlobMeta::build(&index, &[chunk(10, 10, 1)]).is_err());
}

#[test]
fn build_places_chunks_and_contexts() {
    let index = fake_index(&[(0, 10), (100_000, 5_000), (200_000, 9_000)], 300_000, 12_000);
    let chunks =
        [chunk(150_000, 10_000, 1), chunk(160_000, 5, 2), chunk(170_000, 10_000, 1), chunk(250_000, 4096, 3)];
    let (meta, ci_of) = BlobMeta::build(&index, &chunks).unwrap();
    assert_eq!(ci_of, [0, 1, 0, 2]);
    let offs: Vec<u64> = meta.chunks.iter().map(|c| c.uncompressed_offset).collect();
    assert_eq!(offs, [0, 12_288, 16_384]);
    assert_eq!(meta.uncompressed_size(), 20_480);
    assert_eq!(meta.contexts.len(), 2);
    let c0 = &meta.contexts[0];
    assert_eq!((c0.in_offset, c0.out_offset, c0.out_len), (5_000, 100_000, 60_005));
    assert_eq!(c0.in_len, 9_000 - 5_000);
    let c1 = &meta.contexts[1];
    assert_eq!((c1.in_offset, c1.out_offset, c1.out_len, c1.in_len), (9_000, 200_000, 54_096, 3_000));
    let z: Vec<(u32, u32)> = meta.chunks.iter().map(|c| (c.zran_index, c.zran_offset)).collect();
    assert_eq!(z, [(0, 50_000), (0, 60_000), (1, 50_000)]);
    assert_eq!((meta.chunks[0].compressed_offset, meta.chunks[0].compressed_size), (5_000, 4_000));
    assert_eq!(meta.digest_table().len(), 96);
}

// ---------------------------------------------------------------------------------------------
// Round trips.

prop_compose! {
    fn arb_meta()(
        specs in prop::collection::vec(
            (1u32..=(1 << 24), 0u64..3, any::<bool>(), 0u32..5000, 0u32..(1 << 24), 0u64..100_000),
            0..24,
        ),
        ctx_specs in prop::collection::vec(
            (0u64..1 << 20, 0u32..1 << 30, 0u8..8, any::<u8>(), prop::collection::vec(any::<u8>(), 0..300), 0u64..1 << 20),
            24,
        ),
    ) -> BlobMeta {
        let mut meta = BlobMeta::default();
        let (mut pos, mut coff, mut in_off, mut out_off) = (0u64, 0u64, 1u64, 0u64);
        let mut zoff = 0u32;
        for (k, &(size, gap, new_ctx, skip, csize, cgap)) in specs.iter().enumerate() {
            if k == 0 || new_ctx {
                let (din, in_len, bits, prev, ref dict, dout) = ctx_specs[meta.contexts.len()];
                in_off += din;
                out_off += dout;
                meta.contexts.push(ZranContext {
                    in_offset: in_off, out_offset: out_off, in_len, out_len: 0,
                    bits, prev_byte: prev, dict: dict.clone(),
                });
                zoff = 0;
            }
            zoff = zoff.saturating_add(skip);
            pos += gap * 4096;
            coff += cgap;
            let ctx = meta.contexts.last_mut().unwrap();
            ctx.out_len = ctx.out_len.max(zoff + size);
            meta.chunks.push(ChunkInfo {
                uncompressed_offset: pos,
                uncompressed_size: size,
                compressed_offset: coff,
                compressed_size: csize,
                zran_index: (meta.contexts.len() - 1) as u32,
                zran_offset: zoff,
            });
            pos += u64::from(size).div_ceil(4096) * 4096;
            zoff += size / 2;
        }
        meta
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn round_trip(meta in arb_meta()) {
        meta.validate().unwrap();
        let enc = meta.encode().unwrap();
        let same = enc.bytes == meta.encode_cache().unwrap();
        let back = decode_bytes(&enc.bytes).unwrap();
        prop_assert_eq!(&back.meta, &meta);
        prop_assert_eq!(back.form, if same { Form::Cache } else { Form::Compressed });
        prop_assert_eq!(back.features, enc.features);
        prop_assert_eq!(back.ci_compressor, enc.ci_compressor);
        prop_assert_eq!(back.ci_compressed_size, enc.ci_compressed_size);
        prop_assert_eq!(back.ci_uncompressed_size, enc.ci_uncompressed_size);
        prop_assert_eq!(enc.bytes.len() as u64, enc.ci_compressed_size + 4096);
        prop_assert_eq!(enc.uncompressed_size, meta.uncompressed_size());
        let cache = meta.encode_cache().unwrap();
        prop_assert_eq!(cache.len() as u64 % 4096, 0);
        prop_assert_eq!(&cache[cache.len() - 4096..], &enc.bytes[enc.bytes.len() - 4096..]);
        let back = decode_bytes(&cache).unwrap();
        prop_assert_eq!(&back.meta, &meta);
        prop_assert_eq!(back.form, Form::Cache);
    }
}

// ---------------------------------------------------------------------------------------------
// Validation, corruption, the blob table.

fn sample() -> BlobMeta {
    let dict: Vec<u8> = b"zran blob.meta sample dictionary ".iter().copied().cycle().take(512).collect();
    BlobMeta {
        chunks: vec![
            ChunkInfo {
                uncompressed_offset: 0,
                uncompressed_size: 5_000,
                compressed_offset: 10,
                compressed_size: 1_500,
                zran_index: 0,
                zran_offset: 512,
            },
            ChunkInfo {
                uncompressed_offset: 8_192,
                uncompressed_size: 60_000,
                compressed_offset: 10,
                compressed_size: 3_000,
                zran_index: 0,
                zran_offset: 5_512,
            },
            ChunkInfo {
                uncompressed_offset: 69_632,
                uncompressed_size: 4_096,
                compressed_offset: 20_500,
                compressed_size: 1_000,
                zran_index: 1,
                zran_offset: 0,
            },
        ],
        contexts: vec![
            ZranContext {
                in_offset: 10,
                out_offset: 0,
                in_len: 3_000,
                out_len: 65_512,
                bits: 0,
                prev_byte: 0,
                dict: vec![],
            },
            ZranContext {
                in_offset: 20_500,
                out_offset: 70_000,
                in_len: 1_000,
                out_len: 4_096,
                bits: 3,
                prev_byte: 0xa5,
                dict,
            },
        ],
        digests: vec![[1; 32], [2; 32], [3; 32]],
    }
}

#[test]
fn validate_names_the_field() {
    let check = |f: &dyn Fn(&mut BlobMeta), want: &str| {
        let mut m = sample();
        f(&mut m);
        let e = m.validate().unwrap_err().to_string();
        assert!(e.contains(want), "{e:?} lacks {want:?}");
        assert!(m.encode().is_err());
    };
    check(&|m| m.chunks[1].uncompressed_offset = 4_096, "chunk 1 (CI data offset 24)");
    check(&|m| m.chunks[1].uncompressed_offset = 8_193, "not 4 KiB-aligned");
    check(&|m| m.chunks[2].zran_index = 2, "zran index 2");
    check(&|m| m.chunks[2].zran_offset = 1, "past the end of context 1");
    check(&|m| m.chunks[1].zran_offset = 5_513, "past the end");
    check(&|m| m.chunks[0].uncompressed_size = 0, "uncompressed size 0");
    check(&|m| m.chunks[2].compressed_offset = 5, "compressed offset 5 before");
    check(&|m| m.chunks[0].compressed_offset = 1 << 40, "40 bits");
    check(&|m| m.chunks[0].compressed_size = 1 << 24, "24 bits");
    check(&|m| m.chunks[2].uncompressed_offset = 1 << 44, "2^44");
    check(&|m| m.contexts[1].bits = 8, "zran context 1 (CI data offset 112)");
    check(
        &|m| {
            m.contexts[0].bits = 1;
            m.contexts[0].in_offset = 0;
        },
        "no previous byte",
    );
    check(&|m| m.contexts[1].dict = vec![0; 32_769], "32768");
    check(&|m| m.contexts[1].in_offset = 5, "before the previous context");
    check(&|m| m.contexts[1].in_offset = u64::MAX, "overflows");
    check(
        &|m| {
            m.digests.pop();
        },
        "2 digests for 3 chunks",
    );
    check(
        &|m| {
            let c = m.contexts[0].clone();
            m.contexts.push(c.clone());
            m.contexts.push(c);
        },
        "4 zran contexts for 3 chunks",
    );
}

#[test]
fn every_truncation_and_bit_flip() {
    let meta = sample();
    let plain = BlobMeta { digests: vec![], ..meta.clone() };
    for bytes in [meta.encode().unwrap().bytes, meta.encode_cache().unwrap()] {
        let good = decode_bytes(&bytes).unwrap();
        assert_eq!(good.meta, plain);
        for len in 0..bytes.len() {
            assert!(decode_bytes(&bytes[..len]).is_err(), "truncated to {len}");
        }
        let mut extended = bytes.clone();
        extended.push(0);
        assert!(decode_bytes(&extended).is_err());
        let mut b = bytes.clone();
        for i in 0..b.len() {
            for bit in 0..8 {
                b[i] ^= 1 << bit;
                if let Ok(d) = decode_bytes(&b) {
                    d.meta.validate().unwrap();
                    // Only the zstd frame may decode to the same thing (a flip in a field zstd
                    // ignores); every byte of the cache form matters.
                    if good.form == Form::Cache {
                        assert_ne!(d, good, "flip of bit {bit} of byte {i} went unnoticed");
                    }
                }
                b[i] ^= 1 << bit;
            }
        }
    }
}

#[test]
fn hostile_headers() {
    let enc = sample().encode().unwrap();
    let body = enc.bytes.len() - HEADER_SIZE;
    let h = Header::read_from_bytes(&enc.bytes[body..]).unwrap();
    let with = |f: &dyn Fn(&mut Header)| {
        let mut h = h.clone();
        f(&mut h);
        let mut b = enc.bytes[..body].to_vec();
        b.extend_from_slice(zerocopy::IntoBytes::as_bytes(&h));
        decode_bytes(&b).map(|_| ()).unwrap_err().to_string()
    };
    // A huge claimed size is refused before anything is allocated for it.
    let e = with(&|h| h.ci_uncompressed_size = (1u64 << 40).into());
    assert!(e.contains("s_ci_uncompressed_size"), "{e}");
    // A plausible but wrong one is found by decompressing, with memory bounded by the data.
    let e = with(&|h| h.ci_uncompressed_size = (100 << 20).into());
    assert!(e.contains("decompresses to"), "{e}");
    let e = with(&|h| h.ci_entries = 2.into());
    assert!(e.contains("s_ci_zran_offset"), "{e}");
    let e = with(&|h| h.ci_zran_count = 3.into());
    assert!(e.contains("past the end of the 472-byte dictionary table"), "{e}");
    let e = with(&|h| h.ci_zran_count = 4.into());
    assert!(e.contains("s_ci_zran_count"), "{e}");
    let e = with(&|h| h.features = features::CHUNK_INFO_V2.into());
    assert!(e.contains("s_features"), "{e}");
    let e = with(&|h| h.features = (features::ZRAN_REF | features::BATCH).into());
    assert!(e.contains("s_features"), "{e}");
    let e = with(&|h| h.ci_compressor = compressor::LZ4_BLOCK.into());
    assert!(e.contains("s_ci_compressor"), "{e}");
    let e = with(&|h| h.magic2 = 0.into());
    assert!(e.contains(&format!("s_magic2 (at offset {})", body + 4092)), "{e}");
    let e = with(&|h| h.ci_compressed_size = 5.into());
    assert!(e.contains("neither"), "{e}");
}

#[test]
fn decode_against_the_blob_table() {
    use crate::rafs::writer::BlobSpec;
    let meta = sample();
    let enc = meta.encode().unwrap();
    let blob = BlobSpec {
        chunk_count: enc.chunk_count,
        features: enc.features,
        compressed_size: 30_000,
        uncompressed_size: enc.uncompressed_size,
        ci_compressor: enc.ci_compressor,
        ci_offset: enc.ci_offset,
        ci_compressed_size: enc.ci_compressed_size,
        ci_uncompressed_size: enc.ci_uncompressed_size,
        meta_digest: enc.digest,
        meta_size: enc.bytes.len() as u64,
        ..BlobSpec::default()
    };
    assert_eq!(BlobMeta::decode(&enc.bytes, &blob).unwrap(), BlobMeta { digests: vec![], ..meta.clone() });
    assert!(BlobMeta::decode(&meta.encode_cache().unwrap(), &blob).is_ok());
    let bad = |f: &dyn Fn(&mut BlobSpec)| {
        let mut b = blob.clone();
        f(&mut b);
        BlobMeta::decode(&enc.bytes, &b).unwrap_err().to_string()
    };
    assert!(bad(&|b| b.chunk_count = 4).contains("chunk_count is 3"));
    assert!(bad(&|b| b.ci_offset = 4096).contains("ci_offset"));
    assert!(bad(&|b| b.ci_uncompressed_size += 1).contains("ci_uncompressed_size"));
    assert!(bad(&|b| b.features = features::ALIGNED).contains("features"));
    assert!(bad(&|b| b.uncompressed_size = 4096).contains("uncompressed end"));
    assert!(bad(&|b| b.compressed_size = 21_000).contains("zran context 1"));
}

// ---------------------------------------------------------------------------------------------
// The golden file of formats/blob-meta.md.

fn golden(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("formats/golden").join(name)
}

#[test]
fn golden_file() {
    let meta = sample();
    let enc = meta.encode().unwrap();
    let cache = meta.encode_cache().unwrap();
    if std::env::var_os("ZRAN_BLESS").is_some() {
        std::fs::write(golden("sample.blob.meta"), &enc.bytes).unwrap();
        std::fs::write(golden("sample.blob.meta.cache"), &cache).unwrap();
    }
    let bytes = std::fs::read(golden("sample.blob.meta")).unwrap();
    assert!(bytes == enc.bytes, "the writer no longer reproduces formats/golden/sample.blob.meta");
    assert!(std::fs::read(golden("sample.blob.meta.cache")).unwrap() == cache);

    // The values formats/blob-meta.md shows.
    let ci = meta.ci_data().unwrap();
    assert_eq!(ci.len(), 3 * 24 + 2 * 40 + 512);
    assert_eq!(enc.ci_compressor, compressor::ZSTD);
    assert_eq!(enc.features, 0x4000_001d);
    assert_eq!(enc.uncompressed_size, 73_728);
    assert_eq!(cache.len(), 4096 + 4096);
    let h = &bytes[bytes.len() - HEADER_SIZE..];
    assert_eq!(&h[..4], &MAGIC.to_le_bytes());
    assert_eq!(&h[12..16], &3u32.to_le_bytes());
    assert_eq!(&h[40..48], &72u64.to_le_bytes());
    assert_eq!(&h[48..56], &592u64.to_le_bytes());
    assert_eq!(&h[56..60], &2u32.to_le_bytes());
    assert_eq!(
        ci[..24],
        [0, 0, 0, 0, 0x87, 0x13, 0, 3, 10, 0, 0, 0, 0, 0xdc, 0x05, 0, 0, 2, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(ci[72 + 40 + 36..72 + 40 + 40], [0xa5, 3, 0, 0]);
    assert_eq!(chunk_flags::ZRAN_CHUNK, 3);
}

// ---------------------------------------------------------------------------------------------
// The chunk info v1 blob.meta of eStargz layers.

/// Three chunks: one compressible, one whose member is larger than it, one with a size past
/// 2^20 (so the high 4 bits of its size are used).
fn stargz_sample() -> StargzMeta {
    let c = |uncompressed_offset, uncompressed_size, compressed_offset, compressed_size| StargzChunk {
        uncompressed_offset,
        uncompressed_size,
        compressed_offset,
        compressed_size,
    };
    StargzMeta {
        chunks: vec![c(0, 5000, 10, 1500), c(8192, 4096, 1510, 4200), c(12288, 0x10_0001, 5710, 0x1_2345)],
        stored: false,
    }
}

fn stargz_blob(enc: &Encoded) -> crate::rafs::writer::BlobSpec {
    crate::rafs::writer::BlobSpec {
        chunk_count: enc.chunk_count,
        features: enc.features,
        compressed_size: 200_000,
        uncompressed_size: enc.uncompressed_size,
        ci_compressor: enc.ci_compressor,
        ci_offset: enc.ci_offset,
        ci_compressed_size: enc.ci_compressed_size,
        ci_uncompressed_size: enc.ci_uncompressed_size,
        meta_digest: enc.digest,
        meta_size: enc.bytes.len() as u64,
        compression_algo: compressor::GZIP,
        ..Default::default()
    }
}

proptest! {
    /// Any valid chunk list survives both forms, compressed or stored, with every field at
    /// any value its bits allow.
    #[test]
    fn stargz_round_trip(
        chunks in proptest::collection::vec(
            (0u64..4, 1u32..=1 << 24, 1u64..1 << 20, 1u32..=1 << 24, 0u8..4), 1..40),
        start in prop_oneof![Just(0u64), Just(format::MAX_COMPRESSED_OFFSET - (1 << 26))],
    ) {
        let mut meta = StargzMeta::default();
        let (mut uo, mut co) = (0u64, start);
        for (gap, us, cgap, cs, edge) in chunks {
            // Sizes at their edges as often as anywhere.
            let us = match edge { 0 => 1, 1 => 1 << 24, _ => us };
            let cs = match (edge, cs == us) { (2, _) => 1 << 24, (_, true) => cs % (1 << 24) + 1, _ => cs };
            let cs = if cs == us { if us == 1 { 2 } else { us - 1 } } else { cs };
            uo += gap * 4096;
            meta.chunks.push(StargzChunk { uncompressed_offset: uo, uncompressed_size: us, compressed_offset: co, compressed_size: cs });
            uo += format::round_up_4k(u64::from(us)).unwrap();
            co += cgap;
        }
        prop_assert!(meta.validate().is_ok());
        let enc = meta.encode().unwrap();
        let back = decode_stargz_bytes(&enc.bytes).unwrap();
        prop_assert_eq!(&back.meta, &meta);
        prop_assert_eq!(back.form, Form::Compressed);
        prop_assert_eq!(back.ci_uncompressed_size, meta.chunks.len() as u64 * 16);
        prop_assert!(enc.ci_compressor == compressor::ZSTD || enc.ci_compressor == compressor::NONE);
        let cache = meta.encode_cache().unwrap();
        prop_assert_eq!(cache.len() as u64, format::round_up_4k(back.ci_uncompressed_size).unwrap() + 4096);
        prop_assert_eq!(&cache[cache.len() - HEADER_SIZE..], &enc.bytes[enc.bytes.len() - HEADER_SIZE..]);
        let back = decode_stargz_bytes(&cache).unwrap();
        prop_assert_eq!(&back.meta, &meta);
        let blob = crate::rafs::writer::BlobSpec { compressed_size: 1 << 41, ..stargz_blob(&enc) };
        prop_assert_eq!(StargzMeta::decode(&enc.bytes, &blob).unwrap(), meta);
    }
}

#[test]
fn stargz_edges() {
    // The largest values every field holds, read back whole.
    let top = format::MAX_V1_UNCOMPRESSED_OFFSET - (16 << 20) - 4096;
    let meta = StargzMeta {
        chunks: vec![
            StargzChunk {
                uncompressed_offset: 0,
                uncompressed_size: 1,
                compressed_offset: 0,
                compressed_size: 2,
            },
            StargzChunk {
                uncompressed_offset: top,
                uncompressed_size: 1 << 24,
                compressed_offset: format::MAX_COMPRESSED_OFFSET,
                compressed_size: 1,
            },
        ],
        stored: false,
    };
    let back = decode_stargz_bytes(&meta.encode().unwrap().bytes).unwrap();
    assert_eq!(back.meta, meta);
    // One chunk: 16 bytes, which zstd does not make smaller: stored.
    let one = StargzMeta { chunks: meta.chunks[..1].to_vec(), stored: false };
    let enc = one.encode().unwrap();
    assert_eq!(
        (enc.ci_compressor, enc.ci_compressed_size, enc.bytes.len()),
        (compressor::NONE, 16, 16 + 4096)
    );
    assert_eq!(enc.features, 0x4000_0011);
    assert_eq!(enc.uncompressed_size, 4096);
    assert_eq!(decode_stargz_bytes(&one.encode_cache().unwrap()).unwrap().form, Form::Cache);
}

#[test]
fn stargz_validate_names_the_field() {
    let bad = |f: &dyn Fn(&mut StargzMeta)| {
        let mut m = stargz_sample();
        f(&mut m);
        let e = m.validate().unwrap_err().to_string();
        assert!(m.encode().is_err());
        e
    };
    assert!(bad(&|m| m.chunks.clear()).contains("0 chunks"));
    assert!(
        bad(&|m| m.chunks[1].uncompressed_size = 0)
            .contains("chunk 1 (CI data offset 16): uncompressed size 0")
    );
    assert!(bad(&|m| m.chunks[2].uncompressed_size = (1 << 24) + 1).contains("uncompressed size"));
    assert!(bad(&|m| m.chunks[0].compressed_size = 0).contains("compressed size 0"));
    assert!(bad(&|m| m.chunks[0].compressed_size = (1 << 24) + 1).contains("compressed size"));
    assert!(bad(&|m| m.chunks[0].compressed_size = 5000).contains("as stored"));
    assert!(bad(&|m| m.chunks[1].uncompressed_offset = 8193).contains("4 KiB-aligned"));
    assert!(bad(&|m| m.chunks[1].uncompressed_offset = 4096).contains("overlaps"));
    assert!(bad(&|m| m.chunks[1].compressed_offset = 10).contains("not after"));
    assert!(bad(&|m| m.chunks[2].compressed_offset = 1 << 40).contains("40 bits"));
    assert!(bad(&|m| m.chunks[2].uncompressed_offset = 1 << 44).contains("2^44"));
}

#[test]
fn stargz_every_truncation_and_bit_flip() {
    let enc = stargz_sample().encode().unwrap();
    let cache = stargz_sample().encode_cache().unwrap();
    for bytes in [&enc.bytes, &cache] {
        for n in 0..bytes.len() {
            assert!(decode_stargz_bytes(&bytes[..n]).is_err(), "truncated to {n}");
        }
        for i in 0..bytes.len() {
            for bit in [0, 3, 7] {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                if let Ok(d) = decode_stargz_bytes(&b) {
                    d.meta.validate().unwrap();
                }
            }
        }
    }
    // Neither kind is read as the other.
    assert!(decode_bytes(&enc.bytes).unwrap_err().to_string().contains("s_features"));
    let zran = sample().encode().unwrap();
    assert!(decode_stargz_bytes(&zran.bytes).unwrap_err().to_string().contains("s_features"));
}

#[test]
fn stargz_hostile_headers() {
    let enc = stargz_sample().encode().unwrap();
    let body = enc.bytes.len() - HEADER_SIZE;
    let with = |f: &dyn Fn(&mut Header)| {
        let mut b = enc.bytes.clone();
        let mut h = Header::read_from_bytes(&b[body..]).unwrap();
        f(&mut h);
        b[body..].copy_from_slice(zerocopy::IntoBytes::as_bytes(&h));
        decode_stargz_bytes(&b).unwrap_err().to_string()
    };
    let e = with(&|h| h.ci_entries = 4.into());
    assert!(e.contains("s_ci_uncompressed_size"), "{e}");
    let e = with(&|h| h.ci_zran_count = 1.into());
    assert!(e.contains("s_ci_zran_count"), "{e}");
    let e = with(&|h| h.ci_zran_offset = 48.into());
    assert!(e.contains("s_ci_zran_offset"), "{e}");
    let e = with(&|h| h.features = (features::STARGZ_REF & !features::ALIGNED).into());
    assert!(e.contains("lacks ALIGNED"), "{e}");
    let e = with(&|h| h.features = (features::STARGZ_REF | features::CHUNK_INFO_V2).into());
    assert!(e.contains("s_features"), "{e}");
    // A chunk's reserved bits.
    let mut cache = stargz_sample().encode_cache().unwrap();
    cache[16] = 1;
    let e = decode_stargz_bytes(&cache).unwrap_err().to_string();
    assert!(e.contains("chunk 1 (CI data offset 16): reserved bits"), "{e}");
}

#[test]
fn stargz_decode_against_the_blob_table() {
    let meta = stargz_sample();
    let enc = meta.encode().unwrap();
    let blob = stargz_blob(&enc);
    assert_eq!(StargzMeta::decode(&enc.bytes, &blob).unwrap(), meta);
    assert!(StargzMeta::decode(&meta.encode_cache().unwrap(), &blob).is_ok());
    let bad = |f: &dyn Fn(&mut crate::rafs::writer::BlobSpec)| {
        let mut b = blob.clone();
        f(&mut b);
        StargzMeta::decode(&enc.bytes, &b).unwrap_err().to_string()
    };
    assert!(bad(&|b| b.chunk_count = 4).contains("chunk_count is 3"));
    assert!(bad(&|b| b.features = features::ALIGNED).contains("features"));
    assert!(bad(&|b| b.ci_compressor = compressor::ZSTD + 1).contains("ci_compressor"));
    assert!(bad(&|b| b.ci_offset = 4096).contains("ci_offset"));
    assert!(bad(&|b| b.ci_compressed_size += 1).contains("ci_compressed_size"));
    assert!(bad(&|b| b.ci_uncompressed_size = 64).contains("ci_uncompressed_size"));
    assert!(bad(&|b| b.uncompressed_size = 8192).contains("uncompressed end"));
    assert!(bad(&|b| b.compressed_size = 80_000).contains("chunk 2"));
}

#[test]
fn stargz_golden_file() {
    let meta = stargz_sample();
    let enc = meta.encode().unwrap();
    let cache = meta.encode_cache().unwrap();
    if std::env::var_os("ZRAN_BLESS").is_some() {
        std::fs::write(golden("sample-stargz.blob.meta"), &enc.bytes).unwrap();
        std::fs::write(golden("sample-stargz.blob.meta.cache"), &cache).unwrap();
    }
    let bytes = std::fs::read(golden("sample-stargz.blob.meta")).unwrap();
    assert!(bytes == enc.bytes, "the writer no longer reproduces formats/golden/sample-stargz.blob.meta");
    assert!(std::fs::read(golden("sample-stargz.blob.meta.cache")).unwrap() == cache);

    // The values formats/blob-meta.md shows.
    let ci = meta.ci_data().unwrap();
    assert_eq!(ci.len(), 48);
    assert_eq!(enc.features, 0x4000_0011);
    assert_eq!(enc.uncompressed_size, 1_064_960);
    assert_eq!((enc.ci_compressor, enc.ci_compressed_size, bytes.len()), (compressor::NONE, 48, 48 + 4096));
    assert_eq!(cache.len(), 4096 + 4096);
    assert_eq!(&cache[..48], &bytes[..48]);
    let h = &bytes[48..];
    assert_eq!(h[..16], [0x0b, 0xb1, 0x0b, 0xb1, 0x11, 0, 0, 0x40, 0, 0, 0, 0, 3, 0, 0, 0]);
    assert_eq!(h[24..40], [48, 0, 0, 0, 0, 0, 0, 0, 48, 0, 0, 0, 0, 0, 0, 0]);
    assert!(h[40..4092].iter().all(|&b| b == 0));
    assert_eq!(ci[..16], [0, 0, 0, 0, 0, 0x70, 0x38, 0x01, 0x0a, 0, 0, 0, 0, 0xb0, 0x5d, 0]);
    assert_eq!(ci[32..48], [0, 0x31, 0, 0, 0, 0, 0, 0, 0x4e, 0x16, 0, 0, 0, 0x40, 0x34, 0x12]);
}
