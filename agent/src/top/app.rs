//! The state of `umbra top` and how it is drawn: workloads as rows, sorted and filtered
//! by keys. No terminal here: [`App::key`] takes a key, [`App::render`] draws on any
//! ratatui frame (a real terminal, or the test backend).

use std::collections::BTreeMap;

use ratatui::{
    Frame,
    crossterm::event::{KeyCode, KeyEvent, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Modifier, Style, Stylize},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row, Table, TableState},
};

use crate::{
    aggregate::{ShadowPoint, Window, WorkloadId},
    insight::{Insights, NoteKind, WorkloadInsight},
    predict::{Band, Target},
    trace::bytes,
    view::{Drops, clip},
};

/// What the rows are sorted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sort {
    Cpu,
    Memory,
    Io,
    Net,
    RunQueue,
    Processes,
    Name,
}

impl Sort {
    pub const ALL: [Sort; 7] = [
        Sort::Cpu,
        Sort::Memory,
        Sort::Io,
        Sort::Net,
        Sort::RunQueue,
        Sort::Processes,
        Sort::Name,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Sort::Cpu => "cpu",
            Sort::Memory => "memory",
            Sort::Io => "i/o",
            Sort::Net => "network",
            Sort::RunQueue => "run-queue",
            Sort::Processes => "processes",
            Sort::Name => "name",
        }
    }

    fn key(self) -> char {
        match self {
            Sort::Cpu => 'c',
            Sort::Memory => 'm',
            Sort::Io => 'i',
            Sort::Net => 'n',
            Sort::RunQueue => 'r',
            Sort::Processes => 'p',
            Sort::Name => 'a',
        }
    }
}

/// One workload as a row.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub id: WorkloadId,
    pub name: String,
    pub processes: u32,
    pub cpu_cores: f64,
    pub rss_bytes: u64,
    /// Bytes/s read and written (file I/O).
    pub io_bps: f64,
    /// Bytes/s sent and received.
    pub net_bps: f64,
    pub runq_p99_ns: Option<u64>,
    pub insight: WorkloadInsight,
    /// Anomalies of the workload since it was first shown.
    pub anomalies: u32,
}

impl Workload {
    fn from_point(p: &ShadowPoint) -> Self {
        Workload {
            id: p.workload.clone(),
            name: p.name.clone(),
            processes: p.processes,
            cpu_cores: p.profile.cpu_cores,
            rss_bytes: p.profile.rss_bytes,
            io_bps: Target::Io.of(p),
            net_bps: Target::Net.of(p),
            runq_p99_ns: p.profile.runq_p99_ns,
            insight: WorkloadInsight::default(),
            anomalies: 0,
        }
    }

    fn matches(&self, filter: &str) -> bool {
        if filter.is_empty() {
            return true;
        }
        // The name anywhere; an id from its start (a hash's digits match anything), a
        // cgroup's path anywhere.
        let f = filter.to_lowercase();
        let id = self.id.0.to_lowercase();
        self.name.to_lowercase().contains(&f)
            || id.starts_with(&f)
            || (id.starts_with("cgroup:") && id.contains(&f))
            || self
                .insight
                .tier
                .as_deref()
                .is_some_and(|t| t.eq_ignore_ascii_case(filter))
    }
}

/// What a key asks of the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Continue,
    Quit,
}

/// Node figures of the newest window.
#[derive(Clone, Debug, Default, PartialEq)]
struct Node {
    timestamp_ms: u64,
    cpu_pct: f64,
    cpus: u32,
    mem_available: u64,
    drops: Drops,
}

/// `umbra top`'s state.
pub struct App {
    source: String,
    rows: BTreeMap<WorkloadId, Workload>,
    node: Node,
    windows: u64,
    pub sort: Sort,
    pub descending: bool,
    pub filter: String,
    /// Typing a filter (after `/`).
    editing: bool,
    /// Frozen: new windows are counted but not shown.
    pub paused: bool,
    table: TableState,
    /// The source ended (a replay at its end), with its error if it failed.
    ended: Option<Option<String>>,
    last_note: Option<String>,
}

impl App {
    pub fn new(source: &str) -> Self {
        App {
            source: source.to_string(),
            rows: BTreeMap::new(),
            node: Node::default(),
            windows: 0,
            sort: Sort::Cpu,
            descending: true,
            filter: String::new(),
            editing: false,
            paused: false,
            table: TableState::default().with_selected(Some(0)),
            ended: None,
            last_note: None,
        }
    }

    /// A new window: the rows become its workloads (insights carried over until the
    /// next ones arrive).
    pub fn window(&mut self, w: &Window, drops: Drops) {
        self.windows += 1;
        if self.paused {
            return;
        }
        let n = &w.node;
        self.node = Node {
            timestamp_ms: n.timestamp_ms,
            cpu_pct: n.cpu_busy_ns as f64 * 100.0
                / (n.interval_ms.max(1) as f64 * 1e6 * n.cpus.max(1) as f64),
            cpus: n.cpus,
            mem_available: n.mem_available_bytes,
            drops,
        };
        let mut rows = BTreeMap::new();
        for p in &w.points {
            let mut row = Workload::from_point(p);
            if let Some(old) = self.rows.remove(&p.workload) {
                row.insight = old.insight;
                row.anomalies = old.anomalies;
            }
            rows.insert(p.workload.clone(), row);
        }
        self.rows = rows;
    }

    /// The agent's conclusions for the newest window.
    pub fn insights(&mut self, i: &Insights) {
        if self.paused {
            return;
        }
        for (id, wi) in &i.workloads {
            if let Some(r) = self.rows.get_mut(id) {
                r.insight = wi.clone();
            }
        }
        for n in &i.notes {
            if n.kind == NoteKind::Anomaly
                && let Some(r) = n.workload.as_ref().and_then(|w| self.rows.get_mut(w))
            {
                r.anomalies += 1;
            }
            self.last_note = Some(format!("{}: {}", n.kind.name(), n.text));
        }
    }

    pub fn ended(&mut self, error: Option<String>) {
        self.ended = Some(error);
    }

    /// The rows shown, in order.
    pub fn visible(&self) -> Vec<&Workload> {
        let mut v: Vec<&Workload> = self
            .rows
            .values()
            .filter(|r| r.matches(&self.filter))
            .collect();
        let f = |a: &Workload, b: &Workload| -> std::cmp::Ordering {
            let num = |x: f64, y: f64| x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal);
            match self.sort {
                Sort::Cpu => num(a.cpu_cores, b.cpu_cores),
                Sort::Memory => a.rss_bytes.cmp(&b.rss_bytes),
                Sort::Io => num(a.io_bps, b.io_bps),
                Sort::Net => num(a.net_bps, b.net_bps),
                Sort::RunQueue => a.runq_p99_ns.cmp(&b.runq_p99_ns),
                Sort::Processes => a.processes.cmp(&b.processes),
                Sort::Name => b.name.cmp(&a.name),
            }
        };
        v.sort_by(|a, b| {
            let o = f(a, b).then_with(|| b.id.cmp(&a.id));
            if self.descending { o.reverse() } else { o }
        });
        v
    }

    /// One key press.
    pub fn key(&mut self, k: KeyEvent) -> Control {
        if self.editing {
            match k.code {
                KeyCode::Enter => self.editing = false,
                KeyCode::Esc => {
                    self.editing = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) if !k.modifiers.contains(KeyModifiers::CONTROL) => {
                    self.filter.push(c)
                }
                _ => {}
            }
            self.table.select(Some(0));
            return Control::Continue;
        }
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            return Control::Quit;
        }
        match k.code {
            KeyCode::Char('q') | KeyCode::Esc => return Control::Quit,
            KeyCode::Char('/') => {
                self.editing = true;
                self.filter.clear();
            }
            KeyCode::Char(' ') => self.paused = !self.paused,
            KeyCode::Char('R') => self.descending = !self.descending,
            KeyCode::Tab => {
                let i = Sort::ALL.iter().position(|s| *s == self.sort).unwrap_or(0);
                self.sort = Sort::ALL[(i + 1) % Sort::ALL.len()];
            }
            KeyCode::Down | KeyCode::Char('j') => self.table.select_next(),
            KeyCode::Up | KeyCode::Char('k') => self.table.select_previous(),
            KeyCode::Home | KeyCode::Char('g') => self.table.select_first(),
            KeyCode::Char(c) => {
                if let Some(s) = Sort::ALL.into_iter().find(|s| s.key() == c) {
                    if self.sort == s {
                        self.descending = !self.descending;
                    } else {
                        self.sort = s;
                        self.descending = s != Sort::Name;
                    }
                }
            }
            _ => {}
        }
        Control::Continue
    }

    /// Draws the whole screen.
    pub fn render(&mut self, f: &mut Frame) {
        let [head, body, detail, foot] = Layout::vertical([
            Constraint::Length(2),
            Constraint::Min(3),
            Constraint::Length(4),
            Constraint::Length(1),
        ])
        .areas(f.area());

        let n = &self.node;
        let state = match (&self.ended, self.paused) {
            (Some(Some(e)), _) => format!("  ENDED: {e}"),
            (Some(None), _) => "  (end of recording)".into(),
            (None, true) => "  PAUSED".into(),
            (None, false) => String::new(),
        };
        let rows = self.visible();
        let shown = rows.len();
        let total = self.rows.len();
        let header = vec![
            Line::from(vec![
                Span::styled("umbra top", Style::new().bold()),
                Span::raw(format!(
                    "  {}  window {}  {}{state}",
                    self.source,
                    self.windows,
                    clock(n.timestamp_ms)
                )),
            ]),
            Line::from(format!(
                "node cpu {:.1}% of {}  mem available {}  workloads {shown}/{total}  drops kernel {} channel {}",
                n.cpu_pct,
                n.cpus,
                bytes(n.mem_available),
                n.drops.kernel,
                n.drops.channel
            )),
        ];
        let selected_id = self
            .table
            .selected()
            .and_then(|i| rows.get(i.min(shown.saturating_sub(1))))
            .map(|r| r.id.clone());
        let arrow = |s: Sort| {
            if self.sort == s {
                if self.descending { "▼" } else { "▲" }
            } else {
                ""
            }
        };
        let columns = [
            (format!("NAME{}", arrow(Sort::Name)), Constraint::Min(14)),
            (
                format!("PROCS{}", arrow(Sort::Processes)),
                Constraint::Length(6),
            ),
            (format!("CPU%{}", arrow(Sort::Cpu)), Constraint::Length(7)),
            ("FORECAST p10-p90".into(), Constraint::Length(16)),
            (format!("RSS{}", arrow(Sort::Memory)), Constraint::Length(9)),
            (format!("IO/s{}", arrow(Sort::Io)), Constraint::Length(9)),
            (format!("NET/s{}", arrow(Sort::Net)), Constraint::Length(9)),
            (
                format!("RUNQ99{}", arrow(Sort::RunQueue)),
                Constraint::Length(8),
            ),
            ("TIER".into(), Constraint::Length(6)),
            ("ANOM".into(), Constraint::Length(4)),
            ("LAST DECISION".into(), Constraint::Min(10)),
        ];
        let table_rows: Vec<Row> = rows
            .iter()
            .map(|r| {
                let cpu_band = r.insight.forecast.map(|b| b[Target::Cpu as usize]);
                let outside = cpu_band.is_some_and(|b: Band| {
                    r.cpu_cores > b.p90 * 1.0001 || r.cpu_cores < b.p10 * 0.9999
                });
                let style = if r.anomalies > 0 || r.insight.drifting {
                    Style::new().red()
                } else if outside {
                    Style::new().yellow()
                } else {
                    Style::new()
                };
                Row::new(vec![
                    Cell::from(clip(&r.name, 24)),
                    Cell::from(format!("{:>5}", r.processes)),
                    Cell::from(format!("{:>6.1}", r.cpu_cores * 100.0)),
                    Cell::from(match cpu_band {
                        Some(b) => format!("{:.0}-{:.0}%", b.p10 * 100.0, b.p90 * 100.0),
                        None => "-".into(),
                    }),
                    Cell::from(format!("{:>8}", bytes(r.rss_bytes))),
                    Cell::from(format!("{:>8}", bytes(r.io_bps as u64))),
                    Cell::from(format!("{:>8}", bytes(r.net_bps as u64))),
                    Cell::from(format!("{:>7}", dur(r.runq_p99_ns))),
                    Cell::from(r.insight.tier.clone().unwrap_or_else(|| "-".into())),
                    Cell::from(if r.anomalies > 0 {
                        r.anomalies.to_string()
                    } else {
                        "-".into()
                    }),
                    Cell::from(
                        r.insight
                            .last_decision
                            .as_deref()
                            .map_or("-".to_string(), |d| clip(d, 60)),
                    ),
                ])
                .style(style)
            })
            .collect();
        let detail_lines = match selected_id.as_ref().and_then(|id| self.rows.get(id)) {
            Some(r) => vec![
                Line::from(format!("{}  {}", clip(&r.name, 40), clip(&r.id.0, 90))),
                Line::from(match &r.insight.forecast {
                    Some(b) => format!(
                        "forecast cpu {:.2}-{:.2} cores (p50 {:.2})  memory {}-{}{}",
                        b[0].p10,
                        b[0].p90,
                        b[0].p50,
                        bytes(b[1].p10.max(0.0) as u64),
                        bytes(b[1].p90.max(0.0) as u64),
                        if r.insight.drifting {
                            "  DRIFTING: flagged for retraining"
                        } else {
                            ""
                        }
                    ),
                    None => "no forecast yet".into(),
                }),
            ],
            None => vec![Line::from("no workload selected")],
        };
        let mut detail_lines = detail_lines;
        if let Some(n) = &self.last_note {
            detail_lines.push(Line::from(clip(n, 200)).italic());
        }
        let help = if self.editing {
            format!("filter: {}▏ (Enter keep, Esc clear)", self.filter)
        } else {
            let f = if self.filter.is_empty() {
                String::new()
            } else {
                format!("  filter \"{}\"", self.filter)
            };
            format!(
                "q quit  c/m/i/n/r/p/a sort (again: reverse)  Tab next sort  / filter  space pause  j/k move{f}  sorted by {}",
                self.sort.name()
            )
        };

        f.render_widget(Paragraph::new(header), head);
        let widths: Vec<Constraint> = columns.iter().map(|c| c.1).collect();
        let table = Table::new(table_rows, widths)
            .header(
                Row::new(columns.iter().map(|c| Cell::from(c.0.clone())))
                    .style(Style::new().add_modifier(Modifier::REVERSED)),
            )
            .row_highlight_style(Style::new().add_modifier(Modifier::BOLD).on_dark_gray())
            .block(Block::new().borders(Borders::NONE));
        if shown == 0 {
            self.table.select(None);
        } else if self.table.selected().is_none_or(|i| i >= shown) {
            self.table.select(Some(shown - 1));
        }
        f.render_stateful_widget(table, body, &mut self.table);
        f.render_widget(
            Paragraph::new(detail_lines).block(Block::new().borders(Borders::TOP)),
            detail,
        );
        f.render_widget(Paragraph::new(help).reversed(), foot);
    }
}

fn clock(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02} UTC",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60
    )
}

fn dur(ns: Option<u64>) -> String {
    match ns {
        None => "-".into(),
        Some(n) if n < 1_000_000 => format!("{}us", n / 1_000),
        Some(n) if n < 1_000_000_000 => format!("{}ms", n / 1_000_000),
        Some(n) => format!("{:.1}s", n as f64 / 1e9),
    }
}
