//! One agent per state directory: two `umbra run`s sharing one would interleave their
//! spool writes (each cuts the other's records as torn), race on the profile store, and
//! the second would "restore" the first's live allocations from its journal. The first
//! holds an exclusive lock on `<state_dir>/agent.lock` (`flock`, released by the kernel
//! when the process ends, however it ends) with its pid in it; a second is refused with
//! both named.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
};

/// The lock file's name in the state directory.
pub const LOCK_FILE: &str = "agent.lock";

/// Why the state directory could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another umbra agent{} uses the state directory {dir}: stop it, or give this one \
         another publish.state_dir",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Held { dir: PathBuf, pid: Option<u32> },
    #[error("cannot lock the state directory {dir} ({file}): {source}")]
    Io {
        dir: PathBuf,
        file: PathBuf,
        source: std::io::Error,
    },
}

/// The state directory, held until dropped.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateLock {
    /// Takes `dir` (made if missing) for this process, or says who holds it.
    pub fn acquire(dir: &Path) -> Result<StateLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            dir: dir.to_path_buf(),
            file: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        // Who holds it, for the next one's message (best effort: the lock is what counts).
        let _ = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()));
        Ok(StateLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_agent_is_refused_with_the_first_ones_pid_until_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = StateLock::acquire(&state).expect("the first takes it (and makes the dir)");
        // flock locks belong to the open file: a second open in this process conflicts
        // as another process's would.
        match StateLock::acquire(&state) {
            Err(LockError::Held { dir, pid }) => {
                assert_eq!(dir, state);
                assert_eq!(pid, Some(std::process::id()));
                let msg = LockError::Held { dir, pid }.to_string();
                assert!(msg.contains("state directory") && msg.contains("publish.state_dir"));
            }
            other => panic!("not refused: {other:?}"),
        }
        drop(first);
        StateLock::acquire(&state).expect("free again once the first is gone");
    }

    #[test]
    fn an_unwritable_state_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        // A path below a regular file cannot be made.
        let err = StateLock::acquire(&file.join("state")).unwrap_err();
        assert!(matches!(err, LockError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("a-file"), "{err}");
    }
}
