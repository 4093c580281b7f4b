//! `zran generate IMAGE -o DIR`: the RAFS v6 artifact of an image, pointing into its original
//! layer blobs.

use super::image::ImageArgs;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use zran::artifact::inputs::layer_inputs;
use zran::artifact::{self, Options};

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// `oci:PATH[:TAG|@DIGEST]` or `[HOST[:PORT]/]REPO[:TAG|@DIGEST]`.
    pub image: String,
    /// The artifact directory to write (image.boot, <layer>.blob.meta, zran.json).
    #[arg(short, long, required_unless_present = "nydus_oci_ref")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub image_args: ImageArgs,
    /// Chunk size: a power of two from 4K to 16M (default 1M, or the chunk size of the
    /// image's eStargz layers). In gzip layers a chunk and what precedes it back to its
    /// checkpoint must fit the 16 MiB Nydus decodes at once, so 8M is the practical limit there.
    #[arg(long, value_parser = super::util::parse_size)]
    pub chunk_size: Option<u64>,
    /// Uncompressed bytes between zran checkpoints beyond those taken before every chunk.
    #[arg(long, value_parser = super::util::parse_size, default_value = "1M")]
    pub span: u64,
    /// Layers indexed at once (default: the number of CPUs, at most 4).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// A file listing paths in the image (one per line) to fetch first when it is mounted: the
    /// bootstrap's prefetch table.
    #[arg(long, value_name = "FILE")]
    pub prefetch_files: Option<PathBuf>,
    /// A start-up trace (`zran mount --record-trace`, or the snapshotter's `record_traces`):
    /// the files it lists, in the order they were first read, go first in the prefetch table,
    /// before those of `--prefetch-files`.
    #[arg(long, value_name = "FILE")]
    pub prefetch_trace: Option<PathBuf>,
    /// Replace an existing artifact directory.
    #[arg(long)]
    pub force: bool,
    /// Index eStargz layers like plain gzip layers instead of taking their chunks from the TOC.
    #[arg(long)]
    pub ignore_toc: bool,
    /// Print zran.json on stdout when done.
    #[arg(long)]
    pub json: bool,
    /// Then store the artifact beside the image (as `zran push` does), where `zran mount
    /// IMAGE` finds it.
    #[arg(long)]
    pub push: bool,
    /// Also write the artifact as a Nydus oci-ref image (nydusify --oci-ref's form: a ref blob
    /// per layer, a bootstrap layer) to TARGET, a registry reference or oci:DIR[:TAG], for
    /// nydusd and nydus-snapshotter. The original layers are copied to TARGET's repository
    /// unless there already; every layer is indexed as gzip.
    #[arg(long, value_name = "TARGET")]
    pub nydus_oci_ref: Option<String>,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let image = args.image_args.open(&args.image)?;
    let layers = &image.manifest.layers;

    let ignore_toc = args.ignore_toc || args.nydus_oci_ref.is_some();
    let (inputs, chunk_size) = layer_inputs(&image, ignore_toc, args.chunk_size)?;
    let jobs =
        args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get().min(4)));
    let bars = super::util::LayerBars::new(layers);
    let mut prefetch = Vec::new();
    if let Some(p) = &args.prefetch_trace {
        let t = zran::mount::trace::Trace::read(p)?;
        prefetch.extend(t.files.iter().map(|f| zran::tar::normalize(f.path.as_bytes())));
    }
    if let Some(p) = &args.prefetch_files {
        prefetch.extend(zran::mount::trace::prefetch_paths(p)?);
    }
    let opts = Options { chunk_size, span: args.span, jobs, prefetch };
    let started = std::time::Instant::now();
    let art = artifact::generate(&image, &inputs, &opts, &|i, n| bars.set(i, n))
        .with_context(|| format!("cannot generate the artifact of {}", image.name))?;
    bars.finish();
    if let Some(out) = &args.output {
        artifact::write_dir(&art, out, args.force)
            .with_context(|| format!("cannot write the artifact to {}", out.display()))?;
    }
    let elapsed = started.elapsed();
    let pushed = match (&args.output, args.push) {
        (Some(out), true) => Some(
            artifact::publish::push(out, &image)
                .with_context(|| format!("cannot store the artifact beside {}", image.name))?,
        ),
        (None, true) => anyhow::bail!("--push stores the artifact directory: give -o DIR"),
        _ => None,
    };
    let nydus = match &args.nydus_oci_ref {
        Some(target) => {
            let reference: zran::oci::ImageRef = target.parse()?;
            let tag = match &reference {
                zran::oci::ImageRef::Registry(r) => r.tag.clone(),
                zran::oci::ImageRef::Layout(l) => l.tag.clone(),
            }
            .unwrap_or_else(|| "latest".into());
            let sink = zran::oci::open_target(&reference, &args.image_args.options()?)
                .with_context(|| format!("cannot open {target}"))?;
            let pushed = artifact::nydus_ref::push(&image, &art, sink.as_ref(), &tag)
                .with_context(|| format!("cannot write the Nydus oci-ref image to {target}"))?;
            Some((target.clone(), pushed))
        }
        None => None,
    };

    if args.json {
        println!("{}", serde_json::to_string_pretty(&art.manifest)?);
        return Ok(());
    }
    let image_size: u64 = layers.iter().map(|l| l.size).sum();
    let meta_size: u64 = art.metas.iter().map(|(_, b)| b.len() as u64).sum();
    println!("image      {}", art.manifest.source);
    println!("manifest   {}", art.manifest.manifest_digest);
    println!("chunk size {}", chunk_size);
    for (i, l) in art.manifest.layers.iter().enumerate() {
        println!(
            "  {i:>3}  {}  {:>12}  {:<8} {:>7} chunks {:>6} checkpoints",
            l.digest, l.size, l.format, l.chunks, l.checkpoints
        );
    }
    println!(
        "wrote {}: image.boot {} bytes, blob.meta {} bytes ({:.2}% of {} bytes of layers) in {:.2}s",
        args.output.as_ref().map_or_else(|| "nothing".into(), |o| o.display().to_string()),
        art.bootstrap.len(),
        meta_size,
        100.0 * (art.bootstrap.len() as u64 + meta_size) as f64 / image_size.max(1) as f64,
        image_size,
        elapsed.as_secs_f64()
    );
    if let Some(d) = pushed {
        println!("pushed {d} beside {} (referrer of {})", image.name, image.manifest.digest);
    }
    if let Some((target, p)) = nydus {
        println!(
            "nydus oci-ref {target}: manifest {}, {} ref layers ({} bytes), {} original layers copied",
            p.manifest,
            p.layers.len(),
            p.layers.iter().map(|l| l.1).sum::<u64>(),
            p.copied
        );
    }
    Ok(())
}
