//! Images in OCI layouts and in a real `docker-registry` (started by the tests on 127.0.0.1),
//! read through zran's `oci` module: references, manifests, platforms, auth, range reads,
//! digests, and faults injected in front of the real registry.

mod common;

use common::faulty::{Fault, FaultyProxy};
use common::harness::{TestRegistry, layout_blob, layouts};
use std::io::Read;
use std::process::Command;
use zran::oci::{self, BlobSource, ImageRef, OpenOptions, RegistryOptions, RegistrySource};

fn open(reference: &str, opts: &OpenOptions) -> Result<oci::Image, oci::OciError> {
    oci::open(&reference.parse::<ImageRef>().expect("reference"), opts)
}

fn plain() -> OpenOptions {
    OpenOptions { registry: RegistryOptions { attempts: 4, ..Default::default() }, ..Default::default() }
}

fn creds(user: &str, pass: &str) -> OpenOptions {
    let mut o = plain();
    o.registry.creds = Some((user.to_string(), pass.to_string()));
    o
}

const IMAGES: [&str; 5] = ["python", "edge", "python-estargz", "edge-estargz", "multi"];

#[test]
fn plain_registry_and_layouts() {
    let dir = layouts();
    let reg = TestRegistry::start("plain");
    let host = reg.host();

    for name in IMAGES {
        let from_layout = open(&format!("oci:{}", dir.join(name).display()), &plain()).unwrap();
        let by_tag = open(&format!("{host}/{name}:latest"), &plain()).unwrap();
        assert_eq!(from_layout.manifest.digest, by_tag.manifest.digest, "{name}");
        assert_eq!(from_layout.manifest.layers, by_tag.manifest.layers, "{name}");
        let digest = by_tag.index.clone().unwrap_or(by_tag.manifest.digest.clone());
        let by_digest = open(&format!("{host}/{name}@{digest}"), &plain()).unwrap();
        assert_eq!(by_digest.manifest.digest, by_tag.manifest.digest, "{name}");
    }

    // An index with two platforms.
    let mut arm = plain();
    arm.platform = Some("linux/arm64".parse().unwrap());
    let amd = open(&format!("{host}/multi"), &plain()).unwrap();
    let arm64 = open(&format!("{host}/multi"), &arm).unwrap();
    assert_ne!(amd.manifest.digest, arm64.manifest.digest);
    assert_eq!(arm64.platform.as_ref().map(|p| p.architecture.as_str()), Some("arm64"));
    let mut s390 = plain();
    s390.platform = Some("linux/s390x".parse().unwrap());
    let err = open(&format!("{host}/multi"), &s390).err().expect("no s390x image").to_string();
    assert!(err.contains("linux/s390x") && err.contains("linux/amd64"), "{err}");

    // Unknown tags and repositories: a clear error with the URL and status.
    let err = open(&format!("{host}/python:nope"), &plain()).err().unwrap().to_string();
    assert!(err.contains("/v2/python/manifests/nope") && err.contains("404"), "{err}");

    // Range reads, byte for byte against the blob files.
    let image = open(&format!("{host}/python"), &plain()).unwrap();
    let mut seed = 0x1234_5678u64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n.max(1)
    };
    for layer in &image.manifest.layers {
        let file = std::fs::read(layout_blob(&dir.join("python"), layer.digest.hex())).unwrap();
        for _ in 0..30 {
            let off = rand(layer.size);
            let len = rand(70_000) as usize + 1;
            let mut buf = vec![0u8; len];
            let n = image.source.read_at(&layer.digest, off, &mut buf).unwrap();
            let end = (off as usize + len).min(file.len());
            assert_eq!(n, end - off as usize);
            assert!(buf[..n] == file[off as usize..end], "range {off}+{len}");
        }
        let mut buf = [0u8; 10];
        assert_eq!(image.source.read_at(&layer.digest, layer.size, &mut buf).unwrap(), 0);
        // The whole blob, streamed and verified.
        let mut whole = Vec::new();
        image.source.open(&layer.digest, Some(layer.size)).unwrap().read_to_end(&mut whole).unwrap();
        assert!(whole == file);
    }

    // A blob changed in the registry's storage is caught by its digest.
    let config = &image.manifest.config;
    let path = reg.blob_data(config.digest.hex());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[5] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();
    let err = image.source.fetch(&config.digest, 1 << 20).expect_err("tampered config").to_string();
    assert!(err.contains(&format!("blob {} has digest", config.digest)), "{err}");

    // `zran inspect` of the eStargz image: formats from annotations and footers, and only
    // manifest and footer bytes fetched.
    let out = Command::new(env!("CARGO_BIN_EXE_zran"))
        .args(["inspect", "--json", &format!("{host}/python-estargz")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let layers = report["layers"].as_array().unwrap();
    assert!(
        layers.iter().all(|l| l["format"] == "estargz" && l["toc_offset"].as_u64().is_some()),
        "{report}"
    );
    assert!(report["bytes_fetched"].as_u64().unwrap() < 8192, "{report}");
    let out = Command::new(env!("CARGO_BIN_EXE_zran"))
        .args(["inspect", "--json", &format!("{host}/python")])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["layers"].as_array().unwrap().iter().all(|l| l["format"] == "gzip"), "{report}");
}

#[test]
fn faults_are_retried_or_reported() {
    let reg = TestRegistry::start("plain");
    let image = open(&format!("{}/python", reg.host()), &plain()).unwrap();
    let layer = image.manifest.layers.last().unwrap().clone();
    let file = std::fs::read(layout_blob(&layouts().join("python"), layer.digest.hex())).unwrap();
    let repo = |port: u16| match format!("127.0.0.1:{port}/python").parse::<ImageRef>().unwrap() {
        ImageRef::Registry(r) => r,
        _ => unreachable!(),
    };

    for fault in [Fault::Status500, Fault::CutAfter(400)] {
        let proxy = FaultyProxy::start(reg.port, fault, 2, "/blobs/");
        let src = RegistrySource::new(&repo(proxy.port), &RegistryOptions::default()).unwrap();
        let mut buf = vec![0u8; 65536];
        let n = src.read_at(&layer.digest, 1_000_000, &mut buf).unwrap();
        assert_eq!(n, buf.len(), "{fault:?}");
        assert!(buf == file[1_000_000..1_065_536], "{fault:?}");
        assert_eq!(proxy.injected.load(std::sync::atomic::Ordering::SeqCst), 2, "{fault:?}");
        assert!(src.stats().retries.load(std::sync::atomic::Ordering::Relaxed) >= 2, "{fault:?}");
    }

    // A redirect is followed, and its target reused for later reads of the same blob.
    let proxy = FaultyProxy::start(reg.port, Fault::Redirect, 1000, "/blobs/");
    let src = RegistrySource::new(&repo(proxy.port), &RegistryOptions::default()).unwrap();
    for off in [0u64, 5000, 100_000, 2_000_000] {
        let mut buf = vec![0u8; 1000];
        assert_eq!(src.read_at(&layer.digest, off, &mut buf).unwrap(), 1000);
        assert!(buf == file[off as usize..off as usize + 1000]);
    }
    assert_eq!(
        proxy.injected.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one redirect, then the cached target"
    );
    drop(proxy);

    // A server that ignores Range and sends the whole blob: the right bytes all the same.
    let proxy = FaultyProxy::start(reg.port, Fault::IgnoreRange, 1000, "/blobs/");
    let src = RegistrySource::new(&repo(proxy.port), &RegistryOptions::default()).unwrap();
    let mut buf = vec![0u8; 3000];
    assert_eq!(src.read_at(&layer.digest, 777_777, &mut buf).unwrap(), 3000);
    assert!(buf == file[777_777..780_777]);
    assert!(proxy.injected.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    drop(proxy);

    // A fault that does not go away: a bounded number of tries, then an error naming the URL.
    let proxy = FaultyProxy::start(reg.port, Fault::Status500, 1000, "/blobs/");
    let opts = RegistryOptions { attempts: 3, ..Default::default() };
    let src = RegistrySource::new(&repo(proxy.port), &opts).unwrap();
    let err = src.read_at(&layer.digest, 0, &mut [0u8; 10]).unwrap_err().to_string();
    assert!(err.contains("/v2/python/blobs/sha256:") && err.contains("500"), "{err}");
    assert_eq!(proxy.injected.load(std::sync::atomic::Ordering::SeqCst), 3);

    // Nobody listening: a connection error, after retries, naming the URL.
    drop(proxy);
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let src =
        RegistrySource::new(&repo(port), &RegistryOptions { attempts: 2, ..Default::default() }).unwrap();
    let err = src.read_at(&layer.digest, 0, &mut [0u8; 10]).unwrap_err().to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
}

#[test]
fn basic_auth() {
    let reg = TestRegistry::start("htpasswd");
    let host = reg.host();
    let image = open(&format!("{host}/edge"), &creds("zran", "zran-secret")).unwrap();
    assert!(!image.manifest.layers.is_empty());
    let layer = &image.manifest.layers[0];
    let mut buf = [0u8; 100];
    assert_eq!(image.source.read_at(&layer.digest, 0, &mut buf).unwrap(), 100);

    let err = open(&format!("{host}/edge"), &plain()).err().unwrap().to_string();
    assert!(err.contains("--creds"), "{err}");
    let err = open(&format!("{host}/edge"), &creds("zran", "wrong")).err().unwrap().to_string();
    assert!(err.contains("401"), "{err}");

    // Credentials from a Docker config file.
    let cfg = reg.dir.path().join("docker-config.json");
    let auth = "enJhbjp6cmFuLXNlY3JldA=="; // base64("zran:zran-secret")
    std::fs::write(&cfg, format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#)).unwrap();
    let mut o = plain();
    o.registry.docker_config = Some(cfg);
    assert!(open(&format!("{host}/edge"), &o).is_ok());
}

#[test]
fn token_auth() {
    let reg = TestRegistry::start("token");
    let host = reg.host();
    // Anonymous pull through a token from the token service.
    let image = open(&format!("{host}/python"), &plain()).unwrap();
    let layer = &image.manifest.layers[0];
    let mut buf = [0u8; 4096];
    assert_eq!(image.source.read_at(&layer.digest, 10, &mut buf).unwrap(), 4096);
    // Many requests reuse the token.
    for i in 0..20 {
        image.source.read_at(&layer.digest, i * 100, &mut buf).unwrap();
    }
    assert!(open(&format!("{host}/python"), &creds("zran", "zran-secret")).is_ok());
    let err = open(&format!("{host}/python"), &creds("zran", "wrong")).err().unwrap().to_string();
    assert!(err.contains("authentication failed") && err.contains("401"), "{err}");
}

#[test]
fn layout_errors() {
    let dir = layouts();
    let err =
        open(&format!("oci:{}:nope", dir.join("python").display()), &plain()).err().unwrap().to_string();
    assert!(err.contains("no such tag") && err.contains("latest"), "{err}");
    let err = open("oci:/nonexistent/layout", &plain()).err().unwrap().to_string();
    assert!(err.contains("/nonexistent/layout/oci-layout"), "{err}");

    // A layout with a blob missing.
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("python");
    let status = Command::new("cp").arg("-a").arg(dir.join("python")).arg(&copy).status().unwrap();
    assert!(status.success());
    let image = open(&format!("oci:{}", copy.display()), &plain()).unwrap();
    let layer = image.manifest.layers[1].clone();
    std::fs::remove_file(layout_blob(&copy, layer.digest.hex())).unwrap();
    let err = image.source.read_at(&layer.digest, 0, &mut [0u8; 4]).unwrap_err().to_string();
    assert!(err.contains(layer.digest.hex()), "{err}");
    // A manifest that does not match its digest.
    let mdigest = image.manifest.digest.clone();
    std::fs::write(layout_blob(&copy, mdigest.hex()), b"{}").unwrap();
    let err = open(&format!("oci:{}@{mdigest}", copy.display()), &plain()).err().unwrap().to_string();
    assert!(err.contains("content has digest"), "{err}");
}

#[test]
fn proxies_and_mirrors() {
    let reg = TestRegistry::start("plain");
    let zran = |args: &[&str], env: &[(&str, String)]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_zran"));
        c.args(args)
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    // HTTP_PROXY is honoured: every request goes through the proxy.
    let proxy = FaultyProxy::start(reg.port, Fault::Count, usize::MAX, "");
    let out = zran(
        &["inspect", "--json", &format!("{}/python", reg.host())],
        &[("HTTP_PROXY", format!("http://127.0.0.1:{}", proxy.port))],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        proxy.injected.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "requests did not go through the proxy"
    );

    // A pull-through mirror is tried first; here the registry itself is unreachable.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let mirror = FaultyProxy::start(reg.port, Fault::Count, usize::MAX, "?ns=");
    let out = zran(
        &[
            "inspect",
            "--json",
            &format!("127.0.0.1:{dead_port}/python"),
            "--mirror",
            &format!("127.0.0.1:{}", mirror.port),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(mirror.injected.load(std::sync::atomic::Ordering::SeqCst) >= 1, "the mirror was not asked");
    // Without the mirror the same reference fails, naming the address.
    let out = zran(&["inspect", &format!("127.0.0.1:{dead_port}/python")], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("127.0.0.1:{dead_port}")));

    // containerd's host files: a mirror from `_default/hosts.toml` (with its `?ns=`), and a
    // plain-HTTP `server` for a name that is not loopback (and so would be spoken HTTPS to).
    let hosts = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(hosts.path().join("_default")).unwrap();
    std::fs::write(
        hosts.path().join("_default/hosts.toml"),
        format!("[host.\"http://127.0.0.1:{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n", mirror.port),
    )
    .unwrap();
    let before = mirror.injected.load(std::sync::atomic::Ordering::SeqCst);
    let hosts_dir = hosts.path().to_str().unwrap();
    let out = zran(&["inspect", &format!("127.0.0.1:{dead_port}/python"), "--hosts-dir", hosts_dir], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        mirror.injected.load(std::sync::atomic::Ordering::SeqCst) > before,
        "the hosts.toml mirror was not asked"
    );
    let name = "registry.zran-test.invalid:5000";
    std::fs::create_dir_all(hosts.path().join(name)).unwrap();
    std::fs::write(
        hosts.path().join(name).join("hosts.toml"),
        format!("server = \"http://{}\"\n", reg.host()),
    )
    .unwrap();
    let out = zran(&["inspect", "--json", &format!("{name}/python"), "--hosts-dir", hosts_dir], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = zran(&["inspect", &format!("{name}/python")], &[]);
    assert!(!out.status.success(), "without the host file the name does not resolve");
}
