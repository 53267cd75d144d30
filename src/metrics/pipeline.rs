//! Delivery: from the spool to PutMetricData (metrics.md §7.2–§7.4).
//!
//! - Schedule: samples on wall-clock multiples of the collection interval; flushes at a random
//!   phase inside the flush interval, drawn once per process so a fleet spreads its requests.
//! - Batching: one namespace per request, at most 1,000 datums and an estimated 900,000 bytes,
//!   Values/Counts (at most 150 per datum) only when `pack_samples` is on. Never StatisticSets.
//! - Order: per namespace, the newest pass first, then the backlog oldest first; one request in
//!   flight; at most one request per second while a backlog drains.
//! - Failures: transient and throttled requests are retried with capped exponential backoff with
//!   full jitter (1 s, ×2, 60 s cap; reset on success); auth/config failures keep the data and
//!   retry at the cap, logged at most once per 5 minutes; an invalid request is bisected until
//!   the bad datums are isolated, which are dropped with a log line while their batch-mates are
//!   sent.
//!
//! A datum leaves the spool only when CloudWatch accepted it or it was proven invalid. This
//! module never collects and never computes values.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::RngExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::cloudwatch::{ErrorClass, MetricsPublisher, PublishError};
use super::datum::{
    Datum, MAX_DATUMS_PER_REQUEST, MAX_REQUEST_BYTES, MAX_VALUES, REQUEST_OVERHEAD, Value,
};
use super::spool::{self, DatumRef, Spool};

/// Backoff between delivery attempts: base.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Backoff cap.
pub const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// Pause between requests while a backlog drains.
pub const DRAIN_PACE: Duration = Duration::from_secs(1);
/// Auth errors are logged at most this often.
const AUTH_LOG_EVERY: Duration = Duration::from_secs(300);
/// The drop/failure summary is logged at most this often.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Wall-clock time in Unix milliseconds, behind a seam so paused-time tests can drive it.
pub trait Clock: Send + Sync {
    /// Now.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }
}

/// A wall clock that follows tokio's clock from a fixed start (so `tokio::time::pause()` moves
/// it).
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    start_ms: i64,
    start: Instant,
}

impl TokioClock {
    /// Starts at `start_ms` now.
    pub fn starting_at(start_ms: i64) -> TokioClock {
        TokioClock {
            start_ms,
            start: Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> i64 {
        self.start_ms + self.start.elapsed().as_millis() as i64
    }
}

/// The next wall-clock multiple of `interval_ms` strictly after `now_ms`.
pub fn next_aligned(now_ms: i64, interval_ms: i64) -> i64 {
    let i = interval_ms.max(1);
    (now_ms.div_euclid(i) + 1) * i
}

/// The next flush time strictly after `now_ms`: `k × interval + phase`.
pub fn next_flush(now_ms: i64, interval_ms: i64, phase_ms: i64) -> i64 {
    next_aligned(now_ms - phase_ms, interval_ms) + phase_ms
}

/// The flush phase of this process: uniform over the interval.
pub fn draw_phase(interval: Duration) -> Duration {
    if interval.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_millis(rand::rng().random_range(0..interval.as_millis().max(1) as u64))
}

/// Sleeps until the wall clock reaches `target_ms`; `false` if cancelled first.
pub async fn sleep_until_wall(
    clock: &dyn Clock,
    target_ms: i64,
    cancel: &CancellationToken,
) -> bool {
    let wait = (target_ms - clock.now_ms()).max(0) as u64;
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(Duration::from_millis(wait)) => true,
    }
}

/// Exponential backoff with full jitter: wait uniformly in `[0, min(cap, base × 2^n)]`.
#[derive(Clone, Debug)]
pub struct FullJitter {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl FullJitter {
    /// Base 1 s, cap 60 s (metrics.md §7.3).
    pub fn new(base: Duration, cap: Duration) -> FullJitter {
        FullJitter {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The ceiling of the next wait (before jitter).
    pub fn ceiling(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(30));
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next wait; advances.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        if ceiling.is_zero() {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(rand::rng().random_range(0.0..=ceiling.as_secs_f64()))
    }

    /// A wait at the cap (auth failures), jittered in its upper half.
    pub fn at_cap(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        let cap = self.cap.as_secs_f64();
        Duration::from_secs_f64(rand::rng().random_range(cap / 2.0..=cap))
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Pipeline counters, shared with `/metrics` (cumulative for this process).
#[derive(Debug, Default)]
pub struct Counters {
    /// Accepted PutMetricData requests.
    pub requests: AtomicU64,
    /// Datums CloudWatch accepted (spooled datums; packed ones count each sample).
    pub datums_sent: AtomicU64,
    /// Estimated bytes of accepted requests.
    pub bytes_sent: AtomicU64,
    /// Failed requests by class: transient, throttled, auth, invalid.
    pub failed: [AtomicU64; 4],
    /// Datums dropped as invalid (locally or by the service).
    pub dropped_invalid: AtomicU64,
    /// Datums dropped because the spool was full.
    pub dropped_overflow: AtomicU64,
    /// Datums dropped because they were older than the age cap.
    pub dropped_age: AtomicU64,
    /// Datums waiting in the spool.
    pub spool_depth: AtomicU64,
    /// Unix ms of the last accepted request (0 = never).
    pub last_success_ms: AtomicI64,
    /// Collection passes taken.
    pub passes: AtomicU64,
}

impl Counters {
    fn class_index(c: ErrorClass) -> usize {
        match c {
            ErrorClass::Transient => 0,
            ErrorClass::Throttled => 1,
            ErrorClass::Auth => 2,
            ErrorClass::Invalid => 3,
        }
    }

    /// Failed requests of one class.
    pub fn failed(&self, c: ErrorClass) -> u64 {
        self.failed[Self::class_index(c)].load(Ordering::Relaxed)
    }

    fn fail(&self, c: ErrorClass) {
        self.failed[Self::class_index(c)].fetch_add(1, Ordering::Relaxed);
    }

    /// Mirrors the spool's depth and drop counts.
    pub fn observe_spool(&self, spool: &Spool) {
        self.spool_depth
            .store(spool.depth() as u64, Ordering::Relaxed);
        let d = spool.drops();
        self.dropped_overflow.store(d.overflow, Ordering::Relaxed);
        self.dropped_age.store(d.age, Ordering::Relaxed);
    }
}

/// One PutMetricData request: its wire datums and, per wire datum, the spooled datums it covers.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// Namespace.
    pub namespace: String,
    /// What is sent.
    pub datums: Vec<Datum>,
    /// `refs[i]`: spool entries behind `datums[i]`.
    pub refs: Vec<Vec<DatumRef>>,
}

impl Request {
    /// Estimated body size.
    pub fn estimated_size(&self) -> usize {
        REQUEST_OVERHEAD + self.datums.iter().map(Datum::estimated_size).sum::<usize>()
    }

    fn all_refs(&self) -> Vec<DatumRef> {
        self.refs.iter().flatten().cloned().collect()
    }

    fn samples(&self) -> u64 {
        self.refs.iter().map(|r| r.len() as u64).sum()
    }

    /// Splits in two halves (for isolating invalid datums).
    fn halves(self) -> (Request, Request) {
        let mid = self.datums.len() / 2;
        let mut datums = self.datums;
        let mut refs = self.refs;
        let right = Request {
            namespace: self.namespace.clone(),
            datums: datums.split_off(mid),
            refs: refs.split_off(mid),
        };
        (
            Request {
                namespace: self.namespace,
                datums,
                refs,
            },
            right,
        )
    }
}

/// Takes from the front of `items` (all of one namespace) the largest prefix that fits one
/// request, packs it when `pack_period_ms` is set, and returns it. `None` when `items` is empty.
pub fn take_request(
    namespace: &str,
    items: &mut Vec<(DatumRef, Datum)>,
    pack_period_ms: Option<i64>,
) -> Option<Request> {
    if items.is_empty() {
        return None;
    }
    let mut bytes = REQUEST_OVERHEAD;
    let mut n = 0;
    for (_, d) in items.iter() {
        let size = d.estimated_size();
        if n == MAX_DATUMS_PER_REQUEST || (n > 0 && bytes + size > MAX_REQUEST_BYTES) {
            break;
        }
        bytes += size;
        n += 1;
    }
    let chosen: Vec<(DatumRef, Datum)> = items.drain(..n).collect();
    let (datums, refs) = match pack_period_ms {
        Some(p) => pack(chosen, p),
        None => chosen.into_iter().map(|(r, d)| (d, vec![r])).unzip(),
    };
    Some(Request {
        namespace: namespace.to_owned(),
        datums,
        refs,
    })
}

/// Splits any number of datums of one namespace into requests (used by tests and the bench).
pub fn batch(
    namespace: &str,
    mut items: Vec<(DatumRef, Datum)>,
    pack_period_ms: Option<i64>,
) -> Vec<Request> {
    let mut out = Vec::new();
    while let Some(r) = take_request(namespace, &mut items, pack_period_ms) {
        out.push(r);
    }
    out
}

/// Packs samples of one series and period into Values/Counts datums (≤ 150 distinct values each),
/// stamped at the period start. Order of first appearance is kept.
pub fn pack(items: Vec<(DatumRef, Datum)>, period_ms: i64) -> (Vec<Datum>, Vec<Vec<DatumRef>>) {
    type Key = (
        String,
        Vec<(String, String)>,
        bool,
        i64,
        super::catalogue::Unit,
    );
    let mut order: Vec<Key> = Vec::new();
    let mut groups: HashMap<Key, Vec<(DatumRef, f64)>> = HashMap::new();
    let mut out_datums = Vec::new();
    let mut out_refs = Vec::new();
    for (r, d) in items {
        let Value::Single(v) = d.value else {
            out_datums.push(d);
            out_refs.push(vec![r]);
            continue;
        };
        let period = d.timestamp_ms.div_euclid(period_ms.max(1)) * period_ms.max(1);
        let key = (d.name, d.dimensions, d.high_resolution, period, d.unit);
        groups
            .entry(key.clone())
            .or_insert_with(|| {
                order.push(key);
                Vec::new()
            })
            .push((r, v));
    }
    for key in order {
        let samples = groups.remove(&key).unwrap_or_default();
        let (name, dims, hires, period, unit) = key;
        // Distinct values of the whole group with their counts and the samples behind them.
        let mut distinct: Vec<(f64, f64, Vec<DatumRef>)> = Vec::new();
        for (r, v) in samples {
            match distinct.iter_mut().find(|(x, _, _)| *x == v) {
                Some((_, count, refs)) => {
                    *count += 1.0;
                    refs.push(r);
                }
                None => distinct.push((v, 1.0, vec![r])),
            }
        }
        for chunk in distinct.chunks_mut(MAX_VALUES) {
            let value = match chunk {
                [(v, c, _)] if *c == 1.0 => Value::Single(*v),
                _ => Value::Packed {
                    values: chunk.iter().map(|(v, _, _)| *v).collect(),
                    counts: chunk.iter().map(|(_, c, _)| *c).collect(),
                },
            };
            out_datums.push(Datum {
                name: name.clone(),
                unit,
                value,
                timestamp_ms: period,
                dimensions: dims.clone(),
                high_resolution: hires,
            });
            out_refs.push(
                chunk
                    .iter_mut()
                    .flat_map(|(_, _, r)| std::mem::take(r))
                    .collect(),
            );
        }
    }
    (out_datums, out_refs)
}

/// Pipeline errors: only the spool can fail here (sending failures are handled inside).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Spool(#[from] spool::Error),
}

impl Error {
    /// Whether trying again later may help.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Spool(e) => e.is_retryable(),
        }
    }
}

/// How a flush ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything spooled when it started (and since) was delivered or dropped.
    Drained,
    /// Stopped by cancellation, or (in single-attempt mode) by the first failure.
    Interrupted,
}

/// Sends the spool's content, one request at a time.
pub struct Sender {
    publisher: Arc<dyn MetricsPublisher>,
    spool: Arc<Mutex<Spool>>,
    counters: Arc<Counters>,
    clock: Arc<dyn Clock>,
    pack_period_ms: Option<i64>,
    backoff: FullJitter,
    last_auth_log: Option<Instant>,
    last_summary: Option<Instant>,
    summarised: (u64, u64, u64, u64),
}

fn lock(spool: &Mutex<Spool>) -> std::sync::MutexGuard<'_, Spool> {
    // A panic while holding the lock cannot leave the spool inconsistent (every mutation is one
    // store transaction applied to the index afterwards), so a poisoned lock is still usable.
    spool.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sender {
    /// A sender over a shared spool.
    pub fn new(
        publisher: Arc<dyn MetricsPublisher>,
        spool: Arc<Mutex<Spool>>,
        counters: Arc<Counters>,
        clock: Arc<dyn Clock>,
        pack_period_ms: Option<i64>,
    ) -> Sender {
        Sender {
            publisher,
            spool,
            counters,
            clock,
            pack_period_ms,
            backoff: FullJitter::new(BACKOFF_BASE, BACKOFF_CAP),
            last_auth_log: None,
            last_summary: None,
            summarised: (0, 0, 0, 0),
        }
    }

    /// Sends everything spooled: per namespace, newest pass first then the backlog oldest first;
    /// re-plans until nothing is left. With `retry`, failures are retried with backoff until
    /// `stop` fires; without, the first transient failure ends the flush (the shutdown flush).
    pub async fn flush(&mut self, stop: &CancellationToken, retry: bool) -> Result<Flushed, Error> {
        let mut sent_any = false;
        loop {
            let order = {
                let mut s = lock(&self.spool);
                s.expire(self.clock.now_ms())?;
                self.counters.observe_spool(&s);
                let order = s.flush_order();
                let mut by_ns: Vec<(String, Vec<String>)> = Vec::new();
                for k in order {
                    let ns = s.namespace_of(&k).unwrap_or_default().to_owned();
                    match by_ns.iter_mut().find(|(n, _)| *n == ns) {
                        Some((_, keys)) => keys.push(k),
                        None => by_ns.push((ns, vec![k])),
                    }
                }
                by_ns
            };
            if order.is_empty() {
                self.summary();
                return Ok(Flushed::Drained);
            }
            for (namespace, keys) in order {
                let mut keys = keys.into_iter();
                let mut items: Vec<(DatumRef, Datum)> = Vec::new();
                loop {
                    // Load lazily: only enough entries for the next request.
                    while items.len() < MAX_DATUMS_PER_REQUEST {
                        let Some(k) = keys.next() else { break };
                        let loaded = lock(&self.spool).load(&k)?;
                        items.extend(loaded.into_iter().map(|(id, d)| ((k.clone(), id), d)));
                    }
                    let Some(request) = take_request(&namespace, &mut items, self.pack_period_ms)
                    else {
                        break;
                    };
                    if sent_any && !pause(DRAIN_PACE, stop).await {
                        return Ok(Flushed::Interrupted);
                    }
                    sent_any = true;
                    if self.deliver(request, stop, retry).await? == Flushed::Interrupted {
                        self.summary();
                        return Ok(Flushed::Interrupted);
                    }
                }
            }
        }
    }

    /// Delivers one request, bisecting it on invalid-data refusals.
    async fn deliver(
        &mut self,
        request: Request,
        stop: &CancellationToken,
        retry: bool,
    ) -> Result<Flushed, Error> {
        let mut work = vec![request];
        let mut first = true;
        while let Some(req) = work.pop() {
            if !first && !pause(DRAIN_PACE, stop).await {
                return Ok(Flushed::Interrupted);
            }
            first = false;
            loop {
                let result = tokio::select! {
                    _ = stop.cancelled() => return Ok(Flushed::Interrupted),
                    r = self.publisher.put(&req.namespace, &req.datums) => r,
                };
                match result {
                    Ok(()) => {
                        self.accepted(&req)?;
                        break;
                    }
                    Err(e) if e.class == ErrorClass::Invalid => {
                        self.counters.fail(e.class);
                        if req.datums.len() == 1 {
                            self.drop_invalid(&req, &e)?;
                        } else {
                            debug!(datums = req.datums.len(), error = %e, "Request refused as invalid; splitting it to isolate the bad datums.");
                            let (left, right) = req.halves();
                            // Pop order: left first.
                            work.push(right);
                            work.push(left);
                        }
                        break;
                    }
                    Err(e) => {
                        self.counters.fail(e.class);
                        let wait = if e.class == ErrorClass::Auth {
                            self.log_auth(&e);
                            self.backoff.at_cap()
                        } else {
                            self.backoff.next_delay()
                        };
                        if !retry {
                            warn!(error = %e, "Final metrics flush failed; the rest stays spooled for the next start.");
                            return Ok(Flushed::Interrupted);
                        }
                        debug!(error = %e, wait = ?wait, "PutMetricData failed; retrying after backoff.");
                        self.summary();
                        if !pause(wait, stop).await {
                            return Ok(Flushed::Interrupted);
                        }
                    }
                }
            }
        }
        Ok(Flushed::Drained)
    }

    fn accepted(&mut self, req: &Request) -> Result<(), Error> {
        self.backoff.reset();
        let mut s = lock(&self.spool);
        s.remove(&req.all_refs())?;
        self.counters.observe_spool(&s);
        drop(s);
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        self.counters
            .datums_sent
            .fetch_add(req.samples(), Ordering::Relaxed);
        self.counters
            .bytes_sent
            .fetch_add(req.estimated_size() as u64, Ordering::Relaxed);
        self.counters
            .last_success_ms
            .store(self.clock.now_ms(), Ordering::Relaxed);
        Ok(())
    }

    fn drop_invalid(&mut self, req: &Request, e: &PublishError) -> Result<(), Error> {
        if let Some(d) = req.datums.first() {
            warn!(
                namespace = %req.namespace,
                metric = %d.name,
                dimensions = ?d.dimensions,
                timestamp_ms = d.timestamp_ms,
                error = %e,
                "CloudWatch refused a datum as invalid; it is dropped (its batch-mates were sent)."
            );
        }
        let mut s = lock(&self.spool);
        s.remove(&req.all_refs())?;
        self.counters.observe_spool(&s);
        self.counters
            .dropped_invalid
            .fetch_add(req.samples(), Ordering::Relaxed);
        Ok(())
    }

    fn log_auth(&mut self, e: &PublishError) {
        let now = Instant::now();
        if self
            .last_auth_log
            .is_none_or(|t| now.duration_since(t) >= AUTH_LOG_EVERY)
        {
            self.last_auth_log = Some(now);
            error!(error = %e, "CloudWatch refuses the agent's credentials or configuration; metrics stay spooled and are retried (check cloudwatch:PutMetricData permissions).");
        }
    }

    /// At most once a minute, while anything went wrong: drops and failures since the last
    /// summary, and the spool depth.
    fn summary(&mut self) {
        let c = &self.counters;
        let now = (
            c.dropped_invalid.load(Ordering::Relaxed),
            c.dropped_overflow.load(Ordering::Relaxed),
            c.dropped_age.load(Ordering::Relaxed),
            c.failed
                .iter()
                .map(|f| f.load(Ordering::Relaxed))
                .sum::<u64>(),
        );
        if now == self.summarised {
            return;
        }
        let t = Instant::now();
        if self
            .last_summary
            .is_some_and(|last| t.duration_since(last) < SUMMARY_EVERY)
        {
            return;
        }
        self.last_summary = Some(t);
        self.summarised = now;
        info!(
            dropped.invalid = now.0,
            dropped.overflow = now.1,
            dropped.age = now.2,
            requests.failed = now.3,
            spool.depth = c.spool_depth.load(Ordering::Relaxed),
            last_success_ms = c.last_success_ms.load(Ordering::Relaxed),
            "Metrics delivery summary."
        );
    }
}

/// Sleeps `d` unless `stop` fires first (`false`).
async fn pause(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

#[cfg(test)]
mod tests;
