//! `umbra sub`: subscribe to a fleet's topics, decode every message and print it — a
//! line for people, or one JSON object a line (`--json`: `{"topic":…,"envelope":…}`).

use std::{io::Write, time::Duration};

use rumqttc::{Event, Packet, QoS};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    publish::{Body, Envelope, PublishError, Security, Topics, client::fleet_client},
    view::clip,
};

/// What to subscribe to; `None` is every fleet, node or kind.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub fleet: Option<String>,
    pub node: Option<String>,
    pub kind: Option<String>,
}

impl Filter {
    pub fn topic(&self) -> String {
        format!(
            "umbra/v1/{}/{}/{}",
            self.fleet.as_deref().unwrap_or("+"),
            self.node.as_deref().unwrap_or("+"),
            self.kind.as_deref().unwrap_or("#"),
        )
    }
}

/// Prints messages until `shutdown`, or until `count` have been printed.
pub async fn run<W: Write>(
    url: &str,
    security: &Security,
    filter: &Filter,
    json: bool,
    count: Option<u64>,
    mut out: W,
    shutdown: CancellationToken,
) -> Result<(), PublishError> {
    let id = format!("umbra-sub-{}", std::process::id());
    let (client, mut events) = fleet_client(url, id, security, 16, |_| {})?;
    let topic = filter.topic();
    let mut printed = 0u64;
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            ev = events.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                info!(topic, "Subscribed");
                client
                    .try_subscribe(topic.clone(), QoS::AtLeastOnce)
                    .map_err(|e| PublishError::Broker {
                        url: url.into(),
                        message: e.to_string(),
                    })?;
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let line = render(&p.topic, &p.payload, json);
                writeln!(out, "{line}").map_err(|e| PublishError::Broker {
                    url: url.into(),
                    message: format!("writing output: {e}"),
                })?;
                let _ = out.flush();
                printed += 1;
                if count.is_some_and(|c| printed >= c) {
                    return Ok(());
                }
            }
            Ok(_) => {}
            Err(e) => {
                warn!(broker = url, error = %e, "Broker unreachable; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// One message as a line. Undecodable payloads are shown as such, never fatal.
pub fn render(topic: &str, payload: &[u8], json: bool) -> String {
    let env = Envelope::decode(payload);
    if json {
        let v = match &env {
            Ok(e) => serde_json::json!({
                "topic": topic,
                "envelope": serde_json::from_slice::<serde_json::Value>(
                    &e.encode(crate::publish::Payload::Json)
                ).unwrap_or_default(),
            }),
            Err(err) => serde_json::json!({
                "topic": topic,
                "error": err.to_string(),
                "bytes": payload.len(),
            }),
        };
        return v.to_string();
    }
    let Ok(e) = env else {
        let err = env.err().map(|e| e.to_string()).unwrap_or_default();
        return format!("{topic}: undecodable ({} bytes): {err}", payload.len());
    };
    let node = Topics::parse(topic).map_or(e.node.as_str(), |(_, n, _)| n);
    let hist = if e.historical { " historical" } else { "" };
    let head = format!("{node} #{}{hist}", e.seq);
    match &e.body {
        Body::Summary(s) => {
            let top: Vec<String> = s
                .workloads
                .iter()
                .take(3)
                .map(|w| format!("{} {:.2}", w.name, w.cpu_cores_mean))
                .collect();
            let ended: Vec<bool> = s.requests.iter().filter_map(|r| r.within_cpu()).collect();
            let within = ended.iter().filter(|w| **w).count();
            let requests = if s.requests.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} requests, {} ended ({within} within their CPU p10–p90)",
                    s.requests.len() + s.requests_omitted as usize,
                    ended.len()
                )
            };
            format!(
                "{head} summary {} s: cpu {:.2}/{} cores, {} workloads; top {}{requests}",
                s.period_ms / 1000,
                s.node.cpu_busy_mean,
                s.node.cpus,
                s.node.workloads,
                top.join(", ")
            )
        }
        Body::Status(s) => format!(
            "{head} status {} mode {} uptime {} s, spool {} pending / {} dropped, capture drops {}{}",
            if s.online { "online" } else { "OFFLINE" },
            s.mode,
            s.uptime_s,
            s.spool.pending,
            s.spool.dropped,
            s.capture_drops,
            s.model
                .as_ref()
                .map(|m| format!(", model {} {}", m.name, m.version))
                .unwrap_or_default(),
        ),
        Body::CmdResult(r) => format!(
            "{head} {} {}: {}{}",
            if r.ok { "ok" } else { "REFUSED" },
            r.topic,
            r.message,
            r.id.as_ref()
                .map(|i| format!(" (id {i})"))
                .unwrap_or_default(),
        ),
        Body::Decisions(d) => {
            let mut s = format!(
                "{head} decision {} ({}{})",
                d.decisions.len(),
                d.mode,
                if d.omitted > 0 {
                    format!(", {} more omitted", d.omitted)
                } else {
                    String::new()
                }
            );
            for r in &d.decisions {
                s.push_str("\n  ");
                s.push_str(&crate::view::clip(&r.text, 400));
            }
            s
        }
        Body::Anomaly(a) => format!("{head} ANOMALY {}: {}", a.kind, clip(&a.text, 300)),
        Body::Profiles(p) => {
            let mut s = format!(
                "{head} profiles {}{}",
                p.profiles.len(),
                if p.more > 0 {
                    format!(" ({} more to come)", p.more)
                } else {
                    String::new()
                }
            );
            for r in &p.profiles {
                s.push_str(&format!(
                    "\n  {} ({} runs, {} kept): cpu {:.2} s, peak RSS {:.1} MiB, {:.2} s (p50)",
                    clip(&r.name, 40),
                    r.total_runs,
                    r.runs,
                    r.cpu_seconds[1],
                    r.peak_rss_bytes[1] / 1_048_576.0,
                    r.duration_seconds[1],
                ));
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::{CmdResult, Payload, SCHEMA};

    #[test]
    fn lines_for_people_and_for_tools() {
        let e = Envelope {
            schema: SCHEMA,
            node: "n1".into(),
            seq: 4,
            time_ms: 1,
            historical: true,
            body: Body::CmdResult(CmdResult {
                id: Some("x".into()),
                topic: "t".into(),
                ok: false,
                message: "bad".into(),
            }),
        };
        let line = render(
            "umbra/v1/f/n1/cmd/result",
            &e.encode(Payload::Postcard),
            false,
        );
        assert_eq!(line, "n1 #4 historical REFUSED t: bad (id x)");
        let j: serde_json::Value = serde_json::from_str(&render(
            "umbra/v1/f/n1/cmd/result",
            &e.encode(Payload::Postcard),
            true,
        ))
        .unwrap();
        assert_eq!(j["envelope"]["kind"], "cmd/result");
        assert_eq!(j["envelope"]["seq"], 4);
        assert!(render("x", b"\x00garbage", false).contains("undecodable"));
        let p = Envelope {
            body: Body::Profiles(crate::publish::Profiles {
                profiles: vec![crate::publish::ProfileRow {
                    name: "xz".into(),
                    runs: 3,
                    total_runs: 80,
                    cpu_seconds: [1.0, 2.5, 4.0],
                    peak_rss_bytes: [0.0, 3_145_728.0, 0.0],
                    duration_seconds: [0.0, 1.25, 0.0],
                    ..Default::default()
                }],
                more: 2,
            }),
            ..e.clone()
        };
        assert_eq!(
            render("umbra/v1/f/n1/profiles", &p.encode(Payload::Json), false),
            "n1 #4 historical profiles 1 (2 more to come)\n  xz (80 runs, 3 kept): cpu 2.50 s, \
             peak RSS 3.0 MiB, 1.25 s (p50)"
        );
        let request = |used: Option<f32>| crate::publish::RequestSummary {
            cpu_seconds: [1.0, 2.0, 3.0],
            used: used.map(|cpu_seconds| crate::publish::RequestUse {
                cpu_seconds,
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = Envelope {
            body: Body::Summary(crate::publish::Summary {
                period_ms: 10_000,
                requests: vec![request(None), request(Some(2.5)), request(Some(3.5))],
                requests_omitted: 1,
                ..Default::default()
            }),
            ..e.clone()
        };
        assert_eq!(
            render("umbra/v1/f/n1/summary", &s.encode(Payload::Postcard), false),
            "n1 #4 historical summary 10 s: cpu 0.00/0 cores, 0 workloads; top ; 4 requests, 2 \
             ended (1 within their CPU p10–p90)"
        );
        assert_eq!(
            Filter {
                fleet: Some("f".into()),
                ..Default::default()
            }
            .topic(),
            "umbra/v1/f/+/#"
        );
    }
}
