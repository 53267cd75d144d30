"""The capability attributes a task definition requires, and placement by them.

ECS computes a task definition's ``requiresAttributes`` from what it uses and places its tasks
only on container instances that advertise every one (container-features.md §1 and §11.2); moto
does neither. Owns that computation (:func:`required_attributes`) and the check of one instance
(:func:`missing_attributes`); ``motohost`` hooks both into moto's task definitions and
placement. It never decides resources (CPU, memory, ports): moto does.

Which attribute a parameter needs follows the spec's §1 table, with the Docker remote API
versions AWS documents for ``healthCheck`` (1.24), ``ulimits`` and ``logConfiguration`` (1.18)
and ``initProcessEnabled`` (1.25), and the attributes the agent advertises for task IAM roles,
container ordering, privileged containers and awslogs with the execution role.
"""

from __future__ import annotations

#: The legacy and current attribute prefixes.
LEGACY = "com.amazonaws.ecs.capability."
CURRENT = "ecs.capability."
REMOTE_API = LEGACY + "docker-remote-api."


def _secret_provider(value_from: str) -> str:
    parts = value_from.split(":")
    is_arn = value_from.startswith("arn:") and len(parts) > 3
    return "asm" if is_arn and parts[2] == "secretsmanager" else "ssm"


def _is_ecr(image: str) -> bool:
    host = image.split("/", 1)[0] if "/" in image else ""
    return ".dkr.ecr." in host


def required_attributes(definition) -> list[str]:
    """The ``requiresAttributes`` names of a moto ``TaskDefinition``, sorted."""
    names: set[str] = set()
    execution_role = bool(getattr(definition, "execution_role_arn", None))
    if getattr(definition, "task_role_arn", None):
        names.add(LEGACY + "task-iam-role")
    if getattr(definition, "network_mode", None) == "awsvpc":
        names.add(CURRENT + "task-eni")
    if "task" in (getattr(definition, "pid_mode", None), getattr(definition, "ipc_mode", None)):
        names.add(CURRENT + "pid-ipc-namespace-sharing")
    if getattr(definition, "cpu", None) or getattr(definition, "memory", None):
        names.add(CURRENT + "task-cpu-mem-limit")
    for volume in getattr(definition, "volumes", None) or []:
        docker = (volume or {}).get("dockerVolumeConfiguration")
        if isinstance(docker, dict):
            driver = docker.get("driver") or "local"
            names.add(CURRENT + "docker-plugin." + driver.replace(":", "."))
    for container in getattr(definition, "container_definitions", None) or []:
        if container.get("healthCheck"):
            names.add(CURRENT + "container-health-check")
            names.add(REMOTE_API + "1.24")
        for secret in container.get("secrets") or []:
            provider = _secret_provider(secret.get("valueFrom", ""))
            names.add(f"{CURRENT}secrets.{provider}.environment-variables")
        log = container.get("logConfiguration") or {}
        if log.get("logDriver"):
            names.add(LEGACY + "logging-driver." + log["logDriver"])
            names.add(REMOTE_API + "1.18")
            if log["logDriver"] == "awslogs" and execution_role:
                names.add(CURRENT + "execution-role-awslogs")
        for secret in log.get("secretOptions") or []:
            provider = _secret_provider(secret.get("valueFrom", ""))
            names.add(f"{CURRENT}secrets.{provider}.bootstrap.log-driver")
        if container.get("environmentFiles"):
            names.add(CURRENT + "env-files.s3")
        if container.get("repositoryCredentials"):
            names.add(CURRENT + "private-registry-authentication.secretsmanager")
        if _is_ecr(container.get("image") or ""):
            names.add(LEGACY + "ecr-auth")
            if execution_role:
                names.add(CURRENT + "execution-role-ecr-pull")
        if container.get("dependsOn"):
            names.add(CURRENT + "container-ordering")
        if container.get("privileged"):
            names.add(LEGACY + "privileged-container")
        if container.get("ulimits"):
            names.add(REMOTE_API + "1.18")
        if (container.get("linuxParameters") or {}).get("initProcessEnabled"):
            names.add(REMOTE_API + "1.25")
    return sorted(names)


def missing_attributes(instance, required: list[str]) -> list[str]:
    """The names of ``required`` a moto ``ContainerInstance`` does not advertise."""
    have = getattr(instance, "attributes", None) or {}
    return [name for name in required if name not in have]
