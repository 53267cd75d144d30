//! `ecs-hostd run`: wiring only. Builds the parts in the order of protocol spec §2, spawns the
//! long-running subsystems under the supervisor, owns signals and turns the end into an exit code.
//!
//! Order: open the store → start the Docker watchdog and the systemd watchdog pinger → wait for
//! Docker → read the instance identity → (warm pools: wait for InService) → (new instance:
//! start-up jitter) → register → READY=1 → serve the local API, publish metrics, run the
//! lifecycle subsystem → wait for SIGTERM or a terminal failure → STOPPING=1 → cancel and drain
//! within the stop deadline.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::ecs::register::{self, REGISTER_GIVE_UP, REGISTER_RETRY, Registrar};
use crate::ecs::sdk::SdkEcs;
use crate::ecs::{acs, attributes, report};
use crate::health;
use crate::host::HostFacts;
use crate::imds::ImdsClient;
use crate::lifecycle::autoscaling::SdkAutoScaling;
use crate::lifecycle::drain::LocalCensus;
use crate::lifecycle::signals::PollPlan;
use crate::lifecycle::warmpool::{self, WarmPoolWait};
use crate::lifecycle::{self, Lifecycle};
use crate::store::Store;
use crate::supervisor::{Failure, Supervisor};
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
    let outcome = start_and_serve(config, &supervisor, &board, terminal_rx).await;
    systemd::stopping();
    info!("Stopping.");
    if !supervisor.shutdown(STOP_DEADLINE).await {
        warn!(deadline = ?STOP_DEADLINE, "Some subsystems did not stop in time.");
    }
    if let Outcome::Terminal(msg) = &outcome {
        error!(reason = %msg, "Stopped on a terminal failure; systemd will not restart ecs-hostd until an operator acts.");
    }
    outcome
}

async fn start_and_serve(
    config: Config,
    supervisor: &Supervisor,
    board: &health::Board,
    mut terminal_rx: mpsc::UnboundedReceiver<String>,
) -> Outcome {
    let cancel = supervisor.token().clone();
    let store = match Store::open(&config.store_path()) {
        Ok(s) => s,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    let host = match HostFacts::read() {
        Ok(h) => h,
        Err(e) => return Outcome::Error(e.to_string()),
    };

    // Docker first (spec §2 step 2): wait with backoff, never crash-loop at boot. The Docker
    // watchdog and the systemd pinger start before the wait: a disabled or failed docker.service
    // at boot is repaired by the watchdog, not waited for forever.
    let watchdog_stats = Arc::new(watchdog::Stats::default());
    // The `draining` flag: true from the moment this instance starts draining (Spot notice, Auto
    // Scaling termination, rebalance with ECS_HOSTD_REBALANCE=drain). The lifecycle subsystem
    // raises it; the Docker watchdog never restarts Docker while it is up.
    let draining_tx = lifecycle::draining_flag();
    let draining = watchdog::Draining::from_sender(draining_tx.clone());
    // ACS heartbeats ask the Docker watchdog for a health round (protocol spec §5.4).
    let docker_check = Arc::new(tokio::sync::Notify::new());
    spawn_health_subsystems(
        &config,
        supervisor,
        board,
        &watchdog_stats,
        &draining,
        &docker_check,
    );
    systemd::status("waiting for Docker");
    board.set("docker", false, "waiting for Docker");
    let (docker, docker_info) =
        match docker::connect_ready(config.docker_host.as_deref(), &cancel, |e| {
            systemd::status(&format!("waiting for Docker: {e}"));
        })
        .await
        {
            Ok(ready) => ready,
            Err(docker::Error::Cancelled) => return Outcome::Clean,
            Err(e) if e.is_retryable() => return Outcome::Error(e.to_string()),
            Err(e) => return Outcome::Terminal(e.to_string()),
        };
    board.set(
        "docker",
        true,
        format!(
            "Docker {} (API {})",
            docker_info.version, docker_info.api_version
        ),
    );

    // Identity and registration (spec §2 steps 4–7).
    let imds = Arc::new(ImdsClient::new(&config.imds_endpoint));
    systemd::status("reading the instance identity from IMDS");
    board.set("registration", false, "reading the instance identity");
    let identity = match register::read_identity(&*imds, &cancel).await {
        Ok(id) => id,
        Err(register::Error::Cancelled) => return Outcome::Clean,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    let instance_id = identity.document.instance_id.clone();
    // A drain that started before a restart keeps the flag up from the start.
    match lifecycle::load_record(&store, &instance_id) {
        Ok(Some(_)) => {
            draining_tx.send_replace(true);
        }
        Ok(None) => {}
        Err(e) => return Outcome::Error(e.to_string()),
    }

    // Warm pools (protocol spec §13.2): never register while the instance is warmed.
    if config.lifecycle.warm_pools_check {
        board.set(
            lifecycle::COMPONENT,
            false,
            "warm pool: waiting for InService",
        );
        let wait = WarmPoolWait::new(config.lifecycle.warm_pool_poll_interval);
        match warmpool::wait_until_in_service(&*imds, &wait, &cancel, |line| {
            systemd::status(line);
            board.set(lifecycle::COMPONENT, false, line);
        })
        .await
        {
            Ok(()) => board.set(lifecycle::COMPONENT, true, "in service"),
            Err(lifecycle::Error::Cancelled) => return Outcome::Clean,
            Err(e) if e.is_terminal() => return Outcome::Terminal(e.to_string()),
            Err(e) => return Outcome::Error(e.to_string()),
        }
    }
    // A fleet booting together spreads its first registrations.
    let first_registration = !matches!(
        register::saved(&store),
        Ok(Some(saved)) if saved.ec2_instance_id == instance_id
    );
    if first_registration
        && !lifecycle::startup_jitter(config.lifecycle.startup_jitter, &cancel).await
    {
        return Outcome::Clean;
    }

    let region = config
        .region
        .clone()
        .unwrap_or_else(|| identity.document.region.clone());
    let sdk = match crate::aws::sdk_config(&region).await {
        Ok(sdk) => sdk,
        Err(e) => return Outcome::Terminal(e),
    };
    let ecs = SdkEcs::new(&sdk, config.ecs_endpoint.as_deref());

    systemd::status(&format!("registering with cluster {}", config.cluster));
    board.set(
        "registration",
        false,
        format!("registering with cluster {}", config.cluster),
    );
    let registrar = Registrar {
        config: &config,
        identity: &identity,
        ecs: &ecs,
        store: &store,
        host: &host,
        docker_api_version: Some(docker_info.api_version.clone()),
        features: attributes::IMPLEMENTED,
        retry: REGISTER_RETRY,
        give_up_after: REGISTER_GIVE_UP,
    };
    let registration = match registrar.register(&cancel).await {
        Ok(r) => r,
        Err(register::Error::Cancelled) => return Outcome::Clean,
        Err(e) if e.is_terminal() => return Outcome::Terminal(e.to_string()),
        Err(e) => return Outcome::Error(e.to_string()),
    };
    board.set(
        "registration",
        true,
        format!("registered as {}", registration.container_instance_arn),
    );
    let (reg_tx, reg_rx) = watch::channel(Some(registration.clone()));

    info!(
        version = env!("CARGO_PKG_VERSION"),
        cluster = %registration.cluster,
        region = %region,
        instance.arn = %registration.container_instance_arn,
        instance_id = %registration.ec2_instance_id,
        data_dir = %config.data_dir.display(),
        api.addr = %config.api_addr,
        docker.version = %docker_info.version,
        "ecs-hostd started."
    );
    let ready_text = format!(
        "registered as {} in {}",
        registration.container_instance_arn, registration.cluster
    );
    systemd::ready(&ready_text);
    let status_board = board.clone();
    supervisor.spawn("systemd-status", move |token| {
        let board = status_board.clone();
        let text = ready_text.clone();
        async move {
            systemd::run_status(board, text, token).await;
            Ok(())
        }
    });

    // Host metrics (issue 5): /proc + statvfs → durable spool → CloudWatch. Its run() makes the
    // final flush within metrics.shutdown_flush after cancellation (inside STOP_DEADLINE).
    let metrics = if config.metrics.enabled {
        crate::metrics::Metrics::for_agent(&config, &sdk, &store, board, &registration.cluster)
            .inspect_err(
                |e| warn!(error = %e, "Host metrics are off: the metrics spool cannot be opened."),
            )
            .ok()
    } else {
        None
    };
    if let Some(m) = metrics.clone() {
        // A drain (Spot notice, termination) flushes the spool at once.
        let flush = m.draining();
        let mut draining_rx = draining_tx.subscribe();
        tokio::spawn(async move {
            if draining_rx.wait_for(|d| *d).await.is_ok() {
                flush.send_replace(true);
            }
        });
        supervisor.spawn("metrics", move |token| {
            let m = m.clone();
            async move {
                m.run(token)
                    .await
                    .map_err(|e| Failure::transient(format!("metrics: {e}")))
            }
        });
    }
    // The control plane and the task engine (issues 3 and 4): ACS delivers tasks to the engine
    // through `tasks::TaskControl`; the engine enqueues state changes in the reporter's durable
    // queue inside its own store transactions; the reporter sends them to ECS in order.
    let ecs_api: Arc<dyn crate::ecs::EcsApi> = Arc::new(ecs.clone());
    let milestones = Arc::new(report::Milestones::default());
    let reporter = Arc::new(
        report::Reporter::new(store.clone(), ecs_api.clone(), Default::default())
            .with_milestones(milestones.clone()),
    );
    let credentials = Arc::new(crate::tasks::CredentialsStore::default());
    let sink: Arc<dyn crate::tasks::StateChangeSink> = reporter.clone();
    // Every Docker call the engine makes is counted (`/metrics`).
    let docker_runtime = crate::engine::counting::Counting::new(Arc::new(
        crate::engine::docker::DockerRuntime::new(
            docker.clone(),
            crate::engine::docker::Timeouts {
                create: config.engine.container_create_timeout,
                start: config.engine.container_start_timeout,
                ..Default::default()
            },
        ),
    ));
    let docker_calls = docker_runtime.calls();
    let engine = match crate::engine::Engine::new(crate::engine::Parts {
        settings: crate::engine::Settings::from_config(
            &config,
            Some(region.clone()),
            host.cpus,
            host.mem_total_bytes / (1024 * 1024),
        ),
        store: store.clone(),
        sink: sink.clone(),
        credentials: credentials.clone(),
        runtime: Arc::new(docker_runtime),
        ecr: Arc::new(crate::engine::pull::CachedEcr::new(
            Arc::new(crate::engine::pull::SdkEcr),
            crate::engine::pull::ECR_TOKEN_REUSE,
        )),
        hooks: crate::engine::Hooks::default(),
    }) {
        Ok(e) => e,
        Err(e) => return Outcome::Terminal(e.to_string()),
    };
    let engine_task = engine.clone();
    let engine_beat = supervisor.heartbeat("engine", crate::engine::MAX_SILENCE);
    supervisor.spawn("engine", move |token| {
        let (e, beat) = (engine_task.clone(), engine_beat.clone());
        async move {
            e.run_beating(token, Some(beat))
                .await
                .map_err(|err| Failure::transient(err.to_string()))
        }
    });
    // The engine's running task and container counts feed the health metrics (issue 5).
    if let Some(m) = metrics.as_ref() {
        let counts = m.engine_counts();
        let view = engine.view();
        supervisor.spawn("engine-counts", move |token| {
            let (counts, mut view) = (counts.clone(), view.clone());
            async move {
                loop {
                    let snap = view.snapshot();
                    counts.send_replace(Some(crate::metrics::EngineCounts {
                        running_tasks: snap.running_tasks,
                        running_containers: snap.running_containers,
                    }));
                    tokio::select! {
                        _ = token.cancelled() => return Ok(()),
                        alive = view.changed() => if !alive { return Ok(()) },
                    }
                }
            }
        });
    }
    let reporter_task = reporter.clone();
    supervisor.spawn("reporter", move |token| {
        let r = reporter_task.clone();
        async move {
            r.run(token)
                .await
                .map_err(|e| Failure::transient(format!("reporter: {e}")))
        }
    });
    let Some(credentials_provider) = sdk.credentials_provider() else {
        return Outcome::Error("no AWS credentials provider to sign the ACS connection".into());
    };
    let acs_session = match acs::AcsSession::new(acs::AcsParts {
        config: acs::AcsConfig {
            cluster: registration.cluster.clone(),
            container_instance_arn: registration.container_instance_arn.clone(),
            region: region.clone(),
            agent_version: crate::COMPATIBLE_AGENT_VERSION.into(),
            agent_hash: acs::agent_hash(),
            docker_version: Some(docker_info.version.clone()),
            timing: Default::default(),
        },
        ecs: ecs_api.clone(),
        credentials_provider,
        handler: acs::HandlerParts {
            identity: acs::Identity {
                cluster: registration.cluster.clone(),
                container_instance_arn: registration.container_instance_arn.clone(),
            },
            engine: Arc::new(engine.clone()),
            credentials: credentials.clone(),
            sink,
            store: store.clone(),
            milestones: Some(milestones),
        },
    }) {
        Ok(a) => Arc::new(a.with_health_check(docker_check)),
        Err(e) => return Outcome::Error(e.to_string()),
    };
    supervisor.spawn("acs", move |token| {
        let a = acs_session.clone();
        async move {
            a.run(token)
                .await
                .map_err(|e| Failure::transient(format!("acs: {e}")))
        }
    });

    let api_state = ApiState {
        cluster: config.cluster.clone(),
        registration: reg_rx,
        health: board.clone(),
        tasks: Arc::new(engine.view()),
        metrics: [
            watchdog_stats.clone() as Arc<dyn api::MetricsSection>,
            Arc::new(engine.view()),
            docker_calls,
        ]
        .into_iter()
        .chain(metrics.iter().map(|m| m.section()))
        .collect(),
    };
    let api_addr = config.api_addr;
    let api_beat = supervisor.heartbeat("api", API_MAX_SILENCE);
    supervisor.spawn("api", move |token| {
        let state = api_state.clone();
        let beat = api_beat.clone();
        async move {
            // The beat shares the server's task: it stops when that task is wedged.
            let mut tick = crate::clock::Ticker::new(API_BEAT);
            let serve = api::serve(api_addr, state, token);
            tokio::pin!(serve);
            loop {
                tokio::select! {
                    r = &mut serve => return r.map_err(|e| Failure::transient(format!("local API on {api_addr}: {e}"))),
                    _ = tick.tick() => beat.beat(),
                }
            }
        }
    });

    // Task endpoint (issue 18): credentials and task metadata for containers on 51679.
    let endpoint_addr = config.task_endpoint.addr;
    let endpoint_state = crate::task_endpoint::EndpointState::for_agent(
        &config,
        &registration,
        credentials.clone(),
        Arc::new(engine.view()),
        Arc::new(docker.clone()),
    );
    supervisor.spawn("task-endpoint", move |token| {
        let state = endpoint_state.clone();
        async move {
            crate::task_endpoint::serve(endpoint_addr, state, token)
                .await
                .map_err(|e| Failure::transient(format!("task endpoint on {endpoint_addr}: {e}")))
        }
    });

    let lifecycle = Arc::new(Lifecycle {
        config: config.lifecycle.clone(),
        cluster: registration.cluster.clone(),
        container_instance_arn: registration.container_instance_arn.clone(),
        ec2_instance_id: registration.ec2_instance_id.clone(),
        imds: imds.clone(),
        ecs: ecs_api.clone(),
        autoscaling: Arc::new(SdkAutoScaling::new(&sdk)),
        census: Arc::new(LocalCensus {
            view: engine.view(),
            reporter: reporter.clone(),
        }),
        store: store.clone(),
        board: board.clone(),
        draining: draining_tx.clone(),
        plan: PollPlan::standard(config.lifecycle.spot_instance_draining),
    });
    supervisor.spawn("lifecycle", move |token| {
        let lifecycle = lifecycle.clone();
        async move {
            match lifecycle.run(token).await {
                Ok(()) | Err(lifecycle::Error::Cancelled) => Ok(()),
                Err(e) => Err(Failure::transient(format!("lifecycle: {e}"))),
            }
        }
    });

    let outcome = tokio::select! {
        _ = cancel.cancelled() => Outcome::Clean,
        Some(msg) = terminal_rx.recv() => Outcome::Terminal(msg),
    };
    drop(reg_tx);
    outcome
}

/// How often the API subsystem beats.
const API_BEAT: Duration = Duration::from_secs(5);
/// Silence after which the API counts as wedged: longer than the supervisor's longest restart
/// backoff (60 s), so an API that fails and is being restarted is not mistaken for a wedge.
const API_MAX_SILENCE: Duration = Duration::from_secs(90);

/// Spawns what keeps the host healthy from the first second: the Docker watchdog (repairs
/// docker.service through systemd, or only pings and reports), the systemd watchdog pinger
/// (`WATCHDOG=1` only while every heartbeat is fresh), and, in debug builds, the test hook that
/// wedges a subsystem (`ECS_HOSTD_TEST_WEDGE_AFTER`).
fn spawn_health_subsystems(
    config: &Config,
    supervisor: &Supervisor,
    board: &health::Board,
    stats: &Arc<watchdog::Stats>,
    draining: &watchdog::Draining,
    check_now: &Arc<tokio::sync::Notify>,
) {
    let wd_config = config.watchdog.clone();
    let wd_beat = supervisor.heartbeat(
        "docker-watchdog",
        watchdog::Watchdog::max_silence(&wd_config),
    );
    let wd_host = config.docker_host.clone();
    let (wd_board, wd_stats, wd_draining) = (board.clone(), stats.clone(), draining.clone());
    let wd_check_now = check_now.clone();
    supervisor.spawn("docker-watchdog", move |token| {
        let w = watchdog::Watchdog {
            config: wd_config.clone(),
            docker_host: wd_host.clone(),
            systemd: watchdog::Systemd::Dbus,
            board: wd_board.clone(),
            stats: wd_stats.clone(),
            draining: wd_draining.clone(),
            heartbeat: Some(wd_beat.clone()),
            check_now: wd_check_now.clone(),
        };
        w.run(token)
    });

    let (sup, pinger_board) = (supervisor.clone(), board.clone());
    let interval = systemd::watchdog_interval();
    supervisor.spawn("systemd-watchdog", move |token| {
        let (sup, board) = (sup.clone(), pinger_board.clone());
        async move {
            systemd::run_pinger(sup, board, interval, token).await;
            Ok(())
        }
    });

    if let Some(after) = systemd::wedge_after() {
        warn!(after = ?after, hook = systemd::WEDGE_ENV, "Test hook armed: a subsystem will wedge.");
        let beat = supervisor.heartbeat("test-wedge", Duration::from_secs(1));
        supervisor.spawn("test-wedge", move |token| {
            let beat = beat.clone();
            async move {
                systemd::run_wedge(beat, after, token).await;
                Ok(())
            }
        });
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
