//! Trace snapshots: the next N seconds of capture recorded to a file on the device, on a
//! command from the fleet (`trace-snapshot`). Bounded: at most `max_files` snapshots and
//! `max_bytes` in all are kept under the snapshot directory (the oldest are deleted first),
//! and a snapshot that reaches the byte limit ends early, saying so.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tracing::info;

use super::{Header, Writer};
use crate::capture::CaptureItem;

/// How a snapshot ended, for the command's reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    pub id: Option<String>,
    pub ok: bool,
    pub message: String,
}

struct Active {
    writer: Writer,
    path: PathBuf,
    until: Instant,
    id: Option<String>,
    ticks: u64,
    events: u64,
}

pub struct Snapshots {
    dir: PathBuf,
    max_files: usize,
    max_bytes: u64,
    header: Header,
    active: Option<Active>,
}

impl Snapshots {
    pub fn new(dir: &Path, max_files: usize, max_bytes: u64, header: Header) -> Snapshots {
        Snapshots {
            dir: dir.to_path_buf(),
            max_files: max_files.max(1),
            max_bytes,
            header,
            active: None,
        }
    }

    pub fn recording(&self) -> bool {
        self.active.is_some()
    }

    /// Starts recording the next `seconds`; first makes room for it.
    pub fn start(&mut self, seconds: u32, id: Option<String>) -> Result<String, String> {
        if self.active.is_some() {
            return Err("a trace snapshot is already being recorded".into());
        }
        fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        self.prune(self.max_files - 1, self.max_bytes);
        let now = crate::capture::procfs::wall_ms();
        let path = self.dir.join(format!("{now}.umbra"));
        let header = Header {
            start_ms: now,
            ..self.header.clone()
        };
        let writer = Writer::create(&path, &header).map_err(|e| e.to_string())?;
        info!(file = %path.display(), seconds, "Trace snapshot started");
        let text = format!("recording {seconds} s of capture to {}", path.display());
        self.active = Some(Active {
            writer,
            path,
            until: Instant::now() + Duration::from_secs(seconds as u64),
            id,
            ticks: 0,
            events: 0,
        });
        Ok(text)
    }

    /// Every capture item passes here: a running snapshot records it. Returns how the
    /// snapshot ended, when this item ended it.
    pub fn tap(&mut self, item: &CaptureItem) -> Option<Ended> {
        let s = self.active.as_mut()?;
        let written = s.writer.write(item);
        match item {
            CaptureItem::Tick(_) => s.ticks += 1,
            CaptureItem::Event(_) => s.events += 1,
        }
        if let Err(e) = written {
            return self.end(Some(e.to_string()));
        }
        let full = matches!(item, CaptureItem::Tick(_))
            && fs::metadata(&s.path).is_ok_and(|m| m.len() >= self.max_bytes);
        if full {
            return self.end(Some(format!(
                "reached publish.snapshots_max_bytes ({} bytes) and stopped early",
                self.max_bytes
            )));
        }
        if Instant::now() >= s.until {
            return self.end(None);
        }
        None
    }

    /// Ends the running snapshot, if any (`error`: why it ended early).
    pub fn end(&mut self, error: Option<String>) -> Option<Ended> {
        let mut s = self.active.take()?;
        let flushed = s.writer.flush().err().map(|e| e.to_string());
        let size = fs::metadata(&s.path).map(|m| m.len()).unwrap_or(0);
        let summary = format!(
            "snapshot {}: {} intervals, {} events, {size} bytes",
            s.path.display(),
            s.ticks,
            s.events
        );
        let (ok, message) = match error.or(flushed) {
            Some(e) => (false, format!("{summary}; {e}")),
            None => (true, summary),
        };
        info!(ok, message, "Trace snapshot ended");
        self.prune(self.max_files, self.max_bytes);
        Some(Ended {
            id: s.id,
            ok,
            message,
        })
    }

    /// Deletes the oldest snapshots until at most `files` remain within `bytes`.
    fn prune(&self, files: usize, bytes: u64) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let active = self.active.as_ref().map(|a| a.path.clone());
        let mut snaps: Vec<(String, PathBuf, u64)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let p = e.path();
                let name = p.file_name()?.to_str()?.to_string();
                let ok = name.ends_with(".umbra") && Some(&p) != active.as_ref();
                ok.then(|| (name, p.clone(), e.metadata().map(|m| m.len()).unwrap_or(0)))
            })
            .collect();
        snaps.sort();
        let mut total: u64 = snaps.iter().map(|s| s.2).sum();
        let mut n = snaps.len();
        for (_, p, len) in snaps {
            if n <= files && total <= bytes {
                break;
            }
            if fs::remove_file(&p).is_ok() {
                info!(file = %p.display(), "Old trace snapshot deleted");
            }
            n -= 1;
            total -= len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{DropCounts, NodeStats, Tick};

    fn header() -> Header {
        Header {
            kernel: "k".into(),
            node: "n".into(),
            interval_ms: 1000,
            start_ms: 0,
            agent_version: "t".into(),
        }
    }

    fn tick() -> CaptureItem {
        CaptureItem::Tick(Box::new(Tick {
            timestamp_ns: 1,
            wall_ms: 1,
            samples: vec![],
            drops: DropCounts::default(),
            node: NodeStats::default(),
            pressure: vec![],
        }))
    }

    #[test]
    fn snapshots_are_kept_by_count_and_bytes() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..5 {
            fs::write(d.path().join(format!("{i:03}.umbra")), vec![0u8; 1000]).unwrap();
        }
        fs::write(d.path().join("notes.txt"), b"not a snapshot").unwrap();
        let mut s = Snapshots::new(d.path(), 3, 1 << 30, header());
        s.start(60, Some("x".into())).unwrap();
        assert!(s.start(60, None).is_err());
        let ended = s.end(None).unwrap();
        assert!(ended.ok && ended.id.as_deref() == Some("x"), "{ended:?}");
        let left: Vec<String> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".umbra"))
            .collect();
        assert_eq!(left.len(), 3, "{left:?}");
        assert!(!left.contains(&"000.umbra".to_string()));
        assert!(d.path().join("notes.txt").exists());
    }

    #[test]
    fn a_snapshot_stops_at_the_byte_limit() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Snapshots::new(d.path(), 3, 1, header());
        s.start(60, None).unwrap();
        let ended = s.tap(&tick()).expect("ended at once");
        assert!(
            !ended.ok && ended.message.contains("snapshots_max_bytes"),
            "{ended:?}"
        );
        assert!(!s.recording());
    }
}
