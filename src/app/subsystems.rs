//! The long-running subsystems `run` spawns under the supervisor, one function each: those that
//! keep the host healthy from the first second (phase 2), the systemd status line (phase 5), and
//! phase 6's metrics, engine, reporter, ACS, local API and lifecycle. Wiring only: each builds a
//! subsystem from the earlier phases' results and spawns it.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::{DockerReady, Instance, LocalState, Outcome, Registered, Start, telemetry};
use crate::api::{self, ApiState};
use crate::ecs::{acs, report, tcs};
use crate::engine::Engine;
use crate::lifecycle::autoscaling::SdkAutoScaling;
use crate::lifecycle::drain::LocalCensus;
use crate::lifecycle::signals::PollPlan;
use crate::lifecycle::{self, Lifecycle};
use crate::metrics::Metrics;
use crate::supervisor::Failure;
use crate::{systemd, watchdog};

/// How often the API subsystem beats.
const API_BEAT: Duration = Duration::from_secs(5);
/// Silence after which the API counts as wedged: longer than the supervisor's longest restart
/// backoff (60 s), so an API that fails and is being restarted is not mistaken for a wedge.
const API_MAX_SILENCE: Duration = Duration::from_secs(90);

/// Phase 6, subsystems (spec §2 steps 8–9): host metrics, the task engine, the state-change
/// reporter, the ACS session, the container stats collector, the TCS session, the local API,
/// the task endpoint and the lifecycle subsystem, in that order.
pub(super) fn start(
    start: &Start<'_>,
    local: &LocalState,
    docker: &DockerReady,
    instance: &Instance,
    registered: &Registered,
) -> Result<(), Outcome> {
    let metrics = spawn_metrics(start, local, registered);
    let plane = TaskPlane::new(start, local, registered);
    let engine = spawn_engine(start, local, docker, registered, &plane, metrics.as_ref())?;
    spawn_reporter(start, &plane);
    let discovery = Arc::new(crate::ecs::discover::Discovery::default());
    spawn_acs(
        start, local, docker, registered, &plane, &engine, &discovery,
    )?;
    let stats = spawn_stats(start, &engine);
    spawn_tcs(
        start,
        docker,
        registered,
        &plane,
        &engine,
        &discovery,
        stats.clone(),
    )?;
    spawn_api(
        start,
        registered,
        &engine,
        &plane,
        metrics.as_ref(),
        stats.as_ref(),
    );
    spawn_task_endpoint(start, registered, &engine, &plane, stats);
    spawn_lifecycle(start, local, instance, registered, &engine, &plane);
    Ok(())
}

/// The task endpoint (issue 18): credentials and task metadata for containers, on 51679
/// (reached as 169.254.170.2:80 through `engine::net::host_nat`).
fn spawn_task_endpoint(
    start: &Start<'_>,
    registered: &Registered,
    engine: &Engine,
    plane: &TaskPlane,
    stats: Option<crate::stats::Stats>,
) {
    let addr = start.config.task_endpoint.addr;
    let state = crate::task_endpoint::EndpointState::for_agent(
        start.config,
        &registered.registration,
        plane.credentials.clone(),
        Arc::new(engine.view()),
        match stats {
            Some(s) => Arc::new(s) as Arc<dyn crate::task_endpoint::StatsSource>,
            None => Arc::new(crate::task_endpoint::stats::NoStats),
        },
        Arc::new(crate::task_endpoint::tags::EcsTags(
            registered.ecs.client().clone(),
        )),
    );
    start.supervisor.spawn("task-endpoint", move |token| {
        let state = state.clone();
        async move {
            crate::task_endpoint::serve(addr, state, token)
                .await
                .map_err(|e| Failure::transient(format!("task endpoint on {addr}: {e}")))
        }
    });
}

/// The control plane and the task engine (issues 3 and 4): ACS delivers tasks to the engine
/// through `tasks::TaskControl`; the engine enqueues state changes in the reporter's durable
/// queue inside its own store transactions; the reporter sends them to ECS in order. These are
/// the parts they share.
struct TaskPlane {
    ecs_api: Arc<dyn crate::ecs::EcsApi>,
    milestones: Arc<report::Milestones>,
    reporter: Arc<report::Reporter>,
    /// The reporter, as the engine and the ACS handler see it.
    sink: Arc<dyn crate::tasks::StateChangeSink>,
    credentials: Arc<crate::tasks::CredentialsStore>,
    /// Every Docker call the engine makes, by operation (`/metrics`).
    docker_calls: Arc<crate::engine::counting::DockerCalls>,
}

impl TaskPlane {
    fn new(start: &Start<'_>, local: &LocalState, registered: &Registered) -> TaskPlane {
        let ecs_api: Arc<dyn crate::ecs::EcsApi> = Arc::new(registered.ecs.clone());
        let milestones = Arc::new(report::Milestones::default());
        let reporter = Arc::new(
            report::Reporter::new(local.store.clone(), ecs_api.clone(), Default::default())
                .with_milestones(milestones.clone()),
        );
        let credentials = Arc::new(crate::tasks::CredentialsStore::default());
        let sink: Arc<dyn crate::tasks::StateChangeSink> = reporter.clone();
        TaskPlane {
            ecs_api,
            milestones,
            reporter,
            sink,
            credentials,
            docker_calls: Arc::new(crate::engine::counting::DockerCalls::answering(
                start.docker_answered.clone(),
            )),
        }
    }
}

/// Phase 2: what keeps the host healthy from the first second: the Docker watchdog (repairs
/// docker.service through systemd, or only pings and reports), the systemd watchdog pinger
/// (`WATCHDOG=1` only while every heartbeat is fresh), and, in debug builds, the test hook that
/// wedges a subsystem (`ECS_HOSTD_TEST_WEDGE_AFTER`).
pub(super) fn spawn_health(start: &Start<'_>) {
    let (supervisor, board) = (start.supervisor, start.board);
    let wd_config = start.config.watchdog.clone();
    let wd_beat = supervisor.heartbeat(
        "docker-watchdog",
        watchdog::Watchdog::max_silence(&wd_config),
    );
    let wd_host = start.config.docker_host.clone();
    let draining = watchdog::Draining::from_sender(start.draining.clone());
    let (wd_board, wd_stats) = (board.clone(), start.watchdog_stats.clone());
    let wd_check_now = start.docker_check.clone();
    let wd_answered = start.docker_answered.clone();
    supervisor.spawn("docker-watchdog", move |token| {
        let w = watchdog::Watchdog {
            config: wd_config.clone(),
            docker_host: wd_host.clone(),
            systemd: watchdog::Systemd::Dbus,
            board: wd_board.clone(),
            stats: wd_stats.clone(),
            draining: draining.clone(),
            heartbeat: Some(wd_beat.clone()),
            check_now: wd_check_now.clone(),
            engine_answered: Some(wd_answered.clone()),
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

/// Phase 5, after `READY=1`: keeps systemd's `STATUS=` line on the health board's state.
pub(super) fn spawn_systemd_status(start: &Start<'_>, ready_text: String) {
    let status_board = start.board.clone();
    start.supervisor.spawn("systemd-status", move |token| {
        let board = status_board.clone();
        let text = ready_text.clone();
        async move {
            systemd::run_status(board, text, token).await;
            Ok(())
        }
    });
}

/// Host metrics (issue 5): /proc + statvfs → durable spool → CloudWatch. Its run() makes the
/// final flush within metrics.shutdown_flush after cancellation (inside STOP_DEADLINE). `None`
/// when turned off, or when the spool cannot be opened (then the agent runs without them).
fn spawn_metrics(
    start: &Start<'_>,
    local: &LocalState,
    registered: &Registered,
) -> Option<Metrics> {
    let config = start.config;
    let metrics = if config.metrics.enabled {
        Metrics::for_agent(
            config,
            &registered.sdk,
            &local.store,
            start.board,
            &registered.registration.cluster,
        )
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
        let mut draining_rx = start.draining.subscribe();
        tokio::spawn(async move {
            if draining_rx.wait_for(|d| *d).await.is_ok() {
                flush.send_replace(true);
            }
        });
        start.supervisor.spawn("metrics", move |token| {
            let m = m.clone();
            async move {
                m.run(token)
                    .await
                    .map_err(|e| Failure::transient(format!("metrics: {e}")))
            }
        });
    }
    metrics
}

/// The task engine (issue 4), and the feed of its running task and container counts into the
/// health metrics (issue 5).
fn spawn_engine(
    start: &Start<'_>,
    local: &LocalState,
    docker: &DockerReady,
    registered: &Registered,
    plane: &TaskPlane,
    metrics: Option<&Metrics>,
) -> Result<Engine, Outcome> {
    let (config, supervisor) = (start.config, start.supervisor);
    let mut settings = crate::engine::Settings::from_config(
        config,
        Some(registered.region.clone()),
        local.host.cpus,
        local.host.mem_total_bytes / (1024 * 1024),
    );
    settings.available = docker.available;
    settings.task_cgroups = docker.task_cgroups.clone();
    settings.task_network = docker.task_network.clone();
    let hooks = crate::engine::Hooks::from_env();
    if let Some(phase) = &hooks.pause_at {
        warn!(phase = %phase, hook = crate::engine::PAUSE_AT_ENV, "Test hook armed: the engine will pause at this phase.");
    }
    let engine = Engine::new(crate::engine::Parts {
        settings,
        store: local.store.clone(),
        sink: plane.sink.clone(),
        credentials: plane.credentials.clone(),
        runtime: Arc::new(crate::engine::counting::Counting::with_calls(
            Arc::new(crate::engine::docker::DockerRuntime::new(
                docker.docker.clone(),
                crate::engine::docker::Timeouts {
                    create: config.engine.container_create_timeout,
                    start: config.engine.container_start_timeout,
                    ..Default::default()
                },
            )),
            plane.docker_calls.clone(),
        )),
        ecr: Arc::new(crate::engine::pull::CachedEcr::new(
            Arc::new(crate::engine::pull::SdkEcr),
            crate::engine::pull::ECR_TOKEN_REUSE,
        )),
        secrets: Arc::new(crate::engine::secrets::SdkSecrets),
        objects: Arc::new(crate::engine::envfiles::S3Objects::default()),
        hooks,
    })
    .map_err(|e| Outcome::Terminal(e.to_string()))?;
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
    if let Some(m) = metrics {
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
    Ok(engine)
}

/// The state-change reporter: the durable queue the engine fills, sent to ECS in order.
fn spawn_reporter(start: &Start<'_>, plane: &TaskPlane) {
    let reporter_task = plane.reporter.clone();
    start.supervisor.spawn("reporter", move |token| {
        let r = reporter_task.clone();
        async move {
            r.run(token)
                .await
                .map_err(|e| Failure::transient(format!("reporter: {e}")))
        }
    });
}

/// The ACS session (spec §2 step 9, §5): delivers tasks to the engine, and its heartbeats ask
/// the Docker watchdog for a health round.
fn spawn_acs(
    start: &Start<'_>,
    local: &LocalState,
    docker: &DockerReady,
    registered: &Registered,
    plane: &TaskPlane,
    engine: &Engine,
    discovery: &Arc<crate::ecs::discover::Discovery>,
) -> Result<(), Outcome> {
    let Some(credentials_provider) = registered.sdk.credentials_provider() else {
        return Err(Outcome::Error(
            "no AWS credentials provider to sign the ACS connection".into(),
        ));
    };
    let registration = &registered.registration;
    let acs_session = match acs::AcsSession::new(acs::AcsParts {
        config: acs::AcsConfig {
            cluster: registration.cluster.clone(),
            container_instance_arn: registration.container_instance_arn.clone(),
            region: registered.region.clone(),
            agent_version: crate::COMPATIBLE_AGENT_VERSION.into(),
            agent_hash: acs::agent_hash(),
            docker_version: Some(docker.info.version.clone()),
            timing: Default::default(),
        },
        ecs: plane.ecs_api.clone(),
        discovery: discovery.clone(),
        credentials_provider,
        handler: acs::HandlerParts {
            identity: acs::Identity {
                cluster: registration.cluster.clone(),
                container_instance_arn: registration.container_instance_arn.clone(),
            },
            engine: Arc::new(engine.clone()),
            credentials: plane.credentials.clone(),
            sink: plane.sink.clone(),
            store: local.store.clone(),
            milestones: Some(plane.milestones.clone()),
        },
    }) {
        Ok(a) => Arc::new(a.with_health_check(start.docker_check.clone())),
        Err(e) => return Err(Outcome::Error(e.to_string())),
    };
    start.supervisor.spawn("acs", move |token| {
        let a = acs_session.clone();
        async move {
            a.run(token)
                .await
                .map_err(|e| Failure::transient(format!("acs: {e}")))
        }
    });
    Ok(())
}

/// The container stats collector (issue 21): samples the cgroup files of every running
/// container every `ECS_POLLING_METRICS_WAIT_DURATION`; `None` with `ECS_DISABLE_METRICS`.
fn spawn_stats(start: &Start<'_>, engine: &Engine) -> Option<crate::stats::Stats> {
    let config = &start.config.telemetry;
    if config.metrics_disabled {
        return None;
    }
    let stats = crate::stats::Stats::new(crate::stats::Collector::system());
    let (interval, view) = (config.sample_interval, engine.view());
    let s = stats.clone();
    start.supervisor.spawn("stats", move |token| {
        let (s, view) = (s.clone(), view.clone());
        async move {
            crate::stats::run(s, interval, telemetry::EngineTargets(view), token).await;
            Ok(())
        }
    });
    Some(stats)
}

/// The TCS session (issue 21): task metrics, container health and the instance status to ECS.
fn spawn_tcs(
    start: &Start<'_>,
    docker: &DockerReady,
    registered: &Registered,
    plane: &TaskPlane,
    engine: &Engine,
    discovery: &Arc<crate::ecs::discover::Discovery>,
    stats: Option<crate::stats::Stats>,
) -> Result<(), Outcome> {
    let Some(credentials_provider) = registered.sdk.credentials_provider() else {
        return Err(Outcome::Error(
            "no AWS credentials provider to sign the TCS connection".into(),
        ));
    };
    let (config, registration) = (start.config, &registered.registration);
    let session = Arc::new(tcs::TcsSession::new(tcs::TcsParts {
        config: tcs::TcsConfig {
            cluster: registration.cluster.clone(),
            container_instance_arn: registration.container_instance_arn.clone(),
            region: registered.region.clone(),
            agent_version: crate::COMPATIBLE_AGENT_VERSION.into(),
            agent_hash: acs::agent_hash(),
            docker_version: Some(docker.info.version.clone()),
            metrics: !config.telemetry.metrics_disabled,
            health: !config.engine.docker_health_check_disabled,
            timing: Default::default(),
        },
        ecs: plane.ecs_api.clone(),
        discovery: discovery.clone(),
        credentials_provider,
        source: Arc::new(telemetry::TcsSource {
            view: engine.view(),
            stats,
            board: start.board.clone(),
        }),
    }));
    start.supervisor.spawn("tcs", move |token| {
        let s = session.clone();
        async move {
            let _ = s.run(token).await;
            Ok(())
        }
    });
    Ok(())
}

/// The local API (`/v1/metadata`, `/v1/tasks`, `/healthz`, `/metrics`), beating while it serves.
fn spawn_api(
    start: &Start<'_>,
    registered: &Registered,
    engine: &Engine,
    plane: &TaskPlane,
    metrics: Option<&Metrics>,
    stats: Option<&crate::stats::Stats>,
) {
    let config = start.config;
    let api_state = ApiState {
        cluster: config.cluster.clone(),
        registration: registered.registration_tx.subscribe(),
        health: start.board.clone(),
        tasks: Arc::new(engine.view()),
        metrics: [
            start.watchdog_stats.clone() as Arc<dyn api::MetricsSection>,
            Arc::new(engine.view()),
            plane.docker_calls.clone(),
        ]
        .into_iter()
        .chain(metrics.iter().map(|m| m.section()))
        .chain(
            stats
                .iter()
                .map(|s| Arc::new((*s).clone()) as Arc<dyn api::MetricsSection>),
        )
        .collect(),
    };
    let api_addr = config.api_addr;
    let api_beat = start.supervisor.heartbeat("api", API_MAX_SILENCE);
    start.supervisor.spawn("api", move |token| {
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
}

/// The lifecycle subsystem: Spot notices, Auto Scaling lifecycle states, rebalance, draining.
fn spawn_lifecycle(
    start: &Start<'_>,
    local: &LocalState,
    instance: &Instance,
    registered: &Registered,
    engine: &Engine,
    plane: &TaskPlane,
) {
    let config = start.config;
    let registration = &registered.registration;
    let lifecycle = Arc::new(Lifecycle {
        config: config.lifecycle.clone(),
        cluster: registration.cluster.clone(),
        container_instance_arn: registration.container_instance_arn.clone(),
        ec2_instance_id: registration.ec2_instance_id.clone(),
        imds: instance.imds.clone(),
        ecs: plane.ecs_api.clone(),
        autoscaling: Arc::new(SdkAutoScaling::new(&registered.sdk)),
        census: Arc::new(LocalCensus {
            view: engine.view(),
            reporter: plane.reporter.clone(),
        }),
        store: local.store.clone(),
        board: start.board.clone(),
        draining: start.draining.clone(),
        plan: PollPlan::standard(config.lifecycle.spot_instance_draining),
    });
    start.supervisor.spawn("lifecycle", move |token| {
        let lifecycle = lifecycle.clone();
        async move {
            match lifecycle.run(token).await {
                Ok(()) | Err(lifecycle::Error::Cancelled) => Ok(()),
                Err(e) => Err(Failure::transient(format!("lifecycle: {e}"))),
            }
        }
    });
}
