//! Arbitrary bytes as the files and labels a snapshotter reads: containerd's `hosts.toml`,
//! zran's own configuration file, and the labels of a remote layer snapshot. Each is accepted
//! or refused without panicking; accepted mirrors end with an API path.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::path::Path;
use zran::snapshotter::remote::{RemoteLayer, ZRAN_IMAGE, ZRAN_LAYER};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(h) = zran::oci::hosts::parse(text, Path::new("hosts.toml")) {
        for m in &h.mirrors {
            assert!(m.api.contains("://"), "{}", m.api);
        }
    }
    let _ = zran::snapshotter::config::Config::parse(text, Path::new("config.toml"));
    let (a, b) = text.split_once('\n').unwrap_or((text, ""));
    let labels =
        BTreeMap::from([(ZRAN_IMAGE.to_string(), a.to_string()), (ZRAN_LAYER.to_string(), b.to_string())]);
    if let Some(l) = RemoteLayer::from_labels(&labels) {
        assert!(l.index < l.count);
        let _ = l.serve_key();
    }
});
