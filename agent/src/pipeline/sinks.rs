//! The other sinks of the loop: `umbra record` and `umbra trace`.

use std::{
    io::Write,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use super::{FeedStats, PipelineError, Sink};
use crate::{capture::CaptureItem, record::Writer, trace::Tracer};

/// `umbra record`: the capture stream to a file.
pub struct Recorder {
    pub writer: Writer,
    pub stats: Arc<RecordStatsCell>,
}

#[derive(Debug, Default)]
pub struct RecordStatsCell {
    pub ticks: AtomicU64,
    pub events: AtomicU64,
}

impl Sink for Recorder {
    type Wake = ();

    fn item(&mut self, item: CaptureItem) -> Result<(), PipelineError> {
        match &item {
            CaptureItem::Tick(_) => self.stats.ticks.fetch_add(1, Ordering::Relaxed),
            CaptureItem::Event(_) => self.stats.events.fetch_add(1, Ordering::Relaxed),
        };
        Ok(self.writer.write(&item)?)
    }

    async fn finish(mut self) -> Result<(), PipelineError> {
        Ok(self.writer.flush()?)
    }
}

/// `umbra trace`: the filtered stream.
pub struct Tracing<W: Write> {
    pub tracer: Tracer<W>,
    pub feed: Arc<FeedStats>,
    pub reported: u64,
}

impl<W: Write + Send> Sink for Tracing<W> {
    type Wake = ();

    fn item(&mut self, item: CaptureItem) -> Result<(), PipelineError> {
        self.tracer.item(&item)?;
        self.report();
        Ok(())
    }

    async fn finish(mut self) -> Result<(), PipelineError> {
        self.report();
        Ok(())
    }
}

impl<W: Write> Tracing<W> {
    /// Channel drops on stderr, when they grow.
    fn report(&mut self) {
        let d = self.feed.dropped();
        if d > self.reported {
            self.reported = d;
            eprintln!(
                "umbra: {d} capture items dropped on the way (the terminal or the agent is too slow)"
            );
        }
    }
}
