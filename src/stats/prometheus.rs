//! The container stats' part of `/metrics` (Prometheus text): per tracked container its latest
//! CPU percent and memory as TCS counts them, its limit and cumulative CPU, block I/O and network
//! counters, labelled `name` (Docker's name) and `id` (Docker's id); and the collector's own
//! counters (rounds, file reads, the last round's duration).
//!
//! It renders what the last round recorded; it never reads a file.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use super::{Stats, lock};
use crate::api::MetricsSection;

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn head(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

impl MetricsSection for Stats {
    fn render(&self, out: &mut String) {
        // (labels, values) per container, taken under the lock, rendered after it.
        struct Row {
            labels: String,
            cpu_percent: f64,
            cpu_seconds: f64,
            memory: u64,
            limit: Option<u64>,
            read: u64,
            write: u64,
            net: Option<(u64, u64)>,
        }
        let mut rows: Vec<(String, Row)> = {
            let book = lock(&self.book);
            book.containers
                .iter()
                .filter_map(|(id, t)| {
                    let s = t.last.as_ref()?;
                    let p = t.ring.back()?;
                    let name = t.name.trim_start_matches('/');
                    Some((
                        name.to_owned(),
                        Row {
                            labels: format!("name=\"{}\",id=\"{}\"", escape(name), escape(id)),
                            cpu_percent: p.cpu_percent,
                            cpu_seconds: s.cpu_total as f64 / 1e9,
                            memory: p.memory_mib << 20,
                            limit: s.mem_limit,
                            read: s.blk_read,
                            write: s.blk_write,
                            net: p.net.map(|n| (n.counters.rx_bytes, n.counters.tx_bytes)),
                        },
                    ))
                })
                .collect()
        };
        rows.sort_by(|a, b| a.0.cmp(&b.0));

        let series = |out: &mut String,
                      name: &str,
                      help: &str,
                      kind: &str,
                      value: &dyn Fn(&Row) -> Option<String>| {
            head(out, name, help, kind);
            for (_, r) in &rows {
                if let Some(v) = value(r) {
                    let _ = writeln!(out, "{name}{{{}}} {v}", r.labels);
                }
            }
        };
        let gauge =
            |out: &mut String, name: &str, help: &str, value: &dyn Fn(&Row) -> Option<String>| {
                series(out, name, help, "gauge", value)
            };
        let counter =
            |out: &mut String, name: &str, help: &str, value: &dyn Fn(&Row) -> Option<String>| {
                series(out, name, help, "counter", value)
            };
        gauge(
            out,
            "ecs_hostd_container_cpu_percent",
            "CPU used since the previous sample, percent of all host CPUs (as TCS counts it).",
            &|r| (!r.cpu_percent.is_nan()).then(|| r.cpu_percent.to_string()),
        );
        gauge(
            out,
            "ecs_hostd_container_memory_bytes",
            "Memory used less page cache (as TCS counts it, whole MiB).",
            &|r| Some(r.memory.to_string()),
        );
        gauge(
            out,
            "ecs_hostd_container_memory_limit_bytes",
            "Memory limit (the host's memory when unlimited).",
            &|r| r.limit.map(|l| l.to_string()),
        );
        counter(
            out,
            "ecs_hostd_container_cpu_seconds_total",
            "CPU time used.",
            &|r| Some(r.cpu_seconds.to_string()),
        );
        counter(
            out,
            "ecs_hostd_container_blkio_read_bytes_total",
            "Bytes read from block devices.",
            &|r| Some(r.read.to_string()),
        );
        counter(
            out,
            "ecs_hostd_container_blkio_write_bytes_total",
            "Bytes written to block devices.",
            &|r| Some(r.write.to_string()),
        );
        counter(
            out,
            "ecs_hostd_container_network_receive_bytes_total",
            "Bytes received, all interfaces of the container's own network namespace.",
            &|r| r.net.map(|n| n.0.to_string()),
        );
        counter(
            out,
            "ecs_hostd_container_network_transmit_bytes_total",
            "Bytes sent, all interfaces of the container's own network namespace.",
            &|r| r.net.map(|n| n.1.to_string()),
        );

        let c = &self.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        head(
            out,
            "ecs_hostd_stats_rounds_total",
            "Container stats rounds taken.",
            "counter",
        );
        let _ = writeln!(out, "ecs_hostd_stats_rounds_total {}", load(&c.rounds));
        head(
            out,
            "ecs_hostd_stats_file_reads_total",
            "cgroup and /proc files read by the container stats collector.",
            "counter",
        );
        let _ = writeln!(out, "ecs_hostd_stats_file_reads_total {}", load(&c.reads));
        head(
            out,
            "ecs_hostd_stats_last_round_seconds",
            "Duration of the last container stats round.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "ecs_hostd_stats_last_round_seconds {}",
            load(&c.last_round_micros) as f64 / 1e6
        );
    }
}
