//! Host metrics to CloudWatch (metrics.md; design.md resolution 6): memory, swap and disk from
//! `/proc/meminfo` and statvfs in the `cwagent` and/or `legacy` catalogue, optional agent and
//! Docker health metrics, delivered through a durable spool with batching, backoff and a final
//! flush on shutdown; the same host values and the pipeline's counters on `/metrics`.
//!
//! ```text
//! /proc/meminfo, mountinfo, statvfs ─► collect ─► catalogue × dimensions ─► series ─► spool (redb)
//!                                                                                     │
//!                                          CloudWatch PutMetricData ◄─ pipeline ◄─────┘
//! ```
//!
//! [`Metrics`] is the subsystem the supervisor runs: three concurrent loops inside one task —
//! identity (IMDS, then the ASG with its startup wait and 180 s retries), collection (wall-clock
//! aligned passes; samples are held in memory until the identity is settled, then spooled), and
//! delivery (flushes at this process's random phase). On cancellation it stops collecting and
//! makes one final flush within `shutdown_flush`; whatever is left stays spooled.
//!
//! This module never reads configuration files (it takes [`Settings`]) and never decides the
//! agent's health; it reads the health board and an engine hook.

pub mod catalogue;
pub mod cloudwatch;
pub mod collect;
pub mod datum;
pub mod dimensions;
pub mod mounts;
pub mod pipeline;
pub mod prometheus;
pub mod series;
pub mod spool;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::metrics::{DimensionMode, LegacySeries, MetricsConfig, MetricsProfile};
use crate::health;
use crate::imds::InstanceMetadata;
use crate::store::Store;
use catalogue::{Enabled, Sample, Unit};
use cloudwatch::MetricsPublisher;
use collect::{Pass, ReadPlan, Reader};
use dimensions::{Aggregate, AsgLookup, Identity, Rules};
pub use pipeline::SystemClock;
use pipeline::{Clock, Counters, Sender};
use series::Catalogue;
use spool::Spool;

/// How often the ASG lookup is retried after the startup wait ran out (metrics.md §2).
pub const ASG_RETRY: Duration = Duration::from_secs(180);
/// Passes held in memory while the identity is unknown (older ones are dropped).
const MAX_PENDING_PASSES: usize = 10;

/// Everything the subsystem needs to know, typed. Built from [`MetricsConfig`]; fields are public
/// so tests and examples can shorten intervals below what the configuration allows.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Collection interval.
    pub interval: Duration,
    /// Flush interval.
    pub flush_interval: Duration,
    /// Names, formulas, dimensions.
    pub catalogue: Catalogue,
    /// Filesystem selection and statvfs deadline.
    pub read: ReadPlan,
    /// Pack Values/Counts.
    pub pack_samples: bool,
    /// Spool count bound.
    pub spool_max_datums: usize,
    /// Spool age bound.
    pub spool_max_age: Duration,
    /// Final flush deadline.
    pub shutdown_flush: Duration,
    /// Startup wait for the ASG answer.
    pub identity_wait: Duration,
    /// Publish health metrics.
    pub health_metrics: bool,
    /// ECS cluster (ClusterName rollup).
    pub cluster: Option<String>,
}

impl Settings {
    /// From the validated configuration and the cluster this agent registered with.
    pub fn from_config(c: &MetricsConfig, cluster: Option<&str>) -> Settings {
        let high_resolution = c.storage_resolution == 1 || c.interval < Duration::from_secs(60);
        let cwagent = matches!(c.profile, MetricsProfile::CwAgent | MetricsProfile::Both);
        let legacy = matches!(c.profile, MetricsProfile::Legacy | MetricsProfile::Both);
        let mut selection = mounts::Selection {
            explicit: c.filesystems.clone(),
            require_block_device: c.require_block_device,
            include_read_only: c.include_read_only,
            max_filesystems: c.max_filesystems,
            ..mounts::Selection::default()
        };
        selection
            .ignore_fs_types
            .extend(c.extra_ignore_fs_types.iter().cloned());
        selection
            .ignore_mount_prefixes
            .extend(c.extra_ignore_mount_prefixes.iter().cloned());
        Settings {
            interval: c.interval,
            flush_interval: c.flush_interval,
            catalogue: Catalogue {
                profile: c.profile,
                namespace: c.namespace.clone(),
                legacy_namespace: c.legacy.namespace.clone(),
                enabled: Enabled::from_list(&c.metrics),
                formula: c.mem_used_formula,
                swap_when_absent: c.swap_when_absent,
                legacy_memory_units: c.legacy.memory_units,
                legacy_disk_units: c.legacy.disk_units,
                legacy_incl_cache_buff: c.legacy.mem_used_incl_cache_buff,
                rules: Rules {
                    mode: c.dimension_mode,
                    drop_device: c.drop_device,
                    rollups: dimensions::parse_rollups(&c.dimensions),
                    aggregate: if c.aggregate_metrics.iter().any(|m| m == "all") {
                        Aggregate::All
                    } else {
                        Aggregate::Only(c.aggregate_metrics.clone())
                    },
                    legacy_aggregated: c.legacy.aggregated,
                    legacy_auto_scaling: c.legacy.auto_scaling,
                },
                high_resolution,
            },
            read: ReadPlan {
                selection: cwagent.then_some(selection),
                legacy_paths: if legacy {
                    c.legacy.disk_paths.clone()
                } else {
                    Vec::new()
                },
                statvfs_timeout: c.statvfs_timeout,
            },
            pack_samples: c.pack_samples,
            spool_max_datums: c.spool_max_datums.min(usize::MAX as u64) as usize,
            spool_max_age: c.spool_max_age,
            shutdown_flush: c.shutdown_flush,
            identity_wait: c.identity_wait,
            health_metrics: c.health_metrics,
            cluster: cluster.map(str::to_owned),
        }
    }

    /// Whether any series needs the AutoScalingGroupName.
    fn needs_asg(&self) -> bool {
        let c = &self.catalogue;
        (c.cwagent() && c.rules.mode == DimensionMode::Ec2)
            || (c.legacy() && c.rules.legacy_auto_scaling != LegacySeries::Off)
    }

    fn pack_period_ms(&self) -> Option<i64> {
        let period = if self.catalogue.high_resolution {
            1_000
        } else {
            60_000
        };
        (self.pack_samples && self.interval < self.flush_interval).then_some(period)
    }
}

/// What the engine reports for the health metrics (fed through [`Metrics::engine_counts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineCounts {
    /// Tasks running on the instance.
    pub running_tasks: u64,
    /// Containers running on the instance.
    pub running_containers: u64,
}

/// Metrics subsystem errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spool (store) failed.
    #[error(transparent)]
    Spool(#[from] spool::Error),
    /// Delivery failed (only the spool can make it fail).
    #[error(transparent)]
    Pipeline(#[from] pipeline::Error),
}

impl Error {
    /// Whether a restart of the subsystem may help.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Spool(e) => e.is_retryable(),
            Error::Pipeline(e) => e.is_retryable(),
        }
    }
}

/// Where the identity stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum IdentityState {
    /// Not known yet: hold samples.
    Unknown,
    /// Known; datums can be built.
    Settled(Identity),
}

/// The outside world the subsystem talks to.
pub struct Sources {
    /// IMDS (InstanceId, ImageId, InstanceType, instance tags).
    pub imds: Arc<dyn InstanceMetadata>,
    /// Auto Scaling (ASG when tags are not in IMDS).
    pub asg: Arc<dyn AsgLookup>,
    /// CloudWatch.
    pub publisher: Arc<dyn MetricsPublisher>,
    /// The health board (Docker reachability), when health metrics are on.
    pub board: Option<health::Board>,
    /// The durable store.
    pub store: Store,
    /// Wall clock.
    pub clock: Arc<dyn Clock>,
}

/// The metrics subsystem. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    sources: Sources,
    spool: Arc<Mutex<Spool>>,
    counters: Arc<Counters>,
    view: Arc<Mutex<prometheus::HostView>>,
    identity: watch::Sender<IdentityState>,
    engine: watch::Sender<Option<EngineCounts>>,
    /// Turns true when the instance starts draining: flush at once (packaging spec §6.4).
    draining: watch::Sender<bool>,
    starts: u64,
    phase: Duration,
    reader_root: Option<std::path::PathBuf>,
}

impl Metrics {
    /// Opens the spool and records this process start. Call once per process.
    pub fn new(settings: Settings, sources: Sources) -> Result<Metrics, Error> {
        let spool = Spool::open(
            sources.store.clone(),
            settings.spool_max_datums,
            settings.spool_max_age.as_millis() as i64,
        )?;
        let starts = spool::record_start(&sources.store)?;
        let counters = Arc::new(Counters::default());
        counters.observe_spool(&spool);
        if spool.depth() > 0 {
            info!(spool.depth = spool.depth(), oldest_ms = ?spool.oldest_ms(), "Metrics spooled by a previous run will be sent.");
        }
        let phase = pipeline::draw_phase(settings.flush_interval);
        Ok(Metrics {
            inner: Arc::new(Inner {
                settings,
                sources,
                spool: Arc::new(Mutex::new(spool)),
                counters,
                view: Arc::default(),
                identity: watch::Sender::new(IdentityState::Unknown),
                engine: watch::Sender::new(None),
                draining: watch::Sender::new(false),
                starts,
                phase,
                reader_root: None,
            }),
        })
    }

    /// The subsystem as `ecs-hostd run` builds it: real IMDS, Auto Scaling and CloudWatch clients
    /// from the shared SDK configuration (3 SDK attempts per delivery), the agent's store and
    /// health board, the system clock.
    pub fn for_agent(
        config: &crate::config::Config,
        sdk: &aws_config::SdkConfig,
        store: &Store,
        board: &health::Board,
        cluster: &str,
    ) -> Result<Metrics, Error> {
        Metrics::new(
            Settings::from_config(&config.metrics, Some(cluster)),
            Sources {
                imds: Arc::new(crate::imds::ImdsClient::new(&config.imds_endpoint)),
                asg: Arc::new(dimensions::AutoScalingLookup::new(sdk)),
                publisher: Arc::new(cloudwatch::CloudWatchPublisher::new(sdk, 3)),
                board: Some(board.clone()),
                store: store.clone(),
                clock: Arc::new(SystemClock),
            },
        )
    }

    /// A fixed flush phase (tests).
    #[cfg(test)]
    fn with_phase(mut self, phase: Duration) -> Metrics {
        Arc::get_mut(&mut self.inner).expect("not shared yet").phase = phase;
        self
    }

    /// Reads another proc root (tests and the benchmark use recorded fixtures).
    pub fn with_proc_root(self, root: std::path::PathBuf) -> Metrics {
        match Arc::try_unwrap(self.inner) {
            Ok(mut inner) => {
                inner.reader_root = Some(root);
                Metrics {
                    inner: Arc::new(inner),
                }
            }
            Err(inner) => Metrics { inner },
        }
    }

    /// The `/metrics` section.
    pub fn section(&self) -> Arc<dyn crate::api::MetricsSection> {
        Arc::new(prometheus::Section {
            counters: self.inner.counters.clone(),
            view: self.inner.view.clone(),
            starts: self.inner.starts,
        })
    }

    /// The hook the task engine feeds running task and container counts into.
    pub fn engine_counts(&self) -> watch::Sender<Option<EngineCounts>> {
        self.inner.engine.clone()
    }

    /// The flag that makes the pipeline flush at once, outside its phase, when it turns true
    /// (the lifecycle's draining flag: a Spot notice leaves two minutes, not a flush interval).
    /// Flushes once per process.
    pub fn draining(&self) -> watch::Sender<bool> {
        self.inner.draining.clone()
    }

    /// Pipeline counters.
    pub fn counters(&self) -> Arc<Counters> {
        self.inner.counters.clone()
    }

    /// Datums waiting in the spool.
    pub fn spool_depth(&self) -> usize {
        pipeline_lock(&self.inner.spool).depth()
    }

    /// The flush phase drawn for this process.
    pub fn phase(&self) -> Duration {
        self.inner.phase
    }

    /// Runs until `cancel`, then makes the final flush within `shutdown_flush`.
    pub async fn run(&self, cancel: CancellationToken) -> Result<(), Error> {
        let s = &self.inner.settings;
        info!(
            profile = ?s.catalogue.profile,
            namespace = %s.catalogue.namespace,
            interval = ?s.interval,
            flush_interval = ?s.flush_interval,
            flush_phase = ?self.inner.phase,
            high_resolution = s.catalogue.high_resolution,
            "Metrics subsystem started."
        );
        let mut sender = self.sender();
        let work = async {
            // The identity loop ends once the identity is settled; the others must keep running.
            let identity = async {
                self.identity_loop(&cancel).await;
                std::future::pending::<Result<(), Error>>().await
            };
            tokio::select! {
                r = self.collect_loop(&cancel) => r,
                r = self.flush_loop(&mut sender, &cancel) => r,
                r = identity => r,
            }
        };
        let result = tokio::select! {
            _ = cancel.cancelled() => Ok(()),
            r = work => r,
        };
        // Final flush: one attempt per request, bounded by the deadline; leftovers stay spooled.
        let mut sender = self.sender();
        let stop = CancellationToken::new();
        let deadline = s.shutdown_flush;
        let flushed = tokio::time::timeout(deadline, sender.flush(&stop, false)).await;
        let left = self.spool_depth();
        match flushed {
            Ok(Ok(_)) if left == 0 => debug!("Final metrics flush delivered everything."),
            Ok(Ok(_)) | Err(_) => {
                info!(spool.depth = left, deadline = ?deadline, "Final metrics flush ended; the rest stays spooled for the next start.")
            }
            Ok(Err(e)) => warn!(error = %e, "Final metrics flush failed."),
        }
        result
    }

    fn sender(&self) -> Sender {
        Sender::new(
            self.inner.sources.publisher.clone(),
            self.inner.spool.clone(),
            self.inner.counters.clone(),
            self.inner.sources.clock.clone(),
            self.inner.settings.pack_period_ms(),
        )
    }

    async fn identity_loop(&self, cancel: &CancellationToken) {
        let src = &self.inner.sources;
        let s = &self.inner.settings;
        let mut backoff =
            pipeline::FullJitter::new(Duration::from_secs(1), Duration::from_secs(30));
        let mut base = loop {
            match dimensions::read_base(src.imds.as_ref()).await {
                Ok(id) => break id,
                Err(e) => {
                    warn!(error = %e, "Cannot read the instance identity for metric dimensions; samples are held until it is known.");
                    if !pause(backoff.next_delay(), cancel).await {
                        return;
                    }
                }
            }
        };
        base.cluster = s.cluster.clone();
        if !s.needs_asg() {
            self.inner
                .identity
                .send_replace(IdentityState::Settled(base));
            return;
        }
        let started = tokio::time::Instant::now();
        backoff.reset();
        loop {
            match dimensions::resolve_asg(src.imds.as_ref(), src.asg.as_ref(), &base.instance_id)
                .await
            {
                Ok(asg) => {
                    debug!(asg = ?asg, "Auto Scaling group resolved.");
                    base.asg = asg;
                    self.inner
                        .identity
                        .send_replace(IdentityState::Settled(base));
                    return;
                }
                Err(e) => {
                    let waited = started.elapsed();
                    if waited >= s.identity_wait {
                        warn!(error = %e, waited = ?waited, "The Auto Scaling group is still unknown; publishing without AutoScalingGroupName and retrying every 3 minutes.");
                        break;
                    }
                    let wait = backoff.next_delay().min(s.identity_wait - waited);
                    if !pause(wait, cancel).await {
                        return;
                    }
                }
            }
        }
        self.inner
            .identity
            .send_replace(IdentityState::Settled(base.clone()));
        loop {
            if !pause(ASG_RETRY, cancel).await {
                return;
            }
            match dimensions::resolve_asg(src.imds.as_ref(), src.asg.as_ref(), &base.instance_id)
                .await
            {
                Ok(None) => return,
                Ok(Some(asg)) => {
                    info!(asg = %asg, "Auto Scaling group found; adding AutoScalingGroupName (this starts new series).");
                    base.asg = Some(asg);
                    self.inner
                        .identity
                        .send_replace(IdentityState::Settled(base));
                    return;
                }
                Err(e) => debug!(error = %e, "Auto Scaling group lookup still failing."),
            }
        }
    }

    async fn collect_loop(&self, cancel: &CancellationToken) -> Result<(), Error> {
        let s = &self.inner.settings;
        let clock = self.inner.sources.clock.clone();
        let mut reader = match &self.inner.reader_root {
            Some(root) => {
                Reader::with_sources(root.clone(), Arc::new(collect::SysFsStat), s.read.clone())
            }
            None => Reader::new(s.read.clone()),
        };
        let interval_ms = s.interval.as_millis().max(1) as i64;
        let mut pending: Vec<(i64, Pass, Vec<Sample>)> = Vec::new();
        let mut last = i64::MIN;
        loop {
            let mut at = pipeline::next_aligned(clock.now_ms(), interval_ms);
            if at == last {
                // Woken just before the slot it slept for: the wall clock runs slow against the
                // monotonic timer (NTP slewing). That slot is taken; collecting it again would
                // send a second datum with the same timestamp.
                at += interval_ms;
            }
            last = at;
            if !pipeline::sleep_until_wall(clock.as_ref(), at, cancel).await {
                return Ok(());
            }
            let pass = reader.read().await;
            self.inner.counters.passes.fetch_add(1, Ordering::Relaxed);
            self.publish_view(&pass, at);
            let health = self.health_samples();
            pending.push((at, pass, health));
            let identity = self.inner.identity.borrow().clone();
            match identity {
                IdentityState::Settled(id) => {
                    for (ts, pass, health) in pending.drain(..) {
                        self.spool_pass(ts, &pass, &health, &id)?;
                    }
                }
                IdentityState::Unknown => {
                    if pending.len() > MAX_PENDING_PASSES {
                        pending.remove(0);
                        warn!("Instance identity still unknown; dropping the oldest held sample.");
                    }
                }
            }
        }
    }

    /// Builds, validates and spools one pass.
    pub(crate) fn spool_pass(
        &self,
        ts: i64,
        pass: &Pass,
        health: &[Sample],
        id: &Identity,
    ) -> Result<(), Error> {
        let s = &self.inner.settings;
        let now = self.inner.sources.clock.now_ms();
        let max_age = s.spool_max_age.as_millis() as i64;
        let mut spool = pipeline_lock(&self.inner.spool);
        for (ns, datums) in series::build(pass, health, ts, id, &s.catalogue) {
            if let Err(e) = datum::validate_namespace(&ns) {
                warn!(error = %e, datums = datums.len(), "Datums dropped: invalid namespace.");
                self.inner
                    .counters
                    .dropped_invalid
                    .fetch_add(datums.len() as u64, Ordering::Relaxed);
                continue;
            }
            let (ok, bad): (Vec<_>, Vec<_>) = datums
                .into_iter()
                .partition(|d| d.validate(now, max_age).is_ok());
            for d in &bad {
                if let Err(e) = d.validate(now, max_age) {
                    debug!(metric = %d.name, error = %e, "Datum dropped before sending: invalid.");
                }
            }
            if !bad.is_empty() {
                self.inner
                    .counters
                    .dropped_invalid
                    .fetch_add(bad.len() as u64, Ordering::Relaxed);
            }
            let dropped = spool.push(&ns, ts, ok)?;
            if dropped > 0 {
                debug!(dropped, "Spool full: oldest datums dropped.");
            }
        }
        self.inner.counters.observe_spool(&spool);
        Ok(())
    }

    async fn flush_loop(
        &self,
        sender: &mut Sender,
        cancel: &CancellationToken,
    ) -> Result<(), Error> {
        let clock = self.inner.sources.clock.clone();
        let interval_ms = self.inner.settings.flush_interval.as_millis().max(1) as i64;
        let phase_ms = self.inner.phase.as_millis() as i64;
        let mut draining = Some(self.inner.draining.subscribe());
        loop {
            let at = pipeline::next_flush(clock.now_ms(), interval_ms, phase_ms);
            let drained = async {
                match draining.as_mut() {
                    Some(rx) => rx.wait_for(|d| *d).await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                due = pipeline::sleep_until_wall(clock.as_ref(), at, cancel) => {
                    if !due {
                        return Ok(());
                    }
                }
                fired = drained => {
                    draining = None;
                    if !fired {
                        continue;
                    }
                    info!(spool.depth = self.spool_depth(), "The instance is draining: flushing metrics now.");
                }
            }
            sender.flush(cancel, true).await?;
        }
    }

    fn publish_view(&self, pass: &Pass, ts: i64) {
        let c = &self.inner.settings.catalogue;
        let host = pass
            .memory
            .as_ref()
            .map(|m| {
                let mut v = catalogue::cwagent_memory(m, c.formula);
                v.extend(catalogue::cwagent_swap(m, c.swap_when_absent));
                v
            })
            .unwrap_or_default();
        let disks = pass
            .filesystems
            .iter()
            .map(|(fs, st)| (fs.clone(), catalogue::cwagent_disk(st)))
            .collect();
        *self.inner.view.lock().unwrap_or_else(|p| p.into_inner()) = prometheus::HostView {
            host,
            disks,
            timestamp_ms: ts,
        };
    }

    fn health_samples(&self) -> Vec<Sample> {
        if !self.inner.settings.health_metrics {
            return Vec::new();
        }
        let mut out = Vec::new();
        if let Some(board) = &self.inner.sources.board
            && let Some(docker) = board.snapshot().get("docker")
        {
            out.push(Sample {
                name: catalogue::DOCKER_REACHABLE,
                unit: Unit::None,
                value: if docker.ok { 1.0 } else { 0.0 },
            });
        }
        if let Some(counts) = *self.inner.engine.borrow() {
            out.push(Sample {
                name: catalogue::RUNNING_TASKS,
                unit: Unit::Count,
                value: counts.running_tasks as f64,
            });
            out.push(Sample {
                name: catalogue::RUNNING_CONTAINERS,
                unit: Unit::Count,
                value: counts.running_containers as f64,
            });
        }
        out.push(Sample {
            name: catalogue::AGENT_RESTARTS,
            unit: Unit::Count,
            value: self.inner.starts.saturating_sub(1) as f64,
        });
        out
    }
}

fn pipeline_lock(spool: &Mutex<Spool>) -> std::sync::MutexGuard<'_, Spool> {
    spool.lock().unwrap_or_else(|p| p.into_inner())
}

async fn pause(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

#[cfg(test)]
mod tests;
