//! Sparse windows: which bytes of a checkpoint's 32 KiB window the data after it references.
//!
//! A checkpoint stores the 32 KiB of output before it because deflate back-references may reach
//! that far; in practice the first 32 KiB after a checkpoint refer back to only part of it. This
//! module decodes the deflate symbols that follow a checkpoint (lengths and distances only; it
//! produces no output) until no reference can reach back any more, and marks the window bytes
//! that were referenced. The others can be zeroed, and a window that is mostly zeros compresses
//! to little. The builder then proves the sparse window right by inflating with it and comparing
//! with the real output, so a mistake here costs index size, never correctness.
//!
//! zlib has no interface that reports symbols, and no crate we know exposes deflate symbols from
//! an arbitrary bit offset, hence this small decoder (canonical Huffman codes decoded bit by bit,
//! as RFC 1951 describes them; slow but small, and it only ever reads about 32 KiB of output's
//! worth of symbols per checkpoint).

use super::index::WINDOW_SIZE;

/// Marks, for each of the `window_len` window bytes, whether the deflate data starting at bit
/// `start_bit` of `input` references it before the output is 32 KiB past the checkpoint (or
/// the stream's final block ends). `None` when the data is invalid or ends too soon: the caller
/// then keeps the whole window.
pub(crate) fn referenced(input: &[u8], start_bit: u8, window_len: usize) -> Option<Vec<bool>> {
    let mut marks = vec![false; window_len];
    let mut br = Bits { data: input, pos: usize::from(start_bit) };
    let mut out: usize = 0;
    let fixed = Tables::fixed()?;
    loop {
        let last = br.bits(1)? == 1;
        match br.bits(2)? {
            0 => {
                br.align();
                let len = br.bits(16)?;
                let nlen = br.bits(16)?;
                if len != !nlen & 0xffff {
                    return None;
                }
                br.skip_bytes(len as usize)?;
                out += len as usize;
            }
            1 => codes(&mut br, &fixed, &mut marks, &mut out)?,
            2 => {
                let dynamic = Tables::dynamic(&mut br)?;
                codes(&mut br, &dynamic, &mut marks, &mut out)?
            }
            _ => return None,
        }
        if last || out >= WINDOW_SIZE {
            return Some(marks);
        }
    }
}

/// Decode one block's symbols, marking window references. Stops early once past 32 KiB.
fn codes(br: &mut Bits<'_>, t: &Tables, marks: &mut [bool], out: &mut usize) -> Option<()> {
    const LEN_BASE: [u16; 29] = [
        3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163,
        195, 227, 258,
    ];
    const LEN_EXTRA: [u8; 29] =
        [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
    const DIST_BASE: [u16; 30] = [
        1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049,
        3073, 4097, 6145, 8193, 12289, 16385, 24577,
    ];
    const DIST_EXTRA: [u8; 30] =
        [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13];
    loop {
        let sym = t.lit.decode(br)? as usize;
        if sym < 256 {
            *out += 1;
        } else if sym == 256 {
            return Some(());
        } else {
            let i = sym - 257;
            let len = *LEN_BASE.get(i)? as usize + br.bits(*LEN_EXTRA.get(i)?)? as usize;
            let d = t.dist.decode(br)? as usize;
            let dist = *DIST_BASE.get(d)? as usize + br.bits(*DIST_EXTRA.get(d)?)? as usize;
            if dist > *out {
                // The copy starts `dist - out` bytes before the checkpoint.
                let back = dist - *out;
                if back > marks.len() {
                    return None; // reaches past the history there is
                }
                let first = marks.len() - back;
                let n = len.min(back);
                marks[first..first + n].iter_mut().for_each(|m| *m = true);
            }
            *out += len;
        }
        if *out >= WINDOW_SIZE {
            return Some(());
        }
    }
}

/// LSB-first bit reader.
struct Bits<'a> {
    data: &'a [u8],
    /// Bit position.
    pos: usize,
}

impl Bits<'_> {
    fn bits(&mut self, n: u8) -> Option<u32> {
        let mut v = 0u32;
        for i in 0..u32::from(n) {
            let byte = *self.data.get(self.pos / 8)?;
            v |= u32::from((byte >> (self.pos % 8)) & 1) << i;
            self.pos += 1;
        }
        Some(v)
    }

    fn align(&mut self) {
        self.pos = self.pos.div_ceil(8) * 8;
    }

    fn skip_bytes(&mut self, n: usize) -> Option<()> {
        let end = self.pos / 8 + n;
        if end > self.data.len() {
            return None;
        }
        self.pos = end * 8;
        Some(())
    }
}

/// A canonical Huffman code: how many codes of each length, and the symbols in code order.
struct Huffman {
    count: [u16; 16],
    symbol: Vec<u16>,
}

impl Huffman {
    fn new(lengths: &[u8]) -> Option<Huffman> {
        let mut count = [0u16; 16];
        for &l in lengths {
            count[usize::from(l)] += 1;
        }
        // Over-subscribed codes are invalid; incomplete ones are allowed (a single distance
        // code is common), and decoding a missing code fails.
        let mut left: i32 = 1;
        for &c in &count[1..] {
            left = left * 2 - i32::from(c);
            if left < 0 {
                return None;
            }
        }
        let mut offs = [0u16; 16];
        for len in 1..15 {
            offs[len + 1] = offs[len] + count[len];
        }
        let mut symbol = vec![0u16; lengths.len()];
        for (sym, &l) in lengths.iter().enumerate() {
            if l != 0 {
                symbol[usize::from(offs[usize::from(l)])] = sym as u16;
                offs[usize::from(l)] += 1;
            }
        }
        count[0] = 0;
        Some(Huffman { count, symbol })
    }

    fn decode(&self, br: &mut Bits<'_>) -> Option<u16> {
        let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
        for len in 1..16 {
            code |= br.bits(1)? as i32;
            let count = i32::from(self.count[len]);
            if code - first < count {
                return self.symbol.get((index + code - first) as usize).copied();
            }
            index += count;
            first = (first + count) << 1;
            code <<= 1;
        }
        None
    }
}

struct Tables {
    lit: Huffman,
    dist: Huffman,
}

impl Tables {
    fn fixed() -> Option<Tables> {
        let mut lit = [0u8; 288];
        lit[..144].fill(8);
        lit[144..256].fill(9);
        lit[256..280].fill(7);
        lit[280..].fill(8);
        Some(Tables { lit: Huffman::new(&lit)?, dist: Huffman::new(&[5; 30])? })
    }

    fn dynamic(br: &mut Bits<'_>) -> Option<Tables> {
        const ORDER: [usize; 19] = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];
        let nlen = br.bits(5)? as usize + 257;
        let ndist = br.bits(5)? as usize + 1;
        let ncode = br.bits(4)? as usize + 4;
        if nlen > 286 || ndist > 30 {
            return None;
        }
        let mut cl = [0u8; 19];
        for &i in &ORDER[..ncode] {
            cl[i] = br.bits(3)? as u8;
        }
        let clcode = Huffman::new(&cl)?;
        let mut lengths = vec![0u8; nlen + ndist];
        let mut i = 0;
        while i < nlen + ndist {
            let sym = clcode.decode(br)?;
            let (value, repeat) = match sym {
                0..=15 => (sym as u8, 1),
                16 => (*lengths.get(i.checked_sub(1)?)?, 3 + br.bits(2)? as usize),
                17 => (0, 3 + br.bits(3)? as usize),
                18 => (0, 11 + br.bits(7)? as usize),
                _ => return None,
            };
            if i + repeat > lengths.len() {
                return None;
            }
            lengths[i..i + repeat].fill(value);
            i += repeat;
        }
        if lengths[256] == 0 {
            return None; // no end-of-block code
        }
        Some(Tables { lit: Huffman::new(&lengths[..nlen])?, dist: Huffman::new(&lengths[nlen..])? })
    }
}

/// Zero the window bytes nobody references, and drop the unreferenced prefix. Returns the
/// sparse window (possibly empty).
pub(crate) fn sparsify(window: &[u8], marks: &[bool]) -> Vec<u8> {
    let Some(first) = marks.iter().position(|&m| m) else {
        return Vec::new();
    };
    window[first..].iter().zip(&marks[first..]).map(|(&b, &m)| if m { b } else { 0 }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_block_references_nothing() {
        // Final stored block with "abc".
        let raw = [0x01, 0x03, 0x00, 0xfc, 0xff, b'a', b'b', b'c'];
        let marks = referenced(&raw, 0, 100).unwrap();
        assert!(marks.iter().all(|&m| !m));
    }

    #[test]
    fn fixed_block_match_marks_its_source() {
        // Fixed block, final: one match length 3 distance 5, then end of block.
        // bits: BFINAL=1, BTYPE=01, code 257 (7 bits 0000001), dist code 4 (5 bits 00100, +1
        // extra bit 0 -> distance 5), code 256 (0000000).
        let mut bits: Vec<u8> = vec![1, 1, 0];
        bits.extend([0, 0, 0, 0, 0, 0, 1]);
        bits.extend([0, 0, 1, 0, 0]);
        bits.push(0);
        bits.extend([0; 7]);
        let mut raw = vec![0u8; bits.len().div_ceil(8)];
        for (i, b) in bits.iter().enumerate() {
            raw[i / 8] |= b << (i % 8);
        }
        let marks = referenced(&raw, 0, 10).unwrap();
        let set: Vec<usize> = (0..10).filter(|&i| marks[i]).collect();
        assert_eq!(set, vec![5, 6, 7]);
        assert_eq!(sparsify(b"0123456789", &marks), b"567\0\0");
    }

    #[test]
    fn invalid_data_gives_none() {
        assert!(referenced(&[0x07], 0, 10).is_none()); // reserved block type
        assert!(referenced(&[], 0, 10).is_none());
    }
}
