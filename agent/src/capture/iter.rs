//! One walk of the task iterator, decoded: full [`TaskRecord`]s, and the marks of threads
//! that have not run since their last full record ([`REC_SAME`]), which become the record
//! held from then. What comes out is what a walk writing every thread in full would give,
//! but for the memory map's RSS, which only the records written in full carry; a held
//! record keeps [`REC_SAME`], so a process all of whose records are held did not change.

use agent_common::{REC_MM, REC_SAME, REC_SIGNAL, TASK_MARK_BYTES, TaskRecord};

use crate::FastMap;

/// The last full records of the threads alive at the last walk.
#[derive(Default)]
pub(super) struct HeldRecords {
    /// The threads' records in the last walk's order, which is by tid: a walk's marks
    /// come in the same order, so finding each is a step forward (a search otherwise).
    threads: Vec<TaskRecord>,
    /// This walk's, becoming `threads` at its end.
    next: Vec<TaskRecord>,
    /// By leader tid: the process's exited threads, for processes that had any.
    signals: FastMap<u32, TaskRecord>,
}

impl HeldRecords {
    /// Threads held: about the records of the next walk.
    pub(super) fn len(&self) -> usize {
        self.threads.len() + self.signals.len()
    }

    /// Appends one walk's records to `out`, marks replaced by the records held for them;
    /// returns how many marks had none (a full record this side never read: the kernel
    /// must then write every thread in full again). A partial record at the end, which the
    /// kernel never writes, is ignored.
    pub(super) fn decode(&mut self, buf: &[u8], out: &mut Vec<TaskRecord>) -> usize {
        const FULL: usize = size_of::<TaskRecord>();
        let word = |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        self.next.clear();
        let mut lost = 0;
        let mut at = 0;
        let mut cursor = 0;
        while at + TASK_MARK_BYTES <= buf.len() {
            let (tid, tgid, flags) = (word(at), word(at + 4), word(at + 8));
            if flags & REC_SAME != 0 {
                at += TASK_MARK_BYTES;
                let found = match self.threads.get(cursor) {
                    Some(r) if r.tid == tid => Some(cursor),
                    _ => self.threads.binary_search_by_key(&tid, |r| r.tid).ok(),
                };
                match found.map(|i| (i, self.threads[i])) {
                    Some((i, r)) if r.tgid == tgid => {
                        cursor = i + 1;
                        self.next.push(r);
                        // Its counters are current; its memory map's RSS is not (another
                        // thread's allocations, reclaim): that comes from a thread written
                        // in full, else stays as reported last.
                        // Marked held ([`REC_SAME`]): nothing of it moved since.
                        out.push(TaskRecord {
                            flags: (r.flags & !REC_MM) | REC_SAME,
                            ..r
                        });
                        if tid == tgid
                            && let Some(s) = self.signals.get(&tid)
                        {
                            out.push(TaskRecord {
                                flags: s.flags | REC_SAME,
                                ..*s
                            });
                        }
                    }
                    _ => lost += 1,
                }
                continue;
            }
            if at + FULL > buf.len() {
                break;
            }
            // SAFETY: `FULL` bytes the kernel wrote as a TaskRecord (checked above);
            // read_unaligned copes with any alignment.
            let r = unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast::<TaskRecord>()) };
            at += FULL;
            if r.flags & REC_SIGNAL != 0 {
                // Written right after its leader's full record.
                self.signals.insert(r.tid, r);
            } else {
                if r.tid == r.tgid {
                    // Its exited threads follow, if it had any.
                    self.signals.remove(&r.tid);
                }
                self.next.push(r);
            }
            out.push(r);
        }
        if !self.next.is_sorted_by_key(|r| r.tid) {
            // Not in tid order (never seen): searched for, then.
            self.next.sort_by_key(|r| r.tid);
        }
        std::mem::swap(&mut self.threads, &mut self.next);
        let threads = &self.threads;
        self.signals.retain(|tid, _| {
            threads
                .binary_search_by_key(tid, |r| r.tid)
                .is_ok_and(|i| threads[i].tgid == *tid)
        });
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(tid: u32, tgid: u32, runtime: u64) -> TaskRecord {
        TaskRecord {
            tid,
            tgid,
            runtime_ns: runtime,
            ..TaskRecord::default()
        }
    }

    fn signal(tid: u32, runtime: u64) -> TaskRecord {
        TaskRecord {
            flags: REC_SIGNAL,
            ..rec(tid, tid, runtime)
        }
    }

    fn full(r: &TaskRecord) -> Vec<u8> {
        // SAFETY: a plain `repr(C)` record without padding, viewed as its bytes.
        unsafe {
            std::slice::from_raw_parts(
                (r as *const TaskRecord).cast::<u8>(),
                size_of::<TaskRecord>(),
            )
        }
        .to_vec()
    }

    fn mark(tid: u32, tgid: u32) -> Vec<u8> {
        [tid, tgid, REC_SAME, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect()
    }

    /// `r` as a mark decodes: held.
    fn same(r: TaskRecord) -> TaskRecord {
        TaskRecord {
            flags: r.flags | REC_SAME,
            ..r
        }
    }

    fn walk(held: &mut HeldRecords, parts: &[Vec<u8>]) -> (Vec<TaskRecord>, usize) {
        let mut out = Vec::new();
        let lost = held.decode(&parts.concat(), &mut out);
        (out, lost)
    }

    #[test]
    fn a_mark_is_the_threads_last_full_record_with_its_processs_exited_threads() {
        let mut held = HeldRecords::default();
        let (leader, worker, exited) = (rec(10, 10, 500), rec(11, 10, 700), signal(10, 900));
        let first = walk(&mut held, &[full(&leader), full(&exited), full(&worker)]);
        assert_eq!(first, (vec![leader, exited, worker], 0));
        let second = walk(&mut held, &[mark(10, 10), mark(11, 10)]);
        assert_eq!(second, (vec![same(leader), same(exited), same(worker)], 0));
        // The worker ran: its new record, the leader still as before.
        let busy = rec(11, 10, 800);
        let third = walk(&mut held, &[mark(10, 10), full(&busy)]);
        assert_eq!(third, (vec![same(leader), same(exited), busy], 0));
    }

    #[test]
    fn a_held_record_offers_no_rss() {
        let mut held = HeldRecords::default();
        let leader = TaskRecord {
            flags: REC_MM,
            rss_pages: [1, 2, 3, 4],
            ..rec(10, 10, 5)
        };
        walk(&mut held, &[full(&leader)]);
        let (out, _) = walk(&mut held, &[mark(10, 10)]);
        assert_eq!(out[0].flags & REC_MM, 0);
        assert_ne!(out[0].flags & REC_SAME, 0);
        assert_eq!(out[0].runtime_ns, 5);
        // Held as written: a later mark is the same.
        assert_eq!(held.threads, vec![leader]);
    }

    #[test]
    fn a_leader_written_again_without_exited_threads_has_none() {
        let mut held = HeldRecords::default();
        walk(&mut held, &[full(&rec(10, 10, 5)), full(&signal(10, 9))]);
        let again = rec(10, 10, 6);
        walk(&mut held, &[full(&again)]);
        assert_eq!(walk(&mut held, &[mark(10, 10)]), (vec![same(again)], 0));
    }

    #[test]
    fn a_thread_missing_from_a_walk_is_let_go_and_its_mark_then_is_lost() {
        let mut held = HeldRecords::default();
        walk(&mut held, &[full(&rec(10, 10, 5)), full(&rec(20, 20, 5))]);
        walk(&mut held, &[mark(10, 10)]);
        assert_eq!(held.threads, vec![rec(10, 10, 5)]);
        // 20 was not in the last walk; 30 never written in full; 10 now in another process.
        let (out, lost) = walk(&mut held, &[mark(20, 20), mark(30, 30), mark(10, 11)]);
        assert!(out.is_empty());
        assert_eq!(lost, 3);
    }

    #[test]
    fn marks_out_of_tid_order_are_found_all_the_same() {
        let mut held = HeldRecords::default();
        let (a, b, c) = (rec(10, 10, 1), rec(20, 20, 2), rec(30, 30, 3));
        walk(&mut held, &[full(&a), full(&b), full(&c)]);
        assert_eq!(
            walk(&mut held, &[mark(30, 30), mark(10, 10)]),
            (vec![same(c), same(a)], 0)
        );
        assert_eq!(
            walk(&mut held, &[mark(10, 10), mark(30, 30)]),
            (vec![same(a), same(c)], 0)
        );
    }

    #[test]
    fn a_partial_record_at_the_end_is_ignored() {
        let mut held = HeldRecords::default();
        let r = rec(10, 10, 5);
        let mut bytes = full(&r);
        bytes.extend_from_slice(&full(&rec(11, 10, 5))[..40]);
        let mut out = Vec::new();
        assert_eq!(held.decode(&bytes, &mut out), 0);
        assert_eq!(out, vec![r]);
    }
}
