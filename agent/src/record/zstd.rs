//! Recordings compressed with zstd (`zstd FILE`, as the training data ships) are read as
//! they are: every frame of the stream in turn, skippable frames skipped, each frame's
//! checksum checked.

use std::io::{self, BufRead, Read};

use ruzstd::decoding::{
    BlockDecodingStrategy, FrameDecoder,
    errors::{FrameDecoderError, ReadFrameHeaderError},
};

/// The first bytes of a zstd frame.
pub const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The decompressed bytes of a zstd stream. A stream that ends inside a frame reads as
/// [`io::ErrorKind::UnexpectedEof`] (a cut file); damage as [`io::ErrorKind::InvalidData`].
pub struct Zstd<R> {
    source: R,
    frame: FrameDecoder,
    /// The frame's checksum was compared (or it has none).
    checked: bool,
}

impl<R: BufRead> Zstd<R> {
    /// A stream whose first frame starts at `source`'s next byte.
    pub fn new(mut source: R) -> io::Result<Zstd<R>> {
        let mut frame = FrameDecoder::new();
        if let Err(e) = frame.init(&mut source) {
            return Err(damage(&mut source, &e));
        }
        Ok(Zstd {
            source,
            frame,
            checked: false,
        })
    }

    /// The next frame, after skippable ones; `false` at the end of the stream.
    fn next_frame(&mut self) -> io::Result<bool> {
        loop {
            if self.source.fill_buf()?.is_empty() {
                return Ok(false);
            }
            match self.frame.init(&mut self.source) {
                Ok(()) => {
                    self.checked = false;
                    return Ok(true);
                }
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    let want = u64::from(length);
                    let skipped = io::copy(&mut (&mut self.source).take(want), &mut io::sink())?;
                    if skipped < want {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the zstd stream ends inside a skippable frame",
                        ));
                    }
                }
                Err(e) => return Err(damage(&mut self.source, &e)),
            }
        }
    }

    /// The finished frame's checksum against its content's (once all of it was read).
    fn check(&mut self) -> io::Result<()> {
        if self.checked {
            return Ok(());
        }
        self.checked = true;
        match (
            self.frame.get_checksum_from_data(),
            self.frame.get_calculated_checksum(),
        ) {
            (Some(want), Some(got)) if want != got => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "zstd frame checksum mismatch (frame says {want:08x}, data gives {got:08x})"
                ),
            )),
            _ => Ok(()),
        }
    }
}

impl<R: BufRead> Read for Zstd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.frame.can_collect() > 0 {
                return self.frame.read(buf);
            }
            if self.frame.is_finished() {
                self.check()?;
                if !self.next_frame()? {
                    return Ok(0);
                }
                continue;
            }
            let before = (
                self.frame.bytes_read_from_source(),
                self.frame.blocks_decoded(),
            );
            if let Err(e) = self
                .frame
                .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBlocks(1))
            {
                return Err(damage(&mut self.source, &e));
            }
            let after = (
                self.frame.bytes_read_from_source(),
                self.frame.blocks_decoded(),
            );
            if after == before && self.frame.can_collect() == 0 && !self.frame.is_finished() {
                // A block that moved nothing: an error, not an endless loop.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "zstd: a block decoded to nothing",
                ));
            }
        }
    }
}

/// A decoding error as read: the stream cut short when nothing is left of it, else damage.
fn damage(source: &mut impl BufRead, e: &FrameDecoderError) -> io::Error {
    if source.fill_buf().is_ok_and(<[u8]>::is_empty) {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the zstd stream ends inside a frame ({e})"),
        )
    } else {
        io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}"))
    }
}
