//! The metrics subsystem's part of `/metrics` (Prometheus text): the latest host sample of every
//! `cwagent` memory, swap and disk metric (all of them, not only the CloudWatch defaults: scraping
//! costs nothing), and the pipeline's own counters (spool depth, drops by cause, failed requests
//! by class, last success, agent starts).
//!
//! It renders snapshots the collector and sender publish; it never collects or sends anything.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::catalogue::{Sample, Unit};
use super::cloudwatch::ErrorClass;
use super::mounts::Filesystem;
use super::pipeline::Counters;
use crate::api::MetricsSection;

/// The latest host values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostView {
    /// Memory and swap samples.
    pub host: Vec<Sample>,
    /// Per filesystem.
    pub disks: Vec<(Filesystem, Vec<Sample>)>,
    /// Unix ms of the pass.
    pub timestamp_ms: i64,
}

/// The `/metrics` section of the metrics subsystem.
#[derive(Clone)]
pub struct Section {
    /// Pipeline counters.
    pub counters: Arc<Counters>,
    /// Latest host values.
    pub view: Arc<Mutex<HostView>>,
    /// Process starts recorded in the store.
    pub starts: u64,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn metric_name(s: &Sample) -> String {
    match s.unit {
        Unit::Bytes if !s.name.ends_with("_bytes") => format!("ecs_hostd_{}_bytes", s.name),
        _ => format!("ecs_hostd_{}", s.name),
    }
}

impl MetricsSection for Section {
    fn render(&self, out: &mut String) {
        let view = self.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut typed: Vec<String> = Vec::new();
        let mut head = |out: &mut String, name: &str, help: &str, kind: &str| {
            if !typed.iter().any(|t| t == name) {
                typed.push(name.to_owned());
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            }
        };
        for s in &view.host {
            let name = metric_name(s);
            head(
                out,
                &name,
                &format!("Host {} (as the CloudWatch agent computes it).", s.name),
                "gauge",
            );
            let _ = writeln!(out, "{name} {}", s.value);
        }
        for (fs, samples) in &view.disks {
            for s in samples {
                let name = metric_name(s);
                head(
                    out,
                    &name,
                    &format!(
                        "Filesystem {} (as the CloudWatch agent computes it).",
                        s.name
                    ),
                    "gauge",
                );
                let _ = writeln!(
                    out,
                    "{name}{{path=\"{}\",device=\"{}\",fstype=\"{}\"}} {}",
                    escape(&fs.mount_point),
                    escape(&fs.device),
                    escape(&fs.fstype),
                    s.value
                );
            }
        }

        let c = &self.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let mut counter = |out: &mut String, name: &str, help: &str, value: u64| {
            head(out, name, help, "counter");
            let _ = writeln!(out, "{name} {value}");
        };
        counter(
            out,
            "ecs_hostd_metrics_passes_total",
            "Collection passes taken.",
            load(&c.passes),
        );
        counter(
            out,
            "ecs_hostd_metrics_requests_total",
            "PutMetricData requests CloudWatch accepted.",
            load(&c.requests),
        );
        counter(
            out,
            "ecs_hostd_metrics_datums_sent_total",
            "Datums CloudWatch accepted.",
            load(&c.datums_sent),
        );
        counter(
            out,
            "ecs_hostd_metrics_bytes_sent_total",
            "Estimated uncompressed bytes of accepted requests.",
            load(&c.bytes_sent),
        );
        counter(
            out,
            "ecs_hostd_agent_starts_total",
            "Agent process starts recorded in the data directory.",
            self.starts,
        );
        head(
            out,
            "ecs_hostd_metrics_requests_failed_total",
            "Failed PutMetricData requests by class.",
            "counter",
        );
        for class in [
            ErrorClass::Transient,
            ErrorClass::Throttled,
            ErrorClass::Auth,
            ErrorClass::Invalid,
        ] {
            let _ = writeln!(
                out,
                "ecs_hostd_metrics_requests_failed_total{{class=\"{}\"}} {}",
                class.as_str(),
                c.failed(class)
            );
        }
        head(
            out,
            "ecs_hostd_metrics_datums_dropped_total",
            "Datums dropped by cause.",
            "counter",
        );
        for (cause, v) in [
            ("overflow", load(&c.dropped_overflow)),
            ("age", load(&c.dropped_age)),
            ("invalid", load(&c.dropped_invalid)),
        ] {
            let _ = writeln!(
                out,
                "ecs_hostd_metrics_datums_dropped_total{{cause=\"{cause}\"}} {v}"
            );
        }
        head(
            out,
            "ecs_hostd_metrics_spool_datums",
            "Datums waiting in the durable spool.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "ecs_hostd_metrics_spool_datums {}",
            load(&c.spool_depth)
        );
        head(
            out,
            "ecs_hostd_metrics_last_success_timestamp_seconds",
            "Time of the last accepted PutMetricData (0 = never).",
            "gauge",
        );
        let _ = writeln!(
            out,
            "ecs_hostd_metrics_last_success_timestamp_seconds {}",
            c.last_success_ms.load(Ordering::Relaxed) as f64 / 1000.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_host_values_and_counters_in_text_format() {
        let counters = Arc::new(Counters::default());
        counters.spool_depth.store(12, Ordering::Relaxed);
        counters.failed[1].store(3, Ordering::Relaxed);
        let view = HostView {
            host: vec![
                Sample {
                    name: "mem_used_percent",
                    unit: Unit::Percent,
                    value: 42.5,
                },
                Sample {
                    name: "mem_cached",
                    unit: Unit::Bytes,
                    value: 3_481_600_000.0,
                },
            ],
            disks: vec![(
                Filesystem {
                    mount_point: "/var/lib/docker".into(),
                    source: "/dev/nvme1n1".into(),
                    device: "nvme1n1".into(),
                    fstype: "ext4".into(),
                },
                vec![Sample {
                    name: "disk_used_percent",
                    unit: Unit::Percent,
                    value: 52.5,
                }],
            )],
            timestamp_ms: 0,
        };
        let s = Section {
            counters,
            view: Arc::new(Mutex::new(view)),
            starts: 3,
        };
        let mut out = String::new();
        s.render(&mut out);
        assert!(out.contains("ecs_hostd_mem_used_percent 42.5\n"), "{out}");
        assert!(
            out.contains("ecs_hostd_mem_cached_bytes 3481600000\n"),
            "{out}"
        );
        assert!(out.contains("ecs_hostd_disk_used_percent{path=\"/var/lib/docker\",device=\"nvme1n1\",fstype=\"ext4\"} 52.5\n"), "{out}");
        assert!(out.contains("ecs_hostd_metrics_spool_datums 12\n"));
        assert!(out.contains("ecs_hostd_metrics_requests_failed_total{class=\"throttled\"} 3\n"));
        assert!(out.contains("ecs_hostd_agent_starts_total 3\n"));
        // Every sample line belongs to a declared metric.
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(out.contains(&format!("# TYPE {name} ")), "{name}");
        }
    }
}
