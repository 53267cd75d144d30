//! Unit tests of the pure reconciler: one step at a time, no runtime.

use super::*;
use crate::engine::model::{HealthProbe, TaskSpec};

fn rec(containers: serde_json::Value) -> TaskRecord {
    let spec = TaskSpec::from_json(&serde_json::json!({
        "arn": "t", "family": "f", "version": "1", "containers": containers
    }))
    .unwrap();
    let mut r = TaskRecord::new(spec, 1, 0.0).unwrap();
    r.admitted = true;
    r
}

fn ctx() -> Ctx {
    Ctx {
        now: 1000.0,
        stop_timeout: Duration::from_secs(30),
        disable_privileged: false,
        pull_upfront: false,
        cleanup_wait: Duration::from_secs(3600),
        disk_pressure: false,
        stopped_reported: false,
        secrets: SecretsGate::Ready,
        link_events: None,
    }
}

fn obs(r: &TaskRecord, name: &str, state: State, exit: Option<i32>) -> Observed {
    let c = r.container(name).unwrap();
    Observed {
        id: c.docker_id.clone().unwrap_or_else(|| format!("id-{name}")),
        name: c.docker_name.clone(),
        task_arn: Some("t".into()),
        container_name: Some(name.into()),
        state: Some(state),
        exit_code: exit,
        started_at: (state != State::Created).then(|| "2024-01-01T00:00:00Z".into()),
        ..Observed::default()
    }
}

fn run(r: &TaskRecord, observed: &[Observed], in_flight: &[ActionKey], c: &Ctx) -> Plan {
    let map: HashMap<String, Observed> = observed
        .iter()
        .map(|o| (o.name.clone(), o.clone()))
        .collect();
    let flight: HashSet<ActionKey> = in_flight.iter().cloned().collect();
    reconcile(
        r,
        &World {
            observed: &map,
            listed: true,
            listed_epoch: 10,
            in_flight: &flight,
        },
        c,
    )
}

#[test]
fn a_new_task_pulls_then_creates_then_starts() {
    let r = rec(serde_json::json!([{"name": "a", "image": "i", "essential": true}]));
    let p = run(&r, &[], &[], &ctx());
    assert!(matches!(&p.actions[..], [Action::EnsurePulled { image, .. }] if image == "i"));
    assert_eq!(p.record.pull_started_at, Some(1000.0));

    let mut r = p.record;
    assert!(apply(
        &mut r,
        &Outcome::Pulled {
            image: "i".into(),
            result: Ok(None)
        },
        1001.0,
        1
    ));
    let p = run(&r, &[], &[], &ctx());
    assert!(matches!(&p.actions[..], [Action::EnsureCreated { .. }]));
    assert_eq!(p.record.known, TaskStatus::ManifestPulled);

    let mut r = p.record;
    apply(
        &mut r,
        &Outcome::Created {
            task_arn: "t".into(),
            container: "a".into(),
            result: Ok("id-a".into()),
        },
        1002.0,
        11,
    );
    let p = run(&r, &[], &[], &ctx());
    // The id was recorded after the listing (epoch 11 > 10): not judged vanished.
    assert!(matches!(&p.actions[..], [Action::EnsureRunning { id, .. }] if id == "id-a"));
    let running = obs(&p.record, "a", State::Running, None);
    let p = run(&p.record, &[running], &[], &ctx());
    assert_eq!(p.record.known, TaskStatus::Running);
    assert!(p.actions.is_empty());
}

#[test]
fn a_recorded_container_missing_from_a_later_listing_vanished() {
    let mut r = rec(serde_json::json!([{"name": "a", "image": "i", "essential": true}]));
    r.containers[0].known = ContainerStatus::Running;
    r.containers[0].docker_id = Some("x".into());
    r.containers[0].id_epoch = 10;
    let p = run(&r, &[], &[], &ctx());
    assert_eq!(p.record.known, TaskStatus::Stopped);
    assert!(
        p.record.containers[0]
            .reason
            .as_deref()
            .unwrap()
            .starts_with("ContainerVanishedError")
    );
    r.containers[0].id_epoch = 11;
    let p = run(&r, &[], &[], &ctx());
    assert_eq!(
        p.record.containers[0].known,
        ContainerStatus::Running,
        "listing older than the id"
    );
}

#[test]
fn a_listing_that_ran_during_a_failed_start_or_stop_cannot_judge_the_container_vanished() {
    // The listing (epoch 10) skipped the container while its action was in flight; the action
    // then failed (epoch 11), so the container still exists but is missing from that listing.
    let failed = [
        (
            ContainerStatus::Created,
            Outcome::Started {
                task_arn: "t".into(),
                container: "a".into(),
                result: Err(RuntimeError::Unavailable("busy".into())),
            },
        ),
        (
            ContainerStatus::Running,
            Outcome::Stopped {
                task_arn: "t".into(),
                container: "a".into(),
                result: Err(RuntimeError::Unavailable("busy".into())),
            },
        ),
    ];
    for (known, outcome) in failed {
        let mut r = rec(serde_json::json!([{"name": "a", "image": "i", "essential": true}]));
        r.containers[0].known = known;
        r.containers[0].docker_id = Some("x".into());
        r.containers[0].id_epoch = 3;
        assert!(apply(&mut r, &outcome, 1000.0, 11));
        let p = run(&r, &[], &[], &ctx());
        assert_eq!(p.record.containers[0].known, known, "after {outcome:?}");
        assert_eq!(p.record.containers[0].reason, None, "after {outcome:?}");
    }
}

#[test]
fn essential_exit_stops_siblings_with_their_grace() {
    let mut r = rec(serde_json::json!([
        {"name": "a", "image": "i", "essential": true},
        {"name": "b", "image": "i", "essential": false, "stopTimeout": 2}
    ]));
    for c in &mut r.containers {
        c.known = ContainerStatus::Running;
        c.docker_id = Some(format!("id-{}", c.name));
    }
    r.known = TaskStatus::Running;
    let exited = obs(&r, "a", State::Exited, Some(1));
    let running = obs(&r, "b", State::Running, None);
    let p = run(&r, &[exited.clone(), running.clone()], &[], &ctx());
    assert_eq!(p.record.desired, TaskStatus::Stopped);
    assert_eq!(p.record.reason.as_deref(), Some(ESSENTIAL_EXITED));
    assert_eq!(
        p.record.known,
        TaskStatus::Running,
        "not stopped until all are"
    );
    assert!(
        matches!(&p.actions[..], [Action::EnsureStopped { grace, .. }] if *grace == Duration::from_secs(2))
    );
    // While the stop runs, nothing else happens.
    let key = ActionKey::Container("t".into(), "b".into());
    let p2 = run(&p.record, &[exited.clone(), running], &[key], &ctx());
    assert!(p2.actions.is_empty());
    let b_exit = obs(&r, "b", State::Exited, Some(137));
    let p3 = run(&p2.record, &[exited, b_exit], &[], &ctx());
    assert_eq!(p3.record.known, TaskStatus::Stopped);
    assert_eq!(p3.record.stopped_at, Some(1000.0));
    assert_eq!(p3.record.containers[1].exit_code, Some(137));
}

#[test]
fn non_essential_exit_keeps_the_task() {
    let mut r = rec(serde_json::json!([
        {"name": "a", "image": "i", "essential": true},
        {"name": "b", "image": "i", "essential": false}
    ]));
    for c in &mut r.containers {
        c.known = ContainerStatus::Running;
        c.docker_id = Some(format!("id-{}", c.name));
    }
    let a = obs(&r, "a", State::Running, None);
    let b = obs(&r, "b", State::Exited, Some(0));
    let p = run(&r, &[a, b], &[], &ctx());
    assert_eq!(p.record.desired, TaskStatus::Running);
    assert_eq!(p.record.containers[1].known, ContainerStatus::Stopped);
    assert!(p.actions.is_empty(), "never restarted");
}

#[test]
fn retryable_create_failures_back_off_then_give_up() {
    let mut r = rec(serde_json::json!([{"name": "a", "image": "i", "essential": true}]));
    r.containers[0].known = ContainerStatus::Pulled;
    let err = Outcome::Created {
        task_arn: "t".into(),
        container: "a".into(),
        result: Err(RuntimeError::Unavailable("boom".into())),
    };
    apply(&mut r, &err, 1000.0, 1);
    let p = run(&r, &[], &[], &ctx());
    assert!(p.actions.is_empty(), "waits for the retry time");
    assert_eq!(p.requeue_at, Some(1001.0));
    let later = Ctx {
        now: 1001.5,
        ..ctx()
    };
    assert!(matches!(
        &run(&r, &[], &[], &later).actions[..],
        [Action::EnsureCreated { .. }]
    ));
    apply(&mut r, &err, 1002.0, 2);
    apply(&mut r, &err, 1010.0, 3);
    let p = run(
        &r,
        &[],
        &[],
        &Ctx {
            now: 2000.0,
            ..ctx()
        },
    );
    assert_eq!(p.record.known, TaskStatus::Stopped);
    assert!(
        p.record.containers[0]
            .reason
            .as_deref()
            .unwrap()
            .starts_with("CannotCreateContainerError")
    );
}

#[test]
fn waiting_tasks_do_nothing_and_stopped_ones_are_cleaned_after_report_and_wait() {
    let mut r = rec(serde_json::json!([{"name": "a", "image": "i", "essential": true}]));
    r.admitted = false;
    assert!(run(&r, &[], &[], &ctx()).actions.is_empty());

    r.known = TaskStatus::Stopped;
    r.desired = TaskStatus::Stopped;
    r.containers[0].known = ContainerStatus::Stopped;
    r.stopped_at = Some(1000.0);
    let reported = Ctx {
        stopped_reported: true,
        ..ctx()
    };
    let p = run(&r, &[], &[], &reported);
    assert!(p.actions.is_empty());
    assert_eq!(p.requeue_at, Some(4600.0));
    let late_unreported = Ctx {
        now: 5000.0,
        ..ctx()
    };
    assert!(
        run(&r, &[], &[], &late_unreported).actions.is_empty(),
        "waits for the report"
    );
    let late = Ctx {
        now: 5000.0,
        ..reported.clone()
    };
    assert!(matches!(
        &run(&r, &[], &[], &late).actions[..],
        [Action::EnsureRemoved { .. }]
    ));
    let pressure = Ctx {
        disk_pressure: true,
        ..reported
    };
    assert!(matches!(
        &run(&r, &[], &[], &pressure).actions[..],
        [Action::EnsureRemoved { .. }]
    ));
}

#[test]
fn desired_stopped_before_create_needs_no_docker() {
    let mut r = rec(serde_json::json!([{"name": "a", "image": "i", "essential": true}]));
    r.desired = TaskStatus::Stopped;
    let p = run(&r, &[], &[], &ctx());
    assert_eq!(p.record.known, TaskStatus::Stopped);
    assert!(p.actions.is_empty());
    // ...but a create in flight is waited for.
    let key = ActionKey::Container("t".into(), "a".into());
    let p = run(&r, &[], &[key], &ctx());
    assert_eq!(p.record.known, TaskStatus::None);
}

#[test]
fn a_pull_with_a_registry_login_waits_for_the_tasks_fetch_and_the_others_do_not() {
    let r = rec(serde_json::json!([
        {"name": "private", "image": "reg/p", "essential": true,
         "registryAuthentication": {"type": "asm", "asmAuthData": {"credentialsParameter": "s"}}},
        {"name": "public", "image": "i", "essential": false}
    ]));
    let pending = Ctx {
        secrets: SecretsGate::Pending,
        ..ctx()
    };
    let p = run(&r, &[], &[], &pending);
    assert_eq!(
        p.actions,
        vec![
            Action::EnsureResolved {
                task_arn: "t".into()
            },
            Action::EnsurePulled {
                image: "i".into(),
                task_arn: "t".into(),
                container: "public".into()
            },
        ]
    );
    let p = run(&r, &[], &[], &ctx());
    assert!(
        p.actions
            .iter()
            .any(|a| matches!(a, Action::EnsurePulled { image, .. } if image == "reg/p")),
        "{:?}",
        p.actions
    );
    // A failed fetch stops the task before its pull.
    let failed = Ctx {
        secrets: SecretsGate::Failed("CannotPullContainerError: no".into()),
        ..ctx()
    };
    let p = run(&r, &[], &[], &failed);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(
        p.record.reason.as_deref(),
        Some("CannotPullContainerError: no")
    );
}

/// A health-checked container `a` (and the essential `web` depending on it HEALTHY), `a`
/// running.
fn health_checked_task() -> TaskRecord {
    let mut r = rec(serde_json::json!([
        {"name": "a", "image": "i", "essential": false, "healthCheckType": "DOCKER"},
        {"name": "web", "image": "i", "essential": true,
         "dependsOn": [{"containerName": "a", "condition": "HEALTHY"}]}
    ]));
    r.containers[0].known = ContainerStatus::Running;
    r.containers[0].docker_id = Some("id-a".into());
    r.containers[0].ran = true;
    r.containers[1].known = ContainerStatus::Pulled;
    r
}

fn with_health(mut o: Observed, health: HealthStatus, probe: Option<(i64, &str)>) -> Observed {
    o.health = health;
    o.health_probe = probe.map(|(code, out)| HealthProbe::new(code, out));
    o
}

fn at(now: f64) -> Ctx {
    Ctx { now, ..ctx() }
}

/// Docker's status maps to the record (starting = UNKNOWN never replaces a result), with the
/// last probe; `health_since` moves only when the status changes.
#[test]
fn health_is_tracked_and_its_since_moves_only_on_a_change() {
    let r = health_checked_task();
    let running = obs(&r, "a", State::Running, None);

    // Starting: nothing known yet.
    let p = run(
        &r,
        &[with_health(running.clone(), HealthStatus::Unknown, None)],
        &[],
        &at(1000.0),
    );
    let a = &p.record.containers[0];
    assert_eq!((a.health, a.health_since), (HealthStatus::Unknown, None));

    // Healthy at 1001.
    let p = run(
        &p.record,
        &[with_health(
            running.clone(),
            HealthStatus::Healthy,
            Some((0, "ok")),
        )],
        &[],
        &at(1001.0),
    );
    let a = &p.record.containers[0];
    assert_eq!(a.health, HealthStatus::Healthy);
    assert_eq!(a.health_since, Some(1001.0));
    assert_eq!(a.health_probe, Some(HealthProbe::new(0, "ok")));

    // Still healthy later: the time of the change stays.
    let p = run(
        &p.record,
        &[with_health(
            running.clone(),
            HealthStatus::Healthy,
            Some((0, "ok again")),
        )],
        &[],
        &at(1050.0),
    );
    let a = &p.record.containers[0];
    assert_eq!(a.health_since, Some(1001.0));
    assert_eq!(a.health_probe, Some(HealthProbe::new(0, "ok again")));

    // Docker's `starting` (after a restart of the check, say) does not undo a result.
    let p = run(
        &p.record,
        &[with_health(running.clone(), HealthStatus::Unknown, None)],
        &[],
        &at(1060.0),
    );
    let a = &p.record.containers[0];
    assert_eq!(
        (a.health, a.health_since),
        (HealthStatus::Healthy, Some(1001.0))
    );

    // Unhealthy at 1070, with the failing probe's exit code and output.
    let p = run(
        &p.record,
        &[with_health(
            running.clone(),
            HealthStatus::Unhealthy,
            Some((1, "refused")),
        )],
        &[],
        &at(1070.0),
    );
    let a = &p.record.containers[0];
    assert_eq!(a.health, HealthStatus::Unhealthy);
    assert_eq!(a.health_since, Some(1070.0));
    assert_eq!(a.health_probe, Some(HealthProbe::new(1, "refused")));
    let published = crate::engine::introspection::health_of(a);
    assert_eq!(
        published,
        crate::task_endpoint::ContainerHealth {
            status: HealthStatus::Unhealthy,
            since_ms: Some(1_070_000),
            exit_code: Some(1),
            output: Some("refused".into()),
        }
    );

    // What Docker says of the container once it exited is not a probe result.
    let mut exited = with_health(
        obs(&p.record, "a", State::Exited, Some(0)),
        HealthStatus::Healthy,
        Some((0, "late")),
    );
    exited.id = "id-a".into();
    let p = run(&p.record, &[exited], &[], &at(1080.0));
    let a = &p.record.containers[0];
    assert_eq!(a.known, ContainerStatus::Stopped);
    assert_eq!(
        (a.health, a.health_since),
        (HealthStatus::Unhealthy, Some(1070.0))
    );
}

/// An image's own HEALTHCHECK (no `healthCheckType`) is not tracked.
#[test]
fn health_of_a_container_without_a_task_health_check_is_ignored() {
    let mut r = rec(serde_json::json!([{"name": "a", "image": "i", "essential": true}]));
    r.containers[0].known = ContainerStatus::Running;
    r.containers[0].docker_id = Some("id-a".into());
    let o = with_health(
        obs(&r, "a", State::Running, None),
        HealthStatus::Healthy,
        Some((0, "ok")),
    );
    let p = run(&r, &[o], &[], &ctx());
    let a = &p.record.containers[0];
    assert_eq!(
        (a.health, a.health_since, &a.health_probe),
        (HealthStatus::Unknown, None, &None)
    );
}

/// The start's own inspection counts as an observation of health too.
#[test]
fn the_starts_inspection_feeds_health() {
    let mut r = health_checked_task();
    r.containers[0].known = ContainerStatus::Created;
    let o = with_health(
        obs(&r, "a", State::Running, None),
        HealthStatus::Healthy,
        Some((0, "ok")),
    );
    assert!(apply(
        &mut r,
        &Outcome::Started {
            task_arn: "t".into(),
            container: "a".into(),
            result: Ok(Some(o)),
        },
        1234.0,
        5
    ));
    assert_eq!(r.containers[0].health, HealthStatus::Healthy);
    assert_eq!(r.containers[0].health_since, Some(1234.0));
}

/// dependsOn HEALTHY (protocol spec §7.2): the dependent is created only once the dependency is
/// HEALTHY; while it is UNHEALTHY the dependent waits; when it stops first the dependent stops
/// with a DependencyConditionError (and, being essential, stops the task).
#[test]
fn depends_on_healthy_waits_for_the_dependency_to_be_healthy() {
    let r = health_checked_task();
    let running = obs(&r, "a", State::Running, None);
    let creates = |p: &Plan| {
        p.actions
            .iter()
            .filter(|a| matches!(a, Action::EnsureCreated { container, .. } if container == "web"))
            .count()
    };

    let p = run(
        &r,
        &[with_health(running.clone(), HealthStatus::Unknown, None)],
        &[],
        &ctx(),
    );
    assert_eq!(creates(&p), 0);
    let p = run(
        &p.record,
        &[with_health(
            running.clone(),
            HealthStatus::Unhealthy,
            Some((1, "")),
        )],
        &[],
        &ctx(),
    );
    assert_eq!(creates(&p), 0, "UNHEALTHY: still waiting");
    assert_eq!(p.record.containers[1].known, ContainerStatus::Pulled);
    let healthy = run(
        &p.record,
        &[with_health(
            running.clone(),
            HealthStatus::Healthy,
            Some((0, "")),
        )],
        &[],
        &ctx(),
    );
    assert_eq!(creates(&healthy), 1, "HEALTHY: web is created");

    // The dependency exits before it was ever healthy.
    let mut exited = obs(&p.record, "a", State::Exited, Some(1));
    exited.id = "id-a".into();
    let p = run(&p.record, &[exited], &[], &ctx());
    let web = &p.record.containers[1];
    assert_eq!(web.known, ContainerStatus::Stopped);
    assert!(
        web.reason
            .as_deref()
            .is_some_and(|r| r.starts_with("DependencyConditionError")),
        "{:?}",
        web.reason
    );
    assert_eq!(creates(&p), 0);
    assert_eq!(p.record.desired, TaskStatus::Stopped);
}

// ---------------------------------------------------------------------------------------------
// Internal containers: the namespace pause of `pidMode`/`ipcMode` `task`.

use crate::engine::model::internal::{DEFAULT_PAUSE_IMAGE, NAMESPACE_PAUSE_NAME};
use crate::engine::model::{ContainerKind, take_change};

const PAUSE: &str = NAMESPACE_PAUSE_NAME;

fn pause_task(modes: serde_json::Value) -> TaskRecord {
    let mut t = serde_json::json!({
        "arn": "t", "family": "f", "version": "1",
        "containers": [
            {"name": "a", "image": "i", "essential": true},
            {"name": "b", "image": "j", "essential": false, "dependsOn": [{"containerName": "a", "condition": "START"}]}
        ]
    });
    for (k, v) in modes.as_object().unwrap() {
        t[k] = v.clone();
    }
    let mut r = TaskRecord::new(TaskSpec::from_json(&t).unwrap(), 1, 0.0).unwrap();
    r.admitted = true;
    r
}

fn with_volume(containers: serde_json::Value) -> TaskRecord {
    let spec = TaskSpec::from_json(&serde_json::json!({
        "arn": "t", "family": "f", "version": "1", "containers": containers,
        "volumes": [{"name": "data", "type": "docker",
            "dockerVolumeConfiguration": {"scope": "shared", "autoprovision": false}}]
    }))
    .unwrap();
    let mut r = TaskRecord::new(spec, 1, 0.0).unwrap();
    r.admitted = true;
    r
}

fn names_of(actions: &[Action]) -> Vec<(&'static str, String)> {
    actions
        .iter()
        .map(|a| match a {
            Action::EnsurePulled { container, .. } => ("pull", container.clone()),
            Action::EnsureCreated { container, .. } => ("create", container.clone()),
            Action::EnsureRunning { container, .. } => ("start", container.clone()),
            Action::EnsureStopped { container, .. } => ("stop", container.clone()),
            Action::EnsureResolved { .. } => ("resolve", String::new()),
            Action::EnsureTaskResources { .. } => ("resources", String::new()),
            Action::EnsureRemoved { .. } => ("remove", String::new()),
            Action::EnsureEniFound { .. } => ("find-eni", String::new()),
            Action::EnsureNetwork { .. } => ("provision", String::new()),
            Action::EnsureNetworkReleased { .. } => ("release", String::new()),
        })
        .collect()
}

#[test]
fn task_namespaces_add_one_internal_pause_container_first() {
    for modes in [
        serde_json::json!({"pidMode": "task"}),
        serde_json::json!({"ipcMode": "task"}),
        serde_json::json!({"pidMode": "task", "ipcMode": "task"}),
    ] {
        let r = pause_task(modes.clone());
        let kinds: Vec<(&str, ContainerKind)> = r
            .containers
            .iter()
            .map(|c| (c.name.as_str(), c.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                (PAUSE, ContainerKind::NamespacePause),
                ("a", ContainerKind::Normal),
                ("b", ContainerKind::Normal)
            ],
            "{modes}"
        );
        let spec = r.spec_of(PAUSE).unwrap();
        assert_eq!(spec.image, DEFAULT_PAUSE_IMAGE);
        assert!(spec.essential);
        assert_eq!(
            r.spec.containers.len(),
            2,
            "the delivered spec is untouched"
        );
    }
    for modes in [
        serde_json::json!({}),
        serde_json::json!({"pidMode": "host", "ipcMode": "host"}),
        serde_json::json!({"ipcMode": "none"}),
    ] {
        let r = pause_task(modes.clone());
        assert!(
            r.containers.iter().all(|c| !c.kind.is_internal()),
            "{modes}"
        );
    }
    // A delivered container cannot take the internal name.
    let t = serde_json::json!({"arn": "t", "pidMode": "task",
        "containers": [{"name": PAUSE, "image": "i"}]});
    assert!(TaskRecord::new(TaskSpec::from_json(&t).unwrap(), 1, 0.0).is_err());
}

#[test]
fn user_containers_wait_for_the_pause_to_run_even_with_upfront_pulls() {
    let upfront = Ctx {
        pull_upfront: true,
        ..ctx()
    };
    let r = pause_task(serde_json::json!({"pidMode": "task", "ipcMode": "task"}));
    let p = run(&r, &[], &[], &upfront);
    assert_eq!(names_of(&p.actions), [("pull", PAUSE.to_owned())]);
    let mut r = p.record;
    assert!(apply(
        &mut r,
        &Outcome::Pulled {
            image: DEFAULT_PAUSE_IMAGE.into(),
            result: Ok(Some("sha256:p".into()))
        },
        1001.0,
        1
    ));
    let p = run(&r, &[], &[], &upfront);
    assert_eq!(names_of(&p.actions), [("create", PAUSE.to_owned())]);
    let mut r = p.record;
    assert!(apply(
        &mut r,
        &Outcome::Created {
            task_arn: "t".into(),
            container: PAUSE.into(),
            result: Ok("id-pause".into())
        },
        1001.0,
        2
    ));
    // Created is not enough: the user containers wait for RUNNING.
    let p = run(&r, &[obs(&r, PAUSE, State::Created, None)], &[], &upfront);
    assert_eq!(names_of(&p.actions), [("start", PAUSE.to_owned())]);
    let running = obs(&r, PAUSE, State::Running, None);
    let p = run(&p.record, &[running], &[], &upfront);
    assert_eq!(
        names_of(&p.actions),
        [("pull", "a".to_owned()), ("pull", "b".to_owned())],
        "after the pause runs, the user containers are pulled (upfront: b too)"
    );
}

#[test]
fn the_pause_is_stopped_after_every_user_container() {
    let mut r = pause_task(serde_json::json!({"pidMode": "task"}));
    for c in &mut r.containers {
        c.known = ContainerStatus::Running;
        c.docker_id = Some(format!("id-{}", c.name));
    }
    r.known = TaskStatus::Running;
    r.desired = TaskStatus::Stopped;
    let all_running: Vec<Observed> = [PAUSE, "a", "b"]
        .iter()
        .map(|n| obs(&r, n, State::Running, None))
        .collect();
    // b depends on a: b first, then a, then the pause.
    let p = run(&r, &all_running, &[], &ctx());
    assert_eq!(names_of(&p.actions), [("stop", "b".to_owned())]);
    let step = |r: &TaskRecord, stopped: &[&str]| -> Vec<Observed> {
        [PAUSE, "a", "b"]
            .iter()
            .map(|n| {
                if stopped.contains(n) {
                    obs(r, n, State::Exited, Some(143))
                } else {
                    obs(r, n, State::Running, None)
                }
            })
            .collect()
    };
    let p = run(&p.record, &step(&r, &["b"]), &[], &ctx());
    assert_eq!(names_of(&p.actions), [("stop", "a".to_owned())]);
    let p = run(&p.record, &step(&r, &["b", "a"]), &[], &ctx());
    assert_eq!(names_of(&p.actions), [("stop", PAUSE.to_owned())]);
    assert_eq!(
        p.record.known,
        TaskStatus::Running,
        "not stopped before the pause"
    );
    let p = run(&p.record, &step(&r, &["b", "a", PAUSE]), &[], &ctx());
    assert_eq!(p.record.known, TaskStatus::Stopped);
}

#[test]
fn a_dead_pause_stops_the_task_with_a_reason_and_is_never_reported() {
    let mut r = pause_task(serde_json::json!({"ipcMode": "task"}));
    for c in &mut r.containers {
        c.known = ContainerStatus::Running;
        c.docker_id = Some(format!("id-{}", c.name));
    }
    r.known = TaskStatus::Running;
    let mut rec = r.clone();
    let first = take_change(&mut rec, "c").unwrap();
    assert_eq!(
        first
            .containers
            .iter()
            .map(|c| c.container_name.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    let seen = [
        obs(&rec, PAUSE, State::Exited, Some(137)),
        obs(&rec, "a", State::Running, None),
        obs(&rec, "b", State::Running, None),
    ];
    let p = run(&rec, &seen, &[], &ctx());
    assert_eq!(p.record.desired, TaskStatus::Stopped);
    let reason = p.record.reason.clone().unwrap();
    assert!(
        reason.contains("namespace pause container") && reason.contains("exit code 137"),
        "{reason}"
    );
    // Its users are stopped (b first, it depends on a); the dead pause is never stopped again.
    assert_eq!(names_of(&p.actions), [("stop", "b".to_owned())]);
    let mut stopped = p.record;
    for c in &mut stopped.containers {
        c.known = ContainerStatus::Stopped;
    }
    stopped.known = TaskStatus::Stopped;
    let last = take_change(&mut stopped, "c").unwrap();
    assert!(last.reason.as_deref().unwrap().contains("namespace pause"));
    assert!(last.containers.iter().all(|c| c.container_name != PAUSE));
}

#[test]
fn a_missing_pause_image_stops_the_task_before_any_user_container() {
    let r = pause_task(serde_json::json!({"pidMode": "task"}));
    let p = run(&r, &[], &[], &ctx());
    let mut r = p.record;
    let why =
        format!("CannotPullContainerError: the pause image {DEFAULT_PAUSE_IMAGE} is not in Docker");
    assert!(apply(
        &mut r,
        &Outcome::Pulled {
            image: DEFAULT_PAUSE_IMAGE.into(),
            result: Err(why.clone())
        },
        1001.0,
        1
    ));
    // One pass per dependsOn level (b depends on a), as for any task; nothing is pulled.
    let p = run(&r, &[], &[], &ctx());
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    let p = run(&p.record, &[], &[], &ctx());
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.record.known, TaskStatus::Stopped);
    assert!(p.record.reason.as_deref().unwrap().contains(&why));
    for c in &p.record.containers {
        assert_eq!(c.known, ContainerStatus::Stopped, "{}", c.name);
        assert!(c.docker_id.is_none());
    }
}

fn pulled(mut r: TaskRecord) -> TaskRecord {
    for c in &mut r.containers {
        c.known = ContainerStatus::Pulled;
    }
    r
}

#[test]
fn task_resources_are_asked_once_beside_the_pulls_and_gate_every_create() {
    let two = serde_json::json!([
        {"name": "a", "image": "i", "essential": true,
            "mountPoints": [{"sourceVolume": "data", "containerPath": "/d"}]},
        {"name": "b", "image": "i", "essential": true,
            "mountPoints": [{"sourceVolume": "data", "containerPath": "/d"}]},
    ]);
    let r = with_volume(two);
    let p = run(&r, &[], &[], &ctx());
    assert_eq!(resource_asks(&p), 1, "{:?}", p.actions);
    assert!(
        p.actions
            .iter()
            .any(|a| matches!(a, Action::EnsurePulled { .. }))
    );

    // Pulled, resources not ready: no create, and no second ask while one is in flight.
    let r = pulled(p.record);
    let busy = [ActionKey::Resources("t".into())];
    let p = run(&r, &[], &busy, &ctx());
    assert_eq!(creates(&p), 0);
    assert_eq!(resource_asks(&p), 0);

    // Prepared: both containers are created, nothing is prepared again.
    let r = resources_prepared(p.record);
    assert!(r.resources.ready);
    let p = run(&r, &[], &[], &ctx());
    assert_eq!(creates(&p), 2);
    assert_eq!(resource_asks(&p), 0);
}

#[test]
fn a_volume_that_cannot_be_had_stops_the_task_before_any_create() {
    let r = pulled(with_volume(serde_json::json!([
        {"name": "a", "image": "i", "essential": true,
            "mountPoints": [{"sourceVolume": "data", "containerPath": "/d"}]}
    ])));
    let why = "initialize volume: volume detection failed, volume 'data' does not exist and autoprovision is set to false";
    // Docker unwell first: retried after the delay, nothing stops.
    let mut r = r;
    apply(
        &mut r,
        &Outcome::TaskResources {
            task_arn: "t".into(),
            result: Err(ResourceFailure {
                message: "initialize volume: inspect of volume 'data' failed: down".into(),
                retryable: true,
            }),
        },
        1000.0,
        2,
    );
    let p = run(&r, &[], &[], &ctx());
    assert_eq!(creates(&p), 0);
    assert_eq!(p.record.desired, TaskStatus::Running);
    assert_eq!(p.requeue_at, Some(1001.0));
    let later = Ctx {
        now: 1002.0,
        ..ctx()
    };
    let p = run(&r, &[], &[], &later);
    assert_eq!(resource_asks(&p), 1, "{:?}", p.actions);

    // Then final: the task stops with the reason, nothing created.
    apply(
        &mut r,
        &Outcome::TaskResources {
            task_arn: "t".into(),
            result: Err(ResourceFailure {
                message: why.into(),
                retryable: false,
            }),
        },
        1002.0,
        3,
    );
    let p = run(&r, &[], &[], &later);
    assert_eq!(creates(&p), 0);
    assert_eq!(p.record.known, TaskStatus::Stopped);
    assert_eq!(p.record.reason.as_deref(), Some(why));
    assert_eq!(p.record.containers[0].reason.as_deref(), Some(why));
    assert!(p.actions.is_empty(), "{:?}", p.actions);
}

#[test]
fn a_task_without_docker_volumes_has_no_resource_step() {
    let spec = TaskSpec::from_json(&serde_json::json!({
        "arn": "t", "family": "f", "version": "1",
        "containers": [{"name": "a", "image": "i", "essential": true,
            "mountPoints": [{"sourceVolume": "h", "containerPath": "/h"}]}],
        "volumes": [{"name": "h", "type": "host", "host": {"sourcePath": "/srv"}}]
    }))
    .unwrap();
    let mut r = TaskRecord::new(spec, 1, 0.0).unwrap();
    r.admitted = true;
    let p = run(&pulled(r), &[], &[], &ctx());
    assert_eq!(creates(&p), 1);
    assert_eq!(resource_asks(&p), 0, "{:?}", p.actions);
}

#[test]
fn a_task_cgroup_is_a_resource_made_before_any_create() {
    let mut r = rec(serde_json::json!([
        {"name": "a", "image": "i", "essential": true},
        {"name": "b", "image": "i", "essential": true},
    ]));
    r.resources.cgroup = true;
    let p = run(&r, &[], &[], &ctx());
    assert_eq!(resource_asks(&p), 1, "{:?}", p.actions);
    assert_eq!(creates(&p), 0);

    // Pulled, the cgroup not made yet: no create.
    let r = pulled(p.record);
    let busy = [ActionKey::Resources("t".into())];
    let p = run(&r, &[], &busy, &ctx());
    assert_eq!((creates(&p), resource_asks(&p)), (0, 0), "{:?}", p.actions);

    // Made: both containers are created, the cgroup is not made again.
    let r = resources_prepared(p.record);
    let p = run(&r, &[], &[], &ctx());
    assert_eq!((creates(&p), resource_asks(&p)), (2, 0), "{:?}", p.actions);
}

/// The `EnsureTaskResources` asks of a plan.
fn resource_asks(p: &Plan) -> usize {
    p.actions
        .iter()
        .filter(|a| matches!(a, Action::EnsureTaskResources { .. }))
        .count()
}

/// `r` after its resources step succeeded.
fn resources_prepared(mut r: TaskRecord) -> TaskRecord {
    assert!(apply(
        &mut r,
        &Outcome::TaskResources {
            task_arn: "t".into(),
            result: Ok(())
        },
        1000.0,
        2
    ));
    r
}

fn creates(p: &Plan) -> usize {
    p.actions
        .iter()
        .filter(|a| matches!(a, Action::EnsureCreated { .. }))
        .count()
}

/// A task waiting for its ENI (expiring at epoch 2000).
fn waiting_for_eni() -> TaskRecord {
    let mut r = rec(serde_json::json!([{"name": "web", "image": "busybox", "essential": true}]));
    let acs: crate::engine::model::eni::AcsEni = serde_json::from_value(serde_json::json!({
        "attachmentArn": "arn:aws:ecs:us-east-1:1:attachment/a",
        "ec2Id": "eni-0abc",
        "macAddress": "0a:1b:2c:3d:4e:5f",
        "ipv4Addresses": [{"privateAddress": "10.0.1.23", "primary": true}]
    }))
    .unwrap();
    r.network = Some(crate::engine::model::eni::TaskNet::new(
        acs.to_eni(0).unwrap(),
        2000.0,
    ));
    r
}

fn finds(p: &Plan) -> usize {
    p.actions
        .iter()
        .filter(|a| matches!(a, Action::EnsureEniFound { .. }))
        .count()
}

#[test]
fn with_link_events_an_eni_is_looked_for_per_counter_change_and_every_30_s() {
    let at = |now: f64, links: Option<u64>| Ctx {
        now,
        link_events: links,
        ..ctx()
    };
    let first = run(&waiting_for_eni(), &[], &[], &at(1000.0, Some(5)));
    assert_eq!(finds(&first), 1, "a new task looks at once");
    let r = first.record;
    let n = r.network.as_ref().unwrap();
    assert_eq!((n.looked_at, n.links_seen), (1000.0, Some(5)));

    // Nothing moved: the next look is the 30 s reconcile.
    let quiet = run(&r, &[], &[], &at(1010.0, Some(5)));
    assert_eq!(finds(&quiet), 0);
    assert_eq!(quiet.requeue_at, Some(1030.0));
    assert_eq!(finds(&run(&r, &[], &[], &at(1030.0, Some(5)))), 1);

    // The counter moved (once or many times): one look at once, none while one runs.
    let moved = run(&r, &[], &[], &at(1010.0, Some(9)));
    assert_eq!(finds(&moved), 1);
    assert_eq!(
        finds(&run(&moved.record, &[], &[], &at(1010.0, Some(9)))),
        0,
        "the same counter looks once"
    );
    let busy = [ActionKey::Network("t".into())];
    assert_eq!(finds(&run(&r, &[], &busy, &at(1010.0, Some(12)))), 0);

    // Without events: every second.
    let poll = run(&r, &[], &[], &at(1000.5, None));
    assert_eq!(finds(&poll), 0);
    assert_eq!(poll.requeue_at, Some(1001.0));
    assert_eq!(finds(&run(&r, &[], &[], &at(1001.0, None))), 1);

    // Before Docker was listed no action starts: the look stays due.
    let unlisted = reconcile(
        &waiting_for_eni(),
        &World {
            observed: &HashMap::new(),
            listed: false,
            listed_epoch: 0,
            in_flight: &HashSet::new(),
        },
        &at(1000.0, Some(5)),
    );
    assert_eq!(unlisted.record.network.as_ref().unwrap().looked_at, 0.0);
}
