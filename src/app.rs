//! `ecs-hostd run`: wiring only. Builds the parts in the order of protocol spec §2, spawns the
//! long-running subsystems under the supervisor, owns signals and turns the end into an exit code.
//!
//! Order: open the store → wait for Docker → read the instance identity → register → READY=1 →
//! serve the local API (and the subsystems later issues add) → wait for SIGTERM or a terminal
//! failure → STOPPING=1 → cancel and drain within the stop deadline.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::ecs::attributes;
use crate::ecs::register::{self, REGISTER_GIVE_UP, REGISTER_RETRY, Registrar};
use crate::ecs::sdk::SdkEcs;
use crate::health;
use crate::host::HostFacts;
use crate::imds::ImdsClient;
use crate::store::Store;
use crate::supervisor::{Failure, Supervisor};
use crate::{docker, systemd};

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
    let store = match Store::open(&config.store_path()) {
        Ok(s) => s,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    let host = match HostFacts::read() {
        Ok(h) => h,
        Err(e) => return Outcome::Error(e.to_string()),
    };

    // Docker first (spec §2 step 2): wait with backoff, never crash-loop at boot.
    let docker_ep = docker::endpoint(config.docker_host.as_deref());
    let docker = match docker::connect(config.docker_host.as_deref()) {
        Ok(d) => d,
        Err(e) => return Outcome::Terminal(e.to_string()),
    };
    systemd::status("waiting for Docker");
    board.set("docker", false, "waiting for Docker");
    let engine = match docker::wait_ready(&docker, &docker_ep, &cancel, |e| {
        systemd::status(&format!("waiting for Docker: {e}"));
    })
    .await
    {
        Ok(info) => info,
        Err(docker::Error::Cancelled) => return Outcome::Clean,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    board.set(
        "docker",
        true,
        format!("Docker {} (API {})", engine.version, engine.api_version),
    );

    // Identity and registration (spec §2 steps 4–7).
    let imds = ImdsClient::new(&config.imds_endpoint);
    systemd::status("reading the instance identity from IMDS");
    board.set("registration", false, "reading the instance identity");
    let identity = match register::read_identity(&imds, &cancel).await {
        Ok(id) => id,
        Err(register::Error::Cancelled) => return Outcome::Clean,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    let region = config
        .region
        .clone()
        .unwrap_or_else(|| identity.document.region.clone());
    let sdk = crate::aws::sdk_config(&region).await;
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
        docker_api_version: Some(engine.api_version.clone()),
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
        docker.version = %engine.version,
        "ecs-hostd started."
    );
    systemd::ready(&format!(
        "registered as {} in {}",
        registration.container_instance_arn, registration.cluster
    ));

    let (supervisor, mut terminal_rx) = Supervisor::new(cancel.clone());

    // The task engine (issue 3). ACS delivers tasks to `engine` through `tasks::TaskControl`
    // and shares `credentials`; until the reporter is wired, changes go to an in-memory sink.
    let credentials = Arc::new(crate::tasks::CredentialsStore::default());
    let sink: Arc<dyn crate::tasks::StateChangeSink> =
        Arc::new(crate::tasks::RecordingSink::default());
    let engine = match crate::engine::Engine::new(crate::engine::Parts {
        settings: crate::engine::Settings::from_config(
            &config,
            Some(region.clone()),
            host.cpus,
            host.mem_total_bytes / (1024 * 1024),
        ),
        store: store.clone(),
        sink,
        credentials,
        runtime: Arc::new(crate::engine::docker::DockerRuntime::new(
            docker.clone(),
            crate::engine::docker::Timeouts {
                create: config.engine.container_create_timeout,
                start: config.engine.container_start_timeout,
                ..Default::default()
            },
        )),
        ecr: Arc::new(crate::engine::pull::SdkEcr),
        hooks: crate::engine::Hooks::default(),
    }) {
        Ok(e) => e,
        Err(e) => return Outcome::Terminal(e.to_string()),
    };
    let engine_task = engine.clone();
    supervisor.spawn("engine", move |token| {
        let e = engine_task.clone();
        async move {
            e.run(token)
                .await
                .map_err(|err| Failure::transient(err.to_string()))
        }
    });

    let api_state = ApiState {
        cluster: config.cluster.clone(),
        registration: reg_rx,
        health: board.clone(),
        tasks: Arc::new(engine.view()),
        metrics: Vec::new(),
    };
    let api_addr = config.api_addr;
    supervisor.spawn("api", move |token| {
        let state = api_state.clone();
        async move {
            api::serve(api_addr, state, token)
                .await
                .map_err(|e| Failure::transient(format!("local API on {api_addr}: {e}")))
        }
    });
    spawn_systemd_watchdog(&supervisor, &board);

    let outcome = tokio::select! {
        _ = cancel.cancelled() => Outcome::Clean,
        Some(msg) = terminal_rx.recv() => Outcome::Terminal(msg),
    };
    systemd::stopping();
    info!("Stopping.");
    if !supervisor.shutdown(STOP_DEADLINE).await {
        warn!(deadline = ?STOP_DEADLINE, "Some subsystems did not stop in time.");
    }
    drop(reg_tx);
    if let Outcome::Terminal(msg) = &outcome {
        error!(reason = %msg, "Stopped on a terminal failure; systemd will not restart ecs-hostd until an operator acts.");
    }
    outcome
}

/// Sends `WATCHDOG=1` at half the interval systemd asked for, but only while every supervised
/// heartbeat is fresh: a wedged agent stops pinging and systemd restarts it.
fn spawn_systemd_watchdog(supervisor: &Supervisor, board: &health::Board) {
    let Some(interval) = systemd::watchdog_interval() else {
        return;
    };
    let sup = supervisor.clone();
    let board = board.clone();
    supervisor.spawn("systemd-watchdog", move |token| {
        let sup = sup.clone();
        let board = board.clone();
        async move {
            let mut tick = tokio::time::interval(interval / 2);
            loop {
                tokio::select! {
                    _ = token.cancelled() => return Ok(()),
                    _ = tick.tick() => {}
                }
                let stale = sup.stale();
                if stale.is_empty() {
                    systemd::watchdog_ping();
                    board.set("supervisor", true, "all subsystems alive");
                } else {
                    warn!(
                        ?stale,
                        "Subsystems stopped beating; withholding the systemd watchdog ping."
                    );
                    board.set("supervisor", false, format!("stale: {}", stale.join(", ")));
                }
            }
        }
    });
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
