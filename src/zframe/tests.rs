use super::*;
use crate::gzip::NullSink;
use proptest::prelude::*;

/// `parts` compressed one frame each (level 1, with content checksums), concatenated.
fn frames_of(parts: &[&[u8]]) -> (Vec<u8>, Vec<Frame>) {
    let mut z = Vec::new();
    let mut starts = Vec::new();
    let mut out = 0u64;
    for p in parts {
        starts.push(Frame { input: z.len() as u64, out });
        let mut e = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
        e.include_checksum(true).unwrap();
        std::io::Write::write_all(&mut e, p).unwrap();
        z.extend(e.finish().unwrap());
        out += p.len() as u64;
    }
    (z, starts)
}

fn skippable(payload: &[u8]) -> Vec<u8> {
    let mut s = (SKIPPABLE_MAGIC | 0xa).to_le_bytes().to_vec();
    s.extend((payload.len() as u32).to_le_bytes());
    s.extend(payload);
    s
}

fn data(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32).map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8 % 17).collect()
}

/// A sink that keeps everything and requests the given offsets.
struct Keep {
    bytes: Vec<u8>,
    ask: Vec<u64>,
}

impl Sink for Keep {
    fn data(
        &mut self,
        at: u64,
        bytes: &[u8],
        requests: &mut Requests,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        assert_eq!(at, self.bytes.len() as u64);
        self.bytes.extend_from_slice(bytes);
        for a in self.ask.drain(..) {
            requests.request(a);
        }
        Ok(())
    }
}

#[test]
fn every_frame_boundary_is_recorded_and_skippable_frames_skipped() {
    let (a, b, c) = (data(300_000, 1), data(5, 2), data(700_000, 3));
    let (z1, _) = frames_of(&[&a]);
    let (z2, _) = frames_of(&[&b, &c]);
    let mut z = skippable(b"toc");
    let first = z.len() as u64;
    z.extend(&z1);
    z.extend(skippable(&[7u8; 1000]));
    let second = z.len() as u64;
    z.extend(&z2);
    let third = second + frames_of(&[&b]).0.len() as u64;
    z.extend(skippable(b"footer"));
    let mut keep = Keep { bytes: Vec::new(), ask: vec![300_003] };
    let fi = index_stream(&z[..], 1 << 40, &mut keep).unwrap();
    assert_eq!(
        fi.frames,
        vec![
            Frame { input: first, out: 0 },
            Frame { input: second, out: 300_000 },
            Frame { input: third, out: 300_005 }
        ]
    );
    assert_eq!(fi.skippable, 3);
    assert_eq!(fi.checksummed, 3);
    assert_eq!(fi.largest_frame, 700_000);
    let whole: Vec<u8> = [a.clone(), b.clone(), c.clone()].concat();
    assert_eq!(keep.bytes, whole);
    assert_eq!(fi.diff_id, <[u8; 32]>::from(sha2::Sha256::digest(&whole)));
    // The stream with k zero blocks after it, as the writer of the original tar padded it.
    assert_eq!(fi.padded_diff_ids.len(), MAX_PADDING_BLOCKS);
    for (k, d) in fi.padded_diff_ids.iter().enumerate() {
        let padded = [whole.clone(), vec![0u8; (k + 1) * 512]].concat();
        assert_eq!(*d, <[u8; 32]>::from(sha2::Sha256::digest(&padded)), "{} zero blocks", k + 1);
    }
    assert_eq!(fi.index.uncompressed_size, whole.len() as u64);
    assert_eq!(fi.index.compressed_size, z.len() as u64);
    // No span: the first frame, and the frame the request falls in (the second).
    let cps: Vec<(u64, u64)> = fi.index.checkpoints.iter().map(|c| (c.out, c.input)).collect();
    assert_eq!(cps, vec![(0, first), (300_000, second)]);
    assert!(fi.index.checkpoints.iter().all(|c| c.bits == 0 && c.window_len == 0));
    // A span of 1 makes every frame a checkpoint.
    let fi = index_stream(&z[..], 1, &mut NullSink).unwrap();
    assert_eq!(fi.index.checkpoints.len(), 3);
    // Decoding from a checkpoint crosses the skippable frame and the next frames.
    let mut out = vec![0u8; 300_000];
    decode_from(&z[first as usize..], first, &mut out).unwrap();
    assert_eq!(out, a);
    let mut out = vec![0u8; 400_000];
    decode_from(&z[second as usize..], second, &mut out).unwrap();
    assert_eq!(out, whole[300_000..700_000]);
    // A frame that decodes to more than the chunk wanted: only what is asked for is made.
    let mut out = vec![0u8; 10];
    decode_from(&z[first as usize..], first, &mut out).unwrap();
    assert_eq!(out, a[..10]);
    // Asking for more than the data holds is an error naming the offset.
    let mut out = vec![0u8; whole.len() + 1];
    let e = decode_from(&z[first as usize..], first, &mut out).unwrap_err();
    assert!(e.contains(&format!("offset {first}")), "{e}");
}

use sha2::Digest as _;

#[test]
fn truncated_and_corrupt_streams_are_errors_naming_the_offset() {
    let (z, _) = frames_of(&[&data(200_000, 5), &data(200_000, 6)]);
    let cut = &z[..z.len() - 10];
    let e = index_stream(cut, 1 << 20, &mut NullSink).unwrap_err();
    assert!(matches!(e, ZstdError::Truncated { .. }), "{e}");
    assert!(e.to_string().contains(&format!("ends at compressed offset {}", cut.len())), "{e}");
    // A skippable frame cut short.
    let mut s = z.clone();
    s.extend(skippable(&[1u8; 100]));
    let e = index_stream(&s[..s.len() - 1], 1 << 20, &mut NullSink).unwrap_err();
    assert!(e.to_string().contains("skippable"), "{e}");
    // Not zstd.
    let e = index_stream(&b"\x1f\x8b\x08\x00 gzip"[..], 1 << 20, &mut NullSink).unwrap_err();
    assert!(matches!(e, ZstdError::Magic { offset: 0, .. }), "{e}");
    assert!(matches!(index_stream(&[][..], 1, &mut NullSink), Err(ZstdError::Empty)));
    // A changed byte inside a checksummed frame: the frame's error names it.
    let mut bad = z.clone();
    let at = bad.len() - 20;
    bad[at] ^= 0x55;
    let e = index_stream(&bad[..], 1 << 20, &mut NullSink).unwrap_err();
    assert!(matches!(e, ZstdError::Frame { frame: 1, .. }), "{e}");
}

#[test]
fn checkpoints_keep_to_the_span_and_the_requests() {
    let frames: Vec<Frame> = (0..10).map(|i| Frame { input: i * 100, out: i * 1000 }).collect();
    let outs = |cps: Vec<Checkpoint>| cps.iter().map(|c| c.out).collect::<Vec<_>>();
    assert_eq!(outs(choose(&frames, 10_000, 3000, vec![])), vec![0, 3000, 6000, 9000]);
    assert_eq!(outs(choose(&frames, 10_000, 1 << 40, vec![4500, 4999, 100])), vec![0, 4000]);
    // Empty frames: the last one at an offset is taken; one at the end is dropped.
    let frames = vec![Frame { input: 0, out: 0 }, Frame { input: 9, out: 0 }, Frame { input: 50, out: 10 }];
    let cps = choose(&frames, 10, 1, vec![]);
    assert_eq!(cps.iter().map(|c| (c.out, c.input)).collect::<Vec<_>>(), vec![(0, 9)]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Random data cut into random frames: every boundary is indexed, and every range read
    /// through the index (from the last checkpoint at or before it) equals the data.
    #[test]
    fn every_range_through_the_index_equals_the_data(
        len in 1usize..200_000,
        cuts in proptest::collection::vec(0usize..200_000, 0..12),
        skips in proptest::collection::vec(any::<bool>(), 12),
        ranges in proptest::collection::vec((0usize..200_000, 1usize..50_000), 8),
        seed in any::<u32>(),
    ) {
        let d = data(len, seed);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % len).chain([0, len]).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut z = Vec::new();
        let mut want = Vec::new();
        for (k, w) in cuts.windows(2).enumerate() {
            if skips[k % skips.len()] {
                z.extend(skippable(&[k as u8; 3]));
            }
            want.push(Frame { input: z.len() as u64, out: w[0] as u64 });
            z.extend(frames_of(&[&d[w[0]..w[1]]]).0);
        }
        let fi = index_stream(&z[..], 1, &mut NullSink).unwrap();
        prop_assert_eq!(&fi.frames, &want);
        prop_assert_eq!(fi.index.checkpoints.len(), want.len());
        for (off, n) in ranges {
            let off = off % len;
            let n = n.min(len - off);
            let cp = &fi.index.checkpoints[fi.index.checkpoint_for(off as u64)];
            let mut out = vec![0u8; off - cp.out as usize + n];
            decode_from(&z[cp.input as usize..], cp.input, &mut out).unwrap();
            prop_assert_eq!(&out[off - cp.out as usize..], &d[off..off + n]);
        }
    }
}
