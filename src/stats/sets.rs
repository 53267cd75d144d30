//! The TCS figures: one [`Point`] per sample (tcs.md §6.2) and the stats sets over the points not
//! yet sent (§6.3), serialised exactly as `PublishMetricsRequest` carries them (§3.1).
//!
//! Pure: no I/O, no clock.

use std::collections::VecDeque;

use serde::{Serialize, Serializer};

use super::cgroup::Sample;
use super::parse::IfCounters;

/// A container's figures at one sample, as TCS counts them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// CPU percent of all host CPUs (100 = every CPU busy); NaN for the first sample and after
    /// a counter went backwards (the container restarted).
    pub cpu_percent: f64,
    /// Memory in MiB: usage less `cache` (v1) or `inactive_file` (v2) when that is smaller.
    pub memory_mib: u64,
    /// Bytes read from block devices, cumulative.
    pub read_bytes: u64,
    /// Bytes written to block devices, cumulative.
    pub write_bytes: u64,
    /// Network counters summed over the interfaces, and receive/send rates, when the container
    /// has a network of its own.
    pub net: Option<NetPoint>,
    /// Already part of a collection (tcs.md §6.3: marked at collection time, not on ack).
    pub sent: bool,
}

/// Network figures of one sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NetPoint {
    /// Cumulative counters, all interfaces.
    pub counters: IfCounters,
    /// Received bytes per second since the previous sample (NaN for the first).
    pub rx_bps: f64,
    /// Sent bytes per second since the previous sample (NaN for the first).
    pub tx_bps: f64,
}

/// Δ`counter` per ns of Δt, with the rules tcs.md §6.2 gives the CPU percent (and we give the
/// byte rates too): `None` for a duplicate (or earlier) timestamp, whose value repeats the
/// previous one; NaN for a counter that went backwards (the container restarted).
fn per_ns(now: u64, before: u64, dt_ns: i128) -> Option<f64> {
    if dt_ns <= 0 {
        None
    } else if now < before {
        Some(f64::NAN)
    } else {
        Some((now - before) as f64 / dt_ns as f64)
    }
}

/// The point of sample `s`, given the previous sample and its point.
pub fn point(prev: Option<(&Sample, &Point)>, s: &Sample) -> Point {
    let n = u64::from(s.online_cpus.max(1));
    let memory = match s.mem_reclaimable {
        Some(r) if r < s.mem_usage => s.mem_usage - r,
        _ => s.mem_usage,
    };
    let sum = s.net_sum();
    let (cpu_percent, net) = match prev {
        None => (
            f64::NAN,
            sum.map(|counters| NetPoint {
                counters,
                rx_bps: f64::NAN,
                tx_bps: f64::NAN,
            }),
        ),
        Some((ps, pp)) => {
            let dt = i128::from(s.read_ns) - i128::from(ps.read_ns);
            // 100 × Δ(total / N) / Δt, N dividing each total (integer division, as upstream).
            let cpu =
                per_ns(s.cpu_total / n, ps.cpu_total / n, dt).map_or(pp.cpu_percent, |r| 100.0 * r);
            let net = sum.map(|counters| {
                let before = pp.net.map(|n| (n.counters, n.rx_bps, n.tx_bps));
                let (rx_bps, tx_bps) = match before {
                    Some((b, rx, tx)) => (
                        per_ns(counters.rx_bytes, b.rx_bytes, dt).map_or(rx, |r| r * 1e9),
                        per_ns(counters.tx_bytes, b.tx_bytes, dt).map_or(tx, |r| r * 1e9),
                    ),
                    None => (f64::NAN, f64::NAN),
                };
                NetPoint {
                    counters,
                    rx_bps,
                    tx_bps,
                }
            });
            (cpu, net)
        }
    };
    Point {
        cpu_percent,
        memory_mib: memory >> 20,
        read_bytes: s.blk_read,
        write_bytes: s.blk_write,
        net,
        sent: false,
    }
}

/// Go's `encoding/json` writes a whole float without a fraction (`41`, not `41.0`).
fn go_float<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        s.serialize_i64(*v as i64)
    } else {
        s.serialize_f64(*v)
    }
}

/// `CWStatsSet` and `UDoubleCWStatsSet` (same members): min, max, sum and count of the unsent,
/// non-NaN values.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CwStatsSet {
    /// Largest value.
    #[serde(serialize_with = "go_float")]
    pub max: f64,
    /// Smallest value.
    #[serde(serialize_with = "go_float")]
    pub min: f64,
    /// Values counted.
    pub sample_count: i64,
    /// Sum of the values.
    #[serde(serialize_with = "go_float")]
    pub sum: f64,
}

/// `ULongStatsSet`: as [`CwStatsSet`] over unsigned counters, each value above 2^63−1 sent as
/// 2^63−1 with the remainder (`v mod (2^63−1)`) in its `overflow*` member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ULongStatsSet {
    /// Largest value (capped).
    pub max: i64,
    /// Smallest value (capped).
    pub min: i64,
    /// Remainder of `max` above the cap.
    pub overflow_max: i64,
    /// Remainder of `min` above the cap.
    pub overflow_min: i64,
    /// Remainder of `sum` above the cap.
    pub overflow_sum: i64,
    /// Values counted.
    pub sample_count: i64,
    /// Sum of the values (capped). Summed without wrapping, unlike upstream's `uint64`.
    pub sum: i64,
}

/// `NetworkStatsSet`: a member that could not be computed is omitted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct NetworkStatsSet {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx_bytes: Option<ULongStatsSet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx_bytes_per_second: Option<CwStatsSet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx_dropped: Option<ULongStatsSet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx_errors: Option<ULongStatsSet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx_packets: Option<ULongStatsSet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_bytes: Option<ULongStatsSet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_bytes_per_second: Option<CwStatsSet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_dropped: Option<ULongStatsSet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_errors: Option<ULongStatsSet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_packets: Option<ULongStatsSet>,
}

/// `StorageStatsSet`: bytes read and written, cumulative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageStatsSet {
    /// Bytes read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_size_bytes: Option<ULongStatsSet>,
    /// Bytes written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_size_bytes: Option<ULongStatsSet>,
}

/// One container's sets for a `PublishMetricsRequest` `containerMetrics` item (without its
/// `containerName`, which the TCS session adds).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSets {
    /// CPU percent.
    pub cpu_stats_set: CwStatsSet,
    /// Memory MiB.
    pub memory_stats_set: CwStatsSet,
    /// Network sets: only when asked for (bridge mode), and omitted when a member failed for a
    /// container older than the grace period (tcs.md §6.3; a younger one sends what it has).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_stats_set: Option<NetworkStatsSet>,
    /// Storage sets, omitted like the network sets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_stats_set: Option<StorageStatsSet>,
}

/// Why a container's sets could not be computed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    /// The collector does not track the container (not in the last round's running list).
    #[error("the container is not sampled")]
    NotSampled,
    /// Fewer than two samples in its ring.
    #[error("{set} needs at least 2 samples, has {have}")]
    TooFewSamples {
        /// The set.
        set: &'static str,
        /// Samples in the ring.
        have: usize,
        /// The container started less than [`super::GRACE`] ago.
        young: bool,
    },
    /// No unsent sample with a value (all sent, or all NaN).
    #[error("{set} has no unsent sample with a value")]
    NoValues {
        /// The set.
        set: &'static str,
        /// The container started less than [`super::GRACE`] ago.
        young: bool,
    },
}

impl SetError {
    /// Whether the container is left out without a log line: it started less than
    /// [`super::GRACE`] ago, or the collector never saw it (upstream never knows such a
    /// container at all).
    pub fn is_quiet(&self) -> bool {
        match self {
            SetError::NotSampled => true,
            SetError::TooFewSamples { young, .. } | SetError::NoValues { young, .. } => *young,
        }
    }
}

/// The `CWStatsSet` of `value` over the unsent points of `ring` (NaN values skipped).
pub fn cw_set(
    ring: &VecDeque<Point>,
    set: &'static str,
    young: bool,
    value: impl Fn(&Point) -> f64,
) -> Result<CwStatsSet, SetError> {
    if ring.len() < 2 {
        return Err(SetError::TooFewSamples {
            set,
            have: ring.len(),
            young,
        });
    }
    let (mut min, mut max, mut sum, mut count) = (f64::MAX, f64::MIN, 0.0, 0i64);
    for v in ring.iter().filter(|p| !p.sent).map(value) {
        if v.is_nan() {
            continue;
        }
        min = min.min(v);
        max = max.max(v);
        sum += v;
        count += 1;
    }
    if count == 0 {
        return Err(SetError::NoValues { set, young });
    }
    Ok(CwStatsSet {
        max,
        min,
        sample_count: count,
        sum,
    })
}

/// `(capped, overflow)` of a counter value (tcs.md §6.3).
pub fn with_overflow(v: u128) -> (i64, i64) {
    let cap = i64::MAX as u128;
    if v > cap {
        (i64::MAX, (v % cap) as i64)
    } else {
        (v as i64, 0)
    }
}

/// The `ULongStatsSet` of `value` over the unsent points of `ring`.
pub fn ulong_set(
    ring: &VecDeque<Point>,
    set: &'static str,
    young: bool,
    value: impl Fn(&Point) -> u64,
) -> Result<ULongStatsSet, SetError> {
    if ring.len() < 2 {
        return Err(SetError::TooFewSamples {
            set,
            have: ring.len(),
            young,
        });
    }
    let (mut min, mut max, mut sum, mut count) = (u64::MAX, 0u64, 0u128, 0i64);
    for v in ring.iter().filter(|p| !p.sent).map(value) {
        min = min.min(v);
        max = max.max(v);
        sum += u128::from(v);
        count += 1;
    }
    if count == 0 {
        return Err(SetError::NoValues { set, young });
    }
    let (max, overflow_max) = with_overflow(u128::from(max));
    let (min, overflow_min) = with_overflow(u128::from(min));
    let (sum, overflow_sum) = with_overflow(sum);
    Ok(ULongStatsSet {
        max,
        min,
        overflow_max,
        overflow_min,
        overflow_sum,
        sample_count: count,
        sum,
    })
}

/// All of a container's sets (tcs.md §6.3): CPU and memory must succeed; network (when asked)
/// and storage are given whole, given partly while the container is `young`, else omitted.
pub fn container_sets(
    ring: &VecDeque<Point>,
    network: bool,
    young: bool,
) -> Result<ContainerSets, SetError> {
    let cpu_stats_set = cw_set(ring, "cpuStatsSet", young, |p| p.cpu_percent)?;
    let memory_stats_set = cw_set(ring, "memoryStatsSet", young, |p| p.memory_mib as f64)?;

    let mut failed = false;
    let mut keep = |r: Result<ULongStatsSet, SetError>| r.map_err(|_| failed = true).ok();
    let storage = StorageStatsSet {
        read_size_bytes: keep(ulong_set(ring, "readSizeBytes", young, |p| p.read_bytes)),
        write_size_bytes: keep(ulong_set(ring, "writeSizeBytes", young, |p| p.write_bytes)),
    };
    let storage_stats_set = (!failed || young).then_some(storage);

    let network_stats_set = network.then(|| {
        let mut failed = false;
        let c = |p: &Point| p.net.map(|n| n.counters).unwrap_or_default();
        let rate = |p: &Point, rx: bool| {
            p.net
                .map_or(f64::NAN, |n| if rx { n.rx_bps } else { n.tx_bps })
        };
        let mut ulong = |set, f: fn(&IfCounters) -> u64| {
            ulong_set(ring, set, young, |p| f(&c(p)))
                .map_err(|_| failed = true)
                .ok()
        };
        let mut set = NetworkStatsSet {
            rx_bytes: ulong("rxBytes", |c| c.rx_bytes),
            rx_dropped: ulong("rxDropped", |c| c.rx_dropped),
            rx_errors: ulong("rxErrors", |c| c.rx_errors),
            rx_packets: ulong("rxPackets", |c| c.rx_packets),
            tx_bytes: ulong("txBytes", |c| c.tx_bytes),
            tx_dropped: ulong("txDropped", |c| c.tx_dropped),
            tx_errors: ulong("txErrors", |c| c.tx_errors),
            tx_packets: ulong("txPackets", |c| c.tx_packets),
            ..NetworkStatsSet::default()
        };
        set.rx_bytes_per_second = cw_set(ring, "rxBytesPerSecond", young, |p| rate(p, true))
            .map_err(|_| failed = true)
            .ok();
        set.tx_bytes_per_second = cw_set(ring, "txBytesPerSecond", young, |p| rate(p, false))
            .map_err(|_| failed = true)
            .ok();
        (!failed || young).then_some(set)
    });

    Ok(ContainerSets {
        cpu_stats_set,
        memory_stats_set,
        network_stats_set: network_stats_set.flatten(),
        storage_stats_set,
    })
}
