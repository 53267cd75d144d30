//! The reporter with a scripted fake ECS and the real store, under a paused clock.

use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;

use async_trait::async_trait;

use super::*;
use crate::ecs::{ErrorKind, RegisterRequest, RegisteredInstance};
use crate::tasks::ContainerChange;

#[derive(Default)]
struct FakeEcs {
    /// Every attempt: (task, status, accepted).
    attempts: Mutex<Vec<(String, ReportStatus, bool)>>,
    /// Scripted failures per task, consumed in order.
    failures: Mutex<HashMap<String, VecDeque<ApiError>>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    delay: Duration,
}

impl FakeEcs {
    fn accepted(&self) -> Vec<(String, ReportStatus)> {
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.2)
            .map(|a| (a.0.clone(), a.1))
            .collect()
    }
    fn fail(&self, task: &str, n: usize, code: &str, kind: ErrorKind) {
        let mut f = self.failures.lock().unwrap();
        let q = f.entry(task.to_owned()).or_default();
        for _ in 0..n {
            q.push_back(ApiError {
                operation: "SubmitTaskStateChange",
                kind,
                code: Some(code.into()),
                message: "scripted".into(),
            });
        }
    }
}

#[async_trait]
impl EcsApi for FakeEcs {
    async fn register_container_instance(
        &self,
        _: &RegisterRequest,
    ) -> Result<RegisteredInstance, ApiError> {
        unreachable!()
    }
    async fn create_cluster(&self, _: &str) -> Result<(), ApiError> {
        unreachable!()
    }
    async fn cluster_status(&self, _: &str) -> Result<Option<String>, ApiError> {
        unreachable!()
    }
    async fn submit_task_state_change(&self, change: &TaskChange) -> Result<(), ApiError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let failure = self
            .failures
            .lock()
            .unwrap()
            .get_mut(&change.task_arn)
            .and_then(VecDeque::pop_front);
        self.attempts.lock().unwrap().push((
            change.task_arn.clone(),
            change.status,
            failure.is_none(),
        ));
        failure.map_or(Ok(()), Err)
    }
}

fn change(task: &str, status: ReportStatus) -> TaskChange {
    TaskChange {
        attachments: Vec::new(),
        cluster: "c".into(),
        task_arn: task.into(),
        status,
        reason: None,
        pull_started_at: None,
        pull_stopped_at: None,
        execution_stopped_at: None,
        containers: vec![ContainerChange {
            container_name: "web".into(),
            runtime_id: None,
            status,
            exit_code: None,
            reason: None,
            image_digest: None,
            network_bindings: Vec::new(),
        }],
    }
}

const FAST: Policy = Policy::new(Duration::from_secs(1), Duration::from_secs(4), 2.0, 0.0);

struct World {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    ecs: Arc<FakeEcs>,
    reporter: Arc<Reporter>,
}

fn world(ecs: FakeEcs) -> World {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let store = Store::open(&path).unwrap();
    let ecs = Arc::new(ecs);
    let reporter = Arc::new(Reporter::new(
        store,
        ecs.clone(),
        ReporterConfig {
            retry: FAST,
            ..ReporterConfig::default()
        },
    ));
    World {
        _dir: dir,
        path,
        ecs,
        reporter,
    }
}

fn enqueue(r: &Reporter, changes: &[TaskChange]) {
    r.store
        .transaction(|tx| {
            for c in changes {
                r.enqueue(tx, c)?;
            }
            Ok(())
        })
        .unwrap();
    r.notify();
}

fn start(
    r: &Arc<Reporter>,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), Error>>,
) {
    let cancel = CancellationToken::new();
    let (r, c) = (r.clone(), cancel.clone());
    (cancel, tokio::spawn(async move { r.run(c).await }))
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..100_000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

use ReportStatus::{Pending as P, Running as R, Stopped as S};

#[test]
fn unsent_part_never_goes_backwards() {
    let mut sent = Sent::default();
    assert_eq!(unsent_part(&change("t", P), &sent), Some(change("t", P)));
    sent.record(&change("t", R));
    assert_eq!(unsent_part(&change("t", P), &sent), None);
    assert_eq!(unsent_part(&change("t", R), &sent), None);
    assert_eq!(unsent_part(&change("t", S), &sent), Some(change("t", S)));
    // Same task status, a new container status: sent with only that container.
    let mut c = change("t", R);
    c.containers.push(ContainerChange {
        container_name: "sidecar".into(),
        status: S,
        ..c.containers[0].clone()
    });
    let part = unsent_part(&c, &sent).unwrap();
    assert_eq!(part.containers.len(), 1);
    assert_eq!(part.containers[0].container_name, "sidecar");
    // Container statuses are remembered per container.
    sent.record(&part);
    assert_eq!(sent.containers.get("sidecar"), Some(&S));
    assert_eq!(sent.containers.get("web"), Some(&R));
    assert_eq!(sent.task, Some(R));
}

#[tokio::test(start_paused = true)]
async fn sends_in_order_per_task_and_records_what_was_sent() {
    let w = world(FakeEcs::default());
    enqueue(
        &w.reporter,
        &[
            change("a", P),
            change("b", P),
            change("a", R),
            change("a", S),
        ],
    );
    let (cancel, run) = start(&w.reporter);
    until("queue drained", || w.reporter.queued().unwrap() == 0).await;
    let accepted = w.ecs.accepted();
    let of = |t: &str| -> Vec<ReportStatus> {
        accepted.iter().filter(|a| a.0 == t).map(|a| a.1).collect()
    };
    assert_eq!(of("a"), vec![P, R, S]);
    assert_eq!(of("b"), vec![P]);
    assert!(w.reporter.stopped_reported("a"));
    assert!(!w.reporter.stopped_reported("b"));
    assert_eq!(w.reporter.sent("a").unwrap().task, Some(S));
    assert_eq!(w.reporter.stats().accepted, 4);
    cancel.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn failures_retry_with_backoff_per_task_without_blocking_others() {
    let w = world(FakeEcs::default());
    w.ecs.fail("a", 3, "ServerException", ErrorKind::Server);
    let (cancel, run) = start(&w.reporter);
    let t0 = Instant::now();
    enqueue(
        &w.reporter,
        &[change("a", P), change("a", R), change("b", R)],
    );
    until("b accepted", || w.ecs.accepted().iter().any(|a| a.0 == "b")).await;
    assert!(
        t0.elapsed() < Duration::from_millis(100),
        "b waited for a's retries"
    );
    until("queue drained", || w.reporter.queued().unwrap() == 0).await;
    // 3 failures with backoff 1 s, 2 s, 4 s before a's first change got through.
    assert!(t0.elapsed() >= Duration::from_secs(7), "{:?}", t0.elapsed());
    let a: Vec<_> = w
        .ecs
        .attempts
        .lock()
        .unwrap()
        .iter()
        .filter(|x| x.0 == "a")
        .map(|x| (x.1, x.2))
        .collect();
    assert_eq!(
        a,
        vec![(P, false), (P, false), (P, false), (P, true), (R, true)]
    );
    assert_eq!(w.reporter.stats().failed_attempts, 3);
    cancel.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn invalid_parameter_drops_the_change_and_moves_on() {
    let w = world(FakeEcs::default());
    w.ecs
        .fail("a", 1, "InvalidParameterException", ErrorKind::Client);
    let (cancel, run) = start(&w.reporter);
    enqueue(&w.reporter, &[change("a", P), change("a", R)]);
    until("queue drained", || w.reporter.queued().unwrap() == 0).await;
    assert_eq!(w.ecs.accepted(), vec![("a".to_owned(), R)]);
    assert_eq!(w.reporter.stats().refused, 1);
    cancel.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn stale_changes_are_dropped_not_sent() {
    let w = world(FakeEcs::default());
    let (cancel, run) = start(&w.reporter);
    enqueue(&w.reporter, &[change("a", R)]);
    until("running sent", || w.ecs.accepted().len() == 1).await;
    enqueue(
        &w.reporter,
        &[change("a", P), change("a", R), change("a", S)],
    );
    until("queue drained", || w.reporter.queued().unwrap() == 0).await;
    assert_eq!(
        w.ecs.accepted(),
        vec![("a".to_owned(), R), ("a".to_owned(), S)]
    );
    assert_eq!(w.reporter.stats().skipped, 2);
    cancel.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn at_most_max_in_flight() {
    let w = world(FakeEcs {
        delay: Duration::from_millis(200),
        ..FakeEcs::default()
    });
    let changes: Vec<_> = (0..25).map(|i| change(&format!("t{i}"), R)).collect();
    enqueue(&w.reporter, &changes);
    let (cancel, run) = start(&w.reporter);
    until("queue drained", || w.reporter.queued().unwrap() == 0).await;
    assert_eq!(w.ecs.accepted().len(), 25);
    assert_eq!(w.ecs.max_in_flight.load(Ordering::SeqCst), MAX_IN_FLIGHT);
    cancel.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_missed_notify_is_caught_by_the_rescan() {
    let w = world(FakeEcs::default());
    let (cancel, run) = start(&w.reporter);
    tokio::time::sleep(Duration::from_millis(50)).await;
    w.reporter
        .store
        .transaction(|tx| w.reporter.enqueue(tx, &change("a", R)))
        .unwrap();
    // No notify.
    until("sent", || w.ecs.accepted().len() == 1).await;
    cancel.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn aborted_transactions_queue_nothing() {
    let w = world(FakeEcs::default());
    let r: Result<(), store::Error> = w.reporter.store.transaction(|tx| {
        w.reporter.enqueue(tx, &change("a", R))?;
        Err(store::Error::TooNew {
            path: "x".into(),
            found: 0,
        })
    });
    assert!(r.is_err());
    assert_eq!(w.reporter.queued().unwrap(), 0);
    // The counter did not move either: the next change gets sequence 1.
    enqueue(&w.reporter, &[change("b", R)]);
    let q = w.reporter.store.list::<Queued>(QUEUE).unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].1.seq, 1);
}

#[tokio::test(start_paused = true)]
async fn a_restart_sends_what_was_queued_once_in_order() {
    let w = world(FakeEcs::default());
    w.ecs.fail("a", 1000, "ServerException", ErrorKind::Server);
    let (cancel, run) = start(&w.reporter);
    enqueue(
        &w.reporter,
        &[change("a", P), change("a", R), change("a", S)],
    );
    until("a few failures", || w.reporter.stats().failed_attempts >= 2).await;
    cancel.cancel();
    run.await.unwrap().unwrap();
    assert_eq!(w.reporter.queued().unwrap(), 3);
    assert!(w.ecs.accepted().is_empty());

    // Drop the reporter (and its store), reopen the file, start again with a healthy ECS.
    drop(w.reporter);
    let ecs = Arc::new(FakeEcs::default());
    let reporter = Arc::new(Reporter::new(
        Store::open(&w.path).unwrap(),
        ecs.clone(),
        ReporterConfig::default(),
    ));
    let (cancel, run) = start(&reporter);
    until("queue drained", || reporter.queued().unwrap() == 0).await;
    assert_eq!(
        ecs.accepted(),
        vec![
            ("a".to_owned(), P),
            ("a".to_owned(), R),
            ("a".to_owned(), S)
        ]
    );
    cancel.cancel();
    run.await.unwrap().unwrap();
}

#[test]
fn milestones_keep_first_times_and_are_bounded() {
    let m = Milestones::default();
    let t0 = std::time::Instant::now();
    m.payload_received("a", t0);
    m.payload_received("a", t0 + Duration::from_secs(5));
    m.accepted("a", R);
    let got = m.get("a").unwrap();
    assert_eq!(got.payload_received, Some(t0));
    assert!(got.running_accepted.is_some());
    for i in 0..(MILESTONES_KEPT + 10) {
        m.payload_received(&format!("t{i}"), std::time::Instant::now());
    }
    assert!(m.inner.lock().unwrap().len() <= MILESTONES_KEPT);
}

/// The termination drain's census (lifecycle::drain::LocalCensus): a service task stopped
/// locally still counts while its STOPPED report waits in the queue, and is gone once ECS
/// accepted it; standalone tasks never hold the drain.
#[tokio::test(start_paused = true)]
async fn local_census_waits_for_the_stopped_report_to_be_accepted() {
    use crate::ecs::TaskSummary;
    use crate::engine::introspection::{EngineView, Snapshot};
    use crate::lifecycle::drain::{LocalCensus, Remaining, TaskCensus};

    let w = world(FakeEcs::default());
    // ECS refuses the service task's reports twice (throttled) before accepting.
    w.ecs
        .fail("svc", 2, "ThrottlingException", ErrorKind::Throttled);
    let summary = |arn: &str, service: &str, last: &str, desired: &str| TaskSummary {
        arn: arn.into(),
        started_by: service.into(),
        last_status: last.into(),
        desired_status: desired.into(),
    };
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
    let census = LocalCensus {
        view: EngineView::new(rx),
        reporter: w.reporter.clone(),
    };
    let publish = |tasks: Vec<TaskSummary>| {
        tx.send_replace(Arc::new(Snapshot {
            census: tasks,
            ..Snapshot::default()
        }));
    };
    publish(vec![
        summary("svc", "ecs-svc/1", "RUNNING", "RUNNING"),
        summary("solo", "", "RUNNING", "RUNNING"),
    ]);
    assert_eq!(
        census.remaining().await.unwrap(),
        Remaining {
            waiting_for: 1,
            standalone: 1
        }
    );
    // The engine stopped the service task and queued the report; ECS has not accepted it yet.
    enqueue(&w.reporter, &[change("svc", S)]);
    publish(vec![
        summary("svc", "ecs-svc/1", "STOPPED", "STOPPED"),
        summary("solo", "", "RUNNING", "RUNNING"),
    ]);
    assert_eq!(census.remaining().await.unwrap().waiting_for, 1);
    let (cancel, task) = start(&w.reporter);
    until("the report is accepted", || {
        w.ecs.accepted().contains(&("svc".into(), S))
    })
    .await;
    until("the queue is empty", || w.reporter.queued().unwrap() == 0).await;
    assert_eq!(
        census.remaining().await.unwrap(),
        Remaining {
            waiting_for: 0,
            standalone: 1
        }
    );
    cancel.cancel();
    task.await.unwrap().unwrap();
}

#[test]
fn running_accepted_is_reported_once_with_the_queue_time() {
    let m = Milestones::default();
    let t0 = std::time::Instant::now();
    m.payload_received("a", t0);
    let queued = t0 + Duration::from_millis(40);
    let first = m
        .running_accepted("a", queued)
        .expect("first RUNNING acceptance");
    assert_eq!(first.payload_received, Some(t0));
    assert_eq!(first.running_queued, Some(queued));
    assert!(first.running_accepted.unwrap() >= t0);
    // A later RUNNING report (e.g. a container change) keeps the first times.
    assert!(
        m.running_accepted("a", queued + Duration::from_secs(1))
            .is_none()
    );
    assert_eq!(m.get("a").unwrap().running_queued, Some(queued));
}
