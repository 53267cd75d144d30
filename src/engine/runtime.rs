//! The container runtime seam: everything the engine asks of Docker, as one trait, plus the
//! in-memory fake the property tests and unit tests drive.
//!
//! Owns the vocabulary of observations ([`Summary`], [`Observed`]) and runtime errors. Never
//! decides anything: the reconciler decides, the runtime only does what it is told. The real
//! implementation is `engine::docker::DockerRuntime`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bollard::auth::DockerCredentials;
use bollard::models::ContainerCreateBody;
use futures_util::stream::BoxStream;

use crate::engine::model::{ContainerNetwork, HealthProbe, HealthStatus};
use crate::tasks::NetworkBinding;

/// The label every engine container carries (and the one we filter on).
pub const LABEL_TASK_ARN: &str = "com.amazonaws.ecs.task-arn";
/// Container name in the task.
pub const LABEL_CONTAINER_NAME: &str = "com.amazonaws.ecs.container-name";
/// Task definition family.
pub const LABEL_FAMILY: &str = "com.amazonaws.ecs.task-definition-family";
/// Task definition revision.
pub const LABEL_VERSION: &str = "com.amazonaws.ecs.task-definition-version";
/// Cluster.
pub const LABEL_CLUSTER: &str = "com.amazonaws.ecs.cluster";

/// Runtime errors. `is_retryable` separates Docker being unwell (retry with backoff) from
/// requests Docker will refuse again (report and stop).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RuntimeError {
    /// The engine did not answer (connection refused, timeout, 5xx).
    #[error("Docker is unavailable: {0}")]
    Unavailable(String),
    /// A call took longer than its deadline.
    #[error("DockerTimeoutError: {op} did not finish within {secs} s")]
    Timeout {
        /// Operation.
        op: &'static str,
        /// Deadline.
        secs: u64,
    },
    /// The object does not exist (404).
    #[error("not found: {0}")]
    NotFound(String),
    /// A container with this name exists already (409 on create).
    #[error("name conflict: {0}")]
    Conflict(String),
    /// Docker refused the request (4xx other than 404/409): it will refuse it again.
    #[error("{0}")]
    Refused(String),
    /// Registry authentication failed.
    #[error("{0}")]
    Auth(String),
    /// The pull made no progress in time, or took too long overall.
    #[error("{0}")]
    PullStalled(String),
}

impl RuntimeError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RuntimeError::Unavailable(_)
                | RuntimeError::Timeout { .. }
                | RuntimeError::PullStalled(_)
        )
    }
}

/// Docker's view of a container's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Created, never started.
    Created,
    /// Running (or paused/restarting: a process exists).
    Running,
    /// Exited or dead.
    Exited,
    /// Being removed.
    Removing,
}

/// One row of a container listing: enough to notice that something changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Docker id.
    pub id: String,
    /// Docker name without the leading `/`.
    pub name: String,
    /// State.
    pub state: State,
    /// Health as the listing shows it.
    pub health: HealthStatus,
}

/// Everything the engine records about a container (from inspect).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Docker id.
    pub id: String,
    /// Docker name without `/`.
    pub name: String,
    /// `com.amazonaws.ecs.task-arn`.
    pub task_arn: Option<String>,
    /// `com.amazonaws.ecs.container-name`.
    pub container_name: Option<String>,
    /// State (`None` = unknown state string).
    pub state: Option<State>,
    /// Exit code once exited.
    pub exit_code: Option<i32>,
    /// Killed by the OOM killer.
    pub oom_killed: bool,
    /// Docker's error text for a failed start.
    pub error: Option<String>,
    /// Health (`State.Health.Status`).
    pub health: HealthStatus,
    /// Docker's last health probe (`State.Health.Log`'s last entry), once one ran.
    pub health_probe: Option<HealthProbe>,
    /// RFC 3339.
    pub created_at: Option<String>,
    /// RFC 3339; absent when never started.
    pub started_at: Option<String>,
    /// RFC 3339; absent when not finished.
    pub finished_at: Option<String>,
    /// Actual port bindings.
    pub ports: Vec<NetworkBinding>,
    /// Image id.
    pub image_id: Option<String>,
    /// Docker networks and the container's addresses on them.
    pub networks: Vec<ContainerNetwork>,
    /// The container's main process (`State.Pid`) while it runs: its `/proc/<pid>/ns/*` are the
    /// container's namespaces (the awsvpc network pause's netns gets the task's ENI).
    pub pid: Option<u32>,
}

impl Observed {
    /// Whether the container process ever started.
    pub fn ever_started(&self) -> bool {
        self.started_at.is_some()
    }
}

/// Pull limits (spec §6.4 step 10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PullLimits {
    /// No progress for this long aborts the pull.
    pub inactivity: Duration,
    /// No first progress for this long aborts the pull.
    pub first_progress: Duration,
    /// Overall deadline.
    pub total: Duration,
}

/// A Docker volume: what the engine asks to create, and what Docker says of one that exists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VolumeRequest {
    /// Name.
    pub name: String,
    /// Driver.
    pub driver: String,
    /// Driver options.
    pub driver_opts: BTreeMap<String, String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// An image as the runtime lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// `sha256:...`.
    pub id: String,
    /// Repo tags.
    pub tags: Vec<String>,
}

/// What the engine needs from a container runtime.
#[async_trait]
pub trait ContainerRuntime: Send + Sync {
    /// Every container carrying [`LABEL_TASK_ARN`], running or not.
    async fn list(&self) -> Result<Vec<Summary>, RuntimeError>;
    /// Details of one container (by id or name); `None` when it does not exist.
    async fn inspect(&self, id_or_name: &str) -> Result<Option<Observed>, RuntimeError>;
    /// The image's id when present locally.
    async fn image(&self, image: &str) -> Result<Option<ImageInfo>, RuntimeError>;
    /// Pulls an image, with credentials when given.
    async fn pull(
        &self,
        image: &str,
        auth: Option<DockerCredentials>,
        limits: PullLimits,
    ) -> Result<(), RuntimeError>;
    /// A volume as Docker has it (name, driver, options, labels); `None` when it does not exist.
    async fn inspect_volume(&self, name: &str) -> Result<Option<VolumeRequest>, RuntimeError>;
    /// Creates a volume (Docker answers an existing one of the same driver as created).
    async fn create_volume(&self, v: &VolumeRequest) -> Result<(), RuntimeError>;
    /// Creates a container; `Conflict` when the name is taken.
    async fn create(&self, name: &str, body: ContainerCreateBody) -> Result<String, RuntimeError>;
    /// Starts a container (already running is success).
    async fn start(&self, id: &str) -> Result<(), RuntimeError>;
    /// Stops a container: SIGTERM, then SIGKILL after `grace` (already stopped is success).
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError>;
    /// Removes a stopped container and its anonymous volumes (absent is success).
    async fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    /// Removes a volume (absent is success).
    async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError>;
    /// Removes an image by reference or id, without force.
    async fn remove_image(&self, image: &str) -> Result<(), RuntimeError>;
    /// Image ids used by any container (ours or not).
    async fn images_in_use(&self) -> Result<HashSet<String>, RuntimeError>;
    /// Every image Docker has (for untracked image cleanup).
    async fn list_images(&self) -> Result<Vec<crate::engine::cleanup::DockerImage>, RuntimeError>;
    /// The engine's data directory (for disk-pressure checks); `None` if unknown.
    async fn data_root(&self) -> Result<Option<std::path::PathBuf>, RuntimeError>;
    /// A stream that yields once per container event of [`super::docker::WAKE_EVENTS`]
    /// concerning our containers; it ends or errors when the connection drops.
    fn events(&self) -> BoxStream<'static, Result<(), RuntimeError>>;
}

/// Which fake call to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FakeOp {
    /// list.
    List,
    /// pull.
    Pull,
    /// create (fails before creating).
    Create,
    /// create that creates the container but then reports a timeout.
    CreateThenTimeout,
    /// start.
    Start,
    /// stop.
    Stop,
    /// remove.
    Remove,
    /// create_volume.
    CreateVolume,
}

/// A fake container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeContainer {
    /// Observation served by inspect.
    pub observed: Observed,
    /// Labels given at create.
    pub labels: HashMap<String, String>,
    /// How many times it was started.
    pub starts: u32,
    /// `Env` given at create.
    pub env: Vec<String>,
    /// `HostConfig.NetworkMode` given at create.
    pub network_mode: Option<String>,
    /// `HostConfig.PortBindings` given at create (non-empty).
    pub port_bindings: bool,
    /// `Hostname` given at create.
    pub hostname: Option<String>,
    /// `HostConfig.Dns` given at create.
    pub dns: Vec<String>,
    /// `HostConfig.CgroupParent` given at create.
    pub cgroup_parent: Option<String>,
}

#[derive(Debug, Default)]
struct FakeInner {
    containers: BTreeMap<String, FakeContainer>,
    images: HashSet<String>,
    failures: HashMap<FakeOp, (u32, RuntimeError)>,
    next_id: u64,
    creates: Vec<String>,
    created_labels: Vec<(String, String)>,
    pulls: Vec<String>,
    pull_users: Vec<Option<String>>,
    clock: u64,
    down: bool,
    lists: u64,
    inspections: Vec<String>,
    data_root: Option<std::path::PathBuf>,
    volumes: BTreeMap<String, VolumeRequest>,
    history: Vec<FakeEvent>,
}

/// What happened to a fake container, in order: `create`, `start`, `stop` (the engine's, of a
/// running container), `exit` (behind the engine's back), `vanish`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeEvent {
    /// What happened.
    pub what: &'static str,
    /// The container's task ARN label.
    pub task_arn: String,
    /// The container's name label.
    pub container: String,
}

impl FakeInner {
    fn record(&mut self, what: &'static str, name: &str) {
        if let Some(c) = self.containers.get(name) {
            let event = FakeEvent {
                what,
                task_arn: labels_get(&c.labels, LABEL_TASK_ARN),
                container: labels_get(&c.labels, LABEL_CONTAINER_NAME),
            };
            self.history.push(event);
        }
    }
}

/// In-memory runtime: containers start and stop instantly; failures can be injected per call.
#[derive(Debug, Default)]
pub struct FakeRuntime {
    inner: Mutex<FakeInner>,
    events: Mutex<Vec<tokio::sync::mpsc::UnboundedSender<()>>>,
    /// While true, every inspect waits (as Docker's does while it starts that container).
    inspect_held: tokio::sync::watch::Sender<bool>,
}

impl FakeRuntime {
    /// A fake with the given images present.
    pub fn with_images(images: &[&str]) -> FakeRuntime {
        let f = FakeRuntime::default();
        f.lock().images = images.iter().map(|s| s.to_string()).collect();
        f
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fails the next `times` calls of `op` with `err`.
    pub fn fail(&self, op: FakeOp, times: u32, err: RuntimeError) {
        self.lock().failures.insert(op, (times, err));
    }

    /// Makes every call fail as if Docker were down (or back up).
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    fn take_failure(inner: &mut FakeInner, op: FakeOp) -> Option<RuntimeError> {
        if inner.down {
            return Some(RuntimeError::Unavailable("fake docker down".into()));
        }
        let entry = inner.failures.get_mut(&op)?;
        if entry.0 == 0 {
            return None;
        }
        entry.0 -= 1;
        Some(entry.1.clone())
    }

    fn emit(&self) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|tx| tx.send(()).is_ok());
    }

    fn now(inner: &mut FakeInner) -> String {
        inner.clock += 1;
        format!("2024-01-01T00:00:{:02}Z", inner.clock % 60)
    }

    /// Every container, by name.
    pub fn containers(&self) -> BTreeMap<String, FakeContainer> {
        self.lock().containers.clone()
    }

    /// Names passed to successful creates, in order.
    pub fn creates(&self) -> Vec<String> {
        self.lock().creates.clone()
    }

    /// `(task ARN, container name)` labels of every container ever created, in order.
    pub fn created_labels(&self) -> Vec<(String, String)> {
        self.lock().created_labels.clone()
    }

    /// Every create, start, stop, exit and vanishing, in order.
    pub fn history(&self) -> Vec<FakeEvent> {
        self.lock().history.clone()
    }

    /// Images pulled, in order.
    pub fn pulls(&self) -> Vec<String> {
        self.lock().pulls.clone()
    }

    /// The registry user each pull was given (in the order of [`Self::pulls`]).
    pub fn pull_users(&self) -> Vec<Option<String>> {
        self.lock().pull_users.clone()
    }

    /// Makes a running container exit with `code` (as if its process ended).
    pub fn exit(&self, name: &str, code: i32) {
        {
            let mut inner = self.lock();
            let t = Self::now(&mut inner);
            if let Some(c) = inner.containers.get_mut(name)
                && c.observed.state == Some(State::Running)
            {
                c.observed.state = Some(State::Exited);
                c.observed.pid = None;
                c.observed.exit_code = Some(code);
                c.observed.finished_at = Some(t);
                inner.record("exit", name);
            }
        }
        self.emit();
    }

    /// Sets a container's health (a `health_status` event).
    pub fn set_health(&self, name: &str, health: HealthStatus) {
        if let Some(c) = self.lock().containers.get_mut(name) {
            c.observed.health = health;
        }
        self.emit();
    }

    /// Records a health probe result without a status change (Docker sends no event for it).
    pub fn set_health_probe(&self, name: &str, exit_code: i64, output: &str) {
        if let Some(c) = self.lock().containers.get_mut(name) {
            c.observed.health_probe = Some(HealthProbe::new(exit_code, output));
        }
    }

    /// Removes a container behind the engine's back.
    pub fn vanish(&self, name: &str) {
        let mut inner = self.lock();
        inner.record("vanish", name);
        inner.containers.remove(name);
        drop(inner);
        self.emit();
    }

    /// The data root `data_root` reports (None by default).
    pub fn set_data_root(&self, root: Option<&str>) {
        self.lock().data_root = root.map(std::path::PathBuf::from);
    }

    /// Holds every inspect until released (`false`), as a busy Docker does.
    pub fn hold_inspections(&self, held: bool) {
        self.inspect_held.send_replace(held);
    }

    /// Every volume, by name.
    pub fn volumes(&self) -> BTreeMap<String, VolumeRequest> {
        self.lock().volumes.clone()
    }

    /// A volume that exists before the engine looks (made by an operator or another task).
    pub fn add_volume(&self, v: VolumeRequest) {
        self.lock().volumes.insert(v.name.clone(), v);
    }

    /// How many times `list` was called (failed calls included).
    pub fn lists(&self) -> u64 {
        self.lock().lists
    }

    /// Ids or names passed to `inspect`, in order (failed calls included).
    pub fn inspections(&self) -> Vec<String> {
        self.lock().inspections.clone()
    }

    /// A Docker restart: every running container exits with 137 (no live-restore).
    pub fn restart_daemon(&self) {
        let names: Vec<String> = self.lock().containers.keys().cloned().collect();
        for n in names {
            self.exit(&n, 137);
        }
    }
}

fn labels_get(labels: &HashMap<String, String>, key: &str) -> String {
    labels.get(key).cloned().unwrap_or_default()
}

#[async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn list(&self) -> Result<Vec<Summary>, RuntimeError> {
        let mut inner = self.lock();
        inner.lists += 1;
        if let Some(e) = Self::take_failure(&mut inner, FakeOp::List) {
            return Err(e);
        }
        Ok(inner
            .containers
            .values()
            .filter(|c| c.labels.contains_key(LABEL_TASK_ARN))
            .map(|c| Summary {
                id: c.observed.id.clone(),
                name: c.observed.name.clone(),
                state: c.observed.state.unwrap_or(State::Created),
                health: c.observed.health,
            })
            .collect())
    }

    async fn inspect(&self, id_or_name: &str) -> Result<Option<Observed>, RuntimeError> {
        let _ = self.inspect_held.subscribe().wait_for(|held| !held).await;
        let mut inner = self.lock();
        inner.inspections.push(id_or_name.to_owned());
        if inner.down {
            return Err(RuntimeError::Unavailable("fake docker down".into()));
        }
        Ok(inner
            .containers
            .values()
            .find(|c| c.observed.id == id_or_name || c.observed.name == id_or_name)
            .map(|c| c.observed.clone()))
    }

    async fn image(&self, image: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        let inner = self.lock();
        Ok(inner.images.contains(image).then(|| ImageInfo {
            id: format!("sha256:{image}"),
            tags: vec![image.to_owned()],
        }))
    }

    async fn pull(
        &self,
        image: &str,
        auth: Option<DockerCredentials>,
        _limits: PullLimits,
    ) -> Result<(), RuntimeError> {
        let mut inner = self.lock();
        if let Some(e) = Self::take_failure(&mut inner, FakeOp::Pull) {
            return Err(e);
        }
        inner.pulls.push(image.to_owned());
        inner.pull_users.push(auth.and_then(|a| a.username));
        inner.images.insert(image.to_owned());
        Ok(())
    }

    async fn inspect_volume(&self, name: &str) -> Result<Option<VolumeRequest>, RuntimeError> {
        let inner = self.lock();
        if inner.down {
            return Err(RuntimeError::Unavailable("fake docker down".into()));
        }
        Ok(inner.volumes.get(name).cloned())
    }

    async fn create_volume(&self, v: &VolumeRequest) -> Result<(), RuntimeError> {
        let mut inner = self.lock();
        if let Some(e) = Self::take_failure(&mut inner, FakeOp::CreateVolume) {
            return Err(e);
        }
        match inner.volumes.get(&v.name) {
            Some(have) if have.driver != v.driver => Err(RuntimeError::Refused(format!(
                "volume {} already exists with driver {}",
                v.name, have.driver
            ))),
            Some(_) => Ok(()),
            None => {
                inner.volumes.insert(v.name.clone(), v.clone());
                Ok(())
            }
        }
    }

    async fn create(&self, name: &str, body: ContainerCreateBody) -> Result<String, RuntimeError> {
        let mut inner = self.lock();
        if let Some(e) = Self::take_failure(&mut inner, FakeOp::Create) {
            return Err(e);
        }
        if inner.containers.contains_key(name) {
            return Err(RuntimeError::Conflict(name.to_owned()));
        }
        let image = body.image.clone().unwrap_or_default();
        if !inner.images.contains(&image) {
            return Err(RuntimeError::NotFound(format!("No such image: {image}")));
        }
        inner.next_id += 1;
        let id = format!("{:064x}", inner.next_id);
        let labels: HashMap<String, String> = body.labels.clone().unwrap_or_default();
        let created_at = Self::now(&mut inner);
        inner.containers.insert(
            name.to_owned(),
            FakeContainer {
                observed: Observed {
                    id: id.clone(),
                    name: name.to_owned(),
                    task_arn: labels.get(LABEL_TASK_ARN).cloned(),
                    container_name: labels.get(LABEL_CONTAINER_NAME).cloned(),
                    state: Some(State::Created),
                    created_at: Some(created_at),
                    image_id: Some(format!("sha256:{image}")),
                    ..Observed::default()
                },
                labels,
                starts: 0,
                env: body.env.clone().unwrap_or_default(),
                network_mode: body
                    .host_config
                    .as_ref()
                    .and_then(|h| h.network_mode.clone()),
                port_bindings: body
                    .host_config
                    .as_ref()
                    .and_then(|h| h.port_bindings.as_ref())
                    .is_some_and(|p| !p.is_empty()),
                hostname: body.hostname.clone(),
                dns: body
                    .host_config
                    .as_ref()
                    .and_then(|h| h.dns.clone())
                    .unwrap_or_default(),
                cgroup_parent: body
                    .host_config
                    .as_ref()
                    .and_then(|h| h.cgroup_parent.clone()),
            },
        );
        inner.creates.push(name.to_owned());
        inner.record("create", name);
        let key = (
            labels_get(&inner.containers[name].labels, LABEL_TASK_ARN),
            labels_get(&inner.containers[name].labels, LABEL_CONTAINER_NAME),
        );
        inner.created_labels.push(key);
        if let Some(e) = Self::take_failure(&mut inner, FakeOp::CreateThenTimeout) {
            return Err(e);
        }
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        {
            let mut inner = self.lock();
            if let Some(e) = Self::take_failure(&mut inner, FakeOp::Start) {
                return Err(e);
            }
            let t = Self::now(&mut inner);
            let (name, c) = inner
                .containers
                .iter_mut()
                .find(|(_, c)| c.observed.id == id)
                .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
            let name = name.clone();
            match c.observed.state {
                Some(State::Running) => return Ok(()),
                Some(State::Created) | Some(State::Exited) => {
                    c.observed.state = Some(State::Running);
                    c.observed.pid = Some(10_000 + c.starts);
                    c.observed.started_at = Some(t);
                    c.observed.exit_code = None;
                    c.starts += 1;
                }
                _ => return Err(RuntimeError::Refused("cannot start".into())),
            }
            inner.record("start", &name);
        }
        // No event: a start is not among the real stream's `WAKE_EVENTS`.
        Ok(())
    }

    async fn stop(&self, id: &str, _grace: Duration) -> Result<(), RuntimeError> {
        {
            let mut inner = self.lock();
            if let Some(e) = Self::take_failure(&mut inner, FakeOp::Stop) {
                return Err(e);
            }
            let t = Self::now(&mut inner);
            let (name, c) = inner
                .containers
                .iter_mut()
                .find(|(_, c)| c.observed.id == id)
                .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
            let name = name.clone();
            if c.observed.state == Some(State::Running) {
                c.observed.state = Some(State::Exited);
                c.observed.pid = None;
                c.observed.exit_code = Some(143);
                c.observed.finished_at = Some(t);
                inner.record("stop", &name);
            }
        }
        self.emit();
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let mut inner = self.lock();
        if let Some(e) = Self::take_failure(&mut inner, FakeOp::Remove) {
            return Err(e);
        }
        let name = inner
            .containers
            .iter()
            .find(|(_, c)| c.observed.id == id)
            .map(|(n, _)| n.clone());
        if let Some(n) = name {
            if inner.containers[&n].observed.state == Some(State::Running) {
                return Err(RuntimeError::Refused("container is running".into()));
            }
            inner.containers.remove(&n);
        }
        Ok(())
    }

    async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
        self.lock().volumes.remove(name);
        Ok(())
    }

    async fn remove_image(&self, image: &str) -> Result<(), RuntimeError> {
        self.lock().images.remove(image);
        Ok(())
    }

    async fn images_in_use(&self) -> Result<HashSet<String>, RuntimeError> {
        Ok(self
            .lock()
            .containers
            .values()
            .filter_map(|c| c.observed.image_id.clone())
            .collect())
    }

    async fn list_images(&self) -> Result<Vec<crate::engine::cleanup::DockerImage>, RuntimeError> {
        let inner = self.lock();
        if inner.down {
            return Err(RuntimeError::Unavailable("fake docker down".into()));
        }
        Ok(inner
            .images
            .iter()
            .map(|i| crate::engine::cleanup::DockerImage {
                id: format!("sha256:{i}"),
                tags: vec![i.clone()],
                created: 0.0,
                size: 0,
            })
            .collect())
    }

    async fn data_root(&self) -> Result<Option<std::path::PathBuf>, RuntimeError> {
        let inner = self.lock();
        if inner.down {
            return Err(RuntimeError::Unavailable("fake docker down".into()));
        }
        Ok(inner.data_root.clone())
    }

    fn events(&self) -> BoxStream<'static, Result<(), RuntimeError>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|()| (Ok(()), rx))
        }))
    }
}

/// One call the fake task network saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeNetCall {
    /// `find`, `provision` or `release`.
    pub what: &'static str,
    /// The ENI's MAC address.
    pub mac: String,
    /// The namespace's process (provision; release while the pause runs).
    pub pid: Option<u32>,
    /// The bridge address (provision).
    pub bridge: Option<std::net::Ipv4Addr>,
    /// How many events the paired [`FakeRuntime`]'s history held when the call came (orders
    /// network calls among container creates, starts and stops).
    pub runtime_events: usize,
}

#[derive(Debug, Default)]
struct FakeNetInner {
    links: HashMap<String, String>,
    calls: Vec<FakeNetCall>,
    provision_failures: Vec<crate::engine::net::awsvpc::NetError>,
    release_failures: u32,
    in_task: HashSet<String>,
    /// The host link-event counter, when this fake offers events.
    link_events: Option<tokio::sync::watch::Sender<u64>>,
}

/// In-memory `TaskNetwork` for unit tests: ENIs appear when a test says so, provision and
/// release move them in and out of "the task namespace", failures can be injected, and every
/// call is recorded with its place among the paired runtime's container events.
#[derive(Debug, Default)]
pub struct FakeTaskNetwork {
    inner: Mutex<FakeNetInner>,
    runtime: Option<std::sync::Arc<FakeRuntime>>,
}

impl FakeTaskNetwork {
    /// A fake whose calls are ordered against `runtime`'s history.
    pub fn paired(runtime: std::sync::Arc<FakeRuntime>) -> FakeTaskNetwork {
        FakeTaskNetwork {
            inner: Mutex::default(),
            runtime: Some(runtime),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeNetInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This fake offers host link events ([`FakeTaskNetwork::link_event`] bumps them).
    pub fn with_link_events(self) -> FakeTaskNetwork {
        self.lock().link_events = Some(tokio::sync::watch::channel(0).0);
        self
    }

    /// The kernel announces a link change (the counter moves; nothing else happens).
    pub fn link_event(&self) {
        if let Some(tx) = &self.lock().link_events {
            tx.send_modify(|c| *c += 1);
        }
    }

    /// The link events end (their sender goes, as when the real socket fails).
    pub fn end_link_events(&self) {
        self.lock().link_events = None;
    }

    /// A link with `mac` appears on the host as `name` (ECS attached the ENI).
    pub fn appear(&self, mac: &str, name: &str) {
        self.lock().links.insert(mac.to_owned(), name.to_owned());
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<FakeNetCall> {
        self.lock().calls.clone()
    }

    /// How many calls of `what` were made.
    pub fn count(&self, what: &str) -> usize {
        self.lock().calls.iter().filter(|c| c.what == what).count()
    }

    /// Whether the ENI with `mac` is in a task namespace now.
    pub fn in_task(&self, mac: &str) -> bool {
        self.lock().in_task.contains(mac)
    }

    /// The next provisions fail with these errors, in order.
    pub fn fail_provision(&self, errors: Vec<crate::engine::net::awsvpc::NetError>) {
        self.lock().provision_failures = errors;
    }

    /// The next `times` releases fail.
    pub fn fail_release(&self, times: u32) {
        self.lock().release_failures = times;
    }

    fn record(
        &self,
        inner: &mut FakeNetInner,
        what: &'static str,
        mac: &str,
        pid: Option<u32>,
        bridge: Option<std::net::Ipv4Addr>,
    ) {
        let runtime_events = self.runtime.as_ref().map_or(0, |r| r.history().len());
        inner.calls.push(FakeNetCall {
            what,
            mac: mac.to_owned(),
            pid,
            bridge,
            runtime_events,
        });
    }
}

#[async_trait]
impl crate::engine::net::awsvpc::TaskNetwork for FakeTaskNetwork {
    async fn find(
        &self,
        mac: &str,
    ) -> Result<Option<String>, crate::engine::net::awsvpc::NetError> {
        let mut inner = self.lock();
        self.record(&mut inner, "find", mac, None, None);
        Ok(inner.links.get(mac).cloned())
    }

    async fn provision(
        &self,
        cfg: &crate::engine::net::awsvpc::TaskNetConfig,
    ) -> Result<crate::engine::net::awsvpc::Provisioned, crate::engine::net::awsvpc::NetError> {
        let mut inner = self.lock();
        self.record(
            &mut inner,
            "provision",
            &cfg.eni.mac,
            Some(cfg.netns_pid),
            Some(cfg.bridge_ipv4),
        );
        if !inner.provision_failures.is_empty() {
            return Err(inner.provision_failures.remove(0));
        }
        let Some(link) = inner.links.get(&cfg.eni.mac).cloned() else {
            return Err(crate::engine::net::awsvpc::NetError::EniNotFound(
                cfg.eni.mac.clone(),
            ));
        };
        inner.in_task.insert(cfg.eni.mac.clone());
        Ok(crate::engine::net::awsvpc::Provisioned {
            host_ifname: link,
            host_veth: format!("veth{}", &cfg.task_id[..cfg.task_id.len().min(8)]),
        })
    }

    async fn release(
        &self,
        eni: &crate::engine::net::awsvpc::Eni,
        netns_pid: Option<u32>,
        _made: &crate::engine::net::awsvpc::Provisioned,
    ) -> Result<(), crate::engine::net::awsvpc::NetError> {
        let mut inner = self.lock();
        self.record(&mut inner, "release", &eni.mac, netns_pid, None);
        if inner.release_failures > 0 {
            inner.release_failures -= 1;
            return Err(crate::engine::net::awsvpc::NetError::Kernel {
                what: "fake release".into(),
                source: std::io::Error::other("injected"),
            });
        }
        inner.in_task.remove(&eni.mac);
        Ok(())
    }

    fn link_events(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.lock().link_events.as_ref().map(|tx| tx.subscribe())
    }
}
