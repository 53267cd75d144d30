//! The subsystem end to end with fakes and paused time: identity wait, outage and restart,
//! shutdown flush, health metrics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32};

use async_trait::async_trait;

use super::*;
use crate::aws::{ApiError, ErrorKind};
use crate::config::Config;
use crate::imds;
use crate::metrics::cloudwatch::{ErrorClass, FakePublisher, PublishError};
use crate::metrics::datum::{Datum, Value};
use crate::metrics::pipeline::TokioClock;

const T0: i64 = 1_800_000_000_000;

struct FakeImds(HashMap<&'static str, &'static str>);

#[async_trait]
impl InstanceMetadata for FakeImds {
    async fn get(&self, path: &str) -> Result<Option<String>, imds::Error> {
        Ok(self.0.get(path).map(|v| (*v).to_owned()))
    }
}

fn imds_fake() -> Arc<FakeImds> {
    Arc::new(FakeImds(HashMap::from([
        ("latest/meta-data/instance-id", "i-0aaaabbbbccccdddd"),
        ("latest/meta-data/ami-id", "ami-760aaa0f"),
        ("latest/meta-data/instance-type", "m5.large"),
    ])))
}

/// Fails until `healthy` is set, then answers `group`.
struct FlakyAsg {
    healthy: AtomicBool,
    calls: AtomicU32,
    group: Option<String>,
}

#[async_trait]
impl AsgLookup for FlakyAsg {
    async fn group_of(&self, _: &str) -> Result<Option<String>, ApiError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.healthy.load(Ordering::Relaxed) {
            Ok(self.group.clone())
        } else {
            Err(ApiError {
                operation: "DescribeAutoScalingInstances",
                kind: ErrorKind::Transport,
                code: None,
                message: "connection refused".into(),
            })
        }
    }
}

fn asg(group: Option<&str>, healthy: bool) -> Arc<FlakyAsg> {
    Arc::new(FlakyAsg {
        healthy: AtomicBool::new(healthy),
        calls: AtomicU32::new(0),
        group: group.map(str::to_owned),
    })
}

struct World {
    dir: tempfile::TempDir,
    proc_root: tempfile::TempDir,
    fake: Arc<FakePublisher>,
    /// One clock for every "process", so time goes on across restarts.
    clock: Arc<TokioClock>,
}

impl World {
    fn new() -> World {
        let proc_root = tempfile::tempdir().unwrap();
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/proc/meminfo.spec"),
            proc_root.path().join("meminfo"),
        )
        .unwrap();
        World {
            dir: tempfile::tempdir().unwrap(),
            proc_root,
            fake: Arc::new(FakePublisher::new()),
            clock: Arc::new(TokioClock::starting_at(T0)),
        }
    }

    /// Memory metrics only (no disks: statvfs of the test machine is not a fixture), 60 s.
    fn settings(&self) -> Settings {
        let mut s = Settings::from_config(&Config::default().metrics, Some("prod"));
        s.read.selection = None;
        s.identity_wait = Duration::from_secs(120);
        s
    }

    fn metrics(
        &self,
        settings: Settings,
        asg: Arc<dyn AsgLookup>,
        board: Option<health::Board>,
    ) -> Metrics {
        let store = Store::open(&self.dir.path().join("state.redb")).unwrap();
        Metrics::new(
            settings,
            Sources {
                imds: imds_fake(),
                asg,
                publisher: self.fake.clone(),
                board,
                store,
                clock: self.clock.clone(),
            },
        )
        .unwrap()
        .with_proc_root(self.proc_root.path().to_owned())
    }
}

fn spawn(
    m: &Metrics,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), Error>>,
) {
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let m = m.clone();
        let c = cancel.clone();
        async move { m.run(c).await }
    });
    (cancel, task)
}

fn has_dim(d: &Datum, name: &str) -> bool {
    d.dimensions.iter().any(|(n, _)| n == name)
}

/// Samples are held while the ASG lookup fails (up to identity_wait), then published without
/// the dimension, and the dimension is added once a later lookup finds the group.
#[tokio::test(start_paused = true)]
async fn identity_wait_holds_samples_then_publishes_and_adds_the_asg_later() {
    let w = World::new();
    let lookup = asg(Some("web-asg"), false);
    let m = w.metrics(w.settings(), lookup.clone(), None);
    let (cancel, task) = spawn(&m);

    tokio::time::sleep(Duration::from_secs(100)).await;
    assert!(
        w.fake.calls().is_empty(),
        "nothing is published during the wait"
    );
    // The wait ends at 120 s; the pass at 180 s spools the held ones; its flush is before 240 s.
    tokio::time::sleep(Duration::from_secs(160)).await;
    let first = w.fake.accepted();
    assert!(!first.is_empty(), "published after the wait");
    assert!(
        first
            .iter()
            .all(|(_, d)| !has_dim(d, "AutoScalingGroupName"))
    );
    // The pass taken during the wait (at T0 + 60 s) was held, not lost.
    assert!(first.iter().any(|(_, d)| d.timestamp_ms == T0 + 60_000));

    lookup.healthy.store(true, Ordering::Relaxed);
    tokio::time::sleep(ASG_RETRY + Duration::from_secs(130)).await;
    let later = w.fake.accepted();
    let with_asg: Vec<_> = later
        .iter()
        .filter(|(_, d)| has_dim(d, "AutoScalingGroupName"))
        .collect();
    assert!(!with_asg.is_empty(), "ASG added after a retry");
    assert!(with_asg.iter().all(|(_, d)| d.dimensions.len() == 4));
    cancel.cancel();
    task.await.unwrap().unwrap();
}

/// A definite answer ends the wait at once.
#[tokio::test(start_paused = true)]
async fn a_definite_asg_answer_needs_no_wait() {
    let w = World::new();
    let m = w.metrics(w.settings(), asg(Some("web-asg"), true), None);
    let (cancel, task) = spawn(&m);
    tokio::time::sleep(Duration::from_secs(130)).await;
    cancel.cancel();
    task.await.unwrap().unwrap();
    let acc = w.fake.accepted();
    let mem: Vec<_> = acc
        .iter()
        .filter(|(_, d)| d.name == "mem_used_percent")
        .collect();
    // Two passes (T0+60 s, T0+120 s) × (host set + InstanceId rollup).
    assert_eq!(mem.len(), 4, "{mem:#?}");
    assert!(mem.iter().any(|(_, d)| d.dimensions.len() == 4));
    assert!(mem.iter().any(|(_, d)| d.dimensions.len() == 1));
    assert!(mem.iter().all(|(_, d)| d.value == Value::Single(42.5)));
    assert!(acc.iter().all(|(ns, _)| ns == "CWAgent"));
    assert!(acc.iter().all(|(_, d)| d.timestamp_ms % 60_000 == 0));
    assert!(
        !acc.iter().any(|(_, d)| d.name.starts_with("ecs_hostd")),
        "health metrics are off by default"
    );
}

/// A wall clock that runs 0.1 % slow against tokio's (monotonic) timer, as under NTP slewing.
struct SlowWall {
    start_ms: i64,
    start: tokio::time::Instant,
}

impl Clock for SlowWall {
    fn now_ms(&self) -> i64 {
        self.start_ms + (self.start.elapsed().as_millis() as i64) * 999 / 1000
    }
}

/// Each sleep ends a little before the wall clock reaches its slot; every slot is still
/// collected once, with one datum per series and timestamp.
#[tokio::test(start_paused = true)]
async fn a_slow_wall_clock_never_collects_a_slot_twice() {
    let w = World::new();
    let store = Store::open(&w.dir.path().join("state.redb")).unwrap();
    let m = Metrics::new(
        w.settings(),
        Sources {
            imds: imds_fake(),
            asg: asg(Some("web-asg"), true),
            publisher: w.fake.clone(),
            board: None,
            store,
            clock: Arc::new(SlowWall {
                start_ms: T0,
                start: tokio::time::Instant::now(),
            }),
        },
    )
    .unwrap()
    .with_proc_root(w.proc_root.path().to_owned());
    let (cancel, task) = spawn(&m);
    tokio::time::sleep(Duration::from_secs(5 * 60 + 30)).await;
    cancel.cancel();
    task.await.unwrap().unwrap();
    let mut stamps: Vec<i64> = w
        .fake
        .accepted()
        .iter()
        .filter(|(_, d)| d.name == "mem_used_percent" && d.dimensions.len() == 4)
        .map(|(_, d)| d.timestamp_ms)
        .collect();
    stamps.sort();
    let expected: Vec<i64> = (1..=5).map(|k| T0 + k * 60_000).collect();
    assert_eq!(stamps, expected, "each minute once");
}

/// CloudWatch refuses for several intervals and the process "dies" in between (the subsystem is
/// stopped without delivering and rebuilt on the same store); after recovery every sample
/// arrives exactly once with its original timestamp.
#[tokio::test(start_paused = true)]
async fn outage_and_restart_lose_nothing_and_duplicate_nothing() {
    let w = World::new();
    w.fake.set_down(true);
    let mut settings = w.settings();
    settings.shutdown_flush = Duration::ZERO;
    {
        let m = w.metrics(settings.clone(), asg(None, true), None);
        let (cancel, task) = spawn(&m);
        tokio::time::sleep(Duration::from_secs(5 * 60 + 30)).await;
        assert_eq!(
            m.spool_depth(),
            5 * 3,
            "five passes of three datums spooled"
        );
        cancel.cancel();
        task.await.unwrap().unwrap();
    }
    assert!(w.fake.accepted().is_empty());
    settings.shutdown_flush = Duration::from_secs(5);
    let m = w.metrics(settings, asg(None, true), None);
    assert_eq!(m.spool_depth(), 15, "the spool survived the restart");
    let (cancel, task) = spawn(&m);
    tokio::time::sleep(Duration::from_secs(3 * 60)).await;
    assert!(w.fake.accepted().is_empty());
    w.fake.set_down(false);
    tokio::time::sleep(Duration::from_secs(3 * 60)).await;
    cancel.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(m.spool_depth(), 0);

    let accepted = w.fake.accepted();
    let mut seen: HashMap<(String, usize, i64), u32> = HashMap::new();
    for (_, d) in &accepted {
        *seen
            .entry((d.name.clone(), d.dimensions.len(), d.timestamp_ms))
            .or_default() += 1;
    }
    assert!(seen.values().all(|n| *n == 1), "no duplicates: {seen:?}");
    let mut stamps: Vec<i64> = accepted.iter().map(|(_, d)| d.timestamp_ms).collect();
    stamps.sort();
    stamps.dedup();
    // Every minute from T0+1m to the last pass before the stop, none missing.
    let expected: Vec<i64> = (1..=stamps.len() as i64).map(|k| T0 + k * 60_000).collect();
    assert_eq!(stamps, expected);
    assert!(stamps.len() >= 5 + 5, "{}", stamps.len());
    assert_eq!(accepted.len(), stamps.len() * 3);
    let c = m.counters();
    assert!(c.failed(ErrorClass::Transient) > 0);
    assert_eq!(c.dropped_overflow.load(Ordering::Relaxed), 0);
}

/// Health metrics when enabled: Docker reachability from the board, engine counts when the
/// engine feeds them, agent restarts from the store; with InstanceId only.
#[tokio::test(start_paused = true)]
async fn health_metrics_when_enabled() {
    let w = World::new();
    let board = health::Board::new();
    board.set("docker", false, "not answering");
    let mut settings = w.settings();
    settings.health_metrics = true;
    // A previous start on this data directory.
    spool::record_start(&Store::open(&w.dir.path().join("state.redb")).unwrap()).unwrap();
    let m = w.metrics(settings, asg(None, true), Some(board));
    m.engine_counts().send_replace(Some(EngineCounts {
        running_tasks: 3,
        running_containers: 5,
    }));
    let (cancel, task) = spawn(&m);
    tokio::time::sleep(Duration::from_secs(130)).await;
    cancel.cancel();
    task.await.unwrap().unwrap();
    let acc = w.fake.accepted();
    let get = |name: &str| {
        acc.iter()
            .find(|(_, d)| d.name == name)
            .map(|(_, d)| (d.value.clone(), d.dimensions.clone()))
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    assert_eq!(get(catalogue::DOCKER_REACHABLE).0, Value::Single(0.0));
    assert_eq!(get(catalogue::RUNNING_TASKS).0, Value::Single(3.0));
    assert_eq!(get(catalogue::RUNNING_CONTAINERS).0, Value::Single(5.0));
    let (restarts, dims) = get(catalogue::AGENT_RESTARTS);
    assert_eq!(restarts, Value::Single(1.0));
    assert_eq!(
        dims,
        vec![("InstanceId".to_owned(), "i-0aaaabbbbccccdddd".to_owned())]
    );
    let mut text = String::new();
    m.section().render(&mut text);
    assert!(text.contains("ecs_hostd_mem_used_percent 42.5"), "{text}");
    assert!(text.contains("ecs_hostd_agent_starts_total 2"), "{text}");
}

/// The final flush on shutdown is bounded by its deadline even when CloudWatch hangs.
#[tokio::test(start_paused = true)]
async fn shutdown_flush_respects_its_deadline() {
    struct Hang;
    #[async_trait]
    impl MetricsPublisher for Hang {
        async fn put(&self, _: &str, _: &[Datum]) -> Result<(), PublishError> {
            std::future::pending().await
        }
    }
    let w = World::new();
    let store = Store::open(&w.dir.path().join("state.redb")).unwrap();
    let m = Metrics::new(
        w.settings(),
        Sources {
            imds: imds_fake(),
            asg: asg(None, true),
            publisher: Arc::new(Hang),
            board: None,
            store,
            clock: Arc::new(TokioClock::starting_at(T0)),
        },
    )
    .unwrap()
    .with_proc_root(w.proc_root.path().to_owned());
    let (cancel, task) = spawn(&m);
    tokio::time::sleep(Duration::from_secs(70)).await;
    let stopped = tokio::time::Instant::now();
    cancel.cancel();
    task.await.unwrap().unwrap();
    let took = stopped.elapsed();
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(6),
        "{took:?}"
    );
    assert_eq!(m.spool_depth(), 3, "the pass stays spooled");
}

/// metrics.md §12 test 5: datums that break the limits (here a non-ASCII dimension value) are
/// dropped and counted before spooling; their valid siblings are kept.
#[tokio::test(start_paused = true)]
async fn invalid_datums_are_dropped_and_counted_before_spooling() {
    let w = World::new();
    let m = w.metrics(w.settings(), asg(None, true), None);
    let pass = Pass {
        memory: Some(collect::parse_meminfo(
            &std::fs::read_to_string(w.proc_root.path().join("meminfo")).unwrap(),
        )),
        ..Pass::default()
    };
    let id = Identity {
        instance_id: "i-0aaaabbbbccccdddd".into(),
        image_id: "ami-760aaa0f".into(),
        instance_type: "m5.l\u{e4}rge".into(),
        ..Identity::default()
    };
    m.spool_pass(T0, &pass, &[], &id).unwrap();
    // mem_used_percent and mem_available_percent with InstanceType are invalid; the
    // InstanceId-only rollup of mem_used_percent is valid.
    assert_eq!(m.counters().dropped_invalid.load(Ordering::Relaxed), 2);
    assert_eq!(m.spool_depth(), 1);
}

/// packaging spec §6.4: when the instance starts draining the pipeline flushes at once, not at
/// its phase; once per process.
#[tokio::test(start_paused = true)]
async fn draining_flushes_at_once() {
    let w = World::new();
    let m = w
        .metrics(w.settings(), asg(None, true), None)
        .with_phase(Duration::from_secs(30));
    let (cancel, task) = spawn(&m);
    // The first collection is at 60 s; this process flushes at 90 s.
    tokio::time::sleep(Duration::from_secs(62)).await;
    let depth = m.spool_depth();
    assert!(depth > 0, "a pass is spooled");
    assert!(
        w.fake.accepted().is_empty(),
        "nothing sent before the phase"
    );
    m.draining().send_replace(true);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(m.spool_depth(), 0, "flushed at once");
    assert_eq!(w.fake.accepted().len(), depth);
    // Once: the next pass (120 s) waits for the phase (150 s) again.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(m.spool_depth() > 0, "the 120 s pass waits for the phase");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(m.spool_depth(), 0);
    cancel.cancel();
    task.await.unwrap().unwrap();
}
