//! Docker's stats JSON (`ContainerStats`, Engine API `GET /containers/<id>/stats`) built from our
//! last two samples, so a client that parses Docker's answer (the `docker stats` CLI, bollard,
//! the OpenTelemetry ECS detector) reads ours (task-metadata.md §6).
//!
//! Member presence follows Docker 20.10's Go types: `omitempty` members (`system_cpu_usage`,
//! `online_cpus`, `percpu_usage`, the memory and pids members) are left out when zero or empty,
//! the others are always there. What we do not read (`io_serviced_recursive` and the other
//! block-I/O lists) is `null`, as Docker writes them on cgroup v2.
//!
//! Pure: no I/O.

use serde_json::{Map, Value, json};

use super::cgroup::Sample;
use super::parse;

/// Go's zero `time.Time`, Docker's `preread` before a second sample.
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// RFC 3339 in UTC with nanoseconds, trailing zeros of the fraction dropped (Go's
/// `time.RFC3339Nano`, what Docker writes): `2026-07-01T12:00:01.1234Z`.
pub fn rfc3339_nanos(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let frac = unix_ns % 1_000_000_000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let mut s = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if frac != 0 {
        let f = format!(".{frac:09}");
        s.push_str(f.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

fn cpu_stats(s: Option<&Sample>) -> Value {
    let zero = Sample::default();
    let s = s.unwrap_or(&zero);
    let mut usage = Map::new();
    usage.insert("total_usage".into(), s.cpu_total.into());
    if !s.percpu.is_empty() {
        usage.insert("percpu_usage".into(), s.percpu.clone().into());
    }
    usage.insert("usage_in_kernelmode".into(), s.cpu_system.into());
    usage.insert("usage_in_usermode".into(), s.cpu_user.into());
    let mut o = Map::new();
    o.insert("cpu_usage".into(), usage.into());
    if s.system_cpu != 0 {
        o.insert("system_cpu_usage".into(), s.system_cpu.into());
    }
    if s.online_cpus != 0 {
        o.insert("online_cpus".into(), s.online_cpus.into());
    }
    let t = s.throttling.unwrap_or_default();
    o.insert(
        "throttling_data".into(),
        json!({"periods": t.periods, "throttled_periods": t.throttled_periods, "throttled_time": t.throttled_time}),
    );
    o.into()
}

fn memory_stats(s: &Sample) -> Value {
    let mut o = Map::new();
    if s.mem_usage != 0 {
        o.insert("usage".into(), s.mem_usage.into());
    }
    if let Some(m) = s.mem_max_usage.filter(|m| *m != 0) {
        o.insert("max_usage".into(), m.into());
    }
    let stats: Map<String, Value> = parse::memory_stat_pairs(&s.mem_stat)
        .map(|(k, v)| (k.to_owned(), v.into()))
        .collect();
    if !stats.is_empty() {
        o.insert("stats".into(), stats.into());
    }
    if let Some(l) = s.mem_limit.filter(|l| *l != 0) {
        o.insert("limit".into(), l.into());
    }
    o.into()
}

/// Docker's stats JSON for container `id` named `name` (Docker's name, with or without its
/// leading `/`), from its latest sample `last` and the one before, `prev`.
pub fn stats_json(name: &str, id: &str, last: &Sample, prev: Option<&Sample>) -> Value {
    let mut o = Map::new();
    o.insert("read".into(), rfc3339_nanos(last.read_ns).into());
    o.insert(
        "preread".into(),
        prev.map_or_else(|| ZERO_TIME.to_owned(), |p| rfc3339_nanos(p.read_ns))
            .into(),
    );
    o.insert(
        "pids_stats".into(),
        match last.pids.filter(|p| *p != 0) {
            Some(p) => json!({"current": p}),
            None => json!({}),
        },
    );
    let bytes: Vec<Value> = last
        .blk
        .iter()
        .map(|e| json!({"major": e.major, "minor": e.minor, "op": e.op, "value": e.value}))
        .collect();
    o.insert(
        "blkio_stats".into(),
        json!({
            "io_service_bytes_recursive": bytes,
            "io_serviced_recursive": null,
            "io_queue_recursive": null,
            "io_service_time_recursive": null,
            "io_wait_time_recursive": null,
            "io_merged_recursive": null,
            "io_time_recursive": null,
            "sectors_recursive": null,
        }),
    );
    o.insert("num_procs".into(), 0.into());
    o.insert("storage_stats".into(), json!({}));
    o.insert("cpu_stats".into(), cpu_stats(Some(last)));
    o.insert("precpu_stats".into(), cpu_stats(prev));
    o.insert("memory_stats".into(), memory_stats(last));
    let name = name.trim_start_matches('/');
    if !name.is_empty() {
        o.insert("name".into(), format!("/{name}").into());
    }
    o.insert("id".into(), id.into());
    if let Some(ifs) = last.net.as_ref().filter(|n| !n.is_empty()) {
        let nets: Map<String, Value> = ifs
            .iter()
            .map(|(name, c)| {
                (
                    name.clone(),
                    json!({
                        "rx_bytes": c.rx_bytes, "rx_packets": c.rx_packets,
                        "rx_errors": c.rx_errors, "rx_dropped": c.rx_dropped,
                        "tx_bytes": c.tx_bytes, "tx_packets": c.tx_packets,
                        "tx_errors": c.tx_errors, "tx_dropped": c.tx_dropped,
                    }),
                )
            })
            .collect();
        o.insert("networks".into(), nets.into());
    }
    o.into()
}
