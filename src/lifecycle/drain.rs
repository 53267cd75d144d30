//! Draining one container instance (packaging spec §6.3, §6.4; design.md resolution 10):
//!
//! 1. [`mark_draining`]: UpdateContainerInstancesState(DRAINING), retried while retryable. ECS
//!    then replaces the instance's service tasks elsewhere; standalone RunTask tasks are not
//!    stopped by DRAINING.
//! 2. [`resolve_hook`]: which Auto Scaling hook this agent completes, if any. Never the ECS-managed
//!    hook [`ECS_MANAGED_HOOK`]; the group comes from the instance tag
//!    `aws:autoscaling:groupName` in IMDS, else DescribeAutoScalingInstances; the hook must exist
//!    (DescribeLifecycleHooks), and its heartbeat timeout sets the heartbeat period.
//! 3. [`wait_for_tasks`]: until no task that draining stops is left on the instance (a
//!    [`TaskCensus`]), or the drain deadline, sending RecordLifecycleActionHeartbeat meanwhile.
//! 4. [`complete`]: CompleteLifecycleAction(CONTINUE), once. A `ValidationError` means the
//!    action is already over and is not retried.
//!
//! Which tasks remain is asked through [`TaskCensus`]: the agent uses [`LocalCensus`] (the
//! engine's own view plus what the reporter has had accepted; no ECS calls); [`EcsCensus`] asks
//! ECS (ListTasks + DescribeTasks; never the running/pending counters, which miss stopping
//! tasks). This module never stops a task itself and never
//! persists anything (the caller records progress).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Error;
use super::autoscaling::AutoScalingApi;
use crate::aws::ApiError;
use crate::backoff::Policy;
use crate::ecs::report::Reporter;
use crate::ecs::{EcsApi, TaskSummary};
use crate::engine::introspection::EngineView;
use crate::imds::InstanceMetadata;
use crate::tasks::ReportStatus;

/// `startedBy` prefix of tasks started by an ECS service.
pub const SERVICE_PREFIX: &str = "ecs-svc/";
/// The hook ECS managed draining (capacity providers) owns; ECS completes it, never us.
pub const ECS_MANAGED_HOOK: &str = "ecs-managed-draining-termination-hook";
/// IMDS instance tag holding the Auto Scaling group (needs instance metadata tags enabled).
pub const GROUP_TAG_PATH: &str = "latest/meta-data/tags/instance/aws:autoscaling:groupName";
/// Heartbeat period when the hook's timeout cannot be read (AWS's default timeout is 1 h).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(60);
/// How soon a failed heartbeat is tried again (at most; a quarter period when that is shorter).
pub const HEARTBEAT_RETRY: Duration = Duration::from_secs(10);
/// Retry backoff for UpdateContainerInstancesState and CompleteLifecycleAction.
pub const RETRY: Policy = Policy::new(Duration::from_secs(1), Duration::from_secs(10), 2.0, 0.2);
/// How long [`mark_draining`] keeps retrying before it reports the failure (the lifecycle
/// subsystem then restarts and, the notice still being there, tries again).
pub const MARK_BUDGET: Duration = Duration::from_secs(120);
/// Attempts of CompleteLifecycleAction on retryable errors.
pub const COMPLETE_ATTEMPTS: u32 = 6;
/// DescribeTasks takes at most this many ARNs.
const DESCRIBE_BATCH: usize = 100;

/// Tasks still on the instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Remaining {
    /// Tasks draining waits for: service tasks, and any task already stopping.
    pub waiting_for: usize,
    /// Standalone tasks DRAINING does not stop (they end with the instance).
    pub standalone: usize,
}

/// Counts the tasks still on the instance.
pub fn count(tasks: &[TaskSummary]) -> Remaining {
    let mut r = Remaining::default();
    for t in tasks.iter().filter(|t| t.last_status != "STOPPED") {
        if t.started_by.starts_with(SERVICE_PREFIX) || t.desired_status == "STOPPED" {
            r.waiting_for += 1;
        } else {
            r.standalone += 1;
        }
    }
    r
}

/// Which tasks remain on this instance.
#[async_trait]
pub trait TaskCensus: Send + Sync {
    /// The tasks still there.
    async fn remaining(&self) -> Result<Remaining, Error>;
}

/// [`TaskCensus`] from ECS: ListTasks (desired RUNNING and STOPPED) and DescribeTasks.
pub struct EcsCensus {
    /// ECS.
    pub ecs: Arc<dyn EcsApi>,
    /// Cluster.
    pub cluster: String,
    /// This container instance.
    pub container_instance_arn: String,
}

#[async_trait]
impl TaskCensus for EcsCensus {
    async fn remaining(&self) -> Result<Remaining, Error> {
        let mut arns = Vec::new();
        for desired in ["RUNNING", "STOPPED"] {
            arns.extend(
                self.ecs
                    .list_tasks(&self.cluster, &self.container_instance_arn, desired)
                    .await
                    .map_err(Error::Ecs)?,
            );
        }
        let mut tasks = Vec::with_capacity(arns.len());
        for batch in arns.chunks(DESCRIBE_BATCH) {
            tasks.extend(
                self.ecs
                    .describe_tasks(&self.cluster, batch)
                    .await
                    .map_err(Error::Ecs)?,
            );
        }
        Ok(count(&tasks))
    }
}

/// [`TaskCensus`] from the engine's own view: no ECS calls. A task is gone once the engine knows
/// it STOPPED and ECS has accepted that report, so the instance is not terminated while the last
/// STOPPED reports still sit in the reporter's queue.
pub struct LocalCensus {
    /// The engine's published view.
    pub view: EngineView,
    /// The reporter, asked what ECS has accepted.
    pub reporter: Arc<Reporter>,
}

#[async_trait]
impl TaskCensus for LocalCensus {
    async fn remaining(&self) -> Result<Remaining, Error> {
        let mut tasks = self.view.snapshot().census.clone();
        // With an empty queue every STOPPED report has been accepted (or given up on as
        // refused), so only a non-empty queue needs the per-task look.
        if self.reporter.queued()? > 0 {
            for t in tasks.iter_mut().filter(|t| t.last_status == "STOPPED") {
                if self.reporter.sent(&t.arn)?.task != Some(ReportStatus::Stopped) {
                    t.last_status = "STOPPING (report queued)".into();
                }
            }
        }
        Ok(count(&tasks))
    }
}

/// Sets the container instance to DRAINING, retrying retryable errors for up to `budget`.
pub async fn mark_draining(
    ecs: &dyn EcsApi,
    cluster: &str,
    container_instance_arn: &str,
    budget: Duration,
    cancel: &CancellationToken,
) -> Result<(), Error> {
    let started = Instant::now();
    let mut backoff = RETRY.start();
    loop {
        let err = match ecs
            .update_container_instance_state(cluster, container_instance_arn, "DRAINING")
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let delay = backoff.next_delay();
        if !err.is_retryable() || started.elapsed() + delay > budget {
            return Err(Error::Ecs(err));
        }
        debug!(error = %err, retry_in = ?delay, "UpdateContainerInstancesState failed; retrying.");
        tokio::select! {
            _ = cancel.cancelled() => return Err(Error::Cancelled),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// The lifecycle action this agent completes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookTarget {
    /// Auto Scaling group.
    pub group: String,
    /// Hook name.
    pub hook: String,
    /// RecordLifecycleActionHeartbeat period.
    pub heartbeat_every: Duration,
}

/// Finds the hook to complete, or `None` (drain only), logging why. `heartbeat_override` replaces
/// the default period of half the hook's heartbeat timeout.
pub async fn resolve_hook(
    configured: Option<&str>,
    instance_id: &str,
    imds: &dyn InstanceMetadata,
    autoscaling: &dyn AutoScalingApi,
    heartbeat_override: Option<Duration>,
) -> Option<HookTarget> {
    let Some(hook) = configured else {
        info!("No lifecycle hook configured (ECS_HOSTD_LIFECYCLE_HOOK): draining only.");
        return None;
    };
    if hook == ECS_MANAGED_HOOK {
        warn!(
            hook,
            "The ECS-managed draining hook belongs to ECS, which completes it; draining only."
        );
        return None;
    }
    let group = match imds.get(GROUP_TAG_PATH).await {
        Ok(Some(g)) if !g.trim().is_empty() => Some(g.trim().to_owned()),
        _ => match autoscaling.group_of_instance(instance_id).await {
            Ok(g) => g,
            Err(e) => {
                warn!(error = %e, "Cannot find this instance's Auto Scaling group; draining only (the IAM role needs autoscaling:DescribeAutoScalingInstances, or enable instance metadata tags).");
                return None;
            }
        },
    };
    let Some(group) = group else {
        warn!(
            hook,
            "This instance is in no Auto Scaling group; draining only."
        );
        return None;
    };
    let heartbeat_every = match autoscaling.lifecycle_hook(&group, hook).await {
        Ok(Some(info)) => heartbeat_override.unwrap_or(info.heartbeat_timeout / 2),
        Ok(None) => {
            warn!(%group, hook, "The Auto Scaling group has no such lifecycle hook; draining only.");
            return None;
        }
        Err(e) => {
            let every = heartbeat_override.unwrap_or(DEFAULT_HEARTBEAT);
            warn!(%group, hook, error = %e, heartbeat_every = ?every, "Cannot describe the lifecycle hook; completing it anyway.");
            every
        }
    };
    let heartbeat_every = heartbeat_every.max(Duration::from_secs(1));
    info!(%group, hook, ?heartbeat_every, "Will complete this lifecycle hook after draining.");
    Some(HookTarget {
        group,
        hook: hook.to_owned(),
        heartbeat_every,
    })
}

/// How waiting ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitOutcome {
    /// No task that draining stops is left.
    TasksGone,
    /// The drain deadline passed first.
    DeadlineReached(Remaining),
}

/// Heartbeats sent while waiting.
pub struct Heartbeats<'a> {
    /// Auto Scaling.
    pub api: &'a dyn AutoScalingApi,
    /// The action.
    pub target: &'a HookTarget,
    /// This instance.
    pub instance_id: &'a str,
}

/// Waits until `census` shows nothing to wait for, or `deadline`; checks every `poll_every`
/// and heartbeats the lifecycle action meanwhile. Census and heartbeat errors are logged and
/// waiting goes on. `progress` hears every count.
pub async fn wait_for_tasks(
    census: &dyn TaskCensus,
    deadline: Instant,
    poll_every: Duration,
    heartbeats: Option<Heartbeats<'_>>,
    cancel: &CancellationToken,
    mut progress: impl FnMut(Remaining),
) -> Result<WaitOutcome, Error> {
    let mut poll = tokio::time::interval(poll_every);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first heartbeat goes out one period after draining started.
    let beat_every = heartbeats
        .as_ref()
        .map_or(Duration::from_secs(3600), |h| h.target.heartbeat_every);
    let mut beat = tokio::time::interval_at(Instant::now() + beat_every, beat_every);
    beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last = Remaining::default();
    let mut census_failing = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Err(Error::Cancelled),
            _ = tokio::time::sleep_until(deadline) => return Ok(WaitOutcome::DeadlineReached(last)),
            _ = beat.tick(), if heartbeats.is_some() => {
                if let Some(h) = &heartbeats {
                    match h.api.record_heartbeat(&h.target.group, &h.target.hook, h.instance_id).await {
                        Ok(()) => debug!(group = %h.target.group, hook = %h.target.hook, "Lifecycle action heartbeat sent."),
                        Err(e) => {
                            // Half the timeout leaves room for one quick retry, not for waiting
                            // a whole period.
                            let again = (h.target.heartbeat_every / 4).min(HEARTBEAT_RETRY);
                            warn!(error = %e, retry_in = ?again, "RecordLifecycleActionHeartbeat failed; trying again soon.");
                            beat.reset_after(again);
                        }
                    }
                }
            }
            _ = poll.tick() => {
                match census.remaining().await {
                    Ok(r) => {
                        census_failing = false;
                        last = r;
                        progress(r);
                        if r.waiting_for == 0 {
                            return Ok(WaitOutcome::TasksGone);
                        }
                    }
                    Err(e) if census_failing => debug!(error = %e, "Still cannot count the remaining tasks."),
                    Err(e) => {
                        census_failing = true;
                        warn!(error = %e, "Cannot count the remaining tasks; will ask again.");
                    }
                }
            }
        }
    }
}

/// How completion ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    /// Auto Scaling accepted CONTINUE.
    Completed,
    /// The action was already over (timed out, or completed elsewhere): `ValidationError`.
    AlreadyOver(ApiError),
}

/// CompleteLifecycleAction(CONTINUE), retrying retryable errors a few times.
pub async fn complete(
    api: &dyn AutoScalingApi,
    target: &HookTarget,
    instance_id: &str,
    cancel: &CancellationToken,
) -> Result<Completion, Error> {
    let mut backoff = RETRY.start();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let err = match api
            .complete_action(&target.group, &target.hook, instance_id, "CONTINUE")
            .await
        {
            Ok(()) => return Ok(Completion::Completed),
            Err(e) => e,
        };
        if err.has_code("ValidationError") {
            return Ok(Completion::AlreadyOver(err));
        }
        if !err.is_retryable() || attempts >= COMPLETE_ATTEMPTS {
            return Err(Error::AutoScaling(err));
        }
        let delay = backoff.next_delay();
        debug!(error = %err, retry_in = ?delay, "CompleteLifecycleAction failed; retrying.");
        tokio::select! {
            _ = cancel.cancelled() => return Err(Error::Cancelled),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::ErrorKind;
    use crate::lifecycle::autoscaling::{Call, FakeAutoScaling, HookInfo};
    use crate::lifecycle::fakes::{EcsCall, FakeEcs, FakeImds};

    fn hook(timeout: u64) -> HookInfo {
        HookInfo {
            name: "drain".into(),
            transition: "autoscaling:EC2_INSTANCE_TERMINATING".into(),
            heartbeat_timeout: Duration::from_secs(timeout),
        }
    }

    #[test]
    fn service_and_stopping_tasks_are_waited_for_standalone_ones_are_not() {
        let t = FakeEcs::task;
        let r = count(&[
            t("a", "ecs-svc/1", "RUNNING", "RUNNING"),
            t("b", "ecs-svc/1", "RUNNING", "STOPPED"),
            t("c", "", "RUNNING", "RUNNING"),
            t("d", "me", "RUNNING", "STOPPED"),
            t("e", "ecs-svc/2", "STOPPED", "STOPPED"),
        ]);
        assert_eq!(
            r,
            Remaining {
                waiting_for: 3,
                standalone: 1
            }
        );
    }

    #[tokio::test]
    async fn the_ecs_census_lists_both_desired_statuses_and_describes_them() {
        let ecs = Arc::new(FakeEcs::default());
        *ecs.tasks.lock().unwrap() = vec![
            FakeEcs::task("a", "ecs-svc/1", "RUNNING", "STOPPED"),
            FakeEcs::task("c", "", "RUNNING", "RUNNING"),
        ];
        let census = EcsCensus {
            ecs: ecs.clone(),
            cluster: "c".into(),
            container_instance_arn: "arn".into(),
        };
        assert_eq!(
            census.remaining().await.unwrap(),
            Remaining {
                waiting_for: 1,
                standalone: 1
            }
        );
        assert_eq!(
            ecs.calls(),
            vec![
                EcsCall::ListTasks("RUNNING".into()),
                EcsCall::ListTasks("STOPPED".into()),
                EcsCall::DescribeTasks(2)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn draining_is_retried_while_throttled_and_refusals_are_final() {
        let ecs = FakeEcs::default();
        ecs.update_errors
            .lock()
            .unwrap()
            .extend([FakeEcs::throttled("U"), FakeEcs::throttled("U")]);
        let c = CancellationToken::new();
        mark_draining(&ecs, "c", "arn", MARK_BUDGET, &c)
            .await
            .unwrap();
        assert_eq!(ecs.state_updates(), 3);

        let ecs = FakeEcs::default();
        ecs.update_errors.lock().unwrap().push_back(ApiError {
            operation: "U",
            kind: ErrorKind::Client,
            code: Some("AccessDeniedException".into()),
            message: "no".into(),
        });
        let err = mark_draining(&ecs, "c", "arn", MARK_BUDGET, &c)
            .await
            .unwrap_err();
        assert!(!err.is_retryable(), "{err}");
        assert_eq!(ecs.state_updates(), 1);

        let ecs = FakeEcs::default();
        ecs.update_errors
            .lock()
            .unwrap()
            .extend((0..100).map(|_| FakeEcs::throttled("U")));
        let err = mark_draining(&ecs, "c", "arn", Duration::from_secs(30), &c)
            .await
            .unwrap_err();
        assert!(
            err.is_retryable(),
            "budget exhausted, still retryable: {err}"
        );
    }

    #[tokio::test]
    async fn the_hook_is_resolved_from_the_tag_or_the_api_and_never_the_ecs_managed_one() {
        let imds = FakeImds::on_demand();
        let api = FakeAutoScaling {
            group: Some("asg-api".into()),
            hook: Some(hook(300)),
            ..Default::default()
        };
        assert_eq!(resolve_hook(None, "i-1", &imds, &api, None).await, None);
        assert_eq!(
            resolve_hook(Some(ECS_MANAGED_HOOK), "i-1", &imds, &api, None).await,
            None
        );
        assert!(api.calls().is_empty(), "no calls for those two");

        let t = resolve_hook(Some("drain"), "i-1", &imds, &api, None)
            .await
            .unwrap();
        assert_eq!(t.group, "asg-api");
        assert_eq!(t.heartbeat_every, Duration::from_secs(150));
        assert_eq!(api.calls()[0], Call::GroupOf("i-1".into()));

        imds.set(GROUP_TAG_PATH, Some("asg-tag"));
        let t = resolve_hook(
            Some("drain"),
            "i-1",
            &imds,
            &api,
            Some(Duration::from_secs(2)),
        )
        .await
        .unwrap();
        assert_eq!(t.group, "asg-tag");
        assert_eq!(t.heartbeat_every, Duration::from_secs(2));

        assert_eq!(
            resolve_hook(Some("other"), "i-1", &imds, &api, None).await,
            None,
            "a hook the group does not have"
        );
        let lonely = FakeAutoScaling::default();
        let imds = FakeImds::on_demand();
        assert_eq!(
            resolve_hook(Some("drain"), "i-1", &imds, &lonely, None).await,
            None,
            "no group"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_heartbeats_until_the_tasks_are_gone() {
        let ecs = Arc::new(FakeEcs::default());
        *ecs.tasks.lock().unwrap() = vec![FakeEcs::task("a", "ecs-svc/1", "RUNNING", "STOPPED")];
        let census = EcsCensus {
            ecs: ecs.clone(),
            cluster: "c".into(),
            container_instance_arn: "arn".into(),
        };
        let api = FakeAutoScaling::default();
        let target = HookTarget {
            group: "g".into(),
            hook: "h".into(),
            heartbeat_every: Duration::from_secs(30),
        };
        let stopper = {
            let ecs = ecs.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(100)).await;
                ecs.stop_all();
            })
        };
        let started = Instant::now();
        let outcome = wait_for_tasks(
            &census,
            Instant::now() + Duration::from_secs(600),
            Duration::from_secs(10),
            Some(Heartbeats {
                api: &api,
                target: &target,
                instance_id: "i-1",
            }),
            &CancellationToken::new(),
            |_| {},
        )
        .await
        .unwrap();
        stopper.await.unwrap();
        assert_eq!(outcome, WaitOutcome::TasksGone);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(100) && waited <= Duration::from_secs(111),
            "{waited:?}"
        );
        let beats = api
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::Heartbeat(..)))
            .count();
        assert_eq!(beats, 3, "at 30, 60 and 90 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_heartbeat_is_retried_well_before_the_next_period() {
        let ecs = Arc::new(FakeEcs::default());
        *ecs.tasks.lock().unwrap() = vec![FakeEcs::task("a", "ecs-svc/1", "RUNNING", "STOPPED")];
        let census = EcsCensus {
            ecs,
            cluster: "c".into(),
            container_instance_arn: "arn".into(),
        };
        let api = FakeAutoScaling::default();
        api.heartbeat_errors
            .lock()
            .unwrap()
            .push_back(FakeAutoScaling::error(
                "RecordLifecycleActionHeartbeat",
                ErrorKind::Throttled,
                "Throttling",
            ));
        let target = HookTarget {
            group: "g".into(),
            hook: "h".into(),
            heartbeat_every: Duration::from_secs(300),
        };
        wait_for_tasks(
            &census,
            Instant::now() + Duration::from_secs(320),
            Duration::from_secs(60),
            Some(Heartbeats {
                api: &api,
                target: &target,
                instance_id: "i-1",
            }),
            &CancellationToken::new(),
            |_| {},
        )
        .await
        .unwrap();
        let beats = api
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::Heartbeat(..)))
            .count();
        assert_eq!(beats, 2, "failed at 300 s, retried at 310 s");
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_ends_at_the_deadline_with_what_is_left() {
        let ecs = Arc::new(FakeEcs::default());
        *ecs.tasks.lock().unwrap() = vec![FakeEcs::task("a", "ecs-svc/1", "RUNNING", "RUNNING")];
        let census = EcsCensus {
            ecs,
            cluster: "c".into(),
            container_instance_arn: "arn".into(),
        };
        let outcome = wait_for_tasks(
            &census,
            Instant::now() + Duration::from_secs(60),
            Duration::from_secs(10),
            None,
            &CancellationToken::new(),
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(
            outcome,
            WaitOutcome::DeadlineReached(Remaining {
                waiting_for: 1,
                standalone: 0
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn completion_retries_transient_errors_and_accepts_validation_errors_as_over() {
        let target = HookTarget {
            group: "g".into(),
            hook: "h".into(),
            heartbeat_every: Duration::from_secs(30),
        };
        let c = CancellationToken::new();
        let api = FakeAutoScaling::default();
        api.complete_errors
            .lock()
            .unwrap()
            .push_back(FakeAutoScaling::error(
                "CompleteLifecycleAction",
                ErrorKind::Server,
                "InternalFailure",
            ));
        assert_eq!(
            complete(&api, &target, "i-1", &c).await.unwrap(),
            Completion::Completed
        );
        assert_eq!(
            api.calls().last(),
            Some(&Call::Complete(
                "g".into(),
                "h".into(),
                "i-1".into(),
                "CONTINUE".into()
            ))
        );
        assert_eq!(api.calls().len(), 2);

        let api = FakeAutoScaling::default();
        api.complete_errors
            .lock()
            .unwrap()
            .push_back(FakeAutoScaling::error(
                "CompleteLifecycleAction",
                ErrorKind::Client,
                "ValidationError",
            ));
        assert!(matches!(
            complete(&api, &target, "i-1", &c).await.unwrap(),
            Completion::AlreadyOver(_)
        ));
        assert_eq!(api.calls().len(), 1, "not retried");
    }
}
