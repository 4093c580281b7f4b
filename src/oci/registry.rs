//! The registry client (OCI distribution API v2) on `reqwest` + `tokio`.
//!
//! - Auth: anonymous or basic bearer tokens from the `WWW-Authenticate` challenge (realm,
//!   service, scope), reused until they expire; basic auth; credentials from `--creds` or
//!   `~/.docker/config.json`.
//! - Manifests with the OCI and Docker `Accept` types, digest checked; blobs streamed whole
//!   (digest checked at the end) or read by range over pooled connections.
//! - Redirects (registries that keep blobs in S3 or behind a CDN) are followed by hand once per
//!   blob and the target URL reused, without the registry's credentials.
//! - Connection errors, timeouts, 5xx and 429 are retried with capped exponential backoff and
//!   jitter; anything else is an error naming the URL and status.
//! - Proxies from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`; pull-through mirrors tried first.
//!
//! The interface is synchronous (the gzip engine and FUSE workers are threads); requests run on
//! one shared tokio runtime. Do not call it from inside an async task: use `spawn_blocking`.

use super::digest::Digest;
use super::image::{MANIFEST_ACCEPT, MAX_MANIFEST, OCI_INDEX, Referrer, ReferrerIndex, referrers_tag};
use super::reference::RegistryRef;
use super::source::{BlobSource, OciError, Verifying, check_digest};
use base64::Engine as _;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use std::collections::HashMap;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How to reach a registry.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Speak plain HTTP (always so for loopback hosts).
    pub plain_http: bool,
    /// `USER:PASS`, overriding the Docker config.
    pub creds: Option<(String, String)>,
    /// Pull-through mirrors (`HOST[:PORT]`), tried before the registry itself.
    pub mirrors: Vec<String>,
    /// Where Docker keeps credentials (default `$DOCKER_CONFIG/config.json` or
    /// `~/.docker/config.json`).
    pub docker_config: Option<PathBuf>,
    /// containerd's registry host directory (`/etc/containerd/certs.d`): mirrors and the
    /// upstream's scheme from `HOST/hosts.toml` (see `hosts`).
    pub hosts_dir: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// Time allowed without progress on one request.
    pub read_timeout: Duration,
    /// Attempts per request for retryable failures.
    pub attempts: u32,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            plain_http: false,
            creds: None,
            mirrors: Vec::new(),
            docker_config: None,
            hosts_dir: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            attempts: 4,
        }
    }
}

/// Counters of what a client has fetched.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    pub retries: AtomicU64,
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        // Building a runtime only fails when the OS refuses threads or an epoll instance; then
        // nothing here can work at all.
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("zran-net")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start the network runtime: {e}"))
    })
}

#[derive(Debug, Clone)]
struct Endpoint {
    /// The prefix of every API path: `scheme://host[:port][/path]/v2`.
    api: String,
    mirror: bool,
}

#[derive(Debug, Clone)]
enum Challenge {
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
    Basic,
}

#[derive(Default)]
struct AuthState {
    challenge: Option<Challenge>,
    token: Option<(String, Instant)>,
}

/// One repository of one registry.
pub struct Registry {
    client: reqwest::Client,
    repo: RegistryRef,
    endpoints: Vec<Endpoint>,
    creds: Option<(String, String)>,
    attempts: u32,
    auth: tokio::sync::Mutex<AuthState>,
    redirects: Mutex<HashMap<String, reqwest::Url>>,
    pub stats: Arc<Stats>,
}

impl Registry {
    pub fn new(repo: &RegistryRef, opts: &RegistryOptions) -> Result<Registry, OciError> {
        let scheme = if opts.plain_http || repo.is_loopback() { "http" } else { "https" };
        let hosts = match &opts.hosts_dir {
            Some(dir) => super::hosts::load(dir, &repo.registry).map_err(|e| OciError::Io {
                path: dir.display().to_string(),
                source: std::io::Error::other(e),
            })?,
            None => None,
        };
        let mut endpoints: Vec<Endpoint> = hosts
            .iter()
            .flat_map(|h| h.mirrors.iter())
            .map(|m| Endpoint { api: m.api.clone(), mirror: true })
            .collect();
        endpoints.extend(opts.mirrors.iter().map(|m| {
            let s = if m.contains("://") {
                ""
            } else if opts.plain_http
                || m.starts_with("localhost")
                || m.starts_with("127.")
                || m.starts_with("[::1]")
            {
                "http://"
            } else {
                "https://"
            };
            Endpoint { api: format!("{s}{}/v2", m.trim_end_matches('/')), mirror: true }
        }));
        let upstream = match hosts.and_then(|h| h.server) {
            Some(s) => s.api,
            None => format!("{scheme}://{}/v2", repo.api_host()),
        };
        endpoints.push(Endpoint { api: upstream, mirror: false });
        let client = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .read_timeout(opts.read_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(16)
            .user_agent(concat!("zran/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| OciError::Network { url: endpoints[0].api.clone(), message: e.to_string() })?;
        let creds =
            opts.creds.clone().or_else(|| docker_credentials(&repo.registry, opts.docker_config.as_ref()));
        Ok(Registry {
            client,
            repo: repo.clone(),
            endpoints,
            creds,
            attempts: opts.attempts.max(1),
            auth: tokio::sync::Mutex::new(AuthState::default()),
            redirects: Mutex::new(HashMap::new()),
            stats: Arc::new(Stats::default()),
        })
    }

    fn url(&self, ep: &Endpoint, kind: &str, reference: &str) -> String {
        let mut url = format!("{}/{}/{kind}/{reference}", ep.api, self.repo.repository);
        if ep.mirror {
            // containerd's convention: tell a mirror which upstream it stands in for.
            url.push_str(&format!("?ns={}", self.repo.registry));
        }
        url
    }

    /// Send a request to the registry, with auth, retries and mirror fallback. Redirects are
    /// returned as they are (3xx), for the caller to follow.
    async fn send(
        &self,
        method: Method,
        kind: &str,
        reference: &str,
        headers: HeaderMap,
    ) -> Result<reqwest::Response, OciError> {
        let mut last_err = None;
        for ep in &self.endpoints {
            let url = self.url(ep, kind, reference);
            match self.send_url(method.clone(), &url, headers.clone(), true).await {
                Ok(resp) if ep.mirror && !(resp.status().is_success() || resp.status().is_redirection()) => {
                    tracing::debug!(%url, status = resp.status().as_u16(), "mirror failed; trying the next endpoint");
                    last_err = Some(status_error(&url, resp).await);
                }
                Ok(resp) => return Ok(resp),
                Err(e) if ep.mirror => {
                    tracing::debug!(%url, error = %e, "mirror unreachable; trying the next endpoint");
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| OciError::NotFound(format!("{}: no endpoint", self.repo))))
    }

    /// One URL, with retries; `authorize` adds registry credentials (not for redirect targets).
    async fn send_url(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        authorize: bool,
    ) -> Result<reqwest::Response, OciError> {
        self.send_body(method, url, headers, authorize, None).await
    }

    /// [`Registry::send_url`] with a request body (sent again on each attempt).
    async fn send_body(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        authorize: bool,
        body: Option<bytes::Bytes>,
    ) -> Result<reqwest::Response, OciError> {
        let mut attempt = 0;
        let mut reauthed = false;
        loop {
            attempt += 1;
            let mut req = self.client.request(method.clone(), url).headers(headers.clone());
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            if authorize && let Some(value) = self.authorization().await? {
                req = req.header(header::AUTHORIZATION, value);
            }
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            match req.send().await {
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && authorize && !reauthed => {
                    reauthed = true;
                    attempt -= 1;
                    self.challenge(url, resp.headers()).await?;
                }
                Ok(resp) if retryable(resp.status()) && attempt < self.attempts => {
                    let wait = retry_after(resp.headers()).unwrap_or_else(|| backoff(attempt));
                    tracing::debug!(url, status = resp.status().as_u16(), ?wait, "retrying");
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(wait).await;
                }
                Ok(resp) => return Ok(resp),
                Err(e) if attempt < self.attempts && (e.is_connect() || e.is_timeout() || e.is_request()) => {
                    tracing::debug!(url, error = %e, "retrying");
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => {
                    return Err(OciError::Network { url: url.to_string(), message: error_chain(&e) });
                }
            }
        }
    }

    async fn authorization(&self) -> Result<Option<HeaderValue>, OciError> {
        let mut state = self.auth.lock().await;
        match state.challenge.clone() {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.basic().and_then(|b| HeaderValue::from_str(&b).ok())),
            Some(Challenge::Bearer { realm, service, scope }) => {
                if let Some((token, expires)) = &state.token
                    && Instant::now() < *expires
                {
                    return Ok(HeaderValue::from_str(&format!("Bearer {token}")).ok());
                }
                let (token, expires) = self.fetch_token(&realm, service.as_deref(), scope.as_deref()).await?;
                let value = HeaderValue::from_str(&format!("Bearer {token}")).ok();
                state.token = Some((token, expires));
                Ok(value)
            }
        }
    }

    fn basic(&self) -> Option<String> {
        let (u, p) = self.creds.as_ref()?;
        Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))))
    }

    async fn challenge(&self, url: &str, headers: &HeaderMap) -> Result<(), OciError> {
        let value = headers.get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).ok_or_else(|| {
            OciError::Auth {
                registry: self.repo.registry.clone(),
                message: format!("{url}: 401 without a WWW-Authenticate challenge"),
            }
        })?;
        let challenge = parse_challenge(value).ok_or_else(|| OciError::Auth {
            registry: self.repo.registry.clone(),
            message: format!("unsupported challenge {value:?}"),
        })?;
        if matches!(challenge, Challenge::Basic) && self.creds.is_none() {
            return Err(OciError::Auth {
                registry: self.repo.registry.clone(),
                message: "the registry asks for a user name and password (--creds USER:PASS or docker login)"
                    .into(),
            });
        }
        let mut state = self.auth.lock().await;
        if let Challenge::Bearer { scope: None, realm, service } = challenge {
            // No scope offered: ask for pull on this repository.
            let scope = Some(format!("repository:{}:pull", self.repo.repository));
            state.challenge = Some(Challenge::Bearer { realm, service, scope });
        } else {
            state.challenge = Some(challenge);
        }
        state.token = None;
        Ok(())
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
    ) -> Result<(String, Instant), OciError> {
        let mut url = reqwest::Url::parse(realm).map_err(|e| OciError::Auth {
            registry: self.repo.registry.clone(),
            message: format!("bad token realm {realm:?}: {e}"),
        })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            if let Some(s) = scope {
                q.append_pair("scope", s);
            }
        }
        let mut req = self.client.get(url.clone());
        if let Some(b) = self.basic() {
            req = req.header(header::AUTHORIZATION, b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| OciError::Network { url: url.to_string(), message: error_chain(&e) })?;
        if !resp.status().is_success() {
            let status = resp.status();
            return Err(OciError::Auth {
                registry: self.repo.registry.clone(),
                message: format!(
                    "token service {url} answered HTTP {}{}",
                    status.as_u16(),
                    if status == StatusCode::UNAUTHORIZED { " (wrong user name or password?)" } else { "" }
                ),
            });
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| OciError::Network { url: url.to_string(), message: error_chain(&e) })?;
        let t: TokenResponse = serde_json::from_slice(&body).map_err(|e| OciError::Auth {
            registry: self.repo.registry.clone(),
            message: format!("token service {url}: {e}"),
        })?;
        let token = t.token.or(t.access_token).filter(|t| !t.is_empty()).ok_or_else(|| OciError::Auth {
            registry: self.repo.registry.clone(),
            message: format!("token service {url} gave no token"),
        })?;
        // Tokens live 60 s unless said otherwise; renew a little early.
        let life = Duration::from_secs(t.expires_in.unwrap_or(60).max(10));
        Ok((token, Instant::now() + life - Duration::from_secs(5)))
    }

    /// A URL on the registry itself, never a mirror: where pushes go.
    fn origin_url(&self, kind: &str, reference: &str) -> String {
        let api = self.endpoints.last().map(|e| e.api.as_str()).unwrap_or_default();
        format!("{api}/{}/{kind}/{reference}", self.repo.repository)
    }

    /// The error for a refused write: a missing or read-only credential says so.
    async fn push_error(&self, url: &str, resp: reqwest::Response) -> OciError {
        match resp.status() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => OciError::Auth {
                registry: self.repo.registry.clone(),
                message: format!(
                    "{url}: HTTP {}: no right to push to {} (--creds USER:PASS or docker login)",
                    resp.status().as_u16(),
                    self.repo.repository
                ),
            },
            _ => status_error(url, resp).await,
        }
    }

    /// Whether the repository has the blob at `url` (a `HEAD` that succeeds).
    async fn has_blob(&self, url: &str) -> Result<bool, OciError> {
        let head = self.send_body(Method::HEAD, url, HeaderMap::new(), true, None).await?;
        Ok(head.status().is_success())
    }

    /// `POST` an upload of `digest`; returns the URL to `PUT` it whole to, digest included.
    async fn start_upload(&self, digest: &Digest) -> Result<reqwest::Url, OciError> {
        let start = self.origin_url("blobs", "uploads/");
        let resp = self.send_body(Method::POST, &start, HeaderMap::new(), true, None).await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.push_error(&start, resp).await);
        }
        let mut put = location(&resp, "upload started")?;
        put.query_pairs_mut().append_pair("digest", &digest.to_string());
        Ok(put)
    }

    /// Upload a blob unless the repository has it: `POST` an upload, then one `PUT` of the
    /// whole body with its digest (the distribution spec's monolithic upload).
    async fn push_blob(&self, digest: &Digest, body: bytes::Bytes) -> Result<(), OciError> {
        let url = self.origin_url("blobs", &digest.to_string());
        if self.has_blob(&url).await? {
            return Ok(());
        }
        let put = self.start_upload(digest).await?;
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        let resp = self.send_body(Method::PUT, put.as_str(), headers, true, Some(body)).await?;
        if resp.status() != StatusCode::CREATED {
            return Err(self.push_error(&url, resp).await);
        }
        Ok(())
    }

    /// Upload a blob from a file unless the repository has it, streaming it (never whole in
    /// memory): `POST` an upload, then one `PUT` whose body is read from the file as it goes.
    async fn push_blob_file(&self, digest: &Digest, path: &std::path::Path) -> Result<(), OciError> {
        let url = self.origin_url("blobs", &digest.to_string());
        if self.has_blob(&url).await? {
            return Ok(());
        }
        let io = |e: std::io::Error| OciError::Io { path: path.display().to_string(), source: e };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let put = self.start_upload(digest).await?;
            let file = tokio::fs::File::open(path).await.map_err(io)?;
            let len = file.metadata().await.map_err(io)?.len();
            let stream = futures_util::stream::unfold(file, |mut f| async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 1 << 20];
                match f.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), f))
                    }
                    Err(e) => Some((Err(e), f)),
                }
            });
            let mut req = self
                .client
                .put(put.as_str())
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .header(header::CONTENT_LENGTH, len)
                .body(reqwest::Body::wrap_stream(stream));
            if let Some(value) = self.authorization().await? {
                req = req.header(header::AUTHORIZATION, value);
            }
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            match req.send().await {
                Ok(resp) if resp.status() == StatusCode::CREATED => return Ok(()),
                Ok(resp) if retryable(resp.status()) && attempt < self.attempts => {
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Ok(resp) => return Err(self.push_error(&url, resp).await),
                Err(e) if attempt < self.attempts && (e.is_connect() || e.is_timeout() || e.is_request()) => {
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => return Err(OciError::Network { url: url.clone(), message: error_chain(&e) }),
            }
        }
    }

    /// `PUT` a manifest under `reference` (a digest or a tag); returns the response headers.
    async fn push_manifest(
        &self,
        reference: &str,
        media_type: &str,
        body: bytes::Bytes,
    ) -> Result<HeaderMap, OciError> {
        let url = self.origin_url("manifests", reference);
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(media_type) {
            headers.insert(header::CONTENT_TYPE, v);
        }
        let resp = self.send_body(Method::PUT, &url, headers, true, Some(body)).await?;
        if resp.status() != StatusCode::CREATED {
            return Err(self.push_error(&url, resp).await);
        }
        Ok(resp.headers().clone())
    }

    /// A small document (an index): `None` when the answer is one of `missing`.
    async fn get_small(
        &self,
        kind: &str,
        reference: &str,
        missing: &[StatusCode],
    ) -> Result<Option<Vec<u8>>, OciError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static(OCI_INDEX));
        let resp = self.send(Method::GET, kind, reference, headers).await?;
        let url = resp.url().to_string();
        if missing.contains(&resp.status()) {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(status_error(&url, resp).await);
        }
        self.read_small(&url, resp).await.map(Some)
    }

    /// The body of a manifest or index, refused past [`MAX_MANIFEST`] bytes (declared or read).
    async fn read_small(&self, url: &str, mut resp: reqwest::Response) -> Result<Vec<u8>, OciError> {
        let too_large = || OciError::Network {
            url: url.to_string(),
            message: format!("manifest larger than {MAX_MANIFEST} bytes"),
        };
        if resp.content_length().is_some_and(|l| l > MAX_MANIFEST) {
            return Err(too_large());
        }
        let mut raw = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| OciError::Network { url: url.to_string(), message: error_chain(&e) })?
        {
            raw.extend_from_slice(&chunk);
            if raw.len() as u64 > MAX_MANIFEST {
                return Err(too_large());
            }
        }
        self.stats.bytes.fetch_add(raw.len() as u64, Ordering::Relaxed);
        Ok(raw)
    }

    /// A blob request that follows a redirect once and remembers where it led.
    async fn blob_request(
        &self,
        digest: &Digest,
        headers: HeaderMap,
    ) -> Result<(String, reqwest::Response), OciError> {
        let key = digest.to_string();
        let cached = self.redirects.lock().ok().and_then(|m| m.get(&key).cloned());
        if let Some(target) = cached {
            let resp = self.send_url(Method::GET, target.as_str(), headers.clone(), false).await?;
            if !matches!(
                resp.status(),
                StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED | StatusCode::NOT_FOUND
            ) {
                return Ok((target.to_string(), resp));
            }
            // A signed URL expired: go back to the registry.
            if let Ok(mut m) = self.redirects.lock() {
                m.remove(&key);
            }
        }
        let resp = self.send(Method::GET, "blobs", &key, headers.clone()).await?;
        let url = resp.url().to_string();
        if resp.status().is_redirection() {
            let location = location(&resp, "redirect")?;
            tracing::debug!(from = %url, to = %location, "blob redirected");
            if let Ok(mut m) = self.redirects.lock() {
                m.insert(key, location.clone());
            }
            let resp = self.send_url(Method::GET, location.as_str(), headers, false).await?;
            return Ok((location.to_string(), resp));
        }
        Ok((url, resp))
    }

    async fn read_range(&self, digest: &Digest, offset: u64, buf: &mut [u8]) -> Result<usize, OciError> {
        if buf.is_empty() {
            return Ok(0);
        }
        let end = offset + buf.len() as u64 - 1;
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&format!("bytes={offset}-{end}")) {
            headers.insert(header::RANGE, v);
        }
        let (url, resp) = self.blob_request(digest, headers).await?;
        let status = resp.status();
        let skip = match status {
            StatusCode::PARTIAL_CONTENT => {
                let start = resp
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if start != Some(offset) {
                    return Err(OciError::Network {
                        url,
                        message: format!(
                            "asked for bytes from {offset}, got Content-Range starting at {start:?}"
                        ),
                    });
                }
                0
            }
            StatusCode::OK => {
                tracing::debug!(%url, "server ignored Range; reading past {offset} bytes");
                offset
            }
            StatusCode::RANGE_NOT_SATISFIABLE => return Ok(0),
            _ => return Err(status_error(&url, resp).await),
        };
        let mut resp = resp;
        let mut skipped = 0u64;
        let mut filled = 0usize;
        while filled < buf.len() {
            let chunk = resp
                .chunk()
                .await
                .map_err(|e| OciError::Network { url: url.clone(), message: error_chain(&e) })?;
            let Some(chunk) = chunk else { break };
            self.stats.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            let mut data = &chunk[..];
            if skipped < skip {
                let n = ((skip - skipped) as usize).min(data.len());
                skipped += n as u64;
                data = &data[n..];
            }
            let n = data.len().min(buf.len() - filled);
            buf[filled..filled + n].copy_from_slice(&data[..n]);
            filled += n;
        }
        Ok(filled)
    }
}

/// Where a response's `Location` header points, resolved against the response's URL.
fn location(resp: &reqwest::Response, what: &str) -> Result<reqwest::Url, OciError> {
    resp.headers()
        .get(header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .and_then(|l| resp.url().join(l).ok())
        .ok_or_else(|| OciError::Network {
            url: resp.url().to_string(),
            message: format!("{what} without a usable Location"),
        })
}

fn retryable(s: StatusCode) -> bool {
    s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT
}

/// 200 ms, 400 ms, 800 ms ... capped at 5 s, each with up to 50% jitter.
fn backoff(attempt: u32) -> Duration {
    let base = 200u64.saturating_mul(1 << attempt.saturating_sub(1).min(5)).min(5000);
    Duration::from_millis(base / 2 + fastrand::u64(0..=base / 2))
}

fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let secs: u64 = h.get(header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(10)))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

async fn status_error(url: &str, resp: reqwest::Response) -> OciError {
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    let detail: String = body.trim().chars().take(300).collect();
    OciError::Status {
        url: url.to_string(),
        status,
        detail: if detail.is_empty() { String::new() } else { format!(": {detail}") },
    }
}

/// Parse `Bearer realm="...",service="...",scope="..."` or `Basic realm="..."`.
fn parse_challenge(v: &str) -> Option<Challenge> {
    let (scheme, rest) = v.trim().split_once(' ').unwrap_or((v.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (key, after) = s.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (q[..end].to_string(), &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.insert(key, value);
        s = tail.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge::Bearer {
        realm: params.remove("realm")?,
        service: params.remove("service"),
        scope: params.remove("scope"),
    })
}

/// Credentials for `registry` from Docker's config file (`auths`: base64 `auth`, or `username`
/// and `password`). Credential helpers are not run.
fn docker_credentials(registry: &str, path: Option<&PathBuf>) -> Option<(String, String)> {
    let path = path.cloned().or_else(|| {
        std::env::var_os("DOCKER_CONFIG")
            .map(|d| PathBuf::from(d).join("config.json"))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json")))
    })?;
    let text = std::fs::read_to_string(&path).ok()?;
    credentials_from_config(&text, registry)
}

fn credentials_from_config(text: &str, registry: &str) -> Option<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        auths: HashMap<String, Entry>,
    }
    let config: Config = serde_json::from_str(text).ok()?;
    let wanted: Vec<String> = if registry == super::reference::DOCKER_HUB {
        vec![
            "https://index.docker.io/v1/".into(),
            "index.docker.io".into(),
            "docker.io".into(),
            "registry-1.docker.io".into(),
        ]
    } else {
        vec![
            registry.to_string(),
            format!("https://{registry}"),
            format!("http://{registry}"),
            format!("https://{registry}/v1/"),
        ]
    };
    let entry = wanted.iter().find_map(|k| config.auths.get(k))?;
    if let Some(auth) = &entry.auth {
        let decoded = base64::engine::general_purpose::STANDARD.decode(auth.trim()).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (u, p) = text.split_once(':')?;
        return Some((u.to_string(), p.to_string()));
    }
    Some((entry.username.clone()?, entry.password.clone()?))
}

/// A registry repository as a [`BlobSource`].
pub struct RegistrySource {
    registry: Arc<Registry>,
}

impl RegistrySource {
    pub fn new(repo: &RegistryRef, opts: &RegistryOptions) -> Result<RegistrySource, OciError> {
        Ok(RegistrySource { registry: Arc::new(Registry::new(repo, opts)?) })
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.registry.stats.clone()
    }

    /// Store the blob in file `path` (its digest computed by the caller), streamed.
    pub fn put_blob_file(&self, digest: &Digest, path: &std::path::Path) -> Result<(), OciError> {
        runtime().block_on(self.registry.push_blob_file(digest, path))
    }

    /// Store a manifest under `reference` (a tag, or its digest).
    pub fn put_manifest(&self, reference: &str, media_type: &str, manifest: &[u8]) -> Result<(), OciError> {
        runtime()
            .block_on(self.registry.push_manifest(
                reference,
                media_type,
                bytes::Bytes::copy_from_slice(manifest),
            ))
            .map(|_| ())
    }
}

impl BlobSource for RegistrySource {
    fn name(&self) -> String {
        format!("{}/{}", self.registry.repo.registry, self.registry.repo.repository)
    }

    fn manifest(&self, reference: &str) -> Result<(Vec<u8>, Digest, Option<String>), OciError> {
        let r = &self.registry;
        runtime().block_on(async {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
            let resp = r.send(Method::GET, "manifests", reference, headers).await?;
            let url = resp.url().to_string();
            if !resp.status().is_success() {
                return Err(status_error(&url, resp).await);
            }
            let ctype =
                resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
            let claimed = resp
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<Digest>().ok());
            let raw = r.read_small(&url, resp).await?;
            let digest = match reference.parse::<Digest>() {
                Ok(d) => {
                    check_digest(&format!("manifest {url}"), &raw, &d)?;
                    d
                }
                Err(_) => {
                    let actual = Digest::of(&raw);
                    if let Some(c) = claimed.filter(|c| c != &actual) {
                        return Err(OciError::DigestMismatch {
                            what: format!("manifest {url}"),
                            expected: c,
                            actual,
                        });
                    }
                    actual
                }
            };
            Ok((raw, digest, ctype))
        })
    }

    fn open(&self, digest: &Digest, size: Option<u64>) -> Result<Box<dyn Read + Send>, OciError> {
        let r = self.registry.clone();
        let (url, resp) = runtime().block_on(async { r.blob_request(digest, HeaderMap::new()).await })?;
        if !resp.status().is_success() {
            return Err(runtime().block_on(status_error(&url, resp)));
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<bytes::Bytes>>(64);
        let stats = self.registry.stats.clone();
        runtime().spawn(async move {
            let mut resp = resp;
            loop {
                let item = match resp.chunk().await {
                    Ok(Some(c)) => {
                        stats.bytes.fetch_add(c.len() as u64, Ordering::Relaxed);
                        Ok(c)
                    }
                    Ok(None) => break,
                    Err(e) => Err(io::Error::other(format!("{url}: {}", error_chain(&e)))),
                };
                let failed = item.is_err();
                // A send fails when the reader went away: stop downloading.
                if tx.send(item).await.is_err() || failed {
                    break;
                }
            }
        });
        // The digest is computed on the reading thread, while the network task receives the
        // next chunks: the two overlap.
        let reader = ChannelReader { rx, current: bytes::Bytes::new() };
        Ok(Box::new(Verifying::new(reader, digest.clone(), size)))
    }

    fn read_at(&self, digest: &Digest, offset: u64, buf: &mut [u8]) -> Result<usize, OciError> {
        let r = self.registry.clone();
        runtime().block_on(async {
            // A body cut short is retried like a failed request.
            let mut attempt = 1;
            loop {
                match r.read_range(digest, offset, buf).await {
                    Err(OciError::Network { url, message }) if attempt < r.attempts => {
                        tracing::debug!(%url, %message, "range read failed; retrying");
                        r.stats.retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(backoff(attempt)).await;
                        attempt += 1;
                    }
                    other => return other,
                }
            }
        })
    }

    fn bytes_fetched(&self) -> u64 {
        self.registry.stats.bytes.load(Ordering::Relaxed)
    }

    fn put_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<(), OciError> {
        let body = bytes::Bytes::copy_from_slice(bytes);
        runtime().block_on(self.registry.push_blob(digest, body))
    }

    fn put_manifest(&self, tag: &str, media_type: &str, manifest: &[u8]) -> Result<Digest, OciError> {
        let body = bytes::Bytes::copy_from_slice(manifest);
        runtime().block_on(self.registry.push_manifest(tag, media_type, body))?;
        Ok(Digest::of(manifest))
    }

    fn put_referrer(&self, manifest: &[u8], desc: &Referrer, subject: &Digest) -> Result<(), OciError> {
        let r = &self.registry;
        runtime().block_on(async {
            let headers = r
                .push_manifest(&desc.digest, &desc.media_type, bytes::Bytes::copy_from_slice(manifest))
                .await?;
            if headers.contains_key("oci-subject") {
                // The registry keeps the referrers list itself (distribution spec 1.1).
                return Ok(());
            }
            // No referrers API: keep the list in the fallback tag, this manifest once.
            let tag = referrers_tag(subject);
            let mut index = match r.get_small("manifests", &tag, &[StatusCode::NOT_FOUND]).await? {
                Some(raw) => ReferrerIndex::parse(&raw, &format!("{}:{tag}", r.repo))?,
                None => ReferrerIndex::new(Vec::new()),
            };
            index.manifests.retain(|m| m.digest != desc.digest);
            index.manifests.push(desc.clone());
            index.media_type = OCI_INDEX.to_string();
            index.schema_version = 2;
            let body = serde_json::to_vec(&index).map_err(|e| OciError::NotFound(e.to_string()))?;
            r.push_manifest(&tag, OCI_INDEX, body.into()).await?;
            Ok(())
        })
    }

    fn referrers(&self, subject: &Digest) -> Result<Vec<Referrer>, OciError> {
        let r = &self.registry;
        runtime().block_on(async {
            let what = format!("{}: referrers of {subject}", r.repo);
            // A registry without the API answers 404 (or 400/405 for a path it does not route).
            let unsupported =
                [StatusCode::NOT_FOUND, StatusCode::BAD_REQUEST, StatusCode::METHOD_NOT_ALLOWED];
            if let Some(raw) = r.get_small("referrers", &subject.to_string(), &unsupported).await? {
                return Ok(ReferrerIndex::parse(&raw, &what)?.manifests);
            }
            match r.get_small("manifests", &referrers_tag(subject), &[StatusCode::NOT_FOUND]).await? {
                Some(raw) => Ok(ReferrerIndex::parse(&raw, &what)?.manifests),
                None => Ok(Vec::new()),
            }
        })
    }
}

/// The synchronous end of a streamed body.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        match parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        ) {
            Some(Challenge::Bearer { realm, service, scope }) => {
                assert_eq!(realm, "https://auth.docker.io/token");
                assert_eq!(service.as_deref(), Some("registry.docker.io"));
                assert_eq!(scope.as_deref(), Some("repository:library/alpine:pull"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_challenge(r#"Basic realm="Registry Realm""#), Some(Challenge::Basic)));
        assert!(matches!(parse_challenge(r#"bearer realm=http://x/token"#), Some(Challenge::Bearer { .. })));
        assert!(parse_challenge("Negotiate").is_none());
        assert!(parse_challenge(r#"Bearer service="x""#).is_none());
    }

    #[test]
    fn docker_config() {
        let cfg = r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},"127.0.0.1:5000":{"username":"a","password":"b:c"}}}"#;
        assert_eq!(credentials_from_config(cfg, "docker.io"), Some(("user".into(), "pass".into())));
        assert_eq!(credentials_from_config(cfg, "127.0.0.1:5000"), Some(("a".into(), "b:c".into())));
        assert_eq!(credentials_from_config(cfg, "ghcr.io"), None);
        assert_eq!(credentials_from_config("not json", "ghcr.io"), None);
    }

    #[test]
    fn backoff_is_bounded() {
        for a in 1..20 {
            let b = backoff(a);
            assert!(b <= Duration::from_secs(5) && b >= Duration::from_millis(100));
        }
    }
}
