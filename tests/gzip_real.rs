//! The engine on real files of this machine, compressed by the real tools users have:
//! `gzip -1`, `gzip -9` and `pigz` (which adds sync flushes between its blocks, and with `-i`
//! resets the window at each). These must be installed (`.ci/run` does it).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use zran::gzip::{Extractor, IndexBuilder, zidx};

/// Up to 24 MB of a tar of binaries and text from this machine.
fn machine_tar() -> Vec<u8> {
    let out = Command::new("sh")
        .args(["-c", "tar cf - -C / usr/bin usr/share/doc usr/share/perl5 2>/dev/null | head -c 24000000"])
        .output()
        .expect("tar");
    assert!(out.stdout.len() > 4_000_000, "too little data from tar: {}", out.stdout.len());
    out.stdout
}

fn compress(tool: &[&str], data: &[u8]) -> Vec<u8> {
    let mut child = Command::new(tool[0])
        .args(&tool[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {tool:?} (is it installed?): {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{tool:?} failed");
    out.stdout
}

#[test]
fn real_tools_real_files() {
    let data = machine_tar();
    let tools: [&[&str]; 5] = [
        &["gzip", "-1", "-c"],
        &["gzip", "-9", "-c"],
        &["pigz", "-c"],
        &["pigz", "-c", "-1", "-b", "32"],
        &["pigz", "-c", "-i", "-p", "2"],
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for tool in tools {
        let gz = compress(tool, &data);
        for span in [256 << 10, 1 << 20, 4 << 20] {
            let index = IndexBuilder::new().span(span).build(&gz[..]).unwrap_or_else(|e| {
                panic!("{tool:?} span {span}: {e}");
            });
            assert_eq!(index.uncompressed_size, data.len() as u64, "{tool:?}");
            let index = zidx::decode(&zidx::encode(&index)).unwrap();
            let ex = Extractor::new(&index, &gz[..]);
            for _ in 0..40 {
                let off = rand(data.len() as u64);
                let len = rand(300_000) as usize;
                let got = ex.extract(off, len).unwrap();
                let end = (off as usize + len).min(data.len());
                assert!(got == data[off as usize..end], "{tool:?} span {span} at {off}+{len}");
            }
        }
        // The whole stream through the extractor, across every checkpoint.
        let index = IndexBuilder::new().span(1 << 20).build(&gz[..]).unwrap();
        assert!(Extractor::new(&index, &gz[..]).extract(0, data.len()).unwrap() == data, "{tool:?}");
    }
}
