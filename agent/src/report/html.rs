//! The report page: one self-contained HTML file, the plots inline as SVG.

use std::fmt::Write as _;

use super::{Recording, ReportError, ReportStats, plot, plotted};
use crate::{predict::Target, trace::bytes};

/// Text for HTML (names come from the system and may hold anything).
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if c.is_control() => o.push('\u{fffd}'),
            c => o.push(c),
        }
    }
    o
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;max-width:1000px;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{padding:2px 10px;border-bottom:1px solid #ddd;text-align:right}\
td:first-child,th:first-child{text-align:left}figure{margin:1em 0}figcaption{color:#555;font-size:90%}\
.anomaly{color:#c22}code{font-size:90%}";

/// Checks, once the page has loaded, that every plot was laid out with a size, and
/// records it (and any script error) on `<body>` for people and for the tests.
const CHECK: &str = "<script>\
window.addEventListener('error',function(e){document.body.dataset.error=(document.body.dataset.error||'')+e.message+';'});\
window.addEventListener('load',function(){var f=document.querySelectorAll('figure svg'),ok=0;\
for(var i=0;i<f.length;i++){var b=f[i].getBBox();if(b.width>0&&b.height>0)ok++;}\
document.body.dataset.plots=f.length;document.body.dataset.rendered=ok;});\
</script>";

pub fn page(rs: &[Recording]) -> Result<(String, ReportStats), ReportError> {
    let mut stats = ReportStats {
        recordings: rs.len(),
        ..Default::default()
    };
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Umbra report</title><style>{STYLE}</style></head><body>\n<h1>Umbra report</h1>\n"
    );
    let _ = writeln!(
        h,
        "<p>{} recording(s). Per busy workload: usage against the forecast band (shaded p10–p90, dashed p50), reservations, and anomalies (red marks).</p>",
        rs.len()
    );
    for (n, r) in rs.iter().enumerate() {
        let file = r.path.file_name().map_or_else(
            || r.path.display().to_string(),
            |f| f.to_string_lossy().into_owned(),
        );
        let _ = writeln!(
            h,
            "<section id=\"rec{n}\"><h2>{}</h2>\n<p>Node <code>{}</code>, kernel <code>{}</code>, {} intervals of {} ms ({:.0} s). Bands: {}.</p>",
            esc(&file),
            esc(&r.header.node),
            esc(&r.header.kernel),
            r.windows,
            r.header.interval_ms,
            r.duration_ms as f64 / 1000.0,
            esc(&r.forecaster)
        );
        let shown = plotted(r);
        h.push_str("<table><tr><th>workload</th><th>CPU s</th><th>peak CPU</th><th>peak RSS</th><th>in band (CPU)</th><th>tier</th><th>decisions</th><th>anomalies</th></tr>\n");
        for s in &shown {
            let _ = writeln!(
                h,
                "<tr><td title=\"{}\">{}</td><td>{:.1}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td{}>{}</td></tr>",
                esc(&s.workload.0),
                esc(&s.name),
                s.cpu_seconds(r.header.interval_ms),
                s.peak(Target::Cpu),
                bytes(s.peak(Target::Memory) as u64),
                s.coverage(Target::Cpu)
                    .map_or("-".into(), |c| format!("{:.0}%", c * 100.0)),
                esc(s.tier.as_deref().unwrap_or("-")),
                s.decisions.len(),
                if s.anomalies.is_empty() {
                    ""
                } else {
                    " class=\"anomaly\""
                },
                s.anomalies.len()
            );
        }
        let _ = writeln!(
            h,
            "</table><p>{} other workload(s) not plotted.</p>",
            r.workloads.len().saturating_sub(shown.len())
        );
        for s in &shown {
            let _ = writeln!(h, "<h3>{}</h3>", esc(&s.name));
            for t in [Target::Cpu, Target::Memory] {
                let svg = plot::usage_vs_band(s, t)?;
                stats.plots += 1;
                let _ = writeln!(
                    h,
                    "<figure>{svg}<figcaption>{} of <code>{}</code> against its forecast band.</figcaption></figure>",
                    if t == Target::Cpu { "CPU" } else { "Memory" },
                    esc(&s.workload.0)
                );
            }
            match plot::reserved_vs_used(s)? {
                Some(svg) => {
                    stats.plots += 1;
                    let _ = writeln!(
                        h,
                        "<figure>{svg}<figcaption>Used as a share of what was reserved.</figcaption></figure>"
                    );
                }
                None => h.push_str("<p>No reservations: Umbra did not manage this workload.</p>\n"),
            }
            if !s.anomalies.is_empty() {
                stats.anomalies += s.anomalies.len();
                h.push_str("<ul class=\"anomaly\">");
                for (ms, text) in s.anomalies.iter().take(20) {
                    let _ = write!(h, "<li>{:.0} s: {}</li>", *ms as f64 / 1000.0, esc(text));
                }
                h.push_str("</ul>\n");
            }
            if !s.decisions.is_empty() {
                h.push_str("<details><summary>Decisions</summary><ul>");
                for (ms, text) in s.decisions.iter().take(50) {
                    let _ = write!(h, "<li>{:.0} s: {}</li>", *ms as f64 / 1000.0, esc(text));
                }
                h.push_str("</ul></details>\n");
            }
        }
        h.push_str("</section>\n");
    }
    let _ = write!(h, "{CHECK}\n</body></html>\n");
    Ok((h, stats))
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn names_cannot_break_the_page() {
        assert_eq!(esc("<script>&\"'"), "&lt;script&gt;&amp;&quot;&#39;");
        assert_eq!(esc("a\u{1b}b"), "a\u{fffd}b");
    }
}
