//! What the engine implements of a task definition, and the refusal of the rest.
//!
//! ECS places a task only on an instance that advertises what it needs, so a task asking for a
//! feature ecs-hostd does not implement should never arrive. One still may (an old placement, a
//! changed setting, a bug upstream); it must then stop with a reason that names the feature,
//! never run without it (issue 24). [`unsupported`] reads the task as ACS sent it (credentials
//! already reduced to their role ARNs by `model::strip_credentials`) and names the first such
//! feature. A feature leaves this list in the change that implements, tests and advertises it.
//!
//! Owns that list; never changes a task, never talks to Docker.

use serde_json::Value;

use crate::engine::docker_json::{Kind, canonicalize};

/// Why a task cannot run here: the feature, and the task-definition field that asks for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported {
    /// The feature, as an ECS user names it.
    pub feature: &'static str,
    /// Where in the task it was asked for (`taskRoleArn`, `containers[web].secrets`, ...).
    pub field: String,
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "UnsupportedFeature: this ecs-hostd instance does not implement {} ({}); the task was not started",
            self.feature, self.field
        )
    }
}

/// What this host makes available beyond the build (decided at start).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Available {
    /// Task roles for bridge (and `none`) network mode: the 169.254.170.2 NAT is in place and
    /// `ECS_ENABLE_TASK_IAM_ROLE`.
    pub task_roles: bool,
    /// Task roles for host network mode (`ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST`).
    pub task_roles_network_host: bool,
    /// dockerd's awslogs driver with the execution role's credentials (it reaches the endpoint
    /// through the NAT; `ECS_ENABLE_AWSLOGS_EXECUTIONROLE_OVERRIDE`).
    pub execution_role_awslogs: bool,
    /// The awsvpc network mode: the engine has a task network (`Settings::task_network`).
    pub awsvpc: bool,
}

/// The first feature `task` asks for that the engine does not implement (or this host does not
/// make available), if any.
pub fn unsupported(task: &Value, available: &Available) -> Option<Unsupported> {
    let at = |feature, field: String| Some(Unsupported { feature, field });
    let present = |v: Option<&Value>| {
        v.is_some_and(|v| match v {
            Value::Null => false,
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
            Value::String(s) => !s.is_empty(),
            _ => true,
        })
    };
    let network_mode = task.get("networkMode").and_then(Value::as_str);
    let roles_here = if network_mode == Some("host") {
        available.task_roles_network_host
    } else {
        available.task_roles
    };
    if present(task.get("roleCredentials")) && !roles_here {
        return at("task IAM roles", "taskRoleArn".into());
    }
    // GPUs (`resourceRequirements` type GPU) and Elastic Inference accelerators reach the
    // agent as task associations naming the containers they belong to.
    if let Some(a) = array(task.get("associations")).first() {
        let kind = a.get("type").and_then(Value::as_str).unwrap_or("?");
        let feature = match kind {
            "gpu" => "GPUs",
            "elastic-inference" => "Elastic Inference accelerators",
            _ => "this kind of task association",
        };
        return at(feature, format!("associations: type {kind}"));
    }
    if task.get("enableFaultInjection") == Some(&Value::Bool(true)) {
        return at("fault injection", "enableFaultInjection".into());
    }
    if (network_mode == Some("awsvpc") || present(task.get("elasticNetworkInterfaces")))
        && !available.awsvpc
    {
        return at("the awsvpc network mode", "networkMode".into());
    }
    if present(task.get("proxyConfiguration")) {
        return at("App Mesh proxy configuration", "proxyConfiguration".into());
    }
    for v in array(task.get("volumes")) {
        let name = v.get("name").and_then(Value::as_str).unwrap_or("?");
        match v.get("type").and_then(Value::as_str) {
            None | Some("" | "host" | "docker") => {}
            Some(kind) => return at("this volume type", format!("volumes[{name}].type: {kind}")),
        }
    }
    for c in array(task.get("containers")) {
        let name = c.get("name").and_then(Value::as_str).unwrap_or("?");
        let field = |f: &str| format!("containers[{name}].{f}");
        for s in array(c.get("secrets")) {
            let provider = s.get("provider").and_then(Value::as_str).unwrap_or("ssm");
            let target = s
                .get("target")
                .and_then(Value::as_str)
                .unwrap_or("CONTAINER");
            let kind = s
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("ENVIRONMENT_VARIABLE");
            if !matches!(provider, "ssm" | "asm")
                || !matches!(target, "CONTAINER" | "LOG_DRIVER")
                || kind != "ENVIRONMENT_VARIABLE"
            {
                return at(
                    "this kind of secret",
                    format!(
                        "containers[{name}].secrets: provider {provider}, type {kind}, target {target}"
                    ),
                );
            }
        }
        if let Some(kind) = c
            .pointer("/registryAuthentication/type")
            .and_then(Value::as_str)
            .filter(|k| !matches!(*k, "ecr" | "asm"))
        {
            return at(
                "this kind of registry authentication",
                format!("containers[{name}].registryAuthentication: type {kind}"),
            );
        }
        if let Some(files) = c.get("environmentFiles").and_then(Value::as_array) {
            for f in files {
                let kind = f.get("type").and_then(Value::as_str).unwrap_or("s3");
                if kind != "s3" {
                    return at(
                        "this kind of environment file",
                        format!("containers[{name}].environmentFiles: type {kind}"),
                    );
                }
            }
        }
        if present(c.get("firelensConfiguration")) {
            return at("FireLens log routing", field("firelensConfiguration"));
        }
        if present(c.get("credentialSpecs")) {
            return at("credential specs (gMSA)", field("credentialSpecs"));
        }
        if c.pointer("/restartPolicy/enabled") == Some(&Value::Bool(true)) {
            return at("container restart policies", field("restartPolicy"));
        }
        if array(c.get("managedAgents"))
            .iter()
            .any(|a| a.get("name").and_then(Value::as_str) == Some("ExecuteCommandAgent"))
        {
            return at("ECS Exec", field("managedAgents"));
        }
        if c.get("logsAuthStrategy").and_then(Value::as_str) == Some("ExecutionRole")
            && !available.execution_role_awslogs
        {
            return at(
                "awslogs with the task execution role",
                field("logsAuthStrategy"),
            );
        }
        // Docker health checks run and are tracked (`model::ContainerSpec::health_checked`);
        // ECS knows no other type today.
        if let Some(kind) = c
            .get("healthCheckType")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty() && !k.eq_ignore_ascii_case("docker"))
        {
            return at(
                "this kind of container health check",
                format!("containers[{name}].healthCheckType: {kind}"),
            );
        }
        let docker_config = c.get("dockerConfig");
        for (key, what, kind) in [
            ("config", "dockerConfig.config", Kind::Config),
            ("hostConfig", "dockerConfig.hostConfig", Kind::HostConfig),
        ] {
            let Some(text) = docker_config
                .and_then(|d| d.get(key))
                .and_then(Value::as_str)
                .filter(|t| !t.trim().is_empty())
            else {
                continue;
            };
            let parsed = serde_json::from_str::<Value>(text)
                .ok()
                .filter(Value::is_object);
            let Some(mut parsed) = parsed else {
                return at(
                    "a Docker configuration that is not a JSON object",
                    field(what),
                );
            };
            // Docker's spelling, as the create request will have it.
            canonicalize(&mut parsed, kind);
            if kind == Kind::HostConfig
                && parsed.pointer("/LogConfig/Type").and_then(Value::as_str) == Some("awsfirelens")
            {
                return at("FireLens log routing", field("logConfiguration.logDriver"));
            }
        }
    }
    None
}

fn array(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task(extra: Value, container: Value) -> Value {
        let mut c = json!({"name": "app", "image": "busybox", "essential": true});
        crate::engine::docker::merge(&mut c, &container);
        let mut t = json!({"arn": "arn:t", "family": "f", "version": "1", "containers": [c]});
        crate::engine::docker::merge(&mut t, &extra);
        t
    }

    #[test]
    fn a_plain_task_is_supported() {
        let t = task(
            json!({"networkMode": "bridge", "volumes": [{"name": "v", "type": "docker"}]}),
            json!({"dockerConfig": {"config": "{\"User\":\"1\"}", "hostConfig": "{\"CapAdd\":[],\"CapDrop\":[]}"},
                   "secrets": [{"name": "DB", "valueFrom": "/db", "provider": "ssm", "type": "ENVIRONMENT_VARIABLE", "target": "CONTAINER"},
                               {"name": "TOKEN", "valueFrom": "arn:aws:secretsmanager:us-east-1:1:secret:t", "provider": "asm", "target": "LOG_DRIVER"}],
                   "environmentFiles": null, "healthCheckType": null}),
        );
        assert_eq!(unsupported(&t, &Available::default()), None);
        let t = task(
            json!({}),
            json!({"environmentFiles": [{"type": "s3", "value": "arn:aws:s3:::b/a.env"}],
                   "registryAuthentication": {"type": "asm", "asmAuthData": {"credentialsParameter": "arn:aws:secretsmanager:us-east-1:1:secret:r", "region": "us-east-1"}}}),
        );
        assert_eq!(unsupported(&t, &Available::default()), None);
        // Task-scoped PID and IPC namespaces: the engine's namespace pause container
        // (engine::model::internal); whether its image is there decides at run time.
        for modes in [
            json!({"pidMode": "task"}),
            json!({"ipcMode": "task"}),
            json!({"pidMode": "task", "ipcMode": "task"}),
        ] {
            let t = task(modes.clone(), json!({}));
            assert_eq!(unsupported(&t, &Available::default()), None, "{modes}");
        }
    }

    /// Health checks run (issue: container health checks): `healthCheckType` `docker` in any
    /// case, with the check in `dockerConfig.config` in ECS's or Docker's spelling, or a
    /// `Healthcheck` without the type (Docker runs it; the engine does not report it).
    #[test]
    fn docker_health_checks_are_supported() {
        let check = r#"{"HealthCheck":{"Test":["CMD-SHELL","true"],"Interval":1000000000}}"#;
        for (kind, config) in [
            (json!("DOCKER"), check),
            (
                json!("docker"),
                r#"{"Healthcheck":{"Test":["CMD","true"]}}"#,
            ),
            (Value::Null, check),
        ] {
            let t = task(
                json!({}),
                json!({"healthCheckType": kind, "dockerConfig": {"config": config}}),
            );
            assert_eq!(
                unsupported(&t, &Available::default()),
                None,
                "{kind} {config}"
            );
        }
    }

    #[test]
    fn task_roles_run_where_the_host_makes_them_available() {
        let role = json!({"roleCredentials": {"roleArn": "arn:aws:iam::1:role/app"}});
        let bridge = task(role.clone(), json!({}));
        let mut host = task(role, json!({}));
        host["networkMode"] = json!("host");
        let both = Available {
            task_roles: true,
            task_roles_network_host: true,
            execution_role_awslogs: false,
            awsvpc: false,
        };
        assert_eq!(unsupported(&bridge, &both), None);
        assert_eq!(unsupported(&host, &both), None);
        let bridge_only = Available {
            task_roles: true,
            task_roles_network_host: false,
            execution_role_awslogs: false,
            awsvpc: false,
        };
        assert_eq!(unsupported(&bridge, &bridge_only), None);
        assert_eq!(
            unsupported(&host, &bridge_only).unwrap().feature,
            "task IAM roles"
        );
    }

    #[test]
    fn each_missing_feature_is_named_with_its_field() {
        let cases = [
            (
                task(
                    json!({"roleCredentials": {"roleArn": "arn:aws:iam::1:role/app"}}),
                    json!({}),
                ),
                "task IAM roles",
                "taskRoleArn",
            ),
            (
                task(
                    json!({"associations": [{"type": "gpu", "name": "0", "containers": ["app"]}]}),
                    json!({}),
                ),
                "GPUs",
                "associations: type gpu",
            ),
            (
                task(json!({"enableFaultInjection": true}), json!({})),
                "fault injection",
                "enableFaultInjection",
            ),
            (
                task(json!({"networkMode": "awsvpc"}), json!({})),
                "the awsvpc network mode",
                "networkMode",
            ),
            (
                task(
                    json!({}),
                    json!({"secrets": [{"name": "DB", "valueFrom": "x", "provider": "vault"}]}),
                ),
                "this kind of secret",
                "containers[app].secrets: provider vault, type ENVIRONMENT_VARIABLE, target CONTAINER",
            ),
            (
                task(
                    json!({}),
                    json!({"registryAuthentication": {"type": "vault", "asmAuthData": {"credentialsParameter": "arn:aws:secretsmanager:us-east-1:1:secret:r"}}}),
                ),
                "this kind of registry authentication",
                "containers[app].registryAuthentication: type vault",
            ),
            (
                task(
                    json!({}),
                    json!({"environmentFiles": [{"type": "s3", "value": "arn:aws:s3:::b/a.env"}, {"type": "ftp", "value": "x"}]}),
                ),
                "this kind of environment file",
                "containers[app].environmentFiles: type ftp",
            ),
            (
                task(json!({}), json!({"healthCheckType": "ecs-managed"})),
                "this kind of container health check",
                "containers[app].healthCheckType: ecs-managed",
            ),
            (
                task(
                    json!({}),
                    json!({"dockerConfig": {"hostConfig": "{\"LogConfig\":{\"Type\":\"awsfirelens\"}}"}}),
                ),
                "FireLens log routing",
                "containers[app].logConfiguration.logDriver",
            ),
            (
                task(
                    json!({}),
                    json!({"firelensConfiguration": {"type": "fluentbit"}}),
                ),
                "FireLens log routing",
                "containers[app].firelensConfiguration",
            ),
            (
                task(
                    json!({"volumes": [{"name": "data", "type": "efs"}]}),
                    json!({}),
                ),
                "this volume type",
                "volumes[data].type: efs",
            ),
            (
                task(
                    json!({}),
                    json!({"dockerConfig": {"hostConfig": "{not json"}}),
                ),
                "a Docker configuration that is not a JSON object",
                "containers[app].dockerConfig.hostConfig",
            ),
        ];
        for (t, feature, field) in cases {
            let u = unsupported(&t, &Available::default())
                .unwrap_or_else(|| panic!("{feature} not refused"));
            assert_eq!((u.feature, u.field.as_str()), (feature, field));
            let text = u.to_string();
            assert!(text.contains(feature) && text.contains(field), "{text}");
        }
    }
}
