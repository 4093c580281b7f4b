//! `zran convert IMAGE TARGET`: the image converted whole to Nydus's native RAFS v6 format
//! (what `nydusify convert` makes), stored in a registry or an OCI layout.

use super::image::ImageArgs;
use anyhow::Context;
use clap::Args;
use zran::convert::{self, Compressor, Options};
use zran::oci::ImageRef;

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The source image: `oci:PATH[:TAG|@DIGEST]` or `[HOST[:PORT]/]REPO[:TAG|@DIGEST]`.
    pub image: String,
    /// Where the converted image goes: `oci:PATH[:TAG]` (made if missing) or
    /// `[HOST[:PORT]/]REPO[:TAG]`, with the same registry options as the source.
    pub target: String,
    #[command(flatten)]
    pub image_args: ImageArgs,
    /// How chunks are compressed, each on its own: zstd (level 3), lz4 (LZ4 blocks), or none
    /// (chunks at their 4 KiB-aligned addresses: a blob is then also an EROFS device).
    #[arg(long, default_value = "zstd")]
    pub compressor: Compressor,
    /// Chunk size: a power of two from 4K to 16M.
    #[arg(long, value_parser = super::util::parse_size, default_value = "1M")]
    pub chunk_size: u64,
    /// Layers converted at once.
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
    /// Directory for the work files (default: inside the target layout, else the system's
    /// temporary directory); they are removed when done.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<std::path::PathBuf>,
}

pub fn run(args: ConvertArgs) -> anyhow::Result<()> {
    let target: ImageRef = args.target.parse().with_context(|| format!("target {}", args.target))?;
    let image = args.image_args.open(&args.image)?;
    let chunk_size =
        u32::try_from(args.chunk_size).ok().filter(|c| c.is_power_of_two() && (4096..=16 << 20).contains(c));
    let Some(chunk_size) = chunk_size else {
        anyhow::bail!("--chunk-size {} is not a power of two from 4K to 16M", args.chunk_size);
    };
    // The work files go where the blobs end up when that is a layout, so that they are moved,
    // not copied; a layout made for this conversion is removed again if it fails.
    let mut made_layout = None;
    let work_parent = match (&args.work_dir, &target) {
        (Some(d), _) => d.clone(),
        (None, ImageRef::Layout(l)) => {
            if !l.path.exists() {
                std::fs::create_dir_all(&l.path)
                    .with_context(|| format!("cannot create {}", l.path.display()))?;
                made_layout = Some(l.path.clone());
            }
            l.path.clone()
        }
        (None, ImageRef::Registry(_)) => std::env::temp_dir(),
    };
    let result = convert_and_publish(&args, &image, &target, chunk_size, work_parent);
    if result.is_err()
        && let Some(dir) = made_layout
    {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

fn convert_and_publish(
    args: &ConvertArgs,
    image: &zran::oci::Image,
    target: &ImageRef,
    chunk_size: u32,
    work_parent: std::path::PathBuf,
) -> anyhow::Result<()> {
    let layers = &image.manifest.layers;
    let bars = super::util::LayerBars::new(layers);
    let durable = matches!(target, ImageRef::Layout(_));
    let opts =
        Options { compressor: args.compressor, chunk_size, jobs: args.jobs.max(1), work_parent, durable };
    let started = std::time::Instant::now();
    let converted = convert::convert(image, &opts, &|i, n| bars.set(i, n))
        .with_context(|| format!("cannot convert {}", image.name))?;
    bars.finish();
    let converted_in = started.elapsed();
    let registry = args.image_args.options()?.registry;
    let digest = convert::output::publish(&converted, target, &registry)
        .with_context(|| format!("cannot store the converted image at {target}"))?;
    println!("image      {}", image.name);
    println!("compressor {}, chunk size {}", args.compressor.name(), chunk_size);
    for (i, b) in converted.layers.iter().enumerate() {
        println!(
            "  {i:>3}  {} -> {}  {:>12} -> {:>12} bytes  {:>7} chunks  {:>5} stored in lower blobs",
            b.source.digest, b.digest, b.source.size, b.size, b.chunks, b.deduplicated
        );
    }
    println!(
        "  bootstrap {}  {:>12} bytes (image.boot {} bytes)",
        converted.bootstrap_layer.digest,
        converted.bootstrap_layer.size,
        converted.bootstrap.len()
    );
    println!("wrote {target} ({digest}) in {:.2}s", converted_in.as_secs_f64());
    Ok(())
}
