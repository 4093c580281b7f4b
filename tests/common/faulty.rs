//! A TCP proxy in front of the real registry that injects faults no real registry produces on
//! demand: an HTTP 500, or a response cut off mid-body. Each of the first `faults` connections
//! whose first request line contains `matching` gets the fault; everything else passes through.
//! It can also lend the registry the referrers API of distribution spec 1.1, which the
//! registry here (distribution 2.8) lacks and no registry on this machine has.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Answer `500 Internal Server Error` and close.
    Status500,
    /// Pass the response through, but close after this many bytes of it.
    CutAfter(usize),
    /// Redirect (307) to the same path on the upstream itself, as registries that keep blobs
    /// in object storage do.
    Redirect,
    /// Drop the request's `Range` header, so the registry answers 200 with the whole blob.
    IgnoreRange,
    /// Change nothing; only count (for proxy and mirror tests).
    Count,
    /// Flip the response byte at this offset (headers included), as a bad link or cache would.
    /// Every request through the proxy is then made to close its connection, so that each
    /// request is matched on its own.
    FlipByte(usize),
    /// Answer `GET /v2/NAME/referrers/DIGEST` from the manifests with a `subject` pushed
    /// through the proxy, and acknowledge such a push with an `OCI-Subject` header, as a
    /// registry with the referrers API does. One request per connection.
    ReferrersApi,
}

/// Referrer descriptors by subject digest, as pushed through a [`Fault::ReferrersApi`] proxy.
pub type Referrers = Arc<Mutex<HashMap<String, Vec<serde_json::Value>>>>;

pub struct FaultyProxy {
    pub port: u16,
    pub injected: Arc<AtomicUsize>,
    pub referrers: Referrers,
    stop: Arc<AtomicBool>,
}

impl FaultyProxy {
    pub fn start(upstream: u16, fault: Fault, faults: usize, matching: &'static str) -> FaultyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let injected = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let referrers = Referrers::default();
        let (inj, st, refs) = (injected.clone(), stop.clone(), referrers.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let (inj, refs) = (inj.clone(), refs.clone());
                thread::spawn(move || {
                    let _ = match fault {
                        Fault::ReferrersApi => referrers_api(client, upstream, &refs),
                        _ => serve(client, upstream, fault, faults, matching, &inj),
                    };
                });
            }
        });
        FaultyProxy { port, injected, referrers, stop }
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(
    mut client: TcpStream,
    upstream: u16,
    fault: Fault,
    faults: usize,
    matching: &str,
    injected: &AtomicUsize,
) -> std::io::Result<()> {
    // Read the first request head.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 65536 {
        if client.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let first_line = String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_string();
    let faulty = first_line.contains(matching)
        && injected
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < faults).then_some(n + 1))
            .is_ok();
    if faulty {
        if let Fault::Status500 = fault {
            client.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\nConnection: close\r\n\r\noops\n",
            )?;
            return client.shutdown(Shutdown::Both);
        }
        if let Fault::Redirect = fault {
            let path = first_line.split(' ').nth(1).unwrap_or("/");
            let reply = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{upstream}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            client.write_all(reply.as_bytes())?;
            return client.shutdown(Shutdown::Both);
        }
    }
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    let head = match (faulty, fault) {
        (_, Fault::FlipByte(_)) => {
            let text = String::from_utf8_lossy(&head).to_string();
            let mut kept: Vec<&str> = text
                .trim_end_matches("\r\n")
                .split("\r\n")
                .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                .collect();
            kept.push("Connection: close");
            format!("{}\r\n\r\n", kept.join("\r\n")).into_bytes()
        }
        (true, Fault::IgnoreRange) => {
            let text = String::from_utf8_lossy(&head).to_string();
            let kept: Vec<&str> =
                text.split("\r\n").filter(|l| !l.to_ascii_lowercase().starts_with("range:")).collect();
            kept.join("\r\n").into_bytes()
        }
        _ => head,
    };
    up.write_all(&head)?;
    let mut up_read = up.try_clone()?;
    let mut client_write = client.try_clone()?;
    let cut = match (faulty, fault) {
        (true, Fault::CutAfter(n)) => Some(n),
        _ => None,
    };
    let flip = match (faulty, fault) {
        (true, Fault::FlipByte(n)) => Some(n),
        _ => None,
    };
    // Upstream to client, possibly cut.
    let down = thread::spawn(move || {
        let mut buf = [0u8; 16384];
        let mut sent = 0usize;
        loop {
            let n = match up_read.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let n = match cut {
                Some(limit) => n.min(limit.saturating_sub(sent)),
                None => n,
            };
            if let Some(at) = flip
                && (sent..sent + n).contains(&at)
            {
                buf[at - sent] ^= 0xff;
            }
            if n == 0 || client_write.write_all(&buf[..n]).is_err() {
                break;
            }
            sent += n;
        }
        let _ = client_write.shutdown(Shutdown::Both);
        let _ = up_read.shutdown(Shutdown::Both);
    });
    // Client to upstream.
    let mut buf = [0u8; 16384];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if up.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = up.shutdown(Shutdown::Write);
    let _ = down.join();
    Ok(())
}

fn read_head(client: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 65536 {
        if client.read(&mut byte)? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    Ok(head)
}

/// One request: a referrers listing answered here, anything else passed to the registry (a
/// manifest with a `subject` recorded and acknowledged once the registry has stored it).
fn referrers_api(mut client: TcpStream, upstream: u16, refs: &Referrers) -> std::io::Result<()> {
    let head = read_head(&mut client)?;
    let text = String::from_utf8_lossy(&head).to_string();
    let mut first = text.lines().next().unwrap_or("").split(' ');
    let (method, path) = (first.next().unwrap_or("").to_string(), first.next().unwrap_or("").to_string());
    if method == "GET" && path.contains("/referrers/") {
        let subject = path.rsplit('/').next().unwrap_or("").split('?').next().unwrap_or("").to_string();
        let list = refs.lock().unwrap().get(&subject).cloned().unwrap_or_default();
        let body = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": list,
        }))
        .unwrap();
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.index.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        client.write_all(reply.as_bytes())?;
        client.write_all(&body)?;
        return client.shutdown(Shutdown::Both);
    }
    let mut lines: Vec<&str> = text
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    let length: usize = lines
        .iter()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    lines.push("Connection: close");
    let mut body = vec![0u8; length];
    client.read_exact(&mut body)?;
    let subject = (method == "PUT" && path.contains("/manifests/"))
        .then(|| serde_json::from_slice::<serde_json::Value>(&body).ok())
        .flatten()
        .and_then(|v| {
            let s = v["subject"]["digest"].as_str()?.to_string();
            let desc = serde_json::json!({
                "mediaType": v["mediaType"],
                "digest": format!("sha256:{}", hex::encode(Sha256::digest(&body))),
                "size": body.len(),
                "artifactType": v["artifactType"],
            });
            Some((s, desc))
        });
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    up.write_all(format!("{}\r\n\r\n", lines.join("\r\n")).as_bytes())?;
    up.write_all(&body)?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer)?;
    if let Some((s, desc)) = subject
        && answer.starts_with(b"HTTP/1.1 201")
        && let Some(eol) = answer.windows(2).position(|w| w == b"\r\n")
    {
        refs.lock().unwrap().entry(s.clone()).or_default().push(desc);
        let header = format!("\r\nOCI-Subject: {s}");
        answer.splice(eol..eol, header.into_bytes());
    }
    client.write_all(&answer)?;
    client.shutdown(Shutdown::Both)
}
