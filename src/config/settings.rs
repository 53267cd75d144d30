//! The settings table: one row per key the agent understands, with its config.toml path (our
//! settings only), its default as documented, a one-line meaning, and how a value is applied.
//!
//! The README's configuration table lists exactly these keys (a test checks it).

use std::net::SocketAddr;
use std::time::Duration;

use super::values::*;
use super::{
    Config, DimensionMode, LegacySeries, LegacyUnit, MemUsedFormula, MetricsProfile, PullBehavior,
    Raw, RebalanceAction,
};

/// What happened to one value.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// The value was applied.
    Set,
    /// A recognised official key that ecs-hostd does not implement; the text says why.
    Unsupported(String),
    /// A key nobody knows.
    Unknown,
}

type ApplyFn = fn(&mut Config, &Raw, &mut Vec<String>) -> Result<(), String>;

/// One setting.
pub struct Setting {
    /// Name in ecs.config and the environment.
    pub key: &'static str,
    /// Dotted path in config.toml (our own settings only).
    pub toml: Option<&'static str>,
    /// The default, as written in the docs.
    pub default: &'static str,
    /// What it does.
    pub help: &'static str,
    apply: ApplyFn,
}

/// Official keys that are recognised but not implemented: `(key, values that are harmless because
/// they ask for what we do anyway, why)`.
pub const UNSUPPORTED: &[(&str, &[&str], &str)] = &[
    (
        "ECS_CHECKPOINT",
        &["true", "1"],
        "ecs-hostd always keeps its state in ECS_DATADIR",
    ),
    (
        "ECS_LOGFILE",
        &[],
        "ecs-hostd logs to the journal (or stderr), not to a file",
    ),
    (
        "ECS_CONTAINER_INSTANCE_PROPAGATE_TAGS_FROM",
        &["none"],
        "copying EC2 tags is not implemented; set ECS_CONTAINER_INSTANCE_TAGS",
    ),
    (
        "ECS_ENABLE_GPU_SUPPORT",
        &["false", "0"],
        "GPUs are not implemented",
    ),
    (
        "ECS_ENABLE_CONTAINER_METADATA",
        &["false", "0"],
        "container metadata files are not implemented",
    ),
    (
        "ECS_UPDATES_ENABLED",
        &["false", "0"],
        "ecs-hostd never updates itself over ACS; upgrade the package instead",
    ),
    (
        "ECS_ENABLE_RUNTIME_STATS",
        &["false", "0"],
        "pprof-style runtime stats are not served",
    ),
    (
        "ECS_EXTERNAL",
        &["false", "0"],
        "ECS Anywhere is not supported",
    ),
    (
        "ECS_OFFHOST_INTROSPECTION_INTERFACE_NAME",
        &[],
        "the local API binds to ECS_HOSTD_API_ADDR",
    ),
];

/// `ECS_TASK_METADATA_RPS_LIMIT`: `"R,B"`, both positive integers, spaces trimmed.
pub fn parse_rps_limit(s: &str) -> Option<(u32, u32)> {
    let (r, b) = s.split_once(',')?;
    let r: u32 = r.trim().parse().ok().filter(|r| *r > 0)?;
    let b: u32 = b.trim().parse().ok().filter(|b| *b > 0)?;
    Some((r, b))
}

fn text(v: &Raw) -> Result<String, String> {
    match v {
        Raw::Text(s) => Ok(s.clone()),
        Raw::Toml(toml::Value::String(s)) => Ok(s.clone()),
        Raw::Toml(toml::Value::Integer(i)) => Ok(i.to_string()),
        Raw::Toml(toml::Value::Float(f)) => Ok(f.to_string()),
        Raw::Toml(toml::Value::Boolean(b)) => Ok(b.to_string()),
        Raw::Toml(other) => Err(format!("expected a single value, got {}", other.type_str())),
    }
}

fn boolean(v: &Raw) -> Result<bool, String> {
    match v {
        Raw::Toml(toml::Value::Boolean(b)) => Ok(*b),
        other => parse_bool(&text(other)?),
    }
}

fn duration(v: &Raw) -> Result<Duration, String> {
    match v {
        Raw::Toml(toml::Value::Integer(i)) if *i >= 0 => Ok(Duration::from_secs(*i as u64)),
        other => parse_duration(&text(other)?),
    }
}

fn number(v: &Raw) -> Result<u64, String> {
    parse_u64(&text(v)?)
}

fn nonempty(v: &Raw) -> Result<String, String> {
    let s = text(v)?;
    if s.trim().is_empty() {
        Err("expected a non-empty value".into())
    } else {
        Ok(s.trim().to_owned())
    }
}

/// A TOML array of strings, or text as a JSON list or a comma-separated list.
fn string_list(v: &Raw) -> Result<Vec<String>, String> {
    match v {
        Raw::Toml(toml::Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                toml::Value::String(s) => Ok(s.clone()),
                other => Err(format!(
                    "expected a list of strings, found a {}",
                    other.type_str()
                )),
            })
            .collect(),
        other => {
            let s = text(other)?;
            if s.trim_start().starts_with('[') {
                parse_string_list(&s)
            } else {
                Ok(parse_comma_list(&s))
            }
        }
    }
}

/// Timeouts below their minimum are clamped (official behaviour).
fn clamp_min(d: Duration, min: Duration, notes: &mut Vec<String>) -> Duration {
    if d < min {
        notes.push(format!("below the minimum of {min:?}; {min:?} is used"));
        min
    } else {
        d
    }
}

/// Cleanup settings below their minimum are replaced by the default (official behaviour).
fn default_below(
    d: Duration,
    min: Duration,
    default: Duration,
    notes: &mut Vec<String>,
) -> Duration {
    if d < min {
        notes.push(format!(
            "below the minimum of {min:?}; the default {default:?} is used"
        ));
        default
    } else {
        d
    }
}

/// A CloudWatch namespace: ASCII, 1–255 characters, not starting with `AWS/`.
fn namespace(v: &Raw) -> Result<String, String> {
    let ns = nonempty(v)?;
    if ns.starts_with("AWS/") || ns.len() > 255 || !ns.is_ascii() {
        return Err(format!(
            "expected an ASCII namespace not starting with AWS/ and at most 255 characters, got {ns:?}"
        ));
    }
    Ok(ns)
}

fn legacy_unit(v: &Raw) -> Result<LegacyUnit, String> {
    match nonempty(v)?.to_ascii_lowercase().as_str() {
        "bytes" => Ok(LegacyUnit::Bytes),
        "kilobytes" => Ok(LegacyUnit::Kilobytes),
        "megabytes" => Ok(LegacyUnit::Megabytes),
        "gigabytes" => Ok(LegacyUnit::Gigabytes),
        other => Err(format!(
            "expected bytes, kilobytes, megabytes or gigabytes, got {other:?}"
        )),
    }
}

fn legacy_series(v: &Raw) -> Result<LegacySeries, String> {
    match text(v)?.trim().to_ascii_lowercase().as_str() {
        "off" | "false" => Ok(LegacySeries::Off),
        "on" | "true" => Ok(LegacySeries::On),
        "only" => Ok(LegacySeries::Only),
        other => Err(format!("expected off, on or only, got {other:?}")),
    }
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

macro_rules! s {
    ($key:literal, $toml:expr, $default:literal, $help:literal, $apply:expr) => {
        Setting {
            key: $key,
            toml: $toml,
            default: $default,
            help: $help,
            apply: $apply,
        }
    };
}

/// Every supported setting. Official keys first (protocol spec §11), then ours.
pub static SETTINGS: &[Setting] = &[
    s!(
        "ECS_CLUSTER",
        None,
        "default",
        "Cluster to join (name or ARN).",
        |c, v, _| {
            c.cluster = nonempty(v)?;
            Ok(())
        }
    ),
    s!(
        "AWS_DEFAULT_REGION",
        None,
        "from IMDS",
        "Region; otherwise taken from the instance identity document.",
        |c, v, _| {
            c.region = Some(nonempty(v)?);
            Ok(())
        }
    ),
    s!(
        "ECS_BACKEND_HOST",
        None,
        "-",
        "ECS API endpoint override (AWS_ENDPOINT_URL_ECS works too).",
        |c, v, _| {
            c.ecs_endpoint = Some(nonempty(v)?);
            Ok(())
        }
    ),
    s!(
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        None,
        "http://169.254.169.254",
        "IMDS base URL.",
        |c, v, _| {
            let s = nonempty(v)?;
            if !s.starts_with("http://") || crate::imds::check_endpoint(&s).is_err() {
                return Err(format!(
                    "expected an http:// URL (IMDS is plain HTTP), got {s:?}"
                ));
            }
            c.imds_endpoint = s.trim_end_matches('/').to_owned();
            Ok(())
        }
    ),
    s!(
        "DOCKER_HOST",
        None,
        "unix:///var/run/docker.sock",
        "Docker endpoint.",
        |c, v, _| {
            c.docker_host = Some(nonempty(v)?);
            Ok(())
        }
    ),
    s!(
        "HTTP_PROXY",
        None,
        "-",
        "Proxy (http://[user:pass@]host:port) for plain-http endpoints; like the two below, read from ecs.config as well as the environment, and followed by the AWS API clients and the ACS websocket (CONNECT). IMDS always goes direct.",
        |c, v, _| {
            c.proxy.http = Some(nonempty(v)?);
            Ok(())
        }
    ),
    s!(
        "HTTPS_PROXY",
        None,
        "-",
        "Proxy for https:// and wss:// endpoints (AWS APIs, ACS); HTTP_PROXY alone covers only plain http.",
        |c, v, _| {
            c.proxy.https = Some(nonempty(v)?);
            Ok(())
        }
    ),
    s!(
        "NO_PROXY",
        None,
        "-",
        "Hosts, domain suffixes (.internal) and CIDRs reached directly; 169.254.169.254 and 169.254.170.2 are always added.",
        |c, v, _| {
            c.proxy.no_proxy = Some(text(v)?);
            Ok(())
        }
    ),
    s!(
        "ECS_DATADIR",
        None,
        "/var/lib/ecs-hostd",
        "Where the state database lives.",
        |c, v, _| {
            let s = nonempty(v)?;
            if !s.starts_with('/') {
                return Err(format!("expected an absolute path, got {s:?}"));
            }
            c.data_dir = s.into();
            Ok(())
        }
    ),
    s!(
        "ECS_LOGLEVEL",
        None,
        "info",
        "crit, error, warn, info, debug (RUST_LOG wins).",
        |c, v, _| {
            let s = nonempty(v)?.to_ascii_lowercase();
            match s.as_str() {
                "crit" | "error" | "warn" | "info" | "debug" | "trace" => {
                    c.log_level = s;
                    Ok(())
                }
                _ => Err(format!(
                    "expected one of crit, error, warn, info, debug, got {s:?}"
                )),
            }
        }
    ),
    s!(
        "ECS_RESERVED_MEMORY",
        None,
        "0",
        "MiB not offered to ECS.",
        |c, v, _| {
            c.reserved_memory_mib = number(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_RESERVED_PORTS",
        None,
        "[22,2375,2376,51678,51679]",
        "TCP ports ECS must not assign; replaces the default list.",
        |c, v, _| {
            c.reserved_ports = parse_port_list(&text(v)?)?;
            Ok(())
        }
    ),
    s!(
        "ECS_RESERVED_PORTS_UDP",
        None,
        "[]",
        "UDP ports ECS must not assign.",
        |c, v, _| {
            c.reserved_ports_udp = parse_port_list(&text(v)?)?;
            Ok(())
        }
    ),
    s!(
        "ECS_INSTANCE_ATTRIBUTES",
        None,
        "{}",
        "Custom attributes (JSON object), first registration only.",
        |c, v, _| {
            c.instance_attributes = parse_string_map(&text(v)?)?;
            Ok(())
        }
    ),
    s!(
        "ECS_CONTAINER_INSTANCE_TAGS",
        None,
        "{}",
        "Container instance tags (JSON object; keys ≤128, values ≤256 chars).",
        |c, v, _| {
            let tags = parse_string_map(&text(v)?)?;
            if let Some((k, _)) = tags
                .iter()
                .find(|(k, val)| k.chars().count() > 128 || val.chars().count() > 256)
            {
                return Err(format!(
                    "tag {k:?} is too long (keys ≤128, values ≤256 characters)"
                ));
            }
            c.container_instance_tags = tags;
            Ok(())
        }
    ),
    s!(
        "ECS_AVAILABLE_LOGGING_DRIVERS",
        None,
        "[\"json-file\",\"syslog\",\"awslogs\",\"fluentd\",\"none\"]",
        "Logging drivers advertised to ECS (the ECS-optimized AMI's list), each only if this Docker has it (docker info's log plugins; none always).",
        |c, v, _| {
            c.available_logging_drivers = parse_string_list(&text(v)?)?;
            Ok(())
        }
    ),
    s!(
        "ECS_DISABLE_PRIVILEGED",
        None,
        "false",
        "Refuse privileged containers and do not advertise them.",
        |c, v, _| {
            c.disable_privileged = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_ENABLE_TASK_ENI",
        None,
        "true",
        "Run tasks in the awsvpc network mode (the task's ENI in its network pause container's namespace) and advertise task-eni, when Docker has the pause image (ECS_HOSTD_PAUSE_IMAGE) and IMDS says the instance is in a VPC; true as ecs-init on EC2.",
        |c, v, _| {
            c.awsvpc.enable_task_eni = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_AWSVPC_BLOCK_IMDS",
        None,
        "false",
        "Make the instance metadata service (169.254.169.254) unreachable from awsvpc tasks (an unreachable route in each task's namespace) and advertise task-eni-block-instance-metadata (with task-eni only).",
        |c, v, _| {
            c.awsvpc.block_imds = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_TEST_ACCEPT_VIRTUAL_ENIS",
        Some("test.accept_virtual_enis"),
        "false",
        "TEST WORLDS ONLY: take a virtual link (dummy, veth) with an ENI's MAC address for the ENI. On EC2 an ENI is always a device; never set this in production (a warning is logged when it is on).",
        |c, v, _| {
            c.awsvpc.test_accept_virtual_enis = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_ENABLE_TASK_IAM_ROLE",
        None,
        "true",
        "Run tasks with a task role in bridge mode and advertise task-iam-role (when the 169.254.170.2 NAT is in place); true as on the ECS-optimized AMI.",
        |c, v, _| {
            c.host_nat.task_iam_role = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST",
        None,
        "true",
        "The same for host-network tasks (task-iam-role-network-host).",
        |c, v, _| {
            c.host_nat.task_iam_role_network_host = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_ENABLE_AWSLOGS_EXECUTIONROLE_OVERRIDE",
        None,
        "true",
        "Let dockerd's awslogs driver sign with the task's execution role (through the 169.254.170.2 NAT) and advertise execution-role-awslogs; true as on the ECS-optimized AMI.",
        |c, v, _| {
            c.host_nat.execution_role_awslogs = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_SKIP_LOCALHOST_TRAFFIC_FILTER",
        None,
        "false",
        "Leave out the filter that drops non-loopback traffic to 127.0.0.0/8 (the task endpoint's NAT installs it).",
        |c, v, _| {
            c.host_nat.skip_localhost_filter = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_ALLOW_OFFHOST_INTROSPECTION_ACCESS",
        None,
        "false",
        "Leave out the rules that keep port 51678 to loopback and the Docker bridge.",
        |c, v, _| {
            c.host_nat.allow_offhost_introspection = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_SELINUX_CAPABLE",
        None,
        "false",
        "Advertise SELinux capability.",
        |c, v, _| {
            c.selinux_capable = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_APPARMOR_CAPABLE",
        None,
        "false",
        "Advertise AppArmor capability.",
        |c, v, _| {
            c.apparmor_capable = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_CONTAINER_STOP_TIMEOUT",
        None,
        "30s",
        "SIGTERM to SIGKILL grace (min 1s).",
        |c, v, n| {
            c.engine.container_stop_timeout = clamp_min(duration(v)?, secs(1), n);
            Ok(())
        }
    ),
    s!(
        "ECS_CONTAINER_START_TIMEOUT",
        None,
        "3m",
        "Docker start timeout (min 45s).",
        |c, v, n| {
            c.engine.container_start_timeout = clamp_min(duration(v)?, secs(45), n);
            Ok(())
        }
    ),
    s!(
        "ECS_CONTAINER_CREATE_TIMEOUT",
        None,
        "4m",
        "Docker create timeout (min 1m).",
        |c, v, n| {
            c.engine.container_create_timeout = clamp_min(duration(v)?, secs(60), n);
            Ok(())
        }
    ),
    s!(
        "ECS_MANIFEST_PULL_TIMEOUT",
        None,
        "1m",
        "Image manifest resolution timeout (min 30s).",
        |c, v, n| {
            c.engine.manifest_pull_timeout = clamp_min(duration(v)?, secs(30), n);
            Ok(())
        }
    ),
    s!(
        "ECS_IMAGE_PULL_TIMEOUT",
        None,
        "2h",
        "Overall image pull timeout.",
        |c, v, _| {
            c.engine.image_pull_timeout = duration(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_IMAGE_PULL_INACTIVITY_TIMEOUT",
        None,
        "1m",
        "Abort a pull without progress this long (min 1m).",
        |c, v, n| {
            c.engine.image_pull_inactivity_timeout = clamp_min(duration(v)?, secs(60), n);
            Ok(())
        }
    ),
    s!(
        "ECS_IMAGE_PULL_BEHAVIOR",
        None,
        "default",
        "default, always, once or prefer-cached.",
        |c, v, _| {
            c.engine.image_pull_behavior = match nonempty(v)?.to_ascii_lowercase().as_str() {
                "default" => PullBehavior::Default,
                "always" => PullBehavior::Always,
                "once" => PullBehavior::Once,
                "prefer-cached" => PullBehavior::PreferCached,
                other => {
                    return Err(format!(
                        "expected default, always, once or prefer-cached, got {other:?}"
                    ));
                }
            };
            Ok(())
        }
    ),
    s!(
        "ECS_PULL_DEPENDENT_CONTAINERS_UPFRONT",
        None,
        "false",
        "Pull images before dependsOn conditions are met.",
        |c, v, _| {
            c.engine.pull_dependent_containers_upfront = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_SHARED_VOLUME_MATCH_FULL_CONFIG",
        None,
        "false",
        "An existing autoprovisioned shared Docker volume must have the task definition's driver, options and labels, else the task stops.",
        |c, v, _| {
            c.engine.shared_volume_match_full_config = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION",
        None,
        "3h",
        "Keep a stopped task's containers this long (values below 1s ignored).",
        |c, v, n| {
            c.engine.task_cleanup_wait = default_below(duration(v)?, secs(1), secs(3 * 3600), n);
            Ok(())
        }
    ),
    s!(
        "ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION_JITTER",
        None,
        "0",
        "Random extra wait before task cleanup.",
        |c, v, _| {
            c.engine.task_cleanup_wait_jitter = duration(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_DISABLE_IMAGE_CLEANUP",
        None,
        "false",
        "Never remove images.",
        |c, v, _| {
            c.engine.image_cleanup_disabled = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_IMAGE_CLEANUP_INTERVAL",
        None,
        "30m",
        "Image cleanup period (min 10m).",
        |c, v, n| {
            c.engine.image_cleanup_interval = default_below(duration(v)?, secs(600), secs(1800), n);
            Ok(())
        }
    ),
    s!(
        "ECS_IMAGE_MINIMUM_CLEANUP_AGE",
        None,
        "1h",
        "Only remove images pulled at least this long ago.",
        |c, v, _| {
            c.engine.image_minimum_cleanup_age = duration(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_NUM_IMAGES_DELETE_PER_CYCLE",
        None,
        "5",
        "Images removed per cleanup cycle (min 1).",
        |c, v, n| {
            let k = number(v)?;
            c.engine.num_images_delete_per_cycle = if k == 0 {
                n.push("below the minimum of 1; the default 5 is used".into());
                5
            } else {
                k.min(u64::from(u32::MAX)) as u32
            };
            Ok(())
        }
    ),
    s!(
        "ECS_ENABLE_UNTRACKED_IMAGE_CLEANUP",
        None,
        "false",
        "Also remove images not pulled by the agent: unused by any container, named by no task, within the per-cycle budget (containers are never removed).",
        |c, v, _| {
            c.engine.untracked_image_cleanup = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "NON_ECS_IMAGE_MINIMUM_CLEANUP_AGE",
        None,
        "1h",
        "Minimum age of untracked images (since created) before removal.",
        |c, v, _| {
            c.engine.non_ecs_image_minimum_cleanup_age = duration(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_EXCLUDE_UNTRACKED_IMAGE",
        None,
        "-",
        "Comma-separated name:tag images never removed.",
        |c, v, _| {
            c.engine.exclude_untracked_images = parse_comma_list(&text(v)?);
            Ok(())
        }
    ),
    s!(
        "ECS_DYNAMIC_HOST_PORT_RANGE",
        None,
        "kernel ephemeral range",
        "low-high range for hostPort 0.",
        |c, v, _| {
            c.engine.dynamic_host_port_range = Some(parse_port_range(&text(v)?)?);
            Ok(())
        }
    ),
    s!(
        "ECS_EXCLUDE_IPV6_PORTBINDING",
        None,
        "true",
        "Drop IPv6 bindings from state reports.",
        |c, v, _| {
            c.engine.exclude_ipv6_port_binding = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_ENABLE_TASK_CPU_MEM_LIMIT",
        None,
        "true",
        "Task-level CPU and memory limits: a cgroup per task (v1 `/ecs/<task id>`, v2 `ecstasks`, or a systemd slice `ecstasks-<task id>.slice`) as every container's parent; `false` (or a host without them): task `cpu`/`memory` ignored with a warning, capability not advertised.",
        |c, v, _| {
            c.engine.task_cpu_mem_limit = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_CGROUP_CPU_PERIOD",
        None,
        "100ms",
        "CFS period of a task cgroup when the task has `cpu` (quota = cpu × period); 8ms–100ms.",
        |c, v, _| {
            let d = duration(v)?;
            if d < Duration::from_millis(8) || d > Duration::from_millis(100) {
                return Err(format!(
                    "expected a duration between 8ms and 100ms, got {d:?}"
                ));
            }
            c.engine.cgroup_cpu_period = d;
            Ok(())
        }
    ),
    s!(
        "ECS_TASK_PIDS_LIMIT",
        None,
        "unset",
        "`pids.max` of each task cgroup (> 0; unset or 0: no limit).",
        |c, v, _| {
            c.engine.task_pids_limit = Some(number(v)?);
            Ok(())
        }
    ),
    s!(
        "ECS_DISABLE_METRICS",
        None,
        "false",
        "Do not sample containers: TCS gets idle frames only (no service auto scaling metrics) and task metadata /stats answers 500.",
        |c, v, _| {
            c.telemetry.metrics_disabled = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_POLL_METRICS",
        None,
        "true",
        "Accepted for compatibility: ecs-hostd always polls (it reads cgroup files, never Docker stats streams).",
        |_, v, _| {
            boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_POLLING_METRICS_WAIT_DURATION",
        None,
        "5s",
        "How often each running container's cgroup files are sampled; clamped to 5s–20s.",
        |c, v, warnings| {
            let d = duration(v)?;
            let clamped = d.clamp(Duration::from_secs(5), Duration::from_secs(20));
            if clamped != d {
                warnings.push(format!("{d:?} is outside 5s–20s; using {clamped:?}"));
            }
            c.telemetry.sample_interval = clamped;
            Ok(())
        }
    ),
    s!(
        "ECS_DISABLE_DOCKER_HEALTH_CHECK",
        None,
        "false",
        "Do not advertise container health checks (ecs.capability.container-health-check) nor send container health over TCS: ECS then places no task with a healthCheck here.",
        |c, v, _| {
            c.engine.docker_health_check_disabled = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_ENGINE_AUTH_TYPE",
        None,
        "-",
        "Private registry auth type: docker or dockercfg.",
        |c, v, _| {
            let t = nonempty(v)?;
            if t != "docker" && t != "dockercfg" {
                return Err(format!("expected docker or dockercfg, got {t:?}"));
            }
            c.engine.engine_auth_type = Some(t);
            Ok(())
        }
    ),
    s!(
        "ECS_ENGINE_AUTH_DATA",
        None,
        "-",
        "Private registry credentials (JSON; never logged).",
        |c, v, _| {
            let t = text(v)?;
            if serde_json::from_str::<serde_json::Value>(&t).is_err() {
                return Err("expected JSON registry credentials (value not shown)".into());
            }
            c.engine.engine_auth_data = Some(t);
            Ok(())
        }
    ),
    s!(
        "ECS_ENABLE_SPOT_INSTANCE_DRAINING",
        None,
        "false",
        "Drain on a Spot interruption notice (IMDS polled every second).",
        |c, v, _| {
            c.lifecycle.spot_instance_draining = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_WARM_POOLS_CHECK",
        None,
        "false",
        "Do not register until the warm-pool lifecycle state is InService.",
        |c, v, _| {
            c.lifecycle.warm_pools_check = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_TASK_METADATA_RPS_LIMIT",
        None,
        "40,60",
        "Task endpoint (credentials, metadata) rate limit per caller IP and path: steady requests per second, burst.",
        |c, v, _| {
            let t = text(v)?;
            let (rps, burst) = parse_rps_limit(&t).ok_or_else(|| {
                format!("expected two positive integers such as 40,60, got {t:?}")
            })?;
            c.task_endpoint.rps = rps;
            c.task_endpoint.burst = burst;
            Ok(())
        }
    ),
    s!(
        "ECS_AUDIT_LOGFILE",
        None,
        "journal",
        "File for the credentials audit log (appended; directories created); unset = the journal (target ecs_hostd::audit).",
        |c, v, _| {
            c.task_endpoint.audit_logfile = Some(std::path::PathBuf::from(nonempty(v)?));
            Ok(())
        }
    ),
    s!(
        "ECS_AUDIT_LOGFILE_DISABLED",
        None,
        "false",
        "Write no credentials audit log at all.",
        |c, v, _| {
            c.task_endpoint.audit_disabled = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_LOG_ROLLOVER_TYPE",
        None,
        "hourly",
        "How the ECS_AUDIT_LOGFILE file is rotated: hourly (to FILE.YYYY-MM-DD-HH) or size (to FILE.1, FILE.2, …). The agent's own log is the journal's.",
        |c, v, _| {
            c.task_endpoint.audit_rotation.by = match text(v)?.trim().to_ascii_lowercase().as_str()
            {
                "hourly" => crate::config::RotateBy::Hour,
                "size" => crate::config::RotateBy::Size,
                other => return Err(format!("expected hourly or size, got {other:?}")),
            };
            Ok(())
        }
    ),
    s!(
        "ECS_LOG_MAX_FILE_SIZE_MB",
        None,
        "10",
        "With ECS_LOG_ROLLOVER_TYPE=size: the ECS_AUDIT_LOGFILE file is rotated before it grows past this many MiB (fractions allowed).",
        |c, v, _| {
            let t = text(v)?;
            let mb: f64 = t
                .trim()
                .parse()
                .ok()
                .filter(|m: &f64| m.is_finite() && *m > 0.0 && *m <= 1024.0 * 1024.0)
                .ok_or_else(|| format!("expected a positive number of MiB, got {t:?}"))?;
            c.task_endpoint.audit_rotation.max_bytes = (mb * 1024.0 * 1024.0) as u64;
            Ok(())
        }
    ),
    s!(
        "ECS_LOG_MAX_ROLL_COUNT",
        None,
        "24",
        "How many rotated ECS_AUDIT_LOGFILE files are kept (the oldest are removed).",
        |c, v, _| {
            let n = number(v)?;
            c.task_endpoint.audit_rotation.keep = u32::try_from(n)
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| format!("expected at least 1, got {n}"))?;
            Ok(())
        }
    ),
    // ---- ecs-hostd's own settings: environment ECS_HOSTD_*, or config.toml ----
    s!(
        "ECS_HOSTD_API_ADDR",
        Some("api.addr"),
        "127.0.0.1:51678",
        "Local API listen address.",
        |c, v, _| {
            let s = nonempty(v)?;
            c.api_addr = s
                .parse::<SocketAddr>()
                .map_err(|_| format!("expected an address such as 127.0.0.1:51678, got {s:?}"))?;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_TASK_ENDPOINT_ADDR",
        Some("task_endpoint.addr"),
        "127.0.0.1:51679",
        "Task endpoint (credentials, task metadata v3/v4) listen address; containers reach it as 169.254.170.2:80 through NAT.",
        |c, v, _| {
            let s = nonempty(v)?;
            c.task_endpoint.addr = s
                .parse::<SocketAddr>()
                .map_err(|_| format!("expected an address such as 127.0.0.1:51679, got {s:?}"))?;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_DISK_CLEANUP_THRESHOLD",
        Some("engine.disk_cleanup_threshold_percent"),
        "90",
        "Clean stopped tasks and unused images at once when Docker's filesystem is fuller than this percent (100 = off).",
        |c, v, _| {
            c.engine.disk_cleanup_threshold_percent = parse_percent(&text(v)?)?;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_PAUSE_IMAGE",
        Some("engine.pause_image"),
        "amazon/amazon-ecs-pause:0.1.0",
        "Local image of the pause containers (pidMode/ipcMode task, and the awsvpc network pause); never pulled. ecs.capability.pid-ipc-namespace-sharing and task-eni are advertised only if Docker has it at start.",
        |c, v, _| {
            c.engine.pause_image = nonempty(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS",
        Some("metrics.enabled"),
        "true",
        "Publish host metrics to CloudWatch.",
        |c, v, _| {
            c.metrics.enabled = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_INTERVAL",
        Some("metrics.interval"),
        "60s",
        "Collection interval (10s–1h), on wall-clock multiples. Below 60s datums are high resolution; cost grows with 1/interval.",
        |c, v, _| {
            let d = duration(v)?;
            if d < secs(10) || d > secs(3600) {
                return Err(format!("expected a duration between 10s and 1h, got {d:?}"));
            }
            c.metrics.interval = d;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_FLUSH_INTERVAL",
        Some("metrics.flush_interval"),
        "60s",
        "How often buffered datums are sent (10s–1h), at a random phase per host. One PutMetricData request per flush: 300s cuts request cost 5x but delays alarm data.",
        |c, v, _| {
            let d = duration(v)?;
            if d < secs(10) || d > secs(3600) {
                return Err(format!("expected a duration between 10s and 1h, got {d:?}"));
            }
            c.metrics.flush_interval = d;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_PROFILE",
        Some("metrics.profile"),
        "cwagent",
        "cwagent, legacy or both (both doubles request cost and adds the legacy series).",
        |c, v, _| {
            c.metrics.profile = match nonempty(v)?.to_ascii_lowercase().as_str() {
                "cwagent" => MetricsProfile::CwAgent,
                "legacy" => MetricsProfile::Legacy,
                "both" => MetricsProfile::Both,
                other => return Err(format!("expected cwagent, legacy or both, got {other:?}")),
            };
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_NAMESPACE",
        Some("metrics.namespace"),
        "CWAgent",
        "CloudWatch namespace of the cwagent profile and of the health metrics.",
        |c, v, _| {
            c.metrics.namespace = namespace(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_DIMENSIONS",
        Some("metrics.dimensions"),
        "[\"InstanceId\"]",
        "Rollup dimension sets (each entry one set, names joined with +, \"\" = no dimensions) among InstanceId, InstanceType, ImageId, AutoScalingGroupName, ClusterName. Each set adds one series per aggregated metric ($0.30/month each).",
        |c, v, _| {
            const KNOWN: [&str; 5] = [
                "InstanceId",
                "InstanceType",
                "ImageId",
                "AutoScalingGroupName",
                "ClusterName",
            ];
            let sets = string_list(v)?;
            for set in &sets {
                for name in set.split('+').map(str::trim).filter(|n| !n.is_empty()) {
                    if !KNOWN.contains(&name) {
                        return Err(format!("expected dimensions among {KNOWN:?}, got {name:?}"));
                    }
                }
            }
            c.metrics.dimensions = sets;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_AGGREGATE",
        Some("metrics.aggregate_metrics"),
        "[\"mem_used_percent\",\"disk_used_percent\"]",
        "Metrics that get the rollup copies; [\"all\"] = every metric (more series, more cost).",
        |c, v, _| {
            let names = string_list(v)?;
            if let Some(bad) = names
                .iter()
                .find(|n| *n != "all" && !super::metrics::is_known(n))
            {
                return Err(format!("expected metric names or \"all\", got {bad:?}"));
            }
            c.metrics.aggregate_metrics = names;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_INCLUDE",
        Some("metrics.metrics"),
        "[] (profile defaults)",
        "Metric names to publish instead of the profile's default set; each extra metric is one more series per host ($0.30/month).",
        |c, v, _| {
            let names = string_list(v)?;
            if let Some(bad) = names.iter().find(|n| !super::metrics::is_known(n)) {
                return Err(format!(
                    "expected metric names of the catalogue, got {bad:?}"
                ));
            }
            c.metrics.metrics = names;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_MEM_USED_FORMULA",
        Some("metrics.mem_used_formula"),
        "classic",
        "classic (the CloudWatch agent's: total − free − buffers − cached) or memavailable (total − MemAvailable).",
        |c, v, _| {
            c.metrics.mem_used_formula = match nonempty(v)?.to_ascii_lowercase().as_str() {
                "classic" => MemUsedFormula::Classic,
                "memavailable" => MemUsedFormula::MemAvailable,
                other => return Err(format!("expected classic or memavailable, got {other:?}")),
            };
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_DIMENSION_MODE",
        Some("metrics.dimension_mode"),
        "ec2",
        "ec2 (InstanceId, ImageId, InstanceType, AutoScalingGroupName) or host (the OS hostname).",
        |c, v, _| {
            c.metrics.dimension_mode = match nonempty(v)?.to_ascii_lowercase().as_str() {
                "ec2" => DimensionMode::Ec2,
                "host" => DimensionMode::Host,
                other => return Err(format!("expected ec2 or host, got {other:?}")),
            };
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_DROP_DEVICE",
        Some("metrics.drop_device"),
        "false",
        "Leave the device dimension out of disk metrics (Nitro device names change across reboots).",
        |c, v, _| {
            c.metrics.drop_device = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_SWAP_WHEN_ABSENT",
        Some("metrics.swap_when_absent"),
        "false",
        "Publish swap_used_percent = 0 on hosts without swap, as the CloudWatch agent does (one more series).",
        |c, v, _| {
            c.metrics.swap_when_absent = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_IDENTITY_WAIT",
        Some("metrics.identity_wait"),
        "120s",
        "How long to hold samples at startup for a definite AutoScalingGroupName answer.",
        |c, v, _| {
            c.metrics.identity_wait = duration(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_FILESYSTEMS",
        Some("metrics.filesystems"),
        "[] (automatic)",
        "Mount points to report; empty = automatic selection. Each filesystem adds 2 series ($0.60/month).",
        |c, v, _| {
            c.metrics.filesystems = string_list(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_EXTRA_IGNORE_FS_TYPES",
        Some("metrics.extra_ignore_fs_types"),
        "[]",
        "Filesystem types ignored on top of the built-in list (tmpfs, overlay, nfs, ...).",
        |c, v, _| {
            c.metrics.extra_ignore_fs_types = string_list(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_EXTRA_IGNORE_MOUNT_PREFIXES",
        Some("metrics.extra_ignore_mount_prefixes"),
        "[]",
        "Mount-point prefixes ignored on top of the built-in list (/proc, /var/lib/docker/overlay2, ...).",
        |c, v, _| {
            c.metrics.extra_ignore_mount_prefixes = string_list(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_INCLUDE_READ_ONLY",
        Some("metrics.include_read_only"),
        "false",
        "Report read-only mounts too (the CloudWatch agent does; they cannot fill up).",
        |c, v, _| {
            c.metrics.include_read_only = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_REQUIRE_BLOCK_DEVICE",
        Some("metrics.require_block_device"),
        "true",
        "Report only mounts whose source is a /dev/ block device (not loop).",
        |c, v, _| {
            c.metrics.require_block_device = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_MAX_FILESYSTEMS",
        Some("metrics.max_filesystems"),
        "20",
        "Cardinality cap on reported filesystems (guards the bill).",
        |c, v, _| {
            c.metrics.max_filesystems = number(v)?.min(1000) as usize;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_STATVFS_TIMEOUT",
        Some("metrics.statvfs_timeout"),
        "2s",
        "Deadline of one statvfs call; a mount that times out is skipped for 10 passes.",
        |c, v, notes| {
            c.metrics.statvfs_timeout = clamp_min(duration(v)?, Duration::from_millis(10), notes);
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_RESOLUTION",
        Some("metrics.storage_resolution"),
        "60",
        "1 (high resolution) or 60 seconds; intervals below 60s are always high resolution. Same storage price.",
        |c, v, _| {
            match number(v)? {
                r @ (1 | 60) => {
                    c.metrics.storage_resolution = r as u32;
                    Ok(())
                }
                other => Err(format!("expected 1 or 60, got {other}")),
            }
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_PACK_SAMPLES",
        Some("metrics.pack_samples"),
        "false",
        "Pack samples of one series and minute into Values/Counts when collection is faster than flush (fewer bytes, same requests).",
        |c, v, _| {
            c.metrics.pack_samples = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_SPOOL_MAX",
        Some("metrics.spool_max_datums"),
        "20000",
        "Datums kept on disk while CloudWatch is unreachable; oldest dropped first (about a day of the default catalogue).",
        |c, v, _| {
            c.metrics.spool_max_datums = number(v)?.max(1);
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_SPOOL_MAX_AGE",
        Some("metrics.spool_max_age"),
        "24h",
        "Spooled datums older than this are dropped (at most 14 days minus 1 hour, CloudWatch's limit).",
        |c, v, _| {
            let d = duration(v)?;
            let cap = secs(14 * 86_400 - 3600);
            if d.is_zero() || d > cap {
                return Err(format!(
                    "expected a duration between 1s and 335h, got {d:?}"
                ));
            }
            c.metrics.spool_max_age = d;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_SHUTDOWN_FLUSH",
        Some("metrics.shutdown_flush"),
        "5s",
        "Deadline of the final flush on shutdown (must stay below the unit's stop timeout); the rest stays spooled.",
        |c, v, _| {
            let d = duration(v)?;
            if d > secs(15) {
                return Err(format!("expected at most 15s, got {d:?}"));
            }
            c.metrics.shutdown_flush = d;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_HEALTH_METRICS",
        Some("metrics.health_metrics"),
        "false",
        "Also publish agent and Docker health metrics (4 series: $1.20/month per instance).",
        |c, v, _| {
            c.metrics.health_metrics = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_LEGACY_NAMESPACE",
        Some("metrics.legacy.namespace"),
        "System/Linux",
        "Namespace of the legacy profile.",
        |c, v, _| {
            c.metrics.legacy.namespace = namespace(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_LEGACY_MEMORY_UNITS",
        Some("metrics.legacy.memory_units"),
        "megabytes",
        "bytes, kilobytes, megabytes or gigabytes (binary) for MemoryUsed, MemoryAvailable, SwapUsed.",
        |c, v, _| {
            c.metrics.legacy.memory_units = legacy_unit(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_LEGACY_DISK_UNITS",
        Some("metrics.legacy.disk_units"),
        "gigabytes",
        "bytes, kilobytes, megabytes or gigabytes (binary) for DiskSpaceUsed, DiskSpaceAvailable.",
        |c, v, _| {
            c.metrics.legacy.disk_units = legacy_unit(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_LEGACY_MEM_USED_INCL_CACHE_BUFF",
        Some("metrics.legacy.mem_used_incl_cache_buff"),
        "false",
        "Count cache and buffers as used memory (the scripts' --mem-used-incl-cache-buff).",
        |c, v, _| {
            c.metrics.legacy.mem_used_incl_cache_buff = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_LEGACY_DISK_PATHS",
        Some("metrics.legacy.disk_paths"),
        "[\"/\"]",
        "Paths whose filesystems the legacy profile reports (the scripts' --disk-path), even tmpfs or read-only.",
        |c, v, _| {
            c.metrics.legacy.disk_paths = string_list(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_LEGACY_AGGREGATED",
        Some("metrics.legacy.aggregated"),
        "off",
        "off, on or only: InstanceType, ImageId and dimensionless series (3 more series per metric).",
        |c, v, _| {
            c.metrics.legacy.aggregated = legacy_series(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_METRICS_LEGACY_AUTO_SCALING",
        Some("metrics.legacy.auto_scaling"),
        "off",
        "off, on or only: AutoScalingGroupName series (1 more series per metric).",
        |c, v, _| {
            c.metrics.legacy.auto_scaling = legacy_series(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_HOST_NAT",
        Some("host_nat.enabled"),
        "true",
        "Install the 169.254.170.2 NAT and loopback filters of the task endpoint at start, remove them on a clean stop (as ecs-init does); false = the host provides them.",
        |c, v, _| {
            c.host_nat.enabled = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_BLOCK_IMDS",
        Some("host_nat.block_imds"),
        "false",
        "Drop traffic from bridge-mode containers to IMDS (169.254.169.254): they then get only their task role, but also lose instance metadata (region, AZ) that some images read.",
        |c, v, _| {
            c.host_nat.block_imds = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_DOCKER_WATCHDOG",
        Some("watchdog.enabled"),
        "true",
        "Repair docker.service through systemd (enable, start, restart when hung).",
        |c, v, _| {
            c.watchdog.enabled = boolean(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_WATCHDOG_INTERVAL",
        Some("watchdog.interval"),
        "15s",
        "Docker ping (and docker.service check) period (packaging spec §4.3: every 15 s).",
        |c, v, _| {
            c.watchdog.interval = clamp_min(duration(v)?, secs(1), &mut Vec::new());
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_WATCHDOG_TIMEOUT",
        Some("watchdog.timeout"),
        "10s",
        "Deadline for one Docker ping or list.",
        |c, v, _| {
            c.watchdog.timeout = clamp_min(duration(v)?, secs(1), &mut Vec::new());
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_WATCHDOG_FAILURES",
        Some("watchdog.failure_threshold"),
        "3",
        "Consecutive failures before docker.service is restarted.",
        |c, v, _| {
            c.watchdog.failure_threshold = number(v)?.clamp(1, 1000) as u32;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_WATCHDOG_MAX_RESTARTS_PER_HOUR",
        Some("watchdog.max_restarts_per_hour"),
        "6",
        "Ceiling on docker.service starts and restarts by the watchdog per hour; then it only reports.",
        |c, v, _| {
            c.watchdog.max_restarts_per_hour = number(v)?.min(1000) as u32;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_WATCHDOG_RESTART_BACKOFF",
        Some("watchdog.restart_backoff"),
        "10s",
        "Wait after a Docker repair before the next; tripled per repair, at most 5m.",
        |c, v, _| {
            c.watchdog.restart_backoff = clamp_min(duration(v)?, secs(1), &mut Vec::new());
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_LIFECYCLE_HOOK",
        Some("lifecycle.hook"),
        "-",
        "Auto Scaling termination hook to complete after draining; unset = never.",
        |c, v, _| {
            let h = text(v)?;
            c.lifecycle.lifecycle_hook = if h.trim().is_empty() {
                None
            } else {
                Some(h.trim().to_owned())
            };
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_DRAIN_TIMEOUT",
        Some("lifecycle.drain_timeout"),
        "10m",
        "Longest wait for tasks to stop before completing the hook.",
        |c, v, _| {
            c.lifecycle.drain_timeout = duration(v)?;
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_REBALANCE",
        Some("lifecycle.rebalance"),
        "observe",
        "On a rebalance recommendation: observe (log) or drain.",
        |c, v, _| {
            c.lifecycle.rebalance = match nonempty(v)?.to_ascii_lowercase().as_str() {
                "observe" => RebalanceAction::Observe,
                "drain" => RebalanceAction::Drain,
                other => return Err(format!("expected observe or drain, got {other:?}")),
            };
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_LIFECYCLE_HEARTBEAT_INTERVAL",
        Some("lifecycle.heartbeat_interval"),
        "auto",
        "RecordLifecycleActionHeartbeat period while draining; auto = half the hook's heartbeat timeout.",
        |c, v, _| {
            let t = text(v)?;
            c.lifecycle.heartbeat_interval = if t.trim().eq_ignore_ascii_case("auto") {
                None
            } else {
                let d = duration(v)?;
                if d < secs(1) {
                    return Err(format!(
                        "expected auto or a duration of at least 1s, got {d:?}"
                    ));
                }
                Some(d)
            };
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_DRAIN_POLL_INTERVAL",
        Some("lifecycle.drain_poll_interval"),
        "10s",
        "How often ECS is asked which tasks remain while draining (min 1s).",
        |c, v, n| {
            c.lifecycle.drain_poll_interval = clamp_min(duration(v)?, secs(1), n);
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_WARM_POOL_POLL_INTERVAL",
        Some("lifecycle.warm_pool_poll_interval"),
        "1m",
        "With ECS_WARM_POOLS_CHECK: re-read period of the target lifecycle state before registering (min 1s; 120 reads of 404 give up).",
        |c, v, n| {
            c.lifecycle.warm_pool_poll_interval = clamp_min(duration(v)?, secs(1), n);
            Ok(())
        }
    ),
    s!(
        "ECS_HOSTD_STARTUP_JITTER",
        Some("lifecycle.startup_jitter"),
        "5s",
        "Random delay (0 up to this) before a new instance's first registration, so a fleet booting together spreads its ECS calls; 0 = off.",
        |c, v, _| {
            let d = duration(v)?;
            if d > secs(600) {
                return Err(format!("expected a duration of at most 10m, got {d:?}"));
            }
            c.lifecycle.startup_jitter = d;
            Ok(())
        }
    ),
];

/// Whether an environment variable is one the configuration looks at (and warns about when
/// unknown). Other variables are none of our business.
pub fn is_env_candidate(key: &str) -> bool {
    key.starts_with("ECS_") || SETTINGS.iter().any(|s| s.key == key)
}

/// Applies one value. `Err` is the "expected ..." message for an invalid value.
pub fn apply(
    config: &mut Config,
    key: &str,
    value: &Raw,
    notes: &mut Vec<String>,
) -> Result<Applied, String> {
    let found = match value {
        Raw::Toml(_) => SETTINGS.iter().find(|s| s.toml == Some(key)),
        Raw::Text(_) => SETTINGS.iter().find(|s| s.key == key),
    };
    if let Some(setting) = found {
        (setting.apply)(config, value, notes)?;
        return Ok(Applied::Set);
    }
    if let Raw::Text(v) = value
        && let Some((_, harmless, why)) = UNSUPPORTED.iter().find(|(k, _, _)| *k == key)
    {
        let v = v.trim();
        if harmless.iter().any(|h| h.eq_ignore_ascii_case(v)) {
            return Ok(Applied::Set);
        }
        return Ok(Applied::Unsupported(format!(
            "not supported by ecs-hostd and ignored: {why}"
        )));
    }
    Ok(Applied::Unknown)
}
