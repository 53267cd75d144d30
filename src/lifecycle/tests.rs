//! The lifecycle subsystem against fakes: decisions, Spot and termination drains, persistence
//! across restarts.

use super::*;
use crate::config::Config;
use crate::lifecycle::autoscaling::{Call, FakeAutoScaling, HookInfo};
use crate::lifecycle::drain::{EcsCensus, GROUP_TAG_PATH};
use crate::lifecycle::fakes::{EcsCall, FakeEcs, FakeImds};
use crate::lifecycle::signals::{SPOT_PATH, SpotNotice, TARGET_STATE_PATH};

fn config() -> LifecycleConfig {
    LifecycleConfig {
        spot_instance_draining: true,
        lifecycle_hook: Some("drain".into()),
        drain_poll_interval: Duration::from_secs(5),
        ..Config::default().lifecycle
    }
}

fn record(done: bool) -> DrainRecord {
    DrainRecord {
        ec2_instance_id: "i-1".into(),
        container_instance_arn: "arn".into(),
        reason: Reason::Terminating,
        draining_since: 1,
        termination_since: Some(1),
        termination_done: done,
    }
}

#[test]
fn decisions() {
    let c = config();
    let spot = Signal::Spot(SpotNotice {
        action: "terminate".into(),
        time: "t".into(),
    });
    let term = Signal::TargetState("Terminated".into());
    assert_eq!(
        decide(&c, None, &spot),
        Action::MarkDraining(Reason::SpotInterruption)
    );
    assert!(matches!(
        decide(&c, Some(&record(false)), &spot),
        Action::Observe(_)
    ));
    let off = LifecycleConfig {
        spot_instance_draining: false,
        ..c.clone()
    };
    assert!(matches!(decide(&off, None, &spot), Action::Observe(_)));
    assert_eq!(decide(&c, None, &term), Action::Terminate);
    assert_eq!(decide(&c, Some(&record(false)), &term), Action::Terminate);
    assert_eq!(decide(&c, Some(&record(true)), &term), Action::Nothing);
    for s in ["InService", "Standby", "Detached", "Warmed:Running"] {
        assert!(matches!(
            decide(&c, None, &Signal::TargetState(s.into())),
            Action::Observe(_)
        ));
    }
    let rebalance = Signal::Rebalance("t".into());
    assert!(matches!(decide(&c, None, &rebalance), Action::Observe(_)));
    let drain = LifecycleConfig {
        rebalance: RebalanceAction::Drain,
        ..c
    };
    assert_eq!(
        decide(&drain, None, &rebalance),
        Action::MarkDraining(Reason::Rebalance)
    );
}

struct World {
    _dir: tempfile::TempDir,
    store: Store,
    imds: Arc<FakeImds>,
    ecs: Arc<FakeEcs>,
    asg: Arc<FakeAutoScaling>,
    draining: watch::Sender<bool>,
    board: health::Board,
}

impl World {
    fn new(imds: FakeImds, asg: FakeAutoScaling) -> World {
        let dir = tempfile::tempdir().unwrap();
        World {
            store: Store::open(&dir.path().join("s.redb")).unwrap(),
            _dir: dir,
            imds: Arc::new(imds),
            ecs: Arc::new(FakeEcs::default()),
            asg: Arc::new(asg),
            draining: draining_flag(),
            board: health::Board::new(),
        }
    }

    fn lifecycle(&self, config: LifecycleConfig) -> Lifecycle {
        Lifecycle {
            config,
            cluster: "c".into(),
            container_instance_arn: "arn".into(),
            ec2_instance_id: "i-1".into(),
            imds: self.imds.clone(),
            ecs: self.ecs.clone(),
            autoscaling: self.asg.clone(),
            census: Arc::new(EcsCensus {
                ecs: self.ecs.clone(),
                cluster: "c".into(),
                container_instance_arn: "arn".into(),
            }),
            store: self.store.clone(),
            board: self.board.clone(),
            draining: self.draining.clone(),
            plan: PollPlan::standard(true),
        }
    }

    /// Runs the subsystem for `secs` of (paused) time, then cancels it.
    async fn run_for(&self, config: LifecycleConfig, secs: u64) {
        let l = self.lifecycle(config);
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            c.cancel();
        });
        l.run(cancel).await.unwrap();
    }

    fn record(&self) -> Option<DrainRecord> {
        load_record(&self.store, "i-1").unwrap()
    }
}

fn asg_with_hook() -> FakeAutoScaling {
    FakeAutoScaling {
        group: Some("asg".into()),
        hook: Some(HookInfo {
            name: "drain".into(),
            transition: "autoscaling:EC2_INSTANCE_TERMINATING".into(),
            heartbeat_timeout: Duration::from_secs(60),
        }),
        ..Default::default()
    }
}

fn completions(asg: &FakeAutoScaling) -> Vec<Call> {
    asg.calls()
        .into_iter()
        .filter(|c| matches!(c, Call::Complete(..)))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_spot_notice_drains_once_and_a_restart_does_not_repeat_it() {
    let w = World::new(FakeImds::spot(), FakeAutoScaling::default());
    w.imds
        .set(SPOT_PATH, Some(r#"{"action":"terminate","time":"t"}"#));
    assert!(!*w.draining.borrow());
    w.run_for(config(), 10).await;
    assert_eq!(
        w.ecs.calls(),
        vec![EcsCall::UpdateState("arn".into(), "DRAINING".into())]
    );
    assert!(*w.draining.borrow(), "draining flag set");
    let r = w.record().unwrap();
    assert_eq!(r.reason, Reason::SpotInterruption);
    assert!(w.board.snapshot()[COMPONENT].detail.contains("Spot"));
    assert!(w.asg.calls().is_empty(), "a Spot drain completes no hook");

    // Restart: the notice is still there, DRAINING is not sent again and the flag comes back.
    let w = World {
        draining: draining_flag(),
        ..w
    };
    let spot_reads = w.imds.reads(SPOT_PATH);
    w.run_for(config(), 10).await;
    assert_eq!(w.ecs.state_updates(), 1);
    assert_eq!(
        w.imds.reads(SPOT_PATH),
        spot_reads,
        "no Spot polling once drained"
    );
    assert!(*w.draining.borrow());
}

#[tokio::test(start_paused = true)]
async fn a_failed_drain_is_an_error_worth_a_restart() {
    let w = World::new(FakeImds::spot(), FakeAutoScaling::default());
    w.imds
        .set(SPOT_PATH, Some(r#"{"action":"stop","time":"t"}"#));
    w.ecs.update_errors.lock().unwrap().push_back(ApiError {
        operation: "UpdateContainerInstancesState",
        kind: crate::aws::ErrorKind::Client,
        code: Some("AccessDeniedException".into()),
        message: "no".into(),
    });
    let err = w
        .lifecycle(config())
        .run(CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Ecs(_)), "{err}");
    assert!(w.record().is_none(), "nothing persisted");
    assert!(!w.board.snapshot()[COMPONENT].ok);
}

#[tokio::test(start_paused = true)]
async fn termination_drains_waits_heartbeats_and_completes_once() {
    let w = World::new(FakeImds::on_demand(), asg_with_hook());
    *w.ecs.tasks.lock().unwrap() = vec![
        FakeEcs::task("svc", "ecs-svc/1", "RUNNING", "RUNNING"),
        FakeEcs::task("solo", "", "RUNNING", "RUNNING"),
    ];
    w.imds.set(TARGET_STATE_PATH, Some("Terminated"));
    let ecs = w.ecs.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(95)).await;
        for t in ecs
            .tasks
            .lock()
            .unwrap()
            .iter_mut()
            .filter(|t| t.arn == "svc")
        {
            t.last_status = "STOPPED".into();
            t.desired_status = "STOPPED".into();
        }
    });
    w.run_for(config(), 200).await;
    assert_eq!(w.ecs.state_updates(), 1);
    let calls = w.asg.calls();
    let beats = calls
        .iter()
        .filter(|c| matches!(c, Call::Heartbeat(..)))
        .count();
    assert_eq!(beats, 3, "every 30 s (half of 60 s) until 95 s: {calls:?}");
    assert_eq!(
        completions(&w.asg),
        vec![Call::Complete(
            "asg".into(),
            "drain".into(),
            "i-1".into(),
            "CONTINUE".into()
        )]
    );
    let r = w.record().unwrap();
    assert!(r.termination_done);
    assert_eq!(r.reason, Reason::Terminating);

    // A restart with the target state still Terminated does nothing more.
    w.run_for(config(), 60).await;
    assert_eq!(completions(&w.asg).len(), 1);
    assert_eq!(w.ecs.state_updates(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_unfinished_termination_resumes_after_a_restart_with_its_deadline() {
    let w = World::new(FakeImds::on_demand(), asg_with_hook());
    *w.ecs.tasks.lock().unwrap() = vec![FakeEcs::task("svc", "ecs-svc/1", "RUNNING", "STOPPED")];
    w.imds.set(GROUP_TAG_PATH, Some("asg"));
    let mut r = record(false);
    // Started long ago: the deadline has passed, so it completes at once.
    r.termination_since = Some(now_secs() - 3600);
    w.store.put(LIFECYCLE, DRAIN_KEY, &r).unwrap();
    w.run_for(config(), 5).await;
    assert_eq!(w.ecs.state_updates(), 0, "DRAINING was already set");
    assert_eq!(completions(&w.asg).len(), 1);
    assert!(w.record().unwrap().termination_done);
}

#[tokio::test(start_paused = true)]
async fn the_ecs_managed_hook_is_never_completed() {
    let w = World::new(FakeImds::on_demand(), asg_with_hook());
    w.imds.set(TARGET_STATE_PATH, Some("Terminated"));
    let c = LifecycleConfig {
        lifecycle_hook: Some(drain::ECS_MANAGED_HOOK.into()),
        ..config()
    };
    w.run_for(c, 30).await;
    assert_eq!(w.ecs.state_updates(), 1, "still drains");
    assert!(w.asg.calls().is_empty(), "{:?}", w.asg.calls());
    assert!(w.record().unwrap().termination_done);
}

#[tokio::test]
async fn a_record_of_another_instance_is_ignored() {
    let w = World::new(FakeImds::on_demand(), FakeAutoScaling::default());
    let mut r = record(true);
    r.ec2_instance_id = "i-other".into();
    w.store.put(LIFECYCLE, DRAIN_KEY, &r).unwrap();
    assert!(w.record().is_none());
}

#[tokio::test(start_paused = true)]
async fn the_start_up_jitter_waits_less_than_its_maximum_and_stops_on_shutdown() {
    let started = tokio::time::Instant::now();
    assert!(startup_jitter(Duration::from_secs(5), &CancellationToken::new()).await);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(startup_jitter(Duration::ZERO, &CancellationToken::new()).await);
    let cancel = CancellationToken::new();
    cancel.cancel();
    for _ in 0..20 {
        assert!(
            !startup_jitter(Duration::from_secs(60), &cancel).await,
            "a cancelled wait reports it"
        );
    }
}

#[test]
fn lifecycle_settings_parse_from_the_environment_and_config_toml() {
    use crate::config::LoadOptions;
    let load = |env: &[(&str, &str)]| {
        Config::load(&LoadOptions {
            ecs_config: Some("/dev/null".into()),
            toml_config: Some("/dev/null".into()),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            strict: true,
            ..Default::default()
        })
    };
    let c = load(&[]).unwrap().config.lifecycle;
    assert_eq!(c.heartbeat_interval, None);
    assert_eq!(c.startup_jitter, Duration::from_secs(5));
    assert_eq!(c.warm_pool_poll_interval, Duration::from_secs(60));
    assert_eq!(c.drain_poll_interval, Duration::from_secs(10));
    assert!(!c.spot_instance_draining && !c.warm_pools_check);

    let c = load(&[
        ("ECS_HOSTD_LIFECYCLE_HEARTBEAT_INTERVAL", "45s"),
        ("ECS_HOSTD_STARTUP_JITTER", "0"),
        ("ECS_HOSTD_WARM_POOL_POLL_INTERVAL", "1s"),
        ("ECS_HOSTD_DRAIN_POLL_INTERVAL", "2s"),
        ("ECS_ENABLE_SPOT_INSTANCE_DRAINING", "true"),
        ("ECS_WARM_POOLS_CHECK", "true"),
    ])
    .unwrap()
    .config
    .lifecycle;
    assert_eq!(c.heartbeat_interval, Some(Duration::from_secs(45)));
    assert_eq!(c.startup_jitter, Duration::ZERO);
    assert_eq!(c.warm_pool_poll_interval, Duration::from_secs(1));
    assert_eq!(c.drain_poll_interval, Duration::from_secs(2));
    assert!(c.spot_instance_draining && c.warm_pools_check);
    assert_eq!(
        load(&[("ECS_HOSTD_LIFECYCLE_HEARTBEAT_INTERVAL", "auto")])
            .unwrap()
            .config
            .lifecycle
            .heartbeat_interval,
        None
    );
    assert!(load(&[("ECS_HOSTD_LIFECYCLE_HEARTBEAT_INTERVAL", "0")]).is_err());
    assert!(load(&[("ECS_HOSTD_STARTUP_JITTER", "1h")]).is_err());
    assert!(load(&[("ECS_HOSTD_WARM_POOL_POLL_INTERVAL", "soon")]).is_err());

    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("config.toml");
    std::fs::write(
        &toml,
        "[lifecycle]\nhook = \"drain\"\nheartbeat_interval = \"30s\"\nstartup_jitter = \"10s\"\n",
    )
    .unwrap();
    let c = Config::load(&LoadOptions {
        ecs_config: Some("/dev/null".into()),
        toml_config: Some(toml),
        strict: true,
        ..Default::default()
    })
    .unwrap()
    .config
    .lifecycle;
    assert_eq!(c.lifecycle_hook.as_deref(), Some("drain"));
    assert_eq!(c.heartbeat_interval, Some(Duration::from_secs(30)));
    assert_eq!(c.startup_jitter, Duration::from_secs(10));
}
