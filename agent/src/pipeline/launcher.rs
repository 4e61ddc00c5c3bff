//! The agent's end of `umbra exec`: a Unix socket (root only) whose requests reach the
//! agent loop, which reserves a group and answers (`allocate::launch` is the other end).

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tracing::{debug, warn};

use crate::allocate::launch::{LaunchReply, LaunchRequest, VERSION};

/// A request waiting for the agent loop's answer.
pub struct Pending {
    pub request: LaunchRequest,
    pub reply: oneshot::Sender<LaunchReply>,
}

pub struct Launcher {
    rx: mpsc::Receiver<Pending>,
    task: JoinHandle<()>,
    path: PathBuf,
}

impl Launcher {
    /// Listens at `path`: a socket left by an agent that is gone is replaced; one another
    /// agent still answers at is an error.
    pub fn bind(path: &Path) -> std::io::Result<Launcher> {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another agent answers at {}", path.display()),
            ));
        }
        let _ = std::fs::remove_file(path);
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(accept(listener, tx));
        Ok(Launcher {
            rx,
            task,
            path: path.to_path_buf(),
        })
    }

    pub async fn next(&mut self) -> Option<Pending> {
        self.rx.recv().await
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn accept(listener: UnixListener, tx: mpsc::Sender<Pending>) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                tokio::spawn(serve(s, tx.clone()));
            }
            Err(e) => {
                warn!(error = %e, "umbra exec socket");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One connection: a request line in (bounded, with a timeout), the answer out.
async fn serve(s: UnixStream, tx: mpsc::Sender<Pending>) {
    let (r, mut w) = s.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r.take(1 << 16));
    let read = reader.read_line(&mut line);
    let reply = match tokio::time::timeout(Duration::from_secs(5), read).await {
        Ok(Ok(_)) => match serde_json::from_str::<LaunchRequest>(&line) {
            Ok(req) if req.version > VERSION => LaunchReply::refused(format!(
                "request version {} is newer than this agent's {VERSION}: upgrade the agent",
                req.version
            )),
            Ok(request) => {
                let (reply, answer) = oneshot::channel();
                if tx.send(Pending { request, reply }).await.is_err() {
                    LaunchReply::refused("the agent is stopping".into())
                } else {
                    answer
                        .await
                        .unwrap_or_else(|_| LaunchReply::refused("the agent is stopping".into()))
                }
            }
            Err(e) => LaunchReply::refused(format!("not a request: {e}")),
        },
        Ok(Err(e)) => LaunchReply::refused(format!("reading the request: {e}")),
        Err(_) => LaunchReply::refused("no request within 5 s".into()),
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
    out.push(b'\n');
    if let Err(e) = w.write_all(&out).await {
        debug!(error = %e, "umbra exec went away before the answer");
    }
}
