//! `zran bench startup IMAGE`: container start-up compared across ways of running one image,
//! from cold, over a shaped link to a private registry (`docker-registry` in a network
//! namespace of this run): containerd's full pull, zran on the original image, zran on its
//! eStargz and Nydus-native conversions, and the peers found on the machine
//! (containerd-stargz-grpc, nydusd). `mod.rs` parses the arguments and runs the bench, with
//! every process, namespace and mount it made undone at the end, on error and on
//! SIGINT/SIGTERM; `link` owns the namespace and the shaping, `proxy` the delaying forwarder
//! (`zran bench proxy`, hidden), `modes` preparation and starts, `report` the table, JSON and
//! SVG, `sys` processes, signals and mounts. Binary only: it drives other programs
//! (containerd, ctr, skopeo, zran itself) and the library has no use for it.

mod link;
mod modes;
mod proxy;
mod report;
mod sys;

use super::image::ImageArgs;
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use modes::{Env, Harness, Mode, Prepared};
use report::{ModeReport, Report};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Compare the start-up of a container from IMAGE: full pull, zran, zran on eStargz and
    /// Nydus-native conversions, containerd-stargz-grpc and nydusd, over a shaped link to a
    /// private registry. Run as root.
    Startup(Box<StartupArgs>),
    /// Draw the chart of a report `startup --json` wrote, again.
    Plot(PlotArgs),
    /// A TCP forwarder delaying each direction (used by `startup` inside its namespace).
    #[command(hide = true)]
    Proxy(proxy::ProxyArgs),
}

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// The report (`zran bench startup --json FILE`).
    pub json: PathBuf,
    /// The SVG file to write.
    pub svg: PathBuf,
}

#[derive(Debug, Args)]
pub struct StartupArgs {
    /// The image: `oci:PATH[:TAG]` or `[HOST[:PORT]/]REPO[:TAG|@DIGEST]`.
    pub image: String,
    /// The command started in the container, split as a shell splits words (no shell runs it).
    #[arg(long)]
    pub workload: String,
    /// Text the workload's standard output must contain: the start counts until then.
    #[arg(long)]
    pub expect: String,
    /// Bandwidth of the link in Mbit/s (tbf on both veth ends; 0: unshaped).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Delay added in each direction, in ms (by `zran bench proxy` in the namespace; 0: none).
    #[arg(long, default_value_t = 20)]
    pub delay: u64,
    /// Cold starts per mode (modes take turns going first).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Modes to compare, comma-separated: full, zran, zran-trace, zran-estargz, zran-native,
    /// zran-zstdchunked, stargz, nydusd.
    #[arg(
        long,
        default_value = "full,zran,zran-trace,zran-estargz,zran-native,zran-zstdchunked,stargz,nydusd"
    )]
    pub modes: String,
    /// Write the report as JSON (schema: formats/bench-startup.md).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw start times per mode (pull and run stacked) as an SVG bar chart.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Leave the namespace, the registry and the work directory up at the end (and say how to
    /// reach and remove them).
    #[arg(long)]
    pub keep: bool,
    /// Work directory (registry storage, daemons' state, mounts) [default:
    /// /var/tmp/zran-bench-PID, removed at the end].
    #[arg(long, value_name = "DIR")]
    pub work: Option<PathBuf>,
    /// containerd-stargz-grpc [default: on PATH, else
    /// benches/work/stargz_peer/build/containerd-stargz-grpc].
    #[arg(long, value_name = "PATH")]
    pub stargz_grpc: Option<PathBuf>,
    /// Nydus's daemon [default: on PATH, else /opt/nydus/bin/nydusd].
    #[arg(long, value_name = "PATH")]
    pub nydusd: Option<PathBuf>,
    /// Run every mode in chroot of its mounted or unpacked tree even where containerd is
    /// installed (the harness used without containerd).
    #[arg(long, hide = true)]
    pub chroot: bool,
    #[command(flatten)]
    pub image_args: ImageArgs,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Startup(args) => startup(*args),
        BenchCommand::Proxy(args) => proxy::run(args),
        BenchCommand::Plot(args) => report::plot(&report::read_json(&args.json)?, &args.svg),
    }
}

/// What the bench started and made, undone when dropped (unless `--keep`).
struct Guard {
    work: PathBuf,
    remove_work: bool,
    link: Option<link::Link>,
    children: Vec<Child>,
    keep: bool,
}

impl Guard {
    fn cleanup(&mut self) {
        for c in &mut self.children {
            sys::stop_child(c, Duration::from_secs(5));
        }
        self.children.clear();
        modes::teardown(&self.work.join("run"));
        modes::teardown(&self.work.join("convert"));
        sys::stop_naming(&self.work);
        sys::unmount_under(&self.work);
        if let Some(l) = self.link.take() {
            l.down();
        }
        if self.remove_work {
            let _ = std::fs::remove_dir_all(&self.work);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.keep && !sys::interrupted() {
            // Daemons of the last start are gone already; the registry and forwarder stay.
            modes::teardown(&self.work.join("run"));
            return;
        }
        self.cleanup();
    }
}

fn find_tool(explicit: Option<&Path>, name: &str, fallbacks: &[PathBuf]) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return sys::which(&p.to_string_lossy());
    }
    sys::which(name)
        .or_else(|| fallbacks.iter().find(|p| sys::which(&p.to_string_lossy()).is_some()).cloned())
}

/// GET /v2/ answered 200 (through the forwarder too).
fn registry_answers(addr: &str) -> bool {
    let Ok(sa) = addr.parse::<std::net::SocketAddr>() else { return false };
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(2)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

fn wait_registry(addr: &str, child: &mut Child, what: &str, log: &Path) -> anyhow::Result<()> {
    let limits = (Duration::from_secs(30), Duration::from_millis(100));
    sys::wait_ready(child, what, log, &format!("answer on {addr}"), limits, || registry_answers(addr))
}

fn progress() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed}] {msg}") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

pub fn startup(args: StartupArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("zran bench startup must run as root (network namespaces, tc, containerd, mounts)");
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if !(args.rate.is_finite() && args.rate >= 0.0) {
        bail!("--rate must be a number of Mbit/s, 0 for unshaped");
    }
    let workload = shlex::split(&args.workload).context("--workload: unbalanced quotes")?;
    if workload.is_empty() {
        bail!("--workload is empty");
    }
    let mut wanted: Vec<Mode> = Vec::new();
    for m in args.modes.split(',').filter(|m| !m.trim().is_empty()) {
        let m = Mode::parse(m)?;
        if !wanted.contains(&m) {
            wanted.push(m);
        }
    }
    if wanted.is_empty() {
        bail!("--modes names no mode");
    }
    let missing: Vec<&str> = ["ip", "tc", "docker-registry", "skopeo", "tar"]
        .into_iter()
        .filter(|t| sys::which(t).is_none())
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing on this machine: {} (Debian: iproute2, docker-registry, skopeo, tar)",
            missing.join(", ")
        );
    }
    let ctd_missing: Vec<&str> =
        ["containerd", "ctr", "ctr-remote", "runc"].into_iter().filter(|t| sys::which(t).is_none()).collect();
    let containerd = ctd_missing.is_empty() && !args.chroot;
    if !ctd_missing.is_empty() {
        eprintln!(
            "warning: {} missing: every mode runs in chroot of a mounted tree (full: skopeo + umoci)",
            ctd_missing.join(", ")
        );
    }
    let zran = std::env::current_exe().context("cannot find the zran executable")?;
    let exe_repo = zran.parent().and_then(|p| p.parent()).and_then(|p| p.parent()).map(Path::to_path_buf);
    let sgz_rel = Path::new("benches/work/stargz_peer/build/containerd-stargz-grpc");
    let mut sgz_fallbacks = vec![sgz_rel.to_path_buf()];
    if let Some(r) = &exe_repo {
        sgz_fallbacks.push(r.join(sgz_rel));
    }
    let stargz_grpc = find_tool(args.stargz_grpc.as_deref(), "containerd-stargz-grpc", &sgz_fallbacks)
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p));
    let nydusd = find_tool(args.nydusd.as_deref(), "nydusd", &[PathBuf::from("/opt/nydus/bin/nydusd")]);

    sys::catch_signals()?;
    let (work, remove_work) = match &args.work {
        Some(w) => (w.clone(), false),
        None => (PathBuf::from(format!("/var/tmp/zran-bench-{}", std::process::id())), !args.keep),
    };
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let work = std::fs::canonicalize(&work)?;
    let mut guard =
        Guard { work: work.clone(), remove_work, link: None, children: Vec::new(), keep: args.keep };
    let bar = progress();
    let tools = Tools { containerd, can_convert: ctd_missing.is_empty(), zran, stargz_grpc, nydusd };
    let result = bench(&args, &mut guard, &bar, workload, &wanted, tools);
    bar.finish_and_clear();
    if let Err(e) = &result {
        if sys::interrupted() {
            eprintln!("interrupted: cleaning up");
        } else {
            tracing::debug!("bench failed: {e:#}");
        }
    }
    if args.keep && !sys::interrupted() {
        if let Some(l) = &guard.link {
            let pids: Vec<String> = guard.children.iter().map(|c| c.id().to_string()).collect();
            eprintln!(
                "kept: namespace {ns} (ip netns exec {ns} ...), veth {h} ({hip}) <-> {n} ({nip}), registry http://{nip}:5000 \
                 (forwarder :6000), work directory {w}; processes {p}.\n\
                 remove with: kill {p}; ip netns del {ns}  (the veth pair goes with it); rm -rf {w}",
                ns = l.ns,
                h = l.host_if,
                n = l.ns_if,
                hip = l.host_ip,
                nip = l.ns_ip,
                w = work.display(),
                p = pids.join(" ")
            );
        }
        // The children are left running on purpose.
        for c in guard.children.drain(..) {
            std::mem::forget(c);
        }
    }
    drop(guard);
    result
}

/// The programs found, and the harness.
struct Tools {
    containerd: bool,
    can_convert: bool,
    zran: PathBuf,
    stargz_grpc: Option<PathBuf>,
    nydusd: Option<PathBuf>,
}

fn bench(
    args: &StartupArgs,
    guard: &mut Guard,
    bar: &ProgressBar,
    workload: Vec<String>,
    wanted: &[Mode],
    tools: Tools,
) -> anyhow::Result<()> {
    let Tools { containerd, can_convert, zran, stargz_grpc, nydusd } = tools;
    let work = guard.work.clone();
    let started =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());

    bar.set_message("network namespace");
    let l = link::Link::new()?;
    guard.link = Some(l);
    let l = guard.link.as_ref().context("link")?;
    l.up()?;

    bar.set_message("registry");
    let reg = work.join("registry");
    std::fs::create_dir_all(reg.join("storage"))?;
    let config = format!(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    \
         rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 0.0.0.0:5000\n",
        reg.join("storage").display()
    );
    let reg_config = reg.join("config.yml");
    std::fs::write(&reg_config, config)?;
    let access_log = reg.join("access.log");
    let reg_err = reg.join("registry.log");
    let mut child = sys::spawn_split(
        l.exec("docker-registry".as_ref()).arg("serve").arg(&reg_config),
        &access_log,
        &reg_err,
    )?;
    let registry = format!("{}:5000", l.ns_ip);
    let w = wait_registry(&registry, &mut child, "docker-registry", &reg_err);
    guard.children.push(child);
    w?;
    let registry_run = if args.delay > 0 {
        let listen = format!("{}:6000", l.ns_ip);
        let mut cmd = l.exec(zran.as_os_str());
        cmd.args(["bench", "proxy", "--listen", &listen, "--target", "127.0.0.1:5000"]);
        cmd.args(["--delay", &args.delay.to_string(), "--label"]).arg(&work);
        let proxy_log = work.join("proxy.log");
        let mut child = sys::spawn(&mut cmd, &proxy_log)?;
        let w = wait_registry(&listen, &mut child, "zran bench proxy", &proxy_log);
        guard.children.push(child);
        w?;
        listen
    } else {
        registry.clone()
    };
    let certs = work.join("certs.d");
    for addr in [&registry, &registry_run] {
        let d = certs.join(addr);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("hosts.toml"), format!("server = \"http://{addr}\"\n"))?;
    }
    let env = Env {
        zran,
        work: work.clone(),
        link: l.clone(),
        registry,
        registry_run,
        certs,
        registry_log: access_log,
        workload: workload.clone(),
        expect: args.expect.clone(),
        containerd,
        can_convert,
        stargz_grpc,
        nydusd,
    };

    bar.set_message(format!("pushing {} to the bench's registry", args.image));
    modes::push_original(&env, &args.image, &args.image_args)?;
    let image_bytes = modes::layers_size(&env.at("original"))?;

    // What each mode costs before its first start.
    let mut prepared: Vec<(Mode, Prepared)> = Vec::new();
    let mut estargz: Option<Prepared> = None;
    let mut native: Option<Prepared> = None;
    for &mode in wanted {
        sys::check()?;
        bar.set_message(format!("preparing {}", mode.name()));
        let p = match mode {
            Mode::Full if !env.containerd && sys::which("umoci").is_none() => {
                Prepared::failed("-", "skipped: full in chroot needs umoci (and skopeo)")
            }
            Mode::Full => Prepared {
                tag: Some("original".into()),
                step: "none".into(),
                seconds: 0.0,
                bytes: image_bytes,
                error: None,
            },
            Mode::Zran => modes::prepare_zran(&env),
            Mode::ZranTrace if sys::which("skopeo").is_none() => {
                Prepared::failed("-", "skipped: zran-trace needs skopeo")
            }
            Mode::ZranTrace => modes::prepare_trace(&env),
            Mode::ZranZstdchunked if sys::which("skopeo").is_none() => {
                Prepared::failed("-", "skipped: zran-zstdchunked needs skopeo")
            }
            Mode::ZranZstdchunked => modes::prepare_zstdchunked(&env),
            Mode::ZranEstargz | Mode::Stargz => {
                if mode == Mode::Stargz && env.stargz_grpc.is_none() {
                    Prepared::failed(
                        "-",
                        "skipped: containerd-stargz-grpc not found (--stargz-grpc, PATH, or build it with \
                         ZRAN_STARGZ_BUILD_ONLY=1 bash benches/stargz_peer.sh)",
                    )
                } else if mode == Mode::Stargz && !env.containerd {
                    Prepared::failed("-", "skipped: containerd-stargz-grpc needs containerd")
                } else {
                    estargz.get_or_insert_with(|| modes::prepare_estargz(&env)).clone()
                }
            }
            Mode::ZranNative | Mode::Nydusd => {
                if mode == Mode::Nydusd && env.nydusd.is_none() {
                    Prepared::failed("-", "skipped: nydusd not found (--nydusd, PATH, /opt/nydus/bin/nydusd)")
                } else {
                    native.get_or_insert_with(|| modes::prepare_native(&env)).clone()
                }
            }
        };
        if let Some(e) = &p.error {
            tracing::warn!("{}: {e}", mode.name());
        }
        prepared.push((mode, p));
    }
    sys::check()?;

    // The link as the starts see it.
    l.shape(args.rate)?;
    let runnable: Vec<Mode> = prepared.iter().filter(|(_, p)| p.error.is_none()).map(|(m, _)| *m).collect();
    let mut samples: Vec<(Mode, Result<modes::Sample, String>)> = Vec::new();
    let mut n = 0;
    for round in 0..args.runs {
        let k = if runnable.is_empty() { 0 } else { round % runnable.len() };
        let order: Vec<Mode> = runnable[k..].iter().chain(&runnable[..k]).copied().collect();
        for mode in order {
            sys::check()?;
            n += 1;
            bar.set_message(format!("run {}/{} {}", round + 1, args.runs, mode.name()));
            let tag = prepared
                .iter()
                .find(|(m, _)| *m == mode)
                .and_then(|(_, p)| p.tag.clone())
                .context("mode without an image")?;
            let r = modes::start(&env, mode, &tag, n);
            sys::check()?;
            match &r {
                Ok(s) => tracing::info!(
                    "{} run {}: {:.2} s (pull {:.2} s, run {:.2} s), {} bytes over the link",
                    mode.name(),
                    round + 1,
                    s.total_s,
                    s.pull_s,
                    s.run_s,
                    s.link_rx_bytes
                ),
                Err(e) => tracing::warn!("{} run {}: {e:#}", mode.name(), round + 1),
            }
            samples.push((mode, r.map_err(|e| format!("{e:#}"))));
        }
    }

    let mut reports: Vec<ModeReport> = prepared
        .into_iter()
        .map(|(mode, prepare)| {
            let ok: Vec<modes::Sample> = samples
                .iter()
                .filter(|(m, _)| *m == mode)
                .filter_map(|(_, r)| r.as_ref().ok().cloned())
                .collect();
            let failures: Vec<String> = samples
                .iter()
                .filter(|(m, _)| *m == mode)
                .filter_map(|(_, r)| r.as_ref().err().cloned())
                .collect();
            let (status, error) = match &prepare.error {
                Some(e) if e.starts_with("skipped: ") => {
                    ("skipped", Some(e["skipped: ".len()..].to_string()))
                }
                Some(e) => ("failed", Some(format!("preparation failed: {e}"))),
                None if failures.is_empty() => ("ok", None),
                None => ("failed", failures.first().cloned()),
            };
            ModeReport {
                mode,
                harness: env.harness(mode),
                status: status.into(),
                error,
                summary: report::summarize(&ok),
                prepare,
                samples: ok,
                failures,
            }
        })
        .collect();
    report::compare(&mut reports);
    let r = Report {
        schema: report::SCHEMA.into(),
        image: args.image.clone(),
        workload,
        expect: args.expect.clone(),
        link: report::LinkInfo { rate_mbit: args.rate, delay_ms: args.delay },
        runs: args.runs,
        started,
        image_bytes,
        modes: reports,
    };
    bar.finish_and_clear();
    print!("{}", report::table(&r));
    if r.modes.iter().any(|m| m.harness == Harness::Chroot) {
        println!(
            "\n(chroot: the workload ran in chroot of the mounted or unpacked tree, not in a container)"
        );
    }
    if let Some(p) = &args.json {
        report::write_json(&r, p)?;
    }
    if let Some(p) = &args.plot {
        report::plot(&r, p)?;
    }
    Ok(())
}
