//! The modes of `bench startup`: what each prepares before the first start (timed, with the
//! size of what it adds), and one cold start of each, under containerd (`ctr run`) or in a
//! `chroot` of a mounted tree, measured: pull/mount and run times, bytes over the link,
//! requests and blob bytes from the registry's access log, and, for zran's modes, the serving
//! process's counters (bytes files were read for against bytes fetched). Calls `sys`, `link`
//! and, in the library, `oci` (image sizes, the Nydus bootstrap layer) and `mount` (records).

use super::link::Link;
use super::sys;
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Full,
    Zran,
    ZranTrace,
    ZranEstargz,
    ZranNative,
    ZranZstdchunked,
    Stargz,
    Nydusd,
}

pub const ALL: [Mode; 8] = [
    Mode::Full,
    Mode::Zran,
    Mode::ZranTrace,
    Mode::ZranEstargz,
    Mode::ZranNative,
    Mode::ZranZstdchunked,
    Mode::Stargz,
    Mode::Nydusd,
];

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Zran => "zran",
            Mode::ZranTrace => "zran-trace",
            Mode::ZranEstargz => "zran-estargz",
            Mode::ZranNative => "zran-native",
            Mode::ZranZstdchunked => "zran-zstdchunked",
            Mode::Stargz => "stargz",
            Mode::Nydusd => "nydusd",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Mode> {
        ALL.into_iter().find(|m| m.name() == s.trim()).with_context(|| {
            let names: Vec<_> = ALL.iter().map(|m| m.name()).collect();
            format!("unknown mode {s:?} (modes: {})", names.join(", "))
        })
    }

    /// Does the mode's start read zran's serving-process counters?
    pub fn zran_served(self) -> bool {
        matches!(
            self,
            Mode::Zran | Mode::ZranTrace | Mode::ZranEstargz | Mode::ZranNative | Mode::ZranZstdchunked
        )
    }
}

/// How a mode's container is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Harness {
    /// A private containerd: pull (or `ctr-remote image rpull`) and `ctr run`.
    Containerd,
    /// The image's tree mounted or unpacked on this machine, the workload in `chroot` of it.
    Chroot,
}

impl Harness {
    pub fn name(self) -> &'static str {
        match self {
            Harness::Containerd => "containerd",
            Harness::Chroot => "chroot",
        }
    }
}

/// Everything the modes share: the link, the registry, the binaries, the workload.
pub struct Env {
    pub zran: PathBuf,
    pub work: PathBuf,
    pub link: Link,
    /// `NSIP:5000`: the registry without the delay (preparation).
    pub registry: String,
    /// The registry as the starts reach it (through the forwarder when there is a delay).
    pub registry_run: String,
    /// containerd's hosts directory: both addresses plain HTTP.
    pub certs: PathBuf,
    /// The registry's access log.
    pub registry_log: PathBuf,
    pub workload: Vec<String>,
    pub expect: String,
    pub containerd: bool,
    /// containerd, ctr and ctr-remote are installed (for the eStargz conversion).
    pub can_convert: bool,
    pub stargz_grpc: Option<PathBuf>,
    pub nydusd: Option<PathBuf>,
}

/// The repository every image of the bench is pushed to.
pub const REPO: &str = "bench";

const LONG: Duration = Duration::from_secs(3600);

/// The repository of the image whose artifact carries a recorded trace: a copy of the
/// original (artifacts are found by the image's digest, one per repository).
pub const TRACE_REPO: &str = "bench-trace";

impl Env {
    /// `REGISTRY/bench:TAG` (or `REGISTRY/REPO:TAG` when given `REPO:TAG`), for preparation.
    pub fn at(&self, tag: &str) -> String {
        in_repo(&self.registry, tag)
    }
    /// `REGISTRY_RUN/bench:TAG` (or `REGISTRY_RUN/REPO:TAG`), for starts.
    pub fn run_ref(&self, tag: &str) -> String {
        in_repo(&self.registry_run, tag)
    }
    pub fn harness(&self, mode: Mode) -> Harness {
        if self.containerd && mode != Mode::Nydusd { Harness::Containerd } else { Harness::Chroot }
    }
}

fn in_repo(registry: &str, tag: &str) -> String {
    if tag.contains(':') { format!("{registry}/{tag}") } else { format!("{registry}/{REPO}:{tag}") }
}

/// The sum of an image's layer sizes (compressed), as its manifest says.
pub fn layers_size(reference: &str) -> anyhow::Result<u64> {
    let image = open(reference)?;
    Ok(image.manifest.layers.iter().map(|l| l.size).sum())
}

/// Bytes of the layers of `reference`, which must all be zstd:chunked.
fn zstd_chunked_size(reference: &str) -> anyhow::Result<u64> {
    let image = open(reference)?;
    for (i, l) in image.manifest.layers.iter().enumerate() {
        let (format, _) = zran::artifact::inputs::layer_format(&image, l)?;
        if format != zran::artifact::inputs::LayerFormat::ZstdChunked {
            anyhow::bail!("{reference}: layer {i} is {}, not zstd:chunked", format.name());
        }
    }
    Ok(image.manifest.layers.iter().map(|l| l.size).sum())
}

fn open(reference: &str) -> anyhow::Result<zran::oci::Image> {
    let r: zran::oci::ImageRef = reference.parse()?;
    let opts = zran::oci::OpenOptions {
        platform: None,
        registry: zran::oci::RegistryOptions { plain_http: true, ..Default::default() },
    };
    zran::oci::open(&r, &opts).with_context(|| format!("cannot open {reference}"))
}

/// Bytes of the files below `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => total += dir_size(&e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

/// What one mode costs before its first start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prepared {
    /// The image the mode starts (`bench:TAG` in the bench's registry), once prepared.
    pub tag: Option<String>,
    /// What was done, e.g. "zran generate --push".
    pub step: String,
    /// Wall-clock seconds of that step (0 for `full`).
    pub seconds: f64,
    /// Bytes the step added to the registry: zran's artifact, or the converted image's
    /// layers; for `full`, the original image's layers.
    pub bytes: u64,
    /// Why the mode could not be prepared (it is then not run).
    pub error: Option<String>,
}

impl Prepared {
    pub fn failed(step: &str, e: impl std::fmt::Display) -> Prepared {
        Prepared { tag: None, step: step.to_string(), seconds: 0.0, bytes: 0, error: Some(e.to_string()) }
    }
}

/// Push the image under test to the bench's registry as `bench:original` (skopeo).
pub fn push_original(
    env: &Env,
    image: &str,
    image_args: &super::super::image::ImageArgs,
) -> anyhow::Result<()> {
    let src = if let Some(rest) = image.strip_prefix("oci:") {
        format!("oci:{rest}")
    } else {
        format!("docker://{image}")
    };
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--quiet", "--dest-tls-verify=false"]);
    if image_args.plain_http {
        cmd.arg("--src-tls-verify=false");
    }
    if let Some(c) = &image_args.creds {
        cmd.args(["--src-creds", c]);
    }
    if let Some(p) = &image_args.platform {
        let p = p.to_string();
        let mut parts = p.split('/');
        if let Some(os) = parts.next() {
            cmd.args(["--override-os", os]);
        }
        if let Some(arch) = parts.next() {
            cmd.args(["--override-arch", arch]);
        }
        if let Some(v) = parts.next() {
            cmd.args(["--override-variant", v]);
        }
    }
    cmd.arg(&src).arg(format!("docker://{}", env.at("original")));
    sys::run(&mut cmd, LONG).with_context(|| format!("cannot copy {image} to the bench's registry"))?;
    Ok(())
}

/// `zran generate bench:original --push`: the artifact beside the image.
pub fn prepare_zran(env: &Env) -> Prepared {
    let dir = env.work.join("artifact");
    let t = Instant::now();
    let r = sys::run(
        Command::new(&env.zran)
            .args(["generate", &env.at("original"), "--plain-http", "--push", "--force", "-o"])
            .arg(&dir),
        LONG,
    );
    match r {
        Ok(_) => Prepared {
            tag: Some("original".into()),
            step: "zran generate --push".into(),
            seconds: t.elapsed().as_secs_f64(),
            bytes: dir_size(&dir),
            error: None,
        },
        Err(e) => Prepared::failed("zran generate --push", format!("{e:#}")),
    }
}

/// zran with a start-up trace: the original image copied to its own repository, its artifact
/// generated and pushed there, one start of the workload recorded (`record_traces` of the
/// snapshotter, or `zran mount --record-trace` in chroot), then the artifact generated again
/// with that trace as its prefetch table (`generate --prefetch-trace`) and pushed.
pub fn prepare_trace(env: &Env) -> Prepared {
    const STEP: &str = "zran generate --push, a recorded start, generate --prefetch-trace --push";
    let tag = format!("{TRACE_REPO}:original");
    let dir = env.work.join("artifact-trace");
    let traces = env.work.join("traces");
    let t = Instant::now();
    let generate = |trace: Option<&Path>| {
        let mut cmd = Command::new(&env.zran);
        cmd.args(["generate", &env.at(&tag), "--plain-http", "--push", "--force", "-o"]).arg(&dir);
        if let Some(t) = trace {
            cmd.arg("--prefetch-trace").arg(t);
        }
        sys::run(&mut cmd, LONG)
    };
    let r = (|| -> anyhow::Result<()> {
        sys::run(
            Command::new("skopeo")
                .args(["copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false"])
                .arg(format!("docker://{}", env.at("original")))
                .arg(format!("docker://{}", env.at(&tag))),
            LONG,
        )?;
        generate(None)?;
        let _ = std::fs::remove_dir_all(&traces);
        std::fs::create_dir_all(&traces)?;
        start_with(env, Mode::ZranTrace, &tag, 0, Some(&traces)).context("the recorded start")?;
        let trace = std::fs::read_dir(&traces)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "json"))
            .context("the recorded start left no trace")?;
        generate(Some(&trace))?;
        Ok(())
    })();
    match r {
        Ok(()) => Prepared {
            tag: Some(tag),
            step: "zran generate --prefetch-trace --push".into(),
            seconds: t.elapsed().as_secs_f64(),
            bytes: dir_size(&dir),
            error: None,
        },
        Err(e) => Prepared::failed(STEP, format!("{e:#}")),
    }
}

/// `ctr-remote image convert --estargz --oci` in a private containerd, pushed as
/// `bench:estargz` (the pull into that containerd is part of the time).
pub fn prepare_estargz(env: &Env) -> Prepared {
    const STEP: &str = "ctr-remote image convert --estargz --oci + push";
    if !env.can_convert {
        return Prepared::failed(STEP, "needs containerd, ctr and ctr-remote");
    }
    let dir = env.work.join("convert");
    let t = Instant::now();
    let r = (|| -> anyhow::Result<()> {
        let ctd = Containerd::start(&dir, None)?;
        let r = (|| -> anyhow::Result<()> {
            let (src, dst) = (env.at("original"), env.at("estargz"));
            sys::run(ctd.ctr("ctr").args(["image", "pull", "--plain-http", &src]), LONG)?;
            sys::run(
                ctd.ctr("ctr-remote").args(["image", "convert", "--estargz", "--oci", &src, &dst]),
                LONG,
            )?;
            sys::run(ctd.ctr("ctr").args(["image", "push", "--plain-http", &dst]), LONG)?;
            Ok(())
        })();
        ctd.stop();
        r
    })();
    teardown(&dir);
    let seconds = t.elapsed().as_secs_f64();
    match r.and_then(|()| layers_size(&env.at("estargz"))) {
        Ok(bytes) => Prepared { tag: Some("estargz".into()), step: STEP.into(), seconds, bytes, error: None },
        Err(e) => Prepared::failed(STEP, format!("{e:#}")),
    }
}

/// `skopeo copy --dest-compress-format zstd:chunked` of `bench:original` to
/// `bench:zstdchunked`, as podman and buildah users push. Through an OCI layout of its own:
/// copied registry to registry, skopeo would reuse the gzip layers the registry already holds
/// (its blob-info cache knows them as the same content) and push no zstd at all.
pub fn prepare_zstdchunked(env: &Env) -> Prepared {
    const STEP: &str = "skopeo copy --dest-compress-format zstd:chunked";
    let layout = env.work.join("zstdchunked");
    let t = Instant::now();
    let r = sys::run(
        Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false", "--dest-compress-format", "zstd:chunked"])
            .arg(format!("docker://{}", env.at("original")))
            .arg(format!("oci:{}:bench", layout.display())),
        LONG,
    )
    .and_then(|_| {
        sys::run(
            Command::new("skopeo")
                .args(["copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false"])
                .arg(format!("oci:{}:bench", layout.display()))
                .arg(format!("docker://{}", env.at("zstdchunked"))),
            LONG,
        )
    });
    let _ = std::fs::remove_dir_all(&layout);
    let seconds = t.elapsed().as_secs_f64();
    match r.and_then(|_| zstd_chunked_size(&env.at("zstdchunked"))) {
        Ok(bytes) => {
            Prepared { tag: Some("zstdchunked".into()), step: STEP.into(), seconds, bytes, error: None }
        }
        Err(e) => Prepared::failed(STEP, format!("{e:#}")),
    }
}

/// Does this zran have `convert`?
pub fn has_convert(zran: &Path) -> bool {
    Command::new(zran)
        .args(["convert", "--help"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `zran convert bench:original bench:native`: the Nydus native image.
pub fn prepare_native(env: &Env) -> Prepared {
    const STEP: &str = "zran convert";
    if !has_convert(&env.zran) {
        return Prepared::failed(STEP, "this zran has no `convert` command");
    }
    let t = Instant::now();
    let r = sys::run(
        Command::new(&env.zran).args(["convert", &env.at("original"), &env.at("native"), "--plain-http"]),
        LONG,
    );
    let seconds = t.elapsed().as_secs_f64();
    match r.and_then(|_| layers_size(&env.at("native"))) {
        Ok(bytes) => Prepared { tag: Some("native".into()), step: STEP.into(), seconds, bytes, error: None },
        Err(e) => Prepared::failed(STEP, format!("{e:#}")),
    }
}

/// One cold start, measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds from the start of the pull (or mount) to the workload's exit with the expected
    /// output; the pull/mount part; the run part.
    pub total_s: f64,
    pub pull_s: f64,
    pub run_s: f64,
    /// Bytes received by the host end of the link.
    pub link_rx_bytes: u64,
    /// GETs of /v2/*/blobs/ in the registry's access log, and the body bytes it sent for them.
    pub registry_blob_requests: u64,
    pub registry_blob_bytes: u64,
    /// All requests the registry logged (manifests, HEADs, /v2/).
    pub registry_requests: u64,
    /// zran's counters (zran modes): sizes of the files the start read, compressed bytes
    /// fetched.
    pub file_bytes_read: Option<u64>,
    pub bytes_fetched: Option<u64>,
    /// The workload's standard output (at most 4 KiB).
    pub output: String,
}

/// The registry's access log from `offset`: (blob GETs, their bytes, all requests).
pub fn registry_counts(log: &Path, offset: u64) -> (u64, u64, u64) {
    let bytes = std::fs::read(log).unwrap_or_default();
    let from = (offset as usize).min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[from..]);
    let (mut gets, mut sent, mut all) = (0, 0, 0);
    for line in text.lines() {
        // Combined log format: HOST - - [TIME] "METHOD PATH PROTO" STATUS BYTES "REF" "UA"
        let Some((_, rest)) = line.split_once(" \"") else { continue };
        let Some((request, after)) = rest.split_once("\" ") else { continue };
        let mut req = request.split(' ');
        let (Some(method), Some(path)) = (req.next(), req.next()) else { continue };
        if !path.starts_with("/v2/") {
            continue;
        }
        all += 1;
        let mut f = after.split(' ');
        let _status = f.next();
        let n: u64 = f.next().and_then(|b| b.parse().ok()).unwrap_or(0);
        if method == "GET" && path.contains("/blobs/") {
            gets += 1;
            sent += n;
        }
    }
    (gets, sent, all)
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// A private containerd under `dir`, with a snapshotter as a proxy plugin if given.
struct Containerd {
    child: Child,
    sock: PathBuf,
}

impl Containerd {
    fn start(dir: &Path, plugin: Option<(&str, &Path)>) -> anyhow::Result<Containerd> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let sock = dir.join("ctd.sock");
        let proxy = match plugin {
            Some((name, addr)) => {
                format!("[proxy_plugins.{name}]\n  type = \"snapshot\"\n  address = \"{}\"\n", addr.display())
            }
            None => String::new(),
        };
        let config = format!(
            "version = 2\nroot = \"{d}/ctd/root\"\nstate = \"{d}/ctd/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{s}\"\n[ttrpc]\n  address = \"{s}.ttrpc\"\n\
             [metrics]\n  address = \"\"\n[proxy_plugins]\n{proxy}\
             [plugins]\n  [plugins.\"io.containerd.internal.v1.opt\"]\n    path = \"{d}/ctd/opt\"\n",
            d = dir.display(),
            s = sock.display(),
        );
        let path = dir.join("containerd.toml");
        std::fs::write(&path, config)?;
        let child =
            sys::spawn(Command::new("containerd").arg("--config").arg(&path), &dir.join("containerd.log"))?;
        let mut c = Containerd { child, sock };
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            sys::check()?;
            if let Ok(Some(s)) = c.child.try_wait() {
                bail!("containerd exited ({s}): see {}", dir.join("containerd.log").display());
            }
            let ok = Command::new("ctr")
                .arg("-a")
                .arg(&c.sock)
                .arg("version")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(c);
            }
            if Instant::now() > end {
                c.stop_ref();
                bail!("containerd did not answer in 30 s: see {}", dir.join("containerd.log").display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ctr(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.arg("-a").arg(&self.sock);
        c
    }

    fn stop_ref(&mut self) {
        sys::stop_child(&mut self.child, Duration::from_secs(10));
    }

    fn stop(self) {
        drop(self);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop_ref();
    }
}

/// Everything a start left under `dir`: processes naming it, mounts, files.
pub fn teardown(dir: &Path) {
    sys::stop_naming(dir);
    sys::unmount_under(dir);
    let _ = std::fs::remove_dir_all(dir);
}

/// Wait until `sock` exists (its daemon still running).
fn wait_socket(sock: &Path, child: &mut Child, what: &str, log: &Path) -> anyhow::Result<()> {
    let limits = (Duration::from_secs(30), Duration::from_millis(50));
    sys::wait_ready(child, what, log, &format!("listen on {}", sock.display()), limits, || sock.exists())
}

/// Counters of zran's serving processes whose records are under `cache`, summed.
fn zran_counters(cache: &Path) -> (Option<u64>, Option<u64>) {
    let Ok(records) = zran::mount::list(cache) else { return (None, None) };
    if records.is_empty() {
        return (None, None);
    }
    let get = |k: &str| records.iter().map(|r| r.stats.get(k).and_then(|v| v.as_u64()).unwrap_or(0)).sum();
    (Some(get("file_bytes_read")), Some(get("bytes_fetched")))
}

/// The start's stdout must contain the expected text.
fn check_output(env: &Env, out: &str) -> anyhow::Result<String> {
    let kept: String = out.chars().take(4096).collect();
    if !out.contains(&env.expect) {
        bail!("the workload's output does not contain {:?}: {:?}", env.expect, sys::last_lines(&kept, 5));
    }
    Ok(kept)
}

/// One cold start of `mode` on `tag`: fresh daemons and state, page cache dropped.
pub fn start(env: &Env, mode: Mode, tag: &str, n: usize) -> anyhow::Result<Sample> {
    start_with(env, mode, tag, n, None)
}

/// [`start`], recording zran's start-up trace into the directory `traces` when given.
fn start_with(env: &Env, mode: Mode, tag: &str, n: usize, traces: Option<&Path>) -> anyhow::Result<Sample> {
    let dir = env.work.join("run");
    teardown(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let r = match env.harness(mode) {
        Harness::Containerd => start_containerd(env, mode, tag, n, &dir, traces),
        Harness::Chroot => start_chroot(env, mode, tag, &dir, traces),
    };
    teardown(&dir);
    r
}

/// Measure around `pull` and `run`; the counters of the link and the registry log.
fn measure(
    env: &Env,
    pull: impl FnOnce() -> anyhow::Result<()>,
    run: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<Sample> {
    sys::drop_caches()?;
    let rx0 = env.link.rx_bytes()?;
    let log0 = file_len(&env.registry_log);
    let t0 = Instant::now();
    pull()?;
    let t1 = Instant::now();
    let out = run()?;
    let t2 = Instant::now();
    let output = check_output(env, &out)?;
    let rx1 = env.link.rx_bytes()?;
    // The registry writes its log line when a response ends.
    sys::sleep(Duration::from_millis(300))?;
    let (gets, sent, all) = registry_counts(&env.registry_log, log0);
    Ok(Sample {
        total_s: (t2 - t0).as_secs_f64(),
        pull_s: (t1 - t0).as_secs_f64(),
        run_s: (t2 - t1).as_secs_f64(),
        link_rx_bytes: rx1.saturating_sub(rx0),
        registry_blob_requests: gets,
        registry_blob_bytes: sent,
        registry_requests: all,
        file_bytes_read: None,
        bytes_fetched: None,
        output,
    })
}

fn start_containerd(
    env: &Env,
    mode: Mode,
    tag: &str,
    n: usize,
    dir: &Path,
    traces: Option<&Path>,
) -> anyhow::Result<Sample> {
    let snap_sock = dir.join("snap.sock");
    let snap_log = dir.join("snapshotter.log");
    let zroot = dir.join("zran");
    let cache = zroot.join("cache");
    let mut snapshotter: Option<Child> = None;
    let r = (|| -> anyhow::Result<Sample> {
        let name = match mode {
            Mode::Full => "overlayfs",
            Mode::Zran | Mode::ZranTrace | Mode::ZranEstargz | Mode::ZranNative | Mode::ZranZstdchunked => {
                let mut config = format!(
                    "root = \"{}\"\naddress = \"{}\"\n[registry]\nconfig_path = \"{}\"\n",
                    zroot.display(),
                    snap_sock.display(),
                    env.certs.display()
                );
                if let Some(t) = traces {
                    config.push_str(&format!("[mount]\nrecord_traces = \"{}\"\n", t.display()));
                }
                let path = dir.join("zran.toml");
                std::fs::write(&path, config)?;
                let mut cmd = Command::new(&env.zran);
                cmd.args(["snapshotter", "--config"]).arg(&path);
                // The TOC formats (eStargz, zstd:chunked) are served from their TOCs.
                if matches!(mode, Mode::ZranEstargz | Mode::ZranZstdchunked) {
                    cmd.arg("--enable-stargz");
                }
                let mut child = sys::spawn(&mut cmd, &snap_log)?;
                let w = wait_socket(&snap_sock, &mut child, "zran snapshotter", &snap_log);
                snapshotter = Some(child);
                w?;
                "zran"
            }
            Mode::Stargz => {
                let bin = env.stargz_grpc.as_ref().context("containerd-stargz-grpc not found")?;
                let mut config = String::from("no_prometheus = true\n");
                for host in [&env.registry, &env.registry_run] {
                    config.push_str(&format!(
                        "[resolver.host.\"{host}\"]\n  mirrors = [{{ host = \"{host}\", insecure = true }}]\n"
                    ));
                }
                let path = dir.join("stargz.toml");
                std::fs::write(&path, config)?;
                let mut cmd = Command::new(bin);
                cmd.arg("-address")
                    .arg(&snap_sock)
                    .arg("-root")
                    .arg(dir.join("stargz"))
                    .arg("-config")
                    .arg(&path);
                let mut child = sys::spawn(&mut cmd, &snap_log)?;
                let w = wait_socket(&snap_sock, &mut child, "containerd-stargz-grpc", &snap_log);
                snapshotter = Some(child);
                w?;
                "stargz"
            }
            Mode::Nydusd => bail!("nydusd runs in chroot"),
        };
        let plugin = (name != "overlayfs").then_some((name, snap_sock.as_path()));
        let ctd = Containerd::start(&dir.join("containerd"), plugin)?;
        let image = env.run_ref(tag);
        let id = format!("zranbench-{}-{n}", std::process::id());
        let r = measure(
            env,
            || {
                let mut cmd = if mode == Mode::Full {
                    let mut c = ctd.ctr("ctr");
                    c.args(["image", "pull", "--plain-http", &image]);
                    c
                } else {
                    let mut c = ctd.ctr("ctr-remote");
                    c.args(["image", "rpull", "--plain-http", "--snapshotter", name, &image]);
                    c
                };
                sys::run(&mut cmd, LONG).map(|_| ())
            },
            || {
                let mut c = ctd.ctr("ctr");
                c.args(["run", "--rm", "--snapshotter", name, &image, &id]).args(&env.workload);
                sys::run(&mut c, LONG).map(|o| o.stdout)
            },
        );
        let mut s = r.map_err(|e| {
            let log = std::fs::read_to_string(&snap_log).unwrap_or_default();
            if log.trim().is_empty() {
                e
            } else {
                e.context(format!("snapshotter: {}", sys::last_lines(&log, 3)))
            }
        })?;
        if mode.zran_served() {
            // Serving processes write their counters every second.
            sys::sleep(Duration::from_millis(1500))?;
            (s.file_bytes_read, s.bytes_fetched) = zran_counters(&cache);
        }
        ctd.stop();
        Ok(s)
    })();
    if let Some(mut c) = snapshotter {
        sys::stop_child(&mut c, Duration::from_secs(10));
    }
    r
}

fn chroot_run(env: &Env, root: &Path) -> anyhow::Result<String> {
    let mut c = Command::new("chroot");
    c.arg(root).args(&env.workload);
    sys::run(&mut c, LONG).map(|o| o.stdout)
}

fn wait_mounted(mnt: &Path, child: &mut Child, what: &str, log: &Path) -> anyhow::Result<()> {
    let limits = (Duration::from_secs(60), Duration::from_millis(20));
    sys::wait_ready(child, what, log, &format!("mount {}", mnt.display()), limits, || {
        sys::mounts_under(mnt).iter().any(|m| Path::new(m) == mnt)
    })
}

fn start_chroot(
    env: &Env,
    mode: Mode,
    tag: &str,
    dir: &Path,
    traces: Option<&Path>,
) -> anyhow::Result<Sample> {
    let image = env.run_ref(tag);
    let mnt = dir.join("rootfs");
    match mode {
        Mode::Full => {
            let layout = dir.join("layout");
            let bundle = dir.join("bundle");
            measure(
                env,
                || {
                    sys::run(
                        Command::new("skopeo")
                            .args(["copy", "--quiet", "--src-tls-verify=false"])
                            .arg(format!("docker://{image}"))
                            .arg(format!("oci:{}:bench", layout.display())),
                        LONG,
                    )?;
                    sys::run(
                        Command::new("umoci")
                            .args(["unpack", "--image"])
                            .arg(format!("{}:bench", layout.display()))
                            .arg(&bundle),
                        LONG,
                    )
                    .map(|_| ())
                },
                || chroot_run(env, &bundle.join("rootfs")),
            )
        }
        Mode::Zran | Mode::ZranTrace | Mode::ZranEstargz | Mode::ZranNative | Mode::ZranZstdchunked => {
            let cache = dir.join("cache");
            std::fs::create_dir_all(&mnt)?;
            let mut s = measure(
                env,
                || {
                    let mut cmd = Command::new(&env.zran);
                    cmd.args(["mount", &image]).arg(&mnt).args(["--plain-http", "--cache-dir"]).arg(&cache);
                    if let Some(t) = traces {
                        cmd.arg("--record-trace").arg(t.join("trace.json"));
                    }
                    sys::run(&mut cmd, LONG).map(|_| ())
                },
                || chroot_run(env, &mnt),
            )?;
            let _ = sys::run(
                Command::new(&env.zran).arg("umount").arg(&mnt).arg("--cache-dir").arg(&cache),
                Duration::from_secs(30),
            );
            (s.file_bytes_read, s.bytes_fetched) = zran_counters(&cache);
            Ok(s)
        }
        Mode::Nydusd => start_nydusd(env, &image, dir),
        Mode::Stargz => bail!("containerd-stargz-grpc needs containerd"),
    }
}

/// nydusd over the registry (through the link): the bootstrap layer of the converted image
/// fetched and unpacked (part of the pull), then a FUSE mount of it, the workload in chroot.
fn start_nydusd(env: &Env, image: &str, dir: &Path) -> anyhow::Result<Sample> {
    let bin = env.nydusd.clone().context("nydusd not found")?;
    let mnt = dir.join("rootfs");
    let cache = dir.join("nydus-cache");
    let boot_dir = dir.join("bootstrap");
    for d in [&mnt, &cache, &boot_dir] {
        std::fs::create_dir_all(d)?;
    }
    let log = dir.join("nydusd.log");
    let mut child: Option<Child> = None;
    let (host, _) = image.split_once('/').context("no registry in the image reference")?;
    let r = measure(
        env,
        || {
            let img = open(image)?;
            let layer = img
                .manifest
                .layers
                .iter()
                .rev()
                .find(|l| {
                    l.annotations.get("containerd.io/snapshot/nydus-bootstrap").is_some_and(|v| v == "true")
                })
                .or(img.manifest.layers.last())
                .context("the converted image has no layers")?;
            let bytes = img.source.fetch(&layer.digest, 1 << 30)?;
            let tarball = dir.join("bootstrap.tar");
            std::fs::write(&tarball, bytes)?;
            sys::run(Command::new("tar").arg("-xf").arg(&tarball).arg("-C").arg(&boot_dir), LONG)?;
            let boot = ["image/image.boot", "image.boot"]
                .iter()
                .map(|p| boot_dir.join(p))
                .find(|p| p.exists())
                .context("no image.boot in the bootstrap layer")?;
            let config = serde_json::json!({
                "device": {
                    "backend": {"type": "registry", "config": {"host": host, "repo": REPO, "scheme": "http"}},
                    "cache": {"type": "blobcache", "config": {"work_dir": cache}},
                },
                "mode": "direct",
                "digest_validate": false,
                "enable_xattr": true,
            });
            let cfg = dir.join("nydusd.json");
            std::fs::write(&cfg, serde_json::to_vec_pretty(&config)?)?;
            let mut cmd = Command::new(&bin);
            cmd.arg("--config").arg(&cfg).arg("--mountpoint").arg(&mnt).arg("--bootstrap").arg(&boot);
            cmd.args(["--rlimit-nofile", "0"]);
            let mut c = sys::spawn(&mut cmd, &log)?;
            let w = wait_mounted(&mnt, &mut c, "nydusd", &log);
            child = Some(c);
            w
        },
        || chroot_run(env, &mnt),
    );
    sys::unmount_under(&mnt);
    if let Some(mut c) = child {
        sys::stop_child(&mut c, Duration::from_secs(10));
    }
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn access_log() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(
            &p,
            concat!(
                "127.0.0.1 - - [30/Nov/2026:15:00:00 +0000] \"GET /v2/ HTTP/1.1\" 200 2 \"\" \"ctr\"\n",
                "127.0.0.1 - - [30/Nov/2026:15:00:00 +0000] \"HEAD /v2/bench/manifests/x HTTP/1.1\" 200 0 \"\" \"ctr\"\n",
                "127.0.0.1 - - [30/Nov/2026:15:00:01 +0000] \"GET /v2/bench/blobs/sha256:ab HTTP/1.1\" 206 1000 \"\" \"zran\"\n",
                "time=\"x\" level=info msg=\"response completed\"\n",
                "127.0.0.1 - - [30/Nov/2026:15:00:01 +0000] \"GET /v2/bench/blobs/sha256:cd HTTP/1.1\" 200 24 \"\" \"ctr\"\n",
            ),
        )
        .unwrap();
        assert_eq!(super::registry_counts(&p, 0), (2, 1024, 4));
        let second = std::fs::read_to_string(&p).unwrap().lines().take(2).map(|l| l.len() + 1).sum::<usize>();
        assert_eq!(super::registry_counts(&p, second as u64), (2, 1024, 2));
    }

    #[test]
    fn modes() {
        for m in super::ALL {
            assert_eq!(super::Mode::parse(m.name()).unwrap(), m);
        }
        assert!(super::Mode::parse("overlay").is_err());
    }
}
