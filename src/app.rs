//! `ecs-hostd run`: wiring only. Builds the parts in the order of protocol spec §2, spawns the
//! long-running subsystems under the supervisor, owns signals and turns the end into an exit code.
//!
//! The start-up is one function per phase, in the README's order ("Start-up"); each returns what
//! the later phases need, or the [`Outcome`] that ends the run:
//!
//! 1. [`Start::open_local_state`]: the store, host facts.
//! 2. [`Start::wait_for_docker`]: the Docker watchdog and the systemd watchdog pinger, then Docker.
//! 3. [`Start::read_identity`]: the instance identity from IMDS; a drain begun before a restart.
//! 4. [`Start::wait_for_warm_pool`]: with warm pools, `InService` before registering.
//! 5. [`Start::register`]: start-up jitter (new instance), registration; then
//!    [`Start::announce_ready`]: the summary line and `READY=1`.
//! 6. [`subsystems::start`]: metrics, engine, reporter, ACS, local API, lifecycle.
//!
//! Then [`serve`] waits for SIGTERM or a terminal failure → STOPPING=1 → cancel and drain within
//! the stop deadline.

mod subsystems;
mod telemetry;

/// What the agent's stats collector samples (the engine's running containers, woken by its
/// snapshots): the same wiring for tests that run the engine in process.
pub use telemetry::EngineTargets;

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::docker::EngineInfo;
use crate::ecs::attributes;
use crate::ecs::register::{self, REGISTER_GIVE_UP, REGISTER_RETRY, Registrar, Registration};
use crate::ecs::sdk::SdkEcs;
use crate::engine::net::awsvpc::TaskNetwork;
use crate::engine::net::awsvpc::netlink::NetlinkTaskNetwork;
use crate::engine::net::host_nat::{Host, HostNat, NatSettings};
use crate::health;
use crate::host::HostFacts;
use crate::imds::{Identity, ImdsClient, VpcFacts};
use crate::lifecycle;
use crate::lifecycle::warmpool::{self, WarmPoolWait};
use crate::store::Store;
use crate::supervisor::Supervisor;
use crate::{docker, systemd, watchdog};

/// How long subsystems get to finish after SIGTERM; below the unit's `TimeoutStopSec=30s`.
pub const STOP_DEADLINE: Duration = Duration::from_secs(20);

/// How the run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped on request: exit 0.
    Clean,
    /// Failed; systemd should restart us: exit 1.
    Error(String),
    /// Needs an operator; systemd must leave us down: exit 5.
    Terminal(String),
}

impl Outcome {
    /// The process exit code (design.md).
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Clean => 0,
            Outcome::Error(_) => 1,
            Outcome::Terminal(_) => 5,
        }
    }
}

/// Runs the agent until stopped.
pub async fn run(config: Config) -> Outcome {
    let cancel = CancellationToken::new();
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => return Outcome::Error(format!("cannot install signal handlers: {e}")),
    };
    let signal_cancel = cancel.clone();
    let signal_task = tokio::spawn(signals.first(signal_cancel));

    let outcome = run_until_cancelled(config, cancel.clone()).await;
    signal_task.abort();
    outcome
}

async fn run_until_cancelled(config: Config, cancel: CancellationToken) -> Outcome {
    let board = health::Board::new();
    let (supervisor, terminal_rx) = Supervisor::new(cancel.clone());
    let mut nat = None;
    let outcome = start_and_serve(config, &supervisor, &board, terminal_rx, &mut nat).await;
    systemd::stopping();
    info!("Stopping.");
    if !supervisor.shutdown(STOP_DEADLINE).await {
        warn!(deadline = ?STOP_DEADLINE, "Some subsystems did not stop in time.");
    }
    // Like ecs-init's post-stop: the rules go with the agent (a crash leaves them; the next
    // start finds them in place and adds nothing).
    if let Some(nat) = nat
        && let Err(e) = nat.remove()
    {
        warn!(error = %e, "The task endpoint's host NAT was not fully removed.");
    }
    if let Outcome::Terminal(msg) = &outcome {
        error!(reason = %msg, "Stopped on a terminal failure; systemd will not restart ecs-hostd until an operator acts.");
    }
    outcome
}

/// The start-up phases in order, then [`serve`]. A phase that returns an [`Outcome`] ends the
/// run there (cancelled: clean; otherwise an error or a terminal failure).
async fn start_and_serve(
    config: Config,
    supervisor: &Supervisor,
    board: &health::Board,
    terminal_rx: mpsc::UnboundedReceiver<String>,
    nat: &mut Option<HostNat>,
) -> Outcome {
    let start = Start::new(&config, supervisor, board);
    let registered = async {
        let local = start.open_local_state()?;
        let mut docker = start.wait_for_docker().await?;
        *nat = start.plumb_host_network(&docker).await;
        let roles = &start.config.host_nat;
        docker.available = crate::engine::features::Available {
            task_roles: nat.is_some() && roles.task_iam_role,
            task_roles_network_host: nat.is_some() && roles.task_iam_role_network_host,
            execution_role_awslogs: nat.is_some() && roles.execution_role_awslogs,
            // Set by the engine from its task network (phase 3b).
            awsvpc: false,
        };
        docker.task_cgroups = start.task_cgroups(&docker).await;
        docker.pause_image = start.find_pause_image(&docker).await;
        let instance = start.read_identity(&local).await?;
        docker.task_network = start.task_network(&docker, &instance);
        start.wait_for_warm_pool(&instance).await?;
        let registered = start.register(&local, &docker, &instance).await?;
        start.announce_ready(&docker, &registered);
        subsystems::start(&start, &local, &docker, &instance, &registered)?;
        Ok::<_, Outcome>(registered)
    };
    match registered.await {
        Ok(registered) => serve(supervisor.token(), terminal_rx, registered).await,
        Err(end) => end,
    }
}

/// The logging drivers Docker has (`docker info`'s log plugins), if it says.
async fn log_drivers(docker: &bollard::Docker) -> Option<Vec<String>> {
    match docker.info().await {
        Ok(info) => info.plugins.and_then(|p| p.log),
        Err(e) => {
            warn!(error = %e, "Cannot read Docker's logging drivers; advertising the configured ones.");
            None
        }
    }
}

/// The enabled Docker volume plugins (one `GET /plugins` at registration; container-features.md
/// §6), advertised as `ecs.capability.docker-plugin.<name>`. None when Docker cannot say.
async fn volume_plugins(docker: &bollard::Docker) -> Vec<String> {
    let filters = std::collections::HashMap::from([
        ("enabled".to_owned(), vec!["true".to_owned()]),
        ("capability".to_owned(), vec!["volumedriver".to_owned()]),
    ]);
    let opts = bollard::query_parameters::ListPluginsOptions {
        filters: Some(filters),
    };
    match docker.list_plugins(Some(opts)).await {
        Ok(plugins) => plugins.into_iter().map(|p| p.name).collect(),
        Err(e) => {
            warn!(error = %e, "Cannot list Docker's volume plugins; advertising the local driver only.");
            Vec::new()
        }
    }
}

/// The default bridge's interface name (`docker0`), from Docker's `bridge` network.
async fn default_bridge(docker: &bollard::Docker) -> Option<String> {
    let n = docker
        .inspect_network(
            "bridge",
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .ok()?;
    let options = n.options.unwrap_or_default();
    if options
        .get("com.docker.network.bridge.default_bridge")
        .map(String::as_str)
        != Some("true")
    {
        return None;
    }
    options.get("com.docker.network.bridge.name").cloned()
}

/// Why the awsvpc network mode stays off, if it does: the setting, the pause image, the VPC.
fn awsvpc_off(
    c: &crate::config::AwsvpcConfig,
    pause_image: bool,
    vpc: Option<&VpcFacts>,
) -> Option<&'static str> {
    if !c.enable_task_eni {
        Some("ECS_ENABLE_TASK_ENI=false")
    } else if !pause_image {
        Some("Docker has no pause image (ECS_HOSTD_PAUSE_IMAGE); ecs-hostd never pulls it")
    } else if vpc.is_none() {
        Some("IMDS says this instance is not in a VPC (no mac, vpc-id or subnet-id)")
    } else {
        None
    }
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// Waits for the end of the run: cancellation (a signal) is clean, a terminal failure reported by
/// a subsystem is terminal. Holds the registration's sender until then.
async fn serve(
    cancel: &CancellationToken,
    mut terminal_rx: mpsc::UnboundedReceiver<String>,
    registered: Registered,
) -> Outcome {
    let outcome = tokio::select! {
        _ = cancel.cancelled() => Outcome::Clean,
        Some(msg) = terminal_rx.recv() => Outcome::Terminal(msg),
    };
    drop(registered);
    outcome
}

/// What every phase uses: the configuration, the supervisor (and its token), the health board,
/// and what subsystems started in different phases share.
struct Start<'a> {
    config: &'a Config,
    supervisor: &'a Supervisor,
    board: &'a health::Board,
    /// The `draining` flag: true from the moment this instance starts draining (Spot notice, Auto
    /// Scaling termination, rebalance with ECS_HOSTD_REBALANCE=drain). The lifecycle subsystem
    /// raises it; the Docker watchdog never restarts Docker while it is up.
    draining: watch::Sender<bool>,
    /// ACS heartbeats ask the Docker watchdog for a health round (protocol spec §5.4).
    docker_check: Arc<Notify>,
    /// The Docker watchdog's counters, shown on `/metrics`.
    watchdog_stats: Arc<watchdog::Stats>,
    /// When the task engine last heard from Docker (marked by its call counter, read by the
    /// watchdog, which then need not ask again).
    docker_answered: crate::docker::Answered,
}

/// Phase 1's result.
struct LocalState {
    store: Store,
    host: HostFacts,
}

/// Phase 2's result: Docker answers.
struct DockerReady {
    docker: bollard::Docker,
    info: EngineInfo,
    /// What the host makes available to tasks (task roles once phase 2b's NAT is in place).
    available: crate::engine::features::Available,
    /// Task cgroups (phase 2c), when enabled and possible here.
    task_cgroups: Option<crate::engine::task_cgroup::TaskCgroups>,
    /// Docker has the namespace pause image (`ECS_HOSTD_PAUSE_IMAGE`).
    pause_image: bool,
    /// The awsvpc network mode's kernel side (phase 3b); `None`: awsvpc refused, not advertised.
    task_network: Option<Arc<dyn TaskNetwork>>,
}

/// Phase 3's result.
struct Instance {
    imds: Arc<ImdsClient>,
    identity: Identity,
    /// The instance's VPC, when IMDS says it is in one.
    vpc: Option<VpcFacts>,
}

/// Phase 5's result.
struct Registered {
    region: String,
    sdk: aws_config::SdkConfig,
    ecs: SdkEcs,
    registration: Registration,
    /// The registration as the local API reads it.
    registration_tx: watch::Sender<Option<Registration>>,
}

impl<'a> Start<'a> {
    fn new(config: &'a Config, supervisor: &'a Supervisor, board: &'a health::Board) -> Self {
        Start {
            config,
            supervisor,
            board,
            draining: lifecycle::draining_flag(),
            docker_check: Arc::new(Notify::new()),
            watchdog_stats: Arc::new(watchdog::Stats::default()),
            docker_answered: crate::docker::Answered::default(),
        }
    }

    fn cancel(&self) -> &CancellationToken {
        self.supervisor.token()
    }

    /// Phase 1, local state (spec §2 step 3): opens the state database and reads the host's CPU
    /// count and memory.
    fn open_local_state(&self) -> Result<LocalState, Outcome> {
        let store =
            Store::open(&self.config.store_path()).map_err(|e| Outcome::Error(e.to_string()))?;
        let host = HostFacts::read().map_err(|e| Outcome::Error(e.to_string()))?;
        Ok(LocalState { store, host })
    }

    /// Phase 2, Docker (spec §2 step 2): waits with backoff, never crash-loops at boot. The
    /// Docker watchdog and the systemd pinger start before the wait: a disabled or failed
    /// docker.service at boot is repaired by the watchdog, not waited for forever.
    async fn wait_for_docker(&self) -> Result<DockerReady, Outcome> {
        subsystems::spawn_health(self);
        systemd::status("waiting for Docker");
        self.board.set("docker", false, "waiting for Docker");
        let (docker, info) =
            match docker::connect_ready(self.config.docker_host.as_deref(), self.cancel(), |e| {
                systemd::status(&format!("waiting for Docker: {e}"));
            })
            .await
            {
                Ok(ready) => ready,
                Err(docker::Error::Cancelled) => return Err(Outcome::Clean),
                Err(e) if e.is_retryable() => return Err(Outcome::Error(e.to_string())),
                Err(e) => return Err(Outcome::Terminal(e.to_string())),
            };
        self.board.set(
            "docker",
            true,
            format!("Docker {} (API {})", info.version, info.api_version),
        );
        Ok(DockerReady {
            docker,
            info,
            available: Default::default(),
            task_cgroups: None,
            pause_image: false,
            task_network: None,
        })
    }

    /// Phase 2c, task cgroups (container-features.md §7): with `ECS_ENABLE_TASK_CPU_MEM_LIMIT`,
    /// where the tasks' cgroups go, from the host's cgroup version and Docker's cgroup driver
    /// (`docker info`); the systemd driver needs the system bus. A host that cannot have them runs
    /// on without (and does not advertise them), and says why.
    async fn task_cgroups(
        &self,
        docker: &DockerReady,
    ) -> Option<crate::engine::task_cgroup::TaskCgroups> {
        use crate::engine::task_cgroup::{CGROUP_ROOT, Slices, TaskCgroups};
        let engine = &self.config.engine;
        if !engine.task_cpu_mem_limit {
            info!(
                "ECS_ENABLE_TASK_CPU_MEM_LIMIT=false: tasks get no task-level CPU and memory limits."
            );
            return None;
        }
        let driver = match docker.docker.info().await {
            Ok(info) => info
                .cgroup_driver
                .map(|d| d.to_string())
                .unwrap_or_default(),
            Err(e) => {
                warn!(error = %e, "Cannot read Docker's cgroup driver; tasks get no task-level CPU and memory limits.");
                return None;
            }
        };
        let slices: Option<std::sync::Arc<dyn Slices>> = if driver == "systemd" {
            match watchdog::systemd_dbus::DbusManager::connect().await {
                Ok(m) => Some(std::sync::Arc::new(m)),
                Err(e) => {
                    warn!(error = %e, "Docker uses the systemd cgroup driver and systemd cannot be reached.");
                    None
                }
            }
        } else {
            None
        };
        let root = std::path::Path::new(CGROUP_ROOT);
        match TaskCgroups::configured(engine, root, &driver, slices) {
            Ok(cgroups) => {
                if let Some(c) = &cgroups {
                    info!(layout = ?c.layout, cgroup_driver = %driver, "Tasks get task-level CPU and memory limits.");
                }
                cgroups
            }
            Err(e) => {
                warn!(error = %e, "Tasks get no task-level CPU and memory limits here; the capability is not advertised.");
                None
            }
        }
    }

    /// Phase 2c, the namespace pause image (container-features.md §8): ecs-hostd never pulls
    /// it, so `pidMode`/`ipcMode` `task` is advertised only when Docker has it now.
    async fn find_pause_image(&self, docker: &DockerReady) -> bool {
        let image = &self.config.engine.pause_image;
        match docker.docker.inspect_image(image).await {
            Ok(_) => true,
            Err(e) => {
                info!(image = %image, error = %e, "No pause image in Docker; task-scoped PID and IPC namespaces and awsvpc are not advertised.");
                false
            }
        }
    }

    /// Phase 2b, host network (ecs-init's pre-start, task-credentials.md §6): `route_localnet`
    /// and the iptables rules that make 169.254.170.2:80 reach the task endpoint from bridge and
    /// host-network containers and from dockerd, checked before added. A host where they cannot
    /// be installed (no iptables, no CAP_NET_ADMIN) runs on without them, and says so.
    async fn plumb_host_network(&self, docker: &DockerReady) -> Option<HostNat> {
        let c = &self.config.host_nat;
        if !c.enabled {
            info!("ECS_HOSTD_HOST_NAT=false: the host provides the task endpoint's NAT, if any.");
            return None;
        }
        let endpoint_port = self.config.task_endpoint.addr.port();
        if endpoint_port == 0 {
            warn!(
                "The task endpoint listens on a port the kernel picks (ECS_HOSTD_TASK_ENDPOINT_ADDR port 0): no NAT can point at it; containers cannot reach 169.254.170.2."
            );
            return None;
        }
        let settings = NatSettings {
            endpoint_port,
            api_port: self.config.api_addr.port(),
            skip_localhost_filter: c.skip_localhost_filter,
            allow_offhost_introspection: c.allow_offhost_introspection,
            docker_bridge: default_bridge(&docker.docker).await,
            ipv6: std::path::Path::new("/proc/sys/net/ipv6").exists() && which("ip6tables"),
            block_imds: c.block_imds,
        };
        let nat = HostNat::new(&settings, Box::new(Host::default()));
        match tokio::task::spawn_blocking(move || nat.install().map(|_| nat)).await {
            Ok(Ok(nat)) => Some(nat),
            Ok(Err(e)) => {
                warn!(error = %e, "Containers cannot reach the task endpoint on 169.254.170.2: its host NAT could not be installed.");
                None
            }
            Err(e) => {
                warn!(error = %e, "Host NAT set-up panicked.");
                None
            }
        }
    }

    /// Phase 3, identity (spec §2 step 4): reads the instance identity document from IMDS, with
    /// retries. A drain that started before a restart raises the draining flag from the start.
    async fn read_identity(&self, local: &LocalState) -> Result<Instance, Outcome> {
        let imds = Arc::new(ImdsClient::new(&self.config.imds_endpoint));
        systemd::status("reading the instance identity from IMDS");
        self.board
            .set("registration", false, "reading the instance identity");
        let identity = match register::read_identity(&*imds, self.cancel()).await {
            Ok(id) => id,
            Err(register::Error::Cancelled) => return Err(Outcome::Clean),
            Err(e) => return Err(Outcome::Error(e.to_string())),
        };
        match lifecycle::load_record(&local.store, &identity.document.instance_id) {
            Ok(Some(_)) => {
                self.draining.send_replace(true);
            }
            Ok(None) => {}
            Err(e) => return Err(Outcome::Error(e.to_string())),
        }
        let vpc = match crate::imds::vpc_facts(&*imds).await {
            Ok(vpc) => vpc,
            Err(e) => {
                warn!(error = %e, "Cannot read the instance's VPC from IMDS; ecs.vpc-id is not advertised and awsvpc is off.");
                None
            }
        };
        Ok(Instance {
            imds,
            identity,
            vpc,
        })
    }

    /// Phase 3b, awsvpc (awsvpc.md §1): the engine gets a task network when
    /// `ECS_ENABLE_TASK_ENI`, Docker has the pause image and the instance is in a VPC; otherwise
    /// awsvpc tasks are refused and task-eni is not advertised, and the log says why.
    fn task_network(
        &self,
        docker: &DockerReady,
        instance: &Instance,
    ) -> Option<Arc<dyn TaskNetwork>> {
        let c = &self.config.awsvpc;
        if let Some(why) = awsvpc_off(c, docker.pause_image, instance.vpc.as_ref()) {
            info!(reason = %why, "The awsvpc network mode is off; task-eni is not advertised.");
            return None;
        }
        if c.test_accept_virtual_enis {
            warn!(
                "ECS_HOSTD_TEST_ACCEPT_VIRTUAL_ENIS is on: a virtual link with an ENI's MAC address will be taken for the ENI. This setting is for test worlds only; never set it on EC2."
            );
        }
        info!(
            vpc = ?instance.vpc.as_ref().map(|v| &v.vpc_id),
            block_imds = c.block_imds,
            "The awsvpc network mode is on: task ENIs go into their pause containers' namespaces."
        );
        Some(Arc::new(NetlinkTaskNetwork::new(
            c.test_accept_virtual_enis,
        )))
    }

    /// Phase 4, warm pool (spec §2 step 5, §13.2; `ECS_WARM_POOLS_CHECK` only): never registers
    /// while the instance is warmed; waits until the target lifecycle state is `InService`.
    async fn wait_for_warm_pool(&self, instance: &Instance) -> Result<(), Outcome> {
        if !self.config.lifecycle.warm_pools_check {
            return Ok(());
        }
        let board = self.board;
        board.set(
            lifecycle::COMPONENT,
            false,
            "warm pool: waiting for InService",
        );
        let wait = WarmPoolWait::new(self.config.lifecycle.warm_pool_poll_interval);
        match warmpool::wait_until_in_service(&*instance.imds, &wait, self.cancel(), |line| {
            systemd::status(line);
            board.set(lifecycle::COMPONENT, false, line);
        })
        .await
        {
            Ok(()) => {
                board.set(lifecycle::COMPONENT, true, "in service");
                Ok(())
            }
            Err(lifecycle::Error::Cancelled) => Err(Outcome::Clean),
            Err(e) if e.is_terminal() => Err(Outcome::Terminal(e.to_string())),
            Err(e) => Err(Outcome::Error(e.to_string())),
        }
    }

    /// Phase 5, registration (spec §2 steps 6–7): a new instance first waits its start-up jitter,
    /// so a fleet booting together spreads its first registrations; then RegisterContainerInstance
    /// (re-registering the saved ARN), retried for an hour.
    async fn register(
        &self,
        local: &LocalState,
        docker: &DockerReady,
        instance: &Instance,
    ) -> Result<Registered, Outcome> {
        let (config, board, cancel) = (self.config, self.board, self.cancel());
        let identity = &instance.identity;
        let first_registration = !matches!(
            register::saved(&local.store),
            Ok(Some(saved)) if saved.ec2_instance_id == identity.document.instance_id
        );
        if first_registration
            && !lifecycle::startup_jitter(config.lifecycle.startup_jitter, cancel).await
        {
            return Err(Outcome::Clean);
        }

        let region = config
            .region
            .clone()
            .unwrap_or_else(|| identity.document.region.clone());
        let sdk = crate::aws::sdk_config(&region)
            .await
            .map_err(Outcome::Terminal)?;
        let ecs = SdkEcs::new(&sdk, config.ecs_endpoint.as_deref());

        systemd::status(&format!("registering with cluster {}", config.cluster));
        board.set(
            "registration",
            false,
            format!("registering with cluster {}", config.cluster),
        );
        // Logging drivers: the configured ones this Docker really has ("none" is built in).
        let mut advertised = config.clone();
        if let Some(have) = log_drivers(&docker.docker).await {
            advertised.available_logging_drivers.retain(|d| {
                let ok = d == "none" || have.contains(d);
                if !ok {
                    warn!(driver = %d, "ECS_AVAILABLE_LOGGING_DRIVERS lists a logging driver this Docker does not have; not advertised.");
                }
                ok
            });
        }
        let registrar = Registrar {
            config: &advertised,
            identity,
            ecs: &ecs,
            store: &local.store,
            host: &local.host,
            docker_api_version: Some(docker.info.api_version.clone()),
            features: attributes::Features {
                task_iam_role: docker.available.task_roles,
                task_iam_role_network_host: docker.available.task_roles_network_host,
                execution_role_awslogs: docker.available.execution_role_awslogs,
                task_cpu_mem_limit: docker.task_cgroups.is_some(),
                pid_ipc_namespace_sharing: docker.pause_image,
                task_eni: docker.task_network.is_some(),
                task_eni_block_imds: docker.task_network.is_some() && config.awsvpc.block_imds,
                ..attributes::IMPLEMENTED
            },
            volume_plugins: volume_plugins(&docker.docker).await,
            vpc: instance.vpc.clone(),
            retry: REGISTER_RETRY,
            give_up_after: REGISTER_GIVE_UP,
        };
        let registration = match registrar.register(cancel).await {
            Ok(r) => r,
            Err(register::Error::Cancelled) => return Err(Outcome::Clean),
            Err(e) if e.is_terminal() => return Err(Outcome::Terminal(e.to_string())),
            Err(e) => return Err(Outcome::Error(e.to_string())),
        };
        board.set(
            "registration",
            true,
            format!("registered as {}", registration.container_instance_arn),
        );
        Ok(Registered {
            region,
            sdk,
            ecs,
            registration_tx: watch::Sender::new(Some(registration.clone())),
            registration,
        })
    }

    /// Phase 5, ready: the start-up summary in the log, `READY=1` to systemd, and from then on
    /// `STATUS=` follows the health board.
    fn announce_ready(&self, docker: &DockerReady, registered: &Registered) {
        let (config, registration) = (self.config, &registered.registration);
        info!(
            version = env!("CARGO_PKG_VERSION"),
            cluster = %registration.cluster,
            region = %registered.region,
            instance.arn = %registration.container_instance_arn,
            instance_id = %registration.ec2_instance_id,
            data_dir = %config.data_dir.display(),
            api.addr = %config.api_addr,
            docker.version = %docker.info.version,
            "ecs-hostd started."
        );
        let ready_text = format!(
            "registered as {} in {}",
            registration.container_instance_arn, registration.cluster
        );
        systemd::ready(&ready_text);
        subsystems::spawn_systemd_status(self, ready_text);
    }
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Cancels on the first SIGTERM/SIGINT; a second one exits at once.
    async fn first(mut self, cancel: CancellationToken) {
        tokio::select! {
            _ = self.term.recv() => info!("SIGTERM received."),
            _ = self.int.recv() => info!("SIGINT received."),
        }
        cancel.cancel();
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
        warn!("Second signal: exiting without waiting.");
        std::process::exit(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awsvpc_is_on_only_with_the_setting_the_pause_image_and_a_vpc() {
        let vpc = VpcFacts {
            mac: "0e:aa:bb:cc:dd:01".into(),
            vpc_id: "vpc-1".into(),
            subnet_id: "subnet-1".into(),
        };
        let on = crate::config::AwsvpcConfig::default();
        assert_eq!(awsvpc_off(&on, true, Some(&vpc)), None);
        let off = crate::config::AwsvpcConfig {
            enable_task_eni: false,
            ..on.clone()
        };
        assert!(
            awsvpc_off(&off, true, Some(&vpc))
                .unwrap()
                .contains("ECS_ENABLE_TASK_ENI")
        );
        assert!(
            awsvpc_off(&on, false, Some(&vpc))
                .unwrap()
                .contains("pause image")
        );
        assert!(awsvpc_off(&on, true, None).unwrap().contains("VPC"));
    }
}
