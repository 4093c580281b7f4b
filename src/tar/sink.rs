//! The tar parser as a [`Sink`] of the gzip engine's index pass: entries come out of the same
//! single pass that builds the seek index.

use super::parser::TarParser;
use crate::gzip::{Requests, Sink};

/// Parses the uncompressed stream as tar while the index is built. With a chunk size, it asks
/// the engine for a checkpoint before each chunk of every regular file, so that reading any
/// chunk later inflates as little as possible.
#[derive(Debug, Default)]
pub struct TarSink {
    pub parser: TarParser,
    chunk_size: Option<u64>,
    seen: usize,
}

impl TarSink {
    pub fn new(chunk_size: Option<u64>) -> TarSink {
        TarSink { parser: TarParser::new(), chunk_size, seen: 0 }
    }
}

impl Sink for TarSink {
    fn data(
        &mut self,
        at: u64,
        bytes: &[u8],
        requests: &mut Requests,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.parser.push(at, bytes, &mut |_, _, _| {})?;
        if let Some(chunk) = self.chunk_size.filter(|&c| c > 0) {
            for e in &self.parser.entries()[self.seen..] {
                let mut off = 0;
                while off < e.size {
                    requests.request(e.data_offset + off);
                    off += chunk;
                }
            }
        }
        self.seen = self.parser.entries().len();
        Ok(())
    }
}
