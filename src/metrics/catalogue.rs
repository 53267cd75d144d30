//! The metric catalogue: names, units and formulas of the `cwagent` and `legacy` profiles
//! (metrics.md §3), the default metric sets, and the agent's own health metrics.
//!
//! Pure arithmetic on [`MemInfo`] and [`StatFs`]: percentages are clamped to 0–100, derived
//! amounts floored at 0, unsigned subtraction never wraps, and a value that cannot be computed is
//! left out (never sent as 0, NaN or infinity). This module never reads the host and never
//! attaches dimensions.

use serde::{Deserialize, Serialize};

use super::collect::{MemInfo, StatFs};
use crate::config::metrics::{LegacyUnit, MemUsedFormula};
// The names are defined with the settings that may name them (`config::metrics`, which checks
// them); the catalogue gives them formulas.
pub use crate::config::metrics::{
    AGENT_RESTARTS, CWAGENT_DISK, CWAGENT_MEMORY, CWAGENT_SWAP, DOCKER_REACHABLE, HEALTH, LEGACY,
    RUNNING_CONTAINERS, RUNNING_TASKS,
};

/// A CloudWatch unit (the subset the catalogue uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Unit {
    /// Bytes.
    Bytes,
    /// Kilobytes (the legacy profile's binary kilobytes, as the scripts labelled them).
    Kilobytes,
    /// Megabytes.
    Megabytes,
    /// Gigabytes.
    Gigabytes,
    /// Percent.
    Percent,
    /// Count.
    Count,
    /// No unit.
    None,
}

impl Unit {
    /// The CloudWatch `StandardUnit` text.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Bytes => "Bytes",
            Unit::Kilobytes => "Kilobytes",
            Unit::Megabytes => "Megabytes",
            Unit::Gigabytes => "Gigabytes",
            Unit::Percent => "Percent",
            Unit::Count => "Count",
            Unit::None => "None",
        }
    }
}

/// Which dimension rules a sample follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Memory and swap: host dimensions only.
    Host,
    /// Disk: host dimensions plus the filesystem's.
    Disk,
    /// Agent and Docker health.
    Health,
}

/// One computed value, before dimensions and timestamps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: &'static str,
    /// Unit.
    pub unit: Unit,
    /// Value (finite).
    pub value: f64,
}

fn sample(name: &'static str, unit: Unit, value: f64) -> Sample {
    Sample { name, unit, value }
}

/// The `cwagent` default set (metrics.md §3.3); swap only when the host has swap (or
/// `swap_when_absent`).
pub const CWAGENT_DEFAULT: &[&str] = &[
    "mem_used_percent",
    "mem_available_percent",
    "disk_used_percent",
    "disk_inodes_free",
    "swap_used_percent",
];
/// The `legacy` default set (§3.4): the usual cron line of the scripts.
pub const LEGACY_DEFAULT: &[&str] = &["MemoryUtilization", "DiskSpaceUtilization"];

/// Which metrics are published: the profile defaults, or an explicit list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enabled {
    cwagent: Vec<&'static str>,
    legacy: Vec<&'static str>,
}

impl Enabled {
    /// From the configured list (`metrics.metrics`): a profile named in the list publishes
    /// exactly the listed names; a profile not named keeps its default set.
    pub fn from_list(list: &[String]) -> Enabled {
        let pick = |all: &[&'static [&'static str]], default: &[&'static str]| {
            let named: Vec<&'static str> = all
                .iter()
                .flat_map(|l| l.iter().copied())
                .filter(|n| list.iter().any(|l| l == n))
                .collect();
            if named.is_empty() {
                default.to_vec()
            } else {
                named
            }
        };
        Enabled {
            cwagent: pick(
                &[CWAGENT_MEMORY, CWAGENT_SWAP, CWAGENT_DISK],
                CWAGENT_DEFAULT,
            ),
            legacy: pick(&[LEGACY], LEGACY_DEFAULT),
        }
    }

    /// Whether a metric of either profile is on.
    pub fn contains(&self, name: &str) -> bool {
        self.cwagent.contains(&name) || self.legacy.contains(&name)
    }
}

impl Default for Enabled {
    fn default() -> Enabled {
        Enabled::from_list(&[])
    }
}

fn pct(part: f64, whole: f64) -> f64 {
    if whole <= 0.0 {
        0.0
    } else {
        (100.0 * part / whole).clamp(0.0, 100.0)
    }
}

/// MemAvailable, or the pre-3.14 estimate MemFree + Buffers + Cached + SReclaimable − Shmem
/// clamped to [0, MemTotal] (metrics.md §6.2).
pub fn available(m: &MemInfo) -> Option<u64> {
    let total = m.total?;
    if let Some(a) = m.available {
        return Some(a);
    }
    let plus = m.free? as i128
        + m.buffers.unwrap_or(0) as i128
        + m.cached.unwrap_or(0) as i128
        + m.sreclaimable.unwrap_or(0) as i128;
    let est = plus - m.shmem.unwrap_or(0) as i128;
    Some(est.clamp(0, total as i128) as u64)
}

/// `cwagent` memory metrics (metrics.md §3.2), all of them; none when MemTotal is 0 or absent.
pub fn cwagent_memory(m: &MemInfo, formula: MemUsedFormula) -> Vec<Sample> {
    let (Some(total), Some(free)) = (m.total, m.free) else {
        return Vec::new();
    };
    if total == 0 {
        return Vec::new();
    }
    let Some(avail) = available(m) else {
        return Vec::new();
    };
    let buffers = m.buffers.unwrap_or(0);
    let cached_eff = m
        .cached
        .unwrap_or(0)
        .saturating_add(m.sreclaimable.unwrap_or(0));
    let used = match formula {
        MemUsedFormula::Classic => total
            .saturating_sub(free)
            .saturating_sub(buffers)
            .saturating_sub(cached_eff),
        MemUsedFormula::MemAvailable => total.saturating_sub(avail),
    };
    let t = total as f64;
    let mut out = vec![
        sample("mem_used_percent", Unit::Percent, pct(used as f64, t)),
        sample("mem_available_percent", Unit::Percent, pct(avail as f64, t)),
        sample("mem_used", Unit::Bytes, used as f64),
        sample("mem_available", Unit::Bytes, avail as f64),
        sample("mem_total", Unit::Bytes, t),
        sample("mem_free", Unit::Bytes, free as f64),
        sample("mem_cached", Unit::Bytes, cached_eff as f64),
        sample("mem_buffered", Unit::Bytes, buffers as f64),
    ];
    if let Some(a) = m.active {
        out.push(sample("mem_active", Unit::Bytes, a as f64));
    }
    if let Some(i) = m.inactive {
        out.push(sample("mem_inactive", Unit::Bytes, i as f64));
    }
    if let Some(s) = m.shmem {
        out.push(sample("mem_shared", Unit::Bytes, s as f64));
    }
    out
}

/// `cwagent` swap metrics: only when SwapTotal > 0, or zeros when `when_absent`.
pub fn cwagent_swap(m: &MemInfo, when_absent: bool) -> Vec<Sample> {
    let total = m.swap_total.unwrap_or(0);
    if total == 0 {
        if !when_absent {
            return Vec::new();
        }
        return vec![
            sample("swap_used_percent", Unit::Percent, 0.0),
            sample("swap_used", Unit::Bytes, 0.0),
            sample("swap_free", Unit::Bytes, 0.0),
        ];
    }
    let Some(free) = m.swap_free else {
        return Vec::new();
    };
    let used = total.saturating_sub(free);
    vec![
        sample(
            "swap_used_percent",
            Unit::Percent,
            pct(used as f64, total as f64),
        ),
        sample("swap_used", Unit::Bytes, used as f64),
        sample("swap_free", Unit::Bytes, free as f64),
    ]
}

/// `cwagent` disk metrics of one filesystem; nothing when it has no blocks.
pub fn cwagent_disk(s: &StatFs) -> Vec<Sample> {
    if s.blocks == 0 {
        return Vec::new();
    }
    let block = s.block() as f64;
    let total = s.blocks as f64 * block;
    let free = s.bavail as f64 * block;
    let used = s.blocks.saturating_sub(s.bfree) as f64 * block;
    let mut out = vec![
        sample("disk_used_percent", Unit::Percent, pct(used, used + free)),
        sample("disk_used", Unit::Bytes, used),
        sample("disk_free", Unit::Bytes, free),
        sample("disk_total", Unit::Bytes, total),
    ];
    if s.files > 0 && s.ffree <= s.files {
        out.push(sample("disk_inodes_free", Unit::Count, s.ffree as f64));
        out.push(sample(
            "disk_inodes_used",
            Unit::Count,
            (s.files - s.ffree) as f64,
        ));
        out.push(sample("disk_inodes_total", Unit::Count, s.files as f64));
    }
    out
}

/// The divisor and CloudWatch unit of a legacy unit setting (binary, as the scripts did).
pub fn legacy_unit(u: LegacyUnit) -> (f64, Unit) {
    match u {
        LegacyUnit::Bytes => (1.0, Unit::Bytes),
        LegacyUnit::Kilobytes => (1024.0, Unit::Kilobytes),
        LegacyUnit::Megabytes => (1024.0 * 1024.0, Unit::Megabytes),
        LegacyUnit::Gigabytes => (1024.0 * 1024.0 * 1024.0, Unit::Gigabytes),
    }
}

/// `legacy` memory and swap metrics (monitoring scripts 1.2.2, metrics.md §3.4).
pub fn legacy_memory(m: &MemInfo, incl_cache_buff: bool, units: LegacyUnit) -> Vec<Sample> {
    let (Some(total), Some(free)) = (m.total, m.free) else {
        return Vec::new();
    };
    if total == 0 {
        return Vec::new();
    }
    let (div, unit) = legacy_unit(units);
    let avail = if incl_cache_buff {
        free
    } else {
        free.saturating_add(m.cached.unwrap_or(0))
            .saturating_add(m.buffers.unwrap_or(0))
    }
    .min(total);
    let used = total - avail;
    let mut out = vec![
        sample(
            "MemoryUtilization",
            Unit::Percent,
            pct(used as f64, total as f64),
        ),
        sample("MemoryUsed", unit, used as f64 / div),
        sample("MemoryAvailable", unit, avail as f64 / div),
    ];
    let swap_total = m.swap_total.unwrap_or(0);
    let swap_used = swap_total.saturating_sub(m.swap_free.unwrap_or(swap_total));
    out.push(sample(
        "SwapUtilization",
        Unit::Percent,
        pct(swap_used as f64, swap_total as f64),
    ));
    out.push(sample("SwapUsed", unit, swap_used as f64 / div));
    out
}

/// `legacy` disk metrics of one path's filesystem; nothing when it has no blocks.
pub fn legacy_disk(s: &StatFs, units: LegacyUnit) -> Vec<Sample> {
    if s.blocks == 0 {
        return Vec::new();
    }
    let (div, unit) = legacy_unit(units);
    let block = s.block() as f64;
    let total = s.blocks as f64 * block;
    let used = s.blocks.saturating_sub(s.bfree) as f64 * block;
    let avail = s.bavail as f64 * block;
    vec![
        sample("DiskSpaceUtilization", Unit::Percent, pct(used, total)),
        sample("DiskSpaceUsed", unit, used / div),
        sample("DiskSpaceAvailable", unit, avail / div),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::collect::parse_meminfo;

    fn get(samples: &[Sample], name: &str) -> Option<(f64, Unit)> {
        samples
            .iter()
            .find(|s| s.name == name)
            .map(|s| (s.value, s.unit))
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    fn assert_value(samples: &[Sample], name: &str, want: f64, unit: Unit) {
        let (v, u) = get(samples, name).unwrap_or_else(|| panic!("{name} missing"));
        assert!(
            close(v, want, 1e-9 * want.abs().max(1.0)),
            "{name}: {v} != {want}"
        );
        assert_eq!(u, unit, "{name}");
    }

    fn mem(file: &str) -> MemInfo {
        let path = format!("{}/tests/data/proc/{file}", env!("CARGO_MANIFEST_DIR"));
        parse_meminfo(&std::fs::read_to_string(path).unwrap())
    }

    fn spec_disk() -> StatFs {
        StatFs {
            frsize: 4096,
            bsize: 4096,
            blocks: 1_000_000,
            bfree: 300_000,
            bavail: 250_000,
            files: 500_000,
            ffree: 400_000,
            read_only: false,
        }
    }

    /// metrics.md §12 test 1, on the recorded fixture (no swap).
    #[test]
    fn spec_memory_fixture_cwagent() {
        let m = mem("meminfo.spec");
        let s = cwagent_memory(&m, MemUsedFormula::Classic);
        assert_value(&s, "mem_used_percent", 42.5, Unit::Percent);
        assert_value(&s, "mem_available_percent", 62.5, Unit::Percent);
        assert_value(&s, "mem_cached", 3_481_600_000.0, Unit::Bytes);
        assert_value(&s, "mem_used", 3_400_000.0 * 1024.0, Unit::Bytes);
        assert_value(&s, "mem_total", 8_192_000_000.0, Unit::Bytes);
        assert_value(&s, "mem_shared", 512_000_000.0, Unit::Bytes);
        assert!(
            cwagent_swap(&m, false).is_empty(),
            "no swap metric without swap"
        );
        assert_value(
            &cwagent_swap(&m, true),
            "swap_used_percent",
            0.0,
            Unit::Percent,
        );
        let s = cwagent_memory(&m, MemUsedFormula::MemAvailable);
        assert_value(&s, "mem_used_percent", 37.5, Unit::Percent);
    }

    #[test]
    fn spec_memory_fixture_legacy() {
        let m = mem("meminfo.spec");
        let s = legacy_memory(&m, false, LegacyUnit::Megabytes);
        assert_value(&s, "MemoryUtilization", 47.5, Unit::Percent);
        assert_value(&s, "MemoryUsed", 3_710.937_5, Unit::Megabytes);
        assert_value(&s, "MemoryAvailable", 4_101.562_5, Unit::Megabytes);
        assert_value(&s, "SwapUtilization", 0.0, Unit::Percent);
        let s = legacy_memory(&m, true, LegacyUnit::Megabytes);
        assert_value(&s, "MemoryUtilization", 87.5, Unit::Percent);
    }

    /// metrics.md §12 test 2.
    #[test]
    fn spec_disk_fixture_both_profiles() {
        let s = cwagent_disk(&spec_disk());
        let (p, _) = get(&s, "disk_used_percent").unwrap();
        assert!(close(p, 73.68421, 1e-5), "{p}");
        assert_value(&s, "disk_used", 2_867_200_000.0, Unit::Bytes);
        assert_value(&s, "disk_free", 1_024_000_000.0, Unit::Bytes);
        assert_value(&s, "disk_total", 4_096_000_000.0, Unit::Bytes);
        assert_value(&s, "disk_inodes_free", 400_000.0, Unit::Count);
        assert_value(&s, "disk_inodes_used", 100_000.0, Unit::Count);
        let s = legacy_disk(&spec_disk(), LegacyUnit::Gigabytes);
        assert_value(&s, "DiskSpaceUtilization", 70.0, Unit::Percent);
        assert_value(&s, "DiskSpaceUsed", 2.6702880859375, Unit::Gigabytes);
        assert_value(&s, "DiskSpaceAvailable", 0.95367431640625, Unit::Gigabytes);
    }

    /// Huge pages are reserved out of MemFree, so the classic formula counts them as used
    /// (metrics.md §6.2); the host also has swap, half used.
    #[test]
    fn hugepages_fixture_counts_reserved_pages_as_used() {
        let m = mem("meminfo.hugepages");
        let s = cwagent_memory(&m, MemUsedFormula::Classic);
        // used = 16,000,000 − 2,000,000 − 100,000 − (4,000,000 + 300,000) = 9,600,000 kB
        assert_value(&s, "mem_used_percent", 60.0, Unit::Percent);
        assert_value(&s, "mem_available_percent", 56.25, Unit::Percent);
        let sw = cwagent_swap(&m, false);
        assert_value(&sw, "swap_used_percent", 50.0, Unit::Percent);
        assert_value(&sw, "swap_used", 1_048_574.0 * 1024.0, Unit::Bytes);
        // legacy: available = 2,000,000 + 4,000,000 + 100,000 = 6,100,000 kB
        let l = legacy_memory(&m, false, LegacyUnit::Megabytes);
        assert_value(&l, "MemoryUtilization", 61.875, Unit::Percent);
        assert_value(&l, "MemoryUsed", 9_667.968_75, Unit::Megabytes);
        assert_value(&l, "SwapUtilization", 50.0, Unit::Percent);
        assert_value(&l, "SwapUsed", 1_023.998046875, Unit::Megabytes);
    }

    /// tmpfs lives in Cached (Shmem): the classic formula calls it free, MemAvailable does not.
    #[test]
    fn tmpfs_heavy_fixture_shows_why_the_percentages_disagree() {
        let m = mem("meminfo.tmpfs-heavy");
        let s = cwagent_memory(&m, MemUsedFormula::Classic);
        // used = 4,000,000 − 200,000 − 50,000 − 3,100,000 = 650,000 kB
        assert_value(&s, "mem_used_percent", 16.25, Unit::Percent);
        assert_value(&s, "mem_available_percent", 10.0, Unit::Percent);
        let s = cwagent_memory(&m, MemUsedFormula::MemAvailable);
        assert_value(&s, "mem_used_percent", 90.0, Unit::Percent);
        let l = legacy_memory(&m, false, LegacyUnit::Kilobytes);
        // available = 200,000 + 3,000,000 + 50,000 = 3,250,000 kB
        assert_value(&l, "MemoryUtilization", 18.75, Unit::Percent);
        assert_value(&l, "MemoryAvailable", 3_250_000.0, Unit::Kilobytes);
    }

    #[test]
    fn old_kernel_estimates_memavailable() {
        let m = mem("meminfo.old-kernel");
        assert_eq!(m.available, None);
        // 500,000 + 100,000 + 600,000 + 50,000 − 150,000 = 1,100,000 kB
        assert_eq!(available(&m), Some(1_100_000 * 1024));
        let s = cwagent_memory(&m, MemUsedFormula::Classic);
        assert_value(&s, "mem_available_percent", 55.0, Unit::Percent);
    }

    #[test]
    fn nothing_wraps_or_leaves_the_range() {
        // Free + buffers + cached exceed total (racy reads): used floors at 0, never wraps.
        let m = MemInfo {
            total: Some(1000),
            free: Some(900),
            available: Some(5000),
            buffers: Some(200),
            cached: Some(300),
            ..MemInfo::default()
        };
        let s = cwagent_memory(&m, MemUsedFormula::Classic);
        assert_value(&s, "mem_used_percent", 0.0, Unit::Percent);
        assert_value(&s, "mem_available_percent", 100.0, Unit::Percent);
        assert!(s.iter().all(|x| x.value.is_finite() && x.value >= 0.0));
        assert!(
            get(&s, "mem_active").is_none(),
            "absent input, absent metric"
        );
        assert!(
            cwagent_memory(
                &MemInfo {
                    total: Some(0),
                    free: Some(0),
                    ..MemInfo::default()
                },
                MemUsedFormula::Classic
            )
            .is_empty()
        );
        // Inode counts that make no sense publish no inode metrics; an empty disk gives 0 %.
        let odd = StatFs {
            files: 10,
            ffree: 20,
            bfree: 5_000_000,
            ..spec_disk()
        };
        let s = cwagent_disk(&odd);
        assert!(get(&s, "disk_inodes_free").is_none());
        assert_value(&s, "disk_used", 0.0, Unit::Bytes);
        let empty = StatFs {
            bfree: 1_000_000,
            bavail: 0,
            ..spec_disk()
        };
        assert_value(
            &cwagent_disk(&empty),
            "disk_used_percent",
            0.0,
            Unit::Percent,
        );
        assert!(cwagent_disk(&StatFs::default()).is_empty());
    }

    #[test]
    fn enabled_sets_follow_profiles_and_lists() {
        let d = Enabled::default();
        assert!(d.contains("mem_used_percent") && d.contains("DiskSpaceUtilization"));
        assert!(!d.contains("mem_cached"));
        let e = Enabled::from_list(&["mem_cached".into()]);
        assert!(e.contains("mem_cached") && !e.contains("mem_used_percent"));
        assert!(e.contains("MemoryUtilization"), "legacy keeps its defaults");
    }
}
