//! `zran bench proxy` (hidden): a TCP forwarder that holds every piece of data for DELAY ms in
//! each direction (and 2 x DELAY when a connection opens, the SYN/SYN-ACK round trip), for a
//! link with latency on kernels without netem. `bench startup` runs it inside its network
//! namespace in front of the registry. Calls nothing else in the crate.

use anyhow::Context;
use clap::Args;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Address to listen on (HOST:PORT).
    #[arg(long)]
    pub listen: String,
    /// Address to forward to (HOST:PORT).
    #[arg(long)]
    pub target: String,
    /// Delay in each direction, in milliseconds.
    #[arg(long)]
    pub delay: u64,
    /// A label shown in the process's command line (the bench's work directory), so that what
    /// a bench started can be found by it.
    #[arg(long)]
    pub label: Option<String>,
}

/// Pieces in flight per direction: with 64 KiB reads, at most 16 MiB held per connection.
const QUEUE: usize = 256;

pub fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let delay = Duration::from_millis(args.delay);
        tracing::info!(listen = %args.listen, target = %args.target, delay_ms = args.delay, "forwarding");
        loop {
            let (client, peer) = listener.accept().await.context("accept")?;
            let target = args.target.clone();
            tokio::spawn(async move {
                tracing::debug!(%peer, "connection");
                tokio::time::sleep(2 * delay).await;
                match TcpStream::connect(&target).await {
                    Ok(upstream) => forward(client, upstream, delay).await,
                    Err(e) => tracing::warn!("cannot connect to {target}: {e}"),
                }
            });
        }
    })
}

async fn forward(client: TcpStream, upstream: TcpStream, delay: Duration) {
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    tokio::join!(pipe(cr, uw, delay), pipe(ur, cw, delay));
}

/// Copy `from` to `to`, each piece written `delay` after it was read; EOF is passed on (after
/// the pieces before it).
async fn pipe<R, W>(mut from: R, mut to: W, delay: Duration)
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE);
    let reader = async move {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now() + delay, buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, data)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&data).await.is_err() {
                // The other side is gone: drop what is left, which ends the reader too.
                rx.close();
                while rx.recv().await.is_some() {}
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
