//! The `zran` binary as users and scripts call it: exit codes, files written, bytes out.

mod common;

use common::*;
use std::process::Command;

fn zran() -> Command {
    Command::new(env!("CARGO_BIN_EXE_zran"))
}

#[test]
fn index_then_extract() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample_data(3_000_000, 21);
    let gz = gzip_members(&data, &[1_000_000], &[Member::default()]);
    let file = dir.path().join("data.gz");
    std::fs::write(&file, &gz).unwrap();

    let out = zran().args(["gz", "index"]).arg(&file).args(["--span", "256K", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["uncompressed_size"], 3_000_000);
    assert_eq!(summary["members"], 2);
    assert!(summary["checkpoints"].as_u64().unwrap() >= 8);
    let index = dir.path().join("data.gz.zidx");
    assert!(index.exists());
    // No temporary files left beside it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);

    for (off, len) in [(0u64, 10u64), (999_990, 20), (2_500_000, 500_000), (123_456, 1)] {
        let out = zran()
            .args(["gz", "extract"])
            .arg(&file)
            .args(["--offset", &off.to_string(), "--length", &len.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout == data[off as usize..(off + len) as usize], "at {off}+{len}");
    }

    // Without any index, extract builds one in memory.
    std::fs::remove_file(&index).unwrap();
    let out =
        zran().args(["gz", "extract"]).arg(&file).args(["--offset", "5", "--length", "5"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, &data[5..10]);

    // Standard input with -o.
    let idx2 = dir.path().join("stdin.zidx");
    let out = zran()
        .args(["gz", "index", "-", "-o"])
        .arg(&idx2)
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = zran()
        .args(["gz", "extract"])
        .arg(&file)
        .arg("--index")
        .arg(&idx2)
        .args(["--offset", "2999990", "--length", "10"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, &data[2_999_990..]);
}

#[test]
fn errors_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample_data(500_000, 5);
    let gz = gzip_member(&data, &Member::default());
    let file = dir.path().join("x.gz");
    std::fs::write(&file, &gz).unwrap();

    // Usage errors exit 2.
    let out = zran().args(["gz", "extract"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = zran().args(["gz", "index"]).arg(&file).args(["--span", "lots"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));

    // A corrupt file exits 1 naming the member and offset.
    let mut bad = gz.clone();
    let n = bad.len();
    bad[n - 6] ^= 1;
    let badfile = dir.path().join("bad.gz");
    std::fs::write(&badfile, &bad).unwrap();
    let out = zran().args(["gz", "index"]).arg(&badfile).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.gz") && err.contains("CRC32 mismatch in member 0"), "{err}");
    assert!(err.contains(&format!("offset {}", n - 8)), "{err}");
    assert!(!dir.path().join("bad.gz.zidx").exists(), "no index for a bad file");

    // A range past the end.
    let out = zran()
        .args(["gz", "extract"])
        .arg(&file)
        .args(["--offset", "499999", "--length", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("past the end"));

    // An index of another file is refused.
    let other = dir.path().join("other.gz");
    std::fs::write(&other, gzip_member(&sample_data(500_000, 6), &Member::default())).unwrap();
    assert!(zran().args(["gz", "index"]).arg(&other).output().unwrap().status.success());
    let out = zran()
        .args(["gz", "extract"])
        .arg(&file)
        .arg("--index")
        .arg(dir.path().join("other.gz.zidx"))
        .args(["--offset", "0", "--length", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not belong"));

    // A missing file.
    let out = zran().args(["gz", "index", "/nonexistent/file.gz"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/file.gz"));
}
