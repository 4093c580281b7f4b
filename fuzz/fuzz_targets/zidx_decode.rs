//! Arbitrary bytes as a `.zidx` file. The reader must reject or accept without panicking, and
//! whatever it accepts must be usable: index lookups, window decompression and extraction over
//! an empty source and over the gzip stream the seed index was made from must not panic
//! (errors are fine), and the writer must reproduce an accepted index exactly. Each input is
//! also tried with its trailer's CRC-32 and end magic made correct.

#![no_main]

use libfuzzer_sys::fuzz_target;
use zran::gzip::{Extractor, zidx};

/// The gzip stream `seeds/zidx_decode/two-members.gz.zidx` indexes, so that mutations of that
/// seed decode real deflate data.
static SOURCE: &[u8] = include_bytes!("../seeds/gzip_index/two-members.gz");

fuzz_target!(|data: &[u8]| {
    check(data);
    // Random mutations almost never keep the trailer's CRC-32 right, which hides every field
    // behind it: also try the input with a correct trailer.
    if data.len() >= 8 {
        let body = data.len() - 8;
        let mut fixed = data.to_vec();
        fixed[body..body + 4].copy_from_slice(&crc32fast::hash(&data[..body]).to_le_bytes());
        fixed[body + 4..].copy_from_slice(b"XDIZ");
        if fixed != data {
            check(&fixed);
        }
    }
});

fn check(data: &[u8]) {
    let Ok(index) = zidx::decode(data) else {
        return;
    };
    let again = zidx::decode(&zidx::encode(&index)).expect("re-encoded index rejected");
    assert_eq!(again, index, "zidx round trip changed the index");

    let size = index.uncompressed_size;
    let mut offsets = vec![
        0,
        1,
        size / 2,
        size.saturating_sub(1),
        size,
        size.saturating_add(1),
        u64::MAX,
    ];
    for c in index.checkpoints.iter().take(8) {
        offsets.extend([c.out, c.out.saturating_sub(1), c.out.saturating_add(100)]);
    }
    for &o in &offsets {
        let ci = index.checkpoint_for(o);
        assert!(ci < index.checkpoints.len());
        index.input_end_for(o);
        index.input_range_for(o, 64);
    }
    index.window_bytes();
    for (i, c) in index.checkpoints.iter().enumerate().take(8) {
        let _ = c.window_bytes(i);
    }

    let empty: &[u8] = &[];
    for source in [empty, SOURCE] {
        let ex = Extractor::new(&index, source);
        for &o in &offsets {
            for len in [1usize, 4096] {
                let mut buf = vec![0u8; len];
                if let Ok(n) = ex.read_at(o, &mut buf) {
                    let want = if o >= size {
                        0
                    } else {
                        (len as u64).min(size - o) as usize
                    };
                    assert_eq!(n, want, "read_at({o}, {len}) returned a short read");
                }
            }
            let _ = ex.extract(o, 64);
        }
    }
}
