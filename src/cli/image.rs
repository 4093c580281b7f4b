//! Options shared by every command that opens an image.

use anyhow::Context;
use clap::Args;
use zran::oci::{self, ImageRef, OpenOptions, Platform, RegistryOptions};

#[derive(Debug, Args, Clone)]
pub struct ImageArgs {
    /// The platform to choose from a multi-platform image (OS/ARCH[/VARIANT]; default this
    /// machine's).
    #[arg(long)]
    pub platform: Option<Platform>,
    /// Registry credentials USER:PASS (default: ~/.docker/config.json).
    #[arg(long, value_name = "USER:PASS")]
    pub creds: Option<String>,
    /// Speak plain HTTP to the registry (loopback hosts always do).
    #[arg(long)]
    pub plain_http: bool,
    /// A pull-through mirror HOST[:PORT] (or URL) to try first (repeatable).
    #[arg(long, value_name = "HOST")]
    pub mirror: Vec<String>,
    /// containerd's registry host directory: mirrors and plain-HTTP upstreams from
    /// DIR/HOST[:PORT]/hosts.toml (or DIR/_default/hosts.toml), as containerd reads them.
    #[arg(long, value_name = "DIR")]
    pub hosts_dir: Option<std::path::PathBuf>,
    /// Docker's config file to take credentials from (default $DOCKER_CONFIG/config.json,
    /// else ~/.docker/config.json).
    #[arg(long, value_name = "FILE")]
    pub docker_config: Option<std::path::PathBuf>,
}

impl ImageArgs {
    pub fn open(&self, image: &str) -> anyhow::Result<oci::Image> {
        let reference: ImageRef = image.parse()?;
        let opts = self.options()?;
        oci::open(&reference, &opts).with_context(|| format!("cannot open image {reference}"))
    }

    /// The options images are opened with.
    pub fn options(&self) -> anyhow::Result<OpenOptions> {
        let creds = match &self.creds {
            Some(c) => {
                let (u, p) = c.split_once(':').context("--creds takes USER:PASS")?;
                Some((u.to_string(), p.to_string()))
            }
            None => None,
        };
        let opts = OpenOptions {
            platform: self.platform.clone(),
            registry: RegistryOptions {
                plain_http: self.plain_http,
                creds,
                mirrors: self.mirror.clone(),
                hosts_dir: self.hosts_dir.clone(),
                docker_config: self.docker_config.clone(),
                ..RegistryOptions::default()
            },
        };
        Ok(opts)
    }
}
