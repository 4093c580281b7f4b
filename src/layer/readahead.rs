//! Read-ahead of a layer blob on its own thread: the blob's reads and its digest check (the
//! source's verifying reader hashes every compressed byte) run beside the inflating thread
//! instead of on it. Buffers are recycled, at most [`POOL`] of them, so memory stays bounded and
//! a full queue makes the reading thread wait.
//!
//! Calls nothing else in the crate.

use std::io::{self, Read};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Bytes per read of the blob.
const PIECE: usize = 1 << 20;
/// Pieces queued to the reader.
const IN_FLIGHT: usize = 4;
/// Buffers in all: queued, the one being read into, the one being consumed.
const POOL: usize = IN_FLIGHT + 2;

enum Piece {
    Data(Vec<u8>),
    End,
    Failed(io::Error),
}

/// A reader over another one read on a thread of its own. An error of the inner reader comes
/// out of [`Read::read`] at the place it happened; a panic of the reading thread becomes an
/// error too, never an early end.
pub struct ReadAhead {
    rx: mpsc::Receiver<Piece>,
    recycle: Option<mpsc::SyncSender<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
    done: bool,
    thread: Option<JoinHandle<()>>,
}

impl ReadAhead {
    /// Start reading `inner` ahead; `name` names the thread.
    pub fn new<R: Read + Send + 'static>(mut inner: R, name: &str) -> io::Result<ReadAhead> {
        let (tx, rx) = mpsc::sync_channel(IN_FLIGHT);
        let (recycle, recycled) = mpsc::sync_channel::<Vec<u8>>(POOL);
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || {
            yield_to_inflate();
            let mut made = 0;
            loop {
                let mut buf = match recycled.try_recv() {
                    Ok(b) => b,
                    Err(_) if made < POOL => {
                        made += 1;
                        vec![0; PIECE]
                    }
                    Err(_) => match recycled.recv() {
                        Ok(b) => b,
                        // The consumer is gone.
                        Err(_) => return,
                    },
                };
                buf.resize(PIECE, 0);
                let piece = loop {
                    match inner.read(&mut buf) {
                        Ok(0) => break Piece::End,
                        Ok(n) => {
                            buf.truncate(n);
                            break Piece::Data(buf);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => break Piece::Failed(e),
                    }
                };
                let last = !matches!(piece, Piece::Data(_));
                if tx.send(piece).is_err() || last {
                    return;
                }
            }
        })?;
        Ok(ReadAhead {
            rx,
            recycle: Some(recycle),
            current: Vec::new(),
            pos: 0,
            done: false,
            thread: Some(thread),
        })
    }
}

/// Helper threads of the index pass yield to the inflating thread when the cores are
/// oversubscribed (they only need to keep up on the whole; their queues are bounded).
fn yield_to_inflate() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority on this thread's own id (gettid) changes only its nice value; no
    // memory is passed. Failure (no permission) leaves the priority as it was.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 5);
    }
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            if self.done || buf.is_empty() {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Piece::Data(next)) => {
                    let old = std::mem::replace(&mut self.current, next);
                    self.pos = 0;
                    if let (Some(r), true) = (&self.recycle, old.capacity() > 0) {
                        // Fails only when the reading thread has ended: then it needs no buffer.
                        let _ = r.try_send(old);
                    }
                }
                Ok(Piece::End) => self.done = true,
                Ok(Piece::Failed(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    let why = match self.thread.take().map(JoinHandle::join) {
                        Some(Err(payload)) => payload
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| payload.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "panicked".into()),
                        _ => "ended without a word".into(),
                    };
                    return Err(io::Error::other(format!("the blob's reading thread stopped: {why}")));
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        // Closing both channels stops the reading thread at its next send or wait for a buffer;
        // it is not waited for (a read from a slow network source may take a while to return).
        self.recycle = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads in odd sizes, then fails or panics at a given offset.
    struct Flaky {
        data: Vec<u8>,
        at: usize,
        fail_at: Option<usize>,
        panic_at: Option<usize>,
    }

    impl Read for Flaky {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.fail_at.is_some_and(|f| self.at >= f) {
                return Err(io::Error::other(format!("broken at {}", self.at)));
            }
            if self.panic_at.is_some_and(|p| self.at >= p) {
                panic!("reader blew up at {}", self.at);
            }
            let n = buf.len().min(self.data.len() - self.at).min(77_777);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 253) as u8).collect()
    }

    #[test]
    fn gives_the_same_bytes() {
        for n in [0, 1, PIECE - 1, PIECE, 3 * PIECE + 12345, 11 * PIECE] {
            let d = data(n);
            let inner = Flaky { data: d.clone(), at: 0, fail_at: None, panic_at: None };
            let mut out = Vec::new();
            ReadAhead::new(inner, "t").unwrap().read_to_end(&mut out).unwrap();
            assert!(out == d, "{n} bytes");
        }
    }

    #[test]
    fn an_error_comes_out_where_it_happened() {
        let d = data(3 * PIECE);
        let inner = Flaky { data: d.clone(), at: 0, fail_at: Some(PIECE + 5), panic_at: None };
        let mut r = ReadAhead::new(inner, "t").unwrap();
        let mut out = Vec::new();
        let e = r.read_to_end(&mut out).unwrap_err();
        assert!(e.to_string().starts_with("broken at"), "{e}");
        assert!(out.len() >= PIECE + 5 && d.starts_with(&out), "{} bytes before the error", out.len());
    }

    #[test]
    fn a_panic_is_an_error_not_an_end() {
        let inner = Flaky { data: data(2 * PIECE), at: 0, fail_at: None, panic_at: Some(PIECE) };
        let mut out = Vec::new();
        let e = ReadAhead::new(inner, "t").unwrap().read_to_end(&mut out).unwrap_err();
        assert!(e.to_string().contains("reader blew up"), "{e}");
    }

    #[test]
    fn dropping_it_early_stops_the_thread() {
        let inner = Flaky { data: data(50 * PIECE), at: 0, fail_at: None, panic_at: None };
        let mut r = ReadAhead::new(inner, "t").unwrap();
        let mut buf = [0u8; 10];
        r.read_exact(&mut buf).unwrap();
        let thread = r.thread.take();
        drop(r);
        // It ends (at its next send), or this test hangs.
        if let Some(t) = thread {
            t.join().unwrap();
        }
    }
}
