//! Arbitrary bytes as a blob.meta. The reader must reject or accept without panicking; what it
//! accepts must pass validation and survive the writer: re-encoded, in both forms, it reads
//! back the same. Random bytes rarely get past the header's magics, so each input is also read
//! as raw CI data behind a header made to fit it (its first 8 bytes give the chunk and context
//! counts), which takes the chunk, context and dictionary checks. The chunk info v1 reader of
//! eStargz layers gets the same: the bytes as they are, and behind a v1 header made to fit.

#![no_main]

use libfuzzer_sys::fuzz_target;
use zran::rafs::meta::format::{HEADER_SIZE, MAGIC, compressor, features};
use zran::rafs::meta::{BlobMeta, decode_bytes, decode_stargz_bytes};

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= 8 {
        let entries = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) % 64;
        let contexts = u32::from_le_bytes([data[4], data[5], data[6], data[7]]) % 64;
        let ci = &data[8..];
        let zran_offset = u64::from(entries) * 24;
        let mut h = vec![0u8; HEADER_SIZE];
        let mut put = |at: usize, v: &[u8]| h[at..at + v.len()].copy_from_slice(v);
        put(0, &MAGIC.to_le_bytes());
        put(4, &features::ZRAN_REF.to_le_bytes());
        put(8, &compressor::NONE.to_le_bytes());
        put(12, &entries.to_le_bytes());
        put(24, &(ci.len() as u64).to_le_bytes());
        put(32, &(ci.len() as u64).to_le_bytes());
        put(40, &zran_offset.to_le_bytes());
        put(48, &(ci.len() as u64).saturating_sub(zran_offset).to_le_bytes());
        put(56, &contexts.to_le_bytes());
        put(HEADER_SIZE - 4, &MAGIC.to_le_bytes());
        let mut framed = ci.to_vec();
        framed.extend_from_slice(&h);
        check(&framed);

        let v1 = &data[8..8 + (data.len() - 8) / 16 * 16];
        let mut h = vec![0u8; HEADER_SIZE];
        let mut put = |at: usize, v: &[u8]| h[at..at + v.len()].copy_from_slice(v);
        put(0, &MAGIC.to_le_bytes());
        put(4, &features::STARGZ_REF.to_le_bytes());
        put(8, &compressor::NONE.to_le_bytes());
        put(12, &((v1.len() / 16) as u32).to_le_bytes());
        put(24, &(v1.len() as u64).to_le_bytes());
        put(32, &(v1.len() as u64).to_le_bytes());
        put(HEADER_SIZE - 4, &MAGIC.to_le_bytes());
        let mut framed = v1.to_vec();
        framed.extend_from_slice(&h);
        check_stargz(&framed);
    }
    check_stargz(data);
});

fn check_stargz(data: &[u8]) {
    let Ok(decoded) = decode_stargz_bytes(data) else {
        return;
    };
    let meta = decoded.meta;
    meta.validate().expect("accepted a chunk info v1 blob.meta that does not validate");
    let encoded = meta.encode().expect("the writer refused an accepted chunk info v1 blob.meta");
    let again = decode_stargz_bytes(&encoded.bytes).expect("re-encoded chunk info v1 rejected");
    assert_eq!(again.meta, meta, "round trip through the compressed form changed the chunk info v1");
    let cache = meta.encode_cache().expect("the writer refused the cache form");
    let again = decode_stargz_bytes(&cache).expect("cache form rejected");
    assert_eq!(again.meta, meta, "round trip through the cache form changed the chunk info v1");
}

fn check(data: &[u8]) {
    let Ok(decoded) = decode_bytes(data) else {
        return;
    };
    let meta = decoded.meta;
    meta.validate().expect("accepted a blob.meta that does not validate");
    assert!(meta.digests.is_empty());
    let encoded = meta.encode().expect("the writer refused an accepted blob.meta");
    let again = decode_bytes(&encoded.bytes).expect("re-encoded blob.meta rejected");
    assert_eq!(again.meta, meta, "round trip through the compressed form changed the meta");
    let cache = meta.encode_cache().expect("the writer refused the cache form");
    let again = decode_bytes(&cache).expect("cache form rejected");
    assert_eq!(again.meta, meta, "round trip through the cache form changed the meta");
    let _: &BlobMeta = &again.meta;
}
