"""ECS as the agent needs it: moto plus what moto lacks or gets wrong (test-world.md §3.1, §8).

Owns ec2sim's handlers for these ECS operations:

- RegisterContainerInstance: cluster check, re-registration with the same ARN, inactive ARNs,
  and the sent resources, attributes, tags and versionInfo stored in moto's instance.
- DeregisterContainerInstance: remembers the ARN as inactive.
- DiscoverPollEndpoint: points ACS and TCS at ec2sim's own websocket.
- Submit{Task,Container}StateChange / SubmitAttachmentStateChanges: recorded and written into
  moto's task so DescribeTasks shows the agent's truth (every container of the task).
- RunTask / StartTask / StopTask / UpdateContainerInstancesState(DRAINING): moto, then the tasks are
  pushed to the instance's agent over ACS (through the ``Acs`` hub). An awsvpc task gets its ENI
  (``enis``) and an AttachTaskNetworkInterfacesMessage before its payload; attachment statuses the
  agent reports (and its STOPPED, which detaches the ENI) show in DescribeTasks.

Everything else goes to moto untouched. Reads and writes moto's backend objects directly.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import logging
import time
import uuid
from collections.abc import Callable

from aiohttp import web

import payload
from awsproto import AwsCall, AwsError, json_response
from credentials import Credentials
from ecr_api import EcrRegistry
from enis import ATTACHMENT_STATUSES, TaskEni, TaskEnis
from journal import Journal
from motohost import MotoHost
from placement import missing_attributes

LOG = logging.getLogger("ec2sim.ecs")

LIVE_INSTANCE_STATES = ("ACTIVE", "DRAINING")
SERVICE_STARTED_BY_PREFIX = "ecs-svc/"
DRAIN_STOP_REASON = "Task stopped because the container instance is draining."
TASK_STATUSES = ("PENDING", "RUNNING", "STOPPED")


def find_cluster(backend, name_or_arn: str):
    return backend.clusters.get(name_or_arn.split("/")[-1])


def find_container_instance(backend, cluster_name: str, arn_or_id: str):
    return backend.container_instances.get(cluster_name, {}).get(arn_or_id.split("/")[-1])


def is_inactive(inactive: set[str], arn_or_id: str) -> bool:
    """Whether a container instance (ARN or bare id) was deregistered."""
    return arn_or_id in inactive or arn_or_id.split("/")[-1] in inactive


def find_task(backend, arn_or_id: str):
    task_id = arn_or_id.split("/")[-1]
    for tasks in backend.tasks.values():
        for arn, task in tasks.items():
            if arn == arn_or_id or arn.split("/")[-1] == task_id:
                return task
    return None


def _resource(sent: dict) -> dict:
    """A resource in the shape moto stores (all value fields present)."""
    resource = {"doubleValue": 0.0, "integerValue": 0, "longValue": 0}
    resource.update(copy.deepcopy(sent))
    if resource.get("type") == "STRINGSET":
        resource.setdefault("stringSetValue", [])
    return resource


def _remaining(total: list[dict], tasks: list) -> list[dict]:
    """Registered resources minus what the given (running) tasks hold."""
    remaining = [_resource(r) for r in total]
    for task in tasks:
        needs = task.resource_requirements or {}
        for resource in remaining:
            if resource.get("name") in ("CPU", "MEMORY"):
                resource["integerValue"] -= needs.get(resource["name"], 0) or 0
            elif resource.get("name") == "PORTS":
                resource["stringSetValue"] += [str(p) for p in needs.get("PORTS", [])]
    return remaining


def container_records(task, task_definition) -> list[dict]:
    """DescribeTasks ``containers`` for every container of the definition (moto lists only one)."""
    task_id = task.task_arn.split("/")[-1]
    records = []
    for definition in task_definition.container_definitions:
        record = {
            "containerArn": (
                f"arn:aws:ecs:{task.region_name}:{task._account_id}:container/"
                f"{task.cluster_name}/{task_id}/{uuid.uuid4()}"
            ),
            "taskArn": task.task_arn,
            "name": definition.get("name"),
            "image": definition.get("image"),
            "lastStatus": "PENDING",
            "networkBindings": [],
            "networkInterfaces": [],
            "healthStatus": "UNKNOWN",
            "cpu": str(definition.get("cpu", 0)),
        }
        if definition.get("memory") is not None:
            record["memory"] = str(definition["memory"])
        if definition.get("memoryReservation") is not None:
            record["memoryReservation"] = str(definition["memoryReservation"])
        records.append(record)
    return records


class EcsApi:
    """ec2sim's ECS operation handlers (see module docstring)."""

    def __init__(
        self,
        moto: MotoHost,
        acs,
        state_changes: Journal,
        base_url: Callable[[], str],
        inactive: set[str],
        ecr: EcrRegistry | None = None,
        credentials: Credentials | None = None,
        enis: TaskEnis | None = None,
    ) -> None:
        self.moto = moto
        self.acs = acs
        self.state_changes = state_changes
        self.base_url = base_url
        #: ARNs (and bare ids) of deregistered container instances, shared with the ACS server.
        self.inactive = inactive
        #: Which registry counts as ECR (payloads give its images ecrAuthData).
        self.ecr = ecr
        #: Task role credentials (one credentialsId per task and role type).
        self.credentials = credentials or Credentials()
        #: The ENIs of awsvpc tasks and the attach-message switches.
        self.enis = enis or TaskEnis(moto)
        #: Delayed attach messages in flight (kept so they are not garbage collected).
        self._pending: set[asyncio.Task] = set()

    def handlers(self) -> dict:
        return {
            "RegisterContainerInstance": self.register_container_instance,
            "DeregisterContainerInstance": self.deregister_container_instance,
            "DiscoverPollEndpoint": self.discover_poll_endpoint,
            "SubmitTaskStateChange": self.submit_task_state_change,
            "SubmitContainerStateChange": self.submit_container_state_change,
            "SubmitAttachmentStateChanges": self.submit_attachment_state_changes,
            "RunTask": self.place_tasks,
            "StartTask": self.place_tasks,
            "StopTask": self.stop_task,
            "UpdateContainerInstancesState": self.update_container_instances_state,
            "DescribeTasks": self.describe_tasks,
            "ListTagsForResource": self.list_tags_for_resource,
        }

    # ------------------------------------------------------------------ registration

    async def register_container_instance(self, call: AwsCall) -> web.StreamResponse:
        body = call.body
        backend = self.moto.ecs_backend(call.region)
        cluster = find_cluster(backend, body.get("cluster") or "default")
        if cluster is None:
            raise AwsError(400, "ClusterNotFoundException", "Cluster not found.")
        _check_identity_document(body.get("instanceIdentityDocument"))
        arn = body.get("containerInstanceArn")
        if arn:
            instance = self._existing_instance(backend, cluster.name, arn)
        else:
            status, reply = await self.moto.ecs_call(call, "RegisterContainerInstance", body)
            if status != 200:
                return json_response(call, reply, status)
            arn = reply["containerInstance"]["containerInstanceArn"]
            instance = find_container_instance(backend, cluster.name, arn)
            instance.agent_connected = False  # until its agent opens an ACS session
        self._apply_registration(backend, cluster.name, instance, body)
        LOG.info(
            "registered %s (%s)",
            instance.container_instance_arn,
            "re-used" if body.get("containerInstanceArn") else "new",
        )
        described = await self._describe_instance(
            call, cluster.name, instance.container_instance_arn
        )
        return json_response(call, {"containerInstance": described})

    def _existing_instance(self, backend, cluster_name: str, arn: str):
        if is_inactive(self.inactive, arn):
            raise AwsError(400, "ClientException", f"Container instance {arn} is inactive.")
        instance = find_container_instance(backend, cluster_name, arn)
        if instance is None or instance.status not in LIVE_INSTANCE_STATES:
            raise AwsError(
                400,
                "ClientException",
                f"Container instance {arn} not found in cluster {cluster_name}.",
            )
        return instance

    @staticmethod
    def _apply_registration(backend, cluster_name: str, instance, body: dict) -> None:
        """Make moto's instance reflect the request (moto ignores all of this)."""
        total = body.get("totalResources")
        if total:
            running = [
                t
                for t in backend.tasks.get(cluster_name, {}).values()
                if t.container_instance_arn == instance.container_instance_arn
                and t.desired_status == "RUNNING"
            ]
            instance.registered_resources = [_resource(r) for r in total]
            instance.remaining_resources = _remaining(total, running)
        for attribute in body.get("attributes") or []:
            instance.attributes[attribute["name"]] = attribute.get("value")
        if body.get("tags"):
            instance.tags = copy.deepcopy(body["tags"])
        if body.get("versionInfo"):
            instance.version_info = dict(body["versionInfo"])

    async def _describe_instance(self, call: AwsCall, cluster_name: str, arn: str) -> dict:
        status, reply = await self.moto.ecs_call(
            call,
            "DescribeContainerInstances",
            {"cluster": cluster_name, "containerInstances": [arn], "include": ["TAGS"]},
        )
        if status != 200 or not reply.get("containerInstances"):
            raise AwsError(500, "ServerException", f"cannot describe {arn}: {reply}")
        return reply["containerInstances"][0]

    async def deregister_container_instance(self, call: AwsCall) -> web.StreamResponse:
        backend = self.moto.ecs_backend(call.region)
        cluster = find_cluster(backend, call.body.get("cluster") or "default")
        target = call.body.get("containerInstance", "")
        if cluster is None:
            raise AwsError(400, "ClusterNotFoundException", "Cluster not found.")
        instance = find_container_instance(backend, cluster.name, target)
        if instance is None:
            raise AwsError(400, "ClientException", f"Container instance {target} not found.")
        status, reply = await self.moto.ecs_call(call, "DeregisterContainerInstance", call.body)
        if status == 200:
            self.inactive.update({instance.container_instance_arn, instance.id})
            reply["containerInstance"]["status"] = "INACTIVE"
            LOG.info("deregistered %s", instance.container_instance_arn)
        return json_response(call, reply, status)

    async def discover_poll_endpoint(self, call: AwsCall) -> web.StreamResponse:
        base = self.base_url()
        return json_response(call, {"endpoint": base, "telemetryEndpoint": base})

    # ------------------------------------------------------------------ state changes

    async def submit_task_state_change(self, call: AwsCall) -> web.StreamResponse:
        body = call.body
        _require_strings(body, ("cluster", "task"))
        if "status" in body and body["status"] not in TASK_STATUSES:
            raise AwsError(400, "InvalidParameterException", f"invalid status {body['status']}")
        containers = body.get("containers") or []
        if not isinstance(containers, list):
            raise AwsError(400, "InvalidParameterException", "containers must be a list")
        for container in containers:
            _validate_container_change(container)
        attachments = _validate_attachments(body.get("attachments"), required=False)
        self._record(call)
        task = find_task(self.moto.ecs_backend(call.region), body["task"])
        self._apply_attachments(task, attachments)
        if task is not None:
            self._apply_task_change(call.region, task, body)
            for container in containers:
                self._apply_container_change(call.region, task, container)
        return json_response(call, {"acknowledgment": "ACK"})

    async def submit_container_state_change(self, call: AwsCall) -> web.StreamResponse:
        _require_strings(call.body, ("task", "containerName"))
        _validate_container_change(call.body)
        self._record(call)
        task = find_task(self.moto.ecs_backend(call.region), call.body["task"])
        if task is not None:
            self._apply_container_change(call.region, task, call.body)
        return json_response(call, {"acknowledgment": "ACK"})

    async def submit_attachment_state_changes(self, call: AwsCall) -> web.StreamResponse:
        attachments = _validate_attachments(call.body.get("attachments"), required=True)
        self._record(call)
        self._apply_attachments(None, attachments)
        return json_response(call, {"acknowledgment": "ACK"})

    def _apply_attachments(self, task, attachments: list[dict]) -> None:
        for attachment in attachments:
            arn, status = attachment["attachmentArn"], attachment["status"]
            if not self.enis.report(task, arn, status):
                LOG.warning("attachment %s (%s) names no task ENI; recorded only", arn, status)

    def _record(self, call: AwsCall) -> None:
        self.state_changes.record(operation=call.operation, region=call.region, body=call.body)

    def _apply_task_change(self, region: str, task, body: dict) -> None:
        now = time.time()
        for key in ("pullStartedAt", "pullStoppedAt", "executionStoppedAt"):
            if key in body:
                setattr(task, key, body[key])
        status = body.get("status")
        if status == "RUNNING" and task.last_status != "STOPPED":
            task.last_status = "RUNNING"
            if getattr(task, "startedAt", None) is None:
                task.startedAt = now
        elif status == "STOPPED":
            self._mark_stopped(region, task, body.get("reason"))
            task.stoppedAt = now

    def _mark_stopped(self, region: str, task, reason: str | None) -> None:
        """The agent stopped the task: ECS then also wants it stopped and frees its resources."""
        backend = self.moto.ecs_backend(region)
        if task.desired_status != "STOPPED" and task.container_instance_arn:
            instance = find_container_instance(
                backend, task.cluster_name, task.container_instance_arn
            )
            if instance is not None:
                _release(backend, instance, task)
        task.desired_status = "STOPPED"
        task.last_status = "STOPPED"
        if reason and not task.stopped_reason:
            task.stopped_reason = reason
        self.enis.task_stopped(task)

    def _apply_container_change(self, region: str, task, change: dict) -> None:
        self.ensure_containers(region, task)
        for record in task.containers:
            if record["name"] != change.get("containerName"):
                continue
            if change.get("status"):
                record["lastStatus"] = change["status"]
            for key in ("exitCode", "reason", "networkBindings", "runtimeId", "imageDigest"):
                if key in change:
                    record[key] = change[key]

    def ensure_containers(self, region: str, task) -> None:
        """Replace moto's single-container list by records for every container of the task."""
        if task.containers and all(isinstance(c, dict) for c in task.containers):
            return
        backend = self.moto.ecs_backend(region)
        task.containers = container_records(
            task, backend.describe_task_definition(task.task_definition_arn)
        )

    # ------------------------------------------------------------------ task placement

    async def place_tasks(self, call: AwsCall) -> web.StreamResponse:
        """RunTask / StartTask: moto places; ec2sim marks PENDING and pushes over ACS."""
        backend = self.moto.ecs_backend(call.region)
        cluster = find_cluster(backend, call.body.get("cluster") or "default")
        ec2_run = (
            call.operation == "RunTask"
            and call.body.get("launchType", "EC2") == "EC2"
            and cluster is not None
        )
        if ec2_run and not backend.container_instances.get(cluster.name):
            raise AwsError(
                400,
                "InvalidParameterException",
                "No Container Instances were found in your cluster.",
            )
        body = self._check_awsvpc(call.region, call.body)
        status, reply = await self.moto.ecs_call(call, call.operation, body)
        if status != 200:
            return json_response(call, reply, status)
        tasks = [find_task(backend, t["taskArn"]) for t in reply.get("tasks", [])]
        if ec2_run and len(tasks) < call.body.get("count", 1):
            reply["failures"] = _placement_failures(backend, cluster, call.body["taskDefinition"])
        now = time.time()
        attach = []
        for task in tasks:
            task.last_status = "PENDING"
            task.createdAt = now
            self.ensure_containers(call.region, task)
            record = self.enis.allocate(task)
            if record is not None:
                attach.append(record)
        delay = self.enis.config.attach_delay
        if not delay:
            for record in attach:
                await self._send_attach(record)
        await self.push(call.region, tasks, "RUNNING")
        if delay:
            for record in attach:
                pending = asyncio.create_task(self._send_attach(record, delay))
                self._pending.add(pending)
                pending.add_done_callback(self._pending.discard)
        reply["tasks"] = await self._describe_tasks(call, tasks)
        return json_response(call, reply)

    def _check_awsvpc(self, region: str, body: dict) -> dict:
        """Validate an awsvpc task's ``awsvpcConfiguration`` as ECS does; the body moto gets.

        Subnets and security groups must exist in EC2 (moto would invent a missing group);
        without ``securityGroups`` the VPC's default group is used, as ECS does (moto needs one).
        """
        try:
            definition = self.moto.ecs_backend(region).describe_task_definition(
                body.get("taskDefinition", "")
            )
        except Exception:  # noqa: BLE001 - moto answers an unknown definition itself
            return body
        if definition.network_mode != "awsvpc" or "networkConfiguration" not in body:
            return body
        config = (body.get("networkConfiguration") or {}).get("awsvpcConfiguration")
        if not isinstance(config, dict):
            raise AwsError(
                400,
                "InvalidParameterException",
                "networkConfiguration.awsvpcConfiguration is required.",
            )
        subnets = config.get("subnets")
        if (
            not isinstance(subnets, list)
            or not subnets
            or not all(isinstance(s, str) for s in subnets)
        ):
            raise AwsError(400, "InvalidParameterException", "subnets can not be empty.")
        ec2 = self.moto.ec2_backend(region)
        known = {subnet.id: subnet for zone in ec2.subnets.values() for subnet in zone.values()}
        missing = [s for s in subnets if s not in known]
        if missing:
            raise AwsError(
                400,
                "InvalidParameterException",
                f"Error retrieving subnet information for {missing}: "
                f"The subnet ID '{missing[0]}' does not exist",
            )
        count = body.get("count", 1) if isinstance(body.get("count", 1), int) else 1
        if not self.enis.has_room(region, known[subnets[0]], count):
            raise AwsError(
                400,
                "InvalidParameterException",
                f"Subnet {subnets[0]} ({known[subnets[0]].cidr_block}) has no free IPv4 address "
                f"left for {count} task ENI(s).",
            )
        groups = config.get("securityGroups")
        if groups is None:
            vpc_id = known[subnets[0]].vpc_id
            default = ec2.get_default_security_group(vpc_id)
            groups = [default.id] if default is not None else []
        elif not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise AwsError(
                400, "InvalidParameterException", "securityGroups must be a list of ids."
            )
        unknown = [g for g in groups if ec2.get_security_group_from_id(g) is None]
        if unknown:
            raise AwsError(
                400,
                "InvalidParameterException",
                f"Error retrieving security group information for {unknown}: "
                f"The security group '{unknown[0]}' does not exist",
            )
        patched = copy.deepcopy(body)
        patched["networkConfiguration"]["awsvpcConfiguration"]["securityGroups"] = groups
        return patched

    async def _send_attach(self, record: TaskEni, delay: float = 0) -> None:
        """Send (or withhold) the task's AttachTaskNetworkInterfacesMessage, after ``delay`` s."""
        if delay:
            await asyncio.sleep(delay)
        message_id, message = self.enis.attach_message(record)
        if self.enis.config.withhold_attach:
            self.enis.record_attach(record, message_id, message, "withheld")
            return
        text = json.dumps({"type": "AttachTaskNetworkInterfacesMessage", "message": message})
        sent = await self.acs.deliver_acked(record.container_instance_arn, message_id, text)
        self.enis.record_attach(record, message_id, message, "sent" if sent else "queued")

    async def stop_task(self, call: AwsCall) -> web.StreamResponse:
        """StopTask: desired STOPPED now; lastStatus stays what the agent last reported."""
        task = find_task(self.moto.ecs_backend(call.region), call.body.get("task", ""))
        if task is None:
            raise AwsError(400, "InvalidParameterException", "The referenced task was not found.")
        if task.desired_status == "STOPPED":  # already stopping: nothing to release or push
            return json_response(call, {"task": (await self._describe_tasks(call, [task]))[0]})
        reported = task.last_status
        status, reply = await self.moto.ecs_call(call, "StopTask", call.body)
        if status != 200:
            return json_response(call, reply, status)
        task.last_status = reported
        await self.push(call.region, [task], "STOPPED")
        reply["task"] = (await self._describe_tasks(call, [task]))[0]
        return json_response(call, reply)

    async def update_container_instances_state(self, call: AwsCall) -> web.StreamResponse:
        """DRAINING stops the instance's service tasks (not standalone ones), as ECS does."""
        status, reply = await self.moto.ecs_call(call, call.operation, call.body)
        if status == 200 and str(call.body.get("status", "")).upper() == "DRAINING":
            for instance in reply.get("containerInstances", []):
                await self._drain(call.region, instance["containerInstanceArn"])
        return json_response(call, reply, status)

    async def _drain(self, region: str, instance_arn: str) -> None:
        backend = self.moto.ecs_backend(region)
        doomed = [
            task
            for tasks in backend.tasks.values()
            for task in tasks.values()
            if task.container_instance_arn == instance_arn
            and task.desired_status == "RUNNING"
            and task.started_by.startswith(SERVICE_STARTED_BY_PREFIX)
        ]
        for task in doomed:
            reported = task.last_status
            backend.stop_task(task.cluster_name, task.task_arn, DRAIN_STOP_REASON)
            task.last_status = reported
        if doomed:
            LOG.info("draining %s: stopping %d service task(s)", instance_arn, len(doomed))
            await self.push(region, doomed, "STOPPED")

    async def describe_tasks(self, call: AwsCall) -> web.StreamResponse:
        backend = self.moto.ecs_backend(call.region)
        for tasks in backend.tasks.values():
            for task in tasks.values():
                self.ensure_containers(call.region, task)
        status, reply = await self.moto.ecs_call(call, "DescribeTasks", call.body)
        return json_response(call, reply, status)

    async def list_tags_for_resource(self, call: AwsCall) -> web.StreamResponse:
        """Container instances and tasks: answered here (moto knows neither's tags); else moto."""
        arn = call.body.get("resourceArn")
        if not isinstance(arn, str) or not arn:
            raise AwsError(400, "InvalidParameterException", "resourceArn is required")
        backend = self.moto.ecs_backend(call.region)
        if ":container-instance/" in arn:
            for instances in backend.container_instances.values():
                for instance in instances.values():
                    if instance.container_instance_arn == arn:
                        return json_response(call, {"tags": list(instance.tags or [])})
            raise AwsError(
                400, "InvalidParameterException", "The specified container instance does not exist."
            )
        if ":task/" in arn:
            task = find_task(backend, arn)
            if task is None:
                raise AwsError(
                    400, "InvalidParameterException", "The specified task does not exist."
                )
            return json_response(call, {"tags": list(task.tags or [])})
        status, reply = await self.moto.ecs_call(call, "ListTagsForResource", call.body)
        return json_response(call, reply, status)

    async def _describe_tasks(self, call: AwsCall, tasks: list) -> list[dict]:
        if not tasks:
            return []
        cluster = tasks[0].cluster_name
        _, reply = await self.moto.ecs_call(
            call, "DescribeTasks", {"cluster": cluster, "tasks": [t.task_arn for t in tasks]}
        )
        return reply.get("tasks", [])

    async def push(self, region: str, tasks: list, desired_status: str) -> None:
        """Send the tasks to their instances' agents, one PayloadMessage per instance."""
        backend = self.moto.ecs_backend(region)
        by_instance: dict[str, list] = {}
        for task in tasks:
            if task.container_instance_arn:
                by_instance.setdefault(task.container_instance_arn, []).append(task)
        ecr_auth = None
        if self.ecr is not None:
            ecr_auth = functools.partial(self.ecr.auth_for, region=region, endpoint=self.base_url())

        for instance_arn, instance_tasks in by_instance.items():
            rendered = [
                payload.build_task(
                    t,
                    backend.describe_task_definition(t.task_definition_arn),
                    desired_status,
                    ecr_auth,
                    self.credentials.for_task,
                    self._enis_of(t),
                )
                for t in instance_tasks
            ]
            await self.acs.deliver(instance_arn, instance_tasks[0].cluster_arn, rendered)

    def _enis_of(self, task) -> list[dict] | None:
        record = self.enis.of_task(task.task_arn)
        return [record.acs()] if record is not None else None


def _validate_attachments(attachments, required: bool) -> list[dict]:
    """``attachments[{attachmentArn, status}]`` of a state change, or a 400 saying what is wrong."""
    if attachments is None and not required:
        return []
    if not isinstance(attachments, list):
        raise AwsError(400, "InvalidParameterException", "attachments must be a list.")
    for attachment in attachments:
        if not isinstance(attachment, dict) or not isinstance(attachment.get("attachmentArn"), str):
            raise AwsError(400, "InvalidParameterException", "attachmentArn is required.")
        if attachment.get("status") not in ATTACHMENT_STATUSES:
            raise AwsError(
                400,
                "InvalidParameterException",
                f"invalid attachment status {attachment.get('status')!r} for "
                f"{attachment['attachmentArn']}; one of {list(ATTACHMENT_STATUSES)}",
            )
    return attachments


def _placement_failures(backend, cluster, task_definition: str) -> list[dict]:
    """RunTask failures as ECS reports them: for each active instance, ``ATTRIBUTE`` when it lacks
    one of the definition's ``requiresAttributes``, else its first missing resource."""
    needs = backend._calculate_task_resource_requirements(
        backend.describe_task_definition(task_definition)
    )
    failures = []
    for instance in backend.container_instances.get(cluster.name, {}).values():
        if instance.status != "ACTIVE":
            continue
        remaining = {r["name"]: r for r in instance.remaining_resources}
        reserved = remaining.get("PORTS", {}).get("stringSetValue", [])
        if missing_attributes(instance, needs.get("ATTRIBUTES") or []):
            reason = "ATTRIBUTE"
        elif needs["CPU"] > remaining["CPU"]["integerValue"]:
            reason = "RESOURCE:CPU"
        elif needs["MEMORY"] > remaining["MEMORY"]["integerValue"]:
            reason = "RESOURCE:MEMORY"
        elif any(str(port) in reserved for port in needs["PORTS"]):
            reason = "RESOURCE:PORTS"
        else:
            continue
        failures.append({"arn": instance.container_instance_arn, "reason": reason})
    return failures


def _release(backend, instance, task) -> None:
    """Give a task's resources back to its instance (moto's StopTask does this for StopTask)."""
    needs = task.resource_requirements or {"CPU": 0, "MEMORY": 0, "PORTS": []}
    ports = [str(p) for p in needs.get("PORTS", [])]
    for resource in instance.remaining_resources:
        if resource.get("name") == "PORTS":
            for port in ports:
                if port in resource.get("stringSetValue", []):
                    resource["stringSetValue"].remove(port)
        elif resource.get("name") in ("CPU", "MEMORY"):
            resource["integerValue"] += needs.get(resource["name"], 0) or 0
    instance.running_tasks_count = max(0, instance.running_tasks_count - 1)


def _check_identity_document(document) -> None:
    try:
        parsed = json.loads(document) if isinstance(document, str) else None
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict) or not parsed.get("instanceId"):
        raise AwsError(
            400,
            "InvalidParameterException",
            "instanceIdentityDocument must be the IMDS identity document.",
        )


def _require_strings(body: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        if not isinstance(body.get(key), str) or not body[key]:
            raise AwsError(400, "InvalidParameterException", f"{key} is required.")


def _validate_container_change(change) -> None:
    if not isinstance(change, dict) or not isinstance(change.get("containerName"), str):
        raise AwsError(400, "InvalidParameterException", "containerName is required.")
    if "exitCode" in change and not isinstance(change["exitCode"], int):
        raise AwsError(400, "InvalidParameterException", "exitCode must be an integer.")
    if "networkBindings" in change and not isinstance(change["networkBindings"], list):
        raise AwsError(400, "InvalidParameterException", "networkBindings must be a list.")
    if change.get("status") is not None and change["status"] not in TASK_STATUSES:
        raise AwsError(400, "InvalidParameterException", f"invalid status {change['status']}")
