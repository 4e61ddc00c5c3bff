//! Hot paths of the aggregate and record stages: one tick of 1,000 processes through
//! `Aggregator::tick`, and recording ticks of that size.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use umbra::{
    aggregate::{Aggregator, GroupBy},
    capture::{CaptureItem, DropCounts, Memory, NodeStats, ProcCounters, ProcessSample, Tick},
    record::{Header, Writer},
};

/// A tick of `n` processes that all ran in the interval: CPU, syscalls, I/O and a
/// run-queue wait each (their run-queue histograms change every tick); one in ten did
/// block I/O.
fn tick(n: u32, t: u64) -> Tick {
    let samples = (0..n)
        .map(|i| {
            let mut counters = ProcCounters {
                cpu_ns: t * 1_000_000 + i as u64,
                syscalls: t * 100,
                read_bytes: t * 4096,
                write_bytes: t * 512,
                voluntary_switches: t * 10,
                runq_waits: t,
                ..Default::default()
            };
            counters.runq_hist[10 + (i % 8) as usize] = t as u32;
            if i % 10 == 0 {
                counters.block_hist[16] = t as u32;
                counters.block_write_bytes = t * 65_536;
            }
            (i, counters)
        })
        .map(|(i, counters)| ProcessSample {
            tgid: 1000 + i,
            start_ns: 1,
            ppid: Some(1),
            cgroup_id: 10 + (i % 50) as u64,
            comm: format!("proc{}", i % 100).into(),
            exe: Some(format!("/usr/bin/proc{}", i % 100).into()),
            exe_hash: Some(format!("sha256:{:064x}", i % 100).into()),
            cgroup: Some(format!("/system.slice/svc{}.service", i % 50).into()),
            app: None,
            counters: counters.into(),
            memory: Memory {
                anon: 1 << 20,
                ..Default::default()
            },
            exit: None,
        })
        .map(std::sync::Arc::new)
        .collect();
    Tick {
        timestamp_ns: t * 1_000_000_000,
        wall_ms: t * 1000,
        samples,
        drops: DropCounts::default(),
        node: NodeStats::default(),
        pressure: vec![],
    }
}

/// A copy of `t` whose samples and counters are new allocations (a clone shares them).
fn deep_copy(t: &Tick) -> Tick {
    let samples = t
        .samples
        .iter()
        .map(|s| {
            std::sync::Arc::new(ProcessSample {
                counters: std::sync::Arc::new((*s.counters).clone()),
                ..(**s).clone()
            })
        })
        .collect();
    Tick {
        samples,
        ..t.clone()
    }
}

/// Two ways in. *Fresh*: each tick is a new copy made just before it is aggregated, as the
/// capture stage hands over the tick it has just built (its data in cache). *Cold*: the
/// ticks are cycled through from a prepared set of 64 (45 MB), so every tick comes from
/// main memory — the pessimistic bound.
fn aggregate(c: &mut Criterion) {
    let ticks: Vec<Tick> = (1..=64).map(|t| tick(1000, t)).collect();
    for g in [GroupBy::Exe, GroupBy::Cgroup] {
        c.bench_function(
            &format!("aggregate 1000 processes/tick ({g:?}, fresh)"),
            |b| {
                let mut agg = Aggregator::new(g, 1000);
                let mut i = 0;
                // One copy made right before each run and dropped after it, outside the timing.
                b.iter_batched_ref(
                    || {
                        i = (i + 1) % ticks.len();
                        deep_copy(&ticks[i])
                    },
                    |t| black_box(agg.tick(t)),
                    BatchSize::PerIteration,
                )
            },
        );
        c.bench_function(
            &format!("aggregate 1000 processes/tick ({g:?}, cold)"),
            |b| {
                let mut agg = Aggregator::new(g, 1000);
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) % ticks.len();
                    black_box(agg.tick(&ticks[i]))
                })
            },
        );
    }
}

fn record(c: &mut Criterion) {
    let item = CaptureItem::Tick(Box::new(tick(1000, 5)));
    let size = postcard::to_stdvec(&item).map(|v| v.len()).unwrap_or(0);
    let dir = tempfile::tempdir().expect("tempdir");
    let header = Header {
        kernel: "bench".into(),
        node: "bench".into(),
        interval_ms: 1000,
        start_ms: 0,
        agent_version: "bench".into(),
    };
    let mut w = Writer::create(&dir.path().join("bench.umbra"), &header).expect("writer");
    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Bytes(size as u64));
    g.bench_function("write a 1000-process tick", |b| {
        b.iter(|| w.write(black_box(&item)).expect("write"))
    });
    g.finish();
}

criterion_group!(benches, aggregate, record);
criterion_main!(benches);
