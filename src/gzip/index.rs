//! The in-memory seek index: checkpoints in stream order, and lookups over them.

use super::GzipError;

/// Deflate's history window: back-references reach at most this far.
pub const WINDOW_SIZE: usize = 32 * 1024;

/// A place where decoding can restart: the start of a deflate block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Uncompressed offset of the first byte the block produces.
    pub out: u64,
    /// Compressed offset of the first byte wholly inside the block.
    pub input: u64,
    /// How many bits of byte `input - 1` (its high bits) belong to the block, 0..=7.
    pub bits: u8,
    /// The value of byte `input - 1` when `bits > 0` (its high `bits` bits start the block),
    /// else 0. Kept so a checkpoint can be handed to a decoder (a Nydus zran context) without
    /// the compressed stream at hand.
    pub prev_byte: u8,
    /// The gzip member the block belongs to, counted from 0.
    pub member: u64,
    /// Length of the window: the output that precedes `out` in the same member, at most 32 KiB,
    /// cut to what the data after the checkpoint references (bytes it does not reference may
    /// be zero). Zero at the start of a member, where nothing before can be referenced.
    pub window_len: u32,
    /// The window, compressed as one zstd frame (empty when `window_len` is 0).
    pub window: Vec<u8>,
}

impl Checkpoint {
    /// The bit offset of the block start in the compressed stream (None past 2^64 bits, which
    /// only a forged index can claim).
    pub fn bit_offset(&self) -> Option<u64> {
        self.input.checked_mul(8).map(|b| b - u64::from(self.bits))
    }

    /// Decompress the window.
    pub fn window_bytes(&self, index: usize) -> Result<Vec<u8>, GzipError> {
        if self.window_len == 0 {
            return Ok(Vec::new());
        }
        let raw = zstd::bulk::decompress(&self.window, self.window_len as usize)
            .map_err(|e| GzipError::Window { checkpoint: index, message: e.to_string() })?;
        if raw.len() != self.window_len as usize {
            return Err(GzipError::Window {
                checkpoint: index,
                message: format!("{} bytes, expected {}", raw.len(), self.window_len),
            });
        }
        Ok(raw)
    }
}

/// A seek index over one gzip stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    /// Size of the gzip stream in bytes.
    pub compressed_size: u64,
    /// Size of all members' data together.
    pub uncompressed_size: u64,
    /// The spacing policy the index was built with, in uncompressed bytes.
    pub span: u64,
    /// Number of gzip members.
    pub members: u64,
    /// The last 8 bytes of the stream (the final member's CRC32 and ISIZE): a cheap check that
    /// an index belongs to a file.
    pub tail: [u8; 8],
    /// Checkpoints by increasing offset; the first is at offset 0.
    pub checkpoints: Vec<Checkpoint>,
    /// Where each member with data ends, by increasing offset, when the index was built with
    /// [`IndexBuilder::member_checkpoints`](super::IndexBuilder::member_checkpoints) (else
    /// empty). Kept in memory only: `.zidx` does not store it.
    pub member_ends: Vec<MemberEnd>,
}

/// The end of a gzip member's data, as a decoder given the compressed bytes up to some offset
/// sees it. Inflate goes on decoding past the last byte it was asked for while the bits it has
/// allow: past the end of a member, it reports the end of the stream, which a decoder that
/// cannot go on into the next member (Nydus before 2.3) takes as an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberEnd {
    /// Uncompressed offset just past the member's last byte.
    pub out: u64,
    /// Compressed offset just past the last byte that holds bits of the code yielding the
    /// member's last byte: decoding the compressed bytes up to here yields all of its data.
    pub input: u64,
    /// Decoding the compressed bytes up to `input` does not also reach the end of the deflate
    /// stream (the end-of-block code is not already in the last byte, and the final block is
    /// not a stored one). False also where that could not be worked out; `input` is then the
    /// end of the member's deflate data.
    pub clean: bool,
}

impl Index {
    /// The index of the checkpoint to start from to reach uncompressed `offset`.
    pub fn checkpoint_for(&self, offset: u64) -> usize {
        self.checkpoints.partition_point(|c| c.out <= offset).saturating_sub(1)
    }

    /// A compressed offset past every byte needed to decode up to uncompressed `end`: the
    /// start of the first checkpoint at or after `end`, or the end of the stream.
    pub fn input_end_for(&self, end: u64) -> u64 {
        let i = self.checkpoints.partition_point(|c| c.out < end);
        match self.checkpoints.get(i) {
            Some(c) => c.input.min(self.compressed_size),
            None => self.compressed_size,
        }
    }

    /// The compressed bytes `[start, end)` that reading uncompressed `[offset, offset+len)`
    /// touches, checkpoint to checkpoint.
    pub fn input_range_for(&self, offset: u64, len: u64) -> (u64, u64) {
        let cp = &self.checkpoints[self.checkpoint_for(offset)];
        let start = cp.input - u64::from(cp.bits > 0);
        (start, self.input_end_for(offset.saturating_add(len)).max(start))
    }

    /// The end of the member whose data ends at uncompressed `end`, if it was worked out.
    pub fn member_end_at(&self, end: u64) -> Option<&MemberEnd> {
        let i = self.member_ends.partition_point(|m| m.out < end);
        self.member_ends.get(i).filter(|m| m.out == end)
    }

    /// Bytes taken by the compressed windows.
    pub fn window_bytes(&self) -> u64 {
        self.checkpoints.iter().map(|c| c.window.len() as u64).sum()
    }
}
