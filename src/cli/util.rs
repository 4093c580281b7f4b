//! Small helpers shared by commands: byte-size arguments and progress bars.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// Parse a byte count: `1048576`, `512K`, `1M`, `2MiB`, `1G` (binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    let value: f64 = num.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let bytes = value * mult as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes <= u64::MAX as f64) {
        return Err(format!("size out of range: {s:?}"));
    }
    Ok(bytes as u64)
}

/// A byte progress bar on stderr when it is a terminal, hidden otherwise.
pub fn byte_progress(len: Option<u64>, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::no_length(),
    };
    let template = if len.is_some() {
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    } else {
        "{msg} {bytes} {bytes_per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

/// One byte progress bar per layer (its compressed size), drawn together on stderr when it is
/// a terminal, hidden otherwise.
pub struct LayerBars {
    _multi: MultiProgress,
    bars: Vec<ProgressBar>,
}

impl LayerBars {
    pub fn new(layers: &[zran::oci::Descriptor]) -> LayerBars {
        let multi = MultiProgress::with_draw_target(if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let bars = layers
            .iter()
            .enumerate()
            .map(|(i, d)| multi.add(byte_progress(Some(d.size), &format!("layer {i}"))))
            .collect();
        LayerBars { _multi: multi, bars }
    }

    /// Layer `i` has read `n` bytes.
    pub fn set(&self, i: usize, n: u64) {
        if let Some(b) = self.bars.get(i) {
            b.set_position(n);
        }
    }

    pub fn finish(&self) {
        for b in &self.bars {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        assert_eq!(parse_size("0.5M"), Ok(512 << 10));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("M").is_err());
    }
}
