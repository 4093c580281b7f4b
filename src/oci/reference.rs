//! Image references: `oci:PATH[:TAG|@DIGEST]` for an OCI image layout on disk, and
//! `[HOST[:PORT]/]REPO[:TAG|@DIGEST]` for a registry, normalized as Docker does
//! (`alpine` is `docker.io/library/alpine:latest`).

use super::digest::Digest;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where an image lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    Layout(LayoutRef),
    Registry(RegistryRef),
}

/// An image in an OCI image layout directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutRef {
    pub path: PathBuf,
    /// A tag (`org.opencontainers.image.ref.name`) or a digest; none means the layout's only
    /// image.
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

/// An image in a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRef {
    /// `docker.io`, `ghcr.io`, `127.0.0.1:5000`, `[::1]:5000`.
    pub registry: String,
    /// `library/alpine`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ReferenceError {
    pub input: String,
    pub reason: String,
}

pub const DOCKER_HUB: &str = "docker.io";

impl RegistryRef {
    /// The host to talk to: Docker Hub's API lives at `registry-1.docker.io`.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB { "registry-1.docker.io" } else { &self.registry }
    }

    /// The manifest reference to ask for: the digest if given, else the tag, else `latest`.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// Hosts that speak plain HTTP by default: the loopback names.
    pub fn is_loopback(&self) -> bool {
        let host = match self.registry.rfind(':') {
            Some(i) if !self.registry[i..].contains(']') => &self.registry[..i],
            _ => &self.registry,
        };
        host == "localhost" || host == "[::1]" || host.starts_with("127.")
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        match (&self.tag, &self.digest) {
            (Some(t), Some(d)) => write!(f, ":{t}@{d}"),
            (None, Some(d)) => write!(f, "@{d}"),
            (Some(t), None) => write!(f, ":{t}"),
            (None, None) => write!(f, ":latest"),
        }
    }
}

impl fmt::Display for LayoutRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oci:{}", self.path.display())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Layout(l) => l.fmt(f),
            ImageRef::Registry(r) => r.fmt(f),
        }
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ReferenceError { input: s.to_string(), reason: reason.to_string() };
        if let Some(rest) = s.strip_prefix("oci:") {
            return parse_layout(rest).map(ImageRef::Layout).map_err(|r| err(&r));
        }
        parse_registry(s).map(ImageRef::Registry).map_err(|r| err(&r))
    }
}

fn parse_layout(rest: &str) -> Result<LayoutRef, String> {
    let (path_tag, digest) = match rest.rsplit_once('@') {
        Some((p, d)) => (p, Some(d.parse::<Digest>().map_err(|e| e.to_string())?)),
        None => (rest, None),
    };
    // A tag follows the last ':' if it is after the last '/'.
    let (path, tag) = match path_tag.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') && !p.is_empty() => (p, Some(t)),
        _ => (path_tag, None),
    };
    if path.is_empty() {
        return Err("empty layout path".into());
    }
    if let Some(t) = tag {
        check_tag(t)?;
    }
    Ok(LayoutRef { path: PathBuf::from(path), tag: tag.map(str::to_string), digest })
}

fn parse_registry(s: &str) -> Result<RegistryRef, String> {
    if s.is_empty() {
        return Err("empty".into());
    }
    let (name_tag, digest) = match s.split_once('@') {
        Some((n, d)) => (n, Some(d.parse::<Digest>().map_err(|e| e.to_string())?)),
        None => (s, None),
    };
    let (name, tag) = match name_tag.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') && !t.contains(']') => (n, Some(t)),
        _ => (name_tag, None),
    };
    if let Some(t) = tag {
        check_tag(t)?;
    }
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.starts_with('[') =>
        {
            check_host(first)?;
            let host = if first == "index.docker.io" || first == "registry-1.docker.io" {
                DOCKER_HUB
            } else {
                first
            };
            (host.to_string(), rest.to_string())
        }
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    };
    let repository = if registry == DOCKER_HUB && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository
    };
    check_repository(&repository)?;
    Ok(RegistryRef { registry, repository, tag: tag.map(str::to_string), digest })
}

fn check_tag(t: &str) -> Result<(), String> {
    let ok = !t.is_empty()
        && t.len() <= 128
        && t.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok { Ok(()) } else { Err(format!("invalid tag {t:?}")) }
}

fn check_host(h: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = h.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or_else(|| format!("invalid host {h:?}"))?;
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("invalid IPv6 address in {h:?}"));
        }
        (None, after.strip_prefix(':'))
    } else {
        match h.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(h), None),
        }
    };
    if let Some(host) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if host.is_empty() || !host.split('.').all(label_ok) {
            return Err(format!("invalid registry host {h:?}"));
        }
    }
    if let Some(p) = port
        && p.parse::<u16>().ok().filter(|&p| p > 0).is_none()
    {
        return Err(format!("invalid port in {h:?}"));
    }
    Ok(())
}

fn check_repository(r: &str) -> Result<(), String> {
    if r.len() > 255 {
        return Err("repository name longer than 255 characters".into());
    }
    for component in r.split('/') {
        if component.is_empty() {
            return Err(format!("empty path component in {r:?}"));
        }
        if component.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(format!("repository name {r:?} must be lowercase"));
        }
        let bytes = component.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let sep = |b: u8| matches!(b, b'.' | b'_' | b'-');
        if !bytes.iter().all(|&b| alnum(b) || sep(b)) || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
            return Err(format!("invalid repository path component {component:?}"));
        }
        // Separators: '.', '_', '__' or runs of '-'.
        let mut i = 0;
        while i < bytes.len() {
            if sep(bytes[i]) {
                let start = i;
                while i < bytes.len() && sep(bytes[i]) {
                    i += 1;
                }
                let run = &component[start..i];
                let ok = run == "." || run == "_" || run == "__" || run.bytes().all(|b| b == b'-');
                if !ok {
                    return Err(format!("invalid separator {run:?} in {component:?}"));
                }
            } else {
                i += 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(s: &str) -> RegistryRef {
        match s.parse::<ImageRef>() {
            Ok(ImageRef::Registry(r)) => r,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn docker_hub_normalization() {
        assert_eq!(reg("alpine").to_string(), "docker.io/library/alpine:latest");
        assert_eq!(reg("alpine:3.19").to_string(), "docker.io/library/alpine:3.19");
        assert_eq!(reg("bitnami/redis").to_string(), "docker.io/bitnami/redis:latest");
        assert_eq!(reg("docker.io/alpine").to_string(), "docker.io/library/alpine:latest");
        assert_eq!(reg("index.docker.io/library/alpine").registry, "docker.io");
        assert_eq!(reg("alpine").api_host(), "registry-1.docker.io");
        assert_eq!(reg("alpine").reference(), "latest");
    }

    #[test]
    fn hosts_ports_digests() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let r = reg(&format!("127.0.0.1:5000/test/python:v1@{d}"));
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "test/python");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.reference(), d);
        assert!(r.is_loopback());
        let r = reg(&format!("localhost/img@{d}"));
        assert_eq!((r.registry.as_str(), r.tag.is_none()), ("localhost", true));
        assert!(r.is_loopback());
        let r = reg("[::1]:5000/img:tag");
        assert_eq!((r.registry.as_str(), r.repository.as_str()), ("[::1]:5000", "img"));
        assert!(r.is_loopback());
        let r = reg("ghcr.io/org/app");
        assert!(!r.is_loopback());
        assert_eq!(r.api_host(), "ghcr.io");
        assert_eq!(reg("registry.example.com:8443/a/b/c:x").repository, "a/b/c");
    }

    #[test]
    fn layouts() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let l = |s: &str| match s.parse::<ImageRef>() {
            Ok(ImageRef::Layout(l)) => l,
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(l("oci:/tmp/x").path, PathBuf::from("/tmp/x"));
        assert_eq!(l("oci:/tmp/x").tag, None);
        assert_eq!(l("oci:/tmp/x:latest").tag.as_deref(), Some("latest"));
        assert_eq!(l("oci:rel/dir:v2").path, PathBuf::from("rel/dir"));
        let x = l(&format!("oci:/tmp/x@{d}"));
        assert_eq!((x.path, x.digest.map(|d| d.to_string())), (PathBuf::from("/tmp/x"), Some(d.to_string())));
        assert!("oci:".parse::<ImageRef>().is_err());
    }

    #[test]
    fn malformed() {
        for bad in [
            "",
            "Alpine",
            "alpine:",
            "alpine:tag with space",
            "alpine@sha256:123",
            "a//b",
            "host:99999/img",
            "-bad.com/img",
            "img:-tag",
            "a..b",
            "repo/-x",
            "[zz]:5000/img",
        ] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad:?} accepted");
        }
        let e = "Alpine".parse::<ImageRef>().unwrap_err();
        assert!(e.to_string().contains("lowercase"), "{e}");
    }
}
