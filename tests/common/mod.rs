//! Test helpers: gzip streams made exactly as a test wants them (levels, strategies, flush
//! points, header fields, member splits), and reference decompression.
#![allow(dead_code)]

use std::io::Read;
use zlib_rs::{DeflateConfig, DeflateFlush, Strategy};

/// Header fields to set (RFC 1952 FLG bits).
pub const FTEXT: u8 = 1;
pub const FHCRC: u8 = 2;
pub const FEXTRA: u8 = 4;
pub const FNAME: u8 = 8;
pub const FCOMMENT: u8 = 16;

#[derive(Debug, Clone)]
pub struct Member {
    pub level: i32,
    pub strategy: Strategy,
    pub flags: u8,
    /// Uncompressed offsets (within the member) where the compressor flushes, and how.
    pub flushes: Vec<(usize, DeflateFlush)>,
}

impl Default for Member {
    fn default() -> Self {
        Member { level: 6, strategy: Strategy::Default, flags: 0, flushes: Vec::new() }
    }
}

pub fn strategy(i: u8) -> Strategy {
    match i % 5 {
        0 => Strategy::Default,
        1 => Strategy::Filtered,
        2 => Strategy::HuffmanOnly,
        3 => Strategy::Rle,
        _ => Strategy::Fixed,
    }
}

pub fn flush_kind(i: u8) -> DeflateFlush {
    match i % 3 {
        0 => DeflateFlush::PartialFlush,
        1 => DeflateFlush::SyncFlush,
        _ => DeflateFlush::FullFlush,
    }
}

/// Raw deflate of `data` with the member's settings.
pub fn deflate_raw(data: &[u8], m: &Member) -> Vec<u8> {
    let config =
        DeflateConfig { level: m.level, window_bits: -15, strategy: m.strategy, ..Default::default() };
    let mut d = zlib_rs::Deflate::new_with_config(config);
    let mut out = vec![0u8; zlib_rs::compress_bound(data.len()) * 2 + 64 * (m.flushes.len() + 1)];
    let mut cuts: Vec<(usize, DeflateFlush)> =
        m.flushes.iter().copied().filter(|&(at, _)| at <= data.len()).collect();
    cuts.sort_by_key(|c| c.0);
    cuts.push((data.len(), DeflateFlush::Finish));
    let mut start = 0;
    for (end, flush) in cuts {
        let mut piece = &data[start..end];
        loop {
            let (before_in, before_out) = (d.total_in(), d.total_out());
            let status = d.compress(piece, &mut out[before_out as usize..], flush).expect("deflate");
            piece = &piece[(d.total_in() - before_in) as usize..];
            let progressed = d.total_out() != before_out || d.total_in() != before_in;
            let done = match flush {
                DeflateFlush::Finish => status == zlib_rs::Status::StreamEnd,
                _ => piece.is_empty() && !progressed,
            };
            if done {
                break;
            }
        }
        start = end;
    }
    out.truncate(d.total_out() as usize);
    out
}

/// A gzip member header with the given flags (every optional field filled in).
pub fn header(flags: u8) -> Vec<u8> {
    let mut h = vec![0x1f, 0x8b, 8, flags, 0x78, 0x56, 0x34, 0x12, 0, 3];
    if flags & FEXTRA != 0 {
        h.extend_from_slice(&[6, 0, b'Z', b'R', 2, 0, 0xab, 0xcd]);
    }
    if flags & FNAME != 0 {
        h.extend_from_slice(b"name.tar\0");
    }
    if flags & FCOMMENT != 0 {
        h.extend_from_slice(b"a comment\0");
    }
    if flags & FHCRC != 0 {
        let crc = (crc32fast::hash(&h) & 0xffff) as u16;
        h.extend_from_slice(&crc.to_le_bytes());
    }
    h
}

/// One complete gzip member.
pub fn gzip_member(data: &[u8], m: &Member) -> Vec<u8> {
    let mut out = header(m.flags);
    out.extend_from_slice(&deflate_raw(data, m));
    out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// `data` split at `splits` into members made with `members[i % len]`.
pub fn gzip_members(data: &[u8], splits: &[usize], members: &[Member]) -> Vec<u8> {
    let mut cuts: Vec<usize> = splits.iter().map(|&s| s.min(data.len())).collect();
    cuts.sort_unstable();
    cuts.push(data.len());
    let mut out = Vec::new();
    let mut start = 0;
    for (i, end) in cuts.into_iter().enumerate() {
        out.extend_from_slice(&gzip_member(&data[start..end], &members[i % members.len()]));
        start = end;
    }
    out
}

/// Reference decompression of every member.
pub fn gunzip(gz: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(gz).read_to_end(&mut out).expect("reference gunzip");
    out
}

/// Deterministic data that compresses like real files: text, runs, noise and long repeats
/// (so that back-references cross checkpoints).
pub fn sample_data(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let words: [&[u8]; 8] =
        [b"layer ", b"chunk ", b"gzip ", b"\n", b"window ", b"0123456789", b"zran ", b"\t"];
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let r = next();
        match r % 4 {
            0 => {
                for _ in 0..(r >> 8) % 200 {
                    out.extend_from_slice(words[(next() % 8) as usize]);
                }
            }
            1 => out.extend(std::iter::repeat_n((r >> 16) as u8, ((r >> 24) % 3000) as usize)),
            2 => {
                for _ in 0..(r >> 8) % 2000 {
                    out.push(next() as u8);
                }
            }
            _ if out.len() > 1000 => {
                let n = ((r >> 8) % 5000) as usize;
                let from = ((r >> 24) as usize) % (out.len() - 1);
                for i in 0..n {
                    let b = out[from + i % (out.len() - from)];
                    out.push(b);
                }
            }
            _ => {}
        }
    }
    out.truncate(len);
    out
}

/// A raw deflate stream that no zlib writes: a stored block of 32 KiB of noise, then `blocks`
/// fixed-Huffman blocks of `matches` copies each at distance 32768, the farthest deflate allows
/// (zlib itself never reaches past 32506). Returns (raw deflate, decompressed data).
pub fn far_match_deflate(blocks: usize, matches: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        n: u32,
    }
    impl Bits {
        fn put(&mut self, value: u32, n: u32) {
            self.acc |= u64::from(value) << self.n;
            self.n += n;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }
        /// Huffman codes go most significant bit first.
        fn code(&mut self, code: u32, len: u32) {
            let rev = code.reverse_bits() >> (32 - len);
            self.put(rev, len);
        }
        fn align(&mut self) {
            if self.n > 0 {
                self.put(0, 8 - self.n);
            }
        }
    }
    let noise: Vec<u8> = sample_data(200_000, seed).into_iter().skip(100_000).take(32768).collect();
    let mut noise = noise;
    noise.resize(32768, 0xa5);
    let mut w = Bits { out: Vec::new(), acc: 0, n: 0 };
    // Stored blocks hold at most 65535 bytes: one block of 32768, not final.
    w.put(0, 1);
    w.put(0, 2);
    w.align();
    w.put(32768, 16);
    w.put(!32768u32 & 0xffff, 16);
    w.out.extend_from_slice(&noise);
    let mut data = noise.clone();
    for _ in 0..blocks {
        w.put(0, 1); // not final
        w.put(1, 2); // fixed Huffman
        for _ in 0..matches {
            w.code(0b1100_0101, 8); // length code 285: 258 bytes
            w.code(29, 5); // distance code 29: 24577 + 13 extra bits
            w.put(8191, 13); // distance 32768
            for _ in 0..258 {
                let b = data[data.len() - 32768];
                data.push(b);
            }
        }
        w.code(0, 7); // end of block (256)
    }
    // A final empty fixed block.
    w.put(1, 1);
    w.put(1, 2);
    w.code(0, 7);
    w.align();
    (w.out, data)
}

pub mod containerd;
pub mod faulty;
pub mod harness;
pub mod toc_model;
pub mod truth;

/// Wrap raw deflate into a gzip member.
pub fn gzip_wrap(raw: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = header(0);
    out.extend_from_slice(raw);
    out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}
