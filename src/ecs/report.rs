//! The state-change reporter: the real [`StateChangeSink`]. It owns a durable FIFO of task state
//! changes in the store, sends them with SubmitTaskStateChange, and remembers per task and
//! container the newest status ECS accepted (protocol spec §8).
//!
//! - **Durable, transactional enqueue.** The engine calls [`StateChangeSink::enqueue`] inside the
//!   store transaction that records its own new state, so a change is queued if and only if the
//!   engine's state moved; then [`StateChangeSink::notify`] wakes the sender. A kill -9 at any
//!   point loses nothing that committed.
//! - **In order per task.** Only the oldest queued change of a task is ever in flight; changes of
//!   different tasks go out concurrently (at most [`MAX_IN_FLIGHT`]).
//! - **Retried until accepted**, per task, with backoff (1 s → 30 s, ×1.3, jitter 0.2, forever);
//!   `InvalidParameterException` drops that change with one log line.
//! - **Never backwards.** After ECS accepts a change, the task's and containers' "sent" statuses
//!   are persisted in the same transaction that removes it from the queue; a change that would
//!   not move any of them forward is dropped instead of sent. [`Reporter::stopped_reported`]
//!   answers from that record.
//! - **At least once.** A crash between ECS accepting a change and the commit that records it
//!   sends that change once more after the restart (ECS treats a repeated status as a no-op).
//!
//! The reporter never decides what changed (the engine does) and never talks to Docker or ACS.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{ApiError, EcsApi};
use crate::backoff::{Backoff, Policy};
use crate::store::{self, Store, Table, Transaction};
use crate::tasks::{ReportStatus, StateChangeSink, TaskChange};

/// Queued changes, keyed by a zero-padded sequence number (key order = enqueue order).
pub const QUEUE: Table = Table("report_queue");
/// Per task ARN: the newest statuses ECS accepted ([`Sent`]).
pub const SENT: Table = Table("report_sent");
/// The reporter's counters (`next_seq`).
pub const META: Table = Table("report_meta");
const NEXT_SEQ_KEY: &str = "next_seq";

/// Retry backoff per task (protocol spec §8.3).
pub const RETRY: Policy = Policy::new(Duration::from_secs(1), Duration::from_secs(30), 1.3, 0.2);
/// Submissions in flight at once (protocol spec §8.3).
pub const MAX_IN_FLIGHT: usize = 10;
/// How long the sent record of a task reported STOPPED is kept: far longer than the engine keeps
/// the task (3 h cleanup by default), so no late change can be re-sent.
pub const SENT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// The sender also looks for committed changes on this period, in case a `notify` was missed. A
/// safety net only (`Notify` keeps a wake-up sent while nobody waits), so it is long: each look
/// is a store read, and at idle it was one of the agent's most frequent (issue 8).
const RESCAN: Duration = Duration::from_secs(30);
/// How often old sent records are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// After the first failure of a task's change, only every n-th further failure is a warning.
const WARN_EVERY: u32 = 10;

/// Reporter settings; the defaults are the protocol's.
#[derive(Clone, Debug, PartialEq)]
pub struct ReporterConfig {
    /// Retry backoff per task. Tests shorten it.
    pub retry: Policy,
    /// Submissions in flight at once.
    pub max_in_flight: usize,
    /// How long the sent record of a STOPPED task is kept.
    pub sent_retention: Duration,
}

impl Default for ReporterConfig {
    fn default() -> Self {
        ReporterConfig {
            retry: RETRY,
            max_in_flight: MAX_IN_FLIGHT,
            sent_retention: SENT_RETENTION,
        }
    }
}

/// One queued change as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Queued {
    /// Position in the queue.
    pub seq: u64,
    /// Unix milliseconds when it was enqueued (for latency figures).
    pub enqueued_at_ms: u64,
    /// The change.
    pub change: TaskChange,
}

/// The newest statuses ECS accepted for one task and its containers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sent {
    /// Task status.
    #[serde(default)]
    pub task: Option<ReportStatus>,
    /// Container statuses by container name.
    #[serde(default)]
    pub containers: BTreeMap<String, ReportStatus>,
    /// Unix milliseconds of the last update.
    #[serde(default)]
    pub updated_at_ms: u64,
}

impl Sent {
    fn record(&mut self, change: &TaskChange) {
        self.task = self.task.max(Some(change.status));
        for c in &change.containers {
            let e = self
                .containers
                .entry(c.container_name.clone())
                .or_insert(c.status);
            *e = (*e).max(c.status);
        }
        self.updated_at_ms = now_ms();
    }
}

/// The part of `change` ECS has not been told yet, or `None` if it would tell ECS nothing new:
/// a task status older than the one sent drops the whole change; containers whose status is not
/// newer than the one sent are left out; a task status equal to the one sent is repeated only to
/// carry new container statuses.
pub fn unsent_part(change: &TaskChange, sent: &Sent) -> Option<TaskChange> {
    if sent.task.is_some_and(|s| change.status < s) {
        return None;
    }
    let containers: Vec<_> = change
        .containers
        .iter()
        .filter(|c| {
            sent.containers
                .get(&c.container_name)
                .is_none_or(|s| c.status > *s)
        })
        .cloned()
        .collect();
    if sent.task == Some(change.status) && containers.is_empty() && change.attachments.is_empty() {
        return None;
    }
    Some(TaskChange {
        containers,
        ..change.clone()
    })
}

/// Reporter errors: only the store can fail it (the sender never gives up on ECS).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The state database failed.
    #[error("state-change reporter: {0}")]
    Store(#[from] store::Error),
}

impl Error {
    /// A failing store is a broken disk or a second agent: not retryable in-process (the
    /// supervisor restarts the reporter, which reloads its queue).
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Counters, for `/metrics` and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReporterStats {
    /// Changes waiting in the queue.
    pub queued: u64,
    /// Changes ECS accepted.
    pub accepted: u64,
    /// Changes ECS refused as invalid (dropped).
    pub refused: u64,
    /// Changes dropped because they told ECS nothing new.
    pub skipped: u64,
    /// Failed submissions (each retried).
    pub failed_attempts: u64,
    /// Milliseconds from enqueue to acceptance of the last accepted change.
    pub last_latency_ms: u64,
}

#[derive(Default)]
struct Counters {
    queued: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    skipped: AtomicU64,
    failed_attempts: AtomicU64,
    last_latency_ms: AtomicU64,
}

/// Timing hooks: when a task's payload arrived, when it was handed to the engine, when the engine
/// queued its RUNNING report (every container running), and when ECS accepted its RUNNING and
/// STOPPED reports. Kept in memory for the most recent tasks only.
///
/// When ECS accepts a task's first RUNNING report, one DEBUG line with target
/// [`MILESTONES_TARGET`] gives the three intervals from the payload (`RUST_LOG=info,
/// ecs_hostd::ecs::report::milestones=debug` adds just that line; the benchmarks read it).
#[derive(Debug, Default)]
pub struct Milestones {
    inner: Mutex<HashMap<String, TaskMilestones>>,
}

/// The milestones of one task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskMilestones {
    /// The PayloadMessage carrying the task (desired RUNNING) was received.
    pub payload_received: Option<std::time::Instant>,
    /// The engine accepted the task.
    pub delivered: Option<std::time::Instant>,
    /// The engine queued the task's RUNNING report (all its containers running), as recorded in
    /// the committed queue entry (millisecond resolution).
    pub running_queued: Option<std::time::Instant>,
    /// ECS accepted a RUNNING task report.
    pub running_accepted: Option<std::time::Instant>,
    /// ECS accepted a STOPPED task report.
    pub stopped_accepted: Option<std::time::Instant>,
}

/// Tasks whose milestones are kept.
const MILESTONES_KEPT: usize = 1024;

/// The tracing target of the per-task start-milestones line.
pub const MILESTONES_TARGET: &str = "ecs_hostd::ecs::report::milestones";

impl Milestones {
    fn update(&self, task_arn: &str, f: impl FnOnce(&mut TaskMilestones)) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MILESTONES_KEPT && !map.contains_key(task_arn) {
            // Forget the oldest task.
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, m)| m.payload_received.or(m.delivered))
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        f(map.entry(task_arn.to_owned()).or_default());
    }

    /// Records the arrival of a task's payload (first one only).
    pub fn payload_received(&self, task_arn: &str, at: std::time::Instant) {
        self.update(task_arn, |m| {
            m.payload_received.get_or_insert(at);
        });
    }

    /// Records that the engine accepted the task (first time only).
    pub fn delivered(&self, task_arn: &str) {
        let now = std::time::Instant::now();
        self.update(task_arn, |m| {
            m.delivered.get_or_insert(now);
        });
    }

    /// Records that ECS accepted a task status.
    pub fn accepted(&self, task_arn: &str, status: ReportStatus) {
        let now = std::time::Instant::now();
        self.update(task_arn, |m| match status {
            ReportStatus::Running => {
                m.running_accepted.get_or_insert(now);
            }
            ReportStatus::Stopped => {
                m.stopped_accepted.get_or_insert(now);
            }
            ReportStatus::Pending => {}
        });
    }

    /// Records that ECS accepted a RUNNING report the engine queued at `queued_at`. Returns the
    /// task's milestones when this is its first accepted RUNNING report.
    pub fn running_accepted(
        &self,
        task_arn: &str,
        queued_at: std::time::Instant,
    ) -> Option<TaskMilestones> {
        let now = std::time::Instant::now();
        let mut first = None;
        self.update(task_arn, |m| {
            m.running_queued.get_or_insert(queued_at);
            if m.running_accepted.is_none() {
                m.running_accepted = Some(now);
                first = Some(*m);
            }
        });
        first
    }

    /// A task's milestones.
    pub fn get(&self, task_arn: &str) -> Option<TaskMilestones> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(task_arn)
            .copied()
    }
}

/// The reporter. Share it as `Arc<Reporter>`: the engine holds it as its
/// `Arc<dyn StateChangeSink>`, the supervisor runs [`Reporter::run`].
pub struct Reporter {
    store: Store,
    ecs: Arc<dyn EcsApi>,
    config: ReporterConfig,
    wake: Notify,
    counters: Counters,
    milestones: Option<Arc<Milestones>>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("store", &self.store)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn queue_key(seq: u64) -> String {
    format!("{seq:020}")
}

/// Per-task retry state.
struct Retry {
    backoff: Backoff,
    not_before: Instant,
    failures: u32,
}

/// The in-memory mirror of the durable queue, grouped by task.
#[derive(Default)]
struct Pending {
    tasks: HashMap<String, VecDeque<Queued>>,
    /// The next sequence number to look for in the store.
    next_seq: u64,
    len: usize,
}

impl Pending {
    fn load(store: &Store) -> Result<Pending, store::Error> {
        let mut p = Pending {
            next_seq: store.get(META, NEXT_SEQ_KEY)?.unwrap_or(1),
            ..Pending::default()
        };
        for (_, q) in store.list::<Queued>(QUEUE)? {
            p.next_seq = p.next_seq.max(q.seq + 1);
            p.push(q);
        }
        Ok(p)
    }

    fn push(&mut self, q: Queued) {
        self.len += 1;
        self.tasks
            .entry(q.change.task_arn.clone())
            .or_default()
            .push_back(q);
    }

    /// Picks up changes committed since the last look. Keys are contiguous: the counter and the
    /// entry commit in one transaction, and transactions are serialised.
    fn pull_new(&mut self, store: &Store) -> Result<usize, store::Error> {
        let mut n = 0;
        while let Some(q) = store.get::<Queued>(QUEUE, &queue_key(self.next_seq))? {
            self.next_seq += 1;
            self.push(q);
            n += 1;
        }
        Ok(n)
    }

    /// The oldest head among tasks that are neither in flight nor waiting to retry.
    fn next_ready(
        &self,
        busy: &HashSet<String>,
        retry: &HashMap<String, Retry>,
        now: Instant,
    ) -> Option<&Queued> {
        self.tasks
            .iter()
            .filter(|(arn, _)| !busy.contains(*arn))
            .filter(|(arn, _)| retry.get(*arn).is_none_or(|r| r.not_before <= now))
            .filter_map(|(_, q)| q.front())
            .min_by_key(|q| q.seq)
    }

    fn pop(&mut self, task_arn: &str) {
        if let Some(q) = self.tasks.get_mut(task_arn) {
            if q.pop_front().is_some() {
                self.len -= 1;
            }
            if q.is_empty() {
                self.tasks.remove(task_arn);
            }
        }
    }
}

type Submission<'a> = BoxFuture<'a, (Queued, TaskChange, Result<(), ApiError>)>;

impl Reporter {
    /// A reporter over `store`, sending to `ecs`.
    pub fn new(store: Store, ecs: Arc<dyn EcsApi>, config: ReporterConfig) -> Reporter {
        Reporter {
            store,
            ecs,
            config,
            wake: Notify::new(),
            counters: Counters::default(),
            milestones: None,
        }
    }

    /// Records acceptance milestones into `milestones`.
    pub fn with_milestones(mut self, milestones: Arc<Milestones>) -> Reporter {
        self.milestones = Some(milestones);
        self
    }

    /// The store the queue lives in (the engine enqueues inside transactions of this store).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Counters.
    pub fn stats(&self) -> ReporterStats {
        let c = &self.counters;
        ReporterStats {
            queued: c.queued.load(Ordering::Relaxed),
            accepted: c.accepted.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            failed_attempts: c.failed_attempts.load(Ordering::Relaxed),
            last_latency_ms: c.last_latency_ms.load(Ordering::Relaxed),
        }
    }

    /// Changes waiting in the durable queue.
    pub fn queued(&self) -> Result<u64, store::Error> {
        self.store.len(QUEUE)
    }

    /// What ECS accepted for a task.
    pub fn sent(&self, task_arn: &str) -> Result<Sent, store::Error> {
        Ok(self.store.get(SENT, task_arn)?.unwrap_or_default())
    }

    /// Forgets a task's sent record inside the caller's transaction (the engine calls this when
    /// it forgets the task; otherwise records of STOPPED tasks are pruned after
    /// [`ReporterConfig::sent_retention`]).
    pub fn forget(&self, tx: &Transaction<'_>, task_arn: &str) -> Result<(), store::Error> {
        tx.remove(SENT, task_arn)
    }

    /// Sends the queue until cancelled. Returns only on cancellation or a store failure.
    pub async fn run(&self, cancel: CancellationToken) -> Result<(), Error> {
        let mut pending = Pending::load(&self.store)?;
        self.counters
            .queued
            .store(pending.len as u64, Ordering::Relaxed);
        if pending.len > 0 {
            info!(
                queued = pending.len,
                "Sending state changes queued before the restart."
            );
        }
        self.prune_sent()?;
        let mut last_prune = Instant::now();
        let mut retry: HashMap<String, Retry> = HashMap::new();
        let mut busy: HashSet<String> = HashSet::new();
        let mut in_flight: FuturesUnordered<Submission<'_>> = FuturesUnordered::new();
        let mut rescan = crate::clock::Ticker::new(RESCAN);

        loop {
            // Start what can start.
            while in_flight.len() < self.config.max_in_flight.max(1) {
                let Some(head) = pending.next_ready(&busy, &retry, Instant::now()) else {
                    break;
                };
                let head = head.clone();
                let arn = head.change.task_arn.clone();
                match unsent_part(&head.change, &self.sent(&arn)?) {
                    None => {
                        debug!(task.arn = %arn, status = head.change.status.as_str(),
                            "State change tells ECS nothing new; dropping it.");
                        self.store.remove(QUEUE, &queue_key(head.seq))?;
                        pending.pop(&arn);
                        retry.remove(&arn);
                        self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(change) => {
                        busy.insert(arn);
                        in_flight.push(self.submit(head, change));
                    }
                }
            }
            self.counters
                .queued
                .store(pending.len as u64, Ordering::Relaxed);

            let next_retry = retry
                .iter()
                .filter(|(arn, _)| pending.tasks.contains_key(*arn) && !busy.contains(*arn))
                .map(|(_, r)| r.not_before)
                .min();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    // In-flight submissions are abandoned: their changes stay queued and are sent
                    // again after the restart (at least once).
                    return Ok(());
                }
                Some((head, change, result)) = in_flight.next(), if !in_flight.is_empty() => {
                    busy.remove(&head.change.task_arn);
                    self.complete(&mut pending, &mut retry, head, change, result)?;
                }
                _ = self.wake.notified() => {
                    pending.pull_new(&self.store)?;
                }
                _ = rescan.tick() => {
                    pending.pull_new(&self.store)?;
                    if last_prune.elapsed() >= PRUNE_EVERY {
                        self.prune_sent()?;
                        last_prune = Instant::now();
                    }
                }
                _ = tokio::time::sleep_until(next_retry.unwrap_or_else(Instant::now)), if next_retry.is_some() => {}
            }
        }
    }

    fn submit(&self, head: Queued, change: TaskChange) -> Submission<'_> {
        Box::pin(async move {
            let result = self.ecs.submit_task_state_change(&change).await;
            (head, change, result)
        })
    }

    fn complete(
        &self,
        pending: &mut Pending,
        retry: &mut HashMap<String, Retry>,
        head: Queued,
        sent_change: TaskChange,
        result: Result<(), ApiError>,
    ) -> Result<(), Error> {
        let arn = head.change.task_arn.clone();
        match result {
            Ok(()) => {
                self.store.transaction(|tx| {
                    tx.remove(QUEUE, &queue_key(head.seq))?;
                    let mut sent: Sent = tx.get(SENT, &arn)?.unwrap_or_default();
                    sent.record(&sent_change);
                    tx.put(SENT, &arn, &sent)
                })?;
                pending.pop(&arn);
                let latency = now_ms().saturating_sub(head.enqueued_at_ms);
                self.counters.accepted.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .last_latency_ms
                    .store(latency, Ordering::Relaxed);
                if let Some(r) = retry.remove(&arn) {
                    info!(task.arn = %arn, status = sent_change.status.as_str(), attempts = r.failures + 1,
                        "State change accepted after retries.");
                } else {
                    debug!(task.arn = %arn, status = sent_change.status.as_str(), latency_ms = latency,
                        "State change accepted.");
                }
                if let Some(m) = &self.milestones {
                    if sent_change.status == ReportStatus::Running {
                        // The queue entry's wall-clock enqueue time, moved onto the monotonic
                        // clock the other milestones use.
                        let now = std::time::Instant::now();
                        let queued_at = now
                            .checked_sub(Duration::from_millis(latency))
                            .unwrap_or(now);
                        if let Some(t) = m.running_accepted(&arn, queued_at) {
                            milestones::log_start(&arn, &t);
                        }
                    } else {
                        m.accepted(&arn, sent_change.status);
                    }
                }
            }
            Err(e) if e.has_code("InvalidParameterException") => {
                warn!(task.arn = %arn, status = sent_change.status.as_str(), error = %e,
                    "ECS refused the state change as invalid; dropping it.");
                self.store.remove(QUEUE, &queue_key(head.seq))?;
                pending.pop(&arn);
                retry.remove(&arn);
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.counters
                    .failed_attempts
                    .fetch_add(1, Ordering::Relaxed);
                let r = retry.entry(arn.clone()).or_insert_with(|| Retry {
                    backoff: self.config.retry.start(),
                    not_before: Instant::now(),
                    failures: 0,
                });
                r.failures += 1;
                let delay = r.backoff.next_delay();
                r.not_before = Instant::now() + delay;
                if r.failures == 1 || r.failures.is_multiple_of(WARN_EVERY) {
                    warn!(task.arn = %arn, status = sent_change.status.as_str(), error = %e,
                        failures = r.failures, retry_in = ?delay,
                        "SubmitTaskStateChange failed; will retry.");
                } else {
                    debug!(task.arn = %arn, error = %e, failures = r.failures, retry_in = ?delay,
                        "SubmitTaskStateChange failed again.");
                }
            }
        }
        Ok(())
    }

    /// Drops sent records of tasks reported STOPPED longer ago than the retention.
    fn prune_sent(&self) -> Result<(), store::Error> {
        let cutoff = now_ms().saturating_sub(self.config.sent_retention.as_millis() as u64);
        let old: Vec<String> = self
            .store
            .list::<Sent>(SENT)?
            .into_iter()
            .filter(|(_, s)| s.task == Some(ReportStatus::Stopped) && s.updated_at_ms < cutoff)
            .map(|(k, _)| k)
            .collect();
        if !old.is_empty() {
            self.store.transaction(|tx| {
                for k in &old {
                    tx.remove(SENT, k)?;
                }
                Ok(())
            })?;
            debug!(
                pruned = old.len(),
                "Pruned sent records of long-stopped tasks."
            );
        }
        Ok(())
    }
}

/// The per-task start-milestones line, in a module of its own so that its tracing target (the
/// module path, [`MILESTONES_TARGET`]) can be enabled alone.
mod milestones {
    use std::time::{SystemTime, UNIX_EPOCH};

    use tracing::debug;

    use super::TaskMilestones;

    /// Logs the line (only for tasks whose payload this process received).
    pub(super) fn log_start(arn: &str, t: &TaskMilestones) {
        let Some(payload) = t.payload_received else {
            return;
        };
        let ms = |at: Option<std::time::Instant>| {
            at.map_or(-1.0, |at| {
                at.saturating_duration_since(payload).as_secs_f64() * 1e3
            })
        };
        // The payload's arrival on the wall clock, so runs can be lined up with other clocks.
        let payload_unix_us = SystemTime::now()
            .checked_sub(payload.elapsed())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_micros() as u64);
        debug!(task.arn = %arn, payload_unix_us,
            payload_to_delivered_ms = ms(t.delivered),
            payload_to_running_ms = ms(t.running_queued),
            payload_to_accepted_ms = ms(t.running_accepted),
            "Task start milestones.");
    }

    #[cfg(test)]
    #[test]
    fn target_is_the_documented_one() {
        assert_eq!(module_path!(), super::MILESTONES_TARGET);
    }
}

impl StateChangeSink for Reporter {
    fn enqueue(&self, tx: &Transaction<'_>, change: &TaskChange) -> Result<(), store::Error> {
        let seq: u64 = tx.get(META, NEXT_SEQ_KEY)?.unwrap_or(1);
        tx.put(
            QUEUE,
            &queue_key(seq),
            &Queued {
                seq,
                enqueued_at_ms: now_ms(),
                change: change.clone(),
            },
        )?;
        tx.put(META, NEXT_SEQ_KEY, &(seq + 1))
    }

    fn notify(&self) {
        self.wake.notify_one();
    }

    fn stopped_reported(&self, task_arn: &str) -> bool {
        match self.store.get::<Sent>(SENT, task_arn) {
            Ok(s) => s.is_some_and(|s| s.task == Some(ReportStatus::Stopped)),
            Err(e) => {
                warn!(task.arn = %task_arn, error = %e, "Cannot read the sent status; assuming STOPPED was not reported.");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests;
