//! The watchdog's rules, driven with a fake clock (`t0 + seconds`).

use super::*;

fn settings() -> Settings {
    Settings {
        repair: true,
        failure_threshold: 3,
        max_repairs_per_hour: 12,
        backoff_min: Duration::from_secs(10),
        backoff_max: Duration::from_secs(300),
        healthy_reset: Duration::from_secs(600),
    }
}

fn unit(active: Active, file: FileState) -> UnitState {
    UnitState {
        active,
        sub_state: "running".into(),
        result: "success".into(),
        file,
    }
}

fn healthy() -> Observation {
    Observation {
        ping: Probe::Ok,
        api: Probe::Ok,
        service: Some(unit(Active::Active, FileState::Enabled)),
        socket: Some(unit(Active::Active, FileState::Enabled)),
        draining: false,
    }
}

fn frozen() -> Observation {
    Observation {
        ping: Probe::TimedOut,
        api: Probe::Skipped,
        ..healthy()
    }
}

fn hung_api() -> Observation {
    Observation {
        api: Probe::TimedOut,
        ..healthy()
    }
}

fn with_service(active: Active, file: FileState) -> Observation {
    Observation {
        ping: Probe::Failed("connection refused".into()),
        api: Probe::Skipped,
        service: Some(unit(active, file)),
        ..healthy()
    }
}

/// A fake clock: seconds since an arbitrary start.
struct Clock(Instant);

impl Clock {
    fn new() -> Clock {
        Clock(Instant::now())
    }
    fn at(&self, secs: u64) -> Instant {
        self.0 + Duration::from_secs(secs)
    }
}

fn restarts(d: &Decision) -> usize {
    d.actions
        .iter()
        .filter(|(a, _)| *a == Action::Restart(SERVICE))
        .count()
}

#[test]
fn healthy_docker_needs_nothing() {
    let clock = Clock::new();
    let mut p = Policy::new(settings());
    for s in 0..100 {
        let d = p.decide(&healthy(), clock.at(s));
        assert_eq!(d, Decision::default());
    }
}

#[test]
fn restart_only_after_threshold_consecutive_failures() {
    let clock = Clock::new();
    let mut p = Policy::new(settings());
    assert!(p.decide(&frozen(), clock.at(0)).actions.is_empty());
    let d = p.decide(&frozen(), clock.at(10));
    assert!(d.actions.is_empty());
    assert_eq!(d.failures, 2);
    let d = p.decide(&frozen(), clock.at(20));
    assert_eq!(d.actions.len(), 1, "{d:?}");
    let (action, reason) = &d.actions[0];
    assert_eq!(*action, Action::Restart(SERVICE));
    assert!(reason.contains("3 rounds") && reason.contains("ping timed out"));
    // The count starts again after a repair.
    assert_eq!(d.failures, 0);
}

#[test]
fn a_success_resets_the_failure_count() {
    let clock = Clock::new();
    let mut p = Policy::new(settings());
    let seq = [frozen(), frozen(), healthy(), frozen(), frozen(), healthy()];
    for (i, obs) in seq.iter().enumerate() {
        let d = p.decide(obs, clock.at(i as u64 * 10));
        assert!(d.actions.is_empty(), "round {i}: {d:?}");
    }
}

#[test]
fn a_hung_api_counts_even_though_ping_answers() {
    let clock = Clock::new();
    let mut p = Policy::new(settings());
    p.decide(&hung_api(), clock.at(0));
    p.decide(&hung_api(), clock.at(10));
    let d = p.decide(&hung_api(), clock.at(20));
    assert_eq!(restarts(&d), 1);
    assert!(d.actions[0].1.contains("API hung"), "{d:?}");
}

#[test]
fn repairs_back_off_exponentially() {
    let clock = Clock::new();
    let mut p = Policy::new(settings());
    let mut repaired_at = Vec::new();
    // Docker stays frozen; one round per second for ten minutes.
    for s in 0..600 {
        let d = p.decide(&frozen(), clock.at(s));
        if restarts(&d) == 1 {
            repaired_at.push(s);
        } else if d.failures >= 3 {
            let held = d.held.unwrap_or_default();
            assert!(held.contains("backing off"), "second {s}: {held}");
        }
    }
    // Threshold reached at s=2; then waits of 10, 30, 90 and 270 s (failures keep accumulating
    // while the policy backs off, so each repair happens the second its wait ends).
    let gaps: Vec<u64> = repaired_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(repaired_at[0], 2);
    assert_eq!(gaps, vec![10, 30, 90, 270], "repairs at {repaired_at:?}");
}

#[test]
fn backoff_is_capped() {
    let p = Policy::new(settings());
    assert_eq!(p.backoff(0), Duration::from_secs(10));
    assert_eq!(p.backoff(1), Duration::from_secs(30));
    assert_eq!(p.backoff(4), Duration::from_secs(300));
    assert_eq!(p.backoff(1000), Duration::from_secs(300));
}

#[test]
fn ceiling_per_hour_then_only_reporting() {
    let clock = Clock::new();
    let mut p = Policy::new(Settings {
        max_repairs_per_hour: 2,
        backoff_min: Duration::from_secs(1),
        backoff_max: Duration::from_secs(1),
        ..settings()
    });
    let mut repaired_at = Vec::new();
    let mut last_held = String::new();
    for s in 0..3700 {
        let d = p.decide(&frozen(), clock.at(s));
        if restarts(&d) == 1 {
            repaired_at.push(s);
        }
        if let Some(h) = d.held {
            last_held = h;
        }
        if s == 1000 {
            assert!(last_held.contains("ceiling of 2"), "{last_held}");
        }
    }
    // Two repairs at once, then nothing until the first falls out of the hour window.
    assert_eq!(repaired_at[..2], [2, 5]);
    assert_eq!(repaired_at[2], 3602, "{repaired_at:?}");
    assert_eq!(p.repairs_last_hour(clock.at(3602)), 2);
}

#[test]
fn never_restart_while_draining_but_start_a_stopped_docker() {
    let clock = Clock::new();
    let mut p = Policy::new(settings());
    let draining = Observation {
        draining: true,
        ..frozen()
    };
    for s in 0..5 {
        let d = p.decide(&draining, clock.at(s));
        assert!(d.actions.is_empty(), "{d:?}");
    }
    let d = p.decide(&draining, clock.at(5));
    assert!(d.held.unwrap().contains("draining"));
    // A stopped docker is not running tasks; starting it helps the drain.
    let stopped = Observation {
        draining: true,
        ..with_service(Active::Inactive, FileState::Enabled)
    };
    let d = p.decide(&stopped, clock.at(6));
    assert_eq!(
        d.actions[0].0,
        Action::Start {
            unit: SERVICE,
            reset_failed: false
        }
    );
    // Draining over: the hung docker is restarted.
    let mut p = Policy::new(settings());
    for s in 0..3 {
        p.decide(&draining, clock.at(s));
    }
    assert_eq!(restarts(&p.decide(&frozen(), clock.at(3))), 1);
}

#[test]
fn disabled_and_stopped_docker_is_enabled_and_started() {
    let clock = Clock::new();
    let mut p = Policy::new(settings());
    let mut obs = with_service(Active::Inactive, FileState::Disabled);
    obs.socket = Some(unit(Active::Active, FileState::Disabled));
    let d = p.decide(&obs, clock.at(0));
    let actions: Vec<_> = d.actions.iter().map(|(a, _)| a.clone()).collect();
    assert_eq!(
        actions,
        vec![
            Action::Enable(SERVICE),
            Action::Enable(SOCKET),
            Action::Start {
                unit: SERVICE,
                reset_failed: false
            }
        ]
    );
    assert!(d.actions[0].1.contains("disabled"));
    // Enabled again but still stopped (the start is backing off): only the start is wanted,
    // and it waits for the backoff.
    let d = p.decide(
        &with_service(Active::Inactive, FileState::Enabled),
        clock.at(1),
    );
    assert!(d.actions.is_empty());
    assert!(d.held.unwrap().contains("backing off"));
}

#[test]
fn start_limit_failure_is_reset_and_started_with_backoff() {
    let clock = Clock::new();
    let mut p = Policy::new(settings());
    let mut obs = with_service(Active::Failed, FileState::Enabled);
    obs.service.as_mut().unwrap().result = "start-limit-hit".into();
    obs.socket = Some(unit(Active::Failed, FileState::Enabled));
    let d = p.decide(&obs, clock.at(0));
    let actions: Vec<_> = d.actions.iter().map(|(a, _)| a.clone()).collect();
    assert_eq!(
        actions,
        vec![
            Action::Start {
                unit: SOCKET,
                reset_failed: true
            },
            Action::Start {
                unit: SERVICE,
                reset_failed: true
            }
        ]
    );
    assert!(d.actions[1].1.contains("start-limit-hit"), "{d:?}");
    // It fails again at once: the next repair of the service waits 10 s, then 30 s.
    let mut starts = vec![0];
    for s in 1..60 {
        let d = p.decide(&obs, clock.at(s));
        if d.actions
            .iter()
            .any(|(a, _)| a.is_repair() && matches!(a, Action::Start { .. }))
        {
            starts.push(s);
        }
    }
    assert_eq!(starts, vec![0, 10, 40]);
}

#[test]
fn a_masked_docker_is_reported_never_fought() {
    let clock = Clock::new();
    let mut p = Policy::new(settings());
    let mut obs = with_service(Active::Inactive, FileState::Masked);
    obs.socket = Some(unit(Active::Inactive, FileState::Enabled));
    for s in 0..10 {
        let d = p.decide(&obs, clock.at(s));
        assert!(d.actions.is_empty(), "{d:?}");
        assert!(d.held.unwrap().contains("masked"));
    }
}

#[test]
fn without_systemd_only_ping_and_report() {
    let clock = Clock::new();
    let mut p = Policy::new(settings());
    let obs = Observation {
        service: None,
        socket: None,
        ..frozen()
    };
    for s in 0..2 {
        assert_eq!(p.decide(&obs, clock.at(s)).held, None);
    }
    let d = p.decide(&obs, clock.at(2));
    assert!(d.actions.is_empty());
    assert_eq!(d.failures, 3);
    assert!(d.held.unwrap().contains("without systemd"));
}

#[test]
fn repair_off_reports_what_it_would_do_and_spends_no_budget() {
    let clock = Clock::new();
    let mut p = Policy::new(Settings {
        repair: false,
        max_repairs_per_hour: 1,
        ..settings()
    });
    for s in 0..10 {
        let d = p.decide(&frozen(), clock.at(s));
        assert!(d.actions.is_empty());
        if s >= 2 {
            assert!(d.held.unwrap().contains("repair is off"));
        }
    }
    let d = p.decide(
        &with_service(Active::Inactive, FileState::Disabled),
        clock.at(11),
    );
    assert!(d.actions.is_empty());
    assert!(d.held.unwrap().contains("disabled"));
    assert_eq!(p.repairs_last_hour(clock.at(11)), 0);
}

#[test]
fn a_long_healthy_period_resets_the_backoff() {
    let clock = Clock::new();
    let mut p = Policy::new(settings());
    let mut t = 0;
    let restart_now = |p: &mut Policy, t: &mut u64| loop {
        let d = p.decide(&frozen(), clock.at(*t));
        *t += 1;
        if restarts(&d) == 1 {
            return *t - 1;
        }
        assert!(*t < 10_000);
    };
    let a = restart_now(&mut p, &mut t);
    let b = restart_now(&mut p, &mut t);
    assert_eq!(b - a, 10);
    // Healthy for ten minutes: the next wait is the shortest again.
    for _ in 0..=600 {
        p.decide(&healthy(), clock.at(t));
        t += 1;
    }
    let c = restart_now(&mut p, &mut t);
    let d = restart_now(&mut p, &mut t);
    assert_eq!(d - c, 10, "backoff after a healthy period");
}

#[test]
fn starting_or_restarting_units_do_not_count_as_failures() {
    let clock = Clock::new();
    let mut p = Policy::new(settings());
    for s in 0..20 {
        let d = p.decide(
            &with_service(Active::Activating, FileState::Enabled),
            clock.at(s),
        );
        assert!(d.actions.is_empty());
        assert_eq!(d.failures, 0);
    }
}
