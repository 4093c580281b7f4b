//! Valid multi-member gzip streams built from structured input, checked against the data they
//! were made from. This target looks for wrong bytes, not only crashes: every read through the
//! index must return exactly the original data.
//!
//! The input describes the uncompressed data (literal bytes, back-references, runs, noise; up
//! to a little over 1 MiB so that 512 KiB indexing rounds and 32 KiB windows are crossed), how
//! it is cut into 1..=4 members, where the compressor sync-flushes, the compression level,
//! optional header fields, zero padding after the last member, the span, the chunk size of the
//! reader the index is built from, and the ranges to read. The index built with speculative
//! chunks (decoded ahead on a second core) must be the same.

#![no_main]

use arbitrary::Arbitrary;
use flate2::{Compression, GzBuilder};
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};
use zran::gzip::{Extractor, Index, IndexBuilder, WINDOW_SIZE, zidx};

const MAX_DATA: usize = (1 << 20) + (96 << 10);

#[derive(Arbitrary, Debug)]
enum Piece {
    Bytes(Vec<u8>),
    /// Copy `len` bytes from `back + 1` bytes before the end (overlap allowed).
    Repeat { back: u16, len: u16 },
    Run { byte: u8, len: u16 },
    /// Incompressible bytes (stored blocks at most levels).
    Noise { seed: u32, len: u16 },
}

#[derive(Arbitrary, Debug)]
struct Header {
    name: Vec<u8>,
    comment: Vec<u8>,
    extra: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    pieces: Vec<Piece>,
    level: u8,
    members: u8,
    splits: Vec<u32>,
    flushes: Vec<u32>,
    header: Option<Header>,
    padding: u8,
    span: u32,
    read_chunk: u16,
    reads: Vec<(u32, u32)>,
}

fn make_data(pieces: &[Piece]) -> Vec<u8> {
    let mut data: Vec<u8> = Vec::new();
    for p in pieces {
        let room = MAX_DATA - data.len();
        if room == 0 {
            break;
        }
        match *p {
            Piece::Bytes(ref b) => data.extend_from_slice(&b[..b.len().min(room)]),
            Piece::Repeat { back, len } => {
                if data.is_empty() {
                    continue;
                }
                let from = data.len() - 1 - (back as usize % data.len());
                for k in 0..(len as usize).min(room) {
                    data.push(data[from + k]);
                }
            }
            Piece::Run { byte, len } => {
                data.extend(std::iter::repeat_n(byte, (len as usize).min(room)))
            }
            Piece::Noise { seed, len } => {
                let mut s = u64::from(seed) | 1 << 40;
                for _ in 0..(len as usize).min(room) {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    data.push((s >> 24) as u8);
                }
            }
        }
    }
    data
}

/// Sorted cut points in `0..=len` from raw values, at most `max` of them.
fn cuts(raw: &[u32], len: usize, max: usize) -> Vec<usize> {
    let mut v: Vec<usize> = raw
        .iter()
        .take(max)
        .map(|&r| r as usize % (len + 1))
        .collect();
    v.sort_unstable();
    v
}

fn compress(input: &Input, data: &[u8], splits: &[usize]) -> Vec<u8> {
    let level = Compression::new(u32::from(input.level % 10));
    let flushes = cuts(&input.flushes, data.len(), 16);
    let mut gz = Vec::new();
    let mut start = 0;
    for &end in splits.iter().chain([&data.len()]) {
        let mut builder = GzBuilder::new();
        if let Some(h) = &input.header {
            let clean = |v: &[u8]| v.iter().copied().filter(|&b| b != 0).take(300).collect::<Vec<_>>();
            builder = builder
                .filename(clean(&h.name))
                .comment(clean(&h.comment))
                .extra(h.extra.iter().copied().take(300).collect::<Vec<_>>());
        }
        let mut enc = builder.write(Vec::new(), level);
        let mut at = start;
        for &f in flushes.iter().filter(|&&f| f > start && f < end) {
            enc.write_all(&data[at..f]).unwrap();
            enc.flush().unwrap();
            at = f;
        }
        enc.write_all(&data[at..end]).unwrap();
        gz.extend_from_slice(&enc.finish().unwrap());
        start = end;
    }
    if input.padding & 0x80 != 0 {
        gz.resize(gz.len() + (input.padding & 0x1f) as usize, 0);
    }
    gz
}

struct Trickle<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Read `[offset, offset + len)` through `index` and compare with the original data.
fn check_read(index: &Index, gz: &[u8], data: &[u8], offset: u64, len: usize) {
    let ex = Extractor::new(index, gz);
    let mut buf = vec![0u8; len];
    let n = ex
        .read_at(offset, &mut buf)
        .unwrap_or_else(|e| panic!("read_at({offset}, {len}) failed: {e}"));
    let o = (offset as usize).min(data.len());
    let end = (o + len).min(data.len());
    assert_eq!(n, end - o, "read_at({offset}, {len}) returned {n} bytes");
    if buf[..n] != data[o..end] {
        let first = (0..n).find(|&k| buf[k] != data[o + k]).unwrap();
        panic!(
            "read_at({offset}, {len}): wrong byte at uncompressed offset {}",
            offset + first as u64
        );
    }
}

fuzz_target!(|input: Input| {
    let data = make_data(&input.pieces);
    // 1..=4 members, as many as there are cut points for.
    let splits = cuts(&input.splits, data.len(), input.members as usize % 4);
    let members = splits.len() + 1;
    let gz = compress(&input, &data, &splits);
    let raw = input.span & 0x00ff_ffff;
    let span = 1 + (u64::from(raw) >> (input.span >> 24) % 24);

    let index = IndexBuilder::new()
        .span(span)
        .build(&gz[..])
        .unwrap_or_else(|e| panic!("valid gzip rejected: {e}"));
    assert_eq!(index.uncompressed_size, data.len() as u64);
    assert_eq!(index.compressed_size, gz.len() as u64);
    assert_eq!(index.members, members as u64);
    assert_eq!(index.checkpoints[0].out, 0);
    for w in index.checkpoints.windows(2) {
        assert!(w[0].out < w[1].out && w[0].input <= w[1].input && w[0].member <= w[1].member);
    }
    for c in &index.checkpoints {
        assert!(c.window_len as usize <= WINDOW_SIZE && c.bits <= 7);
        // The checkpoint lies within (or at an end of) the member it names.
        let m = c.member as usize;
        let start = if m == 0 { 0 } else { splits[m - 1] };
        let end = splits.get(m).copied().unwrap_or(data.len());
        assert!(
            (start..=end).contains(&(c.out as usize)),
            "checkpoint at {} names member {m}, which spans {start}..{end}",
            c.out
        );
    }
    // Chunks decoded on a second core change nothing.
    let chunk = 1024 + u64::from(input.read_chunk) * 4;
    let speculative = IndexBuilder::new()
        .span(span)
        .speculate(chunk)
        .build(&gz[..])
        .unwrap_or_else(|e| panic!("valid gzip rejected with speculative chunks: {e}"));
    assert_eq!(speculative, index, "speculative index differs");
    let decoded = zidx::decode(&zidx::encode(&index)).expect("encoded index rejected");
    assert_eq!(decoded, index, "zidx round trip changed the index");

    // Random ranges, some past the end.
    let size = data.len() as u64;
    for &(off, len) in input.reads.iter().take(24) {
        let offset = if off & 0x8000_0000 != 0 {
            size + u64::from(off & 0xff)
        } else {
            u64::from(off) % (size + 1)
        };
        let len = 1 + len as usize % (160 << 10);
        check_read(&index, &gz, &data, offset, len);
    }
    // Every checkpoint, and across it.
    for (i, c) in index.checkpoints.iter().enumerate().take(512) {
        check_read(&index, &gz, &data, c.out, 1 + (i * 13 + c.out as usize) % 64);
        if c.out > 0 {
            check_read(&index, &gz, &data, c.out - 1, 2);
        }
    }
    // Across every member boundary.
    for &s in &splits {
        check_read(&index, &gz, &data, (s as u64).saturating_sub(40), 80);
    }

    // Built from short reads: the same checkpoints, and still correct windows.
    let chunk = (1 + input.read_chunk as usize % 4096).max(gz.len() / 2048);
    let trickled = IndexBuilder::new()
        .span(span)
        .build(Trickle { data: &gz, chunk })
        .unwrap_or_else(|e| panic!("valid gzip in {chunk}-byte reads rejected: {e}"));
    let pos = |i: &Index| -> Vec<_> {
        i.checkpoints.iter().map(|c| (c.out, c.input, c.bits, c.member)).collect()
    };
    assert_eq!(pos(&trickled), pos(&index), "{chunk}-byte reads moved checkpoints");
    for (i, c) in trickled.checkpoints.iter().enumerate().take(512) {
        check_read(&trickled, &gz, &data, c.out, 1 + (i * 29) % 300);
    }

    // With member checkpoints: every member with data starts at a checkpoint and has its end;
    // the bytes up to an end hold all of the member's data, whatever the reads were.
    let by_member = IndexBuilder::new()
        .span(span)
        .member_checkpoints(true)
        .build(Trickle { data: &gz, chunk })
        .unwrap_or_else(|e| panic!("valid gzip rejected with member checkpoints: {e}"));
    let mut bounds: Vec<usize> = splits.clone();
    bounds.push(data.len());
    bounds.dedup();
    let ends: Vec<u64> = by_member.member_ends.iter().map(|m| m.out).collect();
    let want: Vec<u64> = bounds.iter().filter(|&&b| b > 0).map(|&b| b as u64).collect();
    assert_eq!(ends, want, "member ends");
    for m in &by_member.member_ends {
        assert!(m.input <= gz.len() as u64);
        if (m.out as usize) < data.len() {
            assert!(by_member.checkpoints.iter().any(|c| c.out == m.out), "no checkpoint at {}", m.out);
        }
        let ci = by_member.checkpoint_for(m.out - 1);
        let c = &by_member.checkpoints[ci];
        assert!(c.input <= m.input, "member end {} before its last checkpoint", m.out);
        check_read(&by_member, &gz, &data, c.out, (m.out - c.out) as usize);
    }
});
