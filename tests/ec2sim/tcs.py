"""TCS, the telemetry websocket (spec tcs.md §2–§4, §8, §9), at ``GET /ws`` beside ACS.

``Acs.serve`` admits every websocket and hands the TCS ones (query has ``containerInstance``) to
:class:`Tcs`, which owns what happens on them: every text frame is split at the first
``\\r\\n\\r\\n`` into the signed header block and the JSON envelope, checked (``Authorization``
with a SigV4 ``…/<region>/ecs/aws4_request`` scope, ``Host``, ``X-Amz-Date``), recorded and
answered (``AckPublishMetric`` / ``AckPublishHealth`` / ``AckPublishInstanceStatus``, or
``BadRequestException``); a ``HeartbeatMessage`` goes out every ``heartbeat_interval`` seconds;
binary frames close the socket (1003).

It also owns the test switches (``silent``, ``refuse``, heartbeat interval; global and per
container instance), the record of upgrade attempts (refused ones too), the latest container
health per (task, container), and what ECS makes of the metrics: ``AWS/ECS`` ``CPUUtilization``
and ``MemoryUtilization`` written straight into moto's CloudWatch backend (§8; see
:meth:`Tcs._derive_metrics`). Health reports are also written into moto's task (``healthStatus``
of the task and its containers, as DescribeTasks shows them). Reads moto's ECS backend.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import re
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiohttp import WSCloseCode, WSMsgType, web
from moto.cloudwatch.models import cloudwatch_backends

from awsproto import scope_of
from ecs_api import find_cluster, find_container_instance, find_task
from motohost import ACCOUNT_ID, MotoHost

if TYPE_CHECKING:
    from acs import Session

LOG = logging.getLogger("ec2sim.tcs")

TICK_SECONDS = 0.1
#: Frames kept in the session's own ``received`` / ``sent`` (``/ec2sim/acs/sessions``).
SESSION_FRAMES_KEPT = 50
#: Frames, attempts and metric derivations kept for the ``/ec2sim/tcs/...`` routes.
FRAMES_KEPT = 2000
ATTEMPTS_KEPT = 5000
METRICS_KEPT = 2000
#: How long a task's last metrics count for its cluster's and service's utilization.
METRICS_WINDOW_SECONDS = 60.0
RAW_KEPT = 1000

FRAME_AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=([^/\s]+)/(\d{8})/([^/\s]+)/ecs/aws4_request,\s*"
    r"SignedHeaders=([^,\s]+),\s*Signature=[0-9a-fA-F]+$"
)
AMZ_DATE_RE = re.compile(r"^\d{8}T\d{6}Z$")
ACKS = {
    "PublishMetricsRequest": "AckPublishMetric",
    "PublishHealthRequest": "AckPublishHealth",
    "PublishInstanceStatusRequest": "AckPublishInstanceStatus",
}
SWITCHES = ("silent", "refuse")
DEFAULT_REFUSE_MESSAGE = "Not authorized to perform ecs:StartTelemetrySession (ec2sim refuse)."
HEALTH_STATUSES = ("HEALTHY", "UNHEALTHY", "UNKNOWN")


def envelope(kind: str, message: dict) -> str:
    return json.dumps({"type": kind, "message": message})


def is_tcs_query(query) -> bool:
    """Whether an upgrade's query is TCS's (``containerInstance``) rather than ACS's."""
    return "containerInstanceArn" not in query and "containerInstance" in query


def _matches_instance(wanted: str | None, arn: str) -> bool:
    return wanted is None or wanted == arn or wanted == arn.split("/")[-1]


def _positive_or_none(key: str, value):
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0
    ):
        raise ValueError(f"{key} must be a positive number or null")
    return value


# ---------------------------------------------------------------------- configuration


@dataclass
class Config:
    """TCS behaviour: global settings, and per container instance overrides of any of them."""

    heartbeat_interval: float | None = 30.0
    silent: bool = False
    refuse: bool = False
    refuse_message: str = DEFAULT_REFUSE_MESSAGE
    #: container-instance ARN -> {"heartbeat_interval"?, "silent"?, "refuse"?}
    instances: dict = field(default_factory=dict)

    def update(self, changes: dict) -> None:
        """Apply a ``POST /ec2sim/tcs/config`` body (validated first, then applied)."""
        known = {
            "heartbeat_interval",
            *SWITCHES,
            "refuse_message",
            "container_instance_arn",
            "clear",
        }
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown key(s): {', '.join(unknown)}")
        settings: dict = {}
        if "heartbeat_interval" in changes:
            settings["heartbeat_interval"] = _positive_or_none(
                "heartbeat_interval", changes["heartbeat_interval"]
            )
        for key in SWITCHES:
            if key in changes:
                if not isinstance(changes[key], bool):
                    raise ValueError(f"{key} must be true or false")
                settings[key] = changes[key]
        if "refuse_message" in changes and not isinstance(changes["refuse_message"], str):
            raise ValueError("refuse_message must be a string")
        instance = changes.get("container_instance_arn")
        if instance is None:
            if changes.get("clear"):
                self.instances.clear()
            for key, value in settings.items():
                setattr(self, key, value)
            if "refuse_message" in changes:
                self.refuse_message = changes["refuse_message"]
            return
        if not isinstance(instance, str) or not instance:
            raise ValueError("container_instance_arn must be a non-empty string")
        if "refuse_message" in changes:
            raise ValueError("refuse_message is global only")
        if changes.get("clear"):
            self.instances.pop(instance, None)
        if settings:
            self.instances.setdefault(instance, {}).update(settings)

    def get(self, key: str, instance_arn: str):
        """The setting in force for one container instance (its override, else global)."""
        override = self.instances.get(instance_arn, {})
        return override[key] if key in override else getattr(self, key)

    def describe(self) -> dict:
        return {
            "heartbeat_interval": self.heartbeat_interval,
            "silent": self.silent,
            "refuse": self.refuse,
            "refuse_message": self.refuse_message,
            "instances": {arn: dict(v) for arn, v in self.instances.items()},
        }


# ---------------------------------------------------------------------- sessions


@dataclass
class TcsState:
    """What :class:`Tcs` tracks per TCS session (the session itself belongs to ``Acs``)."""

    session: Session
    frames_received: int = 0
    acks_sent: int = 0
    heartbeats_sent: int = 0
    errors_sent: int = 0
    last_frame_at: float | None = None
    #: "agent" (it sent a close frame or went away) or "ec2sim" (drop, binary frame, shutdown).
    closed_by: str | None = None
    #: Code and reason of the close frame that ended the session, whoever sent it first.
    close_code: int | None = None
    close_reason: str | None = None

    def describe(self) -> dict:
        s = self.session
        return {
            "id": s.id,
            "container_instance_arn": s.container_instance_arn,
            "cluster": s.cluster,
            "region": s.region,
            "query": s.query,
            "connected": s.connected,
            "opened_at": s.opened_at,
            "closed_at": s.closed_at,
            "close_code": self.close_code if self.close_code is not None else s.close_code,
            "close_reason": self.close_reason,
            "closed_by": self.closed_by,
            "frames_received": self.frames_received,
            "acks_sent": self.acks_sent,
            "heartbeats_sent": self.heartbeats_sent,
            "errors_sent": self.errors_sent,
            "last_frame_at": self.last_frame_at,
        }


@dataclass
class TaskUsage:
    """The latest metrics of one task, as ECS would aggregate them (§8)."""

    received: float
    region: str
    cluster: str
    service: str | None
    cpu_used: float  # CPU units
    memory_used: float  # MiB
    cpu_reserved: float  # task definition CPU units
    memory_reserved: float  # task definition MiB


class Tcs:
    """All TCS sessions, their switches, recorded frames and what ECS derives from them."""

    def __init__(self, moto: MotoHost) -> None:
        self.moto = moto
        self.config = Config()
        self.states: dict[str, TcsState] = {}
        self.frames: deque = deque(maxlen=FRAMES_KEPT)
        self.attempts: deque = deque(maxlen=ATTEMPTS_KEPT)
        #: container-instance ARN -> {"total", "accepted", "refused"}, never trimmed.
        self.attempt_counts: dict[str, dict] = {}
        self.metrics: deque = deque(maxlen=METRICS_KEPT)
        #: (task ARN, container name) -> latest health report.
        self.health: dict[tuple[str, str], dict] = {}
        self.usage: dict[str, TaskUsage] = {}
        self._seq = itertools.count(1)

    # ------------------------------------------------------------------ admission

    def refusal(self, instance_arn: str) -> str | None:
        """The AccessDeniedException message if upgrades of this instance are refused now."""
        return self.config.refuse_message if self.config.get("refuse", instance_arn) else None

    def record_attempt(
        self, request: web.Request, status: int, error: str | None, session_id: str | None
    ) -> dict:
        """Count one TCS upgrade attempt (``status`` 101 when accepted)."""
        query = request.query
        instance = query.get("containerInstance", "")
        scope = scope_of(request.headers.get("Authorization", ""))
        attempt = {
            "time": time.time(),
            "container_instance_arn": instance,
            "cluster": query.get("cluster", ""),
            "region": scope[0] if scope else None,
            "status": status,
            "error": error,
            "session": session_id,
        }
        self.attempts.append(attempt)
        counts = self.attempt_counts.setdefault(instance, {"total": 0, "accepted": 0, "refused": 0})
        counts["total"] += 1
        counts["accepted" if status == 101 else "refused"] += 1
        return attempt

    # ------------------------------------------------------------------ a session

    async def run(self, session: Session) -> None:
        """Serve one admitted, prepared TCS websocket until it closes."""
        state = TcsState(session)
        self.states[session.id] = state
        self.record_attempt(session.request, 101, None, session.id)
        ticker = asyncio.create_task(self._heartbeats(state))
        ws = session.ws
        try:
            while True:
                msg = await ws.receive()
                if msg.type == WSMsgType.TEXT:
                    await self._on_text(state, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    state.frames_received += 1
                    state.last_frame_at = time.time()
                    self._record(state, {"error": "binary frame", "size": len(msg.data)})
                    state.closed_by, state.close_reason = "ec2sim", "binary frame"
                    state.close_code = WSCloseCode.UNSUPPORTED_DATA.value
                    await ws.close(
                        code=WSCloseCode.UNSUPPORTED_DATA, message=b"binary frames are not accepted"
                    )
                    break
                elif msg.type == WSMsgType.CLOSE:
                    if state.closed_by is None:
                        state.closed_by, state.close_code = "agent", msg.data
                        state.close_reason = msg.extra
                    break
                elif msg.type == WSMsgType.CLOSING:  # ec2sim closes (drop, shutdown)
                    state.closed_by = state.closed_by or "ec2sim"
                    break
                elif msg.type in (WSMsgType.CLOSED, WSMsgType.ERROR):  # connection gone
                    state.closed_by = state.closed_by or "agent"
                    break
        finally:
            ticker.cancel()

    async def _heartbeats(self, state: TcsState) -> None:
        session = state.session
        last = time.monotonic()
        while not session.ws.closed:
            await asyncio.sleep(TICK_SECONDS)
            interval = self.config.get("heartbeat_interval", session.container_instance_arn)
            now = time.monotonic()
            if interval is None or now - last < interval:
                continue
            last = now
            if self.config.get("silent", session.container_instance_arn):
                continue
            if await self._send(state, "HeartbeatMessage", {"healthy": True}):
                state.heartbeats_sent += 1

    async def _send(self, state: TcsState, kind: str, message: dict) -> bool:
        session = state.session
        if session.ws.closed:
            return False
        try:
            await session.ws.send_str(envelope(kind, message))
        except ConnectionResetError:
            LOG.info("tcs session %s: connection gone, %s not sent", session.id, kind)
            return False
        session.sent = [
            *session.sent[-(SESSION_FRAMES_KEPT - 1) :],
            {"time": time.time(), "type": kind, "message": message},
        ]
        return True

    # ------------------------------------------------------------------ inbound frames

    async def _on_text(self, state: TcsState, text: str) -> None:
        session = state.session
        state.frames_received += 1
        state.last_frame_at = time.time()
        head, sep, body = text.partition("\r\n\r\n")
        if not sep:
            head, body = "", text
        record = _check_headers(head, session.region)
        record["size"] = len(text.encode())
        try:
            parsed = json.loads(body)
        except ValueError as err:
            parsed = None
            record["error"] = record.get("error") or f"invalid JSON envelope: {err}"
        if isinstance(parsed, dict) and isinstance(parsed.get("type"), str):
            record["type"] = parsed["type"]
            record["message"] = parsed.get("message")
        else:
            record["raw"] = body[:RAW_KEPT]
            record["error"] = record.get("error") or "not a {type, message} envelope"
        if record.get("error") is None and not isinstance(record.get("message"), dict):
            record["error"] = "message is not an object"
        if record.get("error") is None and record["type"] not in ACKS:
            record["error"] = f"unknown message type {record['type']}"
        session.received = [
            *session.received[-(SESSION_FRAMES_KEPT - 1) :],
            {
                "time": time.time(),
                **{k: record[k] for k in ("type", "message", "raw") if k in record},
            },
        ]
        silent = self.config.get("silent", session.container_instance_arn)
        if record.get("error") is not None:
            record["reply"] = None if silent else "BadRequestException"
            self._record(state, record)
            LOG.info("tcs session %s: bad frame: %s", session.id, record["error"])
            if not silent and await self._send(
                state, "BadRequestException", {"message": record["error"]}
            ):
                state.errors_sent += 1
            return
        record["reply"] = None if silent else ACKS[record["type"]]
        self._record(state, record)
        try:
            if record["type"] == "PublishMetricsRequest":
                self._derive_metrics(session, record["message"])
            elif record["type"] == "PublishHealthRequest":
                self._record_health(session, record["message"])
        except Exception:  # a bad report must not end the session; the frame is recorded
            LOG.exception("tcs session %s: cannot process %s", session.id, record["type"])
        if not silent and await self._send(state, ACKS[record["type"]], {"message": "ok"}):
            state.acks_sent += 1

    def _record(self, state: TcsState, record: dict) -> None:
        session = state.session
        entry = {
            "seq": next(self._seq),
            "time": time.time(),
            "session": session.id,
            "container_instance_arn": session.container_instance_arn,
            "cluster": session.cluster,
            "region": session.region,
            "type": None,
            "message": None,
            "headers": [],
            "signed": False,
            "error": None,
            "reply": None,
        }
        entry.update(record)
        self.frames.append(entry)

    # ------------------------------------------------------------------ health

    def _record_health(self, session: Session, message: dict) -> None:
        backend = self.moto.ecs_backend(session.region)
        for task_report in message.get("tasks") or []:
            if not isinstance(task_report, dict):
                continue
            task_arn = task_report.get("taskArn", "")
            reported = {}
            for container in task_report.get("containers") or []:
                if not isinstance(container, dict) or not container.get("containerName"):
                    continue
                name = container["containerName"]
                status = container.get("healthStatus")
                self.health[(task_arn, name)] = {
                    "task_arn": task_arn,
                    "container_name": name,
                    "health_status": status,
                    "status_since": container.get("statusSince"),
                    "task_definition_family": task_report.get("taskDefinitionFamily"),
                    "task_definition_version": task_report.get("taskDefinitionVersion"),
                    "received_at": time.time(),
                    "timestamp": message.get("timestamp"),
                    "session": session.id,
                    "container_instance_arn": session.container_instance_arn,
                }
                if status in HEALTH_STATUSES:
                    reported[name] = status
            task = find_task(backend, task_arn) if task_arn else None
            if task is not None and reported:
                _apply_health(backend, task, reported)

    def describe_health(self, instance: str | None = None, task_arn: str | None = None) -> list:
        return [
            dict(h)
            for h in self.health.values()
            if _matches_instance(instance, h["container_instance_arn"])
            and (task_arn is None or h["task_arn"] == task_arn)
        ]

    # ------------------------------------------------------------------ AWS/ECS metrics

    def _derive_metrics(self, session: Session, message: dict) -> None:
        """What ECS makes of a PublishMetricsRequest (§8), into moto's CloudWatch ``AWS/ECS``.

        Per container: CPU units = (cpuStatsSet.sum / sampleCount) / 100 × the registered CPU
        units of the task's container instance; memory MiB = memoryStatsSet.sum / sampleCount.
        Per task: the sums over its containers. Each task's latest figures count for
        ``METRICS_WINDOW_SECONDS``; on every frame, for the session's cluster and for every
        service with a task in the frame (over that cluster's / service's tasks in the window):

        - {ClusterName, ServiceName}: Σ used × 100 / Σ task-definition reservation
          (= reservation × running tasks when they share one revision);
        - {ClusterName}: Σ used × 100 / Σ registered CPU units resp. MiB of the cluster's
          ACTIVE and DRAINING container instances.

        Unit ``Percent``, timestamp = the request's ``timestamp``. An ``idle`` frame forgets the
        instance's tasks (so the cluster value falls to what other instances report).
        """
        now = time.time()
        region = session.region
        backend = self.moto.ecs_backend(region)
        metadata = message.get("metadata") if isinstance(message.get("metadata"), dict) else {}
        stamp = message.get("timestamp")
        if isinstance(stamp, (int, float)) and not isinstance(stamp, bool) and math.isfinite(stamp):
            when = datetime.fromtimestamp(stamp, tz=UTC).replace(tzinfo=None)
        else:
            when = datetime.fromtimestamp(now, tz=UTC).replace(tzinfo=None)
        skipped: list[dict] = []
        services: set[tuple[str, str]] = set()
        clusters: set[str] = set()
        task_metrics = message.get("taskMetrics")
        if metadata.get("idle") and not task_metrics:
            for arn in list(self.usage):
                task = find_task(backend, arn)
                if task is None or task.container_instance_arn == session.container_instance_arn:
                    self.usage.pop(arn, None)
            cluster = find_cluster(backend, session.cluster)
            if cluster is not None:
                clusters.add(cluster.name)
        for task_metric in task_metrics or []:
            if not isinstance(task_metric, dict):
                continue
            usage, reason = self._task_usage(backend, session, task_metric, now)
            task_arn = task_metric.get("taskArn")
            if usage is None:
                skipped.append({"task_arn": task_arn, "reason": reason})
                LOG.info("AWS/ECS: skipping task %s: %s", task_arn, reason)
                continue
            self.usage[task_arn] = usage
            clusters.add(usage.cluster)
            if usage.service is not None:
                services.add((usage.cluster, usage.service))
        datums: list[dict] = []
        for cluster_name in sorted(clusters):
            datums += self._cluster_datums(backend, region, cluster_name, now, skipped)
        for cluster_name, service in sorted(services):
            datums += self._service_datums(region, cluster_name, service, now, skipped)
        if datums:
            cloudwatch_backends[ACCOUNT_ID][region].put_metric_data(
                "AWS/ECS",
                [
                    {
                        "MetricName": d["metric"],
                        "Value": d["value"],
                        "Unit": "Percent",
                        "Timestamp": when,
                        "Dimensions": [{"Name": k, "Value": v} for k, v in d["dimensions"].items()],
                    }
                    for d in datums
                ],
            )
        self.metrics.append(
            {
                "time": now,
                "session": session.id,
                "container_instance_arn": session.container_instance_arn,
                "region": region,
                "message_id": metadata.get("messageId"),
                "timestamp": stamp,
                "datums": datums,
                "skipped": skipped,
            }
        )

    def _task_usage(
        self, backend, session: Session, task_metric: dict, now: float
    ) -> tuple[TaskUsage | None, str]:
        task_arn = task_metric.get("taskArn")
        if not isinstance(task_arn, str) or not task_arn:
            return None, "no taskArn"
        task = find_task(backend, task_arn)
        if task is None:
            return None, f"moto knows no task {task_arn} in {session.region}"
        try:
            definition = backend.describe_task_definition(task.task_definition_arn)
        except Exception:  # moto raises its own exception types
            return None, f"moto knows no task definition {task.task_definition_arn}"
        instance_arn = task.container_instance_arn or session.container_instance_arn
        instance = find_container_instance(backend, task.cluster_name, instance_arn)
        if instance is None:
            return None, f"moto knows no container instance {instance_arn}"
        registered_cpu = _registered(instance, "CPU")
        if registered_cpu <= 0:
            return None, f"container instance {instance_arn} registered no CPU"
        cpu_used = memory_used = 0.0
        for container in task_metric.get("containerMetrics") or []:
            if not isinstance(container, dict):
                continue
            cpu_percent = _mean(container.get("cpuStatsSet"))
            memory_mib = _mean(container.get("memoryStatsSet"))
            if cpu_percent is not None:
                cpu_used += cpu_percent / 100.0 * registered_cpu
            if memory_mib is not None:
                memory_used += memory_mib
        cpu_reserved, memory_reserved = task_reservation(definition)
        return (
            TaskUsage(
                received=now,
                region=session.region,
                cluster=task.cluster_name,
                service=service_of(backend, task),
                cpu_used=cpu_used,
                memory_used=memory_used,
                cpu_reserved=cpu_reserved,
                memory_reserved=memory_reserved,
            ),
            "",
        )

    def _live_usage(self, region: str, cluster: str, now: float) -> dict[str, TaskUsage]:
        backend = self.moto.ecs_backend(region)
        live = {}
        for arn, usage in self.usage.items():
            if usage.region != region or usage.cluster != cluster:
                continue
            if now - usage.received > METRICS_WINDOW_SECONDS:
                continue
            task = find_task(backend, arn)
            if task is None or task.last_status == "STOPPED":
                continue
            live[arn] = usage
        return live

    def _cluster_datums(
        self, backend, region: str, cluster: str, now: float, skipped: list
    ) -> list[dict]:
        live = self._live_usage(region, cluster, now).values()
        instances = [
            i
            for i in backend.container_instances.get(cluster, {}).values()
            if i.status in ("ACTIVE", "DRAINING")
        ]
        registered_cpu = sum(_registered(i, "CPU") for i in instances)
        registered_memory = sum(_registered(i, "MEMORY") for i in instances)
        dims = {"ClusterName": cluster}
        datums = []
        for metric, used, total in (
            ("CPUUtilization", sum(u.cpu_used for u in live), registered_cpu),
            ("MemoryUtilization", sum(u.memory_used for u in live), registered_memory),
        ):
            if total > 0:
                datums.append(_datum(metric, dims, used * 100.0 / total))
            else:
                skipped.append(
                    {"task_arn": None, "reason": f"cluster {cluster}: no registered {metric[:-11]}"}
                )
        return datums

    def _service_datums(
        self, region: str, cluster: str, service: str, now: float, skipped: list
    ) -> list[dict]:
        tasks = [u for u in self._live_usage(region, cluster, now).values() if u.service == service]
        dims = {"ClusterName": cluster, "ServiceName": service}
        datums = []
        for metric, used, reserved in (
            ("CPUUtilization", sum(u.cpu_used for u in tasks), sum(u.cpu_reserved for u in tasks)),
            (
                "MemoryUtilization",
                sum(u.memory_used for u in tasks),
                sum(u.memory_reserved for u in tasks),
            ),
        ):
            if reserved > 0:
                datums.append(_datum(metric, dims, used * 100.0 / reserved))
            else:
                skipped.append(
                    {
                        "task_arn": None,
                        "reason": f"service {service}: its task definition reserves no "
                        f"{metric[:-11]}",
                    }
                )
        return datums

    # ------------------------------------------------------------------ control operations

    def describe_sessions(self, instance: str | None = None) -> list[dict]:
        return [
            s.describe()
            for s in self.states.values()
            if _matches_instance(instance, s.session.container_instance_arn)
        ]

    def describe_frames(
        self,
        kind: str | None = None,
        instance: str | None = None,
        since: float | None = None,
        session: str | None = None,
    ) -> list[dict]:
        return [
            f
            for f in self.frames
            if (kind is None or f["type"] == kind)
            and _matches_instance(instance, f["container_instance_arn"])
            and (since is None or f["time"] > since)
            and (session is None or f["session"] == session)
        ]

    def describe_attempts(self, instance: str | None = None, since: float | None = None) -> dict:
        return {
            "attempts": [
                a
                for a in self.attempts
                if _matches_instance(instance, a["container_instance_arn"])
                and (since is None or a["time"] > since)
            ],
            "counts": {
                arn: dict(c)
                for arn, c in self.attempt_counts.items()
                if _matches_instance(instance, arn)
            },
        }

    def describe_metrics(self, instance: str | None = None, since: float | None = None) -> list:
        return [
            m
            for m in self.metrics
            if _matches_instance(instance, m["container_instance_arn"])
            and (since is None or m["time"] > since)
        ]

    async def drop(self, session_id: str, code: int | None, reason: str = "ec2sim drop") -> bool:
        """Close a session with a close frame (``code``), or abruptly (TCP abort) without one."""
        state = self.states.get(session_id)
        if state is None:
            return False
        if state.session.connected and not state.session.ws.closed:
            state.closed_by, state.close_code, state.close_reason = "ec2sim", code, reason
            if code is None:
                state.session.request.transport.abort()
            else:
                await state.session.ws.close(code=code, message=reason.encode())
        return True

    async def drop_all(self, instance: str | None, code: int | None) -> list[str]:
        """Close every connected TCS session (of one instance); the ids closed."""
        dropped = []
        for state in list(self.states.values()):
            session = state.session
            if session.connected and _matches_instance(instance, session.container_instance_arn):
                await self.drop(session.id, code)
                dropped.append(session.id)
        return dropped


# ---------------------------------------------------------------------- helpers


def _check_headers(head: str, region: str) -> dict:
    """Parse a frame's header block; ``error`` says why it does not count as signed."""
    names: list[str] = []
    values: dict[str, str] = {}
    malformed = False
    for line in head.split("\r\n") if head else []:
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            malformed = True
            continue
        names.append(name)
        values.setdefault(name.strip().lower(), value.strip())
    record: dict = {"headers": names, "signed": False}
    authorization = values.get("authorization", "")
    match = FRAME_AUTH_RE.match(authorization)
    if match:
        record.update(
            access_key_id=match.group(1),
            signed_region=match.group(3),
            signed_headers=match.group(4).split(";"),
        )
    record["host"] = values.get("host")
    record["amz_date"] = values.get("x-amz-date")
    missing = [
        n
        for n, ok in (
            ("Authorization", match is not None),
            ("Host", bool(values.get("host"))),
            ("X-Amz-Date", bool(AMZ_DATE_RE.match(values.get("x-amz-date", "")))),
        )
        if not ok
    ]
    if not head:
        record["error"] = "unsigned: no header block before the envelope"
    elif missing:
        record["error"] = f"unsigned: missing or malformed {', '.join(missing)}"
    elif malformed:
        record["error"] = "unsigned: malformed header line"
    elif match.group(3) != region:
        record["error"] = f"unsigned: scope region {match.group(3)} is not the session's {region}"
    else:
        record["signed"] = True
    return record


def _mean(stats) -> float | None:
    """sum / sampleCount of a CWStatsSet, or None when there is nothing to average."""
    if not isinstance(stats, dict):
        return None
    total, count = stats.get("sum"), stats.get("sampleCount")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (total, count)):
        return None
    if count <= 0 or not math.isfinite(total):
        return None
    return total / count


def _registered(instance, name: str) -> float:
    for resource in instance.registered_resources or []:
        if resource.get("name") == name:
            return float(resource.get("integerValue") or 0)
    return 0.0


def _datum(metric: str, dimensions: dict, value: float) -> dict:
    return {"metric": metric, "dimensions": dimensions, "value": value, "unit": "Percent"}


def _number(value) -> float:
    try:
        return float(value) if value not in (None, "") else 0.0
    except (TypeError, ValueError):
        return 0.0


def task_reservation(definition) -> tuple[float, float]:
    """(CPU units, MiB) a task definition reserves: task-level, else the containers' sum.

    A container's memory counts as ``memoryReservation`` when set, else ``memory``.
    """
    containers = definition.container_definitions or []
    cpu = _number(definition.cpu) or sum(_number(c.get("cpu")) for c in containers)
    memory = _number(definition.memory) or sum(
        _number(c.get("memoryReservation")) or _number(c.get("memory")) for c in containers
    )
    return cpu, memory


def service_of(backend, task) -> str | None:
    """The name of the service that started a task, as far as moto tells.

    ECS gives service tasks ``group: service:<name>`` and ``startedBy: <deployment id>``
    (``ecs-svc/…``); moto's services start no tasks, so tests run them with either.
    """
    group = getattr(task, "group", "") or ""
    if group.startswith("service:") and len(group) > len("service:"):
        return group[len("service:") :]
    started_by = getattr(task, "started_by", "") or ""
    if started_by:
        for key, service in backend.services.items():
            if key.split(":", 1)[0] != task.cluster_name:
                continue
            if any(d.get("id") == started_by for d in service.deployments or []):
                return service.name
    return None


def _apply_health(backend, task, reported: dict[str, str]) -> None:
    """Write reported container health into moto's task, and the task's health (ECS rules).

    Task: UNHEALTHY if an essential container with a health check is UNHEALTHY, HEALTHY if all
    of them are HEALTHY, else UNKNOWN.
    """
    containers = task.containers if isinstance(task.containers, list) else []
    for record in containers:
        if isinstance(record, dict) and record.get("name") in reported:
            record["healthStatus"] = reported[record["name"]]
    try:
        definition = backend.describe_task_definition(task.task_definition_arn)
    except Exception:  # moto raises its own exception types
        return
    current = {
        r.get("name"): r.get("healthStatus") for r in containers if isinstance(r, dict)
    } | reported
    checked = [
        current.get(c.get("name"), "UNKNOWN")
        for c in definition.container_definitions or []
        if c.get("essential", True) and c.get("healthCheck")
    ]
    if not checked:
        return
    if "UNHEALTHY" in checked:
        task.healthStatus = "UNHEALTHY"
    elif all(s == "HEALTHY" for s in checked):
        task.healthStatus = "HEALTHY"
    else:
        task.healthStatus = "UNKNOWN"
