//! The on-disk spool: every message is written here before it is sent, and forgotten
//! only once the broker has acknowledged it, so neither a broker outage nor a crash of
//! the agent (`kill -9`) loses what was spooled.
//!
//! A directory of segment files `<first seq, 20 digits>.seg`, each a run of records
//! `[len u32 LE][crc32 u32 LE][seq u64 LE][payload]` (the CRC covers seq and payload), and
//! a small `cursor` file `[acked u64][next seq u64][crc32]` replaced atomically (write,
//! rename). Segments whose every message is acknowledged are deleted. When the spool
//! outgrows its byte budget, its oldest segment is dropped and its unsent messages are
//! counted. On open, a torn or corrupt tail (a crash mid-write) is cut off with a warning
//! naming the file and offset; every record before it is kept.
//!
//! Only the index lives in memory; payloads are read back from disk when sent.

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use bytes::Bytes;
use tracing::{info, warn};

const HEADER: usize = 16;
const CURSOR: &str = "cursor";
/// How often the acknowledgement cursor is written (a crash between two writes means
/// only re-sending, which the seq makes harmless).
const CURSOR_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error(
        "spool {path}: {source}; check that the directory exists, is writable and has free space"
    )]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("message of {len} bytes does not fit in a spool segment of {segment_bytes} bytes")]
    TooLarge { len: usize, segment_bytes: u64 },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Limits of a spool.
#[derive(Clone, Copy, Debug)]
pub struct SpoolLimits {
    /// Bytes on disk at most (all segments).
    pub max_bytes: u64,
    /// Bytes per segment file; the unit in which old messages are dropped.
    pub segment_bytes: u64,
}

struct Segment {
    first_seq: u64,
    /// The seq its next record must carry (a segment holds consecutive seqs).
    next: u64,
    path: PathBuf,
    file: File,
    bytes: u64,
}

/// Where a message lives.
#[derive(Clone, Copy, Debug)]
struct Entry {
    seq: u64,
    segment_first: u64,
    offset: u64,
    len: u32,
    acked: bool,
}

/// What opening found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Messages on disk not yet acknowledged.
    pub pending: u64,
    /// Bytes cut from damaged segment tails.
    pub truncated_bytes: u64,
}

pub struct Spool {
    dir: PathBuf,
    limits: SpoolLimits,
    segments: VecDeque<Segment>,
    /// Every message on disk from the oldest unacknowledged one on, in seq order.
    entries: VecDeque<Entry>,
    next_seq: u64,
    /// Every seq at or below it is acknowledged.
    acked: u64,
    bytes: u64,
    dropped: u64,
    cursor_written: Option<Instant>,
    cursor_dirty: bool,
}

impl Spool {
    pub fn open(dir: &Path, limits: SpoolLimits) -> Result<(Spool, Recovered), SpoolError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let (mut acked, mut next_seq) = read_cursor(&dir.join(CURSOR)).unwrap_or((0, 1));
        let mut names: Vec<(u64, PathBuf)> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let p = e.path();
                let first = p
                    .file_name()?
                    .to_str()?
                    .strip_suffix(".seg")?
                    .parse()
                    .ok()?;
                Some((first, p))
            })
            .collect();
        names.sort();
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            limits,
            segments: VecDeque::new(),
            entries: VecDeque::new(),
            next_seq,
            acked,
            bytes: 0,
            dropped: 0,
            cursor_written: None,
            cursor_dirty: false,
        };
        let mut rec = Recovered::default();
        for (first, path) in names {
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            let (entries, good) = scan(&file, first).map_err(io_err(&path))?;
            let len = file.metadata().map_err(io_err(&path))?.len();
            if good < len {
                warn!(file = %path.display(), offset = good, cut = len - good, "Spool segment damaged (torn write?); cut at the damage, earlier messages kept");
                file.set_len(good).map_err(io_err(&path))?;
                rec.truncated_bytes += len - good;
            }
            if let Some(last) = entries.last() {
                next_seq = next_seq.max(last.seq + 1);
            }
            if good < len {
                // The cut records may have been sent: their seqs are never reused (at
                // most one record per header's worth of bytes was cut).
                next_seq =
                    next_seq.max(first + entries.len() as u64 + (len - good) / HEADER as u64);
            }
            spool.bytes += good;
            let next = first + entries.len() as u64;
            spool
                .entries
                .extend(entries.into_iter().filter(|e| e.seq > acked));
            spool.segments.push_back(Segment {
                first_seq: first,
                next,
                path,
                file,
                bytes: good,
            });
        }
        // A cursor newer than every segment (all acknowledged, then deleted) or lost.
        if spool.entries.is_empty() {
            acked = acked.max(next_seq - 1);
        }
        spool.next_seq = next_seq;
        spool.acked = acked;
        spool.collect_acked()?;
        spool.flush_cursor()?;
        rec.pending = spool.entries.len() as u64;
        if rec.pending > 0 {
            info!(dir = %dir.display(), pending = rec.pending, "Spool holds unsent messages; they go first");
        }
        Ok((spool, rec))
    }

    /// The seq the next message gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends a message as `next_seq()`; returns its seq. Drops the oldest segment when
    /// the spool is over its budget.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, SpoolError> {
        let rec_len = (HEADER + payload.len()) as u64;
        if rec_len > self.limits.segment_bytes {
            return Err(SpoolError::TooLarge {
                len: payload.len(),
                segment_bytes: self.limits.segment_bytes,
            });
        }
        let seq = self.next_seq;
        // A new segment when the last is full, or when `seq` cannot follow its records
        // (damage was cut from it, and the cut seqs are never reused): a record out of
        // sequence would end the segment at the next start, losing it.
        let roll = self
            .segments
            .back()
            .is_none_or(|s| s.bytes + rec_len > self.limits.segment_bytes || s.next != seq);
        if roll {
            let path = self.dir.join(format!("{seq:020}.seg"));
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .open(&path)
                .map_err(io_err(&path))?;
            self.segments.push_back(Segment {
                first_seq: seq,
                next: seq,
                path,
                file,
                bytes: 0,
            });
        }
        let seg = self
            .segments
            .back_mut()
            .expect("a segment was just ensured");
        let mut rec = Vec::with_capacity(rec_len as usize);
        rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&seq.to_le_bytes());
        crc.update(payload);
        rec.extend_from_slice(&crc.finalize().to_le_bytes());
        rec.extend_from_slice(&seq.to_le_bytes());
        rec.extend_from_slice(payload);
        // One write: a crash leaves the record whole or a torn tail that open() cuts. A
        // failed write (a full disk) is cut back at once, so the segment stays whole and
        // the next append lands where this one should have.
        if let Err(e) = seg.file.write_all(&rec) {
            let err = SpoolError::Io {
                path: seg.path.clone(),
                source: e,
            };
            if let Err(cut) = seg.file.set_len(seg.bytes) {
                warn!(segment = %seg.path.display(), error = %cut, "Cannot cut a failed spool write; the segment is cut at the next start");
            }
            if seg.bytes == 0 && roll {
                let _ = fs::remove_file(&seg.path);
                self.segments.pop_back();
            }
            return Err(err);
        }
        self.entries.push_back(Entry {
            seq,
            segment_first: seg.first_seq,
            offset: seg.bytes + HEADER as u64,
            len: payload.len() as u32,
            acked: false,
        });
        seg.bytes += rec_len;
        seg.next = seq + 1;
        self.bytes += rec_len;
        self.next_seq += 1;
        self.enforce_budget()?;
        Ok(seq)
    }

    fn enforce_budget(&mut self) -> Result<(), SpoolError> {
        while self.bytes > self.limits.max_bytes && self.segments.len() > 1 {
            let Some(old) = self.segments.pop_front() else {
                break;
            };
            let next_first = self.segments.front().map_or(u64::MAX, |s| s.first_seq);
            let mut lost = 0;
            while self.entries.front().is_some_and(|e| e.seq < next_first) {
                if let Some(e) = self.entries.pop_front()
                    && !e.acked
                {
                    lost += 1;
                }
            }
            self.dropped += lost;
            self.bytes -= old.bytes;
            self.acked = self.acked.max(next_first - 1);
            self.cursor_dirty = true;
            warn!(segment = %old.path.display(), lost, dropped_total = self.dropped, "Spool full: oldest messages dropped unsent");
            fs::remove_file(&old.path).map_err(io_err(&old.path))?;
        }
        Ok(())
    }

    /// The first unacknowledged message with seq ≥ `from`: its seq and payload.
    pub fn next_from(&self, from: u64) -> Result<Option<(u64, Bytes)>, SpoolError> {
        let i = self.entries.partition_point(|e| e.seq < from);
        let Some(e) = self.entries.range(i..).find(|e| !e.acked) else {
            return Ok(None);
        };
        let Some(seg) = self
            .segments
            .iter()
            .find(|s| s.first_seq == e.segment_first)
        else {
            return Ok(None);
        };
        let mut buf = vec![0; e.len as usize];
        seg.file
            .read_exact_at(&mut buf, e.offset)
            .map_err(io_err(&seg.path))?;
        Ok(Some((e.seq, Bytes::from(buf))))
    }

    /// The broker acknowledged `seq`.
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        let i = self.entries.partition_point(|e| e.seq < seq);
        if let Some(e) = self.entries.get_mut(i)
            && e.seq == seq
        {
            e.acked = true;
        }
        while self.entries.front().is_some_and(|e| e.acked) {
            if let Some(e) = self.entries.pop_front() {
                self.acked = e.seq;
                self.cursor_dirty = true;
            }
        }
        if self.entries.is_empty() {
            self.acked = self.next_seq - 1;
        }
        self.collect_acked()?;
        if self
            .cursor_written
            .is_none_or(|t| t.elapsed() >= CURSOR_EVERY)
        {
            self.flush_cursor()?;
        }
        Ok(())
    }

    /// Deletes segments whose every message is acknowledged (the newest one is kept open
    /// for appends).
    fn collect_acked(&mut self) -> Result<(), SpoolError> {
        while self.segments.len() > 1 {
            let next_first = self.segments[1].first_seq;
            if next_first - 1 > self.acked {
                break;
            }
            let Some(old) = self.segments.pop_front() else {
                break;
            };
            self.bytes -= old.bytes;
            fs::remove_file(&old.path).map_err(io_err(&old.path))?;
        }
        Ok(())
    }

    /// Writes the acknowledgement cursor now if it changed.
    pub fn flush_cursor(&mut self) -> Result<(), SpoolError> {
        if !self.cursor_dirty && self.cursor_written.is_some() {
            return Ok(());
        }
        let path = self.dir.join(CURSOR);
        let tmp = self.dir.join("cursor.tmp");
        let mut buf = Vec::with_capacity(20);
        buf.extend_from_slice(&self.acked.to_le_bytes());
        buf.extend_from_slice(&self.next_seq.to_le_bytes());
        buf.extend_from_slice(&crc32fast::hash(&buf).to_le_bytes());
        fs::write(&tmp, &buf).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        self.cursor_written = Some(Instant::now());
        self.cursor_dirty = false;
        Ok(())
    }

    /// Flushes segment data and the cursor to stable storage (power loss; a crash of the
    /// agent alone loses nothing written).
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if let Some(s) = self.segments.back() {
            s.file.sync_data().map_err(io_err(&s.path))?;
        }
        self.flush_cursor()
    }

    /// Messages not yet acknowledged.
    pub fn pending(&self) -> u64 {
        self.entries.iter().filter(|e| !e.acked).count() as u64
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn read_cursor(path: &Path) -> Option<(u64, u64)> {
    let b = fs::read(path).ok()?;
    if b.len() != 20 || crc32fast::hash(&b[..16]).to_le_bytes() != b[16..20] {
        warn!(file = %path.display(), "Spool cursor unreadable; messages may be sent again (subscribers drop them by seq)");
        return None;
    }
    let acked = u64::from_le_bytes(b[0..8].try_into().ok()?);
    let next = u64::from_le_bytes(b[8..16].try_into().ok()?);
    Some((acked, next.max(1)))
}

/// Reads a segment's records; returns them and the length of the good prefix.
fn scan(file: &File, first: u64) -> io::Result<(Vec<Entry>, u64)> {
    let mut data = Vec::new();
    (&*file).read_to_end(&mut data)?;
    let mut entries = Vec::new();
    let mut off = 0usize;
    let mut expected_seq = first;
    while data.len() - off >= HEADER {
        let len = u32::from_le_bytes(data[off..off + 4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(data[off + 4..off + 8].try_into().unwrap_or_default());
        let seq = u64::from_le_bytes(data[off + 8..off + 16].try_into().unwrap_or_default());
        let end = off + HEADER + len;
        if end > data.len() || seq != expected_seq {
            break;
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&data[off + 8..end]);
        if h.finalize() != crc {
            break;
        }
        entries.push(Entry {
            seq,
            segment_first: first,
            offset: (off + HEADER) as u64,
            len: len as u32,
            acked: false,
        });
        expected_seq += 1;
        off = end;
    }
    Ok((entries, off as u64))
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(e) = self.flush_cursor() {
            warn!(error = %e, "Spool cursor not saved; messages may be sent again");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_message_appended_after_a_cut_survives_a_restart() {
        // Found by the spool_segment fuzz target: a segment whose only bytes were damage
        // is cut to nothing, its seq is not reused, and the next message went into it
        // out of sequence — the next start cut it too and gave its seq again.
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("00000000000000000001.seg"), [0x42u8; 16]).unwrap();
        let (mut s, rec) = Spool::open(d.path(), LIMITS).unwrap();
        assert_eq!(rec.truncated_bytes, 16);
        let seq = s.append(b"after").unwrap();
        drop(s);
        let (again, _) = Spool::open(d.path(), LIMITS).unwrap();
        assert!(again.next_seq() > seq, "seq {seq} given again");
        let (got, payload) = again.next_from(0).unwrap().expect("the message is kept");
        assert_eq!((got, &payload[..]), (seq, &b"after"[..]));
    }

    use proptest::prelude::*;

    use super::*;

    const LIMITS: SpoolLimits = SpoolLimits {
        max_bytes: 1 << 20,
        segment_bytes: 4096,
    };

    fn drain(s: &Spool) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut from = 0;
        while let Some((seq, b)) = s.next_from(from).unwrap() {
            out.push((seq, b.to_vec()));
            from = seq + 1;
        }
        out
    }

    #[test]
    fn messages_survive_reopen_until_acknowledged() {
        let d = tempfile::tempdir().unwrap();
        {
            let (mut s, rec) = Spool::open(d.path(), LIMITS).unwrap();
            assert_eq!(rec, Recovered::default());
            for i in 0..100u32 {
                assert_eq!(s.append(&i.to_le_bytes().repeat(20)).unwrap(), i as u64 + 1);
            }
            for seq in 1..=40 {
                s.ack(seq).unwrap();
            }
            // No explicit flush: Drop writes the cursor, as a clean exit does.
        }
        let (mut s, rec) = Spool::open(d.path(), LIMITS).unwrap();
        assert_eq!(rec.pending, 60);
        let got = drain(&s);
        assert_eq!(got.len(), 60);
        assert_eq!(got[0].0, 41);
        assert_eq!(got[0].1, 40u32.to_le_bytes().repeat(20));
        assert_eq!(
            s.append(b"x").unwrap(),
            101,
            "seq continues across restarts"
        );
        for seq in 41..=101 {
            s.ack(seq).unwrap();
        }
        assert_eq!(s.pending(), 0);
        // Fully acknowledged segments are gone; only the open one remains.
        let segs = fs::read_dir(d.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "seg")
            })
            .count();
        assert_eq!(segs, 1);
    }

    #[test]
    fn a_lost_cursor_means_resending_never_losing() {
        let d = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = Spool::open(d.path(), LIMITS).unwrap();
            for _ in 0..10 {
                s.append(b"payload").unwrap();
            }
            s.ack(1).unwrap();
            std::mem::forget(s); // as kill -9: no Drop
        }
        let (s, rec) = Spool::open(d.path(), LIMITS).unwrap();
        assert!(rec.pending >= 9, "{rec:?}");
        assert_eq!(drain(&s).last().unwrap().0, 10);
    }

    #[test]
    fn a_torn_tail_is_cut_and_earlier_messages_kept() {
        let d = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = Spool::open(d.path(), LIMITS).unwrap();
            for i in 0..5u8 {
                s.append(&[i; 100]).unwrap();
            }
            std::mem::forget(s);
        }
        let seg = d.path().join(format!("{:020}.seg", 1));
        let len = fs::metadata(&seg).unwrap().len();
        // Half of the last record, then a flipped byte in the fourth.
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 50)
            .unwrap();
        let (s, rec) = Spool::open(d.path(), LIMITS).unwrap();
        assert_eq!(rec.pending, 4);
        assert_eq!(rec.truncated_bytes, 66);
        assert_eq!(drain(&s).len(), 4);
        drop(s);
        let mut b = fs::read(&seg).unwrap();
        b[3 * 116 + HEADER + 7] ^= 0xff;
        fs::write(&seg, b).unwrap();
        let (mut s, rec) = Spool::open(d.path(), LIMITS).unwrap();
        assert_eq!(rec.pending, 3);
        // The seqs of cut messages are never reused.
        assert!(s.append(b"next").unwrap() >= 6);
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_counts_them() {
        let d = tempfile::tempdir().unwrap();
        let limits = SpoolLimits {
            max_bytes: 4 * 1024,
            segment_bytes: 1024,
        };
        let (mut s, _) = Spool::open(d.path(), limits).unwrap();
        for _ in 0..100 {
            s.append(&[7; 84]).unwrap(); // 100-byte records, 10 a segment
        }
        assert!(s.bytes() <= 4 * 1024, "{}", s.bytes());
        assert_eq!(s.dropped() + s.pending(), 100);
        assert!(s.dropped() >= 60, "{}", s.dropped());
        let got = drain(&s);
        assert_eq!(got.last().unwrap().0, 100, "the newest are kept");
        assert!(got.windows(2).all(|w| w[1].0 == w[0].0 + 1));
        assert!(matches!(
            s.append(&[0; 2000]),
            Err(SpoolError::TooLarge { .. })
        ));
    }

    proptest! {
        /// Whatever is appended and acknowledged in whatever order, reopening yields
        /// exactly the unacknowledged messages, in order, byte for byte.
        #[test]
        fn reopen_yields_exactly_the_unacknowledged(
            msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..60),
            acks in proptest::collection::vec(any::<prop::sample::Index>(), 0..60),
        ) {
            let d = tempfile::tempdir().unwrap();
            let mut acked = std::collections::BTreeSet::new();
            {
                let (mut s, _) = Spool::open(d.path(), LIMITS).unwrap();
                for m in &msgs {
                    s.append(m).unwrap();
                }
                for a in &acks {
                    let seq = a.index(msgs.len()) as u64 + 1;
                    s.ack(seq).unwrap();
                    acked.insert(seq);
                }
                s.flush_cursor().unwrap();
            }
            let (s, _) = Spool::open(d.path(), LIMITS).unwrap();
            let got = drain(&s);
            // Out-of-order acks beyond the cursor are not persisted: those come again.
            let cursor = (1..).take_while(|q| acked.contains(q)).last().unwrap_or(0);
            let expect: Vec<(u64, Vec<u8>)> = msgs
                .iter()
                .enumerate()
                .map(|(i, m)| (i as u64 + 1, m.clone()))
                .filter(|(q, _)| *q > cursor)
                .collect();
            prop_assert_eq!(got, expect);
        }
    }
}
