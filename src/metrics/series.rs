//! From one collection pass to datums: the catalogue's formulas for each enabled profile, times
//! the dimension sets of each metric, stamped with the pass's aligned time, grouped by namespace
//! (one namespace per request). Health samples join the cwagent namespace (design.md resolution 6),
//! or the legacy one when only that profile is on.
//!
//! Pure: no I/O, no clock. Validation against the CloudWatch limits happens when the datums are
//! spooled.

use super::catalogue::{self, Enabled, Family, Sample};
use super::collect::Pass;
use super::datum::Datum;
use super::dimensions::{Identity, Rules};
use crate::config::metrics::{LegacyUnit, MemUsedFormula, MetricsProfile};

/// What [`build`] needs to know about the catalogue and dimensions.
#[derive(Clone, Debug, PartialEq)]
pub struct Catalogue {
    /// Profiles.
    pub profile: MetricsProfile,
    /// cwagent namespace (also the health metrics').
    pub namespace: String,
    /// legacy namespace.
    pub legacy_namespace: String,
    /// Enabled metrics.
    pub enabled: Enabled,
    /// cwagent used-memory formula.
    pub formula: MemUsedFormula,
    /// cwagent swap zeros on swapless hosts.
    pub swap_when_absent: bool,
    /// legacy memory unit.
    pub legacy_memory_units: LegacyUnit,
    /// legacy disk unit.
    pub legacy_disk_units: LegacyUnit,
    /// legacy `--mem-used-incl-cache-buff`.
    pub legacy_incl_cache_buff: bool,
    /// Dimension sets.
    pub rules: Rules,
    /// StorageResolution 1.
    pub high_resolution: bool,
}

impl Catalogue {
    /// Whether the cwagent profile is on.
    pub fn cwagent(&self) -> bool {
        matches!(self.profile, MetricsProfile::CwAgent | MetricsProfile::Both)
    }

    /// Whether the legacy profile is on.
    pub fn legacy(&self) -> bool {
        matches!(self.profile, MetricsProfile::Legacy | MetricsProfile::Both)
    }
}

/// The datums of one pass, per namespace (cwagent first).
pub fn build(
    pass: &Pass,
    health: &[Sample],
    timestamp_ms: i64,
    id: &Identity,
    c: &Catalogue,
) -> Vec<(String, Vec<Datum>)> {
    let mut out: Vec<(String, Vec<Datum>)> = Vec::new();
    let datum = |s: &Sample, dims| {
        Datum::new(
            s.name,
            s.unit,
            s.value,
            timestamp_ms,
            dims,
            c.high_resolution,
        )
    };

    if c.cwagent() {
        let mut v = Vec::new();
        if let Some(m) = &pass.memory {
            let host = catalogue::cwagent_memory(m, c.formula)
                .into_iter()
                .chain(catalogue::cwagent_swap(m, c.swap_when_absent));
            for s in host.filter(|s| c.enabled.contains(s.name)) {
                for dims in c.rules.cwagent(id, s.name, Family::Host, None) {
                    v.push(datum(&s, dims));
                }
            }
        }
        for (fs, st) in &pass.filesystems {
            for s in catalogue::cwagent_disk(st)
                .into_iter()
                .filter(|s| c.enabled.contains(s.name))
            {
                for dims in c.rules.cwagent(id, s.name, Family::Disk, Some(fs)) {
                    v.push(datum(&s, dims));
                }
            }
        }
        for s in health {
            for dims in c.rules.cwagent(id, s.name, Family::Health, None) {
                v.push(datum(s, dims));
            }
        }
        out.push((c.namespace.clone(), v));
    }

    if c.legacy() {
        let mut v = Vec::new();
        if let Some(m) = &pass.memory {
            for s in catalogue::legacy_memory(m, c.legacy_incl_cache_buff, c.legacy_memory_units)
                .into_iter()
                .filter(|s| c.enabled.contains(s.name))
            {
                for dims in c.rules.legacy(id, None) {
                    v.push(datum(&s, dims));
                }
            }
        }
        let mut seen: Vec<&str> = Vec::new();
        for (_, fs, st) in &pass.legacy_disks {
            if seen.contains(&fs.mount_point.as_str()) {
                continue;
            }
            seen.push(&fs.mount_point);
            for s in catalogue::legacy_disk(st, c.legacy_disk_units)
                .into_iter()
                .filter(|s| c.enabled.contains(s.name))
            {
                for dims in c.rules.legacy(id, Some(fs)) {
                    v.push(datum(&s, dims));
                }
            }
        }
        if !c.cwagent() {
            for s in health {
                for dims in c.rules.legacy(id, None).into_iter().take(1) {
                    v.push(datum(s, dims));
                }
            }
        }
        out.push((c.legacy_namespace.clone(), v));
    }
    out.retain(|(_, v)| !v.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::config::metrics::{LegacySeries, MetricsProfile};
    use crate::metrics::catalogue::Unit;
    use crate::metrics::collect::{FsStat, ReadPlan, Reader, StatFs};
    use crate::metrics::mounts::Selection;

    /// statvfs answered from `tests/data/proc/statvfs.ecs-host` (recorded values).
    struct RecordedStat(Vec<(String, StatFs)>);

    impl RecordedStat {
        fn load() -> RecordedStat {
            let text = std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/data/proc/statvfs.ecs-host"
            ))
            .unwrap();
            RecordedStat(
                text.lines()
                    .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                    .map(|l| {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        let n = |i: usize| f[i].parse::<u64>().unwrap();
                        (
                            f[0].to_owned(),
                            StatFs {
                                frsize: n(1),
                                bsize: n(2),
                                blocks: n(3),
                                bfree: n(4),
                                bavail: n(5),
                                files: n(6),
                                ffree: n(7),
                                read_only: f[8] == "ro",
                            },
                        )
                    })
                    .collect(),
            )
        }
    }

    impl FsStat for RecordedStat {
        fn statvfs(&self, path: &Path) -> std::io::Result<StatFs> {
            self.0
                .iter()
                .find(|(p, _)| Path::new(p) == path)
                .map(|(_, s)| *s)
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        }
    }

    /// A proc root with one of the recorded meminfo files and the ECS host mount table.
    fn proc_root(meminfo: &str) -> tempfile::TempDir {
        let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/proc");
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(format!("{data}/{meminfo}"), dir.path().join("meminfo")).unwrap();
        std::fs::create_dir_all(dir.path().join("1")).unwrap();
        std::fs::copy(
            format!("{data}/mountinfo.ecs-host"),
            dir.path().join("1/mountinfo"),
        )
        .unwrap();
        dir
    }

    async fn pass(meminfo: &str) -> Pass {
        let dir = proc_root(meminfo);
        let mut r = Reader::with_sources(
            dir.path().to_owned(),
            Arc::new(RecordedStat::load()),
            ReadPlan {
                selection: Some(Selection::default()),
                legacy_paths: vec!["/".into(), "/var/lib/docker/volumes".into()],
                statvfs_timeout: Duration::from_secs(2),
            },
        );
        r.read().await
    }

    fn identity(asg: Option<&str>) -> Identity {
        Identity {
            instance_id: "i-0123456789abcdef0".into(),
            image_id: "ami-760aaa0f".into(),
            instance_type: "m5.large".into(),
            asg: asg.map(str::to_owned),
            hostname: "ip-10-0-0-5".into(),
            cluster: Some("prod".into()),
        }
    }

    fn catalogue(profile: MetricsProfile) -> Catalogue {
        Catalogue {
            profile,
            namespace: "CWAgent".into(),
            legacy_namespace: "System/Linux".into(),
            enabled: Enabled::default(),
            formula: MemUsedFormula::Classic,
            swap_when_absent: false,
            legacy_memory_units: LegacyUnit::Megabytes,
            legacy_disk_units: LegacyUnit::Gigabytes,
            legacy_incl_cache_buff: false,
            rules: Rules::default(),
            high_resolution: false,
        }
    }

    fn find<'a>(v: &'a [Datum], name: &str, dim: (&str, &str)) -> Vec<&'a Datum> {
        v.iter()
            .filter(|d| {
                d.name == name
                    && d.dimensions
                        .iter()
                        .any(|(n, val)| n == dim.0 && val == dim.1)
            })
            .collect()
    }

    fn value(d: &Datum) -> f64 {
        match d.value {
            crate::metrics::datum::Value::Single(v) => v,
            _ => panic!("packed"),
        }
    }

    /// The default cwagent catalogue on the recorded ECS host (spec meminfo, spec disk on `/`,
    /// a separate Docker volume): exactly the series of metrics.md §8 plus one filesystem.
    #[tokio::test]
    async fn default_cwagent_catalogue_on_recorded_host() {
        let p = pass("meminfo.spec").await;
        let out = build(
            &p,
            &[],
            1_000,
            &identity(Some("web")),
            &catalogue(MetricsProfile::CwAgent),
        );
        assert_eq!(out.len(), 1);
        let (ns, v) = &out[0];
        assert_eq!(ns, "CWAgent");
        // mem_used_percent ×2, mem_available_percent ×1, per filesystem disk_used_percent ×2 and
        // disk_inodes_free ×1, no swap on this host.
        assert_eq!(v.len(), 3 + 2 * 3, "{v:#?}");
        assert!(
            v.iter()
                .all(|d| d.timestamp_ms == 1_000 && !d.high_resolution)
        );
        let mem = find(v, "mem_used_percent", ("AutoScalingGroupName", "web"));
        assert_eq!(mem.len(), 1);
        assert_eq!(value(mem[0]), 42.5);
        assert_eq!(mem[0].unit, Unit::Percent);
        let root = find(v, "disk_used_percent", ("path", "/"));
        assert!((value(root[0]) - 73.68421).abs() < 1e-5);
        assert_eq!(root[0].dimensions.len(), 7);
        // /var/lib/docker: f_frsize 0, so f_bsize 4096: 13,107,200 / (13,107,200 + 11,796,480).
        let docker = find(v, "disk_used_percent", ("path", "/var/lib/docker"));
        assert!((value(docker[0]) - 100.0 * 10.0 / 19.0).abs() < 1e-9);
        assert_eq!(
            value(find(v, "disk_inodes_free", ("path", "/var/lib/docker"))[0]),
            6_000_000.0
        );
        // The rollup copies: one per filesystem into the InstanceId-only series.
        let rollups: Vec<f64> = v
            .iter()
            .filter(|d| d.name == "disk_used_percent" && d.dimensions.len() == 1)
            .map(value)
            .collect();
        assert_eq!(rollups.len(), 2);
    }

    #[tokio::test]
    async fn legacy_profile_on_recorded_host() {
        let p = pass("meminfo.spec").await;
        let mut c = catalogue(MetricsProfile::Legacy);
        c.enabled = Enabled::from_list(&[
            "MemoryUtilization".into(),
            "MemoryUsed".into(),
            "MemoryAvailable".into(),
            "DiskSpaceUtilization".into(),
            "DiskSpaceUsed".into(),
            "DiskSpaceAvailable".into(),
        ]);
        c.rules.legacy_aggregated = LegacySeries::On;
        let out = build(&p, &[], 5_000, &identity(None), &c);
        let (ns, v) = &out[0];
        assert_eq!(ns, "System/Linux");
        let mu = find(
            v,
            "MemoryUtilization",
            ("InstanceId", "i-0123456789abcdef0"),
        );
        assert_eq!(value(mu[0]), 47.5);
        assert_eq!(
            v.iter().filter(|d| d.name == "MemoryUtilization").count(),
            4
        );
        let used = find(v, "MemoryUsed", ("InstanceId", "i-0123456789abcdef0"));
        assert_eq!(
            (value(used[0]), used[0].unit),
            (3_710.937_5, Unit::Megabytes)
        );
        let root = find(v, "DiskSpaceUtilization", ("MountPath", "/"));
        assert_eq!(value(root[0]), 70.0);
        assert_eq!(
            root[0].dimensions[0],
            ("Filesystem".into(), "/dev/nvme0n1p1".into())
        );
        let avail = find(v, "DiskSpaceAvailable", ("MountPath", "/"));
        assert_eq!(
            (value(avail[0]), avail[0].unit),
            (0.95367431640625, Unit::Gigabytes)
        );
        // The second path resolves to /var/lib/docker: 50 % of total.
        let docker = find(v, "DiskSpaceUtilization", ("MountPath", "/var/lib/docker"));
        assert_eq!(value(docker[0]), 50.0);
    }

    #[tokio::test]
    async fn both_profiles_use_two_namespaces_and_swap_follows_the_host() {
        let p = pass("meminfo.hugepages").await;
        let mut c = catalogue(MetricsProfile::Both);
        c.high_resolution = true;
        let health = [Sample {
            name: catalogue::AGENT_RESTARTS,
            unit: Unit::Count,
            value: 2.0,
        }];
        let out = build(&p, &health, 7_000, &identity(None), &c);
        let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["CWAgent", "System/Linux"]);
        let cw = &out[0].1;
        let swap = find(
            cw,
            "swap_used_percent",
            ("InstanceId", "i-0123456789abcdef0"),
        );
        assert_eq!(
            value(swap[0]),
            50.0,
            "the hugepages host has swap, half used"
        );
        assert_eq!(
            value(find(cw, "mem_used_percent", ("InstanceType", "m5.large"))[0]),
            60.0
        );
        let restarts = find(
            cw,
            catalogue::AGENT_RESTARTS,
            ("InstanceId", "i-0123456789abcdef0"),
        );
        assert_eq!(restarts[0].dimensions.len(), 1);
        assert!(cw.iter().all(|d| d.high_resolution));
        let legacy = &out[1].1;
        assert_eq!(
            value(
                legacy
                    .iter()
                    .find(|d| d.name == "MemoryUtilization")
                    .unwrap()
            ),
            61.875
        );
        assert!(!legacy.iter().any(|d| d.name == catalogue::AGENT_RESTARTS));
    }

    #[tokio::test]
    async fn tmpfs_heavy_host_in_both_profiles() {
        let p = pass("meminfo.tmpfs-heavy").await;
        let out = build(
            &p,
            &[],
            0,
            &identity(None),
            &catalogue(MetricsProfile::Both),
        );
        let cw = &out[0].1;
        assert_eq!(
            value(find(cw, "mem_used_percent", ("ImageId", "ami-760aaa0f"))[0]),
            16.25
        );
        assert_eq!(
            value(find(cw, "mem_available_percent", ("ImageId", "ami-760aaa0f"))[0]),
            10.0
        );
        assert!(!cw.iter().any(|d| d.name.starts_with("swap")));
        let legacy = &out[1].1;
        assert_eq!(
            value(
                legacy
                    .iter()
                    .find(|d| d.name == "MemoryUtilization")
                    .unwrap()
            ),
            18.75
        );
    }
}
