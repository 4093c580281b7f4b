//! A safe wrapper over zlib-rs's raw-deflate decoder (`libz-rs-sys`).
//!
//! This is the only file of the crate that talks to the zlib C ABI (the engine's other
//! `unsafe` blocks only set a thread's priority and advise the kernel on buffer pages). It
//! exposes exactly the calls the zran engine needs: raw inflate with `Z_BLOCK`
//! (stop at deflate block boundaries and report `data_type`), `inflateReset`, `inflatePrime`
//! (resume in the middle of a byte) and `inflateSetDictionary` (restore a 32 KiB window).

use libz_rs_sys as z;
use std::ffi::CStr;

/// Why a call into the decoder failed: zlib's own message, if it gave one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InflateError {
    pub code: i32,
    pub message: String,
}

/// What one call to [`RawInflate::inflate`] did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Step {
    /// Input bytes consumed.
    pub consumed: usize,
    /// Output bytes written.
    pub produced: usize,
    /// The deflate stream's final block has been decoded.
    pub stream_end: bool,
    /// zlib's `data_type`: unused bits in the last consumed byte (low 3 bits), +64 when the
    /// current block is the last one, +128 when stopped right after a block (or at the start).
    pub data_type: i32,
}

impl Step {
    /// Stopped exactly at a boundary between two deflate blocks, the next one not being past
    /// the end of the stream (zran.c's access-point condition).
    pub fn at_block_boundary(&self) -> bool {
        self.data_type & 0xc0 == 0x80
    }

    /// Number of bits of the last consumed byte that belong to the next block.
    pub fn unused_bits(&self) -> u8 {
        (self.data_type & 7) as u8
    }
}

/// A raw (headerless) deflate decoder.
pub(crate) struct RawInflate {
    // zlib keeps a pointer from its state back to the stream, so the stream must not move.
    strm: Box<z::z_stream>,
}

// SAFETY: the stream owns its state exclusively; nothing in it is tied to a thread.
unsafe impl Send for RawInflate {}

const RAW_WINDOW_BITS: i32 = -15;

impl RawInflate {
    pub fn new() -> Result<Self, InflateError> {
        let mut strm = Box::<z::z_stream>::default();
        // SAFETY: `strm` is a valid, default-initialised stream (null in/out pointers, default
        // allocator), and the version string comes from the library itself.
        let rc = unsafe {
            z::inflateInit2_(
                &mut *strm,
                RAW_WINDOW_BITS,
                z::zlibVersion(),
                std::mem::size_of::<z::z_stream>() as i32,
            )
        };
        let this = RawInflate { strm };
        this.check(rc)?;
        Ok(this)
    }

    /// Forget all state, ready for a new raw deflate stream.
    pub fn reset(&mut self) -> Result<(), InflateError> {
        // SAFETY: the stream was initialised by `new` and is pinned in its box.
        let rc = unsafe { z::inflateReset(&mut *self.strm) };
        self.check(rc)
    }

    /// Feed the decoder the `bits` high bits of `byte` that precede a block boundary.
    pub fn prime(&mut self, bits: u8, byte: u8) -> Result<(), InflateError> {
        if bits == 0 {
            return Ok(());
        }
        let value = i32::from(byte) >> (8 - i32::from(bits));
        // SAFETY: the stream is initialised; 1..=7 bits is within inflatePrime's contract.
        let rc = unsafe { z::inflatePrime(&mut *self.strm, i32::from(bits), value) };
        self.check(rc)
    }

    /// Set the history window (at most 32 KiB) that back-references may reach into.
    pub fn set_dictionary(&mut self, window: &[u8]) -> Result<(), InflateError> {
        if window.is_empty() {
            return Ok(());
        }
        let len = u32::try_from(window.len())
            .map_err(|_| InflateError { code: z::Z_STREAM_ERROR, message: "window too large".into() })?;
        // SAFETY: `window` is a valid slice of `len` bytes that zlib only reads during the call.
        let rc = unsafe { z::inflateSetDictionary(&mut *self.strm, window.as_ptr(), len) };
        self.check(rc)
    }

    /// Decode from `input` into `output`. With `block`, stop at the next block boundary
    /// (`Z_BLOCK`). Running out of input or output space is not an error: it shows as a step
    /// with less progress than asked for (possibly none).
    pub fn inflate(&mut self, input: &[u8], output: &mut [u8], block: bool) -> Result<Step, InflateError> {
        let avail_in = input.len().min(u32::MAX as usize) as u32;
        let avail_out = output.len().min(u32::MAX as usize) as u32;
        self.strm.next_in = input.as_ptr();
        self.strm.avail_in = avail_in;
        self.strm.next_out = output.as_mut_ptr();
        self.strm.avail_out = avail_out;
        let flush = if block { z::Z_BLOCK } else { z::Z_NO_FLUSH };
        // SAFETY: next_in/avail_in and next_out/avail_out describe live slices borrowed for the
        // duration of this call; zlib reads at most avail_in and writes at most avail_out bytes.
        let rc = unsafe { z::inflate(&mut *self.strm, flush) };
        let consumed = (avail_in - self.strm.avail_in) as usize;
        let produced = (avail_out - self.strm.avail_out) as usize;
        // Do not keep pointers to the caller's buffers past the call.
        self.strm.next_in = std::ptr::null();
        self.strm.avail_in = 0;
        self.strm.next_out = std::ptr::null_mut();
        self.strm.avail_out = 0;
        let data_type = self.strm.data_type;
        match rc {
            z::Z_OK | z::Z_BUF_ERROR => Ok(Step { consumed, produced, stream_end: false, data_type }),
            z::Z_STREAM_END => Ok(Step { consumed, produced, stream_end: true, data_type }),
            z::Z_NEED_DICT => {
                Err(InflateError { code: rc, message: "stream asks for a preset dictionary".into() })
            }
            _ => Err(self.error(rc)),
        }
    }

    fn check(&self, rc: i32) -> Result<(), InflateError> {
        if rc == z::Z_OK { Ok(()) } else { Err(self.error(rc)) }
    }

    fn error(&self, code: i32) -> InflateError {
        let message = if self.strm.msg.is_null() {
            match code {
                z::Z_DATA_ERROR => "invalid deflate data".to_string(),
                z::Z_MEM_ERROR => "out of memory".to_string(),
                z::Z_STREAM_ERROR => "inconsistent decoder state".to_string(),
                _ => format!("zlib error {code}"),
            }
        } else {
            // SAFETY: zlib sets `msg` to a static NUL-terminated string or leaves it null.
            unsafe { CStr::from_ptr(self.strm.msg) }.to_string_lossy().into_owned()
        };
        InflateError { code, message }
    }
}

impl Drop for RawInflate {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised by `new` and is not used after this.
        unsafe {
            z::inflateEnd(&mut *self.strm);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_at_block_boundaries() {
        // Two stored blocks: "ab" (not last) then "c" (last).
        let raw = [0x00, 0x02, 0x00, 0xfd, 0xff, b'a', b'b', 0x01, 0x01, 0x00, 0xfe, 0xff, b'c'];
        let mut inf = RawInflate::new().unwrap();
        let mut out = [0u8; 16];
        let mut pos = 0;
        let mut total = 0;
        let mut boundaries = vec![];
        loop {
            let step = inf.inflate(&raw[pos..], &mut out[total..], true).unwrap();
            pos += step.consumed;
            total += step.produced;
            if step.at_block_boundary() {
                boundaries.push((pos, total));
            }
            if step.stream_end {
                break;
            }
        }
        assert_eq!(&out[..total], b"abc");
        assert!(boundaries.contains(&(7, 2)), "{boundaries:?}");
    }

    #[test]
    fn bad_data_is_an_error() {
        let mut inf = RawInflate::new().unwrap();
        let mut out = [0u8; 16];
        // Block type 3 is reserved.
        let err = inf.inflate(&[0x07, 0, 0], &mut out, false).unwrap_err();
        assert_eq!(err.code, libz_rs_sys::Z_DATA_ERROR);
    }
}
