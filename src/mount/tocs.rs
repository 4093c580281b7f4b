//! Images mounted straight from their layers' TOCs, with no artifact: every layer eStargz (a
//! TOC whose chunks fit one chunk size), eStargz in zstd (`ctr-remote --zstdchunked`), or
//! zstd:chunked, each TOC verified against the manifest. Decides whether an image qualifies
//! and reads its TOCs; `open` and the snapshotter build the bootstrap from them in memory.
//!
//! Calls `oci`, `estargz`, `zstdchunked` and `artifact` (layer formats, inputs, chunk size).

use super::MountError;
use crate::artifact::inputs::{self, LayerFormat};
use crate::artifact::{LayerInput, toc_chunk_size, toc_fits};
use crate::estargz::{self, Verify};
use crate::oci::Image;

/// How each layer of `image` is read from its TOC, and the chunk size: the eStargz TOCs' own
/// when they agree (1 MiB otherwise, and without them). Any layer that cannot be mounted from
/// its TOC makes an error that names every such layer; `given` is what the user named.
pub fn toc_inputs(image: &Image, given: &str) -> Result<(Vec<LayerInput>, u32), MountError> {
    let mut ins = Vec::with_capacity(image.manifest.layers.len());
    let mut refused: Vec<String> = Vec::new();
    let toc_err = |i: usize, message: String| MountError::TocRead {
        image: image.name.clone(),
        layer: i,
        digest: image.manifest.layers[i].digest.to_string(),
        message,
    };
    for (i, d) in image.manifest.layers.iter().enumerate() {
        let (format, toc_offset) =
            inputs::layer_format(image, d).map_err(|e| MountError::Inputs(Box::new(e)))?;
        match format {
            LayerFormat::Estargz => {
                let toc = estargz::read_toc_from(image.source.as_ref(), d, Verify::Required, toc_offset)
                    .map_err(|e| toc_err(i, e.to_string()))?;
                ins.push(Some(LayerInput::Estargz(Box::new(toc))));
            }
            // eStargz in zstd: its eStargz TOC, chunks of zstd frames.
            LayerFormat::EstargzZstd => {
                let toc = estargz::read_toc(image.source.as_ref(), d, Verify::Required)
                    .map_err(|e| toc_err(i, e.to_string()))?;
                ins.push(Some(LayerInput::Estargz(Box::new(toc))));
            }
            LayerFormat::ZstdChunked => {
                let toc = crate::zstdchunked::read_toc(image.source.as_ref(), d, Verify::Required)
                    .map_err(|e| toc_err(i, e.to_string()))?;
                ins.push(Some(LayerInput::ZstdChunkedToc(Box::new(toc))));
            }
            other => {
                refused.push(format!("layer {i} ({}) is {}", d.digest, other.name()));
                ins.push(None);
            }
        }
    }
    let sizes: Vec<u64> = ins
        .iter()
        .flatten()
        .filter_map(|i| match i {
            LayerInput::Estargz(t) => toc_chunk_size(t),
            _ => None,
        })
        .collect();
    let chunk_size = match sizes.first() {
        Some(&c)
            if sizes.iter().all(|&s| s == c) && c.is_power_of_two() && (4096..=16 << 20).contains(&c) =>
        {
            c as u32
        }
        _ => 1 << 20,
    };
    for (i, input) in ins.iter().enumerate() {
        if let Some(LayerInput::Estargz(t)) = input
            && let Err(why) = toc_fits(t, chunk_size)
        {
            refused.push(format!(
                "layer {i} ({}) is eStargz whose TOC chunks do not fit one chunk size ({why})",
                image.manifest.layers[i].digest
            ));
        }
    }
    if !refused.is_empty() {
        return Err(MountError::NotFromTocs {
            image: image.name.clone(),
            layers: refused.join("; "),
            given: given.to_string(),
        });
    }
    Ok((ins.into_iter().flatten().collect(), chunk_size))
}
