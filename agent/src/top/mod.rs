//! `umbra top`: a live terminal view of workloads — CPU, memory, I/O, network, run-queue
//! wait, forecast band, tier, anomalies and last decision — sortable and filterable by
//! keys, on the live kernel or over a recording (`--replay FILE`).
//!
//! The agent runs as usual (publishing nothing, keeping no state) with its windows and
//! conclusions sent to a terminal thread that owns [`App`] and the screen, so a slow
//! terminal never holds up capture.

mod app;

use std::{
    io::{self, IsTerminal},
    sync::mpsc,
    time::Duration,
};

pub use app::{App, Control, Sort, Workload};
use ratatui::crossterm::event::{self, Event, KeyEventKind};
use tokio_util::sync::CancellationToken;

use crate::{
    aggregate::Window,
    config::Config,
    insight::Insights,
    pipeline::{self, Output, PipelineError},
    view::{Drops, Frame},
};

#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error("umbra top needs a terminal on stdin and stdout (for a log, use `umbra run`)")]
    NoTerminal,
    #[error("the terminal: {0}")]
    Terminal(#[source] io::Error),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// What the agent sends the terminal thread.
enum Msg {
    Window(Box<Window>, Drops),
    Insights(Box<Insights>),
    Ended(Option<String>),
}

struct Feeder(mpsc::Sender<Msg>);

impl Output for Feeder {
    fn window(&mut self, f: &Frame<'_>) -> io::Result<()> {
        // The terminal gone (the user quit): nothing to show any more.
        let _ = self
            .0
            .send(Msg::Window(Box::new(f.window.clone()), f.drops));
        Ok(())
    }

    fn insights(&mut self, i: &Insights) -> io::Result<()> {
        if !i.is_empty() {
            let _ = self.0.send(Msg::Insights(Box::new(i.clone())));
        }
        Ok(())
    }
}

/// Runs `umbra top` until the user quits (`q`). A recording stays on screen at its end.
pub async fn run(
    cfg: &Config,
    from: pipeline::From<'_>,
    label: String,
    shutdown: CancellationToken,
) -> Result<(), TopError> {
    if !io::stdout().is_terminal() || !io::stdin().is_terminal() {
        return Err(TopError::NoTerminal);
    }
    let (tx, rx) = mpsc::channel();
    let stop = shutdown.clone();
    let ui = tokio::task::spawn_blocking(move || ui(rx, label, stop));
    let feeder = Feeder(tx.clone());
    let ran = pipeline::look(cfg, from, |_| Ok(feeder), None, shutdown.clone()).await;
    let _ = tx.send(Msg::Ended(ran.as_ref().err().map(|e| e.to_string())));
    let shown = ui
        .await
        .map_err(|e| TopError::Terminal(io::Error::other(e.to_string())))?;
    shown.map_err(TopError::Terminal)?;
    match ran {
        // Stopped by the user: not an error.
        Err(_) if shutdown.is_cancelled() => Ok(()),
        r => Ok(r?),
    }
}

/// The terminal thread: draws, reads keys, takes what the agent sends.
fn ui(rx: mpsc::Receiver<Msg>, label: String, stop: CancellationToken) -> io::Result<()> {
    let mut terminal = ratatui::try_init()?;
    let mut app = App::new(&label);
    let r = (|| -> io::Result<()> {
        loop {
            while let Ok(m) = rx.try_recv() {
                match m {
                    Msg::Window(w, d) => app.window(&w, d),
                    Msg::Insights(i) => app.insights(&i),
                    Msg::Ended(e) => app.ended(e),
                }
            }
            terminal.draw(|f| app.render(f))?;
            if stop.is_cancelled() {
                return Ok(());
            }
            if event::poll(Duration::from_millis(100))?
                && let Event::Key(k) = event::read()?
                && k.kind == KeyEventKind::Press
                && app.key(k) == Control::Quit
            {
                return Ok(());
            }
        }
    })();
    ratatui::restore();
    stop.cancel();
    r
}

#[cfg(test)]
mod tests;
