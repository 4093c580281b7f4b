//! Arbitrary bytes as a Nydus image's bootstrap layer (seeds: real ones, from `zran generate
//! --nydus-oci-ref`). The extraction must reject or accept without panicking or allocating
//! beyond its limits; what it accepts is read as a bootstrap the same way.

#![no_main]

use libfuzzer_sys::fuzz_target;
use zran::nydus::extract;
use zran::rafs::reader::read_bootstrap;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = extract(data, "fuzz") {
        for hex in e.metas.keys() {
            assert_eq!(hex.len(), 64);
        }
        let _ = read_bootstrap(&e.bootstrap);
    }
});
