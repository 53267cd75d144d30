//! The metric settings' one home: the types of `[metrics]` (profile, formula, dimension mode,
//! legacy units and series switches, [`MetricsConfig`] and its defaults) and the metric names a
//! setting may name (the catalogue's names; their formulas live in `metrics::catalogue`).
//!
//! `config` parses into these types and checks names against [`is_known`]; the metrics subsystem
//! reads them. This module imports nothing from the rest of the crate, so the floors stay
//! one-directional: `metrics` imports `config`, never the other way round.

use std::time::Duration;

/// Metrics profile: which catalogue of names and units to publish (metrics.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsProfile {
    /// CloudWatch agent names (`mem_used_percent`, `disk_used_percent`, ...), namespace `CWAgent`.
    CwAgent,
    /// The old monitoring scripts' names (`MemoryUtilization`, ...).
    Legacy,
    /// Both catalogues.
    Both,
}

/// How `mem_used` counts used memory in the `cwagent` profile (metrics.md §3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemUsedFormula {
    /// MemTotal − MemFree − Buffers − (Cached + SReclaimable): the CloudWatch agent's formula.
    Classic,
    /// MemTotal − MemAvailable (newer gopsutil).
    MemAvailable,
}

/// The per-host dimension set of the `cwagent` profile (metrics.md §4.1, §4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DimensionMode {
    /// InstanceId, ImageId, InstanceType (+ AutoScalingGroupName): the agent's EC2 dimensions.
    Ec2,
    /// `host` = the OS hostname.
    Host,
}

/// A binary unit for the `legacy` profile's amounts (metrics.md §3.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LegacyUnit {
    /// Divisor 1.
    Bytes,
    /// Divisor 2^10.
    Kilobytes,
    /// Divisor 2^20.
    Megabytes,
    /// Divisor 2^30.
    Gigabytes,
}

/// A `legacy` series switch (metrics.md §4.4): `only` turns the per-instance series off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LegacySeries {
    /// Not emitted.
    Off,
    /// Emitted beside the per-instance series.
    On,
    /// Emitted instead of the per-instance series.
    Only,
}

/// CloudWatch host metrics settings (`[metrics]` in config.toml; metrics.md §10).
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsConfig {
    /// Publish host metrics at all.
    pub enabled: bool,
    /// Collection interval (samples are taken on wall-clock multiples of it).
    pub interval: Duration,
    /// Flush interval: how often buffered datums are sent (one request per flush normally).
    pub flush_interval: Duration,
    /// Catalogue profile.
    pub profile: MetricsProfile,
    /// CloudWatch namespace of the `cwagent` profile (and of the health metrics).
    pub namespace: String,
    /// Rollup (aggregation) dimension sets, metrics.md §4.2: each entry is one set, names joined
    /// with `+` (`"InstanceType+ImageId"`), `""` for the empty set. Names among InstanceId,
    /// InstanceType, ImageId, AutoScalingGroupName, ClusterName.
    pub dimensions: Vec<String>,
    /// Metrics that get the rollup copies; `["all"]` = every metric.
    pub aggregate_metrics: Vec<String>,
    /// Metric names to publish; empty = the profile's default set (metrics.md §3.3, §3.4).
    pub metrics: Vec<String>,
    /// `mem_used_formula`.
    pub mem_used_formula: MemUsedFormula,
    /// `dimension_mode`.
    pub dimension_mode: DimensionMode,
    /// Leave the `device` dimension out of disk metrics.
    pub drop_device: bool,
    /// Publish `swap_used_percent` = 0 on swapless hosts (the CloudWatch agent does).
    pub swap_when_absent: bool,
    /// How long to wait at startup for a definite AutoScalingGroupName answer.
    pub identity_wait: Duration,
    /// Filesystem mount points to report; empty = the automatic selection rules (metrics.md §6.1).
    pub filesystems: Vec<String>,
    /// Filesystem types ignored on top of the default list.
    pub extra_ignore_fs_types: Vec<String>,
    /// Mount-point prefixes ignored on top of the default list.
    pub extra_ignore_mount_prefixes: Vec<String>,
    /// Report read-only mounts too.
    pub include_read_only: bool,
    /// Report only mounts whose source is a `/dev/` block device (not a loop device).
    pub require_block_device: bool,
    /// Cardinality cap on reported filesystems.
    pub max_filesystems: usize,
    /// Per-call statvfs deadline; a mount that times out is skipped for 10 passes.
    pub statvfs_timeout: Duration,
    /// 1 (high resolution, extra cost) or 60 seconds; intervals below 60 s are always high
    /// resolution.
    pub storage_resolution: u32,
    /// Pack samples of one series and period into Values/Counts (only when collection is faster
    /// than flush).
    pub pack_samples: bool,
    /// Maximum datums kept in the durable spool during outages (oldest dropped first).
    pub spool_max_datums: u64,
    /// Maximum age of a spooled datum (at most 14 days minus 1 hour).
    pub spool_max_age: Duration,
    /// Deadline of the final flush on shutdown.
    pub shutdown_flush: Duration,
    /// Publish agent and Docker health metrics too (extra cost; see README).
    pub health_metrics: bool,
    /// `legacy` profile settings.
    pub legacy: LegacyMetricsConfig,
}

/// The `legacy` profile's settings (`[metrics.legacy]`; metrics.md §3.4, §4.4).
#[derive(Clone, Debug, PartialEq)]
pub struct LegacyMetricsConfig {
    /// Namespace of the monitoring scripts.
    pub namespace: String,
    /// Unit of MemoryUsed, MemoryAvailable, SwapUsed.
    pub memory_units: LegacyUnit,
    /// Unit of DiskSpaceUsed, DiskSpaceAvailable.
    pub disk_units: LegacyUnit,
    /// Count cache and buffers as used (`--mem-used-incl-cache-buff`).
    pub mem_used_incl_cache_buff: bool,
    /// Paths whose containing filesystems are reported (`--disk-path`).
    pub disk_paths: Vec<String>,
    /// `--aggregated`: InstanceType, ImageId and dimensionless series.
    pub aggregated: LegacySeries,
    /// `--auto-scaling`: AutoScalingGroupName series.
    pub auto_scaling: LegacySeries,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            interval: Duration::from_secs(60),
            flush_interval: Duration::from_secs(60),
            profile: MetricsProfile::CwAgent,
            namespace: "CWAgent".into(),
            dimensions: vec!["InstanceId".into()],
            aggregate_metrics: vec!["mem_used_percent".into(), "disk_used_percent".into()],
            metrics: Vec::new(),
            mem_used_formula: MemUsedFormula::Classic,
            dimension_mode: DimensionMode::Ec2,
            drop_device: false,
            swap_when_absent: false,
            identity_wait: Duration::from_secs(120),
            filesystems: Vec::new(),
            extra_ignore_fs_types: Vec::new(),
            extra_ignore_mount_prefixes: Vec::new(),
            include_read_only: false,
            require_block_device: true,
            max_filesystems: 20,
            statvfs_timeout: Duration::from_secs(2),
            storage_resolution: 60,
            pack_samples: false,
            // metrics.md §7.4: about a day of the default catalogue with two filesystems.
            spool_max_datums: 20_000,
            spool_max_age: Duration::from_secs(86_400),
            shutdown_flush: Duration::from_secs(5),
            health_metrics: false,
            legacy: LegacyMetricsConfig {
                namespace: "System/Linux".into(),
                memory_units: LegacyUnit::Megabytes,
                disk_units: LegacyUnit::Gigabytes,
                mem_used_incl_cache_buff: false,
                disk_paths: vec!["/".into()],
                aggregated: LegacySeries::Off,
                auto_scaling: LegacySeries::Off,
            },
        }
    }
}

/// Every `cwagent` memory metric.
pub const CWAGENT_MEMORY: &[&str] = &[
    "mem_used_percent",
    "mem_available_percent",
    "mem_used",
    "mem_available",
    "mem_total",
    "mem_free",
    "mem_cached",
    "mem_buffered",
    "mem_active",
    "mem_inactive",
    "mem_shared",
];
/// Every `cwagent` swap metric.
pub const CWAGENT_SWAP: &[&str] = &["swap_used_percent", "swap_used", "swap_free"];
/// Every `cwagent` disk metric.
pub const CWAGENT_DISK: &[&str] = &[
    "disk_used_percent",
    "disk_used",
    "disk_free",
    "disk_total",
    "disk_inodes_free",
    "disk_inodes_used",
    "disk_inodes_total",
];
/// Every `legacy` metric.
pub const LEGACY: &[&str] = &[
    "MemoryUtilization",
    "MemoryUsed",
    "MemoryAvailable",
    "SwapUtilization",
    "SwapUsed",
    "DiskSpaceUtilization",
    "DiskSpaceUsed",
    "DiskSpaceAvailable",
];
/// Health metric: 1 when Docker answers, else 0.
pub const DOCKER_REACHABLE: &str = "ecs_hostd_docker_reachable";
/// Health metric: tasks running on the instance.
pub const RUNNING_TASKS: &str = "ecs_hostd_running_tasks";
/// Health metric: containers running on the instance.
pub const RUNNING_CONTAINERS: &str = "ecs_hostd_running_containers";
/// Health metric: agent restarts since the data directory was created (starts − 1).
pub const AGENT_RESTARTS: &str = "ecs_hostd_agent_restarts";
/// Every health metric.
pub const HEALTH: &[&str] = &[
    DOCKER_REACHABLE,
    RUNNING_TASKS,
    RUNNING_CONTAINERS,
    AGENT_RESTARTS,
];

/// Whether `name` is a metric of either catalogue.
pub fn is_known(name: &str) -> bool {
    [CWAGENT_MEMORY, CWAGENT_SWAP, CWAGENT_DISK, LEGACY, HEALTH]
        .iter()
        .any(|list| list.contains(&name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_cover_both_catalogues_and_health() {
        assert!(is_known("disk_inodes_total") && is_known(AGENT_RESTARTS) && !is_known("cpu"));
        assert!(is_known("MemoryUtilization") && is_known("swap_free"));
    }
}
