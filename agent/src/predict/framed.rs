//! The file layout the predict stage keeps its state in (the calibration file, the profile
//! store's snapshot): an 8-byte magic, the format version (u16), two reserved bytes, the
//! payload's length (u32) and CRC32, then the payload. Little-endian.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

/// Writes `bytes` as `path` whole or not at all: a temporary file beside it (`.tmp`
/// added), synced, renamed over it, and the directory synced; the directory is made
/// first. An error names the path that failed.
pub fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), (PathBuf, std::io::Error)> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let at = |p: &Path| {
        let p = p.to_path_buf();
        move |e| (p.clone(), e)
    };
    fs::create_dir_all(dir).map_err(at(dir))?;
    let mut f = fs::File::create(&tmp).map_err(at(&tmp))?;
    f.write_all(bytes).map_err(at(&tmp))?;
    f.sync_all().map_err(at(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(at(path))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Header bytes before the payload.
pub const HEADER: usize = 8 + 2 + 2 + 4 + 4;
/// Payloads larger than this are damage, not data.
const MAX_PAYLOAD: u32 = 256 << 20;

/// One kind of file.
#[derive(Clone, Copy, Debug)]
pub struct Format {
    pub magic: &'static [u8; 8],
    /// The version this build writes, and the newest it reads.
    pub version: u16,
}

/// Why bytes are not a file of a [`Format`].
#[derive(Debug, PartialEq, Eq)]
pub enum Unframed {
    /// Written by a newer build.
    Newer(u16),
    /// Damaged or not such a file: what is wrong.
    Corrupt(String),
}

impl Format {
    /// `payload` as file bytes.
    pub fn frame(&self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + payload.len());
        out.extend_from_slice(self.magic);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// The version and payload of file bytes, checked.
    pub fn unframe<'a>(&self, bytes: &'a [u8]) -> Result<(u16, &'a [u8]), Unframed> {
        let corrupt = |s: String| Err(Unframed::Corrupt(s));
        if bytes.len() < 8 || &bytes[..8] != self.magic {
            return corrupt(format!(
                "no {} magic at byte 0",
                String::from_utf8_lossy(self.magic)
            ));
        }
        if bytes.len() < HEADER {
            return corrupt(format!(
                "{} bytes: shorter than the {HEADER}-byte header",
                bytes.len()
            ));
        }
        let u32_at =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version > self.version {
            return Err(Unframed::Newer(version));
        }
        if version == 0 {
            return corrupt("format version 0".into());
        }
        let (len, want) = (u32_at(12), u32_at(16));
        if len > MAX_PAYLOAD || HEADER + len as usize != bytes.len() {
            return corrupt(format!(
                "header says {len} payload bytes, the file holds {}",
                bytes.len() - HEADER
            ));
        }
        let payload = &bytes[HEADER..];
        let got = crc32fast::hash(payload);
        if got != want {
            return corrupt(format!(
                "checksum mismatch (header says {want:08x}, data gives {got:08x})"
            ));
        }
        Ok((version, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: Format = Format {
        magic: b"UMBRATST",
        version: 2,
    };

    #[test]
    fn a_frame_reads_back_and_every_damage_is_named() {
        let b = F.frame(b"payload");
        assert_eq!(F.unframe(&b), Ok((2, &b"payload"[..])));
        let newer = Format { version: 3, ..F }.frame(b"x");
        assert_eq!(F.unframe(&newer), Err(Unframed::Newer(3)));
        let damaged = |b: &[u8], what: &str| match F.unframe(b) {
            Err(Unframed::Corrupt(s)) => assert!(s.contains(what), "{s}"),
            r => panic!("{r:?}"),
        };
        damaged(b"UMBRAXXX", "magic");
        damaged(&b[..HEADER - 1], "header");
        damaged(&b[..b.len() - 1], "payload bytes");
        let mut flipped = b.clone();
        *flipped.last_mut().unwrap() ^= 1;
        damaged(&flipped, "checksum");
        let mut zero = b.clone();
        zero[8] = 0;
        damaged(&zero, "version 0");
    }
}
