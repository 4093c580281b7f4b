//! Decoding from a restart point held in memory: the compressed bytes of a range are already
//! fetched, and the state to restart from comes from elsewhere (a Nydus zran context, or the
//! start of an eStargz gzip member). Used by the blob layer, which fetches ranges itself so that
//! it can coalesce them.

use super::GzipError;
use super::header;
use super::inflate::{InflateError, RawInflate};

/// Where decoding restarts: the partial byte before the first whole byte, and the history.
#[derive(Debug, Clone, Copy)]
pub struct Restart<'a> {
    /// How many high bits of `prev_byte` start the deflate block, 0..=7.
    pub bits: u8,
    /// The compressed byte before `input[0]`, used when `bits > 0`.
    pub prev_byte: u8,
    /// Up to 32 KiB of output preceding the restart point (empty at a member start).
    pub dict: &'a [u8],
}

/// Decode exactly `out.len()` bytes from `input`, which starts at compressed offset `at` with
/// the raw deflate data of a block described by `restart`. Gzip member boundaries inside the
/// input are crossed (trailer skipped, next header parsed). Errors name compressed offsets.
pub fn inflate_from(restart: &Restart<'_>, input: &[u8], at: u64, out: &mut [u8]) -> Result<(), GzipError> {
    let err =
        |offset: u64| move |e: InflateError| GzipError::Deflate { member: 0, offset, message: e.message };
    let mut inf = RawInflate::new().map_err(err(at))?;
    if restart.bits > 0 {
        inf.prime(restart.bits, restart.prev_byte).map_err(err(at))?;
    }
    if !restart.dict.is_empty() {
        inf.set_dictionary(restart.dict).map_err(err(at))?;
    }
    run(&mut inf, input, at, out)
}

/// Decode one whole gzip member (header included) at the start of `input` into `out`, which
/// must be exactly the member's uncompressed size (or a prefix of it).
pub fn inflate_member(input: &[u8], at: u64, out: &mut [u8]) -> Result<(), GzipError> {
    let len = match header::parse(input) {
        Ok(Some(n)) => n,
        Ok(None) => return Err(GzipError::Truncated { member: 0, offset: at + input.len() as u64 }),
        Err(reason) => return Err(GzipError::Header { member: 0, offset: at, reason }),
    };
    let err = |e: InflateError| GzipError::Deflate { member: 0, offset: at, message: e.message };
    let mut inf = RawInflate::new().map_err(err)?;
    run(&mut inf, &input[len..], at + len as u64, out)
}

fn run(inf: &mut RawInflate, input: &[u8], at: u64, out: &mut [u8]) -> Result<(), GzipError> {
    let mut pos = 0usize;
    let mut filled = 0usize;
    let mut member = 0u64;
    let mut stalls = 0;
    while filled < out.len() {
        let offset = at + pos as u64;
        if pos >= input.len() {
            return Err(GzipError::Truncated { member, offset });
        }
        let step = inf.inflate(&input[pos..], &mut out[filled..], false).map_err(|e| GzipError::Deflate {
            member,
            offset,
            message: e.message,
        })?;
        pos += step.consumed;
        filled += step.produced;
        if step.stream_end {
            if filled == out.len() {
                break;
            }
            // Trailer, then the next member's header.
            pos = pos.saturating_add(8);
            member += 1;
            let rest = input.get(pos..).unwrap_or(&[]);
            let offset = at + pos as u64;
            match header::parse(rest) {
                Ok(Some(n)) => pos += n,
                Ok(None) => return Err(GzipError::Truncated { member, offset }),
                Err(reason) => return Err(GzipError::Header { member, offset, reason }),
            }
            inf.reset().map_err(|e| GzipError::Deflate { member, offset, message: e.message })?;
            continue;
        }
        if step.consumed == 0 && step.produced == 0 {
            stalls += 1;
            if stalls > 3 {
                return Err(GzipError::Stalled { offset: at + pos as u64 });
            }
        } else {
            stalls = 0;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gzip::IndexBuilder;
    use std::io::Write;

    /// Two gzip members, so that decoding must cross a boundary.
    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for part in [&data[..data.len() / 2], &data[data.len() / 2..]] {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            e.write_all(part).unwrap();
            out.extend(e.finish().unwrap());
        }
        out
    }

    #[test]
    fn every_checkpoint_restarts_and_members_are_crossed() {
        let mut data = Vec::new();
        for i in 0..400_000u32 {
            data.extend_from_slice(format!("{} ", i.wrapping_mul(2_654_435_761) % 1000).as_bytes());
        }
        let gz = gzip(&data);
        let index = IndexBuilder::new().span(64 << 10).build(&gz[..]).unwrap();
        assert!(index.checkpoints.len() > 4);
        for (i, cp) in index.checkpoints.iter().enumerate() {
            let first = cp.input as usize;
            let window = cp.window_bytes(i).unwrap();
            let prev_byte = if cp.bits > 0 { gz[first - 1] } else { 0 };
            assert_eq!(prev_byte, cp.prev_byte);
            let restart = Restart { bits: cp.bits, prev_byte, dict: &window };
            let len = (data.len() - cp.out as usize).min(300_000);
            let mut out = vec![0; len];
            inflate_from(&restart, &gz[first..], first as u64, &mut out).unwrap();
            assert_eq!(out, &data[cp.out as usize..cp.out as usize + len], "checkpoint {i}");
            // Input cut short: an error, not a panic or a short read.
            let cut = &gz[first..first + (gz.len() - first).min(100)];
            assert!(len < 1000 || inflate_from(&restart, cut, first as u64, &mut out).is_err());
        }
        let half = data.len() / 2;
        let mut out = vec![0; half];
        inflate_member(&gz, 0, &mut out).unwrap();
        assert_eq!(out, data[..half]);
        assert!(inflate_member(&gz[..100], 0, &mut out).is_err());
        assert!(inflate_member(b"not gzip at all", 0, &mut out).is_err());
    }
}
