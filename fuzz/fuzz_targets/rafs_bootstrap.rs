//! Arbitrary bytes as a RAFS v6 bootstrap (seeds are real ones from `zran generate`). The
//! reader must reject or accept without panicking, looping or allocating beyond the input's
//! size; what it accepts is walked whole, and every chunk index it returns names a blob.

#![no_main]

use libfuzzer_sys::fuzz_target;
use zran::rafs::reader::read_bootstrap;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = read_bootstrap(data) {
        let paths = b.tree.walk();
        assert!(paths.len() <= data.len() / 12 + 1);
        for refs in b.chunks.values() {
            for r in refs {
                assert!(usize::from(r.blob) < b.blobs.len());
            }
        }
    }
});
