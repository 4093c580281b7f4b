//! Manifests, indexes and platforms: what an image is made of, parsed from the JSON that
//! registries and layouts hold (with `oci-spec`), checked, and reduced to what zran uses.

use super::digest::Digest;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// What a manifest request accepts.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json;q=0.9, application/vnd.docker.distribution.manifest.v2+json;q=0.9";

/// The manifest annotation eStargz layers carry: the sha256 of their TOC.
pub const ESTARGZ_TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";
/// The manifest annotation eStargz layers carry: their uncompressed size.
pub const ESTARGZ_UNCOMPRESSED_SIZE: &str = "io.containers.estargz.uncompressed-size";

/// The descriptor of the empty JSON object `{}`, the config of artifacts that have none.
pub const EMPTY_JSON: &str = "application/vnd.oci.empty.v1+json";

/// The largest manifest or index accepted (the distribution spec's limit is 4 MiB).
pub const MAX_MANIFEST: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{what} {digest} is not valid JSON of its kind: {message}")]
    Parse { what: &'static str, digest: Digest, message: String },
    #[error("unsupported manifest media type {media_type:?} ({digest})")]
    MediaType { media_type: String, digest: Digest },
    #[error("invalid descriptor in {digest}: {message}")]
    Descriptor { digest: Digest, message: String },
    #[error("no image for platform {wanted} in index {digest}; it has: {available}")]
    NoPlatform { wanted: Platform, digest: Digest, available: String },
    #[error("invalid platform {0:?}: expected OS/ARCH[/VARIANT]")]
    BadPlatform(String),
    #[error("{0}")]
    Other(String),
}

/// `os/arch[/variant]`, with architectures named as OCI names them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of this machine.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// Whether an image built for `other` runs here: same OS and architecture, and the same
    /// variant when both name one (arm64 images often omit `v8`).
    pub fn matches(&self, other: &Platform) -> bool {
        let norm = |v: &Option<String>, arch: &str| match (v.as_deref(), arch) {
            (Some("v8"), "arm64") | (None, _) => None,
            (Some(v), _) => Some(v.to_string()),
        };
        self.os == other.os
            && self.architecture == other.architecture
            && (norm(&self.variant, &self.architecture).is_none()
                || norm(&other.variant, &other.architecture).is_none()
                || norm(&self.variant, &self.architecture) == norm(&other.variant, &other.architecture))
    }
}

impl FromStr for Platform {
    type Err = ImageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => {
                Ok(Platform { os: os.to_string(), architecture: arch.to_string(), variant: None })
            }
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => Err(ImageError::BadPlatform(s.to_string())),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A manifest that names another as its `subject` (a signature, an SBOM, a zran artifact), as
/// the referrers API and its tag fallback list them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Referrer {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An index listing referrers: the answer of `GET /v2/NAME/referrers/DIGEST`, and what the
/// fallback tag `sha256-HEX` holds on registries without that API.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferrerIndex {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: String,
    #[serde(default)]
    pub manifests: Vec<Referrer>,
}

impl ReferrerIndex {
    pub fn new(manifests: Vec<Referrer>) -> ReferrerIndex {
        ReferrerIndex { schema_version: 2, media_type: OCI_INDEX.to_string(), manifests }
    }

    pub fn parse(raw: &[u8], what: &str) -> Result<ReferrerIndex, ImageError> {
        // serde would also take a JSON array for the struct.
        if raw.trim_ascii_start().first() != Some(&b'{') {
            return Err(ImageError::Other(format!("{what}: not a referrers index: not a JSON object")));
        }
        serde_json::from_slice(raw)
            .map_err(|e| ImageError::Other(format!("{what}: not a referrers index: {e}")))
    }
}

/// The tag that stands in for the referrers API: `sha256-HEX` of the subject.
pub fn referrers_tag(subject: &Digest) -> String {
    format!("{}-{}", subject.algorithm(), subject.hex())
}

/// The `subject` a manifest names, if any.
pub fn subject_of(raw: &[u8]) -> Option<Digest> {
    #[derive(serde::Deserialize)]
    struct S {
        digest: String,
    }
    #[derive(serde::Deserialize)]
    struct M {
        subject: Option<S>,
    }
    serde_json::from_slice::<M>(raw).ok()?.subject?.digest.parse().ok()
}

/// A content descriptor: what a manifest says about a blob.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Descriptor {
    pub media_type: String,
    #[serde(serialize_with = "ser_digest")]
    pub digest: Digest,
    pub size: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Set on artifacts (signatures, zran artifacts), which are not images to run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

fn ser_digest<S: serde::Serializer>(d: &Digest, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(d)
}

/// How a layer is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    Zstd,
    None,
    Unknown,
}

impl Descriptor {
    pub fn compression(&self) -> Compression {
        let m = self.media_type.as_str();
        if m.ends_with("tar+gzip") || m.ends_with(".tar.gzip") || m.ends_with("tar.gzip") {
            Compression::Gzip
        } else if m.ends_with("tar+zstd") || m.ends_with("tar.zstd") {
            Compression::Zstd
        } else if m.ends_with(".tar") || m.ends_with("layer.v1.tar") {
            Compression::None
        } else {
            Compression::Unknown
        }
    }

    /// The eStargz TOC digest the manifest vouches for, if any.
    pub fn estargz_toc_digest(&self) -> Option<&str> {
        self.annotations.get(ESTARGZ_TOC_DIGEST).map(String::as_str)
    }

    fn from_spec(d: &oci_spec::image::Descriptor, within: &Digest) -> Result<Descriptor, ImageError> {
        let digest = d
            .digest()
            .to_string()
            .parse::<Digest>()
            .map_err(|e| ImageError::Descriptor { digest: within.clone(), message: e.to_string() })?;
        let platform = d.platform().as_ref().map(|p| Platform {
            os: p.os().to_string(),
            architecture: p.architecture().to_string(),
            variant: p.variant().clone(),
        });
        let annotations = d
            .annotations()
            .as_ref()
            .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        Ok(Descriptor {
            media_type: d.media_type().to_string(),
            digest,
            size: d.size(),
            annotations,
            platform,
            artifact_type: d.artifact_type().as_ref().map(|t| t.to_string()),
        })
    }
}

/// A single-platform image manifest.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Manifest {
    #[serde(serialize_with = "ser_digest")]
    pub digest: Digest,
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(skip)]
    pub raw: Vec<u8>,
}

/// What a manifest reference resolved to.
#[derive(Debug, Clone)]
pub enum ManifestKind {
    Image(Box<Manifest>),
    Index { digest: Digest, manifests: Vec<Descriptor> },
}

/// The media type a manifest document declares for itself, if it does.
fn declared_type(raw: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        layers: Option<serde_json::Value>,
    }
    let p: Probe = serde_json::from_slice(raw).ok()?;
    p.media_type.or(match (p.manifests, p.layers) {
        (Some(_), _) => Some(OCI_INDEX.to_string()),
        (None, Some(_)) => Some(OCI_MANIFEST.to_string()),
        _ => None,
    })
}

/// Parse a manifest or index whose bytes have been checked against `digest`. `content_type`
/// is what the server said, used when the document does not say.
pub fn parse_manifest(
    raw: Vec<u8>,
    digest: Digest,
    content_type: Option<&str>,
) -> Result<ManifestKind, ImageError> {
    let media_type = declared_type(&raw)
        .or_else(|| content_type.map(|c| c.split(';').next().unwrap_or(c).trim().to_string()))
        .unwrap_or_default();
    match media_type.as_str() {
        OCI_INDEX | DOCKER_LIST => {
            let index: oci_spec::image::ImageIndex = serde_json::from_slice(&raw).map_err(|e| {
                ImageError::Parse { what: "index", digest: digest.clone(), message: e.to_string() }
            })?;
            let manifests = index
                .manifests()
                .iter()
                .map(|d| Descriptor::from_spec(d, &digest))
                .collect::<Result<_, _>>()?;
            Ok(ManifestKind::Index { digest, manifests })
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let m: oci_spec::image::ImageManifest = serde_json::from_slice(&raw).map_err(|e| {
                ImageError::Parse { what: "manifest", digest: digest.clone(), message: e.to_string() }
            })?;
            let config = Descriptor::from_spec(m.config(), &digest)?;
            let layers =
                m.layers().iter().map(|d| Descriptor::from_spec(d, &digest)).collect::<Result<_, _>>()?;
            let annotations = m
                .annotations()
                .as_ref()
                .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default();
            Ok(ManifestKind::Image(Box::new(Manifest {
                digest,
                media_type,
                config,
                layers,
                annotations,
                raw,
            })))
        }
        other => Err(ImageError::MediaType { media_type: other.to_string(), digest }),
    }
}

/// Choose the manifest for `wanted` among an index's entries.
pub fn choose_platform<'a>(
    index_digest: &Digest,
    manifests: &'a [Descriptor],
    wanted: &Platform,
) -> Result<&'a Descriptor, ImageError> {
    let is_manifest = |d: &&Descriptor| {
        matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST | OCI_INDEX | DOCKER_LIST)
    };
    manifests
        .iter()
        .filter(is_manifest)
        .find(|d| d.platform.as_ref().is_some_and(|p| wanted.matches(p)))
        .or_else(|| {
            // An index of one entry without platform (as OCI layouts often are) is that image.
            let candidates: Vec<&Descriptor> = manifests.iter().filter(is_manifest).collect();
            (candidates.len() == 1 && candidates[0].platform.is_none()).then(|| candidates[0])
        })
        .ok_or_else(|| ImageError::NoPlatform {
            wanted: wanted.clone(),
            digest: index_digest.clone(),
            available: manifests
                .iter()
                .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referrers() {
        let subject = Digest::of(b"image");
        assert_eq!(referrers_tag(&subject), format!("sha256-{}", subject.hex()));
        let m = format!(
            r#"{{"schemaVersion":2,"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{subject}","size":5}}}}"#
        );
        assert_eq!(subject_of(m.as_bytes()), Some(subject));
        assert_eq!(subject_of(br#"{"schemaVersion":2}"#), None);
        assert_eq!(subject_of(br#"{"subject":{"digest":"md5:x"}}"#), None);
        // What a registry answers, unknown fields and all; and what zran writes back.
        let raw = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:00","size":7,
             "artifactType":"application/vnd.zran.artifact.v1","platform":{"os":"linux"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:01","size":8,
             "annotations":{"a":"b"}}]}"#;
        let index = ReferrerIndex::parse(raw, "test").unwrap();
        assert_eq!(index.manifests.len(), 2);
        assert_eq!(index.manifests[0].artifact_type.as_deref(), Some("application/vnd.zran.artifact.v1"));
        assert_eq!(index.manifests[1].annotations["a"], "b");
        let again = ReferrerIndex::parse(&serde_json::to_vec(&index).unwrap(), "test").unwrap();
        assert_eq!(again.manifests, index.manifests);
        assert!(ReferrerIndex::parse(b"[1]", "test").unwrap_err().to_string().contains("test"));
        assert!(ReferrerIndex::parse(br#"{"schemaVersion":2}"#, "t").unwrap().manifests.is_empty());
    }

    #[test]
    fn platforms() {
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert!(p.matches(&"linux/arm64".parse().unwrap()));
        assert!(!p.matches(&"linux/amd64".parse().unwrap()));
        let v7: Platform = "linux/arm/v7".parse().unwrap();
        assert!(!v7.matches(&"linux/arm/v6".parse().unwrap()));
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux/amd64/v2/x".parse::<Platform>().is_err());
        assert_eq!(Platform::host().to_string(), "linux/amd64");
    }

    #[test]
    fn manifests_and_indexes() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{}","size":10}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{}","size":20}}]}}"#,
            d('a'),
            d('b')
        );
        let digest = Digest::of(manifest.as_bytes());
        match parse_manifest(manifest.into_bytes(), digest, None).unwrap() {
            ManifestKind::Image(m) => {
                assert_eq!(m.layers.len(), 1);
                assert_eq!(m.layers[0].compression(), Compression::Gzip);
                assert_eq!(m.config.size, 10);
            }
            other => panic!("{other:?}"),
        }
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"arm64"}}}},{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":2,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            d('c'),
            d('e')
        );
        let idig = Digest::of(index.as_bytes());
        let ManifestKind::Index { manifests, .. } =
            parse_manifest(index.into_bytes(), idig.clone(), None).unwrap()
        else {
            panic!()
        };
        let amd = choose_platform(&idig, &manifests, &"linux/amd64".parse().unwrap()).unwrap();
        assert_eq!(amd.size, 2);
        let err = choose_platform(&idig, &manifests, &"linux/s390x".parse().unwrap()).unwrap_err();
        assert!(err.to_string().contains("linux/arm64, linux/amd64"), "{err}");
        let bad =
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{}}"#;
        assert!(parse_manifest(bad.to_vec(), Digest::of(bad), None).is_err());
        let odd = br#"{"mediaType":"text/html"}"#;
        assert!(matches!(
            parse_manifest(odd.to_vec(), Digest::of(odd), None),
            Err(ImageError::MediaType { .. })
        ));
    }
}
