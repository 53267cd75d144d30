use super::*;

const FIXTURES: &str = "../shared/spec/fixtures/acs/messages";

fn fixture(name: &str) -> serde_json::Value {
    // The spec fixtures live beside the repository in the shared folder; CI clones main with
    // shared/ beside it, worktrees have it one level up as well.
    let candidates = [
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(FIXTURES)
            .join(name),
        std::path::Path::new("/work/shared/spec/fixtures/acs/messages").join(name),
    ];
    for p in candidates {
        if let Ok(text) = std::fs::read_to_string(&p) {
            return serde_json::from_str(&text).unwrap();
        }
    }
    panic!("fixture {name} not found (shared/spec/fixtures must be beside the repository)");
}

fn tasks_of(msg: &serde_json::Value) -> Vec<serde_json::Value> {
    msg["message"]["tasks"].as_array().unwrap().clone()
}

#[test]
fn every_payload_fixture_parses() {
    for name in [
        "PayloadMessage.minimal.acs_client_test.json",
        "PayloadMessage.session_test.json",
        "PayloadMessage.with_container.acs_client_test.json",
    ] {
        for mut t in tasks_of(&fixture(name)) {
            let had_role = t.get("roleCredentials").is_some();
            strip_credentials(&mut t);
            // Only the role's ARN and the credentials id stay, never a key or token.
            if let Some(c) = t.get("roleCredentials") {
                assert!(had_role);
                let mut keys: Vec<&String> = c.as_object().unwrap().keys().collect();
                keys.sort();
                assert_eq!(keys, ["credentialsId", "roleArn"]);
            }
            let spec = TaskSpec::from_json(&t).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!spec.arn.is_empty());
            if had_role {
                assert!(spec.task_role_credentials_id().is_some(), "{name}");
            }
        }
    }
}

#[test]
fn session_fixture_maps_fields_and_tolerates_unknown_ones() {
    let mut t = tasks_of(&fixture("PayloadMessage.session_test.json")).remove(0);
    strip_credentials(&mut t);
    let spec = TaskSpec::from_json(&t).unwrap();
    assert_eq!(spec.family, "f");
    assert_eq!(spec.version, "3");
    assert_eq!(spec.desired().unwrap(), TaskStatus::Running);
    let c = &spec.containers[0];
    assert_eq!(c.name, "name");
    assert_eq!(c.image, "i");
    assert!(c.essential);
    assert_eq!(c.memory, Some(1.0));
    // elasticNetworkInterfaces, taskDefinitionAccountId: unknown to us, tolerated.
}

#[test]
fn with_container_fixture_maps_command_links_ports() {
    let t = tasks_of(&fixture(
        "PayloadMessage.with_container.acs_client_test.json",
    ))
    .remove(0);
    // links refer to "db", which is not in the fixture's task: tolerated (Docker decides).
    let spec = TaskSpec::from_json(&t).unwrap();
    let rec = TaskRecord::new(spec.clone(), 1, 0.0).unwrap();
    assert_eq!(
        dependencies(&rec, &spec.containers[0], 0.0),
        DepState::Satisfied
    );
    let mut t = t;
    t["containers"][0]["links"] = serde_json::json!(null);
    t["someFutureField"] = serde_json::json!({"x": 1});
    t["containers"][0]["anotherNewField"] = serde_json::json!([1, 2]);
    let spec = TaskSpec::from_json(&t).unwrap();
    let c = &spec.containers[0];
    assert_eq!(c.effective_command().unwrap(), vec!["arg1", "arg2"]);
    assert_eq!(c.entry_point.as_deref().unwrap(), ["bash"]);
    assert_eq!(c.environment["key"], "val");
    assert_eq!(c.port_mappings[0].static_host_port(), Some(22));
    assert_eq!(c.port_mappings[0].proto(), "tcp");
    assert!(c.links.is_empty(), "null list reads as empty");
    assert_eq!(spec.static_host_ports(), vec![(22, "tcp".to_string())]);
}

#[test]
fn minimal_fixture_has_no_containers() {
    let t = tasks_of(&fixture("PayloadMessage.minimal.acs_client_test.json")).remove(0);
    let spec = TaskSpec::from_json(&t).unwrap();
    assert_eq!(spec.arn, "arn");
    assert!(spec.containers.is_empty());
    let rec = TaskRecord::new(spec, 1, 0.0).unwrap();
    assert_eq!(
        task_known(rec.known, &rec.containers, false),
        TaskStatus::Stopped
    );
}

#[test]
fn statuses_order_parse_and_report() {
    assert!(ContainerStatus::None < ContainerStatus::Pulled);
    assert!(ContainerStatus::Running < ContainerStatus::Stopped);
    assert_eq!(
        ContainerStatus::parse("DEAD").unwrap(),
        ContainerStatus::Stopped
    );
    assert_eq!(TaskStatus::parse("unknown").unwrap(), TaskStatus::None);
    assert!(TaskStatus::parse("BOGUS").is_err());
    assert_eq!(
        serde_json::to_string(&ContainerStatus::ManifestPulled).unwrap(),
        "\"MANIFEST_PULLED\""
    );
    assert_eq!(TaskStatus::Created.report(), ReportStatus::Pending);
    assert_eq!(ContainerStatus::Created.report(), None);
    assert_eq!(
        ContainerStatus::Pulled.as_task_status(),
        TaskStatus::ManifestPulled
    );
}

fn two_container_task() -> TaskRecord {
    let spec = TaskSpec::from_json(&serde_json::json!({
        "arn": "arn:aws:ecs:us-east-1:1:task/c/abc", "family": "web", "version": "7",
        "containers": [
            {"name": "app_1", "image": "i", "essential": true, "healthCheckType": "DOCKER"},
            {"name": "side", "image": "i", "essential": false,
             "dependsOn": [{"containerName": "app_1", "condition": "HEALTHY"}]}
        ]
    }))
    .unwrap();
    TaskRecord::new(spec, 1, 0.0).unwrap()
}

#[test]
fn docker_names_are_official_and_fixed_at_delivery() {
    let rec = two_container_task();
    let n = &rec.containers[0].docker_name;
    assert!(n.starts_with("ecs-web-7-app1-"), "{n}");
    let hex = n.rsplit('-').next().unwrap();
    assert_eq!(hex.len(), 20);
    assert!(
        hex.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert_ne!(rec.containers[0].docker_name, rec.containers[1].docker_name);
    assert_eq!(rec.spec.task_id(), "abc");
}

#[test]
fn dependency_conditions() {
    let mut rec = two_container_task();
    let side = rec.spec.containers[1].clone();
    assert_eq!(dependencies(&rec, &side, 0.0), DepState::Pending);
    rec.containers[0].health = HealthStatus::Healthy;
    assert_eq!(dependencies(&rec, &side, 0.0), DepState::Satisfied);
    rec.containers[0].health = HealthStatus::Unknown;
    rec.containers[0].known = ContainerStatus::Stopped;
    assert!(matches!(
        dependencies(&rec, &side, 0.0),
        DepState::Impossible(_)
    ));

    let mut c = side.clone();
    c.depends_on[0].condition = Condition::Success;
    rec.containers[0].exit_code = Some(0);
    assert_eq!(dependencies(&rec, &c, 0.0), DepState::Satisfied);
    rec.containers[0].exit_code = Some(2);
    assert!(matches!(
        dependencies(&rec, &c, 0.0),
        DepState::Impossible(_)
    ));
    c.depends_on[0].condition = Condition::Complete;
    assert_eq!(dependencies(&rec, &c, 0.0), DepState::Satisfied);
    c.depends_on[0].condition = Condition::Start;
    rec.containers[0].known = ContainerStatus::Created;
    assert_eq!(dependencies(&rec, &c, 0.0), DepState::Pending);
    rec.containers[0].known = ContainerStatus::Running;
    rec.containers[0].ran = true;
    assert_eq!(dependencies(&rec, &c, 0.0), DepState::Satisfied);
}

/// HEALTHY (protocol spec §7.2): an UNHEALTHY dependency is still waited for (Docker turns it
/// healthy after a passing probe); one without a task-definition health check never will be.
#[test]
fn healthy_waits_through_unhealthy_and_needs_a_health_check() {
    let mut rec = two_container_task();
    let side = rec.spec.containers[1].clone();
    rec.containers[0].known = ContainerStatus::Running;
    rec.containers[0].health = HealthStatus::Unhealthy;
    assert_eq!(dependencies(&rec, &side, 0.0), DepState::Pending);
    rec.containers[0].health = HealthStatus::Healthy;
    assert_eq!(dependencies(&rec, &side, 0.0), DepState::Satisfied);

    rec.spec.containers[0].health_check_type = None;
    assert!(
        matches!(dependencies(&rec, &side, 0.0), DepState::Impossible(r) if r.contains("has no health check")),
    );
}

#[test]
fn health_check_type_and_status_spellings() {
    let spec = TaskSpec::from_json(&serde_json::json!({
        "arn": "a", "containers": [
            {"name": "x", "image": "i", "healthCheckType": "DOCKER"},
            {"name": "y", "image": "i", "healthCheckType": "docker"},
            {"name": "z", "image": "i", "healthCheckType": null},
            {"name": "w", "image": "i"}
        ]
    }))
    .unwrap();
    let checked: Vec<bool> = spec.containers.iter().map(|c| c.health_checked()).collect();
    assert_eq!(checked, [true, true, false, false]);
    for (docker, ours) in [
        ("healthy", "HEALTHY"),
        ("unhealthy", "UNHEALTHY"),
        ("starting", "UNKNOWN"),
        ("none", "UNKNOWN"),
        ("", "UNKNOWN"),
    ] {
        assert_eq!(HealthStatus::from_docker(docker).as_str(), ours, "{docker}");
    }
    assert_eq!(
        serde_json::to_string(&HealthStatus::Unhealthy).unwrap(),
        "\"UNHEALTHY\""
    );
    // Output is cut to 1024 bytes at a character boundary.
    let p = HealthProbe::new(1, &"é".repeat(600));
    assert_eq!((p.exit_code, p.output.len()), (1, 1024));
    let p = HealthProbe::new(1, &format!("x{}", "é".repeat(600)));
    assert_eq!(p.output.len(), 1023);
}

/// Records written before health tracking load with no health history; the new fields
/// survive a round trip (the store keeps records as JSON).
#[test]
fn health_fields_are_persisted_and_optional() {
    let mut rec = two_container_task();
    let mut old = serde_json::to_value(&rec).unwrap();
    for c in old["containers"].as_array_mut().unwrap() {
        let c = c.as_object_mut().unwrap();
        c.remove("health_since");
        c.remove("health_probe");
    }
    let loaded: TaskRecord = serde_json::from_value(old).unwrap();
    assert_eq!(loaded, rec);
    rec.containers[0].health = HealthStatus::Unhealthy;
    rec.containers[0].health_since = Some(1_782_907_201.5);
    rec.containers[0].health_probe = Some(HealthProbe::new(1, "no"));
    let back: TaskRecord = serde_json::from_str(&serde_json::to_string(&rec).unwrap()).unwrap();
    assert_eq!(back, rec);
}

#[test]
fn start_timeout_of_a_dependency_counts_from_its_start() {
    let mut rec = two_container_task();
    let side = rec.spec.containers[1].clone();
    // No startTimeout: waiting for HEALTHY never gives up.
    rec.containers[0].known = ContainerStatus::Running;
    rec.containers[0].running_since = Some(100.0);
    assert_eq!(dependencies(&rec, &side, 1e9), DepState::Pending);
    assert_eq!(dependency_deadline(&rec, &side), None);
    rec.spec.containers[0].start_timeout = Some(30);
    assert_eq!(dependency_deadline(&rec, &side), Some(130.0));
    assert_eq!(dependencies(&rec, &side, 129.9), DepState::Pending);
    assert!(
        matches!(dependencies(&rec, &side, 130.0), DepState::Impossible(r) if r.contains("startTimeout of 30 s"))
    );
    // Healthy in time: satisfied whatever the clock says.
    rec.containers[0].health = HealthStatus::Healthy;
    assert_eq!(dependencies(&rec, &side, 1e9), DepState::Satisfied);
    // Not started yet: the timeout has not begun.
    rec.containers[0].health = HealthStatus::Unknown;
    rec.containers[0].running_since = None;
    rec.containers[0].known = ContainerStatus::Created;
    assert_eq!(dependencies(&rec, &side, 1e9), DepState::Pending);
}

#[test]
fn cycles_and_unknown_references_are_refused() {
    let bad = serde_json::json!({
        "arn": "a", "containers": [
            {"name": "x", "image": "i", "dependsOn": [{"containerName": "y", "condition": "START"}]},
            {"name": "y", "image": "i", "volumesFrom": [{"sourceContainer": "x"}]}
        ]
    });
    assert!(matches!(
        TaskSpec::from_json(&bad),
        Err(ModelError::DependencyCycle(_))
    ));
    let dup = serde_json::json!({"arn": "a", "containers": [{"name": "x"}, {"name": "x"}]});
    assert!(matches!(
        TaskSpec::from_json(&dup),
        Err(ModelError::DuplicateContainer(_))
    ));
    let vol = serde_json::json!({"arn": "a", "containers": [
        {"name": "x", "mountPoints": [{"sourceVolume": "nope", "containerPath": "/d"}]}]});
    assert!(matches!(
        TaskSpec::from_json(&vol),
        Err(ModelError::UnknownVolume { .. })
    ));
    assert!(matches!(
        TaskSpec::from_json(&serde_json::json!({})),
        Err(ModelError::Missing("arn"))
    ));
    assert!(!ModelError::Missing("arn").is_retryable());
}

#[test]
fn changes_are_emitted_once_and_carry_container_details() {
    let mut rec = two_container_task();
    assert_eq!(
        take_change(&mut rec, "default"),
        None,
        "nothing to report while pending"
    );
    rec.containers[0].known = ContainerStatus::Running;
    rec.containers[0].docker_id = Some("id0".into());
    let ch = take_change(&mut rec, "default").unwrap();
    assert_eq!(ch.status, ReportStatus::Pending);
    assert_eq!(ch.cluster, "default");
    assert_eq!(ch.containers.len(), 1);
    assert_eq!(ch.containers[0].status, ReportStatus::Running);
    assert_eq!(take_change(&mut rec, "default"), None, "not twice");
    rec.containers[1].known = ContainerStatus::Running;
    rec.known = TaskStatus::Running;
    let ch = take_change(&mut rec, "default").unwrap();
    assert_eq!(ch.status, ReportStatus::Running);
    assert_eq!(ch.containers.len(), 1);
    rec.containers[0].known = ContainerStatus::Stopped;
    rec.containers[0].exit_code = Some(3);
    rec.containers[1].known = ContainerStatus::Stopped;
    rec.known = TaskStatus::Stopped;
    rec.reason = Some("x".repeat(2000));
    rec.spec.task_cluster_arn = Some("arn:cluster".into());
    let ch = take_change(&mut rec, "default").unwrap();
    assert_eq!(ch.status, ReportStatus::Stopped);
    assert_eq!(ch.cluster, "arn:cluster");
    assert_eq!(ch.reason.as_ref().unwrap().len(), 1024);
    assert_eq!(ch.containers[0].exit_code, Some(3));
    assert_eq!(take_change(&mut rec, "default"), None);
}

#[test]
fn volumes_are_named_per_task() {
    let spec = TaskSpec::from_json(&serde_json::json!({
        "arn": "a", "family": "f", "version": "1",
        "volumes": [
            {"name": "h", "host": {"sourcePath": "/tmp"}},
            {"name": "scratch", "host": {"sourcePath": ""}},
            {"name": "shared", "type": "docker", "dockerVolumeConfiguration": {"scope": "shared", "autoprovision": true, "driver": "local"}},
            {"name": "efs", "type": "efs"}
        ],
        "containers": [{"name": "c", "image": "i"}]
    }))
    .unwrap();
    let rec = TaskRecord::new(spec, 1, 0.0).unwrap();
    assert_eq!(rec.volumes["h"], VolumeSource::HostPath("/tmp".into()));
    match &rec.volumes["scratch"] {
        VolumeSource::Docker {
            name, task_scoped, ..
        } => {
            assert!(name.starts_with("ecs-f-1-scratch-"));
            assert!(task_scoped);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&rec.volumes["shared"], VolumeSource::Docker { name, task_scoped: false, create: true, .. } if name == "shared")
    );
    assert!(!rec.volumes.contains_key("efs"));
}

#[test]
fn records_round_trip_without_credentials() {
    let mut t = tasks_of(&fixture("PayloadMessage.session_test.json")).remove(0);
    strip_credentials(&mut t);
    let rec = TaskRecord::new(TaskSpec::from_json(&t).unwrap(), 1, 0.0).unwrap();
    let text = serde_json::to_string(&rec).unwrap();
    assert!(!text.contains("secretAccessKey") && !text.contains("sessionToken"));
    let back: TaskRecord = serde_json::from_str(&text).unwrap();
    assert_eq!(back, rec);
}

#[test]
fn records_keep_credentials_ids_and_endpoint_ids_but_debug_hides_the_ids() {
    let mut t = serde_json::json!({
        "arn": "arn:aws:ecs:us-east-1:123456789012:task/c/1", "family": "f", "version": "1",
        "launchType": "EC2", "enableFaultInjection": true,
        "roleCredentials": {"credentialsId": "app-cid-77", "roleArn": "arn:aws:iam::1:role/app",
            "accessKeyId": "AKIA77", "secretAccessKey": "secret-77", "sessionToken": "tok-77",
            "expiration": "2030"},
        "executionRoleCredentials": {"credentialsId": "exec-cid-77", "roleArn": "arn:aws:iam::1:role/exec",
            "secretAccessKey": "secret-78"},
        "containers": [{"name": "a", "image": "i", "containerArn": "arn:aws:ecs:us-east-1:123456789012:container/c/1/a"},
                       {"name": "b", "image": "i"}]
    });
    strip_credentials(&mut t);
    let spec = TaskSpec::from_json(&t).unwrap();
    assert_eq!(spec.task_role_credentials_id(), Some("app-cid-77"));
    assert_eq!(spec.execution_credentials_id(), Some("exec-cid-77"));
    assert_eq!(spec.launch_type.as_deref(), Some("EC2"));
    assert!(spec.enable_fault_injection);
    assert_eq!(
        spec.containers[0].container_arn.as_deref(),
        Some("arn:aws:ecs:us-east-1:123456789012:container/c/1/a")
    );
    let rec = TaskRecord::new(spec, 1, 0.0).unwrap();
    // Every container has its own UUID v4 endpoint id.
    let ids: Vec<&str> = rec
        .containers
        .iter()
        .map(|c| c.endpoint_id.as_str())
        .collect();
    assert_ne!(ids[0], ids[1]);
    for id in &ids {
        let u = uuid::Uuid::parse_str(id).unwrap();
        assert_eq!(u.get_version_num(), 4);
    }
    let text = serde_json::to_string(&rec).unwrap();
    for secret in ["AKIA77", "secret-77", "tok-77", "secret-78"] {
        assert!(!text.contains(secret), "{text}");
    }
    assert!(text.contains("app-cid-77") && text.contains("exec-cid-77"));
    let back: TaskRecord = serde_json::from_str(&text).unwrap();
    assert_eq!(back, rec);
    let debug = format!("{rec:?}");
    assert!(!debug.contains("cid-77"), "{debug}");
    assert!(debug.contains("role/app"));
}
