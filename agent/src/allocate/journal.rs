//! The write-ahead journal: before Umbra changes anything in the cgroup tree it appends
//! what it is about to do — a group it creates, the original text of a setting it
//! overwrites in a group it did not create, where a process it moves came from. A clean
//! shutdown puts everything back and deletes the file; after a `kill -9` the next start
//! reads the journal and puts back what the last run changed before doing anything else.
//!
//! Format (version 1): `UMBRAJNL`, a little-endian `u16` version, a `u16` of zeros, then
//! frames — `u32` payload length, `u32` CRC32 of the payload, the payload (one postcard
//! [`Entry`]). A cut or damaged tail (the agent killed mid-write) ends the journal there:
//! every entry before it is used. New entry kinds are added at the end of [`Entry`], so a
//! newer agent reads every older journal.
//!
//! Nothing is fsynced: a journal only has to survive the death of the agent, not of the
//! machine — the cgroup tree it describes does not survive a reboot either. A journal
//! from another boot (its `boot_id` differs) is therefore discarded unread.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::cgroups::{Backend, Group, Knob, Placement};

const MAGIC: &[u8; 8] = b"UMBRAJNL";
pub const VERSION: u16 = 1;
/// Longest frame accepted; anything larger is damage.
const MAX_FRAME: usize = 1 << 20;

/// One thing the agent did (or was about to do) to the cgroup tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// A run started.
    Begin {
        boot_id: String,
        pid: u32,
        started_ms: u64,
        backend: Backend,
    },
    /// A group Umbra creates (removed on restore).
    Created { group: Group },
    /// A setting's text before Umbra first changed it, in a group Umbra did not create.
    Original {
        group: Group,
        knob: Knob,
        raw: String,
    },
    /// A process moved into `to`; `start` is its start time (clock ticks since boot, as
    /// `/proc/<pid>/stat` says), so a reused pid is never moved.
    Moved {
        pid: u32,
        start: u64,
        to: Group,
        from: Placement,
    },
    /// A created group removed during the run (nothing left to restore for it).
    Removed { group: Group },
    /// A group Umbra froze (thawed on restore).
    Frozen { group: Group },
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}; check that the state directory is writable and not full")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "journal {path} has format version {version}; this build reads up to {VERSION}: \
         restore with the newer umbra that wrote it, or move the file away"
    )]
    Version { path: PathBuf, version: u16 },
    #[error("journal {path} is not an Umbra journal (bad magic); move the file away")]
    Magic { path: PathBuf },
}

/// What a previous run left behind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leftover {
    pub entries: Vec<Entry>,
    /// Bytes after the last good frame (a cut or damaged tail), ignored.
    pub damaged_bytes: u64,
    /// The journal came from another boot: its cgroup changes are gone with it.
    pub other_boot: bool,
}

pub struct Journal {
    path: PathBuf,
    file: fs::File,
    entries: u64,
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`).
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Decodes a journal's bytes.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<(Vec<Entry>, u64), JournalError> {
    if bytes.len() < 12 {
        // Cut before the header was complete: nothing was done after it.
        return Ok((Vec::new(), bytes.len() as u64));
    }
    if &bytes[..8] != MAGIC {
        return Err(JournalError::Magic {
            path: path.to_path_buf(),
        });
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version == 0 || version > VERSION {
        return Err(JournalError::Version {
            path: path.to_path_buf(),
            version,
        });
    }
    let mut at = 12;
    let mut entries = Vec::new();
    while at + 8 <= bytes.len() {
        let len =
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let crc = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        let start = at + 8;
        if len > MAX_FRAME || start + len > bytes.len() {
            break;
        }
        let payload = &bytes[start..start + len];
        if crc32fast::hash(payload) != crc {
            break;
        }
        match postcard::from_bytes::<Entry>(payload) {
            Ok(e) => entries.push(e),
            Err(_) => break,
        }
        at = start + len;
    }
    Ok((entries, (bytes.len() - at) as u64))
}

pub fn encode_frame(e: &Entry) -> Vec<u8> {
    // A plain enum of strings and integers always serialises.
    let payload = postcard::to_allocvec(e).unwrap_or_default();
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

fn header() -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&[0, 0]);
    h
}

impl Journal {
    /// Reads what a previous run left at `path` (if anything). The journal is not
    /// opened for writing until [`Journal::start`].
    pub fn leftover(path: &Path) -> Result<Option<Leftover>, JournalError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(path)(e)),
        };
        let (entries, damaged_bytes) = decode(path, &bytes)?;
        let this_boot = boot_id();
        let other_boot = entries.iter().any(|e| {
            matches!(e, Entry::Begin { boot_id, .. } if !this_boot.is_empty() && *boot_id != this_boot)
        });
        Ok(Some(Leftover {
            entries,
            damaged_bytes,
            other_boot,
        }))
    }

    /// A fresh journal at `path` (replacing any old one), its first entry `begin`.
    pub fn start(path: &Path, begin: Entry) -> Result<Journal, JournalError> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let tmp = path.with_extension("new");
        let mut bytes = header();
        bytes.extend(encode_frame(&begin));
        fs::write(&tmp, &bytes).map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))?;
        let file = fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io_err(path))?;
        Ok(Journal {
            path: path.to_path_buf(),
            file,
            entries: 1,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry (one `write(2)`, so a kill leaves it whole or cut, never torn
    /// in the middle of another).
    pub fn append(&mut self, e: &Entry) -> Result<(), JournalError> {
        self.file
            .write_all(&encode_frame(e))
            .map_err(io_err(&self.path))?;
        self.entries += 1;
        Ok(())
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Rewrites the journal as `live` (what still needs restoring), atomically.
    pub fn compact(&mut self, live: &[Entry]) -> Result<(), JournalError> {
        let tmp = self.path.with_extension("new");
        let mut bytes = header();
        for e in live {
            bytes.extend(encode_frame(e));
        }
        fs::write(&tmp, &bytes).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &self.path).map_err(io_err(&self.path))?;
        self.file = fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io_err(&self.path))?;
        self.entries = live.len() as u64;
        Ok(())
    }

    /// Everything is restored: the journal goes.
    pub fn finish(self) -> Result<(), JournalError> {
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&self.path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<Entry> {
        let g = Group::new("umbra.slice/w-a").unwrap();
        vec![
            Entry::Created { group: g.clone() },
            Entry::Original {
                group: g.clone(),
                knob: Knob::CpuMax,
                raw: "max 100000".into(),
            },
            Entry::Moved {
                pid: 42,
                start: 1234,
                to: g.child("base"),
                from: Placement {
                    dirs: vec![("unified".into(), PathBuf::from("/sys/fs/cgroup/x"))],
                },
            },
        ]
    }

    #[test]
    fn a_journal_reads_back_and_a_cut_tail_keeps_what_came_before() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("allocate/journal");
        let begin = Entry::Begin {
            boot_id: boot_id(),
            pid: 1,
            started_ms: 5,
            backend: Backend::Fake,
        };
        let mut j = Journal::start(&p, begin.clone()).unwrap();
        for e in entries() {
            j.append(&e).unwrap();
        }
        drop(j);
        let left = Journal::leftover(&p).unwrap().unwrap();
        let mut want = vec![begin];
        want.extend(entries());
        assert_eq!(left.entries, want);
        assert_eq!(left.damaged_bytes, 0);
        assert!(!left.other_boot);
        // Killed in the middle of the last frame.
        let bytes = fs::read(&p).unwrap();
        fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        let left = Journal::leftover(&p).unwrap().unwrap();
        assert_eq!(left.entries, want[..want.len() - 1]);
        assert!(left.damaged_bytes > 0);
        // A flipped byte in a frame ends it there too.
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 2] ^= 0xff;
        fs::write(&p, &bad).unwrap();
        assert_eq!(
            Journal::leftover(&p).unwrap().unwrap().entries.len(),
            want.len() - 1
        );
    }

    #[test]
    fn foreign_files_and_newer_versions_are_named_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("journal");
        fs::write(&p, b"not a journal at all").unwrap();
        let e = Journal::leftover(&p).unwrap_err().to_string();
        assert!(
            e.contains("not an Umbra journal") && e.contains("journal"),
            "{e}"
        );
        let mut h = header();
        h[8] = 9;
        fs::write(&p, &h).unwrap();
        let e = Journal::leftover(&p).unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
        assert!(Journal::leftover(&d.path().join("none")).unwrap().is_none());
    }

    #[test]
    fn a_journal_of_another_boot_is_marked() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("journal");
        let j = Journal::start(
            &p,
            Entry::Begin {
                boot_id: "00000000-0000-0000-0000-000000000000".into(),
                pid: 1,
                started_ms: 0,
                backend: Backend::V1,
            },
        )
        .unwrap();
        drop(j);
        assert!(Journal::leftover(&p).unwrap().unwrap().other_boot);
    }

    /// A journal written by format version 1 (`tests/fixtures/journal-v1.bin`, made by
    /// the first release) still reads.
    #[test]
    fn the_first_format_version_still_reads() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/journal-v1.bin");
        let bytes = fs::read(&p).unwrap();
        let (got, damaged) = decode(&p, &bytes).unwrap();
        assert_eq!(damaged, 0);
        assert_eq!(got[1..], entries()[..]);
        assert!(matches!(got[0], Entry::Begin { pid: 4242, .. }));
    }

    #[test]
    fn compaction_keeps_only_what_is_live() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("journal");
        let begin = Entry::Begin {
            boot_id: boot_id(),
            pid: 1,
            started_ms: 0,
            backend: Backend::Fake,
        };
        let mut j = Journal::start(&p, begin.clone()).unwrap();
        for _ in 0..10 {
            for e in entries() {
                j.append(&e).unwrap();
            }
        }
        let live = vec![begin, entries()[0].clone()];
        j.compact(&live).unwrap();
        j.append(&entries()[1]).unwrap();
        let mut want = live.clone();
        want.push(entries()[1].clone());
        assert_eq!(Journal::leftover(&p).unwrap().unwrap().entries, want);
        j.finish().unwrap();
        assert!(!p.exists());
    }
}
