//! Images where users keep them: registries and OCI image layouts on disk.
//!
//! Owns image references, digests, manifests and indexes (with platform choice), the registry
//! client (auth, range reads, retries) and the OCI layout reader, behind one interface, so that
//! the rest of zran does not care where an image lives. Calls nothing else in the crate.

pub mod digest;
pub mod image;
pub mod reference;

pub use digest::{Digest, Hasher};
pub use reference::{ImageRef, LayoutRef, RegistryRef};
pub mod hosts;
pub mod layout;
pub mod registry;
pub mod source;

pub use image::{Compression, Descriptor, Manifest, Platform, Referrer, ReferrerIndex};
pub use registry::{RegistryOptions, RegistrySource};
pub use source::{BlobSource, Image, OciError};

/// How to open an image.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// The platform to choose from an index; default this machine's.
    pub platform: Option<Platform>,
    pub registry: RegistryOptions,
}

/// Resolve a reference to one platform's manifest, in a registry or a layout.
/// Where images are written: a registry repository, or a layout (made when absent).
pub fn open_target(reference: &ImageRef, opts: &OpenOptions) -> Result<Box<dyn BlobSource>, OciError> {
    match reference {
        ImageRef::Layout(l) => Ok(Box::new(layout::LayoutSource::create(l)?)),
        ImageRef::Registry(r) => Ok(Box::new(RegistrySource::new(r, &opts.registry)?)),
    }
}

pub fn open(reference: &ImageRef, opts: &OpenOptions) -> Result<Image, OciError> {
    let platform = opts.platform.clone().unwrap_or_else(Platform::host);
    match reference {
        ImageRef::Layout(l) => {
            let source = layout::LayoutSource::open(l)?;
            let entry = source.entry().to_string();
            source::resolve(l.to_string(), Box::new(source), &entry, &platform)
        }
        ImageRef::Registry(r) => {
            let source = RegistrySource::new(r, &opts.registry)?;
            source::resolve(r.to_string(), Box::new(source), &r.reference(), &platform)
        }
    }
}
