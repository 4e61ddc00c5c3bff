//! Record and replay: what capture produced (ticks and lifecycle events), as a versioned,
//! framed postcard stream, so every later stage is testable and trainable without root.
//!
//! File layout: `UMBRAREC` (8 bytes), format version (u16 LE), reserved (u16), then
//! frames of `[payload length: u32 LE][CRC32 of payload: u32 LE][payload]`. The first
//! frame is a [`Header`]; every other frame is one [`CaptureItem`]. A damaged or cut file
//! yields every frame before the damage, then an error naming the file and byte offset.

use std::{
    fs::File,
    io::{BufRead, BufReader, BufWriter, Read, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::capture::{CaptureError, CaptureItem, Source};

pub const MAGIC: &[u8; 8] = b"UMBRAREC";
/// The format version this build writes. It reads this one and format 2 (see [`v2`]).
pub const VERSION: u16 = 3;
/// The oldest format version this build reads.
pub const OLDEST: u16 = 2;
/// Frames larger than this are damage, not data.
const MAX_FRAME: u32 = 64 << 20;
/// Bytes before a frame's payload: its length and its CRC32.
const PREFIX: usize = 8;

/// What a recording says about where and how it was made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub kernel: String,
    pub node: String,
    pub interval_ms: u32,
    /// Wall clock at the start, ms since the Unix epoch.
    pub start_ms: u64,
    pub agent_version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("recording {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an Umbra recording (no UMBRAREC magic at byte 0)")]
    BadMagic { path: PathBuf },
    #[error(
        "{path} is format version {found}; this build reads version {VERSION}: replay it with a newer umbra"
    )]
    NewerVersion { path: PathBuf, found: u16 },
    #[error(
        "{path} is format version {found}, older than any this build reads ({OLDEST} to {VERSION}): replay it with the umbra that recorded it"
    )]
    OlderVersion { path: PathBuf, found: u16 },
    #[error(
        "{path} is damaged at byte {offset}: {what}; the {frames} frame(s) before it were read"
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: String,
        frames: u64,
    },
    #[error(
        "{path} ends in the middle of a frame at byte {offset} (cut short?); the {frames} frame(s) before it were read"
    )]
    Truncated {
        path: PathBuf,
        offset: u64,
        frames: u64,
    },
    #[error("encoding a frame: {0}")]
    Encode(#[from] postcard::Error),
}

/// Why one frame could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// More bytes are needed (a cut file, when at the end).
    Incomplete,
    TooLarge(u32),
    Checksum {
        want: u32,
        got: u32,
    },
}

/// A frame around `payload`.
pub fn encode_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of the frame at the start of `buf`, and the bytes the frame took.
pub fn decode_frame(buf: &[u8]) -> Result<(&[u8], usize), FrameError> {
    if buf.len() < PREFIX {
        return Err(FrameError::Incomplete);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let want = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let end = PREFIX + len as usize;
    if buf.len() < end {
        return Err(FrameError::Incomplete);
    }
    let payload = &buf[PREFIX..end];
    let got = crc32fast::hash(payload);
    if got != want {
        return Err(FrameError::Checksum { want, got });
    }
    Ok((payload, end))
}

/// Writes a recording.
pub struct Writer {
    out: BufWriter<File>,
    path: PathBuf,
}

impl Writer {
    pub fn create(path: &Path, header: &Header) -> Result<Writer, RecordError> {
        let io = |source| RecordError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut out = BufWriter::new(File::create(path).map_err(io)?);
        out.write_all(MAGIC).map_err(io)?;
        out.write_all(&VERSION.to_le_bytes()).map_err(io)?;
        out.write_all(&[0, 0]).map_err(io)?;
        let mut w = Writer {
            out,
            path: path.to_path_buf(),
        };
        w.frame(&postcard::to_stdvec(header)?)?;
        Ok(w)
    }

    pub fn write(&mut self, item: &CaptureItem) -> Result<(), RecordError> {
        self.frame(&postcard::to_stdvec(item)?)?;
        // A tick closes an interval: make it durable up to here.
        if matches!(item, CaptureItem::Tick(_)) {
            self.flush()?;
        }
        Ok(())
    }

    fn frame(&mut self, payload: &[u8]) -> Result<(), RecordError> {
        self.out
            .write_all(&encode_frame(payload))
            .map_err(|source| RecordError::Io {
                path: self.path.clone(),
                source,
            })
    }

    pub fn flush(&mut self) -> Result<(), RecordError> {
        self.out.flush().map_err(|source| RecordError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// Reads a recording, frame by frame.
pub struct Reader {
    input: Box<dyn Read + Send>,
    path: PathBuf,
    header: Header,
    version: u16,
    offset: u64,
    frames: u64,
    failed: bool,
}

impl Reader {
    /// A recording file, as written or compressed with zstd.
    pub fn open(path: &Path) -> Result<Reader, RecordError> {
        let file = File::open(path).map_err(|source| RecordError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Reader::decompressed(path, BufReader::new(file))
    }

    /// A recording held in memory (as written or compressed with zstd); `name` stands for
    /// its path in errors.
    pub fn from_bytes(name: &Path, bytes: Vec<u8>) -> Result<Reader, RecordError> {
        Reader::decompressed(name, std::io::Cursor::new(bytes))
    }

    /// `input` read through a zstd decoder when it starts with a zstd frame.
    fn decompressed(
        path: &Path,
        mut input: impl BufRead + Send + 'static,
    ) -> Result<Reader, RecordError> {
        let compressed = input
            .fill_buf()
            .map_err(|e| read_error(path, 0, 0, e))?
            .starts_with(&zstd::MAGIC);
        if !compressed {
            return Reader::new(path, Box::new(input));
        }
        match zstd::Zstd::new(input) {
            Ok(z) => Reader::new(path, Box::new(z)),
            Err(source) => Err(read_error(path, 0, 0, source)),
        }
    }

    fn new(path: &Path, mut input: Box<dyn Read + Send>) -> Result<Reader, RecordError> {
        let mut lead = [0u8; 12];
        let n = read_full(&mut input, &mut lead).map_err(|e| read_error(path, 0, 0, e))?;
        if n < 8 || &lead[..8] != MAGIC {
            return Err(RecordError::BadMagic {
                path: path.to_path_buf(),
            });
        }
        if n < 12 {
            return Err(RecordError::Truncated {
                path: path.to_path_buf(),
                offset: n as u64,
                frames: 0,
            });
        }
        let found = u16::from_le_bytes([lead[8], lead[9]]);
        if found > VERSION {
            return Err(RecordError::NewerVersion {
                path: path.to_path_buf(),
                found,
            });
        }
        if found < OLDEST {
            return Err(RecordError::OlderVersion {
                path: path.to_path_buf(),
                found,
            });
        }
        let mut r = Reader {
            input,
            path: path.to_path_buf(),
            header: Header {
                kernel: String::new(),
                node: String::new(),
                interval_ms: 0,
                start_ms: 0,
                agent_version: String::new(),
            },
            version: found,
            offset: 12,
            frames: 0,
            failed: false,
        };
        let payload = match r.next_payload() {
            Some(p) => p?,
            None => {
                return Err(RecordError::Truncated {
                    path: path.to_path_buf(),
                    offset: 12,
                    frames: 0,
                });
            }
        };
        r.header = postcard::from_bytes(&payload)
            .map_err(|e| r.corrupt(12, format!("bad header: {e}")))?;
        Ok(r)
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The file's format version.
    pub fn version(&self) -> u16 {
        self.version
    }

    fn corrupt(&self, offset: u64, what: String) -> RecordError {
        RecordError::Corrupt {
            path: self.path.clone(),
            offset,
            what,
            frames: self.frames,
        }
    }

    /// The next frame's payload; `None` at a clean end.
    fn next_payload(&mut self) -> Option<Result<Vec<u8>, RecordError>> {
        if self.failed {
            return None;
        }
        let start = self.offset;
        let mut prefix = [0u8; PREFIX];
        let n = match read_full(&mut self.input, &mut prefix) {
            Ok(n) => n,
            Err(source) => {
                self.failed = true;
                return Some(Err(read_error(&self.path, start, self.frames, source)));
            }
        };
        if n == 0 {
            return None;
        }
        let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        let mut frame = prefix[..n].to_vec();
        if n == PREFIX && len <= MAX_FRAME {
            let mut payload = vec![0u8; len as usize];
            match read_full(&mut self.input, &mut payload) {
                Ok(m) => frame.extend_from_slice(&payload[..m]),
                Err(source) => {
                    self.failed = true;
                    return Some(Err(read_error(&self.path, start, self.frames, source)));
                }
            }
        }
        match decode_frame(&frame) {
            Ok((payload, used)) => {
                self.offset += used as u64;
                self.frames += 1;
                Some(Ok(payload.to_vec()))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(match e {
                    FrameError::Incomplete => RecordError::Truncated {
                        path: self.path.clone(),
                        offset: start,
                        frames: self.frames,
                    },
                    FrameError::TooLarge(len) => {
                        self.corrupt(start, format!("frame length {len} is not plausible"))
                    }
                    FrameError::Checksum { want, got } => self.corrupt(
                        start,
                        format!("checksum mismatch (frame says {want:08x}, data gives {got:08x})"),
                    ),
                }))
            }
        }
    }

    /// The next item; `None` at the end (clean, or after an error was returned).
    pub fn next_item(&mut self) -> Option<Result<CaptureItem, RecordError>> {
        let start = self.offset;
        let payload = match self.next_payload()? {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        let item = match self.version {
            2 => postcard::from_bytes::<v2::Item>(&payload).map(CaptureItem::from),
            _ => postcard::from_bytes(&payload),
        };
        match item {
            Ok(item) => Some(Ok(item)),
            Err(e) => {
                self.failed = true;
                Some(Err(
                    self.corrupt(start, format!("frame does not decode: {e}"))
                ))
            }
        }
    }
}

impl Iterator for Reader {
    type Item = Result<CaptureItem, RecordError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_item()
    }
}

/// A failed read of the frame at `offset` (of the decompressed stream, for a compressed
/// file): a compressed file cut short or damaged says so as a plain one does.
fn read_error(path: &Path, offset: u64, frames: u64, source: std::io::Error) -> RecordError {
    let path = path.to_path_buf();
    match source.kind() {
        std::io::ErrorKind::UnexpectedEof => RecordError::Truncated {
            path,
            offset,
            frames,
        },
        std::io::ErrorKind::InvalidData => RecordError::Corrupt {
            path,
            offset,
            what: format!("{source} (byte {offset} of its decompressed content)"),
            frames,
        },
        _ => RecordError::Io { path, source },
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(m) => n += m,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// How fast a recording is replayed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    AsFastAsPossible,
    /// Recorded time divided by this factor (1.0: as recorded).
    Speed(f64),
}

/// A recording as a capture [`Source`]: the pipeline cannot tell it from the kernel.
pub struct Replay {
    reader: Reader,
    pace: Pace,
    last_tick_ns: Option<u64>,
    /// The error that ended the stream, kept for the caller after the last item.
    pub error: Option<RecordError>,
}

impl Replay {
    pub fn new(reader: Reader, pace: Pace) -> Self {
        Replay {
            reader,
            pace,
            last_tick_ns: None,
            error: None,
        }
    }
}

impl Source for Replay {
    async fn next(&mut self) -> Result<Option<CaptureItem>, CaptureError> {
        match self.reader.next_item() {
            None => Ok(None),
            Some(Err(e)) => {
                self.error = Some(e);
                Ok(None)
            }
            Some(Ok(item)) => {
                if let (CaptureItem::Tick(t), Pace::Speed(speed)) = (&item, self.pace) {
                    if let Some(last) = self.last_tick_ns
                        && t.timestamp_ns > last
                        && speed > 0.0
                    {
                        let wait = (t.timestamp_ns - last) as f64 / speed;
                        tokio::time::sleep(Duration::from_nanos(wait as u64)).await;
                    }
                    self.last_tick_ns = Some(t.timestamp_ns);
                }
                Ok(Some(item))
            }
        }
    }
}

pub mod snapshot;
mod v2;
mod zstd;

#[cfg(test)]
mod tests;
