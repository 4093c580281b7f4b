//! How each layer of an image can be read for an artifact: its format (from its media type,
//! annotations and footer), its eStargz TOC where the manifest vouches for it, and the chunk
//! size that the TOCs allow.

use super::{LayerInput, toc_chunk_size, toc_fits};
use crate::estargz::{self, FooterKind, TocError};
use crate::oci::{Compression, Descriptor, Image, OciError};
use crate::zstdchunked;
use serde::Serialize;

/// How a layer is stored, as far as lazy loading is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayerFormat {
    /// Plain gzip tar: served through a zran index.
    Gzip,
    /// eStargz with its TOC digest in the manifest: served from the TOC.
    Estargz,
    /// eStargz footer, but no TOC digest annotation to trust the TOC by.
    EstargzUnverified,
    LegacyStargz,
    /// zstd:chunked (containers/storage): its TOC lists every file and zstd frame.
    ZstdChunked,
    /// An eStargz TOC inside a zstd:chunked layer (`ctr-remote image convert --zstdchunked`):
    /// both the zstd-chunked annotations and `containerd.io/snapshot/stargz/toc.digest`.
    EstargzZstd,
    /// Plain `tar+zstd`: restartable only at frame boundaries.
    Zstd,
    /// Plain tar.
    Uncompressed,
    Unknown,
}

impl LayerFormat {
    /// The name `inspect` prints (the serialized form).
    pub fn name(self) -> &'static str {
        match self {
            LayerFormat::Gzip => "gzip",
            LayerFormat::Estargz => "estargz",
            LayerFormat::EstargzUnverified => "estargz-unverified",
            LayerFormat::LegacyStargz => "legacy-stargz",
            LayerFormat::ZstdChunked => "zstd-chunked",
            LayerFormat::EstargzZstd => "estargz-zstd",
            LayerFormat::Zstd => "zstd",
            LayerFormat::Uncompressed => "uncompressed",
            LayerFormat::Unknown => "unknown",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Reading a layer's tail to find its footer.
    #[error(transparent)]
    Read(Box<OciError>),
    #[error("{image}: layer {layer} ({digest})")]
    Toc { image: String, layer: usize, digest: String, source: Box<TocError> },
    #[error(
        "{image}: layer {layer} ({digest}, {media_type}) is {}: zran generate reads gzip (plain or eStargz), \
         zstd (plain or zstd:chunked) and uncompressed tar layers",
        format.name()
    )]
    Unsupported { image: String, layer: usize, digest: String, media_type: String, format: LayerFormat },
    #[error("--chunk-size {0}: must be a power of two from 4K to 16M")]
    ChunkSize(u64),
}

/// The format of layer `d` of `image`, and where its TOC starts when its footer says.
///
/// zstd-chunked annotations make a layer zstd:chunked, or eStargz-in-zstd when it carries
/// `containerd.io/snapshot/stargz/toc.digest` too: stargz-snapshotter writes both on purpose
/// (one TOC, its compressed bytes named by `manifest-checksum`, its JSON by `toc.digest`), so
/// unlike containers/storage such a layer is not refused here; its TOC reader checks both
/// digests, and annotations that disagree refuse the layer there. Without annotations the
/// footer decides (read from the blob's last bytes).
pub fn layer_format(image: &Image, d: &Descriptor) -> Result<(LayerFormat, Option<u64>), InputError> {
    let stargz = d.estargz_toc_digest().is_some();
    if zstdchunked::has_annotations(d) {
        let f = if stargz { LayerFormat::EstargzZstd } else { LayerFormat::ZstdChunked };
        return Ok((f, None));
    }
    let compression = d.compression();
    if !matches!(compression, Compression::Gzip | Compression::Zstd) {
        let f =
            if compression == Compression::None { LayerFormat::Uncompressed } else { LayerFormat::Unknown };
        return Ok((f, None));
    }
    // The footer decides; the annotation says whether the TOC can be trusted.
    let n = estargz::footer::MAX_FOOTER.max(zstdchunked::footer::MAX_FOOTER_FRAME).min(d.size as usize);
    let mut tail = vec![0u8; n];
    let got = image
        .source
        .read_at(&d.digest, d.size - n as u64, &mut tail)
        .map_err(|e| InputError::Read(Box::new(e)))?;
    tail.truncate(got);
    if compression == Compression::Zstd {
        let f = if stargz { LayerFormat::EstargzZstd } else { LayerFormat::ZstdChunked };
        return Ok(match zstdchunked::footer::parse_footer(&tail) {
            Ok(Some(footer)) => (f, Some(footer.toc.offset)),
            // A footer of an unknown manifest type: its TOC reader says what is wrong.
            Err(_) => (f, None),
            Ok(None) => (LayerFormat::Zstd, None),
        });
    }
    let footer = estargz::detect_footer(&tail, d.size);
    Ok(match footer.map(|f| f.kind) {
        Some(FooterKind::Estargz) if stargz => (LayerFormat::Estargz, footer.map(|f| f.toc_offset)),
        Some(FooterKind::Estargz) => (LayerFormat::EstargzUnverified, footer.map(|f| f.toc_offset)),
        Some(FooterKind::LegacyStargz) => (LayerFormat::LegacyStargz, footer.map(|f| f.toc_offset)),
        Some(FooterKind::ZstdChunked) => (LayerFormat::ZstdChunked, footer.map(|f| f.toc_offset)),
        None => (LayerFormat::Gzip, None),
    })
}

/// How each layer is read (eStargz TOCs first, small, so that the chunk size can follow them),
/// and the chunk size: `requested`, or the eStargz layers' own, or 1 MiB.
pub fn layer_inputs(
    image: &Image,
    ignore_toc: bool,
    requested_chunk_size: Option<u64>,
) -> Result<(Vec<LayerInput>, u32), InputError> {
    let layers = &image.manifest.layers;
    let mut tocs = Vec::with_capacity(layers.len());
    // How each layer that is not read from a TOC is read.
    let mut passes = Vec::with_capacity(layers.len());
    let mut diff_ids: Option<Vec<String>> = None;
    for (i, d) in layers.iter().enumerate() {
        let (format, toc_offset) = layer_format(image, d)?;
        // Every zstd layer (plain, zstd:chunked, or an eStargz TOC inside zstd frames) is read
        // as the zstd stream it is; its DiffID, from the image config, checks the pass.
        if d.compression() == Compression::Zstd
            || matches!(format, LayerFormat::Zstd | LayerFormat::ZstdChunked | LayerFormat::EstargzZstd)
        {
            let ids = diff_ids.get_or_insert_with(|| config_diff_ids(image));
            passes.push(LayerInput::Zstd {
                chunked: format != LayerFormat::Zstd,
                diff_id: ids.get(i).cloned(),
            });
            // An eStargz TOC inside zstd frames is used as an eStargz layer's (its chunks are
            // frames; nothing is decompressed), falling back to the stream when it does not fit.
            let toc = if format == LayerFormat::EstargzZstd && !ignore_toc {
                Some(estargz::read_zstd_toc(image.source.as_ref(), d, estargz::Verify::Required).map_err(
                    |source| InputError::Toc {
                        image: image.name.clone(),
                        layer: i,
                        digest: d.digest.to_string(),
                        source: Box::new(source),
                    },
                )?)
            } else {
                None
            };
            tocs.push(toc);
            continue;
        }
        if format == LayerFormat::Uncompressed {
            passes.push(LayerInput::Tar);
            tocs.push(None);
            continue;
        }
        passes.push(LayerInput::Gzip);
        let toc = match format {
            LayerFormat::Gzip => None,
            LayerFormat::Estargz if !ignore_toc => Some(
                estargz::read_toc_from(image.source.as_ref(), d, estargz::Verify::Required, toc_offset)
                    .map_err(|source| InputError::Toc {
                        image: image.name.clone(),
                        layer: i,
                        digest: d.digest.to_string(),
                        source: Box::new(source),
                    })?,
            ),
            LayerFormat::Estargz | LayerFormat::EstargzUnverified | LayerFormat::LegacyStargz => None,
            other => {
                return Err(InputError::Unsupported {
                    image: image.name.clone(),
                    layer: i,
                    digest: d.digest.to_string(),
                    media_type: d.media_type.to_string(),
                    format: other,
                });
            }
        };
        tocs.push(toc);
    }
    let chunk_size = match requested_chunk_size {
        Some(c) => c,
        None => {
            let sizes: Vec<u64> = tocs.iter().flatten().filter_map(toc_chunk_size).collect();
            match sizes.first() {
                Some(&c)
                    if sizes.iter().all(|&s| s == c)
                        && c.is_power_of_two()
                        && (4096..=16 << 20).contains(&c) =>
                {
                    c
                }
                _ => 1 << 20,
            }
        }
    };
    if !chunk_size.is_power_of_two() || !(4096..=16 << 20).contains(&chunk_size) {
        return Err(InputError::ChunkSize(chunk_size));
    }
    let chunk_size = chunk_size as u32;
    let inputs: Vec<LayerInput> = tocs
        .into_iter()
        .zip(passes)
        .enumerate()
        .map(|(i, (toc, pass))| match toc {
            Some(toc) => match toc_fits(&toc, chunk_size) {
                Ok(()) => LayerInput::Estargz(Box::new(toc)),
                Err(why) => {
                    tracing::info!(
                        layer = i,
                        "eStargz TOC chunks do not fit ({why}): indexing the layer as {}",
                        if toc.zstd { "zstd" } else { "gzip" }
                    );
                    pass
                }
            },
            None => pass,
        })
        .collect();

    Ok((inputs, chunk_size))
}

/// The image config's `rootfs.diff_ids` (empty, with a warning, when the config cannot be
/// read: the zstd passes then go unchecked by DiffID, their frames' checksums still hold).
fn config_diff_ids(image: &Image) -> Vec<String> {
    let read = || -> Result<Vec<String>, String> {
        let c = &image.manifest.config;
        let bytes = image.source.fetch(&c.digest, c.size.min(16 << 20)).map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        let ids = v
            .pointer("/rootfs/diff_ids")
            .and_then(|v| v.as_array())
            .ok_or_else(|| "no rootfs.diff_ids".to_string())?;
        Ok(ids.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
    };
    match read() {
        Ok(ids) if ids.len() == image.manifest.layers.len() => ids,
        Ok(ids) => {
            tracing::warn!(
                image = %image.name,
                "the config has {} DiffIDs for {} layers: zstd layers are not checked by DiffID",
                ids.len(),
                image.manifest.layers.len()
            );
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(image = %image.name, "the image config: {e}: zstd layers are not checked by DiffID");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LayerFormat;

    #[test]
    fn names_are_the_serialized_forms() {
        for f in [
            LayerFormat::Gzip,
            LayerFormat::Estargz,
            LayerFormat::EstargzUnverified,
            LayerFormat::LegacyStargz,
            LayerFormat::ZstdChunked,
            LayerFormat::EstargzZstd,
            LayerFormat::Zstd,
            LayerFormat::Uncompressed,
            LayerFormat::Unknown,
        ] {
            assert_eq!(serde_json::to_value(f).ok(), Some(serde_json::Value::from(f.name())));
        }
    }
}
