//! Dimensions: the host identity (InstanceId, ImageId, InstanceType from IMDS;
//! AutoScalingGroupName from the instance's `aws:autoscaling:groupName` tag in IMDS, else Auto
//! Scaling's DescribeAutoScalingInstances; the OS hostname; the ECS cluster for the optional
//! ClusterName rollup) and the dimension sets of every datum (metrics.md §2, §4).
//!
//! The set rules are pure functions of the identity, the metric and the filesystem. The lookups
//! sit behind [`AsgLookup`] and [`crate::imds::InstanceMetadata`] so tests use fakes. This module
//! never invents a value: an unknown ASG is an absent dimension, never an empty one.

use async_trait::async_trait;

use super::catalogue::Family;
use super::mounts::Filesystem;
use crate::aws::{self, ApiError};
use crate::config::metrics::{DimensionMode, LegacySeries};
use crate::imds::InstanceMetadata;

/// A list of dimensions sorted by name.
pub type Dims = Vec<(String, String)>;

/// The tag Auto Scaling puts on its instances.
pub const ASG_TAG: &str = "aws:autoscaling:groupName";

/// What the host is, as dimension values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// `InstanceId`.
    pub instance_id: String,
    /// `ImageId`.
    pub image_id: String,
    /// `InstanceType`.
    pub instance_type: String,
    /// `AutoScalingGroupName`, when the instance is in a group.
    pub asg: Option<String>,
    /// `host` (dimension_mode = host).
    pub hostname: String,
    /// `ClusterName` (rollup only).
    pub cluster: Option<String>,
}

/// Dimension errors (identity lookups).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// IMDS failed.
    #[error("instance metadata: {0}")]
    Imds(#[from] crate::imds::Error),
    /// The Auto Scaling lookup failed.
    #[error("Auto Scaling lookup: {0}")]
    Api(#[from] ApiError),
}

impl Error {
    /// Whether trying again later may help.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Imds(e) => e.is_retryable(),
            Error::Api(e) => e.is_retryable(),
        }
    }
}

/// The Auto Scaling group of an instance, from an AWS API.
#[async_trait]
pub trait AsgLookup: Send + Sync {
    /// `Ok(None)`: a successful lookup that shows no group.
    async fn group_of(&self, instance_id: &str) -> Result<Option<String>, ApiError>;
}

/// [`AsgLookup`] over aws-sdk-autoscaling (needs `autoscaling:DescribeAutoScalingInstances`).
pub struct AutoScalingLookup {
    client: aws_sdk_autoscaling::Client,
}

impl AutoScalingLookup {
    /// A client from the shared SDK configuration (endpoint from `AWS_ENDPOINT_URL*`).
    pub fn new(sdk: &aws_config::SdkConfig) -> AutoScalingLookup {
        AutoScalingLookup {
            client: aws_sdk_autoscaling::Client::new(sdk),
        }
    }
}

#[async_trait]
impl AsgLookup for AutoScalingLookup {
    async fn group_of(&self, instance_id: &str) -> Result<Option<String>, ApiError> {
        let out = self
            .client
            .describe_auto_scaling_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .map_err(|e| aws::classify("DescribeAutoScalingInstances", e))?;
        Ok(out
            .auto_scaling_instances()
            .iter()
            .find(|i| i.instance_id() == Some(instance_id))
            .and_then(|i| i.auto_scaling_group_name())
            .map(str::to_owned))
    }
}

/// Reads InstanceId, ImageId and InstanceType from IMDS (required: nothing is published until
/// they are known).
pub async fn read_base(imds: &dyn InstanceMetadata) -> Result<Identity, Error> {
    let instance_id = imds.require("latest/meta-data/instance-id").await?;
    let image_id = imds.require("latest/meta-data/ami-id").await?;
    let instance_type = imds.require("latest/meta-data/instance-type").await?;
    Ok(Identity {
        instance_id: instance_id.trim().to_owned(),
        image_id: image_id.trim().to_owned(),
        instance_type: instance_type.trim().to_owned(),
        asg: None,
        hostname: hostname(),
        cluster: None,
    })
}

/// The OS hostname (for `dimension_mode = host`).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// A definite answer about the ASG: first the instance tags in IMDS (when the instance exposes
/// them), else the Auto Scaling API. `Ok(None)` means "not in a group".
pub async fn resolve_asg(
    imds: &dyn InstanceMetadata,
    lookup: &dyn AsgLookup,
    instance_id: &str,
) -> Result<Option<String>, Error> {
    // With instance tags in metadata on, `tags/instance` lists the keys; off, it is a 404.
    if let Some(keys) = imds.get("latest/meta-data/tags/instance").await? {
        if keys.lines().any(|k| k.trim() == ASG_TAG) {
            let v = imds
                .get(&format!("latest/meta-data/tags/instance/{ASG_TAG}"))
                .await?;
            return Ok(v.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()));
        }
        return Ok(None);
    }
    Ok(lookup
        .group_of(instance_id)
        .await?
        .filter(|v| !v.is_empty()))
}

/// Which metrics get rollup copies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Aggregate {
    /// Every metric.
    All,
    /// These names.
    Only(Vec<String>),
}

impl Aggregate {
    fn covers(&self, name: &str) -> bool {
        match self {
            Aggregate::All => true,
            Aggregate::Only(names) => names.iter().any(|n| n == name),
        }
    }
}

/// The dimension-set rules of every profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    /// cwagent per-host set.
    pub mode: DimensionMode,
    /// Leave `device` out of disk sets.
    pub drop_device: bool,
    /// Rollup sets (metrics.md §4.2).
    pub rollups: Vec<Vec<String>>,
    /// Metrics that get rollups.
    pub aggregate: Aggregate,
    /// `legacy.aggregated`.
    pub legacy_aggregated: LegacySeries,
    /// `legacy.auto_scaling`.
    pub legacy_auto_scaling: LegacySeries,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            mode: DimensionMode::Ec2,
            drop_device: false,
            rollups: vec![vec!["InstanceId".into()]],
            aggregate: Aggregate::Only(vec!["mem_used_percent".into(), "disk_used_percent".into()]),
            legacy_aggregated: LegacySeries::Off,
            legacy_auto_scaling: LegacySeries::Off,
        }
    }
}

/// Parses the configured rollup sets: each entry names joined with `+`, `""` = empty set.
pub fn parse_rollups(entries: &[String]) -> Vec<Vec<String>> {
    entries
        .iter()
        .map(|e| {
            let mut set: Vec<String> = e
                .split('+')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect();
            set.sort();
            set.dedup();
            set
        })
        .collect()
}

fn push(d: &mut Dims, name: &str, value: &str) {
    d.push((name.to_owned(), value.to_owned()));
}

fn sorted(mut d: Dims) -> Dims {
    d.sort();
    d
}

impl Rules {
    /// The per-host set of a cwagent datum (metrics.md §4.1, §4.3).
    fn cwagent_base(&self, id: &Identity, family: Family, fs: Option<&Filesystem>) -> Dims {
        let mut d = Dims::new();
        match self.mode {
            DimensionMode::Ec2 => {
                push(&mut d, "InstanceId", &id.instance_id);
                if family != Family::Health {
                    push(&mut d, "ImageId", &id.image_id);
                    push(&mut d, "InstanceType", &id.instance_type);
                    if let Some(asg) = &id.asg {
                        push(&mut d, "AutoScalingGroupName", asg);
                    }
                }
            }
            DimensionMode::Host => push(&mut d, "host", &id.hostname),
        }
        if let (Family::Disk, Some(fs)) = (family, fs) {
            if !self.drop_device {
                push(&mut d, "device", &fs.device);
            }
            push(&mut d, "fstype", &fs.fstype);
            push(&mut d, "path", &fs.mount_point);
        }
        sorted(d)
    }

    /// Every dimension set of one cwagent datum: the per-host set, then one copy per rollup set
    /// when the metric is aggregated (metrics.md §4.2).
    pub fn cwagent(
        &self,
        id: &Identity,
        metric: &str,
        family: Family,
        fs: Option<&Filesystem>,
    ) -> Vec<Dims> {
        let base = self.cwagent_base(id, family, fs);
        let mut out = vec![base.clone()];
        if family == Family::Health || !self.aggregate.covers(metric) {
            return out;
        }
        'sets: for set in &self.rollups {
            if set.len() >= base.len() {
                continue;
            }
            let mut copy = Dims::new();
            for name in set {
                let value = if name == "ClusterName" {
                    id.cluster.clone()
                } else {
                    base.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
                };
                match value {
                    Some(v) => copy.push((name.clone(), v)),
                    None => continue 'sets,
                }
            }
            let copy = sorted(copy);
            if !out.contains(&copy) {
                out.push(copy);
            }
        }
        out
    }

    /// Every dimension set of one legacy datum (metrics.md §4.4). `fs` is `Some` for disk metrics.
    pub fn legacy(&self, id: &Identity, fs: Option<&Filesystem>) -> Vec<Dims> {
        let only = self.legacy_aggregated == LegacySeries::Only
            || self.legacy_auto_scaling == LegacySeries::Only;
        let with_fs = |mut d: Dims| {
            if let Some(fs) = fs {
                push(&mut d, "Filesystem", &fs.source);
                push(&mut d, "MountPath", &fs.mount_point);
            }
            sorted(d)
        };
        let mut out = Vec::new();
        if !only {
            out.push(with_fs(vec![("InstanceId".into(), id.instance_id.clone())]));
        }
        if self.legacy_auto_scaling != LegacySeries::Off
            && let Some(asg) = &id.asg
        {
            out.push(with_fs(vec![("AutoScalingGroupName".into(), asg.clone())]));
        }
        if self.legacy_aggregated != LegacySeries::Off {
            out.push(with_fs(vec![(
                "InstanceType".into(),
                id.instance_type.clone(),
            )]));
            out.push(with_fs(vec![("ImageId".into(), id.image_id.clone())]));
            out.push(with_fs(Vec::new()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imds;
    use std::collections::HashMap;

    fn id(asg: Option<&str>) -> Identity {
        Identity {
            instance_id: "i-0abc".into(),
            image_id: "ami-1".into(),
            instance_type: "m5.large".into(),
            asg: asg.map(str::to_owned),
            hostname: "ip-10-0-0-1".into(),
            cluster: Some("prod".into()),
        }
    }

    fn root() -> Filesystem {
        Filesystem {
            mount_point: "/".into(),
            source: "/dev/nvme0n1p1".into(),
            device: "nvme0n1p1".into(),
            fstype: "xfs".into(),
        }
    }

    fn names(sets: &[Dims]) -> Vec<Vec<&str>> {
        sets.iter()
            .map(|d| d.iter().map(|(n, _)| n.as_str()).collect())
            .collect()
    }

    /// metrics.md §12 test 4.
    #[test]
    fn memory_sets_with_and_without_asg() {
        let r = Rules::default();
        let sets = r.cwagent(&id(Some("web")), "mem_used_percent", Family::Host, None);
        assert_eq!(
            names(&sets),
            [
                vec![
                    "AutoScalingGroupName",
                    "ImageId",
                    "InstanceId",
                    "InstanceType"
                ],
                vec!["InstanceId"]
            ]
        );
        let sets = r.cwagent(&id(None), "mem_available_percent", Family::Host, None);
        assert_eq!(
            names(&sets),
            [vec!["ImageId", "InstanceId", "InstanceType"]]
        );
    }

    #[test]
    fn disk_sets_add_device_fstype_path_and_rollup() {
        let r = Rules::default();
        let sets = r.cwagent(&id(None), "disk_used_percent", Family::Disk, Some(&root()));
        assert_eq!(sets[0].len(), 6);
        assert!(sets[0].contains(&("device".into(), "nvme0n1p1".into())));
        assert!(sets[0].contains(&("path".into(), "/".into())));
        assert_eq!(
            sets[1],
            vec![("InstanceId".to_owned(), "i-0abc".to_owned())]
        );
        let inodes = r.cwagent(&id(None), "disk_inodes_free", Family::Disk, Some(&root()));
        assert_eq!(inodes.len(), 1, "no rollup outside aggregate_metrics");
        let r = Rules {
            drop_device: true,
            ..Rules::default()
        };
        let sets = r.cwagent(&id(None), "disk_used_percent", Family::Disk, Some(&root()));
        assert!(!sets[0].iter().any(|(n, _)| n == "device"));
    }

    #[test]
    fn rollups_skip_missing_and_not_smaller_sets_and_take_cluster_name() {
        let r = Rules {
            rollups: parse_rollups(&[
                "AutoScalingGroupName".into(),
                "ClusterName".into(),
                "InstanceType+ImageId".into(),
                "".into(),
                "AutoScalingGroupName+ImageId+InstanceId+InstanceType".into(),
            ]),
            aggregate: Aggregate::All,
            ..Rules::default()
        };
        let sets = r.cwagent(&id(None), "mem_free", Family::Host, None);
        assert_eq!(
            sets,
            vec![
                sorted(vec![
                    ("InstanceId".into(), "i-0abc".into()),
                    ("ImageId".into(), "ami-1".into()),
                    ("InstanceType".into(), "m5.large".into())
                ]),
                vec![("ClusterName".into(), "prod".into())],
                vec![
                    ("ImageId".into(), "ami-1".into()),
                    ("InstanceType".into(), "m5.large".into())
                ],
                vec![],
            ]
        );
        let host = Rules {
            mode: DimensionMode::Host,
            ..Rules::default()
        };
        let sets = host.cwagent(&id(None), "disk_used_percent", Family::Disk, Some(&root()));
        assert_eq!(names(&sets), [vec!["device", "fstype", "host", "path"]]);
    }

    #[test]
    fn legacy_sets_follow_aggregated_and_auto_scaling() {
        let r = Rules {
            legacy_aggregated: LegacySeries::On,
            ..Rules::default()
        };
        assert_eq!(r.legacy(&id(Some("web")), None).len(), 4);
        let r = Rules {
            legacy_aggregated: LegacySeries::On,
            legacy_auto_scaling: LegacySeries::On,
            ..Rules::default()
        };
        assert_eq!(r.legacy(&id(Some("web")), None).len(), 5);
        assert_eq!(r.legacy(&id(None), None).len(), 4);
        let disk = r.legacy(&id(Some("web")), Some(&root()));
        assert_eq!(
            names(&disk),
            [
                vec!["Filesystem", "InstanceId", "MountPath"],
                vec!["AutoScalingGroupName", "Filesystem", "MountPath"],
                vec!["Filesystem", "InstanceType", "MountPath"],
                vec!["Filesystem", "ImageId", "MountPath"],
                vec!["Filesystem", "MountPath"],
            ]
        );
        assert_eq!(disk[0][0].1, "/dev/nvme0n1p1", "Filesystem keeps /dev/");
        let only = Rules {
            legacy_auto_scaling: LegacySeries::Only,
            ..Rules::default()
        };
        assert_eq!(
            names(&only.legacy(&id(Some("web")), None)),
            [vec!["AutoScalingGroupName"]]
        );
        assert_eq!(Rules::default().legacy(&id(Some("web")), None).len(), 1);
    }

    struct FakeImds(HashMap<&'static str, &'static str>);

    #[async_trait]
    impl InstanceMetadata for FakeImds {
        async fn get(&self, path: &str) -> Result<Option<String>, imds::Error> {
            Ok(self.0.get(path).map(|v| (*v).to_owned()))
        }
    }

    struct FakeAsg(Result<Option<String>, ApiError>);

    #[async_trait]
    impl AsgLookup for FakeAsg {
        async fn group_of(&self, _: &str) -> Result<Option<String>, ApiError> {
            self.0.clone()
        }
    }

    #[tokio::test]
    async fn asg_comes_from_imds_tags_first_then_auto_scaling() {
        let api = FakeAsg(Ok(Some("from-api".into())));
        let tags_on = FakeImds(HashMap::from([
            (
                "latest/meta-data/tags/instance",
                "Name\naws:autoscaling:groupName",
            ),
            (
                "latest/meta-data/tags/instance/aws:autoscaling:groupName",
                "from-tags",
            ),
        ]));
        assert_eq!(
            resolve_asg(&tags_on, &api, "i").await.unwrap().as_deref(),
            Some("from-tags")
        );
        let tags_no_asg = FakeImds(HashMap::from([("latest/meta-data/tags/instance", "Name")]));
        assert_eq!(resolve_asg(&tags_no_asg, &api, "i").await.unwrap(), None);
        let tags_off = FakeImds(HashMap::new());
        assert_eq!(
            resolve_asg(&tags_off, &api, "i").await.unwrap().as_deref(),
            Some("from-api")
        );
        let failing = FakeAsg(Err(ApiError {
            operation: "DescribeAutoScalingInstances",
            kind: aws::ErrorKind::Transport,
            code: None,
            message: "refused".into(),
        }));
        let e = resolve_asg(&tags_off, &failing, "i").await.unwrap_err();
        assert!(e.is_retryable());
        let base = FakeImds(HashMap::from([
            ("latest/meta-data/instance-id", "i-1\n"),
            ("latest/meta-data/ami-id", "ami-2"),
            ("latest/meta-data/instance-type", "t3.micro"),
        ]));
        let b = read_base(&base).await.unwrap();
        assert_eq!(
            (
                b.instance_id.as_str(),
                b.image_id.as_str(),
                b.instance_type.as_str()
            ),
            ("i-1", "ami-2", "t3.micro")
        );
    }
}
