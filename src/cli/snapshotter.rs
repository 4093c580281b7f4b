//! `zran snapshotter`: containerd's Snapshots service on a unix socket.

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use zran::snapshotter::Service;

#[derive(Debug, Args)]
pub struct SnapshotterArgs {
    /// Where snapshots' metadata (metadata.redb) and data (snapshots/<id>/) live.
    #[arg(long, default_value = "/var/lib/zran/snapshotter")]
    root: PathBuf,
    /// The unix socket containerd's `proxy_plugins` entry names.
    #[arg(long, default_value = "/run/zran/snapshotter.sock")]
    address: PathBuf,
}

pub fn run(args: SnapshotterArgs) -> anyhow::Result<()> {
    let service = Service::open(&args.root)
        .with_context(|| format!("cannot open the snapshotter's state in {}", args.root.display()))?;
    // Remove what a process killed mid-way left.
    service.cleanup()?;
    if let Some(dir) = args.address.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    match std::fs::remove_file(&args.address) {
        Ok(()) => tracing::info!(socket = %args.address.display(), "removed a stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", args.address.display())),
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::UnixListener::bind(&args.address)
            .with_context(|| format!("cannot listen on {}", args.address.display()))?;
        tracing::info!(socket = %args.address.display(), root = %args.root.display(), "serving containerd's snapshots API");
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
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
        let _ = std::fs::remove_file(&args.address);
        anyhow::Ok(())
    })
}
