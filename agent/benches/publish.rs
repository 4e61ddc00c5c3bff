//! Hot paths of the publish stage: a message through the on-disk spool (append, read back
//! to send, acknowledge), and the size and encoding cost of a summary of 100 workloads.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use umbra::publish::{
    Body, BrokerUrl, Envelope, NodeSummary, Outbox, Payload, REQUESTS_PER_SUMMARY, RequestSummary,
    RequestUse, SCHEMA, Security, Settings, Status, Summary, Topics, WorkloadForecast,
    WorkloadSummary,
    spool::{Spool, SpoolLimits},
};

/// A summary as a busy node sends it: `workloads` with every field set, and `requests`
/// (as many as a summary lists, at most), half of them ended.
fn summary(workloads: usize, requests: usize) -> Envelope {
    Envelope {
        schema: SCHEMA,
        node: "edge-gateway-0042".into(),
        seq: 123_456,
        time_ms: 1_796_000_000_000,
        historical: false,
        body: Body::Summary(Summary {
            start_ms: 1_796_000_000_000 - 10_000,
            period_ms: 10_000,
            intervals: 10,
            node: NodeSummary {
                cpus: 4,
                cpu_busy_mean: 1.7,
                cpu_busy_max: 3.2,
                mem_total_bytes: 8 << 30,
                mem_available_min_bytes: 3 << 30,
                workloads: workloads as u32,
            },
            workloads: (0..workloads)
                .map(|i| WorkloadSummary {
                    workload: format!("exe:sha256:{:064x}", i * 7919),
                    name: format!("service-{i}"),
                    processes_max: 3,
                    cpu_cores_mean: 0.05 * i as f32,
                    cpu_cores_max: 0.1 * i as f32,
                    rss_max_bytes: (40 << 20) + i as u64 * 4096,
                    runq_p99_max_ns: 65_536,
                    page_faults: 1200 + i as u64,
                    read_bytes: 1 << 20,
                    write_bytes: 300_000,
                    block_read_bytes: 65_536,
                    block_write_bytes: 1 << 20,
                    net_rx_bytes: 2_000_000,
                    net_tx_bytes: 5_000_000,
                    retransmits: 2,
                    execs: 4,
                    conn_accepted: 120,
                    conn_opened: 30,
                    syscalls: 150_000,
                    pressure_max: Some([1.5, 0.2, 3.0]),
                    forecast: Some(WorkloadForecast {
                        cpu_cores: [0.03 * i as f32, 0.05 * i as f32, 0.09 * i as f32],
                        rss_bytes: [40e6, 42e6, 45e6],
                    }),
                })
                .collect(),
            other: None,
            predictor: "onnx:2026.12.07-2/seasonal,ewma,autopilot+aci".into(),
            forecast_step_ms: 5000,
            requests: (0..requests)
                .map(|i| RequestSummary {
                    key: format!("exe:sha256:{:064x}", i * 104_729),
                    name: format!("job-{i}"),
                    pid: 40_000 + i as u32,
                    exec_ms: 1_796_000_000_000 - 9_000 + i as u64 * 100,
                    source: "model".into(),
                    runs: 16,
                    cpu_seconds: [0.2, 0.5, 1.1],
                    peak_rss_bytes: [20e6, 31e6, 48e6],
                    duration_seconds: [0.4, 0.9, 2.0],
                    io_bytes: [1e6, 8e6, 3e7],
                    used: (i % 2 == 0).then_some(RequestUse {
                        cpu_seconds: 0.6,
                        peak_rss_bytes: 33e6,
                        duration_seconds: 1.1,
                        io_bytes: 9e6,
                    }),
                })
                .collect(),
            requests_omitted: 0,
        }),
    }
}

fn encode(c: &mut Criterion) {
    for requests in [0, REQUESTS_PER_SUMMARY] {
        let e = summary(100, requests);
        for p in [Payload::Postcard, Payload::Json] {
            let bytes = e.encode(p).len();
            let what = format!("summary of 100 workloads, {requests} requests");
            eprintln!("{what}, {p:?}: {bytes} bytes");
            let mut g = c.benchmark_group(what);
            g.throughput(Throughput::Bytes(bytes as u64));
            g.bench_function(format!("encode {p:?} ({bytes} bytes)"), |b| {
                b.iter(|| black_box(e.encode(p)))
            });
            g.finish();
        }
    }
}

fn spool(c: &mut Criterion) {
    let payload = summary(10, 0).encode(Payload::Postcard);
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = SpoolLimits {
        max_bytes: 64 << 20,
        segment_bytes: 1 << 20,
    };
    let (mut s, _) = Spool::open(dir.path(), limits).expect("spool");
    let mut g = c.benchmark_group("spool");
    g.throughput(Throughput::Elements(1));
    g.bench_function(
        format!("append, read back, ack ({} B message)", payload.len()),
        |b| {
            b.iter(|| {
                let seq = s.append(black_box(&payload)).expect("append");
                let (got, bytes) = s.next_from(seq).expect("read").expect("there");
                black_box(bytes);
                s.ack(got).expect("ack");
            })
        },
    );
    g.finish();
}

/// Messages through the whole outgoing path: spool append, the sender, rumqttc, a real
/// mosquitto on loopback, PubAck, spool acknowledgement. Skipped without mosquitto.
fn broker(c: &mut Criterion) {
    const MOSQUITTO: &str = "/usr/sbin/mosquitto";
    if !std::path::Path::new(MOSQUITTO).exists() {
        eprintln!("spool → broker: skipped, no {MOSQUITTO} (cargo xtask install)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let conf = dir.path().join("m.conf");
    std::fs::write(
        &conf,
        format!("user root\nlistener {port} 127.0.0.1\nallow_anonymous true\n"),
    )
    .expect("conf");
    let mut broker = std::process::Command::new(MOSQUITTO)
        .arg("-c")
        .arg(&conf)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("mosquitto");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let url = format!("mqtt://127.0.0.1:{port}");
    let settings = Settings {
        url: url.clone(),
        broker: BrokerUrl::parse(&url).expect("url"),
        topics: Topics {
            fleet: "bench".into(),
            node: "n".into(),
        },
        payload: Payload::Postcard,
        keep_alive: std::time::Duration::from_secs(30),
        security: Security::default(),
        max_backoff: std::time::Duration::from_millis(500),
    };
    let limits = SpoolLimits {
        max_bytes: 256 << 20,
        segment_bytes: 4 << 20,
    };
    let (outbox, _) = Outbox::open(&dir.path().join("spool"), limits, "n").expect("outbox");
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let stop = tokio_util::sync::CancellationToken::new();
    let task = rt.spawn(umbra::publish::client::run(
        settings,
        outbox.clone(),
        tx,
        Status::default,
        stop.clone(),
    ));
    rt.spawn(async move { while rx.recv().await.is_some() {} });
    let body = match summary(10, 0).body {
        Body::Summary(s) => s,
        _ => unreachable!("a summary"),
    };
    const BATCH: u64 = 1000;
    let mut g = c.benchmark_group("spool → mosquitto, QoS 1");
    g.throughput(Throughput::Elements(BATCH));
    g.sample_size(10);
    g.bench_function(
        "1,000 summaries of 10 workloads, until all acknowledged",
        |b| {
            b.iter_custom(|iters| {
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    for _ in 0..BATCH {
                        outbox.push(Body::Summary(body.clone())).expect("push");
                    }
                    while outbox.status().pending > 0 {
                        std::thread::sleep(std::time::Duration::from_micros(200));
                    }
                }
                start.elapsed()
            })
        },
    );
    g.finish();
    stop.cancel();
    let _ = rt.block_on(task);
    let _ = broker.kill();
    let _ = broker.wait();
}

criterion_group!(benches, encode, spool, broker);
criterion_main!(benches);
