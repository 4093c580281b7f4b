//! The real registry and the test images, for integration tests: `testimages/build.sh` makes
//! the images (cached), `testimages/registry.sh` runs a real `docker-registry` on a free
//! loopback port. A [`TestRegistry`] stops its registry when dropped. [`kernel_mount`] mounts a
//! bootstrap as kernel EROFS.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The single-platform test images `testimages/build.sh` makes, each with a truth tree.
#[allow(dead_code)]
pub const IMAGES: &[&str] =
    &["python", "edge", "python-estargz", "edge-estargz", "tarquirks", "paths", "umoci-insert"];

/// The eStargz ones (also indexed as plain gzip with `--ignore-toc`).
#[allow(dead_code)]
pub const ESTARGZ_IMAGES: &[&str] = &["python-estargz", "edge-estargz"];

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Build the test images once per test process (the script caches across runs).
pub fn layouts() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let status = Command::new("bash")
                .arg(repo_root().join("testimages/build.sh"))
                .status()
                .expect("run testimages/build.sh");
            assert!(status.success(), "testimages/build.sh failed");
            repo_root().join("target/testimages/layouts")
        })
        .clone()
}

pub struct TestRegistry {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl TestRegistry {
    /// Start a registry in `mode` (plain, htpasswd, token) and push every test image to it.
    pub fn start(mode: &str) -> TestRegistry {
        let layouts = layouts();
        let dir = tempfile::tempdir().expect("tempdir");
        let script = repo_root().join("testimages/registry.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(dir.path())
            .arg(mode)
            .output()
            .expect("registry.sh");
        assert!(out.status.success(), "registry.sh start: {}", String::from_utf8_lossy(&out.stderr));
        let port: u16 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .lines()
            .last()
            .unwrap_or("")
            .trim()
            .parse()
            .expect("port");
        let reg = TestRegistry { dir, port };
        let out = Command::new("bash")
            .arg(&script)
            .arg("push")
            .arg(reg.dir.path())
            .arg(&layouts)
            .output()
            .expect("registry.sh push");
        assert!(out.status.success(), "registry.sh push: {}", String::from_utf8_lossy(&out.stderr));
        reg
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stop serving (the process is killed; port, config and storage stay) until [`resume`].
    pub fn pause(&self) {
        let pid = std::fs::read_to_string(self.dir.path().join("pid")).unwrap();
        let _ = Command::new("kill").arg(pid.trim()).status();
        let url = format!("http://{}/v2/", self.host());
        for _ in 0..100 {
            if !Command::new("curl").args(["-s", "-o", "/dev/null", &url]).status().unwrap().success() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("registry still answers after kill");
    }

    /// Serve again on the same port.
    pub fn resume(&self) {
        let d = self.dir.path();
        let o = Command::new("bash")
            .arg("-c")
            .arg("nohup docker-registry serve \"$1/config.yml\" >> \"$1/registry.log\" 2>&1 < /dev/null & echo $!")
            .arg("resume")
            .arg(d)
            .output()
            .unwrap();
        std::fs::write(d.join("pid"), String::from_utf8_lossy(&o.stdout).trim()).unwrap();
        let url = format!("http://{}/v2/", self.host());
        for _ in 0..200 {
            if Command::new("curl").args(["-s", "-o", "/dev/null", &url]).status().unwrap().success() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("registry did not come back");
    }

    /// Where the registry keeps a blob's bytes (for tampering tests).
    pub fn blob_data(&self, hex: &str) -> PathBuf {
        self.dir.path().join("storage/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("testimages/registry.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// The path of a blob in a layout.
pub fn layout_blob(layout: &Path, hex: &str) -> PathBuf {
    layout.join("blobs/sha256").join(hex)
}

/// mount(2) the bootstrap file itself as EROFS with the given device files (the kernel's
/// file-backed mount; mount(8) would put the bootstrap on a loop device first).
#[allow(dead_code)]
pub fn kernel_mount(boot: &Path, devices: &[PathBuf], mnt: &Path) {
    let data = devices.iter().map(|d| format!("device={}", d.display())).collect::<Vec<_>>().join(",");
    let script = "import ctypes,os,sys\nl=ctypes.CDLL(None,use_errno=True)\n\
                  r=l.mount(sys.argv[1].encode(),sys.argv[2].encode(),b'erofs',1,sys.argv[3].encode())\n\
                  sys.exit(0 if r==0 else 'mount: '+os.strerror(ctypes.get_errno()))";
    let o = Command::new("/usr/bin/python3")
        .args(["-c", script, boot.to_str().unwrap(), mnt.to_str().unwrap(), &data])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "kernel EROFS mount of {}: {}",
        boot.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}
