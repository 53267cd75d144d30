//! Batching limits, packing, scheduling, backoff and the sender's failure handling, on a real
//! spool with a fake publisher under paused time.

use std::sync::Arc;

use async_trait::async_trait;

use super::*;
use crate::metrics::catalogue::Unit;
use crate::metrics::cloudwatch::FakePublisher;
use crate::metrics::datum::MAX_DIMENSIONS;
use crate::store::Store;

const T0: i64 = 1_800_000_000_000;

fn datum(name: &str, ts: i64, dims: usize, value_len: usize) -> Datum {
    Datum::new(
        name,
        Unit::Percent,
        1.5,
        ts,
        (0..dims)
            .map(|i| (format!("Dim{i:02}"), "v".repeat(value_len)))
            .collect(),
        false,
    )
}

fn items(n: usize, dims: usize, value_len: usize) -> Vec<(DatumRef, Datum)> {
    (0..n)
        .map(|i| (("k".to_owned(), i as u32), datum("m", T0, dims, value_len)))
        .collect()
}

fn check_limits(reqs: &[Request]) {
    for r in reqs {
        assert!(!r.datums.is_empty());
        assert!(
            r.datums.len() <= MAX_DATUMS_PER_REQUEST,
            "{}",
            r.datums.len()
        );
        assert!(
            r.estimated_size() <= MAX_REQUEST_BYTES,
            "{}",
            r.estimated_size()
        );
        for d in &r.datums {
            assert!(d.dimensions.len() <= MAX_DIMENSIONS);
            if let Value::Packed { values, counts } = &d.value {
                assert!(values.len() <= MAX_VALUES && values.len() == counts.len());
            }
            assert_eq!(d.validate(T0, 86_400_000), Ok(()));
        }
    }
}

/// 3,000 small datums: three full requests by count.
#[test]
fn three_thousand_datums_split_by_count() {
    let reqs = batch("CWAgent", items(3_000, 4, 20), None);
    assert_eq!(
        reqs.iter().map(|r| r.datums.len()).collect::<Vec<_>>(),
        [1000, 1000, 1000]
    );
    check_limits(&reqs);
    let refs: usize = reqs.iter().map(|r| r.refs.len()).sum();
    assert_eq!(refs, 3_000, "every datum in exactly one request");
    // metrics.md §12 test 5: 1,001 datums become 2 requests.
    assert_eq!(batch("CWAgent", items(1_001, 4, 20), None).len(), 2);
}

/// 3,000 datums with 30 dimensions of 1,000-character values: split by the byte cap.
#[test]
fn three_thousand_large_datums_split_by_bytes() {
    let reqs = batch("CWAgent", items(3_000, 30, 1_000), None);
    check_limits(&reqs);
    let per = reqs[0].datums.len();
    assert!(
        per < 100,
        "{per} datums of ~31 kB each cannot share one request"
    );
    assert_eq!(reqs.iter().map(|r| r.datums.len()).sum::<usize>(), 3_000);
    // Greedy: every request but the last is full (adding one more would break the cap).
    let one = reqs[0].datums[0].estimated_size();
    for r in &reqs[..reqs.len() - 1] {
        assert!(r.estimated_size() + one > MAX_REQUEST_BYTES);
    }
}

/// Packing puts samples of one series and period into Values/Counts, never beyond 150 values.
#[test]
fn packing_respects_values_limit_and_keeps_every_sample() {
    let mut its = Vec::new();
    for i in 0..400u32 {
        let mut d = datum("mem_used_percent", T0 + (i as i64 % 6) * 10_000, 2, 8);
        // 200 distinct values, each seen twice.
        d.value = Value::Single((i % 200) as f64);
        its.push((("k".to_owned(), i), d));
    }
    its.push((("k".to_owned(), 999), datum("other", T0, 2, 8)));
    let reqs = batch("CWAgent", its, Some(60_000));
    check_limits(&reqs);
    let packed: Vec<&Datum> = reqs[0]
        .datums
        .iter()
        .filter(|d| d.name == "mem_used_percent")
        .collect();
    assert_eq!(packed.len(), 2, "200 distinct values need two datums");
    let total: f64 = packed
        .iter()
        .map(|d| match &d.value {
            Value::Packed { counts, .. } => counts.iter().sum::<f64>(),
            Value::Single(_) => 1.0,
        })
        .sum();
    assert_eq!(total, 400.0);
    assert!(packed.iter().all(|d| d.timestamp_ms % 60_000 == 0));
    assert_eq!(reqs[0].refs.iter().map(Vec::len).sum::<usize>(), 401);
}

#[test]
fn schedule_aligns_and_phase_is_uniform() {
    assert_eq!(next_aligned(120_001, 60_000), 180_000);
    assert_eq!(next_aligned(120_000, 60_000), 180_000);
    assert_eq!(next_flush(120_000, 60_000, 7_000), 127_000);
    assert_eq!(next_flush(127_000, 60_000, 7_000), 187_000);
    // Uniform over the interval: 10 buckets of 10,000 draws each hold about 1,000.
    let mut buckets = [0u32; 10];
    for _ in 0..10_000 {
        let p = draw_phase(Duration::from_secs(60));
        assert!(p < Duration::from_secs(60));
        buckets[(p.as_millis() / 6_000) as usize] += 1;
    }
    assert!(
        buckets.iter().all(|b| (800..1200).contains(b)),
        "{buckets:?}"
    );
}

#[test]
fn full_jitter_grows_caps_and_resets() {
    let mut b = FullJitter::new(BACKOFF_BASE, BACKOFF_CAP);
    let ceilings: Vec<u64> = (0..8)
        .map(|_| {
            let c = b.ceiling();
            assert!(b.next_delay() <= c);
            c.as_secs()
        })
        .collect();
    assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60]);
    b.reset();
    assert_eq!(b.ceiling(), BACKOFF_BASE);
    let cap = b.at_cap();
    assert!(cap >= BACKOFF_CAP / 2 && cap <= BACKOFF_CAP);
}

struct Harness {
    _dir: tempfile::TempDir,
    spool: Arc<Mutex<Spool>>,
    counters: Arc<Counters>,
    fake: Arc<FakePublisher>,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        Harness {
            _dir: dir,
            spool: Arc::new(Mutex::new(Spool::open(store, 100_000, 86_400_000).unwrap())),
            counters: Arc::default(),
            fake: Arc::new(FakePublisher::new()),
        }
    }

    fn sender_with(&self, publisher: Arc<dyn MetricsPublisher>) -> Sender {
        Sender::new(
            publisher,
            self.spool.clone(),
            self.counters.clone(),
            Arc::new(TokioClock::starting_at(T0 + 60_000)),
            None,
        )
    }

    fn sender(&self) -> Sender {
        self.sender_with(self.fake.clone())
    }

    fn push(&self, ns: &str, ts: i64, names: &[&str]) {
        let datums = names.iter().map(|n| datum(n, ts, 1, 4)).collect();
        self.spool.lock().unwrap().push(ns, ts, datums).unwrap();
    }

    fn depth(&self) -> usize {
        self.spool.lock().unwrap().depth()
    }
}

/// An invalid datum is isolated by bisection and dropped; its batch-mates are all delivered.
#[tokio::test(start_paused = true)]
async fn invalid_datum_is_dropped_and_batch_mates_are_kept() {
    let h = Harness::new();
    let names: Vec<String> = (0..10).map(|i| format!("ok{i}")).collect();
    let mut all: Vec<&str> = names.iter().map(String::as_str).collect();
    all.insert(6, "bad");
    h.push("CWAgent", T0, &all);
    h.fake.poison("bad");
    let out = h
        .sender()
        .flush(&CancellationToken::new(), true)
        .await
        .unwrap();
    assert_eq!(out, Flushed::Drained);
    let accepted: Vec<String> = h.fake.accepted().into_iter().map(|(_, d)| d.name).collect();
    let mut sorted = accepted.clone();
    sorted.sort();
    assert_eq!(sorted, {
        let mut n = names.clone();
        n.sort();
        n
    });
    assert_eq!(accepted.len(), 10, "each batch-mate exactly once");
    assert_eq!(h.counters.dropped_invalid.load(Ordering::Relaxed), 1);
    assert!(h.counters.failed(ErrorClass::Invalid) >= 1);
    assert_eq!(h.depth(), 0);
    // Bisection costs O(log n) requests, not one per datum.
    assert!(
        h.fake.calls().len() <= 2 * 4 + 2,
        "{}",
        h.fake.calls().len()
    );
}

/// Transient failures back off exponentially (full jitter, capped), the batch is kept, the
/// counter resets after a success.
#[tokio::test(start_paused = true)]
async fn transient_failures_back_off_and_keep_the_batch() {
    let h = Harness::new();
    h.push("CWAgent", T0, &["a", "b"]);
    let unavailable = || {
        Err(PublishError::new(
            ErrorClass::Transient,
            "ServiceUnavailable",
            "503",
        ))
    };
    let throttled = || {
        Err(PublishError::new(
            ErrorClass::Throttled,
            "Throttling",
            "slow",
        ))
    };
    h.fake
        .script([unavailable(), throttled(), unavailable(), unavailable()]);
    let started = Instant::now();
    let mut sender = h.sender();
    assert_eq!(
        sender.flush(&CancellationToken::new(), true).await.unwrap(),
        Flushed::Drained
    );
    let waited = started.elapsed();
    assert!(waited <= Duration::from_secs(1 + 2 + 4 + 8), "{waited:?}");
    assert_eq!(h.fake.calls().len(), 5);
    assert!(
        h.fake.calls().iter().all(|(_, d)| d.len() == 2),
        "the same batch each time"
    );
    assert_eq!(h.fake.accepted().len(), 2);
    assert_eq!(h.counters.failed(ErrorClass::Transient), 3);
    assert_eq!(h.counters.failed(ErrorClass::Throttled), 1);
    assert_eq!(
        sender.backoff.ceiling(),
        BACKOFF_BASE,
        "reset after success"
    );
}

/// Auth errors keep the data and wait at the cap.
#[tokio::test(start_paused = true)]
async fn auth_failures_retry_at_the_cap() {
    let h = Harness::new();
    h.push("CWAgent", T0, &["a"]);
    h.fake.script([Err(PublishError::new(
        ErrorClass::Auth,
        "AccessDenied",
        "no",
    ))]);
    let started = Instant::now();
    h.sender()
        .flush(&CancellationToken::new(), true)
        .await
        .unwrap();
    assert!(started.elapsed() >= BACKOFF_CAP / 2);
    assert_eq!(h.fake.accepted().len(), 1);
    assert_eq!(h.counters.failed(ErrorClass::Auth), 1);
}

/// Fresh data first, then the backlog oldest first; namespaces never share a request; at most
/// one request per second while draining.
#[tokio::test(start_paused = true)]
async fn newest_first_then_backlog_and_one_namespace_per_request() {
    let h = Harness::new();
    h.push("CWAgent", T0, &["t0"]);
    h.push("System/Linux", T0, &["L0"]);
    h.push("CWAgent", T0 + 60_000, &["t1"]);
    h.push("CWAgent", T0 + 120_000, &["t2"]);
    h.push("System/Linux", T0 + 120_000, &["L2"]);
    let started = Instant::now();
    h.sender()
        .flush(&CancellationToken::new(), true)
        .await
        .unwrap();
    let calls = h.fake.calls();
    assert_eq!(calls.len(), 2);
    let names = |i: usize| {
        calls[i]
            .1
            .iter()
            .map(|d| d.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(calls[0].0, "CWAgent");
    assert_eq!(names(0), ["t2", "t0", "t1"]);
    assert_eq!(calls[1].0, "System/Linux");
    assert_eq!(names(1), ["L2", "L0"]);
    assert!(started.elapsed() >= DRAIN_PACE);
    // Original timestamps are kept.
    assert_eq!(calls[0].1[1].timestamp_ms, T0);
}

struct Hang;

#[async_trait]
impl MetricsPublisher for Hang {
    async fn put(&self, _: &str, _: &[Datum]) -> Result<(), PublishError> {
        std::future::pending().await
    }
}

/// Cancellation stops a flush at once and keeps the data; the single-attempt mode gives up on
/// the first failure.
#[tokio::test(start_paused = true)]
async fn cancelled_and_single_attempt_flushes_keep_the_data() {
    let h = Harness::new();
    h.push("CWAgent", T0, &["a"]);
    let stop = CancellationToken::new();
    let mut s = h.sender_with(Arc::new(Hang));
    let timed = tokio::time::timeout(Duration::from_secs(5), s.flush(&stop, false)).await;
    assert!(
        timed.is_err(),
        "a hung request is cut by the caller's deadline"
    );
    stop.cancel();
    assert_eq!(s.flush(&stop, true).await.unwrap(), Flushed::Interrupted);
    h.fake.script([Err(PublishError::new(
        ErrorClass::Transient,
        "InternalFailure",
        "500",
    ))]);
    let started = Instant::now();
    assert_eq!(
        h.sender()
            .flush(&CancellationToken::new(), false)
            .await
            .unwrap(),
        Flushed::Interrupted
    );
    assert!(started.elapsed() < Duration::from_millis(1));
    assert_eq!(h.depth(), 1);
}

/// The age cap is enforced before each flush.
#[tokio::test(start_paused = true)]
async fn expired_datums_are_dropped_before_sending() {
    let h = Harness::new();
    h.push("CWAgent", T0 - 2 * 86_400_000, &["old"]);
    h.push("CWAgent", T0, &["new"]);
    h.sender()
        .flush(&CancellationToken::new(), true)
        .await
        .unwrap();
    let sent: Vec<String> = h.fake.accepted().into_iter().map(|(_, d)| d.name).collect();
    assert_eq!(sent, ["new"]);
    assert_eq!(h.counters.dropped_age.load(Ordering::Relaxed), 1);
}
