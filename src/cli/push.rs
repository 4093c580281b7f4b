//! `zran push DIR [IMAGE]`: store a `generate` artifact beside its image, where `zran mount
//! IMAGE` finds it.

use super::image::ImageArgs;
use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};
use zran::artifact::{self, publish};

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The artifact directory `zran generate` wrote.
    pub dir: PathBuf,
    /// The image to store it beside (default: the image it was generated from, as zran.json
    /// names it). It must be that image: the same manifest digest.
    pub image: Option<String>,
    #[command(flatten)]
    pub image_args: ImageArgs,
    /// Print the artifact's manifest digest as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: PushArgs) -> anyhow::Result<()> {
    let reference = match &args.image {
        Some(i) => i.clone(),
        None => artifact::open_dir(&args.dir)?.manifest.source,
    };
    push(&args.dir, &reference, &args.image_args, args.json)
}

/// Push `dir` beside `reference` and say where it went.
pub fn push(dir: &Path, reference: &str, image_args: &ImageArgs, json: bool) -> anyhow::Result<()> {
    let image = image_args.open(reference)?;
    let digest = publish::push(dir, &image)
        .with_context(|| format!("cannot store the artifact {} beside {}", dir.display(), image.name))?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "image": image.name,
                "subject": image.manifest.digest.to_string(),
                "artifact": digest.to_string(),
                "artifactType": publish::ARTIFACT_TYPE,
            })
        );
    } else {
        println!("{} {digest} (referrer of {})", image.name, image.manifest.digest);
    }
    Ok(())
}
