//! `zran gz index` and `zran gz extract`.

use super::util::{byte_progress, parse_size};
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use zran::gzip::{self, Extractor, Index, IndexBuilder, zidx};

#[derive(Debug, Subcommand)]
pub enum GzCommand {
    /// Build a seek index of a gzip file in one pass (default output FILE.gz.zidx).
    Index(IndexArgs),
    /// Write uncompressed bytes [offset, offset+length) of a gzip file to stdout.
    Extract(ExtractArgs),
}

#[derive(Debug, Args)]
pub struct IndexArgs {
    /// The gzip file ("-" for standard input, which then needs -o).
    pub file: PathBuf,
    /// Where to write the index.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Checkpoint spacing in uncompressed bytes (K, M, G suffixes).
    #[arg(long, value_parser = parse_size, default_value = "1M")]
    pub span: u64,
    /// Print a summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Cores to decode on: with 2 or more, a second thread decodes chunks of a file (not of
    /// standard input) ahead of the pass; the index is the same. 0: as many as the machine has.
    #[arg(short = 'j', long, default_value_t = 0)]
    pub threads: usize,
}

#[derive(Debug, Args)]
pub struct ExtractArgs {
    /// The gzip file.
    pub file: PathBuf,
    /// The index (default FILE.gz.zidx if it exists; otherwise one is built in memory).
    #[arg(long)]
    pub index: Option<PathBuf>,
    /// Uncompressed offset of the first byte.
    #[arg(long)]
    pub offset: u64,
    /// Number of bytes.
    #[arg(long)]
    pub length: u64,
}

pub fn run(cmd: GzCommand) -> anyhow::Result<()> {
    match cmd {
        GzCommand::Index(args) => index(args),
        GzCommand::Extract(args) => extract(args),
    }
}

#[derive(Serialize)]
struct Summary<'a> {
    file: &'a Path,
    index: &'a Path,
    compressed_size: u64,
    uncompressed_size: u64,
    members: u64,
    span: u64,
    checkpoints: usize,
    index_size: u64,
    index_ratio: f64,
    seconds: f64,
    mb_per_sec_uncompressed: f64,
    /// Chunks decoded on a second core.
    speculation: gzip::Speculation,
}

fn default_index_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".zidx");
    PathBuf::from(s)
}

fn build(file: &Path, span: u64, threads: usize) -> anyhow::Result<(Index, gzip::Speculation)> {
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // Speculation reads a few chunks ahead of the pass before it decodes them: from a pipe that
    // would hold up decoding of what has arrived, so only files are read that way.
    let chunk = if threads >= 2 && file != Path::new("-") { gzip::DEFAULT_SPECULATE_CHUNK } else { 0 };
    let builder = IndexBuilder::new().span(span).speculate(chunk);
    let name = file.display().to_string();
    let index = if file == Path::new("-") {
        let bar = byte_progress(None, "indexing");
        let r = builder.build_counted(bar.wrap_read(std::io::stdin().lock()), &mut gzip::NullSink);
        bar.finish_and_clear();
        r
    } else {
        let f = File::open(file).with_context(|| format!("cannot open {name}"))?;
        let len = f.metadata().ok().map(|m| m.len());
        let bar = byte_progress(len, "indexing");
        let r = builder
            .build_counted(bar.wrap_read(std::io::BufReader::with_capacity(0, f)), &mut gzip::NullSink);
        bar.finish_and_clear();
        r
    };
    index.with_context(|| format!("cannot index {name}"))
}

fn index(args: IndexArgs) -> anyhow::Result<()> {
    let output = match (&args.output, args.file == Path::new("-")) {
        (Some(o), _) => o.clone(),
        (None, false) => default_index_path(&args.file),
        (None, true) => bail!("reading standard input needs -o INDEX"),
    };
    let started = Instant::now();
    let (index, speculation) = build(&args.file, args.span, args.threads)?;
    let seconds = started.elapsed().as_secs_f64();
    zidx::write_file(&index, &output).with_context(|| format!("cannot write index {}", output.display()))?;
    let index_size = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
    let summary = Summary {
        file: &args.file,
        index: &output,
        compressed_size: index.compressed_size,
        uncompressed_size: index.uncompressed_size,
        members: index.members,
        span: index.span,
        checkpoints: index.checkpoints.len(),
        index_size,
        index_ratio: index_size as f64 / index.compressed_size.max(1) as f64,
        seconds,
        mb_per_sec_uncompressed: index.uncompressed_size as f64 / 1e6 / seconds.max(1e-9),
        speculation,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        eprintln!(
            "{}: {} checkpoints over {} -> {} bytes ({} members); index {} bytes ({:.2}% of the gzip), {:.0} MB/s",
            output.display(),
            summary.checkpoints,
            summary.compressed_size,
            summary.uncompressed_size,
            summary.members,
            index_size,
            summary.index_ratio * 100.0,
            summary.mb_per_sec_uncompressed,
        );
    }
    Ok(())
}

fn extract(args: ExtractArgs) -> anyhow::Result<()> {
    let name = args.file.display().to_string();
    let file = File::open(&args.file).with_context(|| format!("cannot open {name}"))?;
    let file_len = file.metadata().with_context(|| format!("cannot stat {name}"))?.len();
    let index_path = args.index.clone().or_else(|| {
        let p = default_index_path(&args.file);
        p.exists().then_some(p)
    });
    let index = match &index_path {
        Some(p) => {
            let index = zidx::read_file(p).with_context(|| format!("bad index {}", p.display()))?;
            check_belongs(&index, &file, file_len)
                .with_context(|| format!("index {} does not belong to {name}", p.display()))?;
            index
        }
        None => {
            tracing::info!("no index for {name}; building one in memory");
            build(&args.file, gzip::DEFAULT_SPAN, 0)?.0
        }
    };
    let end = args.offset.checked_add(args.length);
    if end.is_none_or(|e| e > index.uncompressed_size) {
        bail!(
            "range {}+{} is past the end of {name} ({} bytes uncompressed)",
            args.offset,
            args.length,
            index.uncompressed_size
        );
    }
    let ex = Extractor::new(&index, &file);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut buf = vec![0u8; 4 << 20];
    let mut offset = args.offset;
    let mut left = args.length;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        let got = ex
            .read_at(offset, &mut buf[..n])
            .with_context(|| format!("cannot read {name} at uncompressed offset {offset}"))?;
        if got == 0 {
            bail!("{name} ended early at uncompressed offset {offset}");
        }
        out.write_all(&buf[..got])?;
        offset += got as u64;
        left -= got as u64;
    }
    out.flush()?;
    Ok(())
}

/// An index belongs to a file if the sizes and the final member's trailer agree.
fn check_belongs(index: &Index, file: &File, file_len: u64) -> anyhow::Result<()> {
    use zran::gzip::ReadAt;
    if index.compressed_size != file_len {
        bail!("the index is for {} bytes of gzip, the file has {file_len}", index.compressed_size);
    }
    // With zero padding after the last member the file ends in zeros, and only sizes compare.
    let mut tail = [0u8; 8];
    if file_len >= 8 && file.read_at(file_len - 8, &mut tail)? == 8 && tail != [0; 8] && tail != index.tail {
        bail!("the file's last 8 bytes differ from the index's record");
    }
    Ok(())
}
