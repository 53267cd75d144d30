use super::*;
use crate::engine::model::{TaskRecord, TaskSpec};

fn full_task() -> TaskRecord {
    let raw_config = serde_json::json!({
        // ECS's spelling (see the fixtures), not Docker's `Healthcheck`: matched regardless of case.
        "HealthCheck": {"Test": ["CMD-SHELL", "true"], "Interval": 1_000_000_000u64, "Retries": 2},
        "User": "nobody",
        "WorkingDir": "/tmp",
        "Labels": {"team": "web", "com.amazonaws.ecs.task-arn": "spoofed"},
        "Env": null
    });
    let raw_host = serde_json::json!({
        "MemoryReservation": 64 * 1024 * 1024,
        "LogConfig": {"Type": "json-file", "Config": {"max-size": "1m", "mode": "non-blocking"}},
        "ulimits": [{"name": "nofile", "soft": 1024, "hard": 2048}],
        "ReadonlyRootfs": true,
        "RestartPolicy": {"Name": "always"},
        "CapAdd": ["NET_ADMIN"]
    });
    let spec = TaskSpec::from_json(&serde_json::json!({
        "arn": "arn:aws:ecs:r:1:task/c/t1", "family": "fam", "version": "3",
        "taskClusterArn": "arn:aws:ecs:r:1:cluster/c",
        "volumes": [
            {"name": "data", "host": {"sourcePath": "/srv/data"}},
            {"name": "scratch", "host": {}}
        ],
        "containers": [
            {"name": "db", "image": "img:1"},
            {
                "name": "web", "image": "img:2", "cpu": 0, "memory": 2,
                "command": ["a"], "overrides": "{\"command\":[\"b\",\"c\"]}",
                "entryPoint": ["/bin/sh", "-c"],
                "environment": {"K": "V"},
                "portMappings": [
                    {"containerPort": 80, "hostPort": 8080},
                    {"containerPort": 80, "hostPort": 8443},
                    {"containerPort": 53, "hostPort": 0, "protocol": "udp"},
                    {"containerPortRange": "9000-9001"}
                ],
                "links": ["db:database"],
                "mountPoints": [
                    {"sourceVolume": "data", "containerPath": "/d", "readOnly": true},
                    {"sourceVolume": "scratch", "containerPath": "/s"}
                ],
                "volumesFrom": [{"sourceContainer": "db", "readOnly": true}],
                "dockerConfig": {"config": raw_config.to_string(), "hostConfig": raw_host.to_string(), "version": "1.17"}
            }
        ]
    }))
    .unwrap();
    TaskRecord::new(spec, 1, 0.0).unwrap()
}

#[test]
fn maps_every_field_of_spec_6_4() {
    let rec = full_task();
    let web = rec.spec_of("web").unwrap().clone();
    let mut ctx = MapCtx {
        cluster: "arn:aws:ecs:r:1:cluster/c".into(),
        region: Some("eu-west-1".into()),
        bind_ip: Some("127.0.0.1".into()),
        dynamic_ports: HashMap::new(),
        secrets: None,
    };
    ctx.dynamic_ports.insert((53, "udp".into()), 40053);
    let body = create_body(&rec, &web, &ctx).unwrap();
    let v = serde_json::to_value(&body).unwrap();

    assert_eq!(v["Image"], "img:2");
    assert_eq!(
        v["Cmd"],
        serde_json::json!(["b", "c"]),
        "overrides replace the command"
    );
    assert_eq!(v["Entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    // Env: null in the raw config replaces the computed list, as Go's json.Unmarshal does;
    // only the task endpoint's variables are added back.
    let env: Vec<String> = serde_json::from_value(v["Env"].clone()).unwrap();
    assert_eq!(env.len(), 2, "{env:?}");
    assert!(
        env.iter()
            .all(|e| e.starts_with("ECS_CONTAINER_METADATA_URI"))
    );
    assert_eq!(v["User"], "nobody");
    assert_eq!(v["WorkingDir"], "/tmp");
    assert_eq!(
        v["Healthcheck"]["Test"],
        serde_json::json!(["CMD-SHELL", "true"])
    );
    let exposed = v["ExposedPorts"].as_object().unwrap();
    for k in ["80/tcp", "53/udp", "9000/tcp", "9001/tcp"] {
        assert!(exposed.contains_key(k), "{k} in {exposed:?}");
    }
    let labels = labels_of(&body);
    assert_eq!(
        labels["com.amazonaws.ecs.task-arn"], "arn:aws:ecs:r:1:task/c/t1",
        "ours win"
    );
    assert_eq!(labels["com.amazonaws.ecs.container-name"], "web");
    assert_eq!(labels["com.amazonaws.ecs.task-definition-family"], "fam");
    assert_eq!(labels["com.amazonaws.ecs.task-definition-version"], "3");
    assert_eq!(
        labels["com.amazonaws.ecs.cluster"],
        "arn:aws:ecs:r:1:cluster/c"
    );
    assert_eq!(labels["team"], "web");

    let h = &v["HostConfig"];
    assert_eq!(h["CpuShares"], 2, "cpu 0 becomes 2 shares");
    assert_eq!(h["Memory"], 4 * 1024 * 1024, "at least 4 MiB");
    assert_eq!(h["MemoryReservation"], 64 * 1024 * 1024);
    assert_eq!(h["ReadonlyRootfs"], true);
    assert_eq!(h["Ulimits"][0]["Name"], "nofile");
    assert_eq!(h["Ulimits"][0]["Soft"], 1024);
    assert_eq!(h["CapAdd"], serde_json::json!(["NET_ADMIN"]));
    assert_eq!(h["LogConfig"]["Type"], "json-file");
    assert_eq!(h["LogConfig"]["Config"]["max-size"], "1m");
    assert_eq!(h["LogConfig"]["Config"]["max-buffer-size"], "10m");
    assert!(
        h.get("RestartPolicy").is_none() || h["RestartPolicy"].is_null(),
        "no restart policy"
    );
    let db_name = &rec.container("db").unwrap().docker_name;
    assert_eq!(
        h["Links"],
        serde_json::json!([format!("{db_name}:database")])
    );
    assert_eq!(
        h["VolumesFrom"],
        serde_json::json!([format!("{db_name}:ro")])
    );
    let binds: Vec<String> = serde_json::from_value(h["Binds"].clone()).unwrap();
    assert_eq!(binds[0], "/srv/data:/d:ro");
    assert!(
        binds[1].starts_with("ecs-fam-3-scratch-") && binds[1].ends_with(":/s"),
        "{binds:?}"
    );
    let pb = &h["PortBindings"];
    assert_eq!(pb["80/tcp"][0]["HostPort"], "8080");
    assert_eq!(pb["80/tcp"][0]["HostIp"], "127.0.0.1");
    // Two host ports for one container port: two bindings of one key.
    assert_eq!(pb["80/tcp"][1]["HostPort"], "8443");
    assert_eq!(pb["80/tcp"].as_array().unwrap().len(), 2);
    assert_eq!(pb["53/udp"][0]["HostPort"], "40053");
    assert_eq!(pb["9000/tcp"][0]["HostPort"], "");

    // The db container has no raw config: it gets the computed Env with the region.
    let db = rec.spec_of("db").unwrap().clone();
    let v = serde_json::to_value(create_body(&rec, &db, &ctx).unwrap()).unwrap();
    let env: Vec<String> = serde_json::from_value(v["Env"].clone()).unwrap();
    assert!(env.contains(&"AWS_REGION=eu-west-1".to_string()));
    assert!(env.contains(&"AWS_DEFAULT_REGION=eu-west-1".to_string()));
    assert_eq!(v["HostConfig"]["CpuShares"], 2);
    assert!(v["HostConfig"].get("Memory").is_none());

    let vols = crate::engine::volumes::plan(&rec);
    assert_eq!(vols.len(), 1);
    assert!(vols[0].name().starts_with("ecs-fam-3-scratch-"));
    assert_eq!(task_scoped_volumes(&rec), vec![vols[0].name().to_owned()]);
}

#[test]
fn a_containers_own_name_is_told_from_link_aliases() {
    // Docker lists a linked-to container under the linkers' aliases too, sorted before its own.
    let names = [
        "/ecs-f-1-gateway-aa/redis".to_owned(),
        "/ecs-f-1-redis-bb".to_owned(),
    ];
    assert_eq!(canonical_name(&names).as_deref(), Some("ecs-f-1-redis-bb"));
    assert_eq!(canonical_name(&["/x/y".to_owned()]), None);
}

#[test]
fn merge_follows_go_unmarshal() {
    let mut base = serde_json::json!({"a": {"x": 1, "y": 2}, "l": [1, 2], "s": "v"});
    merge(
        &mut base,
        &serde_json::json!({"a": {"y": 3, "z": 4}, "l": [9], "n": null}),
    );
    assert_eq!(
        base,
        serde_json::json!({"a": {"x": 1, "y": 3, "z": 4}, "l": [9], "s": "v", "n": null})
    );
}

#[test]
fn image_references_split_for_pulls() {
    assert_eq!(split_image("busybox"), ("busybox".into(), "latest".into()));
    assert_eq!(
        split_image("127.0.0.1:5000/a/b:1.2"),
        ("127.0.0.1:5000/a/b".into(), "1.2".into())
    );
    assert_eq!(
        split_image("127.0.0.1:5000/a"),
        ("127.0.0.1:5000/a".into(), "latest".into())
    );
    assert_eq!(
        split_image("r/x@sha256:abc"),
        ("r/x".into(), "sha256:abc".into())
    );
}

#[test]
fn docker_errors_are_classified() {
    use bollard::errors::Error as E;
    let e = |code: u16, m: &str| {
        map_err(E::DockerResponseServerError {
            status_code: code,
            message: m.into(),
        })
    };
    assert_eq!(e(404, "x"), RuntimeError::NotFound("x".into()));
    assert!(matches!(e(409, "x"), RuntimeError::Conflict(_)));
    assert!(matches!(
        e(500, "unauthorized: bad creds"),
        RuntimeError::Auth(_)
    ));
    assert!(!e(500, "OCI runtime create failed").is_retryable());
    assert!(map_err(E::RequestTimeoutError).is_retryable());
    assert!(
        map_err(E::DockerStreamError {
            error: "toomanyrequests".into()
        })
        .is_retryable()
    );
}

fn env_of(body: &ContainerCreateBody) -> Vec<String> {
    body.env.clone().unwrap_or_default()
}

fn role_task(roles: serde_json::Value) -> TaskRecord {
    let mut t = serde_json::json!({
        "arn": "arn:aws:ecs:r:1:task/c/t2", "family": "fam", "version": "1",
        "containers": [
            {"name": "app", "image": "img", "environment": {
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/user/value",
                "ECS_CONTAINER_METADATA_URI_V4": "http://user/value",
                "KEEP": "me"
            }},
            {"name": "side", "image": "img"}
        ]
    });
    for (k, v) in roles.as_object().unwrap() {
        t[k] = v.clone();
    }
    crate::engine::model::strip_credentials(&mut t);
    TaskRecord::new(TaskSpec::from_json(&t).unwrap(), 1, 0.0).unwrap()
}

#[test]
fn containers_get_the_task_endpoint_environment() {
    let ctx = MapCtx::default();
    let rec = role_task(serde_json::json!({
        "roleCredentials": {"credentialsId": "app-cid", "roleArn": "arn:aws:iam::1:role/app",
            "secretAccessKey": "s"},
        "executionRoleCredentials": {"credentialsId": "exec-cid", "roleArn": "arn:aws:iam::1:role/exec"}
    }));
    for name in ["app", "side"] {
        let spec = rec.spec_of(name).unwrap().clone();
        let endpoint = &rec.container(name).unwrap().endpoint_id;
        assert!(!endpoint.is_empty());
        let env = env_of(&create_body(&rec, &spec, &ctx).unwrap());
        let with = |k: &str| {
            env.iter()
                .filter(|e| e.starts_with(&format!("{k}=")))
                .cloned()
                .collect::<Vec<_>>()
        };
        // The task role's path, overriding the user's value, exactly once.
        assert_eq!(
            with("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
            ["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=/v2/credentials/app-cid"],
            "{name}: {env:?}"
        );
        assert_eq!(
            with("ECS_CONTAINER_METADATA_URI"),
            [format!(
                "ECS_CONTAINER_METADATA_URI=http://169.254.170.2/v3/{endpoint}"
            )]
        );
        assert_eq!(
            with("ECS_CONTAINER_METADATA_URI_V4"),
            [format!(
                "ECS_CONTAINER_METADATA_URI_V4=http://169.254.170.2/v4/{endpoint}"
            )]
        );
        // Never the execution role's id.
        assert!(!env.iter().any(|e| e.contains("exec-cid")), "{env:?}");
    }
    let app = rec.spec_of("app").unwrap().clone();
    assert!(env_of(&create_body(&rec, &app, &ctx).unwrap()).contains(&"KEEP=me".to_string()));
    // Each container its own endpoint id.
    assert_ne!(
        rec.container("app").unwrap().endpoint_id,
        rec.container("side").unwrap().endpoint_id
    );
}

#[test]
fn without_a_task_role_no_credentials_path_not_even_the_execution_roles() {
    let ctx = MapCtx::default();
    let rec = role_task(serde_json::json!({
        "executionRoleCredentials": {"credentialsId": "exec-cid", "roleArn": "arn:aws:iam::1:role/exec"}
    }));
    let side = rec.spec_of("side").unwrap().clone();
    let env = env_of(&create_body(&rec, &side, &ctx).unwrap());
    assert!(
        !env.iter()
            .any(|e| e.starts_with("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=")),
        "{env:?}"
    );
    assert!(!env.iter().any(|e| e.contains("exec-cid")), "{env:?}");
    assert!(
        env.iter()
            .any(|e| e.starts_with("ECS_CONTAINER_METADATA_URI_V4=http://169.254.170.2/v4/"))
    );
    // A user's own value is left alone when the agent has nothing to put there.
    let app = rec.spec_of("app").unwrap().clone();
    let env = env_of(&create_body(&rec, &app, &ctx).unwrap());
    assert!(
        env.contains(&"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=/user/value".to_string()),
        "{env:?}"
    );
}

#[test]
fn labels_and_log_config_match_the_create_request() {
    let rec = full_task();
    let web = rec.spec_of("web").unwrap().clone();
    let ctx = MapCtx {
        cluster: "c".into(),
        ..MapCtx::default()
    };
    let body = create_body(&rec, &web, &ctx).unwrap();
    let v = serde_json::to_value(&body).unwrap();
    let labels = labels(&rec, &web, "c");
    assert_eq!(serde_json::Value::Object(labels), v["Labels"]);
    let (driver, opts) = log_config(&web).unwrap();
    assert_eq!(driver, "json-file");
    assert_eq!(
        serde_json::Value::Object(opts),
        v["HostConfig"]["LogConfig"]["Config"]
    );
    assert!(log_config(rec.spec_of("db").unwrap()).is_none());
}

#[test]
fn secrets_override_the_environment_and_fill_log_options() {
    use crate::engine::secrets::ContainerSecrets;
    let rec = full_task();
    let web = rec.spec_of("web").unwrap().clone();
    let ctx = MapCtx {
        secrets: Some(std::sync::Arc::new(ContainerSecrets {
            env: vec![
                ("K".into(), "from-ssm".into()),
                ("DB".into(), "p4ss".into()),
            ],
            log_options: vec![("tag".into(), "t0k3n".into())],
            // Below the definition's `environment` (K), the secrets (DB) and the agent's own
            // variables (ECS_CONTAINER_METADATA_URI_V4); FILE_ONLY is new.
            file_env: vec![
                ("K".into(), "from-file".into()),
                ("DB".into(), "from-file".into()),
                ("ECS_CONTAINER_METADATA_URI_V4".into(), "from-file".into()),
                ("FILE_ONLY".into(), "f1le".into()),
            ],
            registry: None,
        })),
        ..Default::default()
    };
    let v = serde_json::to_value(create_body(&rec, &web, &ctx).unwrap()).unwrap();
    let env: Vec<&str> = v["Env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert!(
        env.contains(&"K=from-ssm") && env.contains(&"DB=p4ss"),
        "{env:?}"
    );
    assert_eq!(
        env.iter().filter(|e| e.starts_with("K=")).count(),
        1,
        "{env:?}"
    );
    assert!(env.contains(&"FILE_ONLY=f1le"), "{env:?}");
    assert!(!env.iter().any(|e| e.ends_with("=from-file")), "{env:?}");
    assert_eq!(v["HostConfig"]["LogConfig"]["Config"]["tag"], "t0k3n");
    // The values never show in the context's Debug (it may reach a log line).
    let shown = format!("{ctx:?}");
    assert!(
        shown.contains("DB")
            && !shown.contains("p4ss")
            && !shown.contains("t0k3n")
            && !shown.contains("f1le"),
        "{shown}"
    );
}

/// A health check as ECS renders it (`healthCheckType` `DOCKER`, `HealthCheck` in ECS's
/// spelling, nanoseconds) reaches Docker's `Config.Healthcheck` unchanged.
#[test]
fn the_health_check_is_passed_to_docker_unchanged() {
    let check = serde_json::json!({"Test": ["CMD-SHELL", "exit 1"], "Interval": 1_000_000_000u64,
        "Timeout": 2_000_000_000u64, "Retries": 1, "StartPeriod": 3_000_000_000u64});
    let spec = TaskSpec::from_json(&serde_json::json!({
        "arn": "arn:aws:ecs:r:1:task/c/t1", "family": "fam", "version": "3",
        "containers": [{"name": "web", "image": "img:2", "healthCheckType": "DOCKER",
            "dockerConfig": {"config": serde_json::json!({"HealthCheck": check}).to_string()}}]
    }))
    .unwrap();
    assert!(spec.containers[0].health_checked());
    let rec = TaskRecord::new(spec, 1, 0.0).unwrap();
    let body = create_body(&rec, &rec.spec.containers[0], &MapCtx::default()).unwrap();
    let v = serde_json::to_value(&body).unwrap();
    assert_eq!(v["Healthcheck"], check);
    assert!(v.get("HealthCheck").is_none());
}

/// Inspect's `State.Health`: the status word maps to ours, the last log entry is the probe.
#[test]
fn inspection_reads_health_status_and_the_last_probe() {
    let inspect = |health: serde_json::Value| {
        let i: bollard::models::ContainerInspectResponse =
            serde_json::from_value(serde_json::json!({"Id": "abc", "Name": "/x",
                "State": {"Status": "running", "Health": health}}))
            .unwrap();
        observed_from_inspect(i)
    };
    let o = inspect(
        serde_json::json!({"Status": "unhealthy", "FailingStreak": 2, "Log": [
            {"Start": "2026-07-01T12:00:00.1Z", "End": "2026-07-01T12:00:00.2Z", "ExitCode": 0, "Output": "ok"},
            {"Start": "2026-07-01T12:00:01.1Z", "End": "2026-07-01T12:00:01.2Z", "ExitCode": 1, "Output": "refused\n"}
        ]}),
    );
    assert_eq!(o.health, HealthStatus::Unhealthy);
    assert_eq!(o.health_probe, Some(HealthProbe::new(1, "refused\n")));
    let long = "x".repeat(4096);
    let o =
        inspect(serde_json::json!({"Status": "healthy", "Log": [{"ExitCode": 0, "Output": long}]}));
    assert_eq!(o.health, HealthStatus::Healthy);
    assert_eq!(o.health_probe.unwrap().output.len(), 1024);
    let o = inspect(serde_json::json!({"Status": "starting", "Log": []}));
    assert_eq!((o.health, o.health_probe), (HealthStatus::Unknown, None));
    let o = inspect(serde_json::Value::Null);
    assert_eq!((o.health, o.health_probe), (HealthStatus::Unknown, None));
    // The listing's status column tells a change of health (it keys the inspection cache).
    assert_eq!(
        summary_health("Up 3 seconds (healthy)"),
        HealthStatus::Healthy
    );
    assert_eq!(
        summary_health("Up 9 seconds (unhealthy)"),
        HealthStatus::Unhealthy
    );
    assert_eq!(
        summary_health("Up 1 second (health: starting)"),
        HealthStatus::Unknown
    );
}

/// The task's `pidMode`/`ipcMode` `host` and `none` as Docker's `PidMode`/`IpcMode`; unset
/// leaves Docker's default (tests/container_fields.rs proves the namespaces end to end).
#[test]
fn task_pid_and_ipc_modes_map_to_docker() {
    let body = |pid: Option<&str>, ipc: Option<&str>| {
        let spec = TaskSpec::from_json(&serde_json::json!({
            "arn": "arn:aws:ecs:r:1:task/c/t1", "family": "fam", "version": "1",
            "pidMode": pid, "ipcMode": ipc,
            "containers": [{"name": "app", "image": "img:1"}]
        }))
        .unwrap();
        let rec = TaskRecord::new(spec, 1, 0.0).unwrap();
        let app = rec.spec_of("app").unwrap().clone();
        let v = serde_json::to_value(create_body(&rec, &app, &MapCtx::default()).unwrap()).unwrap();
        (
            v["HostConfig"].get("PidMode").cloned(),
            v["HostConfig"].get("IpcMode").cloned(),
        )
    };
    let s = |m: &str| Some(serde_json::json!(m));
    assert_eq!(body(Some("host"), Some("host")), (s("host"), s("host")));
    assert_eq!(body(None, Some("none")), (None, s("none")));
    assert_eq!(body(None, None), (None, None));
}

/// `pidMode`/`ipcMode` `task` (container-features.md §8): the user containers join the pause
/// container's namespaces, over anything the backend's JSON says (agent overrides come last); the
/// pause itself is `shareable` only for IPC, carries the task's labels, and nothing else.
#[test]
fn task_namespaces_map_to_the_pause_container() {
    use crate::engine::model::internal::{DEFAULT_PAUSE_IMAGE, NAMESPACE_PAUSE_NAME};
    let ctx = MapCtx {
        cluster: "c".into(),
        ..MapCtx::default()
    };
    for (pid, ipc) in [(true, true), (true, false), (false, true)] {
        let mut t = serde_json::json!({
            "arn": "arn:aws:ecs:r:1:task/c/t", "family": "f", "version": "1",
            "containers": [{"name": "app", "image": "img",
                "dockerConfig": {"hostConfig": "{\"PidMode\":\"host\",\"CapAdd\":[],\"CapDrop\":[]}"}}]
        });
        if pid {
            t["pidMode"] = serde_json::json!("task");
        }
        if ipc {
            t["ipcMode"] = serde_json::json!("task");
        }
        let mut rec = TaskRecord::new(TaskSpec::from_json(&t).unwrap(), 1, 0.0).unwrap();
        let app = rec.spec_of("app").unwrap().clone();
        // The pause must exist before a user container can be mapped.
        assert!(matches!(
            create_body(&rec, &app, &ctx),
            Err(MapError::Invalid(m)) if m.contains("pause")
        ));
        rec.containers[0].docker_id = Some("pauseid".into());
        let body = create_body(&rec, &app, &ctx).unwrap();
        let host = body.host_config.unwrap();
        let want = Some("container:pauseid".to_owned());
        assert_eq!(
            host.pid_mode,
            if pid {
                want.clone()
            } else {
                Some("host".into())
            },
            "{pid} {ipc}"
        );
        assert_eq!(host.ipc_mode, if ipc { want } else { None }, "{pid} {ipc}");

        let pause = rec.spec_of(NAMESPACE_PAUSE_NAME).unwrap().clone();
        let body = create_body(&rec, &pause, &ctx).unwrap();
        assert_eq!(body.image.as_deref(), Some(DEFAULT_PAUSE_IMAGE));
        assert_eq!(body.cmd, None, "the image's own entrypoint blocks");
        assert_eq!(body.env, None);
        let labels = body.labels.unwrap();
        assert_eq!(
            labels
                .get(crate::engine::runtime::LABEL_CONTAINER_NAME)
                .map(String::as_str),
            Some(NAMESPACE_PAUSE_NAME)
        );
        assert_eq!(
            labels
                .get(crate::engine::runtime::LABEL_TASK_ARN)
                .map(String::as_str),
            Some("arn:aws:ecs:r:1:task/c/t")
        );
        let host = body.host_config.unwrap();
        assert_eq!(
            host.ipc_mode.as_deref(),
            if ipc { Some("shareable") } else { None }
        );
        assert_eq!(host.pid_mode, None);
        assert_eq!(host.network_mode.as_deref(), Some("none"));
    }
}
