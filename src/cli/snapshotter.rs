//! `zran snapshotter`: containerd's Snapshots service on a unix socket, serving images with a
//! zran artifact beside them (and, with `--enable-stargz`, eStargz images) lazily.

use anyhow::Context;
use clap::Args;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use zran::oci::{OpenOptions, RegistryOptions};
use zran::snapshotter::config::Config;
use zran::snapshotter::images::{Images, Launch};
use zran::snapshotter::remote::Decider;
use zran::snapshotter::{Remote, Service};

const AFTER_HELP: &str = r#"containerd (1.6 or later) finds the snapshotter through a proxy plugin; in
/etc/containerd/config.toml:

  version = 2
  [proxy_plugins]
    [proxy_plugins.zran]
      type = "snapshot"
      address = "/run/zran/snapshotter.sock"
  # For Kubernetes (the CRI plugin): use zran, and pass the image's name with each layer.
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "zran"
    disable_snapshot_annotations = false

Then `ctr-remote image rpull --snapshotter zran IMAGE` (or a CRI pull) leaves the layers of
images that zran serves in the registry; `ctr run --snapshotter zran IMAGE ID ...` starts
containers from them. Images zran cannot serve are pulled and unpacked as usual.

A systemd unit (/etc/systemd/system/zran-snapshotter.service):

  [Unit]
  Description=zran snapshotter (lazy container images)
  Before=containerd.service
  [Service]
  ExecStart=/usr/local/bin/zran snapshotter --config /etc/zran/snapshotter.toml
  Restart=always
  # Serving processes outlive a restart of the snapshotter: stop only the main process.
  KillMode=process
  [Install]
  WantedBy=multi-user.target

The configuration file and its defaults: see the README ("As a containerd snapshotter")."#;

#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct SnapshotterArgs {
    /// The configuration file (TOML; every key optional).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where snapshots' metadata (metadata.redb) and data (snapshots/<id>/) live [default:
    /// /var/lib/zran/snapshotter].
    #[arg(long)]
    root: Option<PathBuf>,
    /// The unix socket containerd's `proxy_plugins` entry names [default:
    /// /run/zran/snapshotter.sock].
    #[arg(long)]
    address: Option<PathBuf>,
    /// Serve eStargz images straight from their TOCs (without a zran artifact).
    #[arg(long)]
    enable_stargz: bool,
}

fn config(args: &SnapshotterArgs) -> anyhow::Result<Config> {
    let mut c = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(r) = &args.root {
        c.root = r.clone();
    }
    if let Some(a) = &args.address {
        c.address = a.clone();
    }
    c.enable_stargz |= args.enable_stargz;
    Ok(c)
}

/// The remote side: decisions, serving processes started as `zran mount ... --foreground`.
fn remote(c: &Config, verbose: u8) -> anyhow::Result<Remote> {
    let cache = c.cache_dir();
    std::fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let hosts = c.hosts_dir().map(PathBuf::from);
    let open = OpenOptions {
        platform: None,
        registry: RegistryOptions {
            hosts_dir: hosts.clone(),
            docker_config: c.registry.docker_config.clone(),
            ..RegistryOptions::default()
        },
    };
    let mut args: Vec<OsString> = vec!["--cache-dir".into(), cache.clone().into()];
    args.extend(["--threads".into(), c.mount.threads.max(1).to_string().into()]);
    if !c.mount.prefetch {
        args.push("--no-prefetch".into());
    }
    args.extend(["--fs-driver".into(), c.mount.fs_driver.name().into()]);
    if let Some(h) = hosts {
        args.extend(["--hosts-dir".into(), h.into()]);
    }
    if let Some(d) = &c.registry.docker_config {
        args.extend(["--docker-config".into(), d.clone().into()]);
    }
    if verbose > 0 {
        args.push(format!("-{}", "v".repeat(verbose.into())).into());
    }
    let traces = match &c.mount.record_traces {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            args.extend(["--trace-window".into(), c.mount.trace_window.to_string().into()]);
            Some(std::path::absolute(d).with_context(|| format!("{}", d.display()))?)
        }
        None => None,
    };
    let exe = std::env::current_exe().context("cannot find the zran executable")?;
    let images = Images::new(&c.root, &cache, Launch { exe, args, traces });
    Ok(Remote::new(Decider::new(open, c.enable_stargz, &cache), images))
}

pub fn run(args: SnapshotterArgs, verbose: u8) -> anyhow::Result<()> {
    let c = config(&args)?;
    let remote = remote(&c, verbose)?;
    let service = Service::open(&c.root, Some(remote))
        .with_context(|| format!("cannot open the snapshotter's state in {}", c.root.display()))?;
    // Remove what a process killed mid-way left; serve again what running containers use.
    service.cleanup()?;
    service.restore()?;
    if let Some(dir) = c.address.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    match std::fs::remove_file(&c.address) {
        Ok(()) => tracing::info!(socket = %c.address.display(), "removed a stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", c.address.display())),
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build()?;
    let cache = c.cache_dir();
    let (max, every) = (c.cache.max_size, Duration::from_secs(c.cache.prune_interval.max(1)));
    rt.block_on(async move {
        let listener = tokio::net::UnixListener::bind(&c.address)
            .with_context(|| format!("cannot listen on {}", c.address.display()))?;
        tracing::info!(socket = %c.address.display(), root = %c.root.display(), enable_stargz = c.enable_stargz, "serving containerd's snapshots API");
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        // The cache stays under its limit: unused blobs go, least recently used first.
        tokio::spawn(async move {
            loop {
                let dir = cache.clone();
                let _ = tokio::task::spawn_blocking(move || prune(&dir, max)).await;
                tokio::time::sleep(every).await;
            }
        });
        let stop = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        };
        containerd_snapshots::tonic::transport::Server::builder()
            .add_service(containerd_snapshots::server(Arc::new(service)))
            .serve_with_incoming_shutdown(incoming, stop)
            .await
            .context("the snapshots service stopped")?;
        let _ = std::fs::remove_file(&c.address);
        anyhow::Ok(())
    })
}

fn prune(dir: &std::path::Path, max: u64) {
    let total: u64 = match zran::blob::cache::list(dir) {
        Ok(entries) => entries.iter().map(|e| e.disk_bytes).sum(),
        Err(_) => return,
    };
    if total <= max {
        return;
    }
    match zran::blob::cache::prune(dir, Some(max)) {
        Ok(removed) => {
            let freed: u64 = removed.iter().map(|e| e.disk_bytes).sum();
            tracing::info!(blobs = removed.len(), bytes = freed, "pruned the cache to its limit");
        }
        Err(e) => tracing::warn!("cannot prune {}: {e}", dir.display()),
    }
}
