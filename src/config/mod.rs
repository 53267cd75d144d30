//! Configuration: every source the agent reads, merged into one validated [`Config`].
//!
//! Precedence (lowest first): built-in defaults < `/etc/ecs/ecs.config` (official `ECS_*` keys, same
//! meaning and defaults as the official agent) < `/etc/ecs-hostd/config.toml` (our own settings) <
//! environment (`ECS_*`, `ECS_HOSTD_*`) < command-line flags.
//!
//! Every setting has one row in [`settings::SETTINGS`]: its official/environment key, its
//! config.toml path (our settings only) and the function that applies a value. Every problem found
//! becomes a [`Diagnostic`] naming where it came from (file and line, environment, or flag), the
//! key, and what was expected.
//!
//! Strictness follows design.md: in `run`, problems in ecs.config and the environment are warnings
//! and the setting keeps its default (a file that works with the official agent works here);
//! invalid config.toml is always an error (terminal, exit 5). `check` is strict: every malformed
//! line or unparsable value is an error.
//!
//! This module never performs network or Docker I/O; it reads only the two files it is given.

mod ecsfile;
pub mod metrics;
mod settings;
mod tomlfile;
pub mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use metrics::{
    DimensionMode, LegacyMetricsConfig, LegacySeries, LegacyUnit, MemUsedFormula, MetricsConfig,
    MetricsProfile,
};
pub use settings::{SETTINGS, UNSUPPORTED};

/// Where the official file lives.
pub const DEFAULT_ECS_CONFIG: &str = "/etc/ecs/ecs.config";
/// Where our own structured settings live.
pub const DEFAULT_TOML_CONFIG: &str = "/etc/ecs-hostd/config.toml";
/// Data directory default (design.md; the official agent's is `/var/lib/ecs/data`).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/ecs-hostd";
/// The official default reserved TCP ports (protocol spec §3.2).
pub const DEFAULT_RESERVED_PORTS: [u16; 5] = [22, 2375, 2376, 51678, 51679];

/// Which official image pull behaviour to use (`ECS_IMAGE_PULL_BEHAVIOR`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullBehavior {
    /// Pull; fall back to a cached image if the pull fails.
    Default,
    /// Always pull; fail if the pull fails.
    Always,
    /// Pull only if the image is not present locally.
    Once,
    /// Use a cached image if present, else pull.
    PreferCached,
}

/// What to do on an EC2 rebalance recommendation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RebalanceAction {
    /// Log and count it only.
    Observe,
    /// Drain the instance as for a Spot interruption.
    Drain,
}

/// Task engine settings (official keys, protocol spec §11).
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    /// `ECS_CONTAINER_STOP_TIMEOUT`: SIGTERM to SIGKILL grace (min 1 s).
    pub container_stop_timeout: Duration,
    /// `ECS_CONTAINER_START_TIMEOUT` (min 45 s).
    pub container_start_timeout: Duration,
    /// `ECS_CONTAINER_CREATE_TIMEOUT` (min 1 min).
    pub container_create_timeout: Duration,
    /// `ECS_MANIFEST_PULL_TIMEOUT` (min 30 s).
    pub manifest_pull_timeout: Duration,
    /// `ECS_IMAGE_PULL_TIMEOUT`: overall pull deadline.
    pub image_pull_timeout: Duration,
    /// `ECS_IMAGE_PULL_INACTIVITY_TIMEOUT` (min 1 min): abort a pull with no progress this long.
    pub image_pull_inactivity_timeout: Duration,
    /// `ECS_IMAGE_PULL_BEHAVIOR`.
    pub image_pull_behavior: PullBehavior,
    /// `ECS_PULL_DEPENDENT_CONTAINERS_UPFRONT`.
    pub pull_dependent_containers_upfront: bool,
    /// `ECS_SHARED_VOLUME_MATCH_FULL_CONFIG`: an existing autoprovisioned shared volume must
    /// carry the task definition's driver, options and labels.
    pub shared_volume_match_full_config: bool,
    /// `ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION` (values below 1 s are ignored).
    pub task_cleanup_wait: Duration,
    /// `ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION_JITTER`.
    pub task_cleanup_wait_jitter: Duration,
    /// `ECS_DISABLE_IMAGE_CLEANUP`.
    pub image_cleanup_disabled: bool,
    /// `ECS_IMAGE_CLEANUP_INTERVAL` (min 10 min; below it the default is used).
    pub image_cleanup_interval: Duration,
    /// `ECS_IMAGE_MINIMUM_CLEANUP_AGE`.
    pub image_minimum_cleanup_age: Duration,
    /// `ECS_NUM_IMAGES_DELETE_PER_CYCLE` (min 1).
    pub num_images_delete_per_cycle: u32,
    /// `ECS_ENABLE_UNTRACKED_IMAGE_CLEANUP`.
    pub untracked_image_cleanup: bool,
    /// `NON_ECS_IMAGE_MINIMUM_CLEANUP_AGE`.
    pub non_ecs_image_minimum_cleanup_age: Duration,
    /// `ECS_EXCLUDE_UNTRACKED_IMAGE`: `name:tag` images never removed.
    pub exclude_untracked_images: Vec<String>,
    /// `ECS_DYNAMIC_HOST_PORT_RANGE`; `None` = the kernel's ephemeral range.
    pub dynamic_host_port_range: Option<(u16, u16)>,
    /// `ECS_EXCLUDE_IPV6_PORTBINDING`.
    pub exclude_ipv6_port_binding: bool,
    /// `ECS_ENABLE_TASK_CPU_MEM_LIMIT`.
    pub task_cpu_mem_limit: bool,
    /// `ECS_CGROUP_CPU_PERIOD` (8–100 ms).
    pub cgroup_cpu_period: Duration,
    /// `ECS_TASK_PIDS_LIMIT`.
    pub task_pids_limit: Option<u64>,
    /// `ECS_DISABLE_DOCKER_HEALTH_CHECK`.
    pub docker_health_check_disabled: bool,
    /// `ECS_ENGINE_AUTH_TYPE` (`docker` or `dockercfg`).
    pub engine_auth_type: Option<String>,
    /// `ECS_ENGINE_AUTH_DATA` (JSON, per auth type). Never logged.
    pub engine_auth_data: Option<String>,
    /// `ECS_HOSTD_DISK_CLEANUP_THRESHOLD` / `engine.disk_cleanup_threshold_percent`: when the
    /// Docker data filesystem is fuller than this, stopped tasks and unused images are cleaned at
    /// once instead of waiting (the official agent lets disks fill). 100 disables it.
    pub disk_cleanup_threshold_percent: f64,
    /// `ECS_HOSTD_PAUSE_IMAGE` / `engine.pause_image`: the local image of the namespace pause
    /// container that tasks with `pidMode`/`ipcMode` `task` get. Never pulled (ecs-init loads
    /// the official one from a tarball; ecs-hostd ships none).
    pub pause_image: String,
}

/// Docker watchdog settings (`[watchdog]` in config.toml).
#[derive(Clone, Debug, PartialEq)]
pub struct WatchdogConfig {
    /// `ECS_HOSTD_DOCKER_WATCHDOG`: repair Docker through systemd (enable, start, restart).
    pub enabled: bool,
    /// How often Docker is pinged.
    pub interval: Duration,
    /// Deadline for one ping or list call.
    pub timeout: Duration,
    /// Consecutive failures before a restart.
    pub failure_threshold: u32,
    /// Ceiling on docker.service starts and restarts by the watchdog per hour.
    pub max_restarts_per_hour: u32,
    /// Wait after a repair before the next one; tripled per repair up to 5 minutes.
    pub restart_backoff: Duration,
}

/// The task endpoint server: credentials and task metadata for containers
/// (`[task_endpoint]` in config.toml for our own key; the others are official keys).
#[derive(Clone, Debug, PartialEq)]
pub struct TaskEndpointConfig {
    /// `ECS_HOSTD_TASK_ENDPOINT_ADDR`: listen address (containers reach it as 169.254.170.2:80
    /// through NAT rules).
    pub addr: SocketAddr,
    /// `ECS_TASK_METADATA_RPS_LIMIT`: steady requests per second per (caller IP, path).
    pub rps: u32,
    /// `ECS_TASK_METADATA_RPS_LIMIT`: burst per (caller IP, path).
    pub burst: u32,
    /// `ECS_AUDIT_LOGFILE`: the credentials audit log file; `None` = the journal (log target
    /// `ecs_hostd::audit`).
    pub audit_logfile: Option<PathBuf>,
    /// `ECS_AUDIT_LOGFILE_DISABLED`: no audit records at all.
    pub audit_disabled: bool,
    /// `ECS_LOG_ROLLOVER_TYPE`, `ECS_LOG_MAX_FILE_SIZE_MB`, `ECS_LOG_MAX_ROLL_COUNT`: how the
    /// audit log file is rotated (the agent's own log is the journal's to rotate).
    pub audit_rotation: Rotation,
}

/// Task telemetry to ECS over TCS (official keys only).
#[derive(Clone, Debug, PartialEq)]
pub struct TelemetryConfig {
    /// `ECS_DISABLE_METRICS`: containers are not sampled; TCS gets idle frames only and the
    /// task metadata `/stats` answers 500.
    pub metrics_disabled: bool,
    /// `ECS_POLLING_METRICS_WAIT_DURATION` (5–20 s, clamped as the official agent clamps): how
    /// often each running container's cgroup files are sampled.
    pub sample_interval: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            metrics_disabled: false,
            sample_interval: Duration::from_secs(5),
        }
    }
}

/// How a log file of ours is rotated, as the official agent rotates its files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// Hourly (renamed to `<file>.<YYYY-MM-DD-HH>` when the hour changes) or by size (renamed to
    /// `<file>.1`, the older ones shifted up).
    pub by: RotateBy,
    /// Size rotation: the largest a file may grow, in bytes.
    pub max_bytes: u64,
    /// How many rotated files are kept (the oldest are removed).
    pub keep: u32,
}

/// When a file is rotated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotateBy {
    /// When the hour (UTC) changes.
    Hour,
    /// When a line would take it past `max_bytes`.
    Size,
}

impl Default for Rotation {
    /// The official agent's defaults: hourly, 10 MB, 24 files.
    fn default() -> Rotation {
        Rotation {
            by: RotateBy::Hour,
            max_bytes: 10 * 1024 * 1024,
            keep: 24,
        }
    }
}

/// Fleet lifecycle settings (`[lifecycle]` in config.toml).
#[derive(Clone, Debug, PartialEq)]
pub struct LifecycleConfig {
    /// `ECS_ENABLE_SPOT_INSTANCE_DRAINING`.
    pub spot_instance_draining: bool,
    /// `ECS_WARM_POOLS_CHECK`.
    pub warm_pools_check: bool,
    /// Termination lifecycle hook this agent completes; `None` = never complete hooks.
    pub lifecycle_hook: Option<String>,
    /// Upper bound on waiting for tasks to stop before completing the hook.
    pub drain_timeout: Duration,
    /// Rebalance recommendation handling.
    pub rebalance: RebalanceAction,
    /// Interval between RecordLifecycleActionHeartbeat calls while draining; `None` = half the
    /// hook's heartbeat timeout (from DescribeLifecycleHooks).
    pub heartbeat_interval: Option<Duration>,
    /// How often ECS is asked which tasks are still on the instance while draining.
    pub drain_poll_interval: Duration,
    /// Warm pools: how often the target lifecycle state is re-read before registering (the
    /// official agent: once a minute).
    pub warm_pool_poll_interval: Duration,
    /// Random delay, up to this long, before the first registration of a new instance, so a fleet
    /// that boots at once does not hit ECS in the same second.
    pub startup_jitter: Duration,
}

/// The validated configuration. Built only by [`Config::load`] (or [`Config::default`] in tests).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `ECS_CLUSTER`: cluster name or ARN; `default` when unset, as the official agent.
    pub cluster: String,
    /// `AWS_DEFAULT_REGION`; `None` = from the instance identity document.
    pub region: Option<String>,
    /// `ECS_BACKEND_HOST`: ECS API endpoint override (the SDK's `AWS_ENDPOINT_URL_ECS` also works).
    pub ecs_endpoint: Option<String>,
    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT`: IMDS base URL.
    pub imds_endpoint: String,
    /// `DOCKER_HOST`; `None` = the local socket.
    pub docker_host: Option<String>,
    /// `HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY` (from ecs.config as well as the environment).
    pub proxy: ProxyConfig,
    /// `ECS_DATADIR`.
    pub data_dir: PathBuf,
    /// `ECS_LOGLEVEL`; `RUST_LOG` wins when set.
    pub log_level: String,
    /// `ECS_RESERVED_MEMORY`, MiB.
    pub reserved_memory_mib: u64,
    /// `ECS_RESERVED_PORTS`; when set it replaces the default list.
    pub reserved_ports: Vec<u16>,
    /// `ECS_RESERVED_PORTS_UDP`.
    pub reserved_ports_udp: Vec<u16>,
    /// `ECS_INSTANCE_ATTRIBUTES`: custom attributes sent on first registration.
    pub instance_attributes: BTreeMap<String, String>,
    /// `ECS_CONTAINER_INSTANCE_TAGS`.
    pub container_instance_tags: BTreeMap<String, String>,
    /// `ECS_AVAILABLE_LOGGING_DRIVERS`.
    pub available_logging_drivers: Vec<String>,
    /// `ECS_DISABLE_PRIVILEGED`.
    pub disable_privileged: bool,
    /// The awsvpc network mode.
    pub awsvpc: AwsvpcConfig,
    /// The task endpoint's host NAT (`engine::net::host_nat`).
    pub host_nat: HostNatConfig,
    /// `ECS_SELINUX_CAPABLE`.
    pub selinux_capable: bool,
    /// `ECS_APPARMOR_CAPABLE`.
    pub apparmor_capable: bool,
    /// `ECS_HOSTD_API_ADDR`: local API listen address.
    pub api_addr: SocketAddr,
    /// Task engine settings.
    pub engine: EngineConfig,
    /// Host metrics settings.
    pub metrics: MetricsConfig,
    /// Docker watchdog settings.
    pub watchdog: WatchdogConfig,
    /// Spot, Auto Scaling and warm-pool settings.
    pub lifecycle: LifecycleConfig,
    /// The task endpoint server (credentials, task metadata).
    pub task_endpoint: TaskEndpointConfig,
    /// Task telemetry (TCS) and the container stats collector.
    pub telemetry: TelemetryConfig,
}

/// The awsvpc network mode's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsvpcConfig {
    /// `ECS_ENABLE_TASK_ENI`: run awsvpc tasks when the host can.
    pub enable_task_eni: bool,
    /// `ECS_AWSVPC_BLOCK_IMDS`: 169.254.169.254 unreachable from awsvpc tasks.
    pub block_imds: bool,
    /// `ECS_HOSTD_TEST_ACCEPT_VIRTUAL_ENIS`: take a link of any kind (dummy, veth) with the
    /// ENI's MAC for the ENI. Test worlds only: on EC2 an ENI is always a device.
    pub test_accept_virtual_enis: bool,
}

impl Default for AwsvpcConfig {
    fn default() -> Self {
        AwsvpcConfig {
            // ecs-init's default on EC2.
            enable_task_eni: true,
            block_imds: false,
            test_accept_virtual_enis: false,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cluster: "default".into(),
            region: None,
            ecs_endpoint: None,
            imds_endpoint: "http://169.254.169.254".into(),
            docker_host: None,
            proxy: ProxyConfig::default(),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            log_level: "info".into(),
            reserved_memory_mib: 0,
            reserved_ports: DEFAULT_RESERVED_PORTS.to_vec(),
            reserved_ports_udp: Vec::new(),
            instance_attributes: BTreeMap::new(),
            container_instance_tags: BTreeMap::new(),
            // The ECS-optimized AMI's ecs-init default.
            available_logging_drivers: ["json-file", "syslog", "awslogs", "fluentd", "none"]
                .map(String::from)
                .to_vec(),
            disable_privileged: false,
            awsvpc: AwsvpcConfig::default(),
            host_nat: HostNatConfig::default(),
            selinux_capable: false,
            apparmor_capable: false,
            api_addr: SocketAddr::from(([127, 0, 0, 1], 51678)),
            engine: EngineConfig {
                container_stop_timeout: Duration::from_secs(30),
                container_start_timeout: Duration::from_secs(3 * 60),
                container_create_timeout: Duration::from_secs(4 * 60),
                manifest_pull_timeout: Duration::from_secs(60),
                image_pull_timeout: Duration::from_secs(2 * 3600),
                image_pull_inactivity_timeout: Duration::from_secs(60),
                image_pull_behavior: PullBehavior::Default,
                pull_dependent_containers_upfront: false,
                shared_volume_match_full_config: false,
                task_cleanup_wait: Duration::from_secs(3 * 3600),
                task_cleanup_wait_jitter: Duration::ZERO,
                image_cleanup_disabled: false,
                image_cleanup_interval: Duration::from_secs(30 * 60),
                image_minimum_cleanup_age: Duration::from_secs(3600),
                num_images_delete_per_cycle: 5,
                untracked_image_cleanup: false,
                non_ecs_image_minimum_cleanup_age: Duration::from_secs(3600),
                exclude_untracked_images: Vec::new(),
                dynamic_host_port_range: None,
                exclude_ipv6_port_binding: true,
                task_cpu_mem_limit: true,
                cgroup_cpu_period: Duration::from_millis(100),
                task_pids_limit: None,
                docker_health_check_disabled: false,
                engine_auth_type: None,
                engine_auth_data: None,
                disk_cleanup_threshold_percent: 90.0,
                pause_image: crate::engine::model::internal::DEFAULT_PAUSE_IMAGE.to_owned(),
            },
            metrics: MetricsConfig::default(),
            watchdog: WatchdogConfig {
                enabled: true,
                interval: Duration::from_secs(15),
                timeout: Duration::from_secs(10),
                failure_threshold: 3,
                max_restarts_per_hour: 6,
                restart_backoff: Duration::from_secs(10),
            },
            lifecycle: LifecycleConfig {
                spot_instance_draining: false,
                warm_pools_check: false,
                lifecycle_hook: None,
                drain_timeout: Duration::from_secs(600),
                rebalance: RebalanceAction::Observe,
                heartbeat_interval: None,
                drain_poll_interval: Duration::from_secs(10),
                warm_pool_poll_interval: Duration::from_secs(60),
                startup_jitter: Duration::from_secs(5),
            },
            task_endpoint: TaskEndpointConfig {
                addr: SocketAddr::from(([127, 0, 0, 1], 51679)),
                rps: 40,
                burst: 60,
                audit_logfile: None,
                audit_disabled: false,
                audit_rotation: Rotation::default(),
            },
            telemetry: TelemetryConfig::default(),
        }
    }
}

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A line of ecs.config.
    EcsFile {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// A line of config.toml.
    TomlFile {
        /// The file.
        path: PathBuf,
        /// 1-based line number (0 when unknown).
        line: usize,
    },
    /// The process environment.
    Env,
    /// A command-line flag.
    Flag,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::EcsFile { path, line } | Origin::TomlFile { path, line } => {
                write!(f, "{}:{line}", path.display())
            }
            Origin::Env => f.write_str("environment"),
            Origin::Flag => f.write_str("command line"),
        }
    }
}

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Reported; the agent goes on.
    Warning,
    /// The configuration cannot be used.
    Error,
}

/// One problem found in the configuration, with its location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Warning or error.
    pub severity: Severity,
    /// Where it came from.
    pub origin: Origin,
    /// The key concerned (empty for a line with no key).
    pub key: String,
    /// What was wrong and what was expected.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.origin, self.message)
        } else {
            write!(f, "{}: {}: {}", self.origin, self.key, self.message)
        }
    }
}

/// The configuration could not be built. Carries every error found, not just the first.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file named on the command line does not exist or cannot be read, or a file exists but
    /// cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// One or more values are invalid.
    #[error("invalid configuration:\n{}", .0.iter().map(|d| format!("  {d}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
}

/// What [`Config::load`] reads. Tests build this directly; `main` fills it from the CLI and the
/// process environment.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// ecs.config path given on the command line (must exist), else the default (may be absent).
    pub ecs_config: Option<PathBuf>,
    /// config.toml path given on the command line (must exist), else the default (may be absent).
    pub toml_config: Option<PathBuf>,
    /// Environment variables (all of them; irrelevant ones are ignored).
    pub env: Vec<(String, String)>,
    /// `KEY=VALUE` overrides from the command line (highest precedence).
    pub flags: Vec<(String, String)>,
    /// `check` mode: every malformed line or value in any source is an error.
    pub strict: bool,
}

impl LoadOptions {
    /// Options for the real process: default file locations and the process environment.
    pub fn from_process(
        ecs_config: Option<PathBuf>,
        toml_config: Option<PathBuf>,
        flags: Vec<(String, String)>,
        strict: bool,
    ) -> Self {
        LoadOptions {
            ecs_config,
            toml_config,
            env: std::env::vars().collect(),
            flags,
            strict,
        }
    }
}

/// The loaded configuration and the warnings found on the way.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// Warnings (never errors; errors fail the load).
    pub warnings: Vec<Diagnostic>,
    /// The files that were actually read.
    pub files_read: Vec<PathBuf>,
}

/// Outbound proxy settings. The process applies them as environment variables before any
/// client exists (see [`ProxyConfig::environment`]), so the AWS SDK's clients and the ACS
/// websocket follow one set of rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    /// `HTTP_PROXY`.
    pub http: Option<String>,
    /// `HTTPS_PROXY`.
    pub https: Option<String>,
    /// `NO_PROXY` as configured.
    pub no_proxy: Option<String>,
}

/// Hosts that must never go through a proxy: instance metadata (credentials of the instance
/// role) and the task credentials endpoint.
pub const ALWAYS_DIRECT: &[&str] = &["169.254.169.254", "169.254.170.2"];

impl ProxyConfig {
    /// The environment the process should run with: `HTTP_PROXY`/`HTTPS_PROXY` as configured,
    /// and, when either is set, `NO_PROXY` with [`ALWAYS_DIRECT`] added (the official agent's
    /// documentation asks operators to list them by hand; a missing entry sends the instance
    /// role's credential requests to the proxy). Empty when no proxy is configured.
    pub fn environment(&self) -> Vec<(&'static str, String)> {
        if self.http.is_none() && self.https.is_none() {
            return Vec::new();
        }
        let mut out = Vec::new();
        if let Some(p) = &self.http {
            out.push(("HTTP_PROXY", p.clone()));
        }
        if let Some(p) = &self.https {
            out.push(("HTTPS_PROXY", p.clone()));
        }
        let mut no: Vec<String> = self
            .no_proxy
            .iter()
            .flat_map(|n| n.split(','))
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .collect();
        for host in ALWAYS_DIRECT {
            if !no.iter().any(|h| h == host) {
                no.push((*host).to_owned());
            }
        }
        out.push(("NO_PROXY", no.join(",")));
        out
    }
}

/// A raw value before it is applied: text (ecs.config, environment, flags) or a TOML value.
#[derive(Clone, Debug)]
pub enum Raw {
    /// Literal text.
    Text(String),
    /// A typed TOML value.
    Toml(toml::Value),
}

/// One value waiting to be applied.
#[derive(Clone, Debug)]
struct Entry {
    key: String,
    value: Raw,
    origin: Origin,
    /// Problems in this source are errors even outside strict mode (config.toml, flags).
    always_strict: bool,
}

impl Config {
    /// Reads every source and builds the configuration. See the module docs for precedence and
    /// strictness.
    pub fn load(opts: &LoadOptions) -> Result<Loaded, ConfigError> {
        let mut diags = Vec::new();
        let mut entries = Vec::new();
        let mut files_read = Vec::new();

        let ecs_path = opts
            .ecs_config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ECS_CONFIG));
        if let Some(text) = read_optional(&ecs_path, opts.ecs_config.is_some())? {
            files_read.push(ecs_path.clone());
            let (lines, malformed) = ecsfile::parse(&text);
            diags.extend(malformed.into_iter().map(|(line, message)| Diagnostic {
                // A line the official agent would skip: an error only for `check`.
                severity: if opts.strict {
                    Severity::Error
                } else {
                    Severity::Warning
                },
                origin: Origin::EcsFile {
                    path: ecs_path.clone(),
                    line,
                },
                key: String::new(),
                message,
            }));
            entries.extend(lines.into_iter().map(|(key, value, line)| Entry {
                key,
                value: Raw::Text(value),
                origin: Origin::EcsFile {
                    path: ecs_path.clone(),
                    line,
                },
                always_strict: false,
            }));
        }

        let toml_path = opts
            .toml_config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_TOML_CONFIG));
        if let Some(text) = read_optional(&toml_path, opts.toml_config.is_some())? {
            files_read.push(toml_path.clone());
            let (values, toml_diags) = tomlfile::parse(&toml_path, &text);
            diags.extend(toml_diags);
            entries.extend(values.into_iter().map(|(key, value, line)| Entry {
                key,
                value: Raw::Toml(value),
                origin: Origin::TomlFile {
                    path: toml_path.clone(),
                    line,
                },
                always_strict: true,
            }));
        }

        for (key, value) in &opts.env {
            if settings::is_env_candidate(key) {
                entries.push(Entry {
                    key: key.clone(),
                    value: Raw::Text(value.clone()),
                    origin: Origin::Env,
                    always_strict: false,
                });
            }
        }
        for (key, value) in &opts.flags {
            entries.push(Entry {
                key: key.clone(),
                value: Raw::Text(value.clone()),
                origin: Origin::Flag,
                always_strict: true,
            });
        }

        let mut config = Config::default();
        for entry in &entries {
            let strict = opts.strict || entry.always_strict;
            let mut notes = Vec::new();
            let result = settings::apply(&mut config, &entry.key, &entry.value, &mut notes);
            let (severity, message) = match result {
                Ok(settings::Applied::Set) => (None, None),
                Ok(settings::Applied::Unsupported(why)) => (Some(Severity::Warning), Some(why)),
                Ok(settings::Applied::Unknown) => (
                    Some(Severity::Warning),
                    Some("unknown key; ignored".to_owned()),
                ),
                Err(expected) => {
                    let sev = if strict {
                        Severity::Error
                    } else {
                        Severity::Warning
                    };
                    let msg = if strict {
                        expected
                    } else {
                        format!("{expected}; the default is used")
                    };
                    (Some(sev), Some(msg))
                }
            };
            if let (Some(severity), Some(message)) = (severity, message) {
                diags.push(Diagnostic {
                    severity,
                    origin: entry.origin.clone(),
                    key: entry.key.clone(),
                    message,
                });
            }
            diags.extend(notes.into_iter().map(|message| Diagnostic {
                severity: Severity::Warning,
                origin: entry.origin.clone(),
                key: entry.key.clone(),
                message,
            }));
        }

        // Report in reading order: ecs.config lines, config.toml lines, environment, flags.
        diags.sort_by_key(|d| match &d.origin {
            Origin::EcsFile { line, .. } => (0, *line),
            Origin::TomlFile { line, .. } => (1, *line),
            Origin::Env => (2, 0),
            Origin::Flag => (3, 0),
        });
        let (errors, warnings): (Vec<_>, Vec<_>) = diags
            .into_iter()
            .partition(|d| d.severity == Severity::Error);
        if !errors.is_empty() {
            return Err(ConfigError::Invalid(errors));
        }
        Ok(Loaded {
            config,
            warnings,
            files_read,
        })
    }

    /// The path of the embedded database inside the data directory.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("ecs-hostd.redb")
    }
}

/// Reads a config file. An absent default location is fine (`None`); an absent file that was
/// named explicitly is an error.
fn read_optional(path: &Path, explicit: bool) -> Result<Option<String>, ConfigError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(None),
        Err(source) => Err(ConfigError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The task endpoint's host NAT settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostNatConfig {
    /// `ECS_HOSTD_HOST_NAT`: install (and remove) the rules at all.
    pub enabled: bool,
    /// `ECS_SKIP_LOCALHOST_TRAFFIC_FILTER`.
    pub skip_localhost_filter: bool,
    /// `ECS_ALLOW_OFFHOST_INTROSPECTION_ACCESS`.
    pub allow_offhost_introspection: bool,
    /// `ECS_HOSTD_BLOCK_IMDS`.
    pub block_imds: bool,
    /// `ECS_ENABLE_TASK_IAM_ROLE`.
    pub task_iam_role: bool,
    /// `ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST`.
    pub task_iam_role_network_host: bool,
    /// `ECS_ENABLE_AWSLOGS_EXECUTIONROLE_OVERRIDE`.
    pub execution_role_awslogs: bool,
}

impl Default for HostNatConfig {
    fn default() -> Self {
        HostNatConfig {
            enabled: true,
            skip_localhost_filter: false,
            allow_offhost_introspection: false,
            block_imds: false,
            task_iam_role: true,
            task_iam_role_network_host: true,
            execution_role_awslogs: true,
        }
    }
}

#[cfg(test)]
mod tests;
