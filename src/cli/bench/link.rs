//! The shaped link of `bench startup`: a network namespace and a veth pair with names and a
//! /30 subnet of this run only (several benches may run on one machine), tbf at `--rate` on
//! both ends, byte counters of the host end. Delay comes from `zran bench proxy` (`proxy.rs`)
//! run inside the namespace. Calls `sys` only.

use super::sys;
use anyhow::{Context, bail};
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Link {
    /// The namespace's name (`zranbench-PID[-N]`).
    pub ns: String,
    /// The veth end on the host (`zbPID[N]h`) and in the namespace (`...n`).
    pub host_if: String,
    pub ns_if: String,
    pub host_ip: Ipv4Addr,
    pub ns_ip: Ipv4Addr,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    sys::run(Command::new("ip").args(args), Duration::from_secs(20)).map(|_| ())
}

fn exists_ns(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

fn exists_if(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// IPv4 networks in use on the host (addresses and routes), as (network, prefix length).
fn used_networks() -> Vec<(u32, u32)> {
    let mut v = Vec::new();
    for args in [&["-4", "-o", "addr", "show"][..], &["-4", "route", "show", "table", "all"][..]] {
        let Ok(out) = Command::new("ip").args(args).output() else { continue };
        for word in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let (addr, len) = match word.split_once('/') {
                Some((a, l)) => (a, l.parse::<u32>().unwrap_or(32)),
                None => (word, 32),
            };
            if let Ok(a) = addr.parse::<Ipv4Addr>() {
                v.push((u32::from(a), len.min(32)));
            }
        }
    }
    v
}

fn overlaps(a: u32, alen: u32, b: u32, blen: u32) -> bool {
    let len = alen.min(blen);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    a & mask == b & mask
}

/// A /30 in 10.64.0.0/10 that nothing on the host uses, chosen from the PID and chance.
fn free_subnet() -> anyhow::Result<u32> {
    let used = used_networks();
    let base = u32::from(Ipv4Addr::new(10, 64, 0, 0));
    let slots = 1u32 << 20; // /30s in a /10
    let seed = std::process::id().wrapping_mul(2654435761);
    for i in 0..64 {
        let slot = if i == 0 { seed % slots } else { fastrand::u32(0..slots) };
        let net = base + slot * 4;
        // A default route (prefix 0) is no conflict.
        if !used.iter().any(|&(n, l)| l >= 1 && overlaps(net, 30, n, l)) {
            return Ok(net);
        }
    }
    bail!("no free /30 found in 10.64.0.0/10")
}

impl Link {
    /// Names for this run; nothing is created yet (`up` does, `down` undoes any part of it).
    pub fn new() -> anyhow::Result<Link> {
        let pid = std::process::id();
        for n in 0..100u32 {
            let suffix = if n == 0 { String::new() } else { n.to_string() };
            let ns = if n == 0 { format!("zranbench-{pid}") } else { format!("zranbench-{pid}-{n}") };
            let host_if = format!("zb{pid}{suffix}h");
            let ns_if = format!("zb{pid}{suffix}n");
            if host_if.len() > 15 {
                bail!("interface name {host_if} is too long");
            }
            if exists_ns(&ns) || exists_if(&host_if) || exists_if(&ns_if) {
                continue;
            }
            let net = free_subnet()?;
            return Ok(Link {
                ns,
                host_if,
                ns_if,
                host_ip: Ipv4Addr::from(net + 1),
                ns_ip: Ipv4Addr::from(net + 2),
            });
        }
        bail!("no free namespace name for PID {pid}")
    }

    /// Create the namespace, the veth pair and their addresses.
    pub fn up(&self) -> anyhow::Result<()> {
        let (ns, h, n) = (self.ns.as_str(), self.host_if.as_str(), self.ns_if.as_str());
        ip(&["netns", "add", ns])?;
        ip(&["link", "add", h, "type", "veth", "peer", "name", n])?;
        ip(&["link", "set", n, "netns", ns])?;
        ip(&["addr", "add", &format!("{}/30", self.host_ip), "dev", h])?;
        ip(&["link", "set", h, "up"])?;
        ip(&["netns", "exec", ns, "ip", "addr", "add", &format!("{}/30", self.ns_ip), "dev", n])?;
        ip(&["netns", "exec", ns, "ip", "link", "set", n, "up"])?;
        ip(&["netns", "exec", ns, "ip", "link", "set", "lo", "up"])
            .with_context(|| format!("cannot set up namespace {ns}"))
    }

    /// tbf at `rate_mbit` on both ends (0: unshaped).
    pub fn shape(&self, rate_mbit: f64) -> anyhow::Result<()> {
        if rate_mbit <= 0.0 {
            return Ok(());
        }
        // tbf's bucket must hold at least one tick's worth of bytes at the rate.
        let burst_kb = ((rate_mbit * 1e6 / 8.0 / 250.0) / 1024.0).ceil().max(64.0) as u64;
        let tbf = |prefix: &[&str], dev: &str| -> anyhow::Result<()> {
            let rate = format!("{}kbit", (rate_mbit * 1000.0).round() as u64);
            let burst = format!("{burst_kb}kb");
            let mut args: Vec<&str> = prefix.to_vec();
            args.extend([
                "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", &rate, "burst", &burst,
            ]);
            args.extend(["latency", "100ms"]);
            let (prog, rest) = args.split_first().context("empty command")?;
            sys::run(Command::new(prog).args(rest), Duration::from_secs(20)).map(|_| ())
        };
        tbf(&[], &self.host_if)?;
        tbf(&["ip", "netns", "exec", &self.ns], &self.ns_if)
    }

    /// Bytes received by the host end (what came over the link from the namespace).
    pub fn rx_bytes(&self) -> anyhow::Result<u64> {
        let p = format!("/sys/class/net/{}/statistics/rx_bytes", self.host_if);
        let s = std::fs::read_to_string(&p).with_context(|| format!("cannot read {p}"))?;
        s.trim().parse().with_context(|| format!("{p}: not a number"))
    }

    /// A command run inside the namespace.
    pub fn exec(&self, program: &std::ffi::OsStr) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// Remove the namespace (its processes first) and the veth pair; every step may fail
    /// because it was never done.
    pub fn down(&self) {
        if exists_ns(&self.ns) {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.ns]).output() {
                for pid in
                    String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok())
                {
                    sys::stop_pid(pid, Duration::from_secs(3));
                }
            }
            let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        }
        if exists_if(&self.host_if) {
            let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn overlap() {
        let a = u32::from(std::net::Ipv4Addr::new(10, 64, 1, 4));
        let b = u32::from(std::net::Ipv4Addr::new(10, 64, 1, 6));
        assert!(super::overlaps(a, 30, b, 32));
        assert!(!super::overlaps(a, 30, b + 4, 32));
        assert!(super::overlaps(a, 30, u32::from(std::net::Ipv4Addr::new(10, 0, 0, 0)), 8));
    }
}
