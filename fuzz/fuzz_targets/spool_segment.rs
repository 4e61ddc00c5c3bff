#![no_main]
//! Any bytes as a spool left on disk (a segment and a cursor): opening keeps what is whole,
//! cuts the rest, and the spool still sends, acknowledges and appends. Never a panic.

use libfuzzer_sys::fuzz_target;
use umbra::publish::spool::{Spool, SpoolLimits};

const LIMITS: SpoolLimits = SpoolLimits {
    max_bytes: 1 << 20,
    segment_bytes: 1 << 16,
};

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()) else {
        return;
    };
    let (cursor, segment) = data.split_at(data.len().min(20));
    let _ = std::fs::write(dir.path().join("cursor"), cursor);
    let _ = std::fs::write(dir.path().join("00000000000000000001.seg"), segment);
    let Ok((mut spool, _)) = Spool::open(dir.path(), LIMITS) else {
        return;
    };
    let mut from = 0;
    let mut n = 0;
    while let Ok(Some((seq, _))) = spool.next_from(from) {
        assert!(seq >= from, "seqs go forward");
        let _ = spool.ack(seq);
        from = seq + 1;
        n += 1;
        assert!(n <= 1 << 16, "more messages than the segment can hold");
    }
    let seq = spool.append(b"after").expect("a spool that opened takes a message");
    assert!(seq >= from);
    drop(spool);
    let (again, _) = Spool::open(dir.path(), LIMITS).expect("reopen");
    assert!(again.next_seq() > seq, "seqs are never reused");
});
