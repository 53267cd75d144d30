"""Render an ECS task (moto's task + task definition) as the task object of an ACS PayloadMessage.

Owns the mapping of spec §6: which task-definition fields become top-level payload fields and which
are rendered into the ``dockerConfig.config`` / ``dockerConfig.hostConfig`` Docker JSON strings
(memoryReservation, logConfiguration, healthCheck, ulimits, user, workingDirectory, dockerLabels,
readonlyRootFilesystem, privileged, interactive, pseudoTerminal, linuxParameters with devices and
swap, ...), and what ECS adds: role credentials,
``containerArn``, ``logsAuthStrategy``, the ``awslogs-stream`` rendered from
``awslogs-stream-prefix``, and for awsvpc tasks the task's ``elasticNetworkInterfaces`` (from
``enis``) with host ports equal to container ports. Pure functions; talks to nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from credentials import Credentials
from motohost import ACCOUNT_ID

NANOS = 1_000_000_000
MIB = 1024 * 1024
# Docker API version each rendered key needs; dockerConfig.version is the highest one used.
_MIN_DOCKER_API = {
    "MemoryReservation": "1.21",
    "LogConfig": "1.18",
    "Ulimits": "1.18",
    "HealthCheck": "1.24",
    "Init": "1.25",
    "Tmpfs": "1.22",
    "ShmSize": "1.22",
    "Sysctls": "1.24",
    "MemorySwappiness": "1.20",
}
_BASE_DOCKER_API = "1.17"


#: ``ecr_auth(image, use_execution_role)``: the container's ``registryAuthentication`` when its
#: image is on ECR, else None (``ecr_api.EcrRegistry.auth_for`` bound to a region and endpoint).
EcrAuth = Callable[[str, bool], dict | None]

#: ``credentials(task, role_arn, role_type)``: the task's ``IAMRoleCredentials`` for that role
#: (``credentials.Credentials.for_task``: one credentialsId per task and role type).
TaskCredentials = Callable[[object, str, str], dict]


def role_arns(task, task_definition) -> dict[str, str]:
    """``{role type: role ARN}`` of the task's roles (overrides win over the task definition)."""
    overrides = task.overrides or {}
    found = {
        "TaskApplication": overrides.get("taskRoleArn")
        or getattr(task_definition, "task_role_arn", None),
        "TaskExecution": overrides.get("executionRoleArn")
        or getattr(task_definition, "execution_role_arn", None),
    }
    return {role_type: arn for role_type, arn in found.items() if arn}


def build_task(
    task,
    task_definition,
    desired_status: str,
    ecr_auth: EcrAuth | None = None,
    credentials: TaskCredentials | None = None,
    elastic_network_interfaces: list[dict] | None = None,
) -> dict:
    """The ``PayloadMessage.tasks[]`` entry for a moto ``Task`` and its ``TaskDefinition``.

    ``elastic_network_interfaces``: the ACS ``ElasticNetworkInterface`` objects of an awsvpc
    task (``enis.TaskEni.acs``), sent in every payload of the task as ECS does.
    """
    overrides = task.overrides or {}
    container_overrides = {o.get("name"): o for o in overrides.get("containerOverrides", [])}
    network_mode = task_definition.network_mode or "bridge"
    roles = role_arns(task, task_definition)
    execution_role = roles.get("TaskExecution")
    credentials = credentials or Credentials().for_task
    task_id = task.task_arn.rsplit("/", 1)[-1]
    # DescribeTasks' container records (ecs_api.ensure_containers): the ARNs ECS gave them.
    container_arns = {
        c.get("name"): c.get("containerArn") for c in task.containers or [] if isinstance(c, dict)
    }
    entry: dict = {
        "arn": task.task_arn,
        "family": task_definition.family,
        "version": str(task_definition.revision),
        "desiredStatus": desired_status,
        "taskClusterArn": task.cluster_arn,
        "taskDefinitionAccountId": ACCOUNT_ID,
        "launchType": "EC2",
        "networkMode": network_mode,
        "overrides": json.dumps(overrides),
        "containers": [
            build_container(
                c,
                container_overrides.get(c.get("name"), {}),
                network_mode,
                task_id=task_id,
                container_arn=container_arns.get(c.get("name")),
                execution_role=bool(execution_role),
                region=task.task_arn.split(":")[3],
            )
            for c in task_definition.container_definitions
        ],
        "volumes": [build_volume(v) for v in task_definition.volumes],
    }
    if elastic_network_interfaces:
        entry["elasticNetworkInterfaces"] = elastic_network_interfaces
    if task.group:
        entry["group"] = task.group
    if task.started_by.startswith("ecs-svc/"):
        entry["serviceName"] = task.started_by
    if task_definition.cpu:
        entry["cpu"] = int(task_definition.cpu) / 1024
    if task_definition.memory:
        entry["memory"] = int(task_definition.memory)
    if task_definition.pid_mode:
        entry["pidMode"] = task_definition.pid_mode
    if task_definition.ipc_mode:
        entry["ipcMode"] = task_definition.ipc_mode
    if desired_status == "RUNNING":
        if "TaskApplication" in roles:
            entry["roleCredentials"] = credentials(
                task, roles["TaskApplication"], "TaskApplication"
            )
        if execution_role:
            entry["executionRoleCredentials"] = credentials(task, execution_role, "TaskExecution")
    if ecr_auth is not None:
        # ECS sends ECR images ecrAuthData; with an execution role the agent must use it.
        for container in entry["containers"]:
            auth = ecr_auth(container.get("image") or "", bool(execution_role))
            if auth is not None:
                container["registryAuthentication"] = auth
    return entry


def build_container(
    definition: dict,
    override: dict,
    network_mode: str,
    task_id: str = "",
    container_arn: str | None = None,
    execution_role: bool = False,
    region: str = "us-east-1",
) -> dict:
    """One ``containers[]`` entry of a payload task.

    ``containerArn`` is set when known. A container logging with ``awslogs`` in a task with an
    execution role gets ``logsAuthStrategy: "ExecutionRole"`` (ECS does so for agents with
    ``ecs.capability.execution-role-awslogs``; ec2sim does not check the capability).
    """
    environment = {e["name"]: e.get("value", "") for e in definition.get("environment", [])}
    environment.update({e["name"]: e.get("value", "") for e in override.get("environment", [])})
    container_override = {k: v for k, v in override.items() if k in ("command",)}
    container: dict = {
        "name": definition.get("name"),
        "image": definition.get("image"),
        "cpu": definition.get("cpu", 0),
        "memory": definition.get("memory", 0),
        "essential": definition.get("essential", True),
        "command": definition.get("command", []),
        "entryPoint": definition.get("entryPoint", []),
        "environment": environment,
        "portMappings": [
            _port_mapping(p, network_mode) for p in definition.get("portMappings", [])
        ],
        "mountPoints": definition.get("mountPoints", []),
        "volumesFrom": definition.get("volumesFrom", []),
        "links": definition.get("links", []),
        "dependsOn": definition.get("dependsOn", []),
        "overrides": json.dumps(container_override),
        "dockerConfig": docker_config(definition, network_mode, task_id),
    }
    if container_arn:
        container["containerArn"] = container_arn
    log_driver = (definition.get("logConfiguration") or {}).get("logDriver")
    if execution_role and log_driver == "awslogs":
        container["logsAuthStrategy"] = "ExecutionRole"
    if "healthCheck" in definition:
        container["healthCheckType"] = "docker"
    for key in ("stopTimeout", "startTimeout", "environmentFiles", "restartPolicy"):
        if key in definition:
            container[key] = definition[key]
    linux = acs_linux_parameters(definition.get("linuxParameters") or {})
    if linux:
        container["linuxParameters"] = linux
    secrets = acs_secrets(definition, region)
    if secrets:
        container["secrets"] = secrets
    if "repositoryCredentials" in definition:
        container["registryAuthentication"] = {
            "type": "asm",
            "asmAuthData": {
                "credentialsParameter": definition["repositoryCredentials"]["credentialsParameter"],
                "region": "",
            },
        }
    return container


def acs_linux_parameters(params: dict) -> dict:
    """The ACS ``linuxParameters`` object (api-2.json ``LinuxParameters``: capabilities,
    devices, initProcessEnabled, sharedMemorySize). ECS sends it beside the rendered
    ``hostConfig``; the agent ignores it (container-features.md §0)."""
    keys = ("capabilities", "devices", "initProcessEnabled", "sharedMemorySize")
    return {k: params[k] for k in keys if k in params}


def acs_secrets(definition: dict, region: str) -> list[dict]:
    """``secrets`` as ACS sends them (container-features.md §3): the task definition's
    ``secrets`` and ``logConfiguration.secretOptions`` (``target`` ``CONTAINER`` and
    ``LOG_DRIVER``), each with the ``provider`` its ``valueFrom`` names (a Secrets Manager ARN:
    ``asm``, else ``ssm``), the ARN's region or the task's, and ``type`` ``ENVIRONMENT_VARIABLE``.
    """

    def one(secret: dict, target: str) -> dict:
        value_from = secret.get("valueFrom", "")
        parts = value_from.split(":")
        is_arn = value_from.startswith("arn:") and len(parts) > 3
        return {
            "name": secret.get("name"),
            "valueFrom": value_from,
            "region": parts[3] if is_arn and parts[3] else region,
            "provider": "asm" if is_arn and parts[2] == "secretsmanager" else "ssm",
            "type": "ENVIRONMENT_VARIABLE",
            "target": target,
        }

    log = definition.get("logConfiguration") or {}
    return [one(s, "CONTAINER") for s in definition.get("secrets", [])] + [
        one(s, "LOG_DRIVER") for s in log.get("secretOptions", [])
    ]


def _port_mapping(mapping: dict, network_mode: str = "bridge") -> dict:
    rendered = {
        "containerPort": mapping.get("containerPort"),
        "protocol": mapping.get("protocol", "tcp"),
    }
    if network_mode == "awsvpc" and "containerPort" in mapping:
        # The task owns its ENI, so ECS sends every mapping with hostPort = containerPort.
        rendered["hostPort"] = mapping["containerPort"]
    elif "hostPort" in mapping:
        rendered["hostPort"] = mapping["hostPort"]
    if "containerPortRange" in mapping:
        rendered["containerPortRange"] = mapping["containerPortRange"]
    return {k: v for k, v in rendered.items() if v is not None}


def docker_config(definition: dict, network_mode: str, task_id: str = "") -> dict:
    """``dockerConfig``: Docker ``Config`` and ``HostConfig`` JSON strings plus an API version."""
    config = _docker_config_keys(definition)
    host_config = _docker_host_config_keys(definition, network_mode, task_id)
    used = [_MIN_DOCKER_API.get(k, _BASE_DOCKER_API) for k in [*config, *host_config]]
    version = max([_BASE_DOCKER_API, *used], key=lambda v: tuple(int(x) for x in v.split(".")))
    return {
        "config": json.dumps(config, separators=(",", ":")),
        "hostConfig": json.dumps(host_config, separators=(",", ":")),
        "version": version,
    }


def _docker_config_keys(definition: dict) -> dict:
    config: dict = {}
    if "user" in definition:
        config["User"] = definition["user"]
    if "workingDirectory" in definition:
        config["WorkingDir"] = definition["workingDirectory"]
    if "hostname" in definition:
        config["Hostname"] = definition["hostname"]
    if "dockerLabels" in definition:
        config["Labels"] = definition["dockerLabels"]
    if definition.get("interactive"):
        config["OpenStdin"] = True
    if definition.get("pseudoTerminal"):
        config["Tty"] = True
    if definition.get("disableNetworking"):
        config["NetworkDisabled"] = True
    if "healthCheck" in definition:
        check = definition["healthCheck"]
        # ECS's spelling (Docker's is ``Healthcheck``): real payloads carry it, and the agent
        # must match keys case-insensitively (container-features.md §0).
        config["HealthCheck"] = {
            "Test": check.get("command", []),
            "Interval": check.get("interval", 30) * NANOS,
            "Timeout": check.get("timeout", 5) * NANOS,
            "Retries": check.get("retries", 3),
            "StartPeriod": check.get("startPeriod", 0) * NANOS,
        }
    return config


def _docker_host_config_keys(definition: dict, network_mode: str, task_id: str = "") -> dict:
    host: dict = {"NetworkMode": network_mode}
    if "memoryReservation" in definition:
        host["MemoryReservation"] = definition["memoryReservation"] * MIB
    if "logConfiguration" in definition:
        log = definition["logConfiguration"]
        options = dict(log.get("options") or {})
        if log.get("logDriver") == "awslogs" and "awslogs-stream-prefix" in options:
            # An ECS option Docker does not know: ECS names the stream
            # <prefix>/<container name>/<task id> (container-features.md §9).
            prefix = options.pop("awslogs-stream-prefix")
            options["awslogs-stream"] = f"{prefix}/{definition.get('name')}/{task_id}"
        host["LogConfig"] = {"Type": log.get("logDriver"), "Config": options}
    if "ulimits" in definition:
        host["Ulimits"] = [
            {"Name": u["name"], "Soft": u["softLimit"], "Hard": u["hardLimit"]}
            for u in definition["ulimits"]
        ]
    if definition.get("readonlyRootFilesystem"):
        host["ReadonlyRootfs"] = True
    if definition.get("privileged"):
        host["Privileged"] = True
    simple = {
        "dnsServers": "Dns",
        "dnsSearchDomains": "DnsSearch",
        "dockerSecurityOptions": "SecurityOpt",
    }
    for field_name, docker_key in simple.items():
        if definition.get(field_name):
            host[docker_key] = definition[field_name]
    if definition.get("extraHosts"):
        host["ExtraHosts"] = [f"{h['hostname']}:{h['ipAddress']}" for h in definition["extraHosts"]]
    if definition.get("systemControls"):
        host["Sysctls"] = {s["namespace"]: s["value"] for s in definition["systemControls"]}
    host.update(_linux_parameters(definition))
    return host


#: ``linuxParameters.devices[].permissions`` → the letter Docker's ``CgroupPermissions`` uses.
_DEVICE_PERMISSIONS = {"read": "r", "write": "w", "mknod": "m"}


def _linux_parameters(definition: dict) -> dict:
    """``HostConfig`` keys of ``linuxParameters`` (container-features.md §1). ``CapAdd`` and
    ``CapDrop`` are always present, empty when unset, as in real payloads."""
    params = definition.get("linuxParameters") or {}
    capabilities = params.get("capabilities") or {}
    host: dict = {
        "CapAdd": list(capabilities.get("add") or []),
        "CapDrop": list(capabilities.get("drop") or []),
    }
    if params.get("devices"):
        host["Devices"] = [
            {
                "PathOnHost": d["hostPath"],
                "PathInContainer": d.get("containerPath") or d["hostPath"],
                # Docker's own default (docker run --device) when none are named.
                "CgroupPermissions": "".join(
                    _DEVICE_PERMISSIONS[p] for p in d.get("permissions") or []
                )
                or "rwm",
            }
            for d in params["devices"]
        ]
    if "maxSwap" in params:
        # Swap on top of the hard limit (memoryReservation when there is none); 0 turns swap
        # off (MemorySwap = the memory limit). Swappiness defaults to 60, and only counts with
        # maxSwap ("Managing container swap memory space").
        memory = definition.get("memory") or definition.get("memoryReservation") or 0
        host["MemorySwap"] = (memory + params["maxSwap"]) * MIB
        host["MemorySwappiness"] = params.get("swappiness", 60)
    if params.get("initProcessEnabled"):
        host["Init"] = True
    if "sharedMemorySize" in params:
        host["ShmSize"] = params["sharedMemorySize"] * MIB
    if params.get("tmpfs"):
        host["Tmpfs"] = {
            t["containerPath"]: ",".join([f"size={t['size']}m", *t.get("mountOptions", [])])
            for t in params["tmpfs"]
        }
    return host


def build_volume(volume: dict) -> dict:
    """One ``volumes[]`` entry: host (bind or task-scoped local volume), docker or efs."""
    rendered: dict = {"name": volume.get("name")}
    if "dockerVolumeConfiguration" in volume:
        rendered["type"] = "docker"
        rendered["dockerVolumeConfiguration"] = volume["dockerVolumeConfiguration"]
    elif "efsVolumeConfiguration" in volume:
        rendered["type"] = "efs"
        rendered["efsVolumeConfiguration"] = volume["efsVolumeConfiguration"]
    else:
        rendered["type"] = "host"
        rendered["host"] = {"sourcePath": (volume.get("host") or {}).get("sourcePath", "")}
    return rendered
