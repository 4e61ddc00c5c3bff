//! `umbra top` driven as a person would: windows of a real recording in, keys pressed,
//! the screen (ratatui's test backend) read back.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use ratatui::{
    Terminal,
    backend::TestBackend,
    crossterm::event::{KeyCode, KeyEvent, KeyModifiers},
};

use super::*;
use crate::{
    aggregate::{GroupBy, WorkloadId},
    export,
    insight::{Note, NoteKind, WorkloadInsight},
    predict::Band,
    record::RecordError,
};

fn windows(name: &str) -> Vec<Window> {
    let rec = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/fixtures/{name}.umbra"));
    let mut out = Vec::new();
    export::replay::<RecordError>(&rec, GroupBy::Exe, |s| {
        if let export::Step::Window(_, w) = s {
            out.push(w.clone());
        }
        Ok(())
    })
    .unwrap();
    out
}

struct Screen {
    term: Terminal<TestBackend>,
}

impl Screen {
    fn new() -> Self {
        Screen {
            term: Terminal::new(TestBackend::new(160, 30)).unwrap(),
        }
    }

    fn show(&mut self, app: &mut App) -> Vec<String> {
        self.term.draw(|f| app.render(f)).unwrap();
        let buf = self.term.backend().buffer();
        (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
                    .trim_end()
                    .to_string()
            })
            .collect()
    }
}

fn press(app: &mut App, keys: &str) {
    for c in keys.chars() {
        let code = match c {
            '\n' => KeyCode::Enter,
            '\t' => KeyCode::Tab,
            c => KeyCode::Char(c),
        };
        assert_eq!(app.key(KeyEvent::from(code)), Control::Continue, "{c:?}");
    }
}

/// Rows of the table: the lines between the column header and the detail rule.
fn rows(screen: &[String]) -> Vec<String> {
    let start = screen.iter().position(|l| l.starts_with("NAME")).unwrap() + 1;
    screen[start..]
        .iter()
        .take_while(|l| !l.starts_with('─'))
        .filter(|l| !l.is_empty())
        .cloned()
        .collect()
}

fn column(row: &str, n: usize) -> String {
    row.split_whitespace().nth(n).unwrap().to_string()
}

#[test]
fn sorts_by_the_keys_and_filters_by_name() {
    let ws = windows("compile");
    // A busy interval of the compile job: several workloads at once.
    let w = ws.iter().max_by_key(|w| w.points.len()).unwrap();
    assert!(w.points.len() >= 3);
    let mut app = App::new("compile.umbra");
    app.window(w, Drops::default());
    let mut screen = Screen::new();

    let s = screen.show(&mut app);
    assert!(s[0].starts_with("umbra top  compile.umbra"), "{}", s[0]);
    assert!(s.iter().any(|l| l.contains("sorted by cpu")), "{s:#?}");
    let by_cpu = rows(&s);
    assert_eq!(by_cpu.len(), w.points.len());
    let cpu: Vec<f64> = by_cpu
        .iter()
        .map(|r| column(r, 2).parse().unwrap())
        .collect();
    assert!(
        cpu.windows(2).all(|p| p[0] >= p[1]),
        "CPU descending: {cpu:?}"
    );
    let busiest = w
        .points
        .iter()
        .max_by(|a, b| a.profile.cpu_cores.total_cmp(&b.profile.cpu_cores))
        .unwrap();
    assert!(by_cpu[0].starts_with(&crate::view::clip(&busiest.name, 24)));

    // `m`: by memory, largest first; `m` again: smallest first.
    press(&mut app, "m");
    let s = screen.show(&mut app);
    assert!(s.iter().any(|l| l.contains("sorted by memory")));
    assert!(s.iter().any(|l| l.contains("RSS▼")), "{s:#?}");
    let first = rows(&s)[0].clone();
    let biggest = w.points.iter().max_by_key(|p| p.profile.rss_bytes).unwrap();
    assert!(
        first.starts_with(&crate::view::clip(&biggest.name, 24)),
        "{first}"
    );
    press(&mut app, "m");
    let s = screen.show(&mut app);
    assert!(s.iter().any(|l| l.contains("RSS▲")));
    let smallest = w.points.iter().min_by_key(|p| p.profile.rss_bytes).unwrap();
    let first = rows(&s)[0].clone();
    let small = w
        .points
        .iter()
        .filter(|p| p.profile.rss_bytes == smallest.profile.rss_bytes);
    assert!(
        small
            .into_iter()
            .any(|p| first.starts_with(&crate::view::clip(&p.name, 24))),
        "{first}"
    );

    // `/` and a name: only matching rows; Esc in the filter clears it.
    let name = busiest.name.clone();
    press(&mut app, &format!("/{name}\n"));
    let s = screen.show(&mut app);
    let shown = rows(&s);
    assert!(!shown.is_empty());
    assert!(
        shown
            .iter()
            .all(|r| r.starts_with(&crate::view::clip(&name, 24))),
        "{shown:#?}"
    );
    assert!(s.iter().any(|l| l.contains(&format!("filter \"{name}\""))));
    press(&mut app, "/zzz-no-such-workload\n");
    assert!(rows(&screen.show(&mut app)).is_empty());
    app.key(KeyEvent::from(KeyCode::Char('/')));
    app.key(KeyEvent::from(KeyCode::Esc));
    assert_eq!(rows(&screen.show(&mut app)).len(), w.points.len());

    // Tab cycles the sort; q and Ctrl-C quit.
    press(&mut app, "\t");
    assert!(
        screen
            .show(&mut app)
            .iter()
            .any(|l| l.contains("sorted by i/o"))
    );
    assert_eq!(app.key(KeyEvent::from(KeyCode::Char('q'))), Control::Quit);
    assert_eq!(
        app.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
        Control::Quit
    );
}

#[test]
fn shows_forecast_tier_anomalies_and_decisions_when_the_agent_has_them() {
    let ws = windows("http");
    let w = ws.iter().rev().find(|w| w.points.len() >= 2).unwrap();
    let mut app = App::new("http.umbra");
    app.window(w, Drops::default());
    let mut screen = Screen::new();
    let s = screen.show(&mut app);
    // Without the stages: dashes.
    assert!(rows(&s).iter().all(|r| column(r, 3) == "-"), "{s:#?}");

    let p = &w.points[0];
    let mut i = Insights {
        timestamp_ms: w.node.timestamp_ms,
        ..Default::default()
    };
    let band = |lo: f64, hi: f64| Band {
        p10: lo,
        p50: (lo + hi) / 2.0,
        p90: hi,
    };
    *i.workload(&p.workload) = WorkloadInsight {
        forecast: Some([
            band(0.25, 0.75),
            band(1e6, 2e6),
            band(0.0, 1.0),
            band(0.0, 1.0),
        ]),
        tier: Some("warm".into()),
        reservation: None,
        last_decision: Some("cpu.weight 100 -> 180".into()),
        drifting: false,
    };
    i.notes.push(Note {
        timestamp_ms: w.node.timestamp_ms,
        kind: NoteKind::Anomaly,
        workload: Some(p.workload.clone()),
        name: p.name.clone(),
        text: "cpu 3.1 cores above band p90 0.75".into(),
    });
    app.insights(&i);
    press(&mut app, "/");
    press(&mut app, &format!("{}\n", p.name));
    let s = screen.show(&mut app);
    let row = rows(&s)
        .into_iter()
        .find(|r| r.contains("25-75%"))
        .unwrap_or_else(|| panic!("{s:#?}"));
    assert!(row.contains("warm"), "{row}");
    assert!(row.contains("cpu.weight 100 -> 180"), "{row}");
    assert!(
        s.iter()
            .any(|l| l.contains("anomaly: cpu 3.1 cores above band")),
        "{s:#?}"
    );
    assert!(
        s.iter().any(|l| l.contains("forecast cpu 0.25-0.75 cores")),
        "{s:#?}"
    );
    // Filter by tier.
    press(&mut app, "/warm\n");
    assert_eq!(rows(&screen.show(&mut app)).len(), 1);
    let _ = WorkloadId::default();
}

#[test]
fn pause_freezes_the_rows_and_the_end_of_a_recording_is_shown() {
    let ws = windows("compress");
    let mut app = App::new("compress.umbra");
    let mut screen = Screen::new();
    app.window(&ws[1], Drops::default());
    let before = rows(&screen.show(&mut app));
    press(&mut app, " ");
    let last = ws.iter().rev().find(|w| w.points != ws[1].points).unwrap();
    app.window(last, Drops::default());
    let s = screen.show(&mut app);
    assert!(s[0].contains("PAUSED"));
    assert_eq!(rows(&s), before);
    press(&mut app, " ");
    app.window(
        last,
        Drops {
            kernel: 7,
            channel: 0,
        },
    );
    app.ended(None);
    let s = screen.show(&mut app);
    assert!(s[0].contains("(end of recording)"), "{}", s[0]);
    assert!(s[1].contains("drops kernel 7"), "{}", s[1]);
    assert_ne!(rows(&s), before);
}
