//! Names come from the system and may be anything: executable paths, cgroup names and comm
//! that are not ASCII, not UTF-8 (capture turns invalid bytes into U+FFFD), very long, or
//! full of control characters. None of them may panic any stage: a recording of them is
//! written and read back, aggregated under both groupings, shown as a table and as JSON,
//! summarised, encoded for MQTT both ways and decoded, and stored by the hub as Parquet.
#![allow(clippy::unwrap_used)]

use umbra::{
    aggregate::{Aggregator, GroupBy},
    capture::{CaptureItem, DropCounts, Memory, NodeStats, ProcCounters, ProcessSample, Tick},
    fleet::hub::Hub,
    publish::{Body, Envelope, Payload, SCHEMA, summary::Summarizer},
    record::{Header, Reader, Writer},
    view::{Drops, Frame, View},
};

fn strange() -> Vec<String> {
    vec![
        "caf\u{e9}-\u{1f980}".into(),
        "\u{fffd}\u{fffd}invalid-utf8\u{fffd}".into(),
        "x".repeat(5000),
        "\u{65e5}\u{672c}\u{8a9e}".repeat(300),
        "tab\tnew\nline\u{1b}[2J\u{7}".into(),
        String::new(),
        "/".into(),
        "a/b/../../c d".into(),
    ]
}

fn tick(n: u64) -> Tick {
    let samples = strange()
        .into_iter()
        .enumerate()
        .map(|(i, name)| ProcessSample {
            tgid: 100 + i as u32,
            start_ns: 1,
            ppid: Some(1),
            cgroup_id: i as u64,
            comm: name.chars().take(15).collect::<String>().into(),
            exe: Some(format!("/opt/{name}/bin/{name}").into()),
            exe_hash: (i % 2 == 0).then(|| format!("sha256:{name}").into()),
            cgroup: Some(format!("/{name}.slice/{name}").into()),
            app: None,
            counters: std::sync::Arc::new(ProcCounters {
                cpu_ns: n * 1_000_000 * (i as u64 + 1),
                write_bytes: n * 10,
                ..Default::default()
            }),
            memory: Memory {
                anon: 4096 * (i as u64 + 1),
                ..Default::default()
            },
            exit: None,
        })
        .map(std::sync::Arc::new)
        .collect();
    Tick {
        timestamp_ns: n * 1_000_000_000,
        wall_ms: 1_800_000_000_000 + n * 1000,
        samples,
        drops: DropCounts::default(),
        node: NodeStats {
            cpus: 2,
            cpu_busy_ns: n * 2_000_000_000,
            mem_total_bytes: 1 << 30,
            mem_available_bytes: 1 << 29,
        },
        pressure: vec![],
    }
}

#[test]
fn strange_names_pass_every_stage_under_both_groupings() {
    let d = tempfile::tempdir().unwrap();
    let rec = d.path().join("names.umbra");
    let header = Header {
        kernel: "\u{fffd}kernel".into(),
        node: "n\u{e9}ud".into(),
        interval_ms: 1000,
        start_ms: 0,
        agent_version: "test".into(),
    };
    let mut w = Writer::create(&rec, &header).unwrap();
    for n in 1..=12 {
        w.write(&CaptureItem::Tick(Box::new(tick(n)))).unwrap();
    }
    w.flush().unwrap();
    let ticks: Vec<Tick> = Reader::open(&rec)
        .unwrap()
        .map(|i| match i.unwrap() {
            CaptureItem::Tick(t) => *t,
            CaptureItem::Event(_) => unreachable!(),
        })
        .collect();
    assert_eq!(ticks.len(), 12);
    assert_eq!(
        ticks[3],
        tick(4),
        "names survive the recording byte for byte"
    );
    for g in [GroupBy::Exe, GroupBy::Cgroup] {
        let mut agg = Aggregator::new(g, 1000);
        let mut sum = Summarizer::new(5000, 3);
        let mut hub = Hub::new(&d.path().join(format!("hub-{g:?}")), "t").unwrap();
        let mut out = Vec::new();
        let mut seq = 0;
        for t in &ticks {
            let win = agg.tick(t);
            assert!(
                win.points.len() >= 7,
                "{g:?}: {} workloads",
                win.points.len()
            );
            View::Table { top: 20 }
                .window(&mut out, &Frame::plain(&win, Drops::default()))
                .unwrap();
            View::Points { json: true }
                .window(&mut out, &Frame::plain(&win, Drops::default()))
                .unwrap();
            if let Some(s) = sum.push(&win) {
                seq += 1;
                let env = Envelope {
                    schema: SCHEMA,
                    node: "n".into(),
                    seq,
                    time_ms: t.wall_ms,
                    historical: false,
                    body: Body::Summary(s),
                };
                for p in [Payload::Postcard, Payload::Json] {
                    let bytes = env.encode(p);
                    assert_eq!(Envelope::decode(&bytes).unwrap(), env, "{g:?} {p:?}");
                }
                assert!(hub.ingest("umbra/v1/f/n/summary", &env.encode(Payload::Postcard)));
            }
        }
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("caf\u{e9}"), "{g:?}");
        // Control characters never reach the terminal raw in the table.
        let table: String = text.lines().filter(|l| !l.starts_with('{')).collect();
        assert!(
            !table.contains('\u{1b}'),
            "{g:?}: an escape reached the table"
        );
        assert!(hub.flush().unwrap().is_some(), "{g:?}: nothing stored");
        assert!(hub.summaries >= 2);
    }
}
