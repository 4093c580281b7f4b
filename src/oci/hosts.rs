//! containerd's registry host configuration (`hosts.toml` in a `certs.d`-style directory), read
//! as containerd 1.6+ reads it, so that mirrors and plain-HTTP hosts written for containerd
//! apply to zran too.
//!
//! For an image on `HOST[:PORT]`, the file is `DIR/HOST[:PORT]/hosts.toml`, else
//! `DIR/_default/hosts.toml`. Each `[host."URL"]` with the `pull` capability (the default) is
//! tried in file order before the upstream; `server` (the upstream) may change the scheme
//! (`http://` for a plain-HTTP registry) and path. A URL's path ends with `/v2` added unless
//! `override_path = true`. Keys zran does not use (`ca`, `client`, `header`, `skip_verify`) are
//! logged once and ignored.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One endpoint: the prefix that `/<repository>/manifests/...` follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEndpoint {
    /// `scheme://host[:port]/path/v2`, without a trailing slash.
    pub api: String,
    /// A mirror (tried first, falls through to the next) rather than the upstream.
    pub mirror: bool,
}

/// What `hosts.toml` says for one registry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hosts {
    /// Mirrors, in file order.
    pub mirrors: Vec<HostEndpoint>,
    /// The upstream, when `server` names it.
    pub server: Option<HostEndpoint>,
}

#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("{}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
struct File {
    server: Option<String>,
    #[serde(default)]
    host: toml::Table,
}

#[derive(Debug, Deserialize)]
struct HostEntry {
    capabilities: Option<Vec<String>>,
    #[serde(default)]
    override_path: bool,
    #[serde(flatten)]
    other: BTreeMap<String, toml::Value>,
}

/// The directory name containerd looks for: the registry as written in references, with
/// Docker Hub as `docker.io`.
fn file_for(dir: &Path, registry: &str) -> Option<PathBuf> {
    [registry, "_default"].iter().map(|h| dir.join(h).join("hosts.toml")).find(|p| p.is_file())
}

/// The endpoint for `url` (with a scheme; `https://` when it has none).
fn endpoint(url: &str, override_path: bool, mirror: bool) -> HostEndpoint {
    let url = if url.contains("://") { url.to_string() } else { format!("https://{url}") };
    let url = url.trim_end_matches('/').to_string();
    let (scheme_host, path) = match url.find("://").and_then(|i| url[i + 3..].find('/').map(|j| i + 3 + j)) {
        Some(i) => (&url[..i], &url[i..]),
        None => (url.as_str(), ""),
    };
    let api = if override_path || path.ends_with("/v2") {
        format!("{scheme_host}{path}")
    } else {
        format!("{scheme_host}{path}/v2")
    };
    HostEndpoint { api, mirror }
}

/// Read the configuration for `registry` under `dir`; `None` when neither its file nor
/// `_default` exists.
pub fn load(dir: &Path, registry: &str) -> Result<Option<Hosts>, HostsError> {
    let Some(path) = file_for(dir, registry) else { return Ok(None) };
    let text =
        std::fs::read_to_string(&path).map_err(|source| HostsError::Read { path: path.clone(), source })?;
    parse(&text, &path).map(Some)
}

/// Parse the text of a `hosts.toml` (`path` names it in errors).
pub fn parse(text: &str, path: &Path) -> Result<Hosts, HostsError> {
    let bad = |message: String| HostsError::Parse { path: path.to_path_buf(), message };
    let file: File = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
    let mut hosts = Hosts::default();
    for (url, v) in file.host {
        let entry: HostEntry =
            v.try_into().map_err(|e: toml::de::Error| bad(format!("host {url:?}: {e}")))?;
        for key in entry.other.keys() {
            tracing::warn!(file = %path.display(), host = %url, "hosts.toml key {key:?} is not used by zran");
        }
        let caps = entry.capabilities.unwrap_or_else(|| vec!["pull".into(), "resolve".into()]);
        if !caps.iter().any(|c| c == "pull") {
            continue;
        }
        hosts.mirrors.push(endpoint(&url, entry.override_path, true));
    }
    hosts.server = file.server.map(|s| endpoint(&s, false, false));
    Ok(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_keep_file_order_and_paths_get_v2() {
        let text = r#"
server = "http://127.0.0.1:5000"

[host."http://mirror-a:5000"]
  capabilities = ["pull", "resolve"]

[host."https://mirror-b/prefix"]
  capabilities = ["pull"]
  skip_verify = true

[host."https://mirror-c/exact/v2/path"]
  override_path = true

[host."https://push-only"]
  capabilities = ["push"]
"#;
        let h = parse(text, Path::new("hosts.toml")).expect("parses");
        let apis: Vec<&str> = h.mirrors.iter().map(|m| m.api.as_str()).collect();
        assert_eq!(
            apis,
            ["http://mirror-a:5000/v2", "https://mirror-b/prefix/v2", "https://mirror-c/exact/v2/path"]
        );
        assert!(h.mirrors.iter().all(|m| m.mirror));
        assert_eq!(h.server, Some(HostEndpoint { api: "http://127.0.0.1:5000/v2".into(), mirror: false }));
    }

    #[test]
    fn files_are_found_by_host_then_default_and_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path(), "r.example:5000").expect("no file"), None);
        std::fs::create_dir_all(dir.path().join("_default")).expect("mkdir");
        std::fs::write(dir.path().join("_default/hosts.toml"), "[host.\"http://m\"]\n").expect("write");
        let h = load(dir.path(), "r.example:5000").expect("default").expect("some");
        assert_eq!(h.mirrors[0].api, "http://m/v2");
        std::fs::create_dir_all(dir.path().join("r.example:5000")).expect("mkdir");
        std::fs::write(dir.path().join("r.example:5000/hosts.toml"), "server = [").expect("write");
        let err = load(dir.path(), "r.example:5000").expect_err("bad toml");
        assert!(err.to_string().contains("r.example:5000/hosts.toml"), "{err}");
    }
}
