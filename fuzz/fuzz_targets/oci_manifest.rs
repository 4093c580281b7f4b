//! Arbitrary bytes as what a registry or a layout hands back: a manifest or an index (under
//! each media type a server may claim), a referrers index, a manifest's `subject`. Each must be
//! accepted or refused without panicking; an accepted manifest's descriptors carry digests that
//! print as they parsed.

#![no_main]

use libfuzzer_sys::fuzz_target;
use zran::oci::image::{self, ManifestKind, ReferrerIndex};
use zran::oci::Digest;

const TYPES: [Option<&str>; 5] = [
    None,
    Some(image::OCI_MANIFEST),
    Some(image::OCI_INDEX),
    Some(image::DOCKER_MANIFEST),
    Some(image::DOCKER_LIST),
];

fuzz_target!(|data: &[u8]| {
    let digest = Digest::of(data);
    for ct in TYPES {
        match image::parse_manifest(data.to_vec(), digest.clone(), ct) {
            Ok(ManifestKind::Image(m)) => {
                for d in m.layers.iter().chain([&m.config]) {
                    assert_eq!(d.digest.to_string().parse::<Digest>().ok().as_ref(), Some(&d.digest));
                }
            }
            Ok(ManifestKind::Index { manifests, .. }) => {
                for d in &manifests {
                    assert_eq!(d.digest.to_string().parse::<Digest>().ok().as_ref(), Some(&d.digest));
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    if let Ok(index) = ReferrerIndex::parse(data, "fuzz") {
        let again = serde_json::to_vec(&index).expect("a parsed index serializes");
        let back = ReferrerIndex::parse(&again, "fuzz").expect("what zran writes, it reads");
        assert_eq!(back.manifests, index.manifests);
    }
    let _ = image::subject_of(data);
});
