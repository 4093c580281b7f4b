//! The report of `bench startup`: per mode its preparation, its samples and their summary
//! (median, min, max), printed as a table, written as JSON (schema in
//! `formats/bench-startup.md`, `"schema": "zran-bench-startup/1"`) and drawn as an SVG bar
//! chart (plotters' SVG backend: no fonts, no system libraries). Calls `modes` for its types.

use super::modes::{Harness, Mode, Prepared, Sample};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const SCHEMA: &str = "zran-bench-startup/1";

#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    /// The image as the user named it.
    pub image: String,
    pub workload: Vec<String>,
    pub expect: String,
    pub link: LinkInfo,
    /// Starts per mode asked for.
    pub runs: usize,
    /// Unix seconds at the start of the bench.
    pub started: u64,
    /// Bytes of the original image's layers.
    pub image_bytes: u64,
    pub modes: Vec<ModeReport>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LinkInfo {
    /// tbf rate on both veth ends in Mbit/s (0: unshaped).
    pub rate_mbit: f64,
    /// Delay added in each direction by the forwarder, in ms (0: none).
    pub delay_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ModeReport {
    pub mode: Mode,
    pub harness: Harness,
    /// "ok" (every start answered), "failed" (preparation or some start failed) or
    /// "skipped" (a tool it needs is missing).
    pub status: String,
    /// Why, when not ok.
    pub error: Option<String>,
    pub prepare: Prepared,
    /// Successful starts, in the order they ran.
    pub samples: Vec<Sample>,
    /// Errors of starts that failed.
    pub failures: Vec<String>,
    pub summary: Option<Summary>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    fn of(v: &[f64]) -> Option<Stat> {
        if v.is_empty() {
            return None;
        }
        let mut s = v.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        let n = s.len();
        let median = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 };
        Some(Stat { median, min: s[0], max: s[n - 1] })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub total_s: Stat,
    pub pull_s: Stat,
    pub run_s: Stat,
    pub link_rx_bytes: Stat,
    pub registry_blob_requests: Stat,
    pub registry_blob_bytes: Stat,
    /// Median of bytes_fetched / file_bytes_read (zran modes; null where nothing was read).
    pub read_amplification: Option<f64>,
    /// Median start time of `full` over this mode's (null without `full`).
    pub speedup_vs_full: Option<f64>,
}

pub fn summarize(samples: &[Sample]) -> Option<Summary> {
    let col = |f: &dyn Fn(&Sample) -> f64| samples.iter().map(f).collect::<Vec<_>>();
    let amps: Vec<f64> = samples
        .iter()
        .filter_map(|s| match (s.bytes_fetched, s.file_bytes_read) {
            (Some(f), Some(r)) if r > 0 => Some(f as f64 / r as f64),
            _ => None,
        })
        .collect();
    Some(Summary {
        total_s: Stat::of(&col(&|s| s.total_s))?,
        pull_s: Stat::of(&col(&|s| s.pull_s))?,
        run_s: Stat::of(&col(&|s| s.run_s))?,
        link_rx_bytes: Stat::of(&col(&|s| s.link_rx_bytes as f64))?,
        registry_blob_requests: Stat::of(&col(&|s| s.registry_blob_requests as f64))?,
        registry_blob_bytes: Stat::of(&col(&|s| s.registry_blob_bytes as f64))?,
        read_amplification: Stat::of(&amps).map(|s| s.median),
        speedup_vs_full: None,
    })
}

/// Fill in each mode's speed relative to `full`.
pub fn compare(modes: &mut [ModeReport]) {
    let full = modes
        .iter()
        .find(|m| m.mode == Mode::Full)
        .and_then(|m| m.summary.as_ref())
        .map(|s| s.total_s.median);
    for m in modes {
        if let (Some(f), Some(s)) = (full, m.summary.as_mut()) {
            s.speedup_vs_full = (s.total_s.median > 0.0).then(|| f / s.total_s.median);
        }
    }
}

pub fn bytes(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.2} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} kB", n / 1e3)
    } else {
        format!("{n:.0} B")
    }
}

/// The table on stdout (Markdown, so it can be pasted as it is).
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "image {} ({} of layers), link {}, {} run(s) per mode\n\n",
        r.image,
        bytes(r.image_bytes as f64),
        if r.link.rate_mbit <= 0.0 && r.link.delay_ms == 0 {
            "unshaped".to_string()
        } else {
            format!("{} Mbit/s, {} ms each way", r.link.rate_mbit, r.link.delay_ms)
        },
        r.runs
    ));
    out.push_str("| mode | harness | prepare | artifact/converted | start (median [min-max]) | pull | run | bytes over the link | blob requests | read amplification | speed vs full |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for m in &r.modes {
        let prep = if m.prepare.error.is_some() {
            "failed".to_string()
        } else {
            format!("{:.1} s ({})", m.prepare.seconds, m.prepare.step)
        };
        let size = if m.prepare.error.is_some() { "-".to_string() } else { bytes(m.prepare.bytes as f64) };
        match &m.summary {
            Some(s) => out.push_str(&format!(
                "| {} | {} | {} | {} | {:.2} s [{:.2}-{:.2}] | {:.2} s | {:.2} s | {} | {:.0} | {} | {} |\n",
                m.mode.name(),
                m.harness.name(),
                prep,
                size,
                s.total_s.median,
                s.total_s.min,
                s.total_s.max,
                s.pull_s.median,
                s.run_s.median,
                bytes(s.link_rx_bytes.median),
                s.registry_blob_requests.median,
                s.read_amplification.map_or("-".to_string(), |a| format!("{a:.2}x")),
                match (m.mode, s.speedup_vs_full) {
                    (Mode::Full, _) => "baseline".to_string(),
                    (_, Some(x)) => format!("{x:.2}x"),
                    _ => "-".to_string(),
                },
            )),
            None => out.push_str(&format!(
                "| {} | {} | {} | {} | {}: {} | | | | | | |\n",
                m.mode.name(),
                m.harness.name(),
                prep,
                size,
                m.status,
                m.error.as_deref().unwrap_or("").replace('|', "/").chars().take(160).collect::<String>()
            )),
        }
    }
    for m in r.modes.iter().filter(|m| m.summary.is_some() && !m.failures.is_empty()) {
        out.push_str(&format!(
            "\n{}: {} start(s) failed: {}\n",
            m.mode.name(),
            m.failures.len(),
            m.failures.join("; ")
        ));
    }
    out
}

/// A report `write_json` wrote.
pub fn read_json(path: &Path) -> anyhow::Result<Report> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let r: Report =
        serde_json::from_slice(&bytes).with_context(|| format!("{}: not a bench report", path.display()))?;
    if r.schema != SCHEMA {
        anyhow::bail!("{}: schema {:?}, expected {SCHEMA:?}", path.display(), r.schema);
    }
    Ok(r)
}

pub fn write_json(r: &Report, path: &Path) -> anyhow::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(r)?;
    bytes.push(b'\n');
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// A horizontal bar per mode: median pull (or mount) then run, stacked, the total and its
/// range at the end of the bar; modes that did not run are named with why.
pub fn plot(r: &Report, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let n = r.modes.len().max(1);
    let height = 140 + 48 * n as u32;
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("cannot draw {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let xmax = r
        .modes
        .iter()
        .filter_map(|m| m.summary.as_ref())
        .map(|s| s.total_s.max.max(s.pull_s.median + s.run_s.median))
        .fold(0.0f64, f64::max)
        .max(0.1)
        * 1.35;
    let names: Vec<String> = r
        .modes
        .iter()
        .map(|m| {
            let h = if m.harness == Harness::Chroot { " (chroot)" } else { "" };
            format!("{}{h}", m.mode.name())
        })
        .collect();
    let title = format!(
        "Start-up to the workload's answer: {} ({}, {} run{})",
        short(&r.image, 40),
        if r.link.rate_mbit <= 0.0 && r.link.delay_ms == 0 {
            "unshaped link".to_string()
        } else {
            format!("{} Mbit/s, {} ms", r.link.rate_mbit, r.link.delay_ms)
        },
        r.runs,
        if r.runs == 1 { "" } else { "s, median" }
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(150)
        .build_cartesian_2d(0f64..xmax, (0..n).into_segmented())
        .map_err(|e| err(&e))?;
    let labels = names.clone();
    // The first mode at the top: segment 0 is at the bottom.
    let row = |i: usize| n - 1 - i.min(n - 1);
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc("seconds")
        .y_labels(n)
        .y_label_formatter(&|v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) if *i < n => labels.get(row(*i)).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    let pull_color = RGBColor(70, 130, 180);
    let run_color = RGBColor(240, 150, 60);
    let bar = |i: usize, x0: f64, x1: f64, c: RGBColor| {
        let i = row(i);
        let mut rect =
            Rectangle::new([(x0, SegmentValue::Exact(i)), (x1, SegmentValue::Exact(i + 1))], c.filled());
        rect.set_margin(8, 8, 0, 0);
        rect
    };
    let ok: Vec<(usize, &Summary)> =
        r.modes.iter().enumerate().filter_map(|(i, m)| m.summary.as_ref().map(|s| (i, s))).collect();
    chart
        .draw_series(ok.iter().map(|&(i, s)| bar(i, 0.0, s.pull_s.median, pull_color)))
        .map_err(|e| err(&e))?
        .label("pull / mount")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], pull_color.filled()));
    chart
        .draw_series(
            ok.iter().map(|&(i, s)| bar(i, s.pull_s.median, s.pull_s.median + s.run_s.median, run_color)),
        )
        .map_err(|e| err(&e))?
        .label("run to the answer")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], run_color.filled()));
    let text = ("sans-serif", 13).into_font().color(&BLACK).pos(plotters::style::text_anchor::Pos::new(
        plotters::style::text_anchor::HPos::Left,
        plotters::style::text_anchor::VPos::Center,
    ));
    chart
        .draw_series(r.modes.iter().enumerate().map(|(i, m)| {
            let (x, label) = match &m.summary {
                Some(s) => {
                    let range = if s.total_s.min < s.total_s.max {
                        format!(" [{:.2}-{:.2}]", s.total_s.min, s.total_s.max)
                    } else {
                        String::new()
                    };
                    let vs = match (m.mode, s.speedup_vs_full) {
                        (Mode::Full, _) | (_, None) => String::new(),
                        (_, Some(x)) => format!(", {x:.2}x full"),
                    };
                    (
                        s.pull_s.median + s.run_s.median,
                        format!(" {:.2} s{range}, {}{vs}", s.total_s.median, bytes(s.link_rx_bytes.median)),
                    )
                }
                None => (0.0, format!(" {}: {}", m.status, short(m.error.as_deref().unwrap_or(""), 70))),
            };
            Text::new(label, (x, SegmentValue::CenterOf(row(i))), text.clone())
        }))
        .map_err(|e| err(&e))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
    t.push('…');
    t
}

#[cfg(test)]
mod tests {
    use super::Stat;

    #[test]
    fn median() {
        let s = Stat::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Stat::of(&[4.0, 1.0]).unwrap().median, 2.5);
        assert!(Stat::of(&[]).is_none());
    }
}
