use proptest::prelude::*;

use super::*;
use crate::capture::{DropCounts, Lifecycle, LifecycleKind, NodeStats, Tick};

fn header() -> Header {
    Header {
        kernel: "6.18".into(),
        node: "n1".into(),
        interval_ms: 1000,
        start_ms: 5,
        agent_version: "0.1.0".into(),
    }
}

fn items(n: usize) -> Vec<CaptureItem> {
    (0..n)
        .map(|i| {
            if i % 3 == 2 {
                CaptureItem::Tick(Box::new(Tick {
                    timestamp_ns: i as u64,
                    wall_ms: i as u64,
                    samples: vec![],
                    drops: DropCounts::default(),
                    node: NodeStats::default(),
                    pressure: vec![],
                }))
            } else {
                CaptureItem::Event(Lifecycle {
                    kind: LifecycleKind::Exec {
                        filename: format!("/bin/x{i}"),
                        argv: crate::capture::Argv::from_raw(
                            &[format!("x{i}\0--in\0f").as_bytes(), b"\xff\0"].concat(),
                            600,
                            crate::capture::ArgvSource::Kernel,
                        ),
                        inputs: vec![crate::capture::InputFile {
                            arg: 2,
                            size: i as u64,
                        }],
                    },
                    pid: i as u32,
                    tgid: i as u32,
                    ppid: Some(1),
                    timestamp_ns: i as u64,
                    cgroup_id: 1,
                    comm: "x".into(),
                })
            }
        })
        .collect()
}

fn write(dir: &tempfile::TempDir, items: &[CaptureItem]) -> PathBuf {
    let p = dir.path().join("r.umbra");
    let mut w = Writer::create(&p, &header()).expect("create");
    for i in items {
        w.write(i).expect("write");
    }
    w.flush().expect("flush");
    p
}

#[test]
fn round_trip() {
    let dir = tempfile::tempdir().expect("tmp");
    let want = items(20);
    let p = write(&dir, &want);
    let r = Reader::open(&p).expect("open");
    assert_eq!(r.header(), &header());
    let got: Vec<CaptureItem> = r.map(|x| x.expect("item")).collect();
    assert_eq!(got, want);
}

#[test]
fn a_cut_file_gives_every_whole_frame_then_names_the_offset() {
    let dir = tempfile::tempdir().expect("tmp");
    let want = items(10);
    let p = write(&dir, &want);
    let len = std::fs::metadata(&p).expect("meta").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .expect("open");
    f.set_len(len - 3).expect("truncate");
    let mut got = Vec::new();
    let mut err = None;
    for x in Reader::open(&p).expect("open") {
        match x {
            Ok(i) => got.push(i),
            Err(e) => err = Some(e),
        }
    }
    assert_eq!(got, want[..9]);
    let e = err.expect("an error").to_string();
    assert!(
        e.contains("r.umbra") && e.contains("at byte") && e.contains("cut short"),
        "{e}"
    );
}

#[test]
fn a_flipped_byte_is_caught_by_the_checksum() {
    let dir = tempfile::tempdir().expect("tmp");
    let want = items(10);
    let p = write(&dir, &want);
    let mut bytes = std::fs::read(&p).expect("read");
    let at = bytes.len() - 10;
    bytes[at] ^= 0xff;
    std::fs::write(&p, &bytes).expect("write");
    let results: Vec<_> = Reader::open(&p).expect("open").collect();
    assert_eq!(results.len(), 10);
    assert!(results[..9].iter().all(Result::is_ok));
    let e = results[9].as_ref().expect_err("damaged").to_string();
    assert!(
        e.contains("checksum") && e.contains("damaged at byte"),
        "{e}"
    );
}

#[test]
fn a_newer_version_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = write(&dir, &items(1));
    let mut bytes = std::fs::read(&p).expect("read");
    bytes[8] = 9;
    std::fs::write(&p, &bytes).expect("write");
    let e = Reader::open(&p).err().expect("refused").to_string();
    assert!(
        e.contains("version 9") && e.contains(&format!("reads version {VERSION}")),
        "{e}"
    );
}

#[test]
fn not_a_recording() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("x");
    std::fs::write(&p, b"hello world, not a recording").expect("write");
    let e = Reader::open(&p).err().expect("refused").to_string();
    assert!(e.contains("not an Umbra recording"), "{e}");
}

/// `bytes` compressed as one zstd frame.
fn zstd_frame(bytes: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(bytes, ruzstd::encoding::CompressionLevel::Fastest)
}

#[test]
fn a_zstd_compressed_recording_reads_as_the_plain_one() {
    let dir = tempfile::tempdir().expect("tmp");
    let want = items(20);
    let plain = std::fs::read(write(&dir, &want)).expect("read");
    let p = dir.path().join("r.umbra.zst");
    std::fs::write(&p, zstd_frame(&plain)).expect("write");
    let r = Reader::open(&p).expect("open");
    assert_eq!(r.header(), &header());
    let got: Vec<CaptureItem> = r.map(|x| x.expect("item")).collect();
    assert_eq!(got, want);
}

#[test]
fn a_zstd_stream_of_several_frames_reads_whole_and_cut_to_its_last_whole_frame() {
    let dir = tempfile::tempdir().expect("tmp");
    let want = items(20);
    let plain = std::fs::read(write(&dir, &want)).expect("read");
    // Two frames (as a multi-threaded `zstd` writes them) with a skippable frame between.
    let half = plain.len() / 2;
    let mut z = zstd_frame(&plain[..half]);
    z.extend_from_slice(&0x184d_2a50u32.to_le_bytes());
    z.extend_from_slice(&3u32.to_le_bytes());
    z.extend_from_slice(b"umb");
    let second = z.len();
    z.extend_from_slice(&zstd_frame(&plain[half..]));
    let p = dir.path().join("r.umbra.zst");
    std::fs::write(&p, &z).expect("write");
    let got: Vec<CaptureItem> = Reader::open(&p)
        .expect("open")
        .map(|x| x.expect("item"))
        .collect();
    assert_eq!(got, want);
    // Cut inside the second frame: the items whose bytes the first frame holds whole, then
    // the cut, named.
    std::fs::write(&p, &z[..second + 10]).expect("write");
    let (mut got, mut err) = (Vec::new(), None);
    for x in Reader::open(&p).expect("open") {
        match x {
            Ok(i) => got.push(i),
            Err(e) => err = Some(e),
        }
    }
    assert!(!got.is_empty() && got.len() < want.len(), "{}", got.len());
    assert_eq!(got, want[..got.len()]);
    let e = err.expect("an error");
    assert!(matches!(e, RecordError::Truncated { .. }), "{e}");
    assert!(e.to_string().contains("cut short"), "{e}");
}

#[test]
fn a_damaged_zstd_stream_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let plain = std::fs::read(write(&dir, &items(20))).expect("read");
    let z = zstd_frame(&plain);
    let p = dir.path().join("r.umbra.zst");
    // Every byte after the frame's header flipped in turn: an error or the same items,
    // never a panic nor other items.
    let want: Vec<CaptureItem> = items(20);
    let mut errors = 0;
    for at in 6..z.len() {
        let mut bad = z.clone();
        bad[at] ^= 0x5a;
        std::fs::write(&p, &bad).expect("write");
        let results: Vec<_> = match Reader::open(&p) {
            Ok(r) => r.collect(),
            Err(e) => vec![Err(e)],
        };
        for (i, r) in results.iter().enumerate() {
            match r {
                Ok(item) => assert_eq!(item, &want[i], "byte {at}"),
                Err(e) => {
                    errors += 1;
                    assert!(e.to_string().contains("r.umbra.zst"), "{e}");
                }
            }
        }
    }
    assert!(
        errors > (z.len() - 6) / 2,
        "{errors} of {} flips caught",
        z.len() - 6
    );
}

proptest! {
    #[test]
    fn frames_round_trip(payload in prop::collection::vec(any::<u8>(), 0..2048)) {
        let f = encode_frame(&payload);
        let (p, used) = decode_frame(&f).expect("decode");
        prop_assert_eq!(p, &payload[..]);
        prop_assert_eq!(used, f.len());
    }

    #[test]
    fn a_damaged_frame_is_never_accepted_as_other_data(
        payload in prop::collection::vec(any::<u8>(), 1..512),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let mut f = encode_frame(&payload);
        let i = at.index(f.len());
        f[i] ^= flip;
        prop_assert!(decode_frame(&f).is_err(), "a damaged frame was accepted");
    }

    #[test]
    fn any_prefix_is_incomplete_not_wrong(payload in prop::collection::vec(any::<u8>(), 0..256), cut in any::<prop::sample::Index>()) {
        let f = encode_frame(&payload);
        let n = cut.index(f.len());
        prop_assert_eq!(decode_frame(&f[..n]).err(), Some(FrameError::Incomplete));
    }
}
