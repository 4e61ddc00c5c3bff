//! The bounded history at steady state: how much memory it really takes once full (the
//! process's resident set, against the budget it enforces by estimate), and how long one
//! window takes to insert then. Not criterion: memory is the point. Run with
//! `cargo bench -p umbra --bench history` (or `cargo xtask bench micro`).

use std::time::Instant;

use umbra::aggregate::{
    History, HistoryConfig, NodePoint, ProductionInput, ResourceProfile, ShadowPoint, Window,
    WorkloadId,
};

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn window(t: u64, ids: &[(WorkloadId, String)]) -> Window {
    Window {
        points: ids
            .iter()
            .enumerate()
            .map(|(i, (id, name))| ShadowPoint {
                timestamp_ms: t * 1000,
                interval_ms: 1000,
                workload: id.clone(),
                name: name.clone(),
                processes: 1 + (i % 4) as u32,
                input: ProductionInput {
                    execs: t % 3,
                    syscalls: 1000 + t,
                    ..Default::default()
                },
                profile: ResourceProfile {
                    cpu_ns: 10_000_000 + t,
                    cpu_cores: 0.01,
                    rss_bytes: 50 << 20,
                    read_bytes: 4096,
                    runq_p99_ns: Some(1 << 16),
                    ..Default::default()
                },
            })
            .collect(),
        node: NodePoint::default(),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    println!(
        "| workloads | simulated | points kept | budget | estimated | resident (measured) | measured / budget | insert one window |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (workloads, secs) in [(100u64, 7_200u64), (1_000, 1_200)] {
        let ids: Vec<(WorkloadId, String)> = (0..workloads)
            .map(|i| {
                (
                    WorkloadId(format!("exe:sha256:{:064x}", i * 0x9e37_79b9_7f4a_7c15)),
                    format!("worker-{i}"),
                )
            })
            .collect();
        let cfg = HistoryConfig::default();
        let before = rss_bytes();
        let mut h = History::new(cfg.clone());
        let mut last = Vec::new();
        for t in 1..=secs {
            let w = window(t, &ids);
            let start = Instant::now();
            h.insert(&w);
            if t + 100 > secs {
                last.push(start.elapsed());
            }
        }
        last.sort();
        let resident = rss_bytes().saturating_sub(before);
        println!(
            "| {workloads} | {secs} s | {} | {} MiB | {:.1} MiB | {:.1} MiB | {:.2} | {:.0} µs (median of the last 100) |",
            h.points(),
            cfg.budget_bytes >> 20,
            h.bytes() as f64 / (1 << 20) as f64,
            resident as f64 / (1 << 20) as f64,
            resident as f64 / cfg.budget_bytes as f64,
            last[last.len() / 2].as_secs_f64() * 1e6,
        );
        drop(h);
    }
}
