//! The pure half of the benchmarks: percentiles, the agent's start-milestones log line, /proc
//! parsing, and the budget table (figure, value, budget, pass/miss, method). It owns arithmetic
//! and formatting only; it never starts a process, reads a file or talks to Docker.
//!
//! Shared by `benches/e2e_burst.rs` and `benches/budget.rs` (through `benches/support`), and
//! unit-tested by `tests/bench_report.rs`, which includes this file, so `cargo test
//! --all-targets` checks it.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::time::Duration;

/// A percentile of `sorted` (ascending): the sample at rank round((n − 1) · p), so p50 of an
/// even count is the upper middle sample and p99 of 50 samples is the largest. Zero when empty.
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p.clamp(0.0, 1.0)).round() as usize;
    sorted[idx]
}

/// p50, p99 and max of a sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub n: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Summary {
    pub fn of(samples: &[Duration]) -> Summary {
        let mut v = samples.to_vec();
        v.sort();
        Summary {
            n: v.len(),
            p50: pct(&v, 0.50),
            p99: pct(&v, 0.99),
            max: v.last().copied().unwrap_or_default(),
        }
    }

    /// `p50 / p99` in milliseconds.
    pub fn p50_p99_ms(&self) -> String {
        format!("{} / {}", ms(self.p50), ms(self.p99))
    }
}

/// A duration in milliseconds, without decimals above 10 ms.
pub fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1e3;
    if v >= 10.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}

/// One task's start milestones, from the agent's `Task start milestones.` DEBUG line (target
/// `ecs_hostd::ecs::report::milestones`, `src/ecs/report.rs`). Intervals are from the payload's arrival.
#[derive(Clone, Debug, PartialEq)]
pub struct Milestone {
    pub task_arn: String,
    /// Wall clock of the payload's arrival, µs since the Unix epoch.
    pub payload_unix_us: u64,
    pub to_delivered: Duration,
    /// Payload → the engine queued RUNNING (every container of the task running).
    pub to_running: Duration,
    /// Payload → ECS accepted the RUNNING report.
    pub to_accepted: Duration,
}

/// The message of the milestones line.
pub const MILESTONES_MESSAGE: &str = "Task start milestones.";

/// Every milestones line in an agent log (human-readable tracing format: `key=value` fields).
pub fn parse_milestones(log: &str) -> Vec<Milestone> {
    log.lines()
        .filter(|l| l.contains(MILESTONES_MESSAGE))
        .filter_map(|line| {
            let field = |key: &str| -> Option<&str> {
                let start = line.find(&format!(" {key}="))? + key.len() + 2;
                line[start..].split_whitespace().next()
            };
            let dur = |key: &str| -> Option<Duration> {
                let v: f64 = field(key)?.parse().ok()?;
                (v >= 0.0).then(|| Duration::from_secs_f64(v / 1e3))
            };
            Some(Milestone {
                task_arn: field("task.arn")?.to_owned(),
                payload_unix_us: field("payload_unix_us")?.parse().ok()?,
                to_delivered: dur("payload_to_delivered_ms")?,
                to_running: dur("payload_to_running_ms")?,
                to_accepted: dur("payload_to_accepted_ms")?,
            })
        })
        .collect()
}

/// Wall time from the first payload to the last task whose engine reached all-RUNNING.
pub fn first_payload_to_last_running(m: &[&Milestone]) -> Duration {
    let first = m.iter().map(|m| m.payload_unix_us).min().unwrap_or(0);
    let last = m
        .iter()
        .map(|m| m.payload_unix_us + m.to_running.as_micros() as u64)
        .max()
        .unwrap_or(first);
    Duration::from_micros(last.saturating_sub(first))
}

/// utime + stime in clock ticks from the text of `/proc/<pid>/stat`.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces: count from the closing parenthesis.
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// A `kB` field (`VmRSS:`, `VmHWM:`) from the text of `/proc/<pid>/status`, in KiB.
pub fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// One slice of an idle window: the agent's CPU ticks in it and the container events of other
/// processes' ECS-labelled containers in it (on a shared machine the engine re-lists Docker
/// after each such event, which is not idleness).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slice {
    pub ticks: u64,
    pub events: u64,
    pub millis: u64,
}

/// The slices free of that cross-talk: no event in the slice nor in the one before (the engine
/// re-lists up to 1 s after an event). Returns (their ticks, their count, their milliseconds).
pub fn quiet_slices(slices: &[Slice]) -> (u64, usize, u64) {
    let mut ticks = 0;
    let mut n = 0;
    let mut millis = 0;
    for (i, s) in slices.iter().enumerate() {
        let before = if i == 0 { 0 } else { slices[i - 1].events };
        if s.events == 0 && before == 0 {
            ticks += s.ticks;
            n += 1;
            millis += s.millis;
        }
    }
    (ticks, n, millis)
}

/// The verdict on one figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Miss,
    /// Not measured in this run (say why in the value).
    NotMeasured,
    /// A figure reported for comparison, with no budget of its own.
    Info,
}

impl Verdict {
    /// Pass when `value <= limit`.
    pub fn at_most(value: f64, limit: f64) -> Verdict {
        if value <= limit {
            Verdict::Pass
        } else {
            Verdict::Miss
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Miss => "**MISS**",
            Verdict::NotMeasured => "not measured",
            Verdict::Info => "reported",
        }
    }
}

/// One row of the budget table.
#[derive(Clone, Debug)]
pub struct Row {
    pub figure: String,
    pub value: String,
    pub budget: String,
    pub verdict: Verdict,
    pub method: String,
}

/// The budget table as Markdown.
pub fn render(rows: &[Row]) -> String {
    let mut out = String::from("| figure | measured | budget | verdict | method |\n");
    out.push_str("|---|---|---|---|---|\n");
    for r in rows {
        let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            cell(&r.figure),
            cell(&r.value),
            cell(&r.budget),
            r.verdict.as_str(),
            cell(&r.method)
        );
    }
    out
}

/// One TCS metrics collection as ec2sim recorded it: the `PublishMetricsRequest` frames sharing a
/// `metadata.messageId` (tcs.md §3.1, §5).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Collection {
    pub message_id: String,
    pub frames: usize,
    /// Every frame says `idle: true` (nothing sampled, or metrics disabled).
    pub idle: bool,
    /// Its last frame (in arrival order) has `fin: true`, and no other frame has.
    pub fin_last: bool,
    /// The task ARNs its frames carried.
    pub tasks: std::collections::BTreeSet<String>,
}

/// Groups ec2sim's `/ec2sim/tcs/frames` records (oldest first) of type `PublishMetricsRequest`
/// into collections, in the order their first frame arrived.
pub fn tcs_collections(frames: &[serde_json::Value]) -> Vec<Collection> {
    let mut out: Vec<Collection> = Vec::new();
    let mut fins: Vec<Vec<bool>> = Vec::new();
    for f in frames {
        if f["type"] != "PublishMetricsRequest" {
            continue;
        }
        let m = &f["message"];
        let id = m["metadata"]["messageId"].as_str().unwrap_or_default();
        let i = match out.iter().position(|c| c.message_id == id) {
            Some(i) => i,
            None => {
                out.push(Collection {
                    message_id: id.to_owned(),
                    idle: true,
                    ..Default::default()
                });
                fins.push(Vec::new());
                out.len() - 1
            }
        };
        let c = &mut out[i];
        c.frames += 1;
        c.idle &= m["metadata"]["idle"] == true;
        fins[i].push(m["metadata"]["fin"] == true);
        for t in m["taskMetrics"].as_array().into_iter().flatten() {
            if let Some(arn) = t["taskArn"].as_str() {
                c.tasks.insert(arn.to_owned());
            }
        }
    }
    for (c, f) in out.iter_mut().zip(fins) {
        c.fin_last = f.last() == Some(&true) && f.iter().filter(|x| **x).count() == 1;
    }
    out
}

/// Per cent of one core from CPU nanoseconds over a window.
pub fn pct_core(ns: u64, window: Duration) -> f64 {
    ns as f64 / 1e9 / window.as_secs_f64().max(1e-9) * 100.0
}

/// MiB with one decimal, from KiB.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn percentiles_use_the_rounded_rank() {
        assert_eq!(pct(&[], 0.5), Duration::ZERO);
        assert_eq!(pct(&[d(7)], 0.99), d(7));
        let v: Vec<Duration> = (1..=50).map(d).collect();
        assert_eq!(pct(&v, 0.5), d(26)); // rank round(24.5) = 25 → 26 ms
        assert_eq!(pct(&v, 0.99), d(50)); // rank round(48.51) = 49
        assert_eq!(pct(&v, 0.0), d(1));
        let v: Vec<Duration> = (1..=200).map(d).collect();
        assert_eq!(pct(&v, 0.99), d(198)); // rank round(197.01) = 197
        let s = Summary::of(&[d(30), d(10), d(20)]);
        assert_eq!((s.n, s.p50, s.p99, s.max), (3, d(20), d(30), d(30)));
        assert_eq!(s.p50_p99_ms(), "20 ms / 30 ms");
        assert_eq!(ms(Duration::from_micros(2500)), "2.5 ms");
    }

    #[test]
    fn milestones_lines_are_parsed_and_others_ignored() {
        let log = "\
2026-12-05T08:00:00.000001Z DEBUG ecs_hostd::ecs::report: State change accepted. task.arn=x
2026-12-05T08:00:00.000002Z DEBUG Task start milestones. task.arn=arn:aws:ecs:us-east-1:1:task/c/a payload_unix_us=1000000 payload_to_delivered_ms=1.5 payload_to_running_ms=250.25 payload_to_accepted_ms=262
2026-12-05T08:00:00.000003Z DEBUG Task start milestones. task.arn=arn:b payload_unix_us=1100000 payload_to_delivered_ms=2 payload_to_running_ms=-1 payload_to_accepted_ms=300
2026-12-05T08:00:00.000004Z DEBUG Task start milestones. task.arn=arn:c payload_unix_us=1200000 payload_to_delivered_ms=2 payload_to_running_ms=400 payload_to_accepted_ms=410
";
        let m = parse_milestones(log);
        // The line with an unknown interval (-1) is dropped rather than read as zero.
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].task_arn, "arn:aws:ecs:us-east-1:1:task/c/a");
        assert_eq!(m[0].payload_unix_us, 1_000_000);
        assert_eq!(m[0].to_delivered, Duration::from_micros(1500));
        assert_eq!(m[0].to_running, Duration::from_micros(250_250));
        assert_eq!(m[0].to_accepted, d(262));
        // First payload at 1.0 s; last running at 1.2 s + 400 ms.
        let refs: Vec<&Milestone> = m.iter().collect();
        assert_eq!(first_payload_to_last_running(&refs), d(600));
    }

    #[test]
    fn proc_fields_are_read() {
        let stat = "4242 (ecs hostd) S 1 4242 4242 0 -1 4194560 100 0 0 0 123 45 0 0 20 0 4 0";
        assert_eq!(stat_cpu_ticks(stat), Some(168));
        assert_eq!(stat_cpu_ticks("garbage"), None);
        let status = "Name:\tecs-hostd\nVmHWM:\t   12000 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(10240));
        assert_eq!(status_kib(status, "VmHWM"), Some(12000));
        assert_eq!(status_kib(status, "VmSwap"), None);
        assert_eq!(mib(15 * 1024), "15.0 MiB");
    }

    #[test]
    fn quiet_slices_skip_events_and_the_slice_after() {
        let sl = |ticks, events| Slice {
            ticks,
            events,
            millis: 10_000,
        };
        assert_eq!(quiet_slices(&[]), (0, 0, 0));
        let mut v = vec![sl(1, 0), sl(5, 2), sl(4, 0), sl(2, 0), sl(3, 0)];
        v[4].millis = 5_000; // a shorter last slice
        // Slice 1 has events, slice 2 follows it: both excluded.
        assert_eq!(quiet_slices(&v), (1 + 2 + 3, 3, 25_000));
        assert_eq!(quiet_slices(&[sl(7, 1)]), (0, 0, 0));
    }

    #[test]
    fn tcs_frames_group_into_collections() {
        let frame = |id: &str, idle: bool, fin: bool, tasks: &[&str]| {
            let mut m =
                serde_json::json!({"metadata": {"messageId": id, "idle": idle, "fin": fin}});
            if !tasks.is_empty() {
                m["taskMetrics"] = tasks
                    .iter()
                    .map(|t| serde_json::json!({"taskArn": t, "containerMetrics": []}))
                    .collect();
            }
            serde_json::json!({"type": "PublishMetricsRequest", "message": m})
        };
        let frames = vec![
            frame("a", false, false, &["t1", "t2"]),
            serde_json::json!({"type": "PublishHealthRequest", "message": {}}),
            frame("a", false, true, &["t3"]),
            frame("b", true, true, &[]),
            frame("c", false, true, &["t1"]),
            frame("c", false, true, &["t2"]),
        ];
        let c = tcs_collections(&frames);
        assert_eq!(c.len(), 3);
        assert_eq!((c[0].frames, c[0].idle, c[0].fin_last), (2, false, true));
        assert_eq!(c[0].tasks.iter().collect::<Vec<_>>(), ["t1", "t2", "t3"]);
        assert_eq!((c[1].frames, c[1].idle, c[1].tasks.len()), (1, true, 0));
        // Two frames with `fin`: not a well-formed collection.
        assert!(!c[2].fin_last);
        assert!(tcs_collections(&[]).is_empty());
        assert!((pct_core(300_000_000, Duration::from_secs(60)) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn table_has_one_row_per_figure_with_verdicts() {
        assert_eq!(Verdict::at_most(15.0, 15.0), Verdict::Pass);
        assert_eq!(Verdict::at_most(15.1, 15.0), Verdict::Miss);
        let rows = vec![
            Row {
                figure: "binary".into(),
                value: "9.1 MB".into(),
                budget: "≤ 15 MB".into(),
                verdict: Verdict::Pass,
                method: "stat | size".into(),
            },
            Row {
                figure: "cpu".into(),
                value: "skipped".into(),
                budget: "≤ 0.05 %".into(),
                verdict: Verdict::NotMeasured,
                method: "m".into(),
            },
        ];
        let t = render(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[0],
            "| figure | measured | budget | verdict | method |"
        );
        assert_eq!(
            lines[2],
            "| binary | 9.1 MB | ≤ 15 MB | pass | stat \\| size |"
        );
        assert!(lines[3].contains("| not measured |"));
        let miss = Row {
            verdict: Verdict::Miss,
            ..rows[0].clone()
        };
        assert!(render(&[miss]).contains("**MISS**"));
    }
}
