//! The reconciler: a pure function of one task's record, what Docker shows and the in-flight
//! actions, returning the next record and the "ensure" actions that move the task towards its
//! desired status (style.md, kube-rs idiom).
//!
//! Owns the status state machines' transitions (spec §7), essential-container semantics,
//! `dependsOn` gating, retry/give-up decisions for failed steps and the cleanup decision.
//! Never performs I/O, never sleeps and never learns why it was called: every action it returns
//! is safe to repeat, and [`apply`] folds an action's outcome back into the record the same way.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::engine::model::eni::{ENI_POLL_SECS, ENI_RECONCILE_SECS, Provisioned};
use crate::engine::model::{
    ContainerKind, ContainerRecord, ContainerStatus, DepState, Failure, HealthStatus, Step,
    TaskRecord, TaskStatus, dependencies, dependency_deadline, task_known,
};
use crate::engine::runtime::{Observed, RuntimeError, State};
use crate::tasks::NetworkBinding;

/// Attempts before a create or start failure stops the container.
pub const MAX_ATTEMPTS: u32 = 3;
/// Longest wait between two attempts of a failed step, seconds.
pub const MAX_RETRY_DELAY: f64 = 30.0;
/// Reason given to a task whose essential container stopped (official text).
pub const ESSENTIAL_EXITED: &str = "Essential container in task exited";

/// What an in-flight action is about; at most one action per key runs at a time.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActionKey {
    /// Pulls are per image, shared by every task that wants it.
    Pull(String),
    /// One create/start/stop at a time per task container.
    Container(String, String),
    /// Removal of a stopped task.
    Cleanup(String),
    /// Fetching a task's secrets.
    Resolve(String),
    /// Preparing a task's resources (its Docker volumes).
    Resources(String),
    /// An awsvpc task's network: finding, provisioning or releasing it (one at a time).
    Network(String),
}

/// An "ensure" step for the executor.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Make the image available (per the pull behaviour).
    EnsurePulled {
        /// Image reference.
        image: String,
        /// Task that asked (for its registry credentials).
        task_arn: String,
        /// Container that asked.
        container: String,
    },
    /// Create the container under its persisted name (adopting it on a name conflict).
    EnsureCreated {
        /// Task.
        task_arn: String,
        /// Container.
        container: String,
    },
    /// Start it.
    EnsureRunning {
        /// Task.
        task_arn: String,
        /// Container.
        container: String,
        /// Docker id.
        id: String,
    },
    /// Stop it: SIGTERM, SIGKILL after `grace`.
    EnsureStopped {
        /// Task.
        task_arn: String,
        /// Container.
        container: String,
        /// Docker id.
        id: String,
        /// Grace before SIGKILL.
        grace: Duration,
    },
    /// Fetch the task's secrets (once per task start, before its containers are created).
    EnsureResolved {
        /// Task.
        task_arn: String,
    },
    /// Remove the task's containers and task volumes, then forget the task.
    EnsureRemoved {
        /// Task.
        task_arn: String,
    },
    /// Prepare the task's resources (its task cgroup: `engine::task_cgroup`, then its Docker
    /// volumes: `engine::volumes`), once per task, before its first container create.
    EnsureTaskResources {
        /// Task.
        task_arn: String,
    },
    /// Look once for the task's ENI on the host (`TaskNetwork::find`).
    EnsureEniFound {
        /// Task.
        task_arn: String,
    },
    /// Move the task's ENI into its network pause container's namespace, with the bridge
    /// address the record holds (`TaskNetwork::provision`).
    EnsureNetwork {
        /// Task.
        task_arn: String,
    },
    /// Give the ENI back to the host and remove the veth (`TaskNetwork::release`): after every
    /// user container stopped, before the network pause container stops.
    EnsureNetworkReleased {
        /// Task.
        task_arn: String,
    },
}

impl Action {
    /// The de-duplication key.
    pub fn key(&self) -> ActionKey {
        match self {
            Action::EnsurePulled { image, .. } => ActionKey::Pull(image.clone()),
            Action::EnsureCreated {
                task_arn,
                container,
            }
            | Action::EnsureRunning {
                task_arn,
                container,
                ..
            }
            | Action::EnsureStopped {
                task_arn,
                container,
                ..
            } => ActionKey::Container(task_arn.clone(), container.clone()),
            Action::EnsureRemoved { task_arn } => ActionKey::Cleanup(task_arn.clone()),
            Action::EnsureResolved { task_arn } => ActionKey::Resolve(task_arn.clone()),
            Action::EnsureTaskResources { task_arn } => ActionKey::Resources(task_arn.clone()),
            Action::EnsureEniFound { task_arn }
            | Action::EnsureNetwork { task_arn }
            | Action::EnsureNetworkReleased { task_arn } => ActionKey::Network(task_arn.clone()),
        }
    }
}

/// What the reconciler sees of the world.
#[derive(Clone, Copy, Debug)]
pub struct World<'a> {
    /// Our containers as Docker last showed them, by Docker name.
    pub observed: &'a HashMap<String, Observed>,
    /// Whether `observed` comes from a successful listing (else nothing is judged vanished).
    pub listed: bool,
    /// Engine epoch at which that listing started.
    pub listed_epoch: u64,
    /// Actions running now.
    pub in_flight: &'a HashSet<ActionKey>,
}

impl World<'_> {
    /// What the last listing showed of container `c` of task `arn`: by its Docker name, else by
    /// its id (never a container of another task, never another id under its name).
    pub fn find(&self, arn: &str, c: &ContainerRecord) -> Option<&Observed> {
        let ours = |o: &&Observed| {
            o.task_arn.as_deref() == Some(arn) && c.docker_id.as_deref().is_none_or(|id| id == o.id)
        };
        self.observed.get(&c.docker_name).filter(ours).or_else(|| {
            let id = c.docker_id.as_deref()?;
            self.observed.values().filter(ours).find(|o| o.id == id)
        })
    }
}

/// Settings and facts that are not part of the record.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// Now, epoch seconds.
    pub now: f64,
    /// `ECS_CONTAINER_STOP_TIMEOUT`.
    pub stop_timeout: Duration,
    /// `ECS_DISABLE_PRIVILEGED`.
    pub disable_privileged: bool,
    /// `ECS_PULL_DEPENDENT_CONTAINERS_UPFRONT`.
    pub pull_upfront: bool,
    /// `ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION`.
    pub cleanup_wait: Duration,
    /// The Docker data filesystem is past the threshold: clean up at once.
    pub disk_pressure: bool,
    /// STOPPED was accepted by ECS for this task.
    pub stopped_reported: bool,
    /// The task's secrets, as the engine holds them.
    pub secrets: SecretsGate,
    /// The host link-event counter when the task network offers link events (a waiting ENI is
    /// looked for again whenever it moved, else every [`ENI_RECONCILE_SECS`]); `None`: no
    /// events, look every [`ENI_POLL_SECS`].
    pub link_events: Option<u64>,
}

/// Whether a task's containers may be created as far as its secrets go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SecretsGate {
    /// No secrets, or fetched.
    #[default]
    Ready,
    /// Not fetched yet (fetch before the first create).
    Pending,
    /// The fetch failed: the task stops with this reason.
    Failed(String),
}

/// The reconciler's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The record after this step (persist it if it changed).
    pub record: TaskRecord,
    /// Actions to start (the caller skips keys already in flight).
    pub actions: Vec<Action>,
    /// Call again at this epoch time even if nothing else happens.
    pub requeue_at: Option<f64>,
}

/// One step of the state machine for one task.
pub fn reconcile(rec: &TaskRecord, world: &World<'_>, ctx: &Ctx) -> Plan {
    let mut r = rec.clone();
    let mut actions = Vec::new();
    let mut requeue: Option<f64> = None;
    let mut requeue_at = |t: f64| requeue = Some(requeue.map_or(t, |r: f64| r.min(t)));
    let arn = r.spec.arn.clone();

    // 1. Observations: adopt, advance, detect exits and vanished containers.
    for c in &mut r.containers {
        let health_checked = rec.spec_of(&c.name).is_some_and(|s| s.health_checked());
        let key = ActionKey::Container(arn.clone(), c.name.clone());
        let busy = world.in_flight.contains(&key);
        let obs = world.find(&arn, c);
        match obs {
            Some(o) => {
                if c.known == ContainerStatus::Stopped {
                    // A container of ours running against its record (never restarted by us):
                    // make sure it is stopped. Only a listing that began after our last action
                    // on it counts: an older one still shows it running from before our own
                    // stop, and acting on it re-stopped a stopped container in a loop.
                    if o.state == Some(State::Running) && !busy && world.listed_epoch >= c.id_epoch
                    {
                        actions.push(stop_action(&arn, c, o.id.clone(), rec, ctx));
                    }
                    continue;
                }
                observe(c, o, health_checked, ctx.now);
            }
            None => {
                if c.known < ContainerStatus::Stopped
                    && c.docker_id.is_some()
                    && world.listed
                    && c.id_epoch <= world.listed_epoch
                    && !busy
                {
                    c.known = ContainerStatus::Stopped;
                    c.reason = Some(format!(
                        "ContainerVanishedError: container {} no longer exists in Docker",
                        c.docker_id.as_deref().unwrap_or_default()
                    ));
                }
            }
        }
    }

    // 2. Failed steps: give up, or wait for the retry time.
    let mut waiting: HashSet<String> = HashSet::new();
    for c in &mut r.containers {
        let Some(f) = &c.failure else { continue };
        if c.known == ContainerStatus::Stopped {
            continue;
        }
        // Stop failures are retried forever (the container still runs); a create or start
        // that keeps failing, or a pull that failed after its own retries, stops the container.
        let gives_up = f.step != Step::Stop && (!f.retryable || f.attempts >= MAX_ATTEMPTS);
        if gives_up {
            c.known = ContainerStatus::Stopped;
            c.reason = Some(f.message.clone());
        } else if f.retry_at > ctx.now {
            waiting.insert(c.name.clone());
            requeue_at(f.retry_at);
        }
    }

    // 3. Essential containers and the desired status (spec §7.3).
    if r.desired < TaskStatus::Stopped {
        let essential_stopped = r.containers.iter().find(|c| {
            c.known == ContainerStatus::Stopped && rec.spec_of(&c.name).is_some_and(|s| s.essential)
        });
        if let Some(c) = essential_stopped {
            // ECS never sees an internal container: the task's reason must say what happened.
            let reason = if c.kind.is_internal() {
                internal_stopped(c)
            } else {
                ESSENTIAL_EXITED.to_owned()
            };
            r.desired = TaskStatus::Stopped;
            r.reason.get_or_insert(reason);
            r.execution_stopped_at.get_or_insert(ctx.now);
        } else if r
            .containers
            .iter()
            .filter(|c| !c.kind.is_internal())
            .all(|c| c.known == ContainerStatus::Stopped)
        {
            r.desired = TaskStatus::Stopped;
        }
    }

    // 4. Towards the desired status.
    if r.desired == TaskStatus::Stopped {
        // Reverse dependency order (as ECS documents for dependsOn): a container is stopped only
        // once every container that depends on it has stopped.
        let still_needed: HashSet<String> = rec
            .spec
            .containers
            .iter()
            .filter(|d| {
                r.containers
                    .iter()
                    .any(|c| c.name == d.name && c.known != ContainerStatus::Stopped)
            })
            .flat_map(|d| d.depends_on.iter().map(|dep| dep.container_name.clone()))
            .collect();
        // Internal containers go last: while a user container has not stopped, they stay.
        let users_left = r
            .containers
            .iter()
            .any(|c| !c.kind.is_internal() && c.known != ContainerStatus::Stopped);
        // The awsvpc network is released after the user containers stopped and before the
        // network pause stops (its namespace holds the ENI).
        let net_key = ActionKey::Network(arn.clone());
        let net_busy = world.in_flight.contains(&net_key);
        let net_held = r
            .network
            .as_ref()
            .is_some_and(|n| n.owes_release() || net_busy);
        if !users_left
            && !net_busy
            && let Some(n) = &r.network
            && n.owes_release()
        {
            if n.not_before > ctx.now {
                requeue_at(n.not_before);
            } else {
                actions.push(Action::EnsureNetworkReleased {
                    task_arn: arn.clone(),
                });
            }
        }
        for c in &mut r.containers {
            if c.known == ContainerStatus::Stopped
                || still_needed.contains(&c.name)
                || (c.kind.is_internal() && users_left)
                || (c.kind == ContainerKind::NetworkPause && net_held)
            {
                continue;
            }
            let key = ActionKey::Container(arn.clone(), c.name.clone());
            if world.in_flight.contains(&key) || waiting.contains(&c.name) {
                continue;
            }
            let obs = world.find(&arn, c);
            match (&c.docker_id, obs) {
                (Some(id), Some(o)) if o.state == Some(State::Running) => {
                    actions.push(stop_action(&arn, c, id.clone(), rec, ctx));
                }
                // Our own start said it runs, and no listing has shown it since (the engine
                // does not wake on its own starts): stop it now rather than at the next resync.
                // Stopping a stopped container is harmless (Docker answers 304).
                (Some(id), None) if c.known == ContainerStatus::Running => {
                    actions.push(stop_action(&arn, c, id.clone(), rec, ctx));
                }
                (Some(_), Some(o)) if o.state == Some(State::Created) => {
                    c.known = ContainerStatus::Stopped;
                }
                (None, None) => {
                    // Never created (and no create in flight): nothing to stop.
                    c.known = ContainerStatus::Stopped;
                }
                _ => {}
            }
        }
    } else if r.admitted {
        let net = r.network.clone();
        for c in &mut r.containers {
            if c.known >= ContainerStatus::Running && c.running_since.is_none() {
                c.running_since = Some(ctx.now);
            }
            // awsvpc publishes nothing on the host: the ports are the ENI's.
            if let Some(n) = &net
                && !c.kind.is_internal()
                && c.known == ContainerStatus::Running
                && c.ports.is_empty()
                && let Some(spec) = rec.spec_of(&c.name)
            {
                c.ports = n.bindings(spec);
            }
        }
        // The awsvpc network: the ENI found, then provisioned into the network pause's
        // namespace; a network that cannot be had stops the task, naming the ENI.
        let mut net_failed = false;
        if let Some(why) = network_step(&mut r, world, ctx, &mut actions, &mut requeue_at) {
            net_failed = true;
            stop_before_create(&mut r, world, &why);
        }
        // Secrets that could not be fetched stop the task before anything is created
        // (task-credentials.md §9: the reason is the fetch's error).
        if let SecretsGate::Failed(why) = &ctx.secrets {
            stop_before_create(&mut r, world, why);
        }
        // The task's resources (its cgroup, its Docker volumes) are prepared once, beside the
        // pulls, before the first create; one that cannot be had stops the task before anything
        // is created.
        let resources_ready = r.resources.ready || !r.has_resources();
        let mut resources_failed = false;
        if !resources_ready {
            match r.resources.failure.clone() {
                Some(f) if !f.retryable || f.attempts >= MAX_ATTEMPTS => {
                    resources_failed = true;
                    stop_before_create(&mut r, world, &f.message);
                }
                Some(f) if f.retry_at > ctx.now => requeue_at(f.retry_at),
                _ => {
                    let key = ActionKey::Resources(arn.clone());
                    let uncreated = r
                        .containers
                        .iter()
                        .any(|c| c.known < ContainerStatus::Created && c.docker_id.is_none());
                    if uncreated && !world.in_flight.contains(&key) {
                        actions.push(Action::EnsureTaskResources {
                            task_arn: arn.clone(),
                        });
                    }
                }
            }
        }
        let mut resolve_asked = false;
        let failed =
            matches!(ctx.secrets, SecretsGate::Failed(_)) || resources_failed || net_failed;
        let snapshot = r.clone();
        // User containers are neither pulled nor created before every internal container runs
        // (whose namespaces they join), whatever ECS_PULL_DEPENDENT_CONTAINERS_UPFRONT says.
        let internal_pending = snapshot.internal_pending();
        for c in &mut r.containers {
            if failed || c.known >= ContainerStatus::Running || waiting.contains(&c.name) {
                continue;
            }
            if internal_pending && !c.kind.is_internal() {
                continue;
            }
            let key = ActionKey::Container(arn.clone(), c.name.clone());
            if world.in_flight.contains(&key) {
                continue;
            }
            let Some(spec) = snapshot.spec_of(&c.name) else {
                continue;
            };
            if ctx.disable_privileged && spec.wants_privileged() {
                c.known = ContainerStatus::Stopped;
                c.reason = Some(
                    "CannotCreateContainerError: privileged containers are disabled on this instance (ECS_DISABLE_PRIVILEGED)"
                        .into(),
                );
                continue;
            }
            let deps = dependencies(&snapshot, spec, ctx.now);
            if let DepState::Impossible(why) = &deps {
                c.known = ContainerStatus::Stopped;
                c.reason = Some(why.clone());
                continue;
            }
            if deps == DepState::Pending
                && let Some(deadline) = dependency_deadline(&snapshot, spec)
            {
                requeue_at(deadline);
            }
            let ready = deps == DepState::Satisfied;
            match c.known {
                ContainerStatus::None | ContainerStatus::ManifestPulled
                    if ready || ctx.pull_upfront =>
                {
                    // A pull with a `repositoryCredentials` login waits for the task's fetch.
                    let login_pending =
                        spec.asm_registry().is_some() && ctx.secrets != SecretsGate::Ready;
                    if !login_pending {
                        r.pull_started_at.get_or_insert(ctx.now);
                        actions.push(Action::EnsurePulled {
                            image: spec.image.clone(),
                            task_arn: arn.clone(),
                            container: c.name.clone(),
                        });
                    } else if !resolve_asked {
                        resolve_asked = true;
                        actions.push(Action::EnsureResolved {
                            task_arn: arn.clone(),
                        });
                    }
                }
                ContainerStatus::Pulled
                    if ready && ctx.secrets == SecretsGate::Pending && !resolve_asked =>
                {
                    resolve_asked = true;
                    actions.push(Action::EnsureResolved {
                        task_arn: arn.clone(),
                    });
                }
                ContainerStatus::Pulled
                    if ready && ctx.secrets == SecretsGate::Ready && resources_ready =>
                {
                    actions.push(Action::EnsureCreated {
                        task_arn: arn.clone(),
                        container: c.name.clone(),
                    })
                }
                ContainerStatus::Created if ready => {
                    if let Some(id) = &c.docker_id {
                        actions.push(Action::EnsureRunning {
                            task_arn: arn.clone(),
                            container: c.name.clone(),
                            id: id.clone(),
                        });
                    }
                }
                _ => {}
            }
        }
    }

    // 5. The task's known status follows its containers, forward only.
    let before = r.known;
    let essential_stopped = r.containers.iter().any(|c| {
        c.known == ContainerStatus::Stopped && rec.spec_of(&c.name).is_some_and(|s| s.essential)
    });
    r.known = task_known(r.known, &r.containers, essential_stopped);
    if r.pull_started_at.is_some()
        && r.pull_stopped_at.is_none()
        && r.containers
            .iter()
            .all(|c| c.known >= ContainerStatus::Pulled)
    {
        r.pull_stopped_at = Some(ctx.now);
    }
    if r.known == TaskStatus::Stopped {
        r.desired = TaskStatus::Stopped;
        if before < TaskStatus::Stopped {
            r.stopped_at = Some(ctx.now);
            r.execution_stopped_at.get_or_insert(ctx.now);
        }
    }

    // 6. Cleanup of a stopped task, once reported and after the wait (or at once under disk
    // pressure).
    if r.known == TaskStatus::Stopped {
        let due =
            r.stopped_at.unwrap_or(ctx.now) + ctx.cleanup_wait.as_secs_f64() + r.cleanup_jitter;
        let key = ActionKey::Cleanup(arn.clone());
        let stopping = actions
            .iter()
            .any(|a| matches!(a, Action::EnsureStopped { .. }));
        // A volume created after the cleanup listed the task's volumes would be left behind;
        // an ENI must be back on the host before its pause container goes.
        let preparing = world.in_flight.contains(&ActionKey::Resources(arn.clone()))
            || world.in_flight.contains(&ActionKey::Network(arn.clone()))
            || r.network.as_ref().is_some_and(|n| n.owes_release());
        if !world.in_flight.contains(&key) && !stopping && !preparing {
            if ctx.stopped_reported && (ctx.disk_pressure || ctx.now >= due) {
                actions.push(Action::EnsureRemoved {
                    task_arn: arn.clone(),
                });
            } else if ctx.now < due {
                requeue_at(due);
            }
        }
    }

    Plan {
        record: r,
        actions,
        requeue_at: requeue,
    }
}

/// The awsvpc steps of a running task (desired RUNNING, admitted): look for the ENI until it
/// appears or its attachment expires, then provision it once the network pause runs (the
/// engine chose the bridge address before this pass). Returns the task's stop reason when the
/// network cannot be had.
fn network_step(
    r: &mut TaskRecord,
    world: &World<'_>,
    ctx: &Ctx,
    actions: &mut Vec<Action>,
    requeue_at: &mut impl FnMut(f64),
) -> Option<String> {
    let arn = r.spec.arn.clone();
    let pause = r
        .containers
        .iter()
        .find(|c| c.kind == ContainerKind::NetworkPause)
        .map(|c| (c.known, c.pid));
    let n = r.network.as_mut()?;
    if let Some(why) = &n.failure {
        return Some(why.clone());
    }
    if world.in_flight.contains(&ActionKey::Network(arn.clone())) || n.provisioned.is_some() {
        return None;
    }
    if n.found.is_none() {
        if ctx.now >= n.expires_at {
            let why = format!(
                "{} did not appear on this instance within {} s",
                n.describe(),
                n.wait_secs.round()
            );
            n.failure = Some(why.clone());
            return Some(why);
        }
        // One look per link event (coalesced: the counter may have moved several times) and
        // one per period; a link that appears while a look runs moves the counter again.
        let every = match ctx.link_events {
            Some(_) => ENI_RECONCILE_SECS,
            None => ENI_POLL_SECS,
        };
        let due = n.looked_at + every;
        let moved = ctx.link_events.is_some() && ctx.link_events != n.links_seen;
        if moved || ctx.now >= due {
            // Actions start only once Docker was listed: until then the look stays due.
            if world.listed {
                n.looked_at = ctx.now;
                n.links_seen = ctx.link_events;
            }
            actions.push(Action::EnsureEniFound { task_arn: arn });
        } else {
            requeue_at(due.min(n.expires_at));
        }
        return None;
    }
    match pause {
        Some((ContainerStatus::Running, Some(_))) if n.bridge_ipv4.is_some() => {
            if n.not_before > ctx.now {
                requeue_at(n.not_before);
            } else {
                actions.push(Action::EnsureNetwork { task_arn: arn });
            }
        }
        _ => {}
    }
    None
}

/// The task's stop reason when its internal container `c` stopped.
fn internal_stopped(c: &ContainerRecord) -> String {
    let why = match (&c.reason, c.exit_code) {
        (Some(r), _) => r.clone(),
        (None, Some(code)) => format!("exit code {code}"),
        (None, None) => "stopped".to_owned(),
    };
    format!(
        "{ESSENTIAL_EXITED}: the task's {} ({}) stopped: {why}",
        c.kind.describe(),
        c.name
    )
}

/// Stops a task before anything more of it is created: every container not created yet (and
/// without a create in flight) STOPPED with `why`, which is also the task's reason.
fn stop_before_create(r: &mut TaskRecord, world: &World<'_>, why: &str) {
    let arn = r.spec.arn.clone();
    for c in &mut r.containers {
        let key = ActionKey::Container(arn.clone(), c.name.clone());
        if c.known < ContainerStatus::Created && !world.in_flight.contains(&key) {
            c.known = ContainerStatus::Stopped;
            c.reason.get_or_insert_with(|| why.to_owned());
        }
    }
    r.desired = TaskStatus::Stopped;
    r.reason.get_or_insert_with(|| why.to_owned());
}

fn stop_action(arn: &str, c: &ContainerRecord, id: String, rec: &TaskRecord, ctx: &Ctx) -> Action {
    let grace = rec
        .spec_of(&c.name)
        .and_then(|s| s.stop_timeout)
        .filter(|t| *t > 0)
        .map_or(ctx.stop_timeout, Duration::from_secs);
    Action::EnsureStopped {
        task_arn: arn.to_owned(),
        container: c.name.clone(),
        id,
        grace,
    }
}

/// Folds one observation of Docker into a container record (forward only). `health_checked`:
/// the task definition gives the container a health check (only then is health tracked);
/// `now` dates a health change.
pub fn observe(c: &mut ContainerRecord, o: &Observed, health_checked: bool, now: f64) {
    if c.known == ContainerStatus::Stopped {
        return;
    }
    if c.docker_id.is_none() {
        c.docker_id = Some(o.id.clone());
    }
    if c.created_at.is_none() {
        c.created_at = o.created_at.clone();
    }
    if o.state == Some(State::Running) && o.pid.is_some() {
        c.pid = o.pid;
    }
    if o.image_id.is_some() {
        c.image_id = o.image_id.clone();
    }
    if health_checked && o.state == Some(State::Running) {
        track_health(c, o, now);
    }
    match o.state {
        Some(State::Created) => {
            c.known = c.known.max(ContainerStatus::Created);
        }
        Some(State::Running) => {
            if c.known < ContainerStatus::Running {
                c.known = ContainerStatus::Running;
                c.started_at = o.started_at.clone();
                c.ports = o.ports.clone();
                c.networks = o.networks.clone();
                c.ran = true;
                c.failure = None;
            }
        }
        Some(State::Exited) => {
            c.known = ContainerStatus::Stopped;
            c.finished_at = o.finished_at.clone();
            if c.started_at.is_none() {
                c.started_at = o.started_at.clone();
            }
            if o.ever_started() || c.ran {
                c.ran = true;
                c.exit_code = o.exit_code;
            }
            if o.oom_killed {
                c.reason = Some("OutOfMemoryError: Container killed due to memory usage".into());
            } else if let Some(err) = o.error.as_deref().filter(|e| !e.is_empty()) {
                c.reason = Some(format!("CannotStartContainerError: {err}"));
            }
        }
        Some(State::Removing) | None => {}
    }
}

/// Health while the container runs (what Docker says of a container that exited is not a probe
/// result): the status moves only to a result (Docker's `starting` never replaces one) and
/// `health_since` only when it changes; the probe is the one this inspection saw.
fn track_health(c: &mut ContainerRecord, o: &Observed, now: f64) {
    if o.health != HealthStatus::Unknown && o.health != c.health {
        c.health = o.health;
        c.health_since = Some(now);
    }
    if o.health_probe.is_some() {
        c.health_probe = o.health_probe.clone();
    }
}

/// The outcome of an action, folded back by [`apply`].
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The image is available (or the pull failed with this reason).
    Pulled {
        /// Image.
        image: String,
        /// Image id, or the failure.
        result: Result<Option<String>, String>,
    },
    /// The container exists with this id (or create failed).
    Created {
        /// Task.
        task_arn: String,
        /// Container.
        container: String,
        /// Id, or the error.
        result: Result<String, RuntimeError>,
    },
    /// Start done (the container as inspected afterwards) or failed.
    Started {
        /// Task.
        task_arn: String,
        /// Container.
        container: String,
        /// Observation or error.
        result: Result<Option<Observed>, RuntimeError>,
    },
    /// Stop done or failed.
    Stopped {
        /// Task.
        task_arn: String,
        /// Container.
        container: String,
        /// Observation or error.
        result: Result<Option<Observed>, RuntimeError>,
    },
    /// Cleanup done or failed (the engine deletes the record on success).
    Removed {
        /// Task.
        task_arn: String,
        /// Error text.
        result: Result<(), String>,
    },
    /// A step of the task's awsvpc network finished.
    Network {
        /// Task.
        task_arn: String,
        /// What finished.
        result: NetOutcome,
    },
    /// The task's resources are prepared, or why not.
    TaskResources {
        /// Task.
        task_arn: String,
        /// The failure.
        result: Result<(), ResourceFailure>,
    },
}

/// The outcome of an awsvpc step.
#[derive(Clone, Debug, PartialEq)]
pub enum NetOutcome {
    /// A look for the ENI: the host link's name, not there yet, or why the look failed.
    Found(Result<Option<String>, String>),
    /// Provisioned (what was made, through which process), or why not and whether another
    /// attempt may work.
    Provisioned(Result<(Provisioned, u32), (String, bool)>),
    /// Released, or why not (retried).
    Released(Result<(), String>),
}

/// Why a task's resources could not be prepared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceFailure {
    /// The task's stop reason if it gives up.
    pub message: String,
    /// Worth another attempt (Docker or systemd unwell) rather than final (a volume that is not
    /// there, limits the task cannot have).
    pub retryable: bool,
}

impl ResourceFailure {
    /// A failure to prepare the task's resources, with the error as the stop reason.
    pub fn new(retryable: bool, error: &dyn std::fmt::Display) -> ResourceFailure {
        ResourceFailure {
            message: error.to_string(),
            retryable,
        }
    }
}

fn retry_delay(attempts: u32) -> f64 {
    (2f64.powi(attempts.saturating_sub(1).min(8) as i32)).min(MAX_RETRY_DELAY)
}

fn fail(c: &mut ContainerRecord, step: Step, message: String, retryable: bool, now: f64) {
    c.failure = Some(next_failure(
        c.failure.as_ref(),
        step,
        message,
        retryable,
        now,
    ));
}

/// The failure after `last`: attempts of the same step count up.
fn next_failure(
    last: Option<&Failure>,
    step: Step,
    message: String,
    retryable: bool,
    now: f64,
) -> Failure {
    let attempts = last.filter(|f| f.step == step).map_or(0, |f| f.attempts) + 1;
    Failure {
        step,
        message,
        retryable,
        attempts,
        retry_at: now + retry_delay(attempts),
    }
}

/// Folds an action's outcome into a task record; returns whether it concerned this task.
/// `epoch` is the engine epoch after the action completed.
pub fn apply(rec: &mut TaskRecord, outcome: &Outcome, now: f64, epoch: u64) -> bool {
    match outcome {
        Outcome::Pulled { image, result } => {
            if !rec.admitted || rec.desired == TaskStatus::Stopped {
                return false;
            }
            let mut touched = false;
            let wanting: HashSet<String> = rec
                .containers
                .iter()
                .filter(|c| rec.spec_of(&c.name).is_some_and(|s| &s.image == image))
                .map(|c| c.name.clone())
                .collect();
            for c in &mut rec.containers {
                if !wanting.contains(&c.name) || c.known >= ContainerStatus::Pulled {
                    continue;
                }
                touched = true;
                match result {
                    Ok(id) => {
                        c.known = ContainerStatus::Pulled;
                        if id.is_some() {
                            c.image_id = id.clone();
                        }
                        if c.failure.as_ref().is_some_and(|f| f.step == Step::Pull) {
                            c.failure = None;
                        }
                    }
                    Err(msg) => fail(c, Step::Pull, msg.clone(), false, now),
                }
            }
            touched
        }
        Outcome::Created {
            task_arn,
            container,
            result,
        } => with_container(rec, task_arn, container, |c, _| match result {
            Ok(id) => {
                if c.known == ContainerStatus::Stopped {
                    // Stopped while the create ran: keep the id so cleanup removes it.
                    c.docker_id.get_or_insert_with(|| id.clone());
                    return;
                }
                c.docker_id = Some(id.clone());
                c.id_epoch = epoch;
                c.known = c.known.max(ContainerStatus::Created);
                c.failure = None;
            }
            Err(e) => fail(
                c,
                Step::Create,
                format!("CannotCreateContainerError: {e}"),
                e.is_retryable(),
                now,
            ),
        }),
        Outcome::Started {
            task_arn,
            container,
            result,
        } => with_container(rec, task_arn, container, |c, health_checked| {
            // A listing that began before the start finished skipped the container (it was
            // busy) or caught it mid-start (inspected as gone, or not yet listed): only a later
            // one may judge it vanished, whether the start worked or not.
            c.id_epoch = c.id_epoch.max(epoch);
            match result {
                Ok(Some(o)) => {
                    observe(c, o, health_checked, now);
                    c.failure = None;
                }
                Ok(None) => {}
                Err(e) => fail(
                    c,
                    Step::Start,
                    format!("CannotStartContainerError: {e}"),
                    e.is_retryable(),
                    now,
                ),
            }
        }),
        Outcome::Stopped {
            task_arn,
            container,
            result,
        } => with_container(rec, task_arn, container, |c, health_checked| {
            // A listing that ran during the stop skipped the container (it was busy) or caught
            // it mid-stop: only a later one may judge it vanished.
            c.id_epoch = c.id_epoch.max(epoch);
            match result {
                Ok(Some(o)) if o.state == Some(State::Running) => {
                    // Docker said stopped but it runs (restarted in between?): try again
                    // after the retry delay, not at once.
                    fail(
                        c,
                        Step::Stop,
                        "CannotStopContainerError: the container still runs after the stop".into(),
                        true,
                        now,
                    );
                }
                Ok(Some(o)) => {
                    observe(c, o, health_checked, now);
                    if c.failure.as_ref().is_some_and(|f| f.step == Step::Stop) {
                        c.failure = None;
                    }
                }
                Ok(None) | Err(RuntimeError::NotFound(_)) => {
                    // Gone while we stopped it: nothing runs.
                    if c.known < ContainerStatus::Stopped {
                        c.known = ContainerStatus::Stopped;
                        c.reason.get_or_insert_with(|| {
                            format!(
                                "ContainerVanishedError: container {} no longer exists in Docker",
                                c.docker_id.as_deref().unwrap_or_default()
                            )
                        });
                    }
                }
                Err(e) => fail(
                    c,
                    Step::Stop,
                    format!("CannotStopContainerError: {e}"),
                    true,
                    now,
                ),
            }
        }),
        Outcome::Removed { .. } => false,
        Outcome::Network { task_arn, result } => {
            if rec.spec.arn != *task_arn {
                return false;
            }
            let Some(n) = rec.network.as_mut() else {
                return false;
            };
            match result {
                NetOutcome::Found(Ok(Some(link))) => {
                    n.found = Some(link.clone());
                    n.not_before = 0.0;
                }
                NetOutcome::Found(Ok(None)) | NetOutcome::Found(Err(_)) => {
                    // The next look is due a period after this one started (the reconciler's
                    // `looked_at`), or at the next link event.
                }
                NetOutcome::Provisioned(Ok((made, pid))) => {
                    n.provisioned = Some(made.clone());
                    n.netns_pid = Some(*pid);
                    n.attempts = 0;
                    n.not_before = 0.0;
                }
                NetOutcome::Provisioned(Err((why, retryable))) => {
                    n.attempts += 1;
                    if !retryable || n.attempts >= MAX_ATTEMPTS {
                        n.failure = Some(format!("{} could not be set up: {why}", n.describe()));
                    } else {
                        n.not_before = now + retry_delay(n.attempts);
                    }
                }
                NetOutcome::Released(Ok(())) => {
                    n.released = true;
                    n.attempts = 0;
                    n.not_before = 0.0;
                }
                NetOutcome::Released(Err(_)) => {
                    // Retried until it works: the ENI must go back before the pause goes.
                    n.attempts += 1;
                    n.not_before = now + retry_delay(n.attempts);
                }
            }
            true
        }
        Outcome::TaskResources { task_arn, result } => {
            if rec.spec.arn != *task_arn {
                return false;
            }
            match result {
                Ok(()) => {
                    rec.resources.ready = true;
                    rec.resources.failure = None;
                }
                Err(f) => {
                    rec.resources.failure = Some(next_failure(
                        rec.resources.failure.as_ref(),
                        Step::Resources,
                        f.message.clone(),
                        f.retryable,
                        now,
                    ));
                }
            }
            true
        }
    }
}

/// Runs `f` on container `container` of `rec` if `rec` is task `task_arn`, with whether the
/// container is health-checked.
fn with_container(
    rec: &mut TaskRecord,
    task_arn: &str,
    container: &str,
    f: impl FnOnce(&mut ContainerRecord, bool),
) -> bool {
    if rec.spec.arn != task_arn {
        return false;
    }
    let health_checked = rec.spec_of(container).is_some_and(|s| s.health_checked());
    match rec.containers.iter_mut().find(|c| c.name == container) {
        Some(c) => {
            f(c, health_checked);
            true
        }
        None => false,
    }
}

/// Port bindings as reported, without IPv6 wildcard bindings when asked (spec §8.2).
pub fn filter_bindings(ports: Vec<NetworkBinding>, exclude_ipv6: bool) -> Vec<NetworkBinding> {
    ports
        .into_iter()
        .filter(|b| !(exclude_ipv6 && b.bind_ip.contains(':')))
        .collect()
}

#[cfg(test)]
mod tests;
