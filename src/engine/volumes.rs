//! A task's Docker volumes, prepared once per task before its first container create
//! (container-features.md §6, protocol spec §6.3).
//!
//! Owns what preparing each volume means: a task-scoped volume (`scope: task`, or a `host`
//! volume without `sourcePath`) is created with its driver, options and labels; a shared one is
//! inspected, created when absent and `autoprovision` is true, and otherwise must exist, and with
//! `ECS_SHARED_VOLUME_MATCH_FULL_CONFIG` an existing autoprovisioned one must carry the task
//! definition's driver, options and labels. One Docker call per volume and step, never repeated
//! in a loop. The reasons a task stops with when a volume cannot be had are here too.
//!
//! Never removes a volume (task-scoped ones go with the task's cleanup, shared ones never), never
//! creates or touches containers, never decides when to run (the reconciler does).

use std::collections::BTreeMap;

use crate::engine::model::{TaskRecord, VolumeSource};
use crate::engine::runtime::{ContainerRuntime, RuntimeError, VolumeRequest};

/// What preparing one Docker volume of a task means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Want {
    /// A task-scoped volume: VolumeCreate (Docker answers an existing one as created, so a
    /// retry after a restart is harmless).
    Create(VolumeRequest),
    /// A shared volume: VolumeInspect, then VolumeCreate when absent and `autoprovision`.
    Shared {
        /// The task definition's volume.
        want: VolumeRequest,
        /// Create it when absent (and check it against the definition when asked to).
        autoprovision: bool,
    },
}

impl Want {
    /// The Docker volume name.
    pub fn name(&self) -> &str {
        match self {
            Want::Create(v) | Want::Shared { want: v, .. } => &v.name,
        }
    }
}

/// Why a volume could not be prepared; the text is the task's stop reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeError {
    /// A shared volume that must exist does not (the official agent's words).
    #[error(
        "initialize volume: volume detection failed, volume '{0}' does not exist and autoprovision is set to false"
    )]
    Missing(String),
    /// An existing shared volume differs from the task definition while
    /// `ECS_SHARED_VOLUME_MATCH_FULL_CONFIG=true`.
    #[error(
        "initialize volume: shared volume '{name}' exists but does not match the task definition (ECS_SHARED_VOLUME_MATCH_FULL_CONFIG=true): {differs}"
    )]
    Mismatch {
        /// Docker volume name.
        name: String,
        /// What differs, field by field.
        differs: String,
    },
    /// Docker failed or refused.
    #[error("initialize volume: {op} of volume '{name}' failed: {source}")]
    Docker {
        /// `inspect` or `create`.
        op: &'static str,
        /// Docker volume name.
        name: String,
        /// Docker's error.
        #[source]
        source: RuntimeError,
    },
}

impl VolumeError {
    /// Only Docker being unwell is worth another attempt; a missing or different volume stays so.
    pub fn is_retryable(&self) -> bool {
        match self {
            VolumeError::Docker { source, .. } => source.is_retryable(),
            VolumeError::Missing(_) | VolumeError::Mismatch { .. } => false,
        }
    }
}

/// The Docker volumes of `rec` to prepare (host bind mounts need nothing): shared ones first, so
/// a shared volume that must exist and does not stops the task before anything is created.
pub fn plan(rec: &TaskRecord) -> Vec<Want> {
    let mut wants: Vec<Want> = rec
        .volumes
        .values()
        .filter_map(|v| match v {
            VolumeSource::HostPath(_) => None,
            VolumeSource::Docker {
                name,
                driver,
                driver_opts,
                labels,
                task_scoped,
                create,
            } => {
                let req = VolumeRequest {
                    name: name.clone(),
                    driver: driver.clone(),
                    driver_opts: driver_opts.clone(),
                    labels: labels.clone(),
                };
                Some(if *task_scoped {
                    Want::Create(req)
                } else {
                    Want::Shared {
                        want: req,
                        autoprovision: *create,
                    }
                })
            }
        })
        .collect();
    wants.sort_by_key(|w| matches!(w, Want::Create(_)));
    wants
}

/// Prepares every volume of `wants`, in order; the first that cannot be had is the error.
/// `match_full_config` is `ECS_SHARED_VOLUME_MATCH_FULL_CONFIG`.
pub async fn prepare(
    runtime: &dyn ContainerRuntime,
    wants: &[Want],
    match_full_config: bool,
) -> Result<(), VolumeError> {
    for w in wants {
        prepare_one(runtime, w, match_full_config).await?;
    }
    Ok(())
}

async fn prepare_one(
    runtime: &dyn ContainerRuntime,
    w: &Want,
    match_full_config: bool,
) -> Result<(), VolumeError> {
    let docker = |op, name: &str| {
        let name = name.to_owned();
        move |source| VolumeError::Docker { op, name, source }
    };
    match w {
        Want::Create(v) => runtime
            .create_volume(v)
            .await
            .map_err(docker("create", &v.name)),
        Want::Shared {
            want,
            autoprovision,
        } => {
            let have = runtime
                .inspect_volume(&want.name)
                .await
                .map_err(docker("inspect", &want.name))?;
            match have {
                None if !autoprovision => Err(VolumeError::Missing(want.name.clone())),
                None => runtime
                    .create_volume(want)
                    .await
                    .map_err(docker("create", &want.name)),
                Some(have) if *autoprovision && match_full_config => {
                    match differences(&have, want) {
                        None => Ok(()),
                        Some(differs) => Err(VolumeError::Mismatch {
                            name: want.name.clone(),
                            differs,
                        }),
                    }
                }
                Some(_) => Ok(()),
            }
        }
    }
}

/// How the volume Docker has differs from the one the task wants (driver, options, labels), or
/// `None` when it does not.
pub fn differences(have: &VolumeRequest, want: &VolumeRequest) -> Option<String> {
    let mut out = Vec::new();
    if have.driver != want.driver {
        out.push(format!(
            "driver is {:?}, the task definition says {:?}",
            have.driver, want.driver
        ));
    }
    if have.driver_opts != want.driver_opts {
        out.push(format!(
            "driver options are {}, the task definition says {}",
            show(&have.driver_opts),
            show(&want.driver_opts)
        ));
    }
    if have.labels != want.labels {
        out.push(format!(
            "labels are {}, the task definition says {}",
            show(&have.labels),
            show(&want.labels)
        ));
    }
    (!out.is_empty()).then(|| out.join("; "))
}

fn show(m: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", pairs.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::TaskSpec;
    use crate::engine::runtime::{FakeOp, FakeRuntime};
    use serde_json::json;

    fn rec(volumes: serde_json::Value) -> TaskRecord {
        let spec = TaskSpec::from_json(&json!({
            "arn": "arn:aws:ecs:us-east-1:1:task/c/t", "family": "fam", "version": "7",
            "desiredStatus": "RUNNING", "volumes": volumes,
            "containers": [{"name": "app", "image": "busybox"}]
        }))
        .unwrap();
        TaskRecord::new(spec, 0, 0.0).unwrap()
    }

    fn req(name: &str, driver: &str, opts: &[(&str, &str)]) -> VolumeRequest {
        VolumeRequest {
            name: name.into(),
            driver: driver.into(),
            driver_opts: opts
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn plan_names_task_scoped_volumes_and_leaves_binds_out() {
        let r = rec(json!([
            {"name": "bind", "type": "host", "host": {"sourcePath": "/srv"}},
            {"name": "empty", "type": "host", "host": {"sourcePath": ""}},
            {"name": "scratch", "type": "docker", "dockerVolumeConfiguration":
                {"scope": "task", "driver": "local", "driverOpts": {"type": "tmpfs"}, "labels": {"a": "b"}}},
            {"name": "data", "type": "docker", "dockerVolumeConfiguration":
                {"scope": "shared", "autoprovision": true}},
            {"name": "given", "type": "docker", "dockerVolumeConfiguration": {"scope": "shared", "driver": ""}},
        ]));
        let p = plan(&r);
        assert_eq!(p.len(), 4, "{p:?}");
        let by_name = |prefix: &str| {
            p.iter()
                .find(|w| w.name().starts_with(prefix))
                .unwrap_or_else(|| panic!("{prefix} not in {p:?}"))
                .clone()
        };
        let Want::Create(empty) = by_name("ecs-fam-7-empty-") else {
            panic!("empty host volume is task-scoped")
        };
        assert_eq!(empty.driver, "local");
        let Want::Create(scratch) = by_name("ecs-fam-7-scratch-") else {
            panic!("task scope creates")
        };
        let hex = scratch.name.rsplit('-').next().unwrap();
        assert_eq!(hex.len(), 20);
        assert!(
            hex.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(scratch.driver_opts["type"], "tmpfs");
        assert_eq!(scratch.labels["a"], "b");
        assert_eq!(
            by_name("data"),
            Want::Shared {
                want: req("data", "local", &[]),
                autoprovision: true
            }
        );
        // An empty driver is Docker's default, `local` (as inspect then reports it).
        assert_eq!(
            by_name("given"),
            Want::Shared {
                want: req("given", "local", &[]),
                autoprovision: false
            }
        );
    }

    #[test]
    fn task_scoped_names_survive_a_round_trip_through_the_store_format() {
        let r = rec(
            json!([{"name": "s", "type": "docker", "dockerVolumeConfiguration": {"scope": "task"}}]),
        );
        let back: TaskRecord = serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
        assert_eq!(plan(&back), plan(&r));
    }

    #[tokio::test]
    async fn a_missing_shared_volume_without_autoprovision_is_the_spec_reason() {
        let fake = FakeRuntime::default();
        let wants = [Want::Shared {
            want: req("data", "local", &[]),
            autoprovision: false,
        }];
        let err = prepare(&fake, &wants, false).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "initialize volume: volume detection failed, volume 'data' does not exist and autoprovision is set to false"
        );
        assert!(!err.is_retryable());
        assert!(fake.volumes().is_empty(), "nothing created");
    }

    #[tokio::test]
    async fn an_existing_shared_volume_is_used_as_is_unless_full_match_is_asked() {
        let fake = FakeRuntime::default();
        fake.add_volume(req("data", "local", &[("type", "tmpfs")]));
        let wants = [Want::Shared {
            want: req("data", "local", &[]),
            autoprovision: true,
        }];
        prepare(&fake, &wants, false).await.unwrap();
        let err = prepare(&fake, &wants, true).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("shared volume 'data'"), "{text}");
        assert!(
            text.contains("driver options are {type=tmpfs}, the task definition says {}"),
            "{text}"
        );
        assert!(!text.contains("driver is"), "{text}");
        assert!(!err.is_retryable());
        // Unchanged: never recreated or removed.
        assert_eq!(fake.volumes()["data"].driver_opts["type"], "tmpfs");
    }

    #[tokio::test]
    async fn docker_failures_are_retryable_and_name_the_volume() {
        let fake = FakeRuntime::default();
        fake.fail(
            FakeOp::CreateVolume,
            1,
            RuntimeError::Unavailable("down".into()),
        );
        let wants = [Want::Create(req("v", "local", &[]))];
        let err = prepare(&fake, &wants, false).await.unwrap_err();
        assert!(err.is_retryable());
        assert!(err.to_string().contains("create of volume 'v'"), "{err}");
        prepare(&fake, &wants, false).await.unwrap();
        assert!(fake.volumes().contains_key("v"));
    }

    #[test]
    fn differences_name_each_field() {
        let mut have = req("v", "local", &[("o", "1")]);
        have.labels.insert("team".into(), "a".into());
        let want = req("v", "rexray/ebs:latest", &[("o", "1")]);
        let d = differences(&have, &want).unwrap();
        assert!(
            d.contains("driver is \"local\", the task definition says \"rexray/ebs:latest\""),
            "{d}"
        );
        assert!(
            d.contains("labels are {team=a}, the task definition says {}"),
            "{d}"
        );
        assert!(!d.contains("options"), "{d}");
        assert_eq!(differences(&want, &want), None);
    }
}
