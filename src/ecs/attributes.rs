//! What the instance advertises to ECS at registration (protocol spec §3.3). ECS places tasks by
//! these attributes, so only capabilities ecs-hostd really implements are listed: a task that
//! needs anything else must be placed elsewhere rather than fail here.

use super::Attribute;
use crate::config::Config;

const LEGACY: &str = "com.amazonaws.ecs.capability.";
const CURRENT: &str = "ecs.capability.";

/// Docker remote API versions the official agent advertises (1.17 … 1.32 without 1.26, 1.27,
/// 1.31); each is sent when the daemon supports it.
const DOCKER_API_VERSIONS: &[(u32, u32)] = &[
    (1, 17),
    (1, 18),
    (1, 19),
    (1, 20),
    (1, 21),
    (1, 22),
    (1, 23),
    (1, 24),
    (1, 25),
    (1, 28),
    (1, 29),
    (1, 30),
    (1, 32),
];

/// The Docker API version ECR pulls need (the official agent's condition).
const ECR_MIN_DOCKER_API: (u32, u32) = (1, 19);

/// The Docker API version container health checks need (`Config.Healthcheck`; the official
/// agent's condition).
const HEALTH_CHECK_MIN_DOCKER_API: (u32, u32) = (1, 24);

/// Optional features, each advertised only once it is implemented and tested.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// `dependsOn` container ordering (`ecs.capability.container-ordering`).
    pub container_ordering: bool,
    /// ECR pulls with instance or execution-role credentials (`ecr-auth`,
    /// `execution-role-ecr-pull`).
    pub ecr_pull: bool,
    /// TaskManifest handling (`ecs.capability.full-sync`).
    pub full_sync: bool,
    /// Task IAM roles for bridge containers (`task-iam-role`): decided at start, true only when
    /// the 169.254.170.2 NAT is in place (`engine::net::host_nat`) and `ECS_ENABLE_TASK_IAM_ROLE`.
    pub task_iam_role: bool,
    /// The same for host-network containers (`task-iam-role-network-host`), with
    /// `ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST`.
    pub task_iam_role_network_host: bool,
    /// dockerd's awslogs with the execution role (`execution-role-awslogs`).
    pub execution_role_awslogs: bool,
    /// Container `secrets` from SSM and Secrets Manager, as environment variables and as log
    /// driver options (`secrets.{ssm,asm}.environment-variables`,
    /// `secrets.{ssm,asm}.bootstrap.log-driver`).
    pub secrets: bool,
    /// Container `environmentFiles` from S3 (`env-files.s3`).
    pub env_files_s3: bool,
    /// `repositoryCredentials` from Secrets Manager
    /// (`private-registry-authentication.secretsmanager`).
    pub private_registry_asm: bool,
    /// Container health checks: Docker runs them, the engine tracks their status
    /// (`ecs.capability.container-health-check`; not with `ECS_DISABLE_DOCKER_HEALTH_CHECK`).
    pub container_health_check: bool,
    /// Task-level CPU and memory limits in a task cgroup (`task-cpu-mem-limit`,
    /// `increased-task-cpu-limit`): decided at start, true only when
    /// `ECS_ENABLE_TASK_CPU_MEM_LIMIT` and the host can have task cgroups.
    pub task_cpu_mem_limit: bool,
    /// `pidMode`/`ipcMode` `task` (`ecs.capability.pid-ipc-namespace-sharing`): decided at
    /// start, true only when Docker has the pause image (`ECS_HOSTD_PAUSE_IMAGE`; never pulled).
    pub pid_ipc_namespace_sharing: bool,
    /// Docker volumes (`dockerVolumeConfiguration`) with the `local` driver
    /// (`ecs.capability.docker-plugin.local`); volume plugins are advertised by name on top
    /// ([`volume_plugins`]).
    pub docker_volumes: bool,
    /// The awsvpc network mode (`ecs.capability.task-eni`): decided at start, true only when
    /// the engine got a task network (`ECS_ENABLE_TASK_ENI`, the pause image in Docker, the
    /// instance in a VPC).
    pub task_eni: bool,
    /// 169.254.169.254 unreachable from awsvpc tasks
    /// (`ecs.capability.task-eni-block-instance-metadata`): `task_eni` and
    /// `ECS_AWSVPC_BLOCK_IMDS`.
    pub task_eni_block_imds: bool,
}

/// The Docker API version task cgroups need (`HostConfig.CgroupParent`; the official agent's
/// condition).
const TASK_CGROUP_MIN_DOCKER_API: (u32, u32) = (1, 22);

/// The features this build implements. Flip a flag in the same change that implements and tests
/// the feature.
pub const IMPLEMENTED: Features = Features {
    // dependsOn START/COMPLETE/SUCCESS/HEALTHY: engine::model::dependencies, tested in
    // engine::tests and tests/docker_engine.rs.
    container_ordering: true,
    // ECR tokens with the execution role's credentials or the instance role: engine::pull
    // (`Puller::credentials_for`, `SdkEcr`), tested in engine::pull::tests and end to end in
    // tests/e2e_ecr.rs (ec2sim's GetAuthorizationToken for a local registry with htpasswd).
    ecr_pull: true,
    full_sync: false,
    // Host-dependent: set at start by app (the NAT installed), tested in tests/e2e_task_roles.rs.
    task_iam_role: false,
    task_iam_role_network_host: false,
    execution_role_awslogs: false,
    // engine::secrets, fetched with the execution role's credentials before create: tested in
    // engine::secrets::tests, engine::tests and end to end against ec2sim in tests/e2e_secrets.rs.
    secrets: true,
    // engine::envfiles (format, precedence, one HeadBucket per bucket) over aws::s3 (SigV4 by
    // hand), tested in engine::envfiles::tests and end to end in tests/e2e_secrets.rs.
    env_files_s3: true,
    // engine::secrets::registry_logins + engine::pull, tested in engine::secrets::tests,
    // engine::tests and end to end against a registry with htpasswd in tests/e2e_secrets.rs.
    private_registry_asm: true,
    // engine::features lets `healthCheckType` docker through, engine::reconcile tracks the
    // status from the inspections Docker's health_status events cause, task metadata shows it
    // (engine::introspection::health_of) and TCS reports it: tested in engine::tests,
    // engine::reconcile::tests and end to end in tests/e2e_health.rs.
    container_health_check: true,
    // Host-dependent: set at start by app (engine::task_cgroup detected the layout), tested in
    // engine::task_cgroup::tests and against the kernel's files in tests/docker_task_cgroup.rs.
    task_cpu_mem_limit: false,
    // Host-dependent: set at start by app when Docker has the pause image. The namespace pause
    // container (engine::model::internal), tested in engine::reconcile::tests, engine::tests
    // (property test included) and against Docker in tests/docker_pid_ipc.rs.
    pid_ipc_namespace_sharing: false,
    // engine::volumes, prepared once per task before the first create (task scope created and
    // removed with the task; shared inspected, autoprovisioned, matched with
    // ECS_SHARED_VOLUME_MATCH_FULL_CONFIG): tested in engine::volumes::tests,
    // engine::reconcile::tests and against Docker in tests/docker_volumes.rs.
    docker_volumes: true,
    // Host-dependent: set at start by app when the engine gets engine::net::awsvpc's
    // NetlinkTaskNetwork. The ENI into the pause container's namespace and back, tested in
    // tests/awsvpc_netlink.rs (private namespaces), the engine's steps in engine::tests::awsvpc,
    // end to end against ec2sim and a private Docker in tests/e2e_awsvpc.rs.
    task_eni: false,
    // The namespace's unreachable route for 169.254.169.254 (net::awsvpc::netlink), proven from
    // inside a task in tests/e2e_awsvpc.rs.
    task_eni_block_imds: false,
};

/// The `ecs.cpu-architecture` value for a Rust target architecture, as the official agent
/// registers it.
pub fn cpu_architecture(rust_arch: &str) -> Option<&'static str> {
    match rust_arch {
        "x86_64" => Some("x86_64"),
        "aarch64" => Some("arm64"),
        _ => None,
    }
}

/// One attribute per enabled Docker volume plugin (Docker's `GET /plugins` with
/// `enabled=true, capability=volumedriver`): `ecs.capability.docker-plugin.<name>` with `:`
/// written `.` (`rexray/ebs:latest` → `ecs.capability.docker-plugin.rexray/ebs.latest`), as the
/// official agent names them. `local` is built in and advertised by [`attributes`]; duplicates
/// and empty names are left out.
pub fn volume_plugins(names: &[String], features: Features) -> Vec<Attribute> {
    if !features.docker_volumes {
        return Vec::new();
    }
    let mut seen = std::collections::BTreeSet::new();
    names
        .iter()
        .map(|n| n.trim())
        .filter(|n| !n.is_empty() && *n != "local")
        .map(|n| n.replace(':', "."))
        .filter(|n| seen.insert(n.clone()))
        .map(|n| Attribute::flag(format!("{CURRENT}docker-plugin.{n}")))
        .collect()
}

/// `ecs.vpc-id` and `ecs.subnet-id` of the instance, as the official agent sends them whenever
/// IMDS has them (awsvpc.md §1), whether or not awsvpc is on.
pub fn vpc(facts: Option<&crate::imds::VpcFacts>) -> Vec<Attribute> {
    facts
        .map(|f| {
            vec![
                Attribute::pair("ecs.vpc-id", &f.vpc_id),
                Attribute::pair("ecs.subnet-id", &f.subnet_id),
            ]
        })
        .unwrap_or_default()
}

/// Parses a Docker API version such as `1.41`.
pub fn parse_api_version(v: &str) -> Option<(u32, u32)> {
    let (major, minor) = v.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Every attribute sent at registration. `docker_api_version` is the daemon's maximum API
/// version (e.g. `1.41`); custom attributes are added only on first registration.
pub fn attributes(
    config: &Config,
    os_detailed: &str,
    docker_api_version: Option<&str>,
    features: Features,
    first_registration: bool,
) -> Vec<Attribute> {
    let mut out = vec![
        Attribute::pair("ecs.os-type", "linux"),
        Attribute::pair("ecs.os-family", "LINUX"),
        Attribute::pair("ecs.os-type-detailed", os_detailed),
    ];
    // What `runtimePlatform.cpuArchitecture` is placed by (X86_64 / ARM64 in the API).
    if let Some(arch) = cpu_architecture(std::env::consts::ARCH) {
        out.push(Attribute::pair("ecs.cpu-architecture", arch));
    }
    let daemon = docker_api_version.and_then(parse_api_version);
    if let Some(daemon) = daemon {
        for &(maj, min) in DOCKER_API_VERSIONS.iter().filter(|v| **v <= daemon) {
            out.push(Attribute::flag(format!(
                "{LEGACY}docker-remote-api.{maj}.{min}"
            )));
        }
    }
    if !config.disable_privileged {
        out.push(Attribute::flag(format!("{LEGACY}privileged-container")));
    }
    for driver in &config.available_logging_drivers {
        out.push(Attribute::flag(format!("{LEGACY}logging-driver.{driver}")));
    }
    if config.selinux_capable {
        out.push(Attribute::flag(format!("{LEGACY}selinux")));
    }
    if config.apparmor_capable {
        out.push(Attribute::flag(format!("{LEGACY}apparmor")));
    }
    if features.container_ordering {
        out.push(Attribute::flag(format!("{CURRENT}container-ordering")));
    }
    // ECR auth needs the daemon to accept X-Registry-Auth on pulls (Docker API 1.19, spec §3.3).
    if features.ecr_pull && daemon.is_some_and(|d| d >= ECR_MIN_DOCKER_API) {
        out.push(Attribute::flag(format!("{LEGACY}ecr-auth")));
        out.push(Attribute::flag(format!("{CURRENT}execution-role-ecr-pull")));
    }
    // Task roles need Docker API 1.19 as well (the official agent's condition).
    if daemon.is_some_and(|d| d >= ECR_MIN_DOCKER_API) {
        if features.task_iam_role {
            out.push(Attribute::flag(format!("{LEGACY}task-iam-role")));
        }
        if features.task_iam_role_network_host {
            out.push(Attribute::flag(format!(
                "{LEGACY}task-iam-role-network-host"
            )));
        }
        if features.execution_role_awslogs {
            out.push(Attribute::flag(format!("{CURRENT}execution-role-awslogs")));
        }
    }
    if features.container_health_check
        && !config.engine.docker_health_check_disabled
        && daemon.is_some_and(|d| d >= HEALTH_CHECK_MIN_DOCKER_API)
    {
        out.push(Attribute::flag(format!("{CURRENT}container-health-check")));
    }
    if features.task_cpu_mem_limit && daemon.is_some_and(|d| d >= TASK_CGROUP_MIN_DOCKER_API) {
        out.push(Attribute::flag(format!("{CURRENT}task-cpu-mem-limit")));
        out.push(Attribute::flag(format!(
            "{CURRENT}increased-task-cpu-limit"
        )));
    }
    if features.full_sync {
        out.push(Attribute::flag(format!("{CURRENT}full-sync")));
    }
    if features.secrets {
        for provider in ["ssm", "asm"] {
            out.push(Attribute::flag(format!(
                "{CURRENT}secrets.{provider}.environment-variables"
            )));
            out.push(Attribute::flag(format!(
                "{CURRENT}secrets.{provider}.bootstrap.log-driver"
            )));
        }
    }
    if features.env_files_s3 {
        out.push(Attribute::flag(format!("{CURRENT}env-files.s3")));
    }
    if features.private_registry_asm {
        out.push(Attribute::flag(format!(
            "{CURRENT}private-registry-authentication.secretsmanager"
        )));
    }
    if features.pid_ipc_namespace_sharing {
        out.push(Attribute::flag(format!(
            "{CURRENT}pid-ipc-namespace-sharing"
        )));
    }
    if features.docker_volumes {
        out.push(Attribute::flag(format!("{CURRENT}docker-plugin.local")));
    }
    if features.task_eni {
        out.push(Attribute::flag(format!("{CURRENT}task-eni")));
        if features.task_eni_block_imds {
            out.push(Attribute::flag(format!(
                "{CURRENT}task-eni-block-instance-metadata"
            )));
        }
    }
    if first_registration {
        for (k, v) in &config.instance_attributes {
            out.push(Attribute::pair(k, v));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(a: &[Attribute]) -> Vec<&str> {
        a.iter().map(|a| a.name.as_str()).collect()
    }

    #[test]
    fn os_docker_and_logging_attributes() {
        let c = Config::default();
        let a = attributes(&c, "debian_12", Some("1.41"), IMPLEMENTED, true);
        assert!(a.contains(&Attribute::pair("ecs.os-type", "linux")));
        assert!(a.contains(&Attribute::pair("ecs.os-type-detailed", "debian_12")));
        let arch = a
            .iter()
            .find(|x| x.name == "ecs.cpu-architecture")
            .and_then(|x| x.value.as_deref());
        assert_eq!(arch, cpu_architecture(std::env::consts::ARCH));
        assert_eq!(cpu_architecture("aarch64"), Some("arm64"));
        assert_eq!(cpu_architecture("x86_64"), Some("x86_64"));
        let n = names(&a);
        assert!(n.contains(&"com.amazonaws.ecs.capability.docker-remote-api.1.32"));
        assert!(!n.contains(&"com.amazonaws.ecs.capability.docker-remote-api.1.26"));
        assert!(n.contains(&"com.amazonaws.ecs.capability.logging-driver.json-file"));
        assert!(n.contains(&"com.amazonaws.ecs.capability.privileged-container"));
        // ECR pulls, with the instance role and with the task's execution role.
        assert!(n.contains(&"com.amazonaws.ecs.capability.ecr-auth"));
        assert!(n.contains(&"ecs.capability.execution-role-ecr-pull"));
        // Nothing unimplemented is advertised.
        for flag in [
            "ecs.capability.secrets.ssm.environment-variables",
            "ecs.capability.secrets.asm.environment-variables",
            "ecs.capability.secrets.ssm.bootstrap.log-driver",
            "ecs.capability.secrets.asm.bootstrap.log-driver",
            "ecs.capability.env-files.s3",
            "ecs.capability.private-registry-authentication.secretsmanager",
        ] {
            assert!(n.contains(&flag), "{flag} not advertised");
        }
        assert!(n.contains(&"ecs.capability.container-health-check"));
        for never in ["task-iam-role", "task-eni", "efs"] {
            assert!(!n.iter().any(|x| x.contains(never)), "{never} advertised");
        }
    }

    /// Task cgroups are advertised only when the host has them (decided at start) and the
    /// daemon speaks API 1.22.
    #[test]
    fn task_cpu_mem_limit_is_advertised_only_when_task_cgroups_are_on() {
        let c = Config::default();
        let flags = [
            "ecs.capability.task-cpu-mem-limit",
            "ecs.capability.increased-task-cpu-limit",
        ];
        let off = attributes(&c, "LINUX", Some("1.41"), IMPLEMENTED, false);
        let on_features = Features {
            task_cpu_mem_limit: true,
            ..IMPLEMENTED
        };
        let on = attributes(&c, "LINUX", Some("1.41"), on_features, false);
        let old = attributes(&c, "LINUX", Some("1.21"), on_features, false);
        for f in flags {
            assert!(!names(&off).contains(&f), "{f}");
            assert!(names(&on).contains(&f), "{f}");
            assert!(!names(&old).contains(&f), "{f}");
        }
    }

    /// `ECS_DISABLE_DOCKER_HEALTH_CHECK=true` only stops advertising health checks (ECS then
    /// places no health-checked task here); nothing else changes.
    #[test]
    fn disabling_docker_health_checks_withdraws_the_capability() {
        let on = Config::default();
        let mut off = Config::default();
        off.engine.docker_health_check_disabled = true;
        let with = names(&attributes(&on, "LINUX", Some("1.41"), IMPLEMENTED, false))
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        let without = names(&attributes(&off, "LINUX", Some("1.41"), IMPLEMENTED, false))
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        let flag = "ecs.capability.container-health-check".to_owned();
        assert!(with.contains(&flag));
        assert!(!without.contains(&flag));
        assert_eq!(
            with.iter().filter(|n| **n != flag).collect::<Vec<_>>(),
            without.iter().collect::<Vec<_>>()
        );
    }

    /// Task-scoped PID/IPC namespaces are advertised only when the pause image was found in
    /// Docker at start (the build alone does not: ecs-hostd ships no pause image).
    #[test]
    fn pid_ipc_namespace_sharing_needs_the_pause_image() {
        let flag = "ecs.capability.pid-ipc-namespace-sharing";
        let c = Config::default();
        let without = attributes(&c, "LINUX", Some("1.41"), IMPLEMENTED, false);
        assert!(!names(&without).contains(&flag));
        let with_image = Features {
            pid_ipc_namespace_sharing: true,
            ..IMPLEMENTED
        };
        let with = attributes(&c, "LINUX", Some("1.41"), with_image, false);
        assert!(names(&with).contains(&flag));
        assert_eq!(with.len(), without.len() + 1);
    }

    /// awsvpc is advertised only when the engine got a task network; blocking IMDS only on top
    /// of it; the VPC pairs whenever IMDS has them.
    #[test]
    fn task_eni_needs_a_task_network_and_block_imds_needs_task_eni() {
        let (eni, block) = (
            "ecs.capability.task-eni",
            "ecs.capability.task-eni-block-instance-metadata",
        );
        let c = Config::default();
        let of = |f: Features| {
            names(&attributes(&c, "LINUX", Some("1.41"), f, false))
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let off = of(IMPLEMENTED);
        assert!(!off.iter().any(|n| n.contains("task-eni")), "{off:?}");
        let on = of(Features {
            task_eni: true,
            ..IMPLEMENTED
        });
        assert!(on.contains(&eni.to_owned()) && !on.contains(&block.to_owned()));
        assert_eq!(on.len(), off.len() + 1);
        let blocked = of(Features {
            task_eni: true,
            task_eni_block_imds: true,
            ..IMPLEMENTED
        });
        assert!(blocked.contains(&eni.to_owned()) && blocked.contains(&block.to_owned()));
        // ECS_AWSVPC_BLOCK_IMDS without a task network advertises nothing.
        let block_only = of(Features {
            task_eni_block_imds: true,
            ..IMPLEMENTED
        });
        assert_eq!(block_only, off);

        assert!(vpc(None).is_empty());
        let facts = crate::imds::VpcFacts {
            mac: "0e:aa:bb:cc:dd:01".into(),
            vpc_id: "vpc-1234".into(),
            subnet_id: "subnet-5678".into(),
        };
        assert_eq!(
            vpc(Some(&facts)),
            vec![
                Attribute::pair("ecs.vpc-id", "vpc-1234"),
                Attribute::pair("ecs.subnet-id", "subnet-5678"),
            ]
        );
    }

    #[test]
    fn docker_volumes_advertise_local_and_each_plugin_by_its_name() {
        let n = names(&attributes(
            &Config::default(),
            "LINUX",
            None,
            IMPLEMENTED,
            false,
        ))
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        assert!(n.contains(&"ecs.capability.docker-plugin.local".to_owned()));
        let plugins = [
            "rexray/ebs:latest".to_owned(),
            "vieux/sshfs:next".to_owned(),
            "vieux/sshfs:next".to_owned(),
            "netshare".to_owned(),
            "local".to_owned(),
            " ".to_owned(),
        ];
        let got: Vec<String> = volume_plugins(&plugins, IMPLEMENTED)
            .into_iter()
            .map(|a| a.name)
            .collect();
        assert_eq!(
            got,
            [
                "ecs.capability.docker-plugin.rexray/ebs.latest",
                "ecs.capability.docker-plugin.vieux/sshfs.next",
                "ecs.capability.docker-plugin.netshare",
            ]
        );
        let off = Features {
            docker_volumes: false,
            ..IMPLEMENTED
        };
        assert!(volume_plugins(&plugins, off).is_empty());
        let n = names(&attributes(&Config::default(), "LINUX", None, off, false))
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        assert!(!n.iter().any(|x| x.contains("docker-plugin")));
    }

    #[test]
    fn old_daemon_gets_fewer_versions_and_config_switches_apply() {
        let mut c = Config {
            disable_privileged: true,
            ..Config::default()
        };
        c.instance_attributes.insert("stack".into(), "prod".into());
        let a = attributes(&c, "LINUX", Some("1.24"), IMPLEMENTED, true);
        let n = names(&a);
        assert!(n.contains(&"com.amazonaws.ecs.capability.docker-remote-api.1.24"));
        assert!(!n.contains(&"com.amazonaws.ecs.capability.docker-remote-api.1.25"));
        assert!(!n.contains(&"com.amazonaws.ecs.capability.privileged-container"));
        assert!(a.contains(&Attribute::pair("stack", "prod")));
        // ECR pulls need Docker API 1.19: advertised from there, not below or when unknown.
        assert!(n.contains(&"ecs.capability.execution-role-ecr-pull"));
        for daemon in [Some("1.18"), None] {
            let old = names(&attributes(&c, "LINUX", daemon, IMPLEMENTED, false))
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>();
            assert!(
                !old.iter()
                    .any(|x| x.ends_with("ecr-auth") || x.ends_with("ecr-pull")),
                "{daemon:?}: {old:?}"
            );
        }
        // Health checks need Docker API 1.24.
        assert!(n.contains(&"ecs.capability.container-health-check"));
        let old = attributes(&c, "LINUX", Some("1.23"), IMPLEMENTED, false);
        assert!(!names(&old).contains(&"ecs.capability.container-health-check"));
        let again = attributes(&c, "LINUX", Some("1.24"), IMPLEMENTED, false);
        assert!(
            !again.contains(&Attribute::pair("stack", "prod")),
            "first registration only"
        );
    }
}
