//! The zran engine against reference decompression: every extracted range must equal the same
//! slice of a full decompression, for every kind of gzip stream we can make.

mod common;

use common::*;
use proptest::prelude::*;
use zran::gzip::{Extractor, GzipError, Index, IndexBuilder, Requests, Restart, Sink, inflate_from, zidx};

/// Check `index` against `data` at every checkpoint and at the given ranges.
fn check_ranges(gz: &[u8], index: &Index, data: &[u8], ranges: &[(u64, usize)]) {
    assert_eq!(index.uncompressed_size, data.len() as u64);
    assert_eq!(index.compressed_size, gz.len() as u64);
    assert_eq!(index.checkpoints[0].out, 0);
    let ex = Extractor::new(index, gz);
    for c in &index.checkpoints {
        let prev = if c.bits > 0 { gz[c.input as usize - 1] } else { 0 };
        assert_eq!(c.prev_byte, prev, "previous byte of checkpoint {}", c.out);
        let got = ex.extract(c.out, 100).unwrap();
        let end = (c.out as usize + 100).min(data.len());
        assert_eq!(got, &data[c.out as usize..end], "at checkpoint {}", c.out);
    }
    for &(off, len) in ranges {
        let got = ex.extract(off, len).unwrap();
        let s = (off as usize).min(data.len());
        let e = (s + len).min(data.len());
        assert_eq!(got.len(), e - s, "length at {off}+{len}");
        assert!(got == data[s..e], "content differs at {off}+{len}");
    }
}

fn member_strategy() -> impl Strategy<Value = Member> {
    (0i32..=9, 0u8..5, 0u8..32, prop::collection::vec((0usize..200_000, 0u8..3), 0..4)).prop_map(
        |(level, s, flags, flushes)| Member {
            level,
            strategy: strategy(s),
            flags,
            flushes: flushes.into_iter().map(|(at, k)| (at, flush_kind(k))).collect(),
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn extracts_equal_full_decompression(
        len in 0usize..400_000,
        seed in any::<u64>(),
        members in prop::collection::vec(member_strategy(), 1..4),
        splits in prop::collection::vec(0usize..400_000, 0..4),
        span in prop::sample::select(vec![1u64, 4096, 32 * 1024, 100_000, 1 << 20]),
        ranges in prop::collection::vec((0u64..420_000, 0usize..70_000), 1..12),
    ) {
        let data = sample_data(len, seed);
        let gz = gzip_members(&data, &splits, &members);
        prop_assert_eq!(gunzip(&gz), data.clone());
        let index = IndexBuilder::new().span(span).build(&gz[..]).unwrap();
        prop_assert_eq!(index.members, splits.len() as u64 + 1);
        check_ranges(&gz, &index, &data, &ranges);
        // The on-disk form decodes to the same index.
        let back = zidx::decode(&zidx::encode(&index)).unwrap();
        prop_assert_eq!(back, index);
    }

    /// With member checkpoints, the data of every member after the first starts at a
    /// checkpoint, and each member's recorded end says exactly what Nydus 2.2's decoder
    /// (nydus-utils 0.4, which takes the end of a member as an error) makes of a context that
    /// ends there: the compressed bytes up to `input` decode the member's tail from its last
    /// checkpoint when `clean`, and never when not; Nydus's current decoder agrees when clean.
    #[test]
    fn member_ends_decode_with_nydus_2_2_exactly_when_clean(
        len in 1usize..200_000,
        seed in any::<u64>(),
        members in prop::collection::vec(member_strategy(), 1..5),
        splits in prop::collection::vec(0usize..200_000, 0..5),
        span in prop::sample::select(vec![4096u64, 100_000, 1 << 20]),
    ) {
        let data = sample_data(len, seed);
        let gz = gzip_members(&data, &splits, &members);
        let index = IndexBuilder::new().span(span).member_checkpoints(true).build(&gz[..]).unwrap();
        let ends = &index.member_ends;
        prop_assert!(!ends.is_empty());
        prop_assert_eq!(ends.last().unwrap().out, data.len() as u64);
        for m in &ends[..ends.len() - 1] {
            prop_assert!(index.checkpoints.iter().any(|c| c.out == m.out), "no checkpoint at member start {}", m.out);
        }
        for m in ends {
            let ci = index.checkpoint_for(m.out - 1);
            let cp = &index.checkpoints[ci];
            let dict = cp.window_bytes(ci).unwrap();
            let old = nydus_utils_04::compress::zlib_random::ZranContext {
                in_offset: cp.input,
                out_offset: cp.out,
                in_len: (m.input - cp.input) as u32,
                out_len: (m.out - cp.out) as u32,
                ctx_byte: cp.prev_byte,
                ctx_bits: cp.bits,
                dict: Vec::new(),
            };
            let input = &gz[cp.input as usize..m.input as usize];
            let mut out = vec![0u8; old.out_len as usize];
            let r = nydus_utils_04::compress::zlib_random::ZranDecoder::new()
                .unwrap()
                .uncompress(&old, Some(&dict), input, &mut out);
            prop_assert_eq!(r.is_ok(), m.clean, "member ending at {}: {:?}", m.out, r.err());
            if m.clean {
                prop_assert!(out == data[cp.out as usize..m.out as usize]);
                let new = nydus_utils::compress::zlib_random::ZranContext {
                    in_offset: old.in_offset,
                    out_offset: old.out_offset,
                    in_len: old.in_len,
                    out_len: old.out_len,
                    ctx_byte: old.ctx_byte,
                    ctx_bits: old.ctx_bits,
                    dict: Vec::new(),
                };
                let mut again = vec![0u8; new.out_len as usize];
                nydus_utils::compress::zlib_random::ZranDecoder::new()
                    .unwrap()
                    .uncompress(&new, Some(&dict), input, &mut again)
                    .unwrap();
                prop_assert!(again == out);
            }
        }
    }

    /// Restarting from any checkpoint with only the compressed bytes after it in memory (as
    /// the mount's blob layer does) yields the data, across member boundaries too; an input
    /// cut short is an error, never a short or wrong output.
    #[test]
    fn restart_from_any_checkpoint_in_memory(
        len in 1usize..300_000,
        seed in any::<u64>(),
        members in prop::collection::vec(member_strategy(), 1..4),
        splits in prop::collection::vec(0usize..300_000, 0..4),
        span in prop::sample::select(vec![4096u64, 32 * 1024, 100_000]),
        want in 1usize..200_000,
        cut in 1usize..64,
    ) {
        let data = sample_data(len, seed);
        let gz = gzip_members(&data, &splits, &members);
        let index = IndexBuilder::new().span(span).build(&gz[..]).unwrap();
        for (i, cp) in index.checkpoints.iter().enumerate() {
            let n = want.min(data.len() - cp.out as usize);
            if n == 0 {
                continue;
            }
            let window = cp.window_bytes(i).unwrap();
            let restart = Restart { bits: cp.bits, prev_byte: cp.prev_byte, dict: &window };
            let input = &gz[cp.input as usize..];
            let mut out = vec![0u8; n];
            inflate_from(&restart, input, cp.input, &mut out).unwrap();
            prop_assert_eq!(&out[..], &data[cp.out as usize..cp.out as usize + n]);
            let short = &input[..input.len().min(cut)];
            if short.len() < input.len() && n > 128 * 1024 {
                prop_assert!(inflate_from(&restart, short, cp.input, &mut out).is_err());
            }
        }
    }

    #[test]
    fn random_data_any_level(
        data in prop::collection::vec(any::<u8>(), 0..100_000),
        level in 0i32..=9,
        span in 1u64..70_000,
        ranges in prop::collection::vec((0u64..100_000, 0usize..10_000), 1..8),
    ) {
        let gz = gzip_member(&data, &Member { level, ..Member::default() });
        let index = IndexBuilder::new().span(span).build(&gz[..]).unwrap();
        check_ranges(&gz, &index, &data, &ranges);
    }
}

/// Records the data and requests checkpoints at given offsets as soon as it sees them.
struct Recorder {
    data: Vec<u8>,
    wants: Vec<u64>,
}

impl Sink for Recorder {
    fn data(
        &mut self,
        at: u64,
        bytes: &[u8],
        requests: &mut Requests,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        assert_eq!(at, self.data.len() as u64, "data arrives in order, without gaps");
        self.data.extend_from_slice(bytes);
        let end = self.data.len() as u64;
        // Ask for the wanted offsets up to a bit past what has been seen: some lie inside the
        // round just delivered, some ahead of it.
        for &w in self.wants.iter().filter(|&&w| w >= at && w < end + 10_000) {
            requests.request(w);
        }
        Ok(())
    }
}

#[test]
fn requests_land_on_flush_points() {
    // Full flushes end a block at known offsets; a request exactly there with no slack must
    // get a checkpoint exactly there.
    let data = sample_data(3_000_000, 7);
    let flush_at: Vec<usize> = (1..40).map(|i| i * 70_001 + (i * i) % 513).collect();
    let m = Member {
        level: 6,
        flushes: flush_at.iter().map(|&at| (at, zlib_rs::DeflateFlush::FullFlush)).collect(),
        ..Member::default()
    };
    let gz = gzip_member(&data, &m);
    let mut sink = Recorder { data: Vec::new(), wants: flush_at.iter().map(|&a| a as u64).collect() };
    let index = IndexBuilder::new().span(u64::MAX).request_slack(0).build_with(&gz[..], &mut sink).unwrap();
    assert_eq!(sink.data, data);
    for &at in &flush_at {
        let cp = &index.checkpoints[index.checkpoint_for(at as u64)];
        assert_eq!(cp.out, at as u64, "no checkpoint at requested flush point {at}");
    }
    // No spacing policy: only the start and the requests.
    assert_eq!(index.checkpoints.len(), flush_at.len() + 1);
    check_ranges(&gz, &index, &data, &[(0, 10), (1_500_000, 100_000)]);
}

#[test]
fn requests_respect_slack() {
    let data = sample_data(4_000_000, 11);
    let gz = gzip_member(&data, &Member::default());
    let wants: Vec<u64> = (0..60).map(|i| i * 65_537 + 12_345).collect();
    let mut sink = Recorder { data: Vec::new(), wants: wants.clone() };
    let slack = 256 * 1024;
    let index =
        IndexBuilder::new().span(u64::MAX).request_slack(slack).build_with(&gz[..], &mut sink).unwrap();
    // Deflate blocks of this data are well under the slack, so every request is served by a
    // checkpoint within slack + one block.
    for &w in &wants {
        let cp = &index.checkpoints[index.checkpoint_for(w)];
        assert!(w - cp.out <= slack + 200_000, "request {w} served from {}", cp.out);
    }
    assert!(index.checkpoints.len() < wants.len(), "slack must merge nearby requests");
}

#[test]
fn spacing_policy() {
    let data = sample_data(8 << 20, 3);
    let gz = gzip_member(&data, &Member::default());
    for span in [256 << 10, 1 << 20, 4 << 20] {
        let index = IndexBuilder::new().span(span).build(&gz[..]).unwrap();
        let outs: Vec<u64> = index.checkpoints.iter().map(|c| c.out).collect();
        for w in outs.windows(2) {
            assert!(w[1] - w[0] >= span, "checkpoints {w:?} closer than span {span}");
        }
        let expect = data.len() as u64 / span;
        let n = index.checkpoints.len() as u64;
        assert!(n >= expect / 2 && n <= expect + 1, "{n} checkpoints for span {span}");
    }
}

#[test]
fn header_fields_and_empty_members() {
    let data = sample_data(50_000, 5);
    let mut gz = Vec::new();
    for flags in 0..32u8 {
        gz.extend(gzip_member(b"", &Member { flags, ..Member::default() }));
        gz.extend(gzip_member(&data[..1000 * flags as usize], &Member { flags, ..Member::default() }));
    }
    let expect = gunzip(&gz);
    let index = IndexBuilder::new().span(1).build(&gz[..]).unwrap();
    assert_eq!(index.members, 64);
    check_ranges(&gz, &index, &expect, &[(0, 1 << 20), (12_345, 70_000), (400_000, 100)]);
}

#[test]
fn empty_stream_of_empty_members() {
    let gz = [gzip_member(b"", &Member::default()), gzip_member(b"", &Member::default())].concat();
    let index = IndexBuilder::new().build(&gz[..]).unwrap();
    assert_eq!(index.uncompressed_size, 0);
    assert_eq!(index.checkpoints.len(), 1);
    assert_eq!(Extractor::new(&index, &gz[..]).extract(0, 10).unwrap(), b"");
}

fn valid_stream() -> (Vec<u8>, Vec<u8>) {
    let data = sample_data(300_000, 9);
    let gz = gzip_members(&data, &[100_000, 200_000], &[Member::default()]);
    (data, gz)
}

#[test]
fn truncation_is_reported_with_offset() {
    let (_, gz) = valid_stream();
    let member_ends: Vec<usize> = {
        // Member boundaries: after each trailer.
        let mut ends = vec![];
        let mut pos = 0;
        let data = sample_data(300_000, 9);
        for (s, e) in [(0, 100_000), (100_000, 200_000), (200_000, 300_000)] {
            pos += gzip_member(&data[s..e], &Member::default()).len();
            ends.push(pos);
        }
        ends
    };
    for cut in (0..gz.len()).step_by(97).chain([1, 9, 10, gz.len() - 1, gz.len() - 8]) {
        let r = IndexBuilder::new().span(10_000).build(&gz[..cut]);
        if member_ends.contains(&cut) {
            assert!(r.is_ok(), "cut at a member end is a valid shorter stream");
            continue;
        }
        match r {
            Err(GzipError::Truncated { offset, .. }) => {
                assert!(offset <= cut as u64, "offset {offset} past cut {cut}")
            }
            Err(GzipError::Empty) if cut == 0 => {}
            other => panic!("cut at {cut}: expected a truncation error, got {other:?}"),
        }
    }
}

#[test]
fn every_bit_flip_errors_or_decodes_right() {
    let data = sample_data(3000, 1);
    let gz = gzip_members(&data, &[1500], &[Member { flags: FNAME | FHCRC, ..Member::default() }]);
    for bit in 0..gz.len() * 8 {
        let mut bad = gz.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        if let Ok(index) = IndexBuilder::new().span(100).build(&bad[..]) {
            // A flip the CRCs cannot see is in a field that does not change the data (MTIME,
            // OS, XFL, the extra flags of a Huffman table that decodes the same).
            let got = Extractor::new(&index, &bad[..]).extract(0, 1 << 20).unwrap();
            assert_eq!(got, data, "bit {bit} flipped yet decoded to other data");
        }
    }
}

#[test]
fn bad_trailers_and_garbage() {
    let (_, gz) = valid_stream();
    let n = gz.len();

    let mut bad_crc = gz.clone();
    bad_crc[n - 8] ^= 0xff;
    match IndexBuilder::new().build(&bad_crc[..]) {
        Err(GzipError::Crc { member: 2, offset, .. }) => assert_eq!(offset, n as u64 - 8),
        other => panic!("expected CRC error, got {other:?}"),
    }
    let mut bad_len = gz.clone();
    bad_len[n - 1] ^= 0x01;
    match IndexBuilder::new().build(&bad_len[..]) {
        Err(GzipError::Isize { member: 2, offset, .. }) => assert_eq!(offset, n as u64 - 8),
        other => panic!("expected ISIZE error, got {other:?}"),
    }
    let mut garbage = gz.clone();
    garbage.extend_from_slice(b"\0\0not gzip");
    match IndexBuilder::new().build(&garbage[..]) {
        Err(GzipError::TrailingGarbage { offset }) => assert_eq!(offset, n as u64),
        other => panic!("expected trailing garbage, got {other:?}"),
    }
    let mut almost = gz.clone();
    almost.extend_from_slice(b"\x1f\x8b\x08\0\0\0\0\0\0\x03\x07");
    assert!(IndexBuilder::new().build(&almost[..]).is_err());

    // Zero padding (tape blocks) after the last member is accepted, as gzip does.
    let mut padded = gz.clone();
    padded.extend_from_slice(&[0; 1000]);
    let index = IndexBuilder::new().build(&padded[..]).unwrap();
    assert_eq!(index.compressed_size, padded.len() as u64);

    assert!(matches!(IndexBuilder::new().build(&b""[..]), Err(GzipError::Empty)));
    assert!(matches!(
        IndexBuilder::new().build(&b"PK\x03\x04 this is a zip"[..]),
        Err(GzipError::Header { member: 0, offset: 0, .. })
    ));
}

#[test]
fn read_errors_are_reported() {
    struct Failing(usize);
    impl std::io::Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("disk on fire"));
            }
            self.0 -= 1;
            let (_, gz) = valid_stream();
            let n = buf.len().min(10);
            buf[..n].copy_from_slice(&gz[..n]);
            Ok(n)
        }
    }
    let err = IndexBuilder::new().build(Failing(1)).unwrap_err();
    assert!(matches!(err, GzipError::Io { offset: 10, .. }), "{err:?}");
}

#[test]
fn extract_from_truncated_source_errors() {
    let (data, gz) = valid_stream();
    let index = IndexBuilder::new().span(10_000).build(&gz[..]).unwrap();
    let short = &gz[..gz.len() / 2];
    let ex = Extractor::new(&index, short);
    assert!(ex.extract(0, 1000).is_ok());
    assert!(matches!(ex.extract(250_000, 1000), Err(GzipError::Truncated { .. })));
    // The full source still serves the same range.
    assert_eq!(Extractor::new(&index, &gz[..]).extract(250_000, 1000).unwrap(), &data[250_000..251_000]);
}

#[test]
fn sink_errors_stop_the_pass() {
    struct Refuse;
    impl Sink for Refuse {
        fn data(
            &mut self,
            at: u64,
            _: &[u8],
            _: &mut Requests,
        ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            if at > 0 { Err("tar header broken".into()) } else { Ok(()) }
        }
    }
    let gz = gzip_member(&sample_data(2_000_000, 2), &Member::default());
    let err = IndexBuilder::new().build_with(&gz[..], &mut Refuse).unwrap_err();
    assert!(matches!(err, GzipError::Sink { .. }));
    assert!(err.to_string().contains("tar header broken"));
}

#[test]
fn windows_reach_the_full_32k() {
    // Every block copies from exactly 32768 bytes back, so a window one byte short (or a
    // checkpoint restored without its window) gives wrong bytes.
    let (raw, data) = far_match_deflate(20, 300, 4);
    let gz = gzip_wrap(&raw, &data);
    assert_eq!(gunzip(&gz), data);
    let index = IndexBuilder::new().span(1).build(&gz[..]).unwrap();
    assert!(index.checkpoints.len() >= 20, "{} checkpoints", index.checkpoints.len());
    assert!(index.checkpoints.iter().skip(1).all(|c| c.window_len == 32768));
    check_ranges(&gz, &index, &data, &[(40_000, 5000), (700_000, 300_000)]);
}

/// A sink that asks for checkpoints at offsets set by `seed` (as a tar sink asks for them at
/// file starts: where the data says, whatever the rounds), and says that it takes rounds when
/// `takes` (so the pass copies a speculative chunk in round by round rather than handing it
/// on in place).
struct Asker {
    seed: u64,
    takes: bool,
}

impl Sink for Asker {
    fn data(
        &mut self,
        at: u64,
        bytes: &[u8],
        requests: &mut Requests,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let stride = 20_000 + self.seed % 200_000;
        let end = at + bytes.len() as u64;
        let mut k = at / stride;
        loop {
            let offset = k * stride + (k * k * 31 + self.seed) % (stride / 2);
            if offset >= end {
                break;
            }
            if offset >= at {
                requests.request(offset);
            }
            k += 1;
        }
        Ok(())
    }

    fn takes_rounds(&self) -> bool {
        self.takes
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Decoding chunks on a second core changes nothing in the index: checkpoint for
    /// checkpoint, window for window, byte for byte on disk, with and without requests from
    /// the sink, whatever the members, levels, strategies and flushes.
    #[test]
    fn speculative_pass_builds_the_sequential_index(
        len in 300_000usize..2_500_000,
        seed in any::<u64>(),
        members in prop::collection::vec(member_strategy(), 1..3),
        splits in prop::collection::vec(0usize..2_500_000, 0..3),
        span in prop::sample::select(vec![32 * 1024u64, 100_000, 1 << 20]),
        chunk in prop::sample::select(vec![4096u64, 16 << 10, 64 << 10, 256 << 10]),
        asks in any::<bool>(),
        takes in any::<bool>(),
    ) {
        let data = sample_data(len, seed);
        let gz = gzip_members(&data, &splits, &members);
        let build = |chunk: u64| {
            let builder = IndexBuilder::new().span(span).request_slack(span / 4).speculate(chunk);
            if asks {
                builder.build_counted(&gz[..], &mut Asker { seed, takes }).unwrap()
            } else {
                builder.build_counted(&gz[..], &mut zran::gzip::NullSink).unwrap()
            }
        };
        let (sequential, none) = build(0);
        let (speculative, _) = build(chunk);
        prop_assert_eq!(none.taken + none.wasted, 0);
        prop_assert_eq!(zidx::encode(&speculative), zidx::encode(&sequential));
        prop_assert_eq!(speculative, sequential);
    }
}

#[test]
fn speculation_takes_chunks_and_throws_false_starts_away() {
    let data = sample_data(6 << 20, 11);
    let gz = gzip_members(&data, &[], &[Member::default()]);
    let sequential = IndexBuilder::new().build(&gz[..]).unwrap();
    for takes in [false, true] {
        let asking = IndexBuilder::new().request_slack(32 << 10);
        let (index, s) =
            asking.clone().speculate(64 << 10).build_counted(&gz[..], &mut Asker { seed: 3, takes }).unwrap();
        let asked = asking.build_with(&gz[..], &mut Asker { seed: 3, takes }).unwrap();
        assert_eq!(index, asked);
        assert!(s.taken >= 5, "{s:?}");
        let (plain, _) = IndexBuilder::new()
            .speculate(64 << 10)
            .build_counted(&gz[..], &mut zran::gzip::NullSink)
            .unwrap();
        assert!(asked.checkpoints.len() > plain.checkpoints.len() + 20, "the sink's requests count");
        assert_eq!(plain, sequential);
    }

    // A gzip file stored inside a stream of stored blocks: its dynamic-block headers look like
    // block starts of the outer stream, but none of them is one.
    let inner = gzip_members(&data[..2 << 20], &[], &[Member::default()]);
    let mut outer_data = data[2 << 20..3 << 20].to_vec();
    outer_data.extend_from_slice(&inner);
    let stored = Member { level: 0, ..Member::default() };
    let gz = gzip_members(&outer_data, &[], &[stored]);
    let sequential = IndexBuilder::new().build(&gz[..]).unwrap();
    let (index, s) =
        IndexBuilder::new().speculate(64 << 10).build_counted(&gz[..], &mut zran::gzip::NullSink).unwrap();
    assert_eq!(index, sequential);
    assert_eq!(s.taken, 0, "{s:?}");
    assert!(s.wasted > 0, "{s:?}");
}

#[test]
fn speculation_keeps_errors_where_the_sequential_pass_finds_them() {
    let data = sample_data(3 << 20, 5);
    let mut gz = gzip_members(&data, &[], &[Member::default()]);
    // Damage a byte past the first chunk, in a part the worker decodes.
    let at = gz.len() * 3 / 4;
    gz[at] ^= 0x55;
    let sequential = IndexBuilder::new().build(&gz[..]).unwrap_err().to_string();
    let speculative = IndexBuilder::new().speculate(64 << 10).build(&gz[..]).unwrap_err().to_string();
    assert_eq!(speculative, sequential);
}
