//! Shadow data points as CSV rows, for training and for spreadsheets.

use crate::aggregate::ShadowPoint;

pub const CSV_HEADER: &str = "timestamp_ms,interval_ms,workload,name,processes,\
execs,conn_accepted,conn_opened,net_rx_bytes,syscalls,\
cpu_ns,cpu_cores,voluntary_switches,involuntary_switches,runq_p50_ns,runq_p99_ns,\
rss_bytes,page_faults,read_bytes,write_bytes,block_read_bytes,block_write_bytes,block_p99_ns,\
net_tx_bytes,profile_net_rx_bytes,retransmits";

/// One CSV row; text fields are quoted, absent values are empty.
pub fn csv_row(p: &ShadowPoint) -> String {
    let o = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let (i, r) = (&p.input, &p.profile);
    format!(
        "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
        p.timestamp_ms,
        p.interval_ms,
        q(&p.workload.0),
        q(&p.name),
        p.processes,
        i.execs,
        i.conn_accepted,
        i.conn_opened,
        i.net_rx_bytes,
        i.syscalls,
        r.cpu_ns,
        r.cpu_cores,
        r.voluntary_switches,
        r.involuntary_switches,
        o(r.runq_p50_ns),
        o(r.runq_p99_ns),
        r.rss_bytes,
        r.page_faults,
        r.read_bytes,
        r.write_bytes,
        r.block_read_bytes,
        r.block_write_bytes,
        o(r.block_p99_ns),
        r.net_tx_bytes,
        r.net_rx_bytes,
        r.retransmits,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{ProductionInput, ResourceProfile, WorkloadId};

    #[test]
    fn a_row_has_as_many_fields_as_the_header_and_quotes_text() {
        let p = ShadowPoint {
            timestamp_ms: 1,
            interval_ms: 1000,
            workload: WorkloadId("exe:sha256:ab".into()),
            name: "we\"ird,name".into(),
            processes: 2,
            input: ProductionInput::default(),
            profile: ResourceProfile::default(),
        };
        let row = csv_row(&p);
        assert!(row.contains("\"we\"\"ird,name\""));
        let unquoted = row.replace("\"we\"\"ird,name\"", "x");
        assert_eq!(unquoted.split(',').count(), CSV_HEADER.split(',').count());
    }
}
