//! What userspace adds to each exec: finding the files its arguments name (a `stat` per
//! argument that could be a path) and what an interpreter runs.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use umbra::capture::{
    Argv, ArgvSource, ProcView, input_files,
    interp::{self, Interpreter},
};

fn argv(args: &[&str]) -> Argv {
    let mut raw = Vec::new();
    for a in args {
        raw.extend_from_slice(a.as_bytes());
        raw.push(0);
    }
    Argv::from_raw(&raw, raw.len() as u32, ArgvSource::Kernel)
}

fn exec_args(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("main.c"), b"int main(void){return 0;}").expect("write");
    std::fs::write(dir.path().join("data.csv"), vec![b'1'; 4096]).expect("write");
    // The process whose arguments they are, working in `dir` (its paths resolve through
    // its `/proc` directory, as the agent resolves them).
    let mut child = std::process::Command::new("sleep")
        .arg("600")
        .current_dir(dir.path())
        .spawn()
        .expect("sleep");
    let view = ProcView::of(child.id());
    // A compiler run: 10 arguments, one an existing file, one to be created.
    let gcc = argv(&[
        "gcc", "-O2", "-Wall", "-I", "include", "-c", "main.c", "-o", "main.o", "-g",
    ]);
    c.bench_function("input files of a 10-argument exec (1 file)", |b| {
        b.iter(|| black_box(input_files(black_box(&gcc), &view)))
    });
    // An interpreted job with an input: `python3 etl.py --in=data.csv --out out.csv`.
    let py = argv(&["python3", "etl.py", "--in=data.csv", "--out", "out.csv"]);
    c.bench_function("input files of a 5-argument exec (1 file)", |b| {
        b.iter(|| black_box(input_files(black_box(&py), &view)))
    });
    let args: Vec<&[u8]> = py.args().collect();
    c.bench_function("the program of `python3 -u etl.py …`", |b| {
        b.iter(|| {
            let i = Interpreter::of(b"/usr/bin/python3.11", args[0]);
            black_box(i.and_then(|i| interp::target(i, &args[1..])))
        })
    });
    let _ = child.kill();
    let _ = child.wait();
}

criterion_group!(benches, exec_args);
criterion_main!(benches);
