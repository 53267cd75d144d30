//! The task engine: runs the tasks ACS delivers as Docker containers and reports their state
//! changes (protocol spec §6–9, §15).
//!
//! ```text
//! TaskControl (ACS) ─► Msg ─┐                        ┌─► ContainerRuntime (pull, create, start, stop, remove)
//! Docker events ─► wake ────┤                        │
//! host link events ─────────┼─► loop ─► reconcile() ─┤
//! action outcomes ──────────┘   (one writer)         └─► store txn { record, StateChangeSink::enqueue } ─► notify
//! ```
//!
//! One loop owns every task record: it applies deliveries and action outcomes, lists Docker when
//! woken (events, periodic resync, requeue deadlines), reconciles again when the task network
//! announces a host link change (so a waiting ENI is looked for at once), runs the pure [`reconcile::reconcile`] for
//! each task, persists changed records together with the state changes they owe in one store
//! transaction, and spawns the returned "ensure" actions, at most one per key. Credentials are
//! read from the in-memory [`CredentialsStore`] at pull time and never stored.
//!
//! Never touches a container it did not create: it acts only on the Docker names and ids its
//! records hold (names are persisted before create; a name conflict is adopted only when the
//! container carries this task's labels).

pub mod cleanup;
pub mod counting;
pub mod docker;
pub mod docker_json;
pub mod envfiles;
pub mod events;
pub mod features;
pub mod introspection;
pub mod model;
pub mod net;
pub mod pull;
pub mod reconcile;
pub mod resources;
pub mod runtime;
pub mod secrets;
pub mod store;
pub mod task_cgroup;
pub mod volumes;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{Config, EngineConfig, PullBehavior};
use crate::credentials::{CredentialsStore, RoleType};
use crate::engine::cleanup::{ImagePolicy, ImageRecord};
use crate::engine::docker::MapCtx;
use crate::engine::introspection::{EngineView, Snapshot};
use crate::engine::model::{ContainerKind, ContainerStatus, TaskRecord, TaskSpec, TaskStatus};
use crate::engine::net::awsvpc::{NetError, TaskNetwork};
use crate::engine::pull::{EcrTokens, Puller};
use crate::engine::reconcile::{Action, ActionKey, Ctx, Outcome, World};
use crate::engine::resources::Capacity;
use crate::engine::runtime::{
    ContainerRuntime, Observed, PullLimits, RuntimeError, State, Summary,
};
use crate::store::Store;
use crate::task_endpoint::MetadataIndex;
use crate::tasks::{DeliverError, StateChangeSink, TaskControl};

/// Periodic full resync with Docker, even without events.
pub const RESYNC: Duration = Duration::from_secs(20);
/// Retry interval while Docker does not answer.
const DOCKER_DOWN_RETRY: Duration = Duration::from_secs(2);
/// Extra listings after a Docker event (see `LoopState::schedule_rechecks`).
const EVENT_RECHECKS: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(300),
    Duration::from_millis(1000),
];
/// A failed cleanup is retried after this long.
const CLEANUP_RETRY_SECS: f64 = 30.0;
/// Image cleanup under disk pressure runs at once, then at most this often.
const PRESSURE_IMAGE_CLEANUP_EVERY: Duration = Duration::from_secs(10);

/// Engine errors (the loop's own; action failures become task state, not errors).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed: a broken disk or a second agent on the file.
    #[error("engine state store: {0}")]
    Store(#[from] crate::store::Error),
}

impl Error {
    /// A store failure may be transient (disk full cleared); the supervisor restarts the loop,
    /// which reloads from the store.
    pub fn is_retryable(&self) -> bool {
        true
    }
}

/// Engine settings, taken from the configuration and the host.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Configured cluster (used when a task has no `taskClusterArn`).
    pub cluster: String,
    /// Instance region.
    pub region: Option<String>,
    /// The official engine keys.
    pub engine: EngineConfig,
    /// `ECS_DISABLE_PRIVILEGED`.
    pub disable_privileged: bool,
    /// Registered resources.
    pub capacity: Capacity,
    /// Address published ports bind to (`None` = all addresses, as upstream). Tests use
    /// 127.0.0.1.
    pub bind_ip: Option<String>,
    /// Periodic resync.
    pub resync: Duration,
    /// Pull retry policy (tests shorten it).
    pub pull_retry: crate::backoff::Policy,
    /// What this host makes available (task roles once the NAT is in place).
    pub available: features::Available,
    /// Task cgroups for task-level CPU and memory limits: set at start when
    /// `ECS_ENABLE_TASK_CPU_MEM_LIMIT` and the host can have them; `None`: no task gets one.
    pub task_cgroups: Option<task_cgroup::TaskCgroups>,
    /// The kernel side of the awsvpc network mode: set at start when `ECS_ENABLE_TASK_ENI`
    /// and the host can have it; `None`: awsvpc tasks are refused (`features`).
    pub task_network: Option<Arc<dyn TaskNetwork>>,
    /// `ECS_AWSVPC_BLOCK_IMDS`: 169.254.169.254 unreachable from awsvpc tasks.
    pub block_imds: bool,
}

impl std::fmt::Debug for dyn TaskNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TaskNetwork")
    }
}

impl Settings {
    /// Settings for `config` on a host with `cpus` CPUs and `mem_mib` MiB.
    pub fn from_config(
        config: &Config,
        region: Option<String>,
        cpus: u64,
        mem_mib: u64,
    ) -> Settings {
        Settings {
            cluster: config.cluster.clone(),
            region,
            engine: config.engine.clone(),
            disable_privileged: config.disable_privileged,
            capacity: Capacity {
                cpu_units: cpus * 1024,
                memory_mib: mem_mib.saturating_sub(config.reserved_memory_mib),
                reserved_tcp: config.reserved_ports.iter().copied().collect(),
                reserved_udp: config.reserved_ports_udp.iter().copied().collect(),
            },
            bind_ip: None,
            resync: RESYNC,
            pull_retry: pull::PULL_RETRY,
            available: features::Available::default(),
            task_cgroups: None,
            task_network: None,
            block_imds: config.awsvpc.block_imds,
        }
    }
}

/// Test hooks: pause forever at a phase (after writing a marker file) so a test can kill -9 the
/// process there. Phases: `pull.before`, `pull.after`, `create.after`, `start.after`,
/// `stop.before`, `network.before`, `network.after`.
#[derive(Clone, Debug, Default)]
pub struct Hooks {
    /// Phase to pause at.
    pub pause_at: Option<String>,
    /// Directory the marker file `<phase>` is written to.
    pub marker_dir: Option<PathBuf>,
}

/// The agent binary's way to arm [`Hooks`] (debug builds only, like `ECS_HOSTD_TEST_WEDGE_AFTER`):
/// the phase to pause at, e.g. `network.after`.
pub const PAUSE_AT_ENV: &str = "ECS_HOSTD_TEST_PAUSE_AT";
/// Where the marker file of [`PAUSE_AT_ENV`] is written.
pub const MARKER_DIR_ENV: &str = "ECS_HOSTD_TEST_MARKER_DIR";

impl Hooks {
    /// The hooks [`PAUSE_AT_ENV`] and [`MARKER_DIR_ENV`] arm in a debug build; none in a
    /// release build, whatever the environment says.
    pub fn from_env() -> Hooks {
        if !cfg!(debug_assertions) {
            return Hooks::default();
        }
        Hooks {
            pause_at: std::env::var(PAUSE_AT_ENV).ok().filter(|p| !p.is_empty()),
            marker_dir: std::env::var_os(MARKER_DIR_ENV).map(PathBuf::from),
        }
    }

    async fn at(&self, phase: &str) {
        if self.pause_at.as_deref() != Some(phase) {
            return;
        }
        if let Some(dir) = &self.marker_dir {
            let _ = std::fs::write(dir.join(phase), b"paused");
        }
        warn!(phase, "Test hook: pausing here.");
        std::future::pending::<()>().await;
    }
}

/// What the engine is built from.
pub struct Parts {
    /// Settings.
    pub settings: Settings,
    /// Durable store.
    pub store: Store,
    /// Where state changes go.
    pub sink: Arc<dyn StateChangeSink>,
    /// Credentials (memory only).
    pub credentials: Arc<CredentialsStore>,
    /// Docker (or the fake).
    pub runtime: Arc<dyn ContainerRuntime>,
    /// ECR tokens.
    pub ecr: Arc<dyn EcrTokens>,
    /// SSM and Secrets Manager, for the tasks' `secrets` and `repositoryCredentials`.
    pub secrets: Arc<dyn secrets::SecretSource>,
    /// S3, for the tasks' `environmentFiles`.
    pub objects: Arc<dyn envfiles::ObjectSource>,
    /// Test hooks.
    pub hooks: Hooks,
}

/// What a task needs fetched with its execution role before its pulls and creates, by
/// container.
#[derive(Debug, Default)]
struct Wanted {
    secrets: BTreeMap<String, Vec<secrets::SecretSpec>>,
    files: BTreeMap<String, Vec<envfiles::EnvironmentFile>>,
    registry: BTreeMap<String, secrets::AsmAuthData>,
}

impl Wanted {
    fn of(rec: &TaskRecord) -> Wanted {
        let mut w = Wanted::default();
        for c in &rec.spec.containers {
            if !c.secrets.is_empty() {
                w.secrets.insert(c.name.clone(), c.secrets.clone());
            }
            if !c.environment_files.is_empty() {
                w.files.insert(c.name.clone(), c.environment_files.clone());
            }
            if let Some(a) = c.asm_registry() {
                w.registry.insert(c.name.clone(), a.clone());
            }
        }
        w
    }

    /// All of it at once; the first failure (secrets, then registry logins, then files) is the
    /// task's stop reason.
    async fn fetch(
        self,
        source: &dyn secrets::SecretSource,
        objects: &dyn envfiles::ObjectSource,
        creds: Option<&crate::credentials::RoleCredentials>,
        region: &str,
    ) -> Result<secrets::Resolved, String> {
        let (values, logins, files) = tokio::join!(
            secrets::resolve(source, creds, &self.secrets, region),
            secrets::registry_logins(source, creds, &self.registry, region),
            envfiles::fetch(objects, creds, &self.files, region),
        );
        let mut resolved = values?;
        for (name, login) in logins? {
            resolved.containers.entry(name).or_default().registry = Some(login);
        }
        for (name, vars) in files? {
            resolved.containers.entry(name).or_default().file_env = vars;
        }
        Ok(resolved)
    }
}

enum Msg {
    /// A task, with the feature it asks for that the engine does not implement, if any.
    Deliver(
        Box<TaskSpec>,
        Option<features::Unsupported>,
        oneshot::Sender<Result<(), Rejection>>,
    ),
    Stop(String, oneshot::Sender<Result<(), String>>),
    Attach(
        crate::tasks::EniAttachment,
        oneshot::Sender<Result<(), String>>,
    ),
}

/// Why the loop did not take a delivered task.
enum Rejection {
    /// The task cannot be recorded (reported STOPPED by the caller).
    Invalid(String),
    /// The store failed (the payload is not acknowledged; ACS delivers it again).
    Store(String),
}

enum Done {
    Action(ActionKey, Box<Outcome>),
    Images(Vec<String>),
    /// A task's secrets, fetched or not (the values never enter an [`Outcome`]).
    Secrets(
        ActionKey,
        String,
        Result<secrets::Resolved, String>,
        std::time::Duration,
    ),
}

struct Shared {
    parts: Parts,
    puller: Arc<Puller>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Msg>>,
    wake: Arc<Notify>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    /// Seconds added to the wall clock (tests move time forward without sleeping).
    skew: std::sync::Mutex<f64>,
}

/// The engine handle: cheap to clone; implements [`TaskControl`] and gives the [`EngineView`].
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

/// How often a responsive engine loop beats its heartbeat.
pub const BEAT: Duration = Duration::from_secs(15);
/// Silence after which the engine loop counts as wedged: longer than its longest single wait
/// on Docker (a container listing may take 10 min before it times out) plus inspections.
pub const MAX_SILENCE: Duration = Duration::from_secs(15 * 60);

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Engine {
    /// Builds the engine; nothing runs until [`Engine::run`].
    pub fn new(mut parts: Parts) -> Result<Engine, pull::PullError> {
        // awsvpc tasks run only with a task network to put them in.
        parts.settings.available.awsvpc = parts.settings.task_network.is_some();
        let e = &parts.settings.engine;
        let engine_auth =
            pull::parse_engine_auth(e.engine_auth_type.as_deref(), e.engine_auth_data.as_deref())?;
        let puller = Arc::new(Puller {
            runtime: parts.runtime.clone(),
            behavior: e.image_pull_behavior,
            limits: PullLimits {
                inactivity: e.image_pull_inactivity_timeout,
                first_progress: pull::FIRST_PROGRESS.min(e.image_pull_timeout),
                total: e.image_pull_timeout,
            },
            engine_auth,
            credentials: parts.credentials.clone(),
            ecr: parts.ecr.clone(),
            region: parts.settings.region.clone(),
            retry: parts.settings.pull_retry,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let (snapshot, _) = watch::channel(Arc::new(Snapshot::default()));
        Ok(Engine {
            shared: Arc::new(Shared {
                parts,
                puller,
                tx,
                rx: tokio::sync::Mutex::new(rx),
                wake: Arc::new(Notify::new()),
                snapshot,
                skew: std::sync::Mutex::new(0.0),
            }),
        })
    }

    /// Moves the engine's clock forward (tests: retry and cleanup timers without sleeping).
    pub fn advance_clock(&self, secs: f64) {
        *self.shared.skew.lock().unwrap_or_else(|e| e.into_inner()) += secs;
    }

    /// The introspection view.
    pub fn view(&self) -> EngineView {
        EngineView::new(self.shared.snapshot.subscribe())
    }

    /// Runs the loop until cancelled. Reloads everything from the store first, so a restart
    /// (of the loop or of the process) resumes where the last commit left off.
    pub async fn run(&self, cancel: CancellationToken) -> Result<(), Error> {
        self.run_beating(cancel, None).await
    }

    /// [`Engine::run`], beating `heartbeat` at least every [`BEAT`] while the loop is
    /// responsive (the supervisor then withholds systemd's watchdog ping when it wedges).
    pub async fn run_beating(
        &self,
        cancel: CancellationToken,
        heartbeat: Option<crate::supervisor::Heartbeat>,
    ) -> Result<(), Error> {
        let mut rx = self.shared.rx.lock().await;
        let mut beat = crate::clock::Ticker::new(BEAT);
        let mut state = LoopState::load(self.shared.clone())?;
        let mut aux = JoinSet::new();
        aux.spawn(events::watch(
            self.shared.parts.runtime.clone(),
            self.shared.wake.clone(),
            cancel.clone(),
        ));
        // Host link events wake the loop so a waiting ENI is looked for at once.
        let mut links = self
            .shared
            .parts
            .settings
            .task_network
            .as_ref()
            .and_then(|n| n.link_events());
        state.link_events = links.as_mut().map(|rx| *rx.borrow_and_update());
        info!(
            tasks = state.tasks.len(),
            link_events = links.is_some(),
            "Task engine started."
        );
        state.request_listing();
        state.tick()?;
        loop {
            let deadline = state.next_deadline();
            tokio::select! {
                _ = cancel.cancelled() => break,
                msg = rx.recv() => {
                    let Some(msg) = msg else { break };
                    state.handle(msg)?;
                    while let Ok(m) = rx.try_recv() {
                        state.handle(m)?;
                    }
                }
                Some(done) = state.actions.join_next() => {
                    state.finish(done)?;
                    while let Some(d) = state.actions.try_join_next() {
                        state.finish(d)?;
                    }
                }
                Some(listing) = state.lister.join_next() => {
                    match listing {
                        Ok(l) => state.apply_listing(l),
                        Err(e) => {
                            error!(error = %e, "Docker listing panicked or was cancelled.");
                            state.list_again = true;
                        }
                    }
                    if state.list_again {
                        state.request_listing();
                    }
                }
                _ = self.shared.wake.notified() => {
                    state.request_listing();
                    state.schedule_rechecks();
                }
                changed = link_changed(&mut links) => {
                    match changed {
                        Some(counter) => state.link_events = Some(counter),
                        None => {
                            warn!("Host link events ended; looking for ENIs by polling.");
                            links = None;
                            state.link_events = None;
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if state.resync_due() || state.recheck_due() {
                        state.request_listing();
                    }
                }
                _ = beat.tick() => {
                    if let Some(h) = &heartbeat {
                        h.beat();
                    }
                    continue;
                }
            }
            if state.tick()? {
                // Something changed (a task stopped, so another may now fit; a dependency was
                // met): look again at once rather than at the next event.
                state.requeue_at = Some(0.0);
            }
        }
        state.lister.abort_all();
        state.actions.abort_all();
        aux.abort_all();
        Ok(())
    }

    /// Runs one pass without the loop (for tests): applies queued messages, lists Docker,
    /// reconciles and starts actions, then waits for them and folds their outcomes in, until
    /// nothing is left to do or `max_rounds` passes ran.
    pub async fn settle(&self, max_rounds: usize) -> Result<(), Error> {
        let mut rx = self.shared.rx.lock().await;
        let mut state = LoopState::load(self.shared.clone())?;
        for _ in 0..max_rounds {
            while let Ok(m) = rx.try_recv() {
                state.handle(m)?;
            }
            state.observe().await;
            let progress = state.tick()?;
            if state.actions.is_empty() && !progress {
                break;
            }
            while let Some(done) = state.actions.join_next().await {
                state.finish(done)?;
            }
        }
        Ok(())
    }
}

/// The link-event counter's next value; `None` when its sender is gone. Never resolves without
/// a receiver.
async fn link_changed(links: &mut Option<watch::Receiver<u64>>) -> Option<u64> {
    match links {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(*rx.borrow_and_update()),
            Err(_) => None,
        },
        None => std::future::pending().await,
    }
}

#[async_trait]
impl TaskControl for Engine {
    async fn deliver(&self, mut task: serde_json::Value) -> Result<(), DeliverError> {
        model::strip_credentials(&mut task);
        let spec = TaskSpec::from_json(&task).map_err(|e| DeliverError::Refused(e.to_string()))?;
        let unsupported = features::unsupported(&task, &self.shared.parts.settings.available);
        let (tx, rx) = oneshot::channel();
        self.shared
            .tx
            .send(Msg::Deliver(Box::new(spec), unsupported, tx))
            .map_err(|_| DeliverError::Unavailable("task engine is not running".to_owned()))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(Rejection::Invalid(why))) => Err(DeliverError::Refused(why)),
            Ok(Err(Rejection::Store(why))) => Err(DeliverError::Unavailable(why)),
            Err(_) => Err(DeliverError::Unavailable(
                "task engine stopped before accepting the task".to_owned(),
            )),
        }
    }

    fn desired_running(&self) -> Vec<String> {
        self.shared.snapshot.borrow().desired_running.clone()
    }

    fn knows(&self, task_arn: &str) -> bool {
        self.shared
            .snapshot
            .borrow()
            .census
            .iter()
            .any(|t| t.arn == task_arn)
    }

    async fn stop(&self, task_arn: &str) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .tx
            .send(Msg::Stop(task_arn.to_owned(), tx))
            .map_err(|_| "task engine is not running".to_owned())?;
        rx.await
            .map_err(|_| "task engine stopped before accepting the stop".to_owned())?
    }

    async fn attach_eni(
        &self,
        attachment: crate::tasks::EniAttachment,
    ) -> Result<(), DeliverError> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .tx
            .send(Msg::Attach(attachment, tx))
            .map_err(|_| DeliverError::Unavailable("task engine is not running".to_owned()))?;
        match rx.await {
            Ok(r) => r.map_err(DeliverError::Unavailable),
            Err(_) => Err(DeliverError::Unavailable(
                "task engine stopped before recording the attachment".to_owned(),
            )),
        }
    }
}

/// Inspections cached by container id, valid while Docker's listing shows the same state and
/// health (so a `health_status` event costs one inspection of that container, and a health that
/// holds costs none).
type InspectCache = HashMap<String, (State, model::HealthStatus, Observed)>;

/// One finished listing of Docker.
struct Listing {
    /// Engine epoch when the listing started.
    epoch: u64,
    /// The inspection cache, handed back (entries of containers gone are dropped).
    cache: InspectCache,
    /// Our containers by Docker name, or why Docker could not be listed.
    result: Result<HashMap<String, Observed>, String>,
    /// Docker's data root, when asked for.
    data_root: Option<Result<Option<PathBuf>, String>>,
}

/// Lists the containers of our records (`ours`, by Docker name: containers of other agents or
/// tools that carry the ECS labels are never inspected) and inspects the ones whose state
/// changed since the cached inspection, except those in `busy` (Docker names with a create,
/// start or stop in flight): that action's own outcome tells their state, and an inspection
/// would only queue behind it in Docker (during a burst of starts, listings used to add one
/// inspection in flight at all times). They are left out of the observation; the reconciler
/// never judges a busy container vanished.
async fn list_docker(
    runtime: Arc<dyn ContainerRuntime>,
    mut cache: InspectCache,
    ours: HashSet<String>,
    busy: HashSet<String>,
    epoch: u64,
    want_root: bool,
) -> Listing {
    let failed = |cache, why: String| Listing {
        epoch,
        cache,
        result: Err(why),
        data_root: None,
    };
    let summaries: Vec<Summary> = match runtime.list().await {
        Ok(s) => s,
        Err(e) => return failed(cache, e.to_string()),
    };
    let mut observed = HashMap::new();
    let mut seen = HashSet::new();
    for s in summaries.into_iter().filter(|s| ours.contains(&s.name)) {
        seen.insert(s.id.clone());
        let cached = cache
            .get(&s.id)
            .filter(|(st, h, _)| *st == s.state && *h == s.health)
            .map(|(_, _, o)| o.clone());
        let o = match cached {
            Some(o) => o,
            None if busy.contains(&s.name) => continue,
            None => match runtime.inspect(&s.id).await {
                Ok(Some(o)) => {
                    cache.insert(s.id.clone(), (s.state, s.health, o.clone()));
                    o
                }
                Ok(None) => continue,
                Err(e) => return failed(cache, format!("cannot inspect container {}: {e}", s.id)),
            },
        };
        observed.insert(s.name.clone(), o);
    }
    cache.retain(|id, _| seen.contains(id));
    let data_root = if want_root {
        Some(runtime.data_root().await.map_err(|e| e.to_string()))
    } else {
        None
    };
    Listing {
        epoch,
        cache,
        result: Ok(observed),
        data_root,
    }
}

/// The loop's state: the single writer of task records.
struct LoopState {
    shared: Arc<Shared>,
    tasks: BTreeMap<String, TaskRecord>,
    tombstones: HashMap<String, f64>,
    images: BTreeMap<String, ImageRecord>,
    images_dirty: BTreeSet<String>,
    images_removed: Vec<String>,
    next_seq: u64,
    dirty: BTreeSet<String>,
    observed: HashMap<String, Observed>,
    inspect_cache: InspectCache,
    listed: bool,
    listed_epoch: u64,
    epoch: u64,
    in_flight: HashSet<ActionKey>,
    actions: JoinSet<Done>,
    /// The listing running beside the loop (at most one).
    lister: JoinSet<Listing>,
    /// A listing was asked for while one ran.
    list_again: bool,
    requeue_at: Option<f64>,
    last_list: tokio::time::Instant,
    docker_down: bool,
    data_root: Option<PathBuf>,
    disk_pressure: bool,
    image_cleanup_running: bool,
    last_image_cleanup: tokio::time::Instant,
    last_pressure_cleanup: Option<tokio::time::Instant>,
    recheck_at: Option<tokio::time::Instant>,
    rechecks: usize,
    cleanup_not_before: HashMap<String, f64>,
    waits: HashMap<String, String>,
    published: bool,
    /// Per task, what the metadata endpoint shows that never changes (see `metadata_index`).
    static_facts: HashMap<String, Vec<introspection::StaticFacts>>,
    /// Per task, its fetched secrets (memory only, until the task stops) or why they could not
    /// be fetched.
    secrets: HashMap<String, Result<Arc<secrets::Resolved>, String>>,
    /// ENI attachments from ACS by attachment ARN (persisted; removed with their task).
    attachments: HashMap<String, store::AttachmentRecord>,
    /// The host link-event counter while the task network offers events (`None`: it does not,
    /// or they stopped; waiting ENIs are then polled for).
    link_events: Option<u64>,
}

impl LoopState {
    fn load(shared: Arc<Shared>) -> Result<LoopState, Error> {
        let loaded = store::load(&shared.parts.store)?;
        let now = tokio::time::Instant::now();
        let mut dirty = BTreeSet::new();
        let mut tasks: BTreeMap<String, TaskRecord> = BTreeMap::new();
        for mut t in loaded.tasks {
            // Records written before endpoint ids existed get one now (kept from here on).
            for c in &mut t.containers {
                if c.endpoint_id.is_empty() {
                    c.endpoint_id = uuid::Uuid::new_v4().to_string();
                    dirty.insert(t.spec.arn.clone());
                }
            }
            // Records written before the task cgroup joined the task's resources (it was made
            // at each create then): a container still to create gets it from that step.
            if shared.parts.settings.task_cgroups.is_some()
                && !t.resources.cgroup
                && t.known < TaskStatus::Stopped
                && t.desired != TaskStatus::Stopped
            {
                t.resources.cgroup = true;
                t.resources.ready = false;
                dirty.insert(t.spec.arn.clone());
            }
            register_pending_credentials(&shared.parts.credentials, &t);
            tasks.insert(t.spec.arn.clone(), t);
        }
        Ok(LoopState {
            tasks,
            tombstones: loaded.tombstones.into_iter().collect(),
            images: loaded
                .images
                .into_iter()
                .map(|i| (i.image.clone(), i))
                .collect(),
            images_dirty: BTreeSet::new(),
            images_removed: Vec::new(),
            next_seq: loaded.next_seq,
            dirty,
            observed: HashMap::new(),
            inspect_cache: HashMap::new(),
            listed: false,
            listed_epoch: 0,
            epoch: 1,
            in_flight: HashSet::new(),
            actions: JoinSet::new(),
            lister: JoinSet::new(),
            list_again: false,
            requeue_at: None,
            last_list: now,
            docker_down: false,
            data_root: None,
            disk_pressure: false,
            image_cleanup_running: false,
            last_image_cleanup: now,
            last_pressure_cleanup: None,
            recheck_at: None,
            rechecks: 0,
            cleanup_not_before: HashMap::new(),
            waits: HashMap::new(),
            published: false,
            static_facts: HashMap::new(),
            secrets: HashMap::new(),
            attachments: loaded
                .attachments
                .into_iter()
                .map(|a| (a.attachment.attachment_arn.clone(), a))
                .collect(),
            link_events: None,
            shared,
        })
    }

    fn settings(&self) -> &Settings {
        &self.shared.parts.settings
    }

    fn now(&self) -> f64 {
        now_secs() + *self.shared.skew.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Docker can announce an event before its container listing shows the change (the
    /// listing is a replica updated a moment later): after an event, list again shortly.
    fn schedule_rechecks(&mut self) {
        self.rechecks = EVENT_RECHECKS.len();
        self.recheck_at = Some(tokio::time::Instant::now() + EVENT_RECHECKS[0]);
    }

    fn recheck_due(&mut self) -> bool {
        match self.recheck_at {
            Some(at) if tokio::time::Instant::now() >= at => {
                self.rechecks = self.rechecks.saturating_sub(1);
                let next = EVENT_RECHECKS.len() - self.rechecks;
                self.recheck_at = EVENT_RECHECKS
                    .get(next)
                    .filter(|_| self.rechecks > 0)
                    .map(|d| tokio::time::Instant::now() + *d);
                true
            }
            _ => false,
        }
    }

    fn resync_due(&self) -> bool {
        let every = if self.docker_down {
            DOCKER_DOWN_RETRY
        } else {
            self.settings().resync
        };
        self.last_list.elapsed() >= every
    }

    fn next_deadline(&self) -> tokio::time::Instant {
        let every = if self.docker_down {
            DOCKER_DOWN_RETRY
        } else {
            self.settings().resync
        };
        // The periodic re-list goes to the shared grid (`crate::clock`); rechecks of a task stay
        // exact.
        let mut at = crate::clock::at_or_after(self.last_list + every, every);
        if let Some(r) = self.recheck_at {
            at = at.min(r);
        }
        if let Some(t) = self.requeue_at {
            let wait = Duration::from_secs_f64((t - self.now()).clamp(0.0, 86_400.0));
            at = at.min(tokio::time::Instant::now() + wait);
        }
        at
    }

    fn handle(&mut self, msg: Msg) -> Result<(), Error> {
        match msg {
            Msg::Deliver(spec, unsupported, reply) => {
                let r = match self.deliver(*spec, unsupported) {
                    Ok(accepted) => accepted.map_err(Rejection::Invalid),
                    Err(e) => Err(Rejection::Store(e.to_string())),
                };
                let _ = reply.send(r);
            }
            Msg::Stop(arn, reply) => {
                let r = match self.tasks.get_mut(&arn) {
                    Some(t) => {
                        if t.desired < TaskStatus::Stopped {
                            info!(task.arn = %arn, "Task desired STOPPED.");
                            t.desired = TaskStatus::Stopped;
                            self.dirty.insert(arn.clone());
                            self.persist_dirty()?;
                            self.list_if_unsure(&arn);
                        }
                        Ok(())
                    }
                    None if self.tombstones.contains_key(&arn) => Ok(()),
                    None => Err(format!("unknown task {arn}")),
                };
                let _ = reply.send(r);
            }
            Msg::Attach(a, reply) => {
                let r = self.attach(a).map_err(|e| e.to_string());
                let _ = reply.send(r);
            }
        }
        Ok(())
    }

    /// Records an ENI attachment (before ACS gets its ack) and gives a task that already has
    /// this ENI the attachment's expiry. A duplicate changes nothing.
    fn attach(&mut self, a: crate::tasks::EniAttachment) -> Result<(), Error> {
        if self.attachments.contains_key(&a.attachment_arn) {
            debug!(attachment.arn = %a.attachment_arn, "ENI attachment already recorded.");
            return Ok(());
        }
        if self.tombstones.contains_key(&a.task_arn) {
            debug!(task.arn = %a.task_arn, "ENI attachment for a task already cleaned up; ignoring it.");
            return Ok(());
        }
        let now = self.now();
        let wait = a
            .wait_timeout_ms
            .map_or(model::eni::DEFAULT_ENI_WAIT_SECS, |ms| ms as f64 / 1000.0);
        let rec = store::AttachmentRecord {
            attachment: a,
            received_at: now,
            expires_at: now + wait,
        };
        let arn = rec.attachment.attachment_arn.clone();
        let mut joined = None;
        if let Some(t) = self.tasks.get_mut(&rec.attachment.task_arn)
            && let Some(n) = t.network.as_mut()
            && n.eni.attachment_arn == arn
            && n.found.is_none()
        {
            n.wait_from(now, wait);
            joined = Some(t.clone());
        }
        self.shared.parts.store.transaction(|tx| {
            store::put_attachment(tx, &rec)?;
            if let Some(t) = &joined {
                store::put_task(tx, t)?;
            }
            Ok(())
        })?;
        info!(attachment.arn = %arn, task.arn = %rec.attachment.task_arn, mac = %rec.attachment.mac, wait_s = wait, "ENI attachment recorded.");
        self.attachments.insert(arn, rec);
        self.published = false;
        Ok(())
    }

    /// Takes a delivered task in. The inner error is a task the engine cannot even record: the
    /// caller reports it STOPPED and does not acknowledge the payload (task-credentials.md
    /// §2.2). A task asking for an unsupported feature is recorded and stopped at once, with a
    /// reason naming the feature.
    fn deliver(
        &mut self,
        spec: TaskSpec,
        unsupported: Option<features::Unsupported>,
    ) -> Result<Result<(), String>, Error> {
        let arn = spec.arn.clone();
        if self.tombstones.contains_key(&arn) {
            debug!(task.arn = %arn, "Task was already cleaned up; ignoring the delivery.");
            return Ok(Ok(()));
        }
        let desired = match spec.desired() {
            Ok(TaskStatus::Stopped) => TaskStatus::Stopped,
            _ => TaskStatus::Running,
        };
        if let Some(t) = self.tasks.get_mut(&arn) {
            // Desired status only moves forward; the rest of a re-delivered task is ignored.
            if desired > t.desired {
                info!(task.arn = %arn, "Task desired STOPPED.");
                t.desired = desired;
                self.dirty.insert(arn.clone());
                self.persist_dirty()?;
                self.list_if_unsure(&arn);
            }
            return Ok(Ok(()));
        }
        let jitter = crate::backoff::jitter(self.settings().engine.task_cleanup_wait_jitter);
        let images = model::InternalImages {
            namespace_pause: self.settings().engine.pause_image.clone(),
        };
        let build = if unsupported.is_some() {
            TaskRecord::refused
        } else {
            TaskRecord::with_images
        };
        let mut rec = match build(spec, self.next_seq, jitter.as_secs_f64(), &images) {
            Ok(r) => r,
            Err(e) => {
                warn!(task.arn = %arn, error = %e, "Task refused.");
                return Ok(Err(e.to_string()));
            }
        };
        if let Some(n) = rec.network.as_mut() {
            // The attachment's expiry when ACS announced it already; else a default, replaced
            // by the attachment's when it comes.
            match self.attachments.get(&n.eni.attachment_arn) {
                Some(a) => n.wait_from(a.received_at, a.expires_at - a.received_at),
                None => n.wait_from(self.now(), model::eni::DEFAULT_ENI_WAIT_SECS),
            }
        }
        if let Some(why) = unsupported {
            warn!(task.arn = %arn, feature = why.feature, field = %why.field,
                "Task asks for a feature this agent does not implement; stopping it.");
            rec.refuse(&why.to_string());
        } else if let Some(cgroups) = &self.settings().task_cgroups {
            match cgroups.limits(&rec.spec) {
                // Made once, with the task's other resources, before its first create.
                Ok(_) => rec.resources.cgroup = true,
                Err(e) => {
                    warn!(task.arn = %arn, error = %e, "Task cannot run within its task-level limits; stopping it.");
                    rec.refuse(&e.to_string());
                }
            }
        } else if task_cgroup::asks_for_limits(&rec.spec) {
            warn!(task.arn = %arn, cpu = ?rec.spec.cpu, memory_mib = ?rec.spec.memory,
                "Ignoring the task-level CPU and memory limits: task cgroups are off (ECS_ENABLE_TASK_CPU_MEM_LIMIT=false, or this host cannot have them).");
        }
        info!(
            task.arn = %arn,
            family = %rec.spec.family,
            version = %rec.spec.version,
            desired = rec.desired.as_str(),
            containers = rec.containers.len(),
            "Task accepted."
        );
        self.next_seq += 1;
        let next = self.next_seq;
        self.shared.parts.store.transaction(|tx| {
            store::put_task(tx, &rec)?;
            store::put_seq(tx, next)
        })?;
        self.tasks.insert(arn, rec);
        self.published = false;
        Ok(Ok(()))
    }

    /// After a desired STOPPED: what our own start said runs is stopped at once from the
    /// record (the reconciler); a container created but not known to run is settled by a fresh
    /// listing, asked for now rather than at the next resync (issue 24 item 3). A task whose
    /// containers all run needs no listing (a 50-task stop burst made 50 more).
    fn list_if_unsure(&mut self, arn: &str) {
        let unsure = self.tasks.get(arn).is_some_and(|t| {
            t.containers.iter().any(|c| {
                c.docker_id.is_some()
                    && c.known < ContainerStatus::Running
                    && !self.observed.contains_key(&c.docker_name)
            })
        });
        if unsure {
            self.request_listing();
        }
    }

    /// Persists dirty records (without emitting); used for desired-status changes.
    fn persist_dirty(&mut self) -> Result<(), Error> {
        let dirty: Vec<String> = std::mem::take(&mut self.dirty).into_iter().collect();
        let recs: Vec<&TaskRecord> = dirty.iter().filter_map(|a| self.tasks.get(a)).collect();
        self.shared.parts.store.transaction(|tx| {
            for r in &recs {
                store::put_task(tx, r)?;
            }
            Ok(())
        })?;
        self.published = false;
        Ok(())
    }

    fn finish(&mut self, done: Result<Done, tokio::task::JoinError>) -> Result<(), Error> {
        let done = match done {
            Ok(d) => d,
            Err(e) => {
                // A panicking action is a bug; its key stays in flight no longer.
                error!(error = %e, "Engine action panicked or was cancelled.");
                self.in_flight.clear();
                return Ok(());
            }
        };
        let now = self.now();
        match done {
            Done::Images(removed) => {
                self.image_cleanup_running = false;
                for image in removed {
                    self.images.remove(&image);
                    self.images_removed.push(image);
                }
            }
            Done::Secrets(key, task_arn, result, took) => {
                self.in_flight.remove(&key);
                self.epoch += 1;
                let took_ms = took.as_millis() as u64;
                match &result {
                    Ok(r) => {
                        info!(task.arn = %task_arn, containers = r.containers.len(), took_ms, "Task secrets fetched.")
                    }
                    Err(why) => {
                        warn!(task.arn = %task_arn, reason = %why, took_ms, "Task secrets could not be fetched; stopping the task.")
                    }
                }
                if self.tasks.contains_key(&task_arn) {
                    self.secrets.insert(task_arn, result.map(Arc::new));
                }
            }
            Done::Action(key, outcome) => {
                let outcome = *outcome;
                self.in_flight.remove(&key);
                self.epoch += 1;
                match &outcome {
                    Outcome::Removed { task_arn, result } => match result {
                        Ok(()) => {
                            if let Some(rec) = self.tasks.remove(task_arn) {
                                let gone: Vec<String> = self
                                    .attachments
                                    .values()
                                    .filter(|a| a.attachment.task_arn == *task_arn)
                                    .map(|a| a.attachment.attachment_arn.clone())
                                    .collect();
                                self.shared.parts.store.transaction(|tx| {
                                    for a in &gone {
                                        store::remove_attachment(tx, a)?;
                                    }
                                    store::remove_task(tx, task_arn, now)
                                })?;
                                for a in &gone {
                                    self.attachments.remove(a);
                                }
                                self.tombstones.insert(task_arn.clone(), now);
                                for role in [RoleType::TaskApplication, RoleType::TaskExecution] {
                                    self.shared.parts.credentials.remove(task_arn, role);
                                }
                                info!(task.arn = %task_arn, containers = rec.containers.len(), "Task cleaned up.");
                                self.published = false;
                            }
                        }
                        Err(e) => {
                            warn!(task.arn = %task_arn, error = %e, "Task cleanup failed; will retry.");
                            self.cleanup_not_before
                                .insert(task_arn.clone(), now + CLEANUP_RETRY_SECS);
                        }
                    },
                    Outcome::Started {
                        result: Ok(Some(o)),
                        ..
                    }
                    | Outcome::Stopped {
                        result: Ok(Some(o)),
                        ..
                    } => {
                        // The action's own inspection: the next listing need not repeat it.
                        if let Some(state) = o.state {
                            self.inspect_cache
                                .insert(o.id.clone(), (state, o.health, o.clone()));
                        }
                    }
                    // Internal images are the operator's (never pulled, never cleaned up).
                    Outcome::Pulled {
                        image,
                        result: Ok(id),
                    } if *image != self.settings().engine.pause_image => {
                        let r = self.images.entry(image.clone()).or_insert(ImageRecord {
                            image: image.clone(),
                            image_id: None,
                            pulled_at: now,
                            last_used_at: now,
                        });
                        r.pulled_at = now;
                        r.last_used_at = now;
                        if id.is_some() {
                            r.image_id = id.clone();
                        }
                        self.images_dirty.insert(image.clone());
                    }
                    _ => {}
                }
                let epoch = self.epoch;
                for (arn, rec) in &mut self.tasks {
                    if reconcile::apply(rec, &outcome, now, epoch) {
                        self.dirty.insert(arn.clone());
                    }
                }
            }
        }
        Ok(())
    }

    /// Lists Docker now, on the loop (for [`Engine::settle`]; the loop itself lists off-loop
    /// through [`LoopState::request_listing`]).
    async fn observe(&mut self) {
        let listing = self.listing_job().await;
        self.apply_listing(listing);
    }

    /// Asks for a listing of Docker. It runs beside the loop (an inspection can wait seconds
    /// while Docker starts that very container, and deliveries and action outcomes must not
    /// wait behind it); a request while one runs is folded into one more listing after it.
    fn request_listing(&mut self) {
        if !self.lister.is_empty() {
            self.list_again = true;
            return;
        }
        self.list_again = false;
        let job = self.listing_job();
        self.lister.spawn(job);
    }

    /// The listing as a future that owns what it needs; the loop's state is untouched until
    /// [`LoopState::apply_listing`] folds the answer in.
    fn listing_job(&mut self) -> impl std::future::Future<Output = Listing> + Send + 'static {
        self.last_list = tokio::time::Instant::now();
        let runtime = self.shared.parts.runtime.clone();
        let cache = std::mem::take(&mut self.inspect_cache);
        let busy = self
            .in_flight
            .iter()
            .filter_map(|key| match key {
                ActionKey::Container(arn, name) => self
                    .tasks
                    .get(arn)?
                    .container(name)
                    .map(|c| c.docker_name.clone()),
                _ => None,
            })
            .collect();
        let ours = self
            .tasks
            .values()
            .flat_map(|t| t.containers.iter().map(|c| c.docker_name.clone()))
            .collect();
        let epoch = self.epoch;
        let want_root = self.data_root.is_none() || self.docker_down;
        list_docker(runtime, cache, ours, busy, epoch, want_root)
    }

    /// Folds a finished listing in. Its epoch says which action outcomes it may predate: the
    /// reconciler judges a container vanished only from a listing that started after the
    /// container's id was recorded.
    fn apply_listing(&mut self, listing: Listing) {
        // Inspections that action outcomes brought in while the listing ran are newer.
        let outcomes = std::mem::replace(&mut self.inspect_cache, listing.cache);
        self.inspect_cache.extend(outcomes);
        let observed = match listing.result {
            Ok(o) => o,
            Err(e) => {
                if !self.docker_down {
                    warn!(error = %e, "Cannot list containers; waiting for Docker.");
                }
                self.docker_down = true;
                self.listed = false;
                return;
            }
        };
        if self.docker_down {
            info!("Docker answers again; resynchronising.");
        }
        // Learn the data root from Docker itself once it answers (the engine may have started
        // while it was down), and again after every outage: a restarted dockerd may use another.
        match listing.data_root {
            Some(Ok(root)) if root != self.data_root => {
                info!(data_root = ?root, "Docker data root.");
                self.data_root = root;
                self.published = false;
            }
            Some(Err(e)) => debug!(error = %e, "Cannot read Docker's data root yet."),
            _ => {}
        }
        self.docker_down = false;
        self.observed = observed;
        self.listed = true;
        self.listed_epoch = listing.epoch;
        self.check_disk();
    }

    fn check_disk(&mut self) {
        let threshold = self.settings().engine.disk_cleanup_threshold_percent;
        let Some(root) = &self.data_root else { return };
        if threshold >= 100.0 {
            return;
        }
        match cleanup::disk_used_percent(root) {
            Ok(p) => {
                let pressure = p > threshold;
                if pressure && !self.disk_pressure {
                    warn!(disk.used_percent = p, threshold, path = %root.display(), "Docker disk past the cleanup threshold; cleaning up early.");
                }
                self.disk_pressure = pressure;
            }
            Err(e) => debug!(error = %e, "Cannot read Docker disk usage."),
        }
    }

    fn ctx(&self, now: f64, arn: &str, stopped: bool) -> Ctx {
        let e = &self.settings().engine;
        Ctx {
            now,
            stop_timeout: e.container_stop_timeout,
            disable_privileged: self.settings().disable_privileged,
            pull_upfront: e.pull_dependent_containers_upfront,
            cleanup_wait: e.task_cleanup_wait,
            disk_pressure: self.disk_pressure,
            stopped_reported: stopped && self.shared.parts.sink.stopped_reported(arn),
            secrets: self.secrets_gate(arn),
            link_events: self.link_events,
        }
    }

    /// What was fetched with task `arn`'s execution role for its container `container`.
    fn resolved(&self, arn: &str, container: &str) -> Option<&secrets::ContainerSecrets> {
        match self.secrets.get(arn) {
            Some(Ok(r)) => r.containers.get(container),
            _ => None,
        }
    }

    /// Whether task `arn`'s containers may be created as far as its secrets go.
    fn secrets_gate(&self, arn: &str) -> reconcile::SecretsGate {
        let wants = self.tasks.get(arn).is_some_and(|t| {
            t.spec
                .containers
                .iter()
                .any(model::ContainerSpec::needs_resolution)
        });
        match self.secrets.get(arn) {
            _ if !wants => reconcile::SecretsGate::Ready,
            Some(Ok(_)) => reconcile::SecretsGate::Ready,
            Some(Err(why)) => reconcile::SecretsGate::Failed(why.clone()),
            None => reconcile::SecretsGate::Pending,
        }
    }

    /// One pass over what the loop knows now; returns whether any record changed.
    fn tick(&mut self) -> Result<bool, Error> {
        let now = self.now();

        // Admission (resolution 9): tasks that fit start; the others wait as PENDING.
        let (admitted, waits) = resources::admit(self.tasks.values(), &self.settings().capacity);
        for (arn, why) in waits.iter().filter(|(_, w)| w.never_fits()) {
            if let Some(t) = self.tasks.get_mut(arn) {
                let reason = format!("ResourceError: {why}; it can never fit on this instance");
                warn!(task.arn = %arn, reason = %reason, "Task can never be admitted; stopping it.");
                t.refuse(&reason);
                self.waits.remove(arn);
                self.dirty.insert(arn.clone());
            }
        }
        let waits: Vec<_> = waits.into_iter().filter(|(_, w)| !w.never_fits()).collect();
        for arn in admitted {
            if let Some(t) = self.tasks.get_mut(&arn) {
                t.admitted = true;
                self.dirty.insert(arn.clone());
                if self.waits.remove(&arn).is_some() {
                    info!(task.arn = %arn, "Resources free; task admitted.");
                }
            }
        }
        for (arn, why) in waits {
            let text = why.to_string();
            if self.waits.get(&arn) != Some(&text) {
                info!(task.arn = %arn, reason = %text, "Task waits as PENDING for resources.");
                self.waits.insert(arn, text);
            }
        }

        self.choose_bridge_addresses();

        // Reconcile every task.
        let mut requeue: Option<f64> = None;
        let mut to_start: Vec<Action> = Vec::new();
        let arns: Vec<String> = self.tasks.keys().cloned().collect();
        for arn in arns {
            let Some(rec) = self.tasks.get(&arn) else {
                continue;
            };
            let ctx = self.ctx(now, &arn, rec.known == TaskStatus::Stopped);
            let world = World {
                observed: &self.observed,
                listed: self.listed,
                listed_epoch: self.listed_epoch,
                in_flight: &self.in_flight,
            };
            let plan = reconcile::reconcile(rec, &world, &ctx);
            debug_assert!(
                plan.record.known >= rec.known,
                "task status moved backwards"
            );
            if plan.record.known == TaskStatus::Stopped && rec.known < TaskStatus::Stopped {
                // The task role's credentials go when the task stops; the execution role's stay
                // until cleanup, for dockerd's awslogs driver (task-credentials.md §2.5).
                self.shared
                    .parts
                    .credentials
                    .remove(&arn, RoleType::TaskApplication);
                // No container of a stopped task is created again: its secrets go now.
                self.secrets.remove(&arn);
            }
            if plan.record != *rec {
                log_transitions(rec, &plan.record);
                self.dirty.insert(arn.clone());
                self.tasks.insert(arn.clone(), plan.record);
            }
            if let Some(t) = plan.requeue_at {
                requeue = Some(requeue.map_or(t, |r: f64| r.min(t)));
            }
            to_start.extend(plan.actions);
        }
        self.requeue_at = requeue;

        let progress = !self.dirty.is_empty();
        self.commit()?;
        if self.listed {
            for action in to_start {
                self.spawn(action, now);
            }
            self.maybe_clean_images();
        }
        self.publish();
        Ok(progress)
    }

    /// Gives each awsvpc task whose ENI was found and whose network pause runs its address on
    /// the host bridge, before the reconciler asks for the provision: here, one task after
    /// the other, so no two live tasks share one. Persisted with the record before the
    /// provision starts, so a crash after it leaves a release owed, not forgotten.
    fn choose_bridge_addresses(&mut self) {
        let mut taken: HashSet<std::net::Ipv4Addr> = self
            .tasks
            .values()
            .filter_map(|t| t.network.as_ref())
            .filter(|n| !n.released)
            .filter_map(|n| n.bridge_ipv4)
            .collect();
        for (arn, t) in &mut self.tasks {
            let pause_runs = t.containers.iter().any(|c| {
                c.kind == ContainerKind::NetworkPause
                    && c.known == ContainerStatus::Running
                    && c.pid.is_some()
            });
            let wants = t.desired == TaskStatus::Running && pause_runs;
            let Some(n) = t.network.as_mut() else {
                continue;
            };
            if !wants || n.found.is_none() || n.bridge_ipv4.is_some() || n.failure.is_some() {
                continue;
            }
            match net::awsvpc::bridge_address(&taken) {
                Some(a) => {
                    taken.insert(a);
                    n.bridge_ipv4 = Some(a);
                }
                None => {
                    n.failure = Some(format!(
                        "{}: no free address left on the task bridge {}/{}",
                        n.describe(),
                        net::awsvpc::BRIDGE_NETWORK,
                        net::awsvpc::BRIDGE_PREFIX
                    ));
                }
            }
            self.dirty.insert(arn.clone());
        }
    }

    /// Persists every dirty record and the changes they owe, in one transaction; then notifies.
    fn commit(&mut self) -> Result<(), Error> {
        if self.dirty.is_empty() && self.images_dirty.is_empty() && self.images_removed.is_empty() {
            return Ok(());
        }
        let cluster = self.settings().cluster.clone();
        let exclude_ipv6 = self.settings().engine.exclude_ipv6_port_binding;
        let dirty: Vec<String> = std::mem::take(&mut self.dirty).into_iter().collect();
        let mut changes = Vec::new();
        let mut staged: Vec<TaskRecord> = Vec::new();
        for arn in &dirty {
            if let Some(rec) = self.tasks.get(arn) {
                let mut next = rec.clone();
                if let Some(mut change) = model::take_change(&mut next, &cluster) {
                    if exclude_ipv6 {
                        model::drop_ipv6_bindings(&mut change);
                    }
                    changes.push(change);
                }
                staged.push(next);
            }
        }
        let images: Vec<ImageRecord> = std::mem::take(&mut self.images_dirty)
            .iter()
            .filter_map(|i| self.images.get(i).cloned())
            .collect();
        let removed = std::mem::take(&mut self.images_removed);
        let sink = self.shared.parts.sink.clone();
        self.shared.parts.store.transaction(|tx| {
            for r in &staged {
                store::put_task(tx, r)?;
            }
            for c in &changes {
                sink.enqueue(tx, c)?;
            }
            for i in &images {
                store::put_image(tx, i)?;
            }
            for i in &removed {
                store::remove_image(tx, i)?;
            }
            Ok(())
        })?;
        for r in staged {
            self.tasks.insert(r.spec.arn.clone(), r);
        }
        if !changes.is_empty() {
            for c in &changes {
                debug!(task.arn = %c.task_arn, status = c.status.as_str(), containers = c.containers.len(), "State change queued.");
            }
            sink.notify();
        }
        self.published = false;
        Ok(())
    }

    fn publish(&mut self) {
        if self.published {
            return;
        }
        let mut fixed = std::mem::take(&mut self.static_facts);
        fixed.retain(|arn, _| self.tasks.contains_key(arn));
        let mut recs: Vec<&TaskRecord> = self.tasks.values().collect();
        recs.sort_by_key(|t| t.seq);
        let snap = Snapshot {
            tasks: recs
                .iter()
                .map(|t| introspection::task_json(t, self.data_root.as_deref()))
                .collect(),
            desired_running: recs
                .iter()
                .filter(|t| t.desired == TaskStatus::Running)
                .map(|t| t.spec.arn.clone())
                .collect(),
            census: recs
                .iter()
                .map(|t| introspection::census_entry(t))
                .collect(),
            running_tasks: recs
                .iter()
                .filter(|t| t.known == TaskStatus::Running)
                .count() as u64,
            running_containers: recs
                .iter()
                .flat_map(|t| &t.containers)
                .filter(|c| c.known == ContainerStatus::Running && !c.kind.is_internal())
                .count() as u64,
            metadata: Arc::new(metadata_index(
                &recs,
                &mut fixed,
                &self.shared.parts.settings.cluster,
                self.data_root.as_deref(),
            )),
        };
        self.static_facts = fixed;
        self.shared.snapshot.send_replace(Arc::new(snap));
        self.published = true;
    }

    fn spawn(&mut self, action: Action, now: f64) {
        let key = action.key();
        if self.in_flight.contains(&key) {
            return;
        }
        let flight_key = key.clone();
        if let Action::EnsureRemoved { task_arn } = &action
            && self
                .cleanup_not_before
                .get(task_arn)
                .is_some_and(|t| *t > now)
        {
            return;
        }
        let shared = self.shared.clone();
        let runtime = shared.parts.runtime.clone();
        let hooks = shared.parts.hooks.clone();
        let fut: std::pin::Pin<Box<dyn std::future::Future<Output = Done> + Send>> = match action {
            Action::EnsurePulled {
                image,
                task_arn,
                container,
            } if self
                .tasks
                .get(&task_arn)
                .and_then(|t| t.container(&container))
                .is_some_and(|c| c.kind.is_internal()) =>
            {
                // Internal images are never pulled: Docker has the image, or the task stops.
                Box::pin(async move {
                    let result = local_image(&*runtime, &image).await;
                    Done::Action(key, Box::new(Outcome::Pulled { image, result }))
                })
            }
            Action::EnsurePulled {
                image,
                task_arn,
                container,
            } => {
                let auth = self
                    .tasks
                    .get(&task_arn)
                    .and_then(|t| t.spec_of(&container))
                    .and_then(|c| c.registry_authentication.clone());
                let login = self
                    .resolved(&task_arn, &container)
                    .and_then(|c| c.registry.clone());
                let puller = shared.puller.clone();
                info!(image = %image, task.arn = %task_arn, "Pulling image.");
                Box::pin(async move {
                    hooks.at("pull.before").await;
                    let result = puller.ensure(&image, &task_arn, auth.as_ref(), login).await;
                    hooks.at("pull.after").await;
                    Done::Action(key, Box::new(Outcome::Pulled { image, result }))
                })
            }
            Action::EnsureCreated {
                task_arn,
                container,
            } => {
                let Some(rec) = self.tasks.get(&task_arn) else {
                    return;
                };
                let Some(spec) = rec.spec_of(&container) else {
                    return;
                };
                let Some(crec) = rec.container(&container) else {
                    return;
                };
                let name = crec.docker_name.clone();
                let map = self.map_ctx(rec, spec);
                let mut body = docker::create_body(rec, spec, &map);
                if let Ok(body) = body.as_mut() {
                    self.set_cgroup_parent(rec, body);
                }
                if let Some(img) = self.images.get_mut(&spec.image) {
                    img.last_used_at = now;
                    self.images_dirty.insert(spec.image.clone());
                }
                info!(task.arn = %task_arn, container = %container, docker.name = %name, "Creating container.");
                Box::pin(async move {
                    let result = async {
                        let body = body.map_err(|e| RuntimeError::Refused(e.to_string()))?;
                        let created = runtime.create(&name, body).await;
                        hooks.at("create.after").await;
                        match created {
                            Ok(id) => Ok(id),
                            Err(RuntimeError::Conflict(_)) => {
                                adopt(&*runtime, &name, &task_arn, &container).await
                            }
                            Err(e) => Err(e),
                        }
                    }
                    .await;
                    Done::Action(
                        key,
                        Box::new(Outcome::Created {
                            task_arn,
                            container,
                            result,
                        }),
                    )
                })
            }
            Action::EnsureRunning {
                task_arn,
                container,
                id,
            } => {
                info!(task.arn = %task_arn, container = %container, container.id = %short(&id), "Starting container.");
                Box::pin(async move {
                    let result = match runtime.start(&id).await {
                        Ok(()) => {
                            hooks.at("start.after").await;
                            runtime.inspect(&id).await
                        }
                        Err(e) => Err(e),
                    };
                    Done::Action(
                        key,
                        Box::new(Outcome::Started {
                            task_arn,
                            container,
                            result,
                        }),
                    )
                })
            }
            Action::EnsureStopped {
                task_arn,
                container,
                id,
                grace,
            } => {
                info!(task.arn = %task_arn, container = %container, container.id = %short(&id), grace_s = grace.as_secs(), "Stopping container.");
                Box::pin(async move {
                    hooks.at("stop.before").await;
                    let result = match runtime.stop(&id, grace).await {
                        Ok(()) => runtime.inspect(&id).await,
                        Err(e) => Err(e),
                    };
                    Done::Action(
                        key,
                        Box::new(Outcome::Stopped {
                            task_arn,
                            container,
                            result,
                        }),
                    )
                })
            }
            Action::EnsureResolved { task_arn } => {
                let Some(rec) = self.tasks.get(&task_arn) else {
                    return;
                };
                let wanted = Wanted::of(rec);
                let creds = rec.spec.execution_credentials_id().and_then(|_| {
                    shared
                        .parts
                        .credentials
                        .get(&task_arn, RoleType::TaskExecution)
                });
                let region = self.settings().region.clone().unwrap_or_default();
                let (source, objects) =
                    (shared.parts.secrets.clone(), shared.parts.objects.clone());
                info!(
                    task.arn = %task_arn,
                    secrets = wanted.secrets.values().map(Vec::len).sum::<usize>(),
                    environment_files = wanted.files.values().map(Vec::len).sum::<usize>(),
                    registry_logins = wanted.registry.len(),
                    "Fetching what the task needs from its execution role."
                );
                Box::pin(async move {
                    let started = std::time::Instant::now();
                    let result = wanted
                        .fetch(&*source, &*objects, creds.as_ref(), &region)
                        .await;
                    Done::Secrets(key, task_arn, result, started.elapsed())
                })
            }
            Action::EnsureTaskResources { task_arn } => {
                let Some(rec) = self.tasks.get(&task_arn) else {
                    return;
                };
                let cgroup = match &self.settings().task_cgroups {
                    Some(cgroups) if rec.resources.cgroup => Some(TaskCgroup {
                        cgroups: cgroups.clone(),
                        task_id: rec.spec.task_id().to_owned(),
                        limits: cgroups.limits(&rec.spec),
                    }),
                    _ => None,
                };
                let wants = volumes::plan(rec);
                let match_full = self.settings().engine.shared_volume_match_full_config;
                info!(task.arn = %task_arn, cgroup = cgroup.is_some(), volumes = wants.len(), "Preparing the task's resources.");
                Box::pin(async move {
                    let result = prepare_resources(&*runtime, cgroup, &wants, match_full)
                        .await
                        .inspect_err(|f| {
                            warn!(task.arn = %task_arn, error = %f.message, retryable = f.retryable, "Task resources not prepared.");
                        });
                    Done::Action(key, Box::new(Outcome::TaskResources { task_arn, result }))
                })
            }
            Action::EnsureEniFound { task_arn } => {
                let (Some(net), Some(n)) = (
                    self.settings().task_network.clone(),
                    self.tasks.get(&task_arn).and_then(|t| t.network.clone()),
                ) else {
                    return;
                };
                Box::pin(async move {
                    let result = net.find(&n.eni.mac).await.map_err(|e| {
                        debug!(task.arn = %task_arn, eni = %n.eni.ec2_id, error = %e, "Cannot look for the ENI yet.");
                        e.to_string()
                    });
                    if let Ok(Some(link)) = &result {
                        info!(task.arn = %task_arn, eni = %n.eni.ec2_id, mac = %n.eni.mac, link = %link, "Task ENI found.");
                    }
                    Done::Action(
                        key,
                        Box::new(Outcome::Network {
                            task_arn,
                            result: reconcile::NetOutcome::Found(result),
                        }),
                    )
                })
            }
            Action::EnsureNetwork { task_arn } => {
                let Some(net) = self.settings().task_network.clone() else {
                    return;
                };
                let Some(rec) = self.tasks.get(&task_arn) else {
                    return;
                };
                let pid = rec
                    .containers
                    .iter()
                    .find(|c| c.kind == ContainerKind::NetworkPause)
                    .and_then(|c| c.pid);
                let (Some(n), Some(pid)) = (rec.network.clone(), pid) else {
                    return;
                };
                let Some(bridge_ipv4) = n.bridge_ipv4 else {
                    return;
                };
                let cfg = net::awsvpc::TaskNetConfig {
                    task_id: rec.spec.task_id().to_owned(),
                    eni: n.eni.clone(),
                    netns_pid: pid,
                    bridge_ipv4,
                    block_imds: self.settings().block_imds,
                };
                info!(task.arn = %task_arn, eni = %n.eni.ec2_id, pid, bridge = %bridge_ipv4, "Provisioning the task's network.");
                Box::pin(async move {
                    hooks.at("network.before").await;
                    let result = match net.provision(&cfg).await {
                        Ok(made) => Ok((made, pid)),
                        Err(e) => {
                            warn!(task.arn = %task_arn, eni = %cfg.eni.ec2_id, error = %e, "Task network not provisioned.");
                            let retryable = matches!(e, NetError::Kernel { .. });
                            Err((e.to_string(), retryable))
                        }
                    };
                    hooks.at("network.after").await;
                    Done::Action(
                        key,
                        Box::new(Outcome::Network {
                            task_arn,
                            result: reconcile::NetOutcome::Provisioned(result),
                        }),
                    )
                })
            }
            Action::EnsureNetworkReleased { task_arn } => {
                let Some(net) = self.settings().task_network.clone() else {
                    warn!(task.arn = %task_arn, "An awsvpc task's network is owed a release, but this agent runs without awsvpc; its ENI may stay in the task namespace until the pause container is removed.");
                    return;
                };
                let Some(rec) = self.tasks.get(&task_arn) else {
                    return;
                };
                let Some(n) = rec.network.clone() else {
                    return;
                };
                // The namespace is reached through the pause container while it runs; once it
                // is gone the ENI is looked up by MAC in the host namespace.
                let pid = rec
                    .containers
                    .iter()
                    .find(|c| c.kind == ContainerKind::NetworkPause)
                    .filter(|c| c.known == ContainerStatus::Running)
                    .and_then(|c| c.pid);
                info!(task.arn = %task_arn, eni = %n.eni.ec2_id, "Releasing the task's network.");
                Box::pin(async move {
                    let result = net
                        .release(&n.eni, pid, &n.made())
                        .await
                        .map_err(|e| {
                            warn!(task.arn = %task_arn, eni = %n.eni.ec2_id, error = %e, "Task network not released; will retry.");
                            e.to_string()
                        });
                    Done::Action(
                        key,
                        Box::new(Outcome::Network {
                            task_arn,
                            result: reconcile::NetOutcome::Released(result),
                        }),
                    )
                })
            }
            Action::EnsureRemoved { task_arn } => {
                let Some(rec) = self.tasks.get(&task_arn) else {
                    return;
                };
                let targets: Vec<(String, Option<String>)> = rec
                    .containers
                    .iter()
                    .map(|c| (c.docker_name.clone(), c.docker_id.clone()))
                    .collect();
                let volumes = docker::task_scoped_volumes(rec);
                let cgroups = self.settings().task_cgroups.clone();
                let task_id = rec.spec.task_id().to_owned();
                info!(task.arn = %task_arn, "Cleaning up stopped task.");
                Box::pin(async move {
                    let mut result = remove_task(&*runtime, &task_arn, targets, volumes).await;
                    // The task's containers are gone: its cgroup can go.
                    if let (Ok(()), Some(cgroups)) = (&result, cgroups) {
                        result = cgroups.remove(&task_id).await.map_err(|e| e.to_string());
                    }
                    Done::Action(key, Box::new(Outcome::Removed { task_arn, result }))
                })
            }
        };
        self.in_flight.insert(flight_key);
        self.actions.spawn(fut);
    }

    /// Puts the container in the task's cgroup, when the task has one (made by
    /// `EnsureTaskResources` before any create): `CgroupParent` in `body`, the agent's override
    /// after `dockerConfig.hostConfig`.
    fn set_cgroup_parent(&self, rec: &TaskRecord, body: &mut bollard::models::ContainerCreateBody) {
        let Some(cgroups) = self.settings().task_cgroups.as_ref() else {
            return;
        };
        if !rec.resources.cgroup {
            return;
        }
        if let Ok(parent) = cgroups.parent(rec.spec.task_id()) {
            body.host_config
                .get_or_insert_with(Default::default)
                .cgroup_parent = Some(parent);
        }
    }

    fn map_ctx(&self, rec: &TaskRecord, spec: &model::ContainerSpec) -> MapCtx {
        let mut dynamic_ports = HashMap::new();
        if let Some(range) = self.settings().engine.dynamic_host_port_range
            && rec.spec.network_mode.as_deref() != Some("host")
        {
            let taken: HashSet<u16> = self
                .tasks
                .values()
                .filter(|t| t.known < TaskStatus::Stopped)
                .flat_map(|t| t.containers.iter())
                .flat_map(|c| c.ports.iter().filter_map(|p| p.host_port))
                .chain(self.settings().capacity.reserved_tcp.iter().copied())
                .collect();
            let mut want: Vec<(u16, String)> = spec
                .port_mappings
                .iter()
                .filter(|p| p.static_host_port().is_none() || p.container_port.is_none())
                .flat_map(|p| {
                    p.container_ports()
                        .into_iter()
                        .map(|c| (c, p.proto().to_owned()))
                })
                .collect();
            want.sort();
            want.dedup();
            let hint = range.0 + (rand_u16() % (range.1 - range.0 + 1).max(1));
            for proto in ["tcp", "udp"] {
                let ports: Vec<u16> = want
                    .iter()
                    .filter(|(_, p)| p == proto)
                    .map(|(c, _)| *c)
                    .collect();
                if let Some(picked) = resources::pick_dynamic_ports(
                    range,
                    proto,
                    &taken,
                    ports.len(),
                    hint,
                    resources::port_is_free,
                ) {
                    for (c, h) in ports.into_iter().zip(picked) {
                        dynamic_ports.insert((c, proto.to_owned()), h);
                    }
                }
            }
        }
        MapCtx {
            cluster: rec
                .spec
                .task_cluster_arn
                .clone()
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| self.settings().cluster.clone()),
            region: self.settings().region.clone(),
            secrets: self
                .resolved(&rec.spec.arn, &spec.name)
                .cloned()
                .map(Arc::new),
            bind_ip: self.settings().bind_ip.clone(),
            dynamic_ports,
        }
    }

    fn maybe_clean_images(&mut self) {
        let e = self.settings().engine.clone();
        if self.image_cleanup_running
            || e.image_cleanup_disabled
            || e.image_pull_behavior == PullBehavior::PreferCached
            || (self.images.is_empty() && !e.untracked_image_cleanup)
        {
            return;
        }
        let due = if self.disk_pressure {
            self.last_pressure_cleanup
                .is_none_or(|t| t.elapsed() >= PRESSURE_IMAGE_CLEANUP_EVERY)
        } else {
            self.last_image_cleanup.elapsed() >= e.image_cleanup_interval
        };
        if !due {
            return;
        }
        self.last_image_cleanup = tokio::time::Instant::now();
        if self.disk_pressure {
            self.last_pressure_cleanup = Some(self.last_image_cleanup);
        }
        self.image_cleanup_running = true;
        let records: Vec<ImageRecord> = self.images.values().cloned().collect();
        let referenced: HashSet<String> = self
            .tasks
            .values()
            .filter(|t| t.known < TaskStatus::Stopped)
            .flat_map(|t| t.spec.containers.iter().map(|c| c.image.clone()))
            .collect();
        // The pause image is never pulled, so never removed either.
        let excluded: Vec<String> = e
            .exclude_untracked_images
            .iter()
            .cloned()
            .chain([e.pause_image.clone()])
            .collect();
        let policy = ImagePolicy {
            min_age: e.image_minimum_cleanup_age,
            per_cycle: e.num_images_delete_per_cycle as usize,
            excluded: excluded.clone(),
        };
        let untracked = e
            .untracked_image_cleanup
            .then_some(cleanup::UntrackedPolicy {
                min_age: e.non_ecs_image_minimum_cleanup_age,
                excluded,
                budget: policy.per_cycle,
            });
        let pressure = self.disk_pressure;
        let runtime = self.shared.parts.runtime.clone();
        let now = self.now();
        self.actions.spawn(async move {
            let in_use = match runtime.images_in_use().await {
                Ok(u) => u,
                Err(e) => {
                    warn!(error = %e, "Image cleanup skipped: cannot list containers.");
                    return Done::Images(Vec::new());
                }
            };
            let victims = if records.is_empty() {
                Vec::new()
            } else {
                cleanup::images_to_delete(&records, &in_use, &referenced, now, &policy, pressure)
            };
            let mut removed = Vec::new();
            let mut tried = victims.len();
            for v in victims {
                match runtime.remove_image(&v.image).await {
                    Ok(()) => {
                        info!(image = %v.image, "Image removed.");
                        removed.push(v.image);
                    }
                    Err(e) => debug!(image = %v.image, error = %e, "Image not removed."),
                }
            }
            // Untracked images share the cycle's budget with the engine's own (as upstream);
            // the minimum age holds even under disk pressure: they may be an operator's.
            let mut untracked_removed = 0;
            if let Some(mut u) = untracked {
                u.budget = u.budget.saturating_sub(removed.len());
                let victims = if u.budget == 0 {
                    Vec::new()
                } else {
                    match runtime.list_images().await {
                        Ok(images) => cleanup::untracked_to_delete(
                            &images, &records, &in_use, &referenced, now, &u,
                        ),
                        Err(e) => {
                            warn!(error = %e, "Untracked image cleanup skipped: cannot list images.");
                            Vec::new()
                        }
                    }
                };
                tried += victims.len();
                for v in victims {
                    match runtime.remove_image(&v).await {
                        Ok(()) => {
                            info!(image = %v, "Untracked image removed.");
                            untracked_removed += 1;
                        }
                        Err(e) => debug!(image = %v, error = %e, "Untracked image not removed."),
                    }
                }
            }
            if tried > 0 {
                info!(
                    removed = removed.len() + untracked_removed,
                    untracked = untracked_removed,
                    tried,
                    "Image cleanup done."
                );
            }
            Done::Images(removed)
        });
    }
}

/// The task metadata endpoint's view of `recs`. What never changes after delivery (labels, log
/// configuration) is computed once per task and kept in `fixed`.
fn metadata_index(
    recs: &[&TaskRecord],
    fixed: &mut HashMap<String, Vec<introspection::StaticFacts>>,
    cluster: &str,
    data_root: Option<&std::path::Path>,
) -> MetadataIndex {
    let tasks = recs
        .iter()
        .map(|t| {
            let f = fixed
                .entry(t.spec.arn.clone())
                .or_insert_with(|| introspection::static_facts(t, cluster));
            introspection::task_facts(t, f, data_root)
        })
        .collect();
    MetadataIndex::new(tasks)
}

/// Registers a loaded task's credentials ids as known but not yet delivered (task-credentials.md
/// §2.4): the endpoint answers them 503 until ACS sends the credentials. A stopped task's
/// task-role id was removed when it stopped and stays unknown.
fn register_pending_credentials(store: &CredentialsStore, t: &TaskRecord) {
    if t.known < TaskStatus::Stopped
        && let Some(id) = t.spec.task_role_credentials_id()
    {
        store.register_pending(&t.spec.arn, RoleType::TaskApplication, id);
    }
    if let Some(id) = t.spec.execution_credentials_id() {
        store.register_pending(&t.spec.arn, RoleType::TaskExecution, id);
    }
}

fn rand_u16() -> u16 {
    (uuid::Uuid::new_v4().as_u128() & 0xffff) as u16
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn log_transitions(old: &TaskRecord, new: &TaskRecord) {
    let arn = &new.spec.arn;
    for (o, n) in old.containers.iter().zip(&new.containers) {
        if n.known != o.known {
            if n.known == ContainerStatus::Stopped {
                info!(task.arn = %arn, container = %n.name, exit_code = ?n.exit_code, reason = n.reason.as_deref().unwrap_or(""), "Container stopped.");
            } else {
                debug!(task.arn = %arn, container = %n.name, status = n.known.as_str(), "Container status.");
            }
        }
    }
    if new.known != old.known {
        info!(task.arn = %arn, status = new.known.as_str(), reason = new.reason.as_deref().unwrap_or(""), "Task status.");
    }
}

/// An internal container's image, which must be in Docker already (it is never pulled): its
/// id, or the pull failure that stops the task, naming the image.
async fn local_image(
    runtime: &dyn ContainerRuntime,
    image: &str,
) -> Result<Option<String>, String> {
    match runtime.image(image).await {
        Ok(Some(info)) => Ok(Some(info.id)),
        Ok(None) => {
            warn!(
                image,
                "The pause image is not in Docker; tasks with pidMode or ipcMode task cannot run."
            );
            Err(format!(
                "CannotPullContainerError: the pause image {image} is not in Docker; ecs-hostd never pulls it (load it, or name a local image in ECS_HOSTD_PAUSE_IMAGE)"
            ))
        }
        Err(e) => Err(format!(
            "CannotPullContainerError: cannot inspect the pause image {image}: {e}"
        )),
    }
}

/// A name conflict on create: adopt the container only if it carries this task's labels.
async fn adopt(
    runtime: &dyn ContainerRuntime,
    name: &str,
    task_arn: &str,
    container: &str,
) -> Result<String, RuntimeError> {
    match runtime.inspect(name).await? {
        Some(o)
            if o.task_arn.as_deref() == Some(task_arn)
                && o.container_name.as_deref() == Some(container) =>
        {
            info!(task.arn = %task_arn, container, container.id = %short(&o.id), "Adopted an existing container by name and labels.");
            Ok(o.id)
        }
        Some(_) => Err(RuntimeError::Refused(format!(
            "the name {name} is taken by a container ecs-hostd did not create"
        ))),
        None => Err(RuntimeError::Unavailable(format!(
            "name {name} conflicted but no such container exists"
        ))),
    }
}

/// A task's cgroup to make: where, for which task, with which limits (or why none).
struct TaskCgroup {
    cgroups: task_cgroup::TaskCgroups,
    task_id: String,
    limits: Result<task_cgroup::Limits, task_cgroup::Error>,
}

/// The task's resources, once per task before its first create: its cgroup, then its volumes.
async fn prepare_resources(
    runtime: &dyn ContainerRuntime,
    cgroup: Option<TaskCgroup>,
    wants: &[volumes::Want],
    match_full: bool,
) -> Result<(), reconcile::ResourceFailure> {
    if let Some(cg) = cgroup {
        let made = match cg.limits {
            Ok(limits) => cg.cgroups.ensure(&cg.task_id, &limits).await,
            Err(e) => Err(e),
        };
        made.map_err(|e| reconcile::ResourceFailure::new(e.is_retryable(), &e))?;
    }
    volumes::prepare(runtime, wants, match_full)
        .await
        .map_err(|e| reconcile::ResourceFailure::new(e.is_retryable(), &e))
}

async fn remove_task(
    runtime: &dyn ContainerRuntime,
    task_arn: &str,
    targets: Vec<(String, Option<String>)>,
    volumes: Vec<String>,
) -> Result<(), String> {
    for (name, id) in targets {
        // A create whose id was never recorded may still have made the container: look it up by
        // name, and remove it only if it is ours.
        let id = match id {
            Some(id) => Some(id),
            None => match runtime.inspect(&name).await {
                Ok(Some(o)) if o.task_arn.as_deref() == Some(task_arn) => Some(o.id),
                Ok(_) => None,
                Err(e) => return Err(e.to_string()),
            },
        };
        if let Some(id) = id {
            runtime.remove(&id).await.map_err(|e| e.to_string())?;
        }
    }
    for v in volumes {
        if let Err(e) = runtime.remove_volume(&v).await {
            debug!(volume = %v, error = %e, "Task volume not removed.");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
