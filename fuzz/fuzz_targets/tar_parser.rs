//! The push tar parser on arbitrary bytes, pushed in pieces whose sizes come from the input:
//! never a panic, and the same entries whatever the split.

#![no_main]

use libfuzzer_sys::fuzz_target;
use zran::tar::TarParser;

fn parse(data: &[u8], piece: usize) -> Result<Vec<zran::tar::Entry>, zran::tar::TarError> {
    let mut p = TarParser::new();
    let mut at = 0;
    while at < data.len() {
        let n = piece.min(data.len() - at);
        p.push(at as u64, &data[at..at + n], &mut |_, _, _| {})?;
        at += n;
    }
    p.finish()?;
    Ok(p.entries().to_vec())
}

fuzz_target!(|input: &[u8]| {
    let Some((&split, data)) = input.split_first() else { return };
    let whole = parse(data, data.len().max(1));
    let pieces = parse(data, usize::from(split) + 1);
    match (whole, pieces) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "entries depend on how the bytes were split"),
        (Err(a), Err(b)) => assert_eq!(a, b, "errors depend on how the bytes were split"),
        (a, b) => panic!("split changed the outcome: {a:?} vs {b:?}"),
    }
});
