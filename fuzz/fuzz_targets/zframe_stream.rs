//! Arbitrary bytes as a zstd layer stream: the frame pass must return an index or an error,
//! never panic or run away; an index it returns has its first checkpoint at 0, checkpoints in
//! stream order at frame starts, and decoding from each checkpoint (bounded by the output the
//! pass saw) yields what the pass saw there. The bytes are also decoded as a context would be.

#![no_main]

use libfuzzer_sys::fuzz_target;
use zran::gzip::{Requests, Sink};
use zran::zframe::{decode_from, index_stream};

struct Keep(Vec<u8>);

impl Sink for Keep {
    fn data(
        &mut self,
        _: u64,
        bytes: &[u8],
        requests: &mut Requests,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if self.0.len() + bytes.len() > 8 << 20 {
            return Err("more output than this target keeps".into());
        }
        requests.request(self.0.len() as u64 + bytes.len() as u64 / 2);
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut keep = Keep(Vec::new());
    if let Ok(fi) = index_stream(data, 4096, &mut keep) {
        let cps = &fi.index.checkpoints;
        assert_eq!(cps.first().map(|c| c.out), Some(0));
        assert!(cps.windows(2).all(|w| w[0].out < w[1].out && w[0].input < w[1].input));
        assert_eq!(fi.index.uncompressed_size, keep.0.len() as u64);
        for c in cps {
            assert!(fi.frames.iter().any(|f| f.input == c.input));
            let n = (keep.0.len() as u64 - c.out).min(1 << 16) as usize;
            let mut out = vec![0u8; n];
            decode_from(&data[c.input as usize..], c.input, &mut out).expect("a checkpoint does not decode");
            assert_eq!(out[..], keep.0[c.out as usize..c.out as usize + n]);
        }
    }
    let mut out = vec![0u8; usize::from(data.first().copied().unwrap_or(0)) * 256];
    let _ = decode_from(data, 0, &mut out);
});
