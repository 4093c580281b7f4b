//! `zran inspect IMAGE`: what an image is made of, and how each layer can be served.

use super::image::ImageArgs;
use clap::Args;
use serde::Serialize;
use zran::artifact::inputs::{LayerFormat, layer_format};
use zran::estargz;
use zran::oci::Descriptor;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// `oci:PATH[:TAG|@DIGEST]` or `[HOST[:PORT]/]REPO[:TAG|@DIGEST]`.
    pub image: String,
    #[command(flatten)]
    pub image_args: ImageArgs,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// List the merged filesystem tree (like `tar -tv`), reading what it needs of the layers:
    /// the table of contents of eStargz layers, the whole of the others.
    #[arg(long)]
    pub files: bool,
    /// Use eStargz TOCs that the manifest does not vouch for (no TOC digest annotation).
    #[arg(long)]
    pub insecure_skip_verify: bool,
}

#[derive(Serialize)]
struct LayerReport<'a> {
    #[serde(flatten)]
    descriptor: &'a Descriptor,
    format: LayerFormat,
    #[serde(skip_serializing_if = "Option::is_none")]
    toc_offset: Option<u64>,
    /// zstd:chunked and eStargz-in-zstd layers: their TOC (only the TOC is fetched).
    #[serde(skip_serializing_if = "Option::is_none")]
    toc: Option<ZstdTocReport>,
}

/// What the TOC of a zstd:chunked (or eStargz-in-zstd) layer says, or why it was refused.
#[derive(Serialize, Default)]
struct ZstdTocReport {
    /// `annotation`, `footer-40`, `footer-56` or `footer-64`.
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    compressed_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uncompressed_size: Option<u64>,
    verified: bool,
    /// Entries (chunk entries merged into their files).
    entries: usize,
    chunks: usize,
    /// Where the tar-split stream lies (offset, compressed, uncompressed), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    tar_split: Option<(u64, u64, u64)>,
    tar_split_digest: bool,
    fetched: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl ZstdTocReport {
    fn line(&self) -> String {
        if let Some(e) = &self.error {
            return format!("TOC refused: {e}");
        }
        format!(
            "TOC at {} ({}), {} bytes compressed, {} uncompressed, {}, {} entries, {} chunks, {}, {} bytes fetched",
            self.offset.unwrap_or(0),
            self.position.unwrap_or("?"),
            self.compressed_size.unwrap_or(0),
            self.uncompressed_size.unwrap_or(0),
            if self.verified { "verified" } else { "NOT verified" },
            self.entries,
            self.chunks,
            match (self.tar_split, self.tar_split_digest) {
                (Some(_), true) => "tar-split (digest in the TOC)",
                (Some(_), false) => "tar-split",
                (None, _) => "no tar-split",
            },
            self.fetched
        )
    }
}

/// Read the TOC of a zstd:chunked or eStargz-in-zstd layer for the report.
fn zstd_toc_report(
    image: &zran::oci::Image,
    d: &Descriptor,
    format: LayerFormat,
    insecure: bool,
) -> Option<ZstdTocReport> {
    let verify = if insecure { estargz::Verify::InsecureSkipVerify } else { estargz::Verify::Required };
    let source = image.source.as_ref();
    match format {
        LayerFormat::ZstdChunked => Some(match zran::zstdchunked::read_toc(source, d, verify) {
            Ok(t) => ZstdTocReport {
                position: Some(t.position.name()),
                offset: Some(t.toc_offset),
                compressed_size: Some(t.toc_compressed_size),
                uncompressed_size: Some(t.toc_uncompressed_size),
                verified: t.verified,
                entries: t.entries.len(),
                chunks: t.entries.iter().map(|e| e.chunks.len()).sum(),
                tar_split: t.tar_split,
                tar_split_digest: t.tar_split_digest.is_some(),
                fetched: t.fetched,
                error: None,
            },
            Err(e) => ZstdTocReport { error: Some(e.to_string()), ..Default::default() },
        }),
        LayerFormat::EstargzZstd => Some(match estargz::read_zstd_toc(source, d, verify) {
            Ok(t) => ZstdTocReport {
                position: Some(if zran::zstdchunked::has_annotations(d) {
                    "annotation"
                } else {
                    "footer-40"
                }),
                offset: Some(t.footer.toc_offset),
                compressed_size: Some(t.blob_size - t.footer.footer_size - t.footer.toc_offset),
                uncompressed_size: Some(t.json_size),
                verified: t.verified,
                entries: t.entries.len(),
                chunks: t.chunks().count(),
                tar_split: None,
                tar_split_digest: false,
                fetched: t.fetched,
                error: None,
            },
            Err(e) => ZstdTocReport { error: Some(e.to_string()), ..Default::default() },
        }),
        _ => None,
    }
}

#[derive(Serialize)]
struct Report<'a> {
    image: &'a str,
    source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<String>,
    manifest: String,
    media_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<String>,
    config: String,
    compressed_size: u64,
    layers: Vec<LayerReport<'a>>,
    /// The zran artifact stored beside the image (`zran push`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    zran_artifact: Option<String>,
    /// What a Nydus image's bootstrap says its blobs are ("nydus native (zstd)", "nydus oci-ref").
    #[serde(skip_serializing_if = "Option::is_none")]
    nydus: Option<String>,
    bytes_fetched: u64,
}

pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let dir = std::path::Path::new(&args.image);
    if dir.join(zran::artifact::MANIFEST).is_file() {
        return artifact(dir, args.json, args.files);
    }
    let image = args.image_args.open(&args.image)?;
    if args.files {
        return files(&image, args.json, args.insecure_skip_verify);
    }
    let mut layers = Vec::new();
    for d in &image.manifest.layers {
        let (format, toc_offset) = layer_format(&image, d)?;
        let toc = zstd_toc_report(&image, d, format, args.insecure_skip_verify);
        layers.push(LayerReport { descriptor: d, format, toc_offset, toc });
    }
    let nydus = if zran::nydus::is_nydus(&image.manifest) {
        let (_, bootstrap) = zran::nydus::fetch_bootstrap(&image, None)?;
        Some(zran::nydus::describe(&bootstrap))
    } else {
        None
    };
    let zran_artifact = match zran::artifact::publish::find(&image) {
        Ok(found) => found.map(|r| r.digest),
        Err(e) => {
            tracing::warn!("{}: cannot list its referrers: {e}", image.name);
            None
        }
    };
    let report = Report {
        image: &image.name,
        source: image.source.name(),
        index: image.index.as_ref().map(|d| d.to_string()),
        manifest: image.manifest.digest.to_string(),
        media_type: &image.manifest.media_type,
        platform: image.platform.as_ref().map(|p| p.to_string()),
        config: image.manifest.config.digest.to_string(),
        compressed_size: image.manifest.layers.iter().map(|l| l.size).sum(),
        layers,
        zran_artifact,
        nydus,
        bytes_fetched: image.source.bytes_fetched(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("image     {}", report.image);
    if let Some(i) = &report.index {
        println!("index     {i}");
    }
    println!("manifest  {} ({})", report.manifest, report.media_type);
    if let Some(p) = &report.platform {
        println!("platform  {p}");
    }
    println!("config    {}", report.config);
    println!("layers    {} ({} bytes)", report.layers.len(), report.compressed_size);
    for (i, l) in report.layers.iter().enumerate() {
        println!(
            "  {i:>3}  {}  {:>12}  {:<18}  {}",
            l.descriptor.digest,
            l.descriptor.size,
            serde_json::to_value(l.format)?.as_str().unwrap_or("?"),
            l.descriptor.media_type
        );
        if let Some(t) = &l.toc {
            println!("       {}", t.line());
        }
    }
    if let Some(n) = &report.nydus {
        println!("format    {n} (its own bootstrap: `zran mount {}` serves it)", args.image);
    }
    if let Some(a) = &report.zran_artifact {
        println!("zran      {a} (artifact stored beside the image: `zran mount {}` serves it)", args.image);
    }
    println!("fetched   {} bytes", report.bytes_fetched);
    Ok(())
}

/// Build the merged tree: each layer read once (gzip layers streamed through the index pass).
fn files(image: &zran::oci::Image, json: bool, insecure: bool) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut tree = zran::tree::Tree::new();
    let bar = super::util::byte_progress(
        Some(image.manifest.layers.iter().map(|l| l.size).sum()),
        "reading layers",
    );
    for (i, layer) in image.manifest.layers.iter().enumerate() {
        let (format, _) = layer_format(image, layer)?;
        let verify = if insecure { estargz::Verify::InsecureSkipVerify } else { estargz::Verify::Required };
        match format {
            LayerFormat::ZstdChunked => {
                let toc = zran::zstdchunked::read_toc(image.source.as_ref(), layer, verify)
                    .with_context(|| format!("{}: layer {i}", image.name))?;
                tree.apply_estargz_layer(i, &toc.entries)
                    .with_context(|| format!("{}: layer {i} ({})", image.name, layer.digest))?;
                bar.inc(layer.size);
                continue;
            }
            LayerFormat::EstargzZstd => {
                let toc = estargz::read_zstd_toc(image.source.as_ref(), layer, verify)
                    .with_context(|| format!("{}: layer {i}", image.name))?;
                tree.apply_estargz_layer(i, &toc.entries)
                    .with_context(|| format!("{}: layer {i} ({})", image.name, layer.digest))?;
                bar.inc(layer.size);
                continue;
            }
            LayerFormat::Zstd | LayerFormat::Uncompressed => {
                // One streaming pass, as `generate` reads these layers (no chunks cut; a plain
                // zstd layer's frames and checksums checked on the way).
                let scan = if format == LayerFormat::Zstd {
                    zran::layer::scan_zstd(
                        image.source.as_ref(),
                        layer,
                        zran::layer::DEFAULT_SPAN,
                        None,
                        None,
                        false,
                        &|_| {},
                    )
                } else {
                    zran::layer::scan_tar(image.source.as_ref(), layer, None, &|_| {})
                }
                .with_context(|| format!("{}: layer {i}", image.name))?;
                tree.apply_layer(i, &scan.entries)
                    .with_context(|| format!("{}: layer {i} ({})", image.name, layer.digest))?;
                bar.inc(layer.size);
                continue;
            }
            _ => {}
        }
        let use_toc =
            format == LayerFormat::Estargz || (insecure && format == LayerFormat::EstargzUnverified);
        if use_toc {
            let verify =
                if insecure { estargz::Verify::InsecureSkipVerify } else { estargz::Verify::Required };
            let toc = estargz::read_toc(image.source.as_ref(), layer, verify)
                .with_context(|| format!("{}: layer {i}", image.name))?;
            tree.apply_estargz_layer(i, &toc.entries)
                .with_context(|| format!("{}: layer {i} ({})", image.name, layer.digest))?;
        } else {
            if format == LayerFormat::EstargzUnverified {
                tracing::warn!(layer = %layer.digest, "eStargz layer without a TOC digest in the manifest: reading it whole (--insecure-skip-verify uses the TOC)");
            }
            let scan = zran::layer::scan_gzip(image.source.as_ref(), layer, zran::layer::DEFAULT_SPAN, None)
                .with_context(|| format!("{}: layer {i}", image.name))?;
            tree.apply_layer(i, &scan.entries)
                .with_context(|| format!("{}: layer {i} ({})", image.name, layer.digest))?;
        }
        bar.inc(layer.size);
    }
    bar.finish_and_clear();
    tree.finish();
    let fetched = image.source.bytes_fetched();
    if json {
        #[derive(Serialize)]
        struct Files {
            image: String,
            manifest: String,
            bytes_fetched: u64,
            entries: Vec<super::files::FileRecord>,
        }
        let out = Files {
            image: image.name.clone(),
            manifest: image.manifest.digest.to_string(),
            bytes_fetched: fetched,
            entries: super::files::records(&tree),
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        super::files::print_listing(&tree);
        eprintln!(
            "fetched {fetched} bytes of {} in the layers",
            image.manifest.layers.iter().map(|l| l.size).sum::<u64>()
        );
    }
    Ok(())
}

/// `zran inspect DIR`: an artifact written by `generate`, read back and checked.
fn artifact(dir: &std::path::Path, json: bool, files: bool) -> anyhow::Result<()> {
    use anyhow::Context;
    let a = zran::artifact::open_dir(dir)
        .with_context(|| format!("cannot read the artifact in {}", dir.display()))?;
    let tree = &a.bootstrap.tree;
    if files {
        if json {
            #[derive(Serialize)]
            struct Files {
                image: String,
                manifest: String,
                entries: Vec<super::files::FileRecord>,
            }
            let out = Files {
                image: a.manifest.source.clone(),
                manifest: a.manifest.manifest_digest.clone(),
                entries: super::files::records(tree),
            };
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            super::files::print_listing(tree);
        }
        return Ok(());
    }
    let s = &a.bootstrap.summary;
    let paths: std::collections::HashMap<usize, Vec<u8>> =
        tree.walk().into_iter().map(|(p, id)| (id, p)).collect();
    let prefetch: Vec<String> = a
        .bootstrap
        .prefetch
        .iter()
        .filter_map(|id| paths.get(id).map(|p| String::from_utf8_lossy(p).into_owned()))
        .collect();
    let image_size: u64 = a.manifest.layers.iter().map(|l| l.size).sum();
    let contexts: usize = a.metas.values().map(|m| m.contexts.len()).sum();
    if json {
        #[derive(Serialize)]
        struct Blob<'a> {
            id: &'a str,
            chunks: u32,
            features: u32,
            compressed_size: u64,
            uncompressed_size: u64,
            checkpoints: Option<usize>,
            blob_meta_size: u64,
        }
        #[derive(Serialize)]
        struct Report<'a> {
            artifact: &'a zran::artifact::ArtifactManifest,
            inodes: u64,
            chunk_size: u32,
            flags: u64,
            root_nid: u16,
            bootstrap_size: u64,
            blob_meta_size: u64,
            chunk_table_entries: usize,
            checkpoints: usize,
            image_size: u64,
            prefetch: &'a [String],
            blobs: Vec<Blob<'a>>,
        }
        let blobs = a
            .bootstrap
            .blobs
            .iter()
            .enumerate()
            .map(|(i, b)| Blob {
                id: &b.id,
                chunks: b.chunk_count,
                features: b.features,
                compressed_size: b.compressed_size,
                uncompressed_size: b.uncompressed_size,
                checkpoints: a.metas.get(&i).map(|m| m.contexts.len()),
                blob_meta_size: b.meta_size,
            })
            .collect();
        let r = Report {
            artifact: &a.manifest,
            inodes: s.inodes,
            chunk_size: s.chunk_size,
            flags: s.flags,
            root_nid: s.root_nid,
            bootstrap_size: a.bootstrap_bytes,
            blob_meta_size: a.meta_bytes,
            chunk_table_entries: a.bootstrap.chunk_table.len(),
            checkpoints: contexts,
            image_size,
            prefetch: &prefetch,
            blobs,
        };
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!("artifact   {}", dir.display());
    println!("image      {}", a.manifest.source);
    println!("manifest   {}", a.manifest.manifest_digest);
    println!(
        "bootstrap  RAFS v6, {} bytes, {} inodes, chunk size {}, flags {:#x}",
        a.bootstrap_bytes, s.inodes, s.chunk_size, s.flags
    );
    println!(
        "blobs      {} ({} chunk table entries, {} checkpoints)",
        a.bootstrap.blobs.len(),
        a.bootstrap.chunk_table.len(),
        contexts
    );
    for (i, b) in a.bootstrap.blobs.iter().enumerate() {
        let ctx = a.metas.get(&i).map_or("-".to_string(), |m| m.contexts.len().to_string());
        println!(
            "  {i:>3}  sha256:{}  {:>12}  {:>7} chunks  {:>6} checkpoints  {:>12} uncompressed  meta {} bytes",
            b.id, b.compressed_size, b.chunk_count, ctx, b.uncompressed_size, b.meta_size
        );
    }
    let past: u32 = a.manifest.layers.iter().map(|l| l.contexts_past_member_end).sum();
    if past > 0 {
        println!(
            "nydus 2.2  cannot decode {past} checkpoints that reach the end of a gzip member (zran and later Nydus can)"
        );
    }
    println!("prefetch   {} files", prefetch.len());
    let total = a.bootstrap_bytes + a.meta_bytes;
    println!(
        "size       {} bytes ({:.2}% of {} bytes of layers)",
        total,
        100.0 * total as f64 / image_size.max(1) as f64,
        image_size
    );
    Ok(())
}
