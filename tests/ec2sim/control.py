"""The control surface tests use: JSON over HTTP under ``/ec2sim/`` (documented in README.md).

Owns only request validation and the mapping of control routes onto the parts of the world
(IMDS instances, fault table, denied resources, journals, ACS hub, TCS, ECR registry, task ENIs).
Holds no state of its own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from acs import Acs, envelope
from credentials import TASK_ROLE_TYPES, Credentials
from ecr_api import EcrRegistry
from enis import TaskEnis
from faults import Denials, FaultTable
from imds import Imds
from journal import Journal
from tcs import Tcs


@dataclass
class World:
    """Everything the control API can read or change."""

    imds: Imds
    faults: FaultTable
    requests: Journal
    state_changes: Journal
    lifecycle_actions: Journal
    acs: Acs
    tcs: Tcs
    base_url: Callable[[], str]
    ecr: EcrRegistry
    credentials: Credentials
    denials: Denials
    enis: TaskEnis


def _bad_request(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


def _since(request: web.Request) -> float | None:
    """The ``since`` query parameter (epoch seconds), or None; 400 if it is not a number."""
    value = request.query.get("since")
    if value in (None, ""):
        return None
    try:
        return float(value)
    except ValueError as err:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "since must be epoch seconds"}),
            content_type="application/json",
        ) from err


async def _json_body(request: web.Request) -> dict:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except json.JSONDecodeError as err:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"invalid JSON: {err}"}), content_type="application/json"
        ) from err
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "body must be a JSON object"}),
            content_type="application/json",
        )
    return body


class Control:
    """Handlers of the ``/ec2sim/...`` routes."""

    def __init__(self, world: World) -> None:
        self.world = world

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/ec2sim/health", self.health),
            web.post("/ec2sim/instances", self.create_instance),
            web.get("/ec2sim/instances/default", self.default_instance),
            web.get("/ec2sim/instances/{id}/imds", self.get_imds),
            web.post("/ec2sim/instances/{id}/imds", self.set_imds),
            web.get("/ec2sim/faults", self.get_faults),
            web.post("/ec2sim/faults", self.set_fault),
            web.get("/ec2sim/deny", self.get_denied),
            web.post("/ec2sim/deny", self.set_denied),
            web.delete("/ec2sim/deny", self.clear_denied),
            web.get("/ec2sim/requests", self.get_requests),
            web.delete("/ec2sim/requests", self.clear_requests),
            web.get("/ec2sim/state-changes", self.get_state_changes),
            web.get("/ec2sim/lifecycle-actions", self.get_lifecycle_actions),
            web.get("/ec2sim/acs/sessions", self.get_sessions),
            web.post("/ec2sim/acs/sessions/{id}/drop", self.drop_session),
            web.post("/ec2sim/acs/send", self.acs_send),
            web.post("/ec2sim/acs/credentials", self.acs_credentials),
            web.get("/ec2sim/acs/credentials", self.get_acs_credentials),
            web.get("/ec2sim/acs/received", self.get_received),
            web.get("/ec2sim/credentials", self.get_credentials),
            web.post("/ec2sim/credentials", self.set_credentials),
            web.get("/ec2sim/credentials/keys", self.get_keys),
            web.get("/ec2sim/acs/config", self.get_acs_config),
            web.post("/ec2sim/acs/config", self.set_acs_config),
            web.get("/ec2sim/tcs/frames", self.get_tcs_frames),
            web.get("/ec2sim/tcs/sessions", self.get_tcs_sessions),
            web.post("/ec2sim/tcs/sessions/{id}/drop", self.drop_tcs_session),
            web.post("/ec2sim/tcs/drop", self.drop_tcs_sessions),
            web.get("/ec2sim/tcs/attempts", self.get_tcs_attempts),
            web.get("/ec2sim/tcs/config", self.get_tcs_config),
            web.post("/ec2sim/tcs/config", self.set_tcs_config),
            web.get("/ec2sim/tcs/health", self.get_tcs_health),
            web.get("/ec2sim/tcs/metrics", self.get_tcs_metrics),
            web.get("/ec2sim/ecr", self.get_ecr),
            web.post("/ec2sim/ecr", self.set_ecr),
            web.get("/ec2sim/enis", self.get_enis),
            web.get("/ec2sim/enis/config", self.get_enis_config),
            web.post("/ec2sim/enis/config", self.set_enis_config),
            web.get("/ec2sim/acs/attach", self.get_attach_messages),
        ]

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    # ------------------------------------------------------------------ instances and IMDS

    async def create_instance(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        try:
            instance = await self.world.imds.create_instance(
                region=body.get("region"),
                instance_type=body.get("instance_type"),
                lifecycle=body.get("lifecycle"),
                asg=body.get("asg"),
                subnet_id=body.get("subnet_id"),
            )
        except ValueError as err:
            return _bad_request(str(err))
        return web.json_response(
            {
                "instance_id": instance.instance_id,
                "region": instance.region,
                "imds": f"{self.world.base_url()}/imds/{instance.instance_id}",
            }
        )

    async def default_instance(self, _request: web.Request) -> web.Response:
        instance = self.world.imds.instances[self.world.imds.default_id]
        return web.json_response(
            {
                "instance_id": instance.instance_id,
                "region": instance.region,
                "imds": f"{self.world.base_url()}/imds/{instance.instance_id}",
            }
        )

    def _instance(self, request: web.Request):
        instance_id = request.match_info["id"]
        if instance_id == "default":
            instance_id = self.world.imds.default_id
        instance = self.world.imds.instances.get(instance_id)
        if instance is None:
            raise web.HTTPNotFound(
                text=json.dumps({"error": f"unknown instance {instance_id}"}),
                content_type="application/json",
            )
        return instance

    async def get_imds(self, request: web.Request) -> web.Response:
        return web.json_response(self._instance(request).state())

    async def set_imds(self, request: web.Request) -> web.Response:
        instance = self._instance(request)
        try:
            instance.configure(await _json_body(request))
        except ValueError as err:
            return _bad_request(str(err))
        return web.json_response(instance.state())

    # ------------------------------------------------------------------ faults and records

    async def get_faults(self, _request: web.Request) -> web.Response:
        return web.json_response({"faults": self.world.faults.describe()})

    async def set_fault(self, request: web.Request) -> web.Response:
        try:
            self.world.faults.configure(await _json_body(request))
        except ValueError as err:
            return _bad_request(str(err))
        return web.json_response({"faults": self.world.faults.describe()})

    async def get_denied(self, _request: web.Request) -> web.Response:
        return web.json_response({"denied": self.world.denials.describe()})

    async def set_denied(self, request: web.Request) -> web.Response:
        try:
            self.world.denials.configure(await _json_body(request))
        except ValueError as err:
            return _bad_request(str(err))
        return web.json_response({"denied": self.world.denials.describe()})

    async def clear_denied(self, _request: web.Request) -> web.Response:
        self.world.denials.clear()
        return web.json_response({"denied": []})

    async def get_requests(self, request: web.Request) -> web.Response:
        entries = self.world.requests.query(
            service=request.query.get("service"), operation=request.query.get("operation")
        )
        return web.json_response({"requests": entries})

    async def clear_requests(self, _request: web.Request) -> web.Response:
        self.world.requests.clear()
        return web.json_response({"ok": True})

    async def get_state_changes(self, request: web.Request) -> web.Response:
        entries = self.world.state_changes.query(operation=request.query.get("operation"))
        return web.json_response({"state_changes": entries})

    async def get_lifecycle_actions(self, _request: web.Request) -> web.Response:
        return web.json_response({"lifecycle_actions": self.world.lifecycle_actions.query()})

    # ------------------------------------------------------------------ ACS

    async def get_sessions(self, _request: web.Request) -> web.Response:
        return web.json_response({"sessions": self.world.acs.describe()})

    async def drop_session(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        code = body.get("code")
        if code is not None and not isinstance(code, int):
            return _bad_request("code must be an integer")
        if not await self.world.acs.drop(request.match_info["id"], code):
            return web.json_response({"error": "unknown session"}, status=404)
        return web.json_response({"ok": True})

    async def acs_send(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        arn = body.get("container_instance_arn")
        if not isinstance(arn, str):
            return _bad_request("container_instance_arn is required")
        if isinstance(body.get("raw"), str):
            text = body["raw"]
        elif isinstance(body.get("message"), dict) and "type" in body["message"]:
            text = envelope(body["message"]["type"], body["message"].get("message", {}))
        else:
            return _bad_request('give "raw" text or "message": {"type", "message"}')
        if not await self.world.acs.send(arn, text):
            return web.json_response({"error": "no connected ACS session"}, status=409)
        return web.json_response({"ok": True})

    async def acs_credentials(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        arn, task_arn = body.get("container_instance_arn"), body.get("task_arn")
        if not isinstance(task_arn, str) or not task_arn:
            return _bad_request("task_arn is required")
        if arn is not None and not isinstance(arn, str):
            return _bad_request("container_instance_arn must be a string")
        role_type = body.get("role_type", "TaskApplication")
        if role_type not in TASK_ROLE_TYPES:
            return _bad_request(f"role_type must be one of {TASK_ROLE_TYPES}")
        sent = await self.world.acs.send_credentials(arn, task_arn, role_type)
        if sent is None:
            return web.json_response({"error": "no connected ACS session"}, status=409)
        return web.json_response({"ok": True, **sent})

    async def get_acs_credentials(self, request: web.Request) -> web.Response:
        return web.json_response(
            self.world.acs.describe_credentials(task_arn=request.query.get("task_arn"))
        )

    async def get_received(self, request: web.Request) -> web.Response:
        frames = self.world.acs.received(
            kind=request.query.get("type"),
            instance_arn=request.query.get("container_instance_arn"),
        )
        return web.json_response({"frames": frames})

    # ------------------------------------------------------------------ role credentials

    async def get_credentials(self, request: web.Request) -> web.Response:
        described = self.world.credentials.describe()
        task_arn = request.query.get("task_arn")
        if task_arn is not None:
            described["sets"] = [s for s in described["sets"] if s["task_arn"] == task_arn]
        return web.json_response(described)

    async def set_credentials(self, request: web.Request) -> web.Response:
        try:
            self.world.credentials.configure(await _json_body(request))
        except ValueError as err:
            return _bad_request(str(err))
        return web.json_response(self.world.credentials.describe())

    async def get_keys(self, request: web.Request) -> web.Response:
        keys = self.world.credentials.describe_keys(
            access_key_id=request.query.get("access_key_id"),
            task_arn=request.query.get("task_arn"),
            role_type=request.query.get("role_type"),
            credentials_id=request.query.get("credentials_id"),
        )
        return web.json_response({"keys": keys})

    async def get_acs_config(self, _request: web.Request) -> web.Response:
        return web.json_response(self.world.acs.config.describe())

    async def set_acs_config(self, request: web.Request) -> web.Response:
        try:
            self.world.acs.config.update(await _json_body(request))
        except ValueError as err:
            return _bad_request(str(err))
        return web.json_response(self.world.acs.config.describe())

    # ------------------------------------------------------------------ TCS

    async def get_tcs_frames(self, request: web.Request) -> web.Response:
        frames = self.world.tcs.describe_frames(
            kind=request.query.get("type"),
            instance=request.query.get("instance"),
            since=_since(request),
            session=request.query.get("session"),
        )
        return web.json_response({"frames": frames})

    async def get_tcs_sessions(self, request: web.Request) -> web.Response:
        sessions = self.world.tcs.describe_sessions(instance=request.query.get("instance"))
        return web.json_response({"sessions": sessions})

    async def drop_tcs_session(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        code = body.get("code")
        if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
            return _bad_request("code must be an integer")
        if not await self.world.tcs.drop(request.match_info["id"], code):
            return web.json_response({"error": "unknown session"}, status=404)
        return web.json_response({"ok": True})

    async def drop_tcs_sessions(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        code, instance = body.get("code"), body.get("container_instance_arn")
        if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
            return _bad_request("code must be an integer")
        if instance is not None and not isinstance(instance, str):
            return _bad_request("container_instance_arn must be a string")
        return web.json_response({"dropped": await self.world.tcs.drop_all(instance, code)})

    async def get_tcs_attempts(self, request: web.Request) -> web.Response:
        return web.json_response(
            self.world.tcs.describe_attempts(
                instance=request.query.get("instance"), since=_since(request)
            )
        )

    async def get_tcs_config(self, _request: web.Request) -> web.Response:
        return web.json_response(self.world.tcs.config.describe())

    async def set_tcs_config(self, request: web.Request) -> web.Response:
        try:
            self.world.tcs.config.update(await _json_body(request))
        except ValueError as err:
            return _bad_request(str(err))
        return web.json_response(self.world.tcs.config.describe())

    async def get_tcs_health(self, request: web.Request) -> web.Response:
        health = self.world.tcs.describe_health(
            instance=request.query.get("instance"), task_arn=request.query.get("task_arn")
        )
        return web.json_response({"health": health})

    async def get_tcs_metrics(self, request: web.Request) -> web.Response:
        metrics = self.world.tcs.describe_metrics(
            instance=request.query.get("instance"), since=_since(request)
        )
        return web.json_response({"metrics": metrics})

    # ------------------------------------------------------------------ ECR

    async def get_ecr(self, _request: web.Request) -> web.Response:
        return web.json_response(self.world.ecr.describe())

    async def set_ecr(self, request: web.Request) -> web.Response:
        try:
            self.world.ecr.update(await _json_body(request))
        except ValueError as err:
            return _bad_request(str(err))
        return web.json_response(self.world.ecr.describe())

    # ------------------------------------------------------------------ awsvpc ENIs

    async def get_enis(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"enis": self.world.enis.describe(task_arn=request.query.get("task_arn"))}
        )

    async def get_enis_config(self, _request: web.Request) -> web.Response:
        return web.json_response(self.world.enis.config.describe())

    async def set_enis_config(self, request: web.Request) -> web.Response:
        try:
            self.world.enis.config.update(await _json_body(request))
        except ValueError as err:
            return _bad_request(str(err))
        return web.json_response(self.world.enis.config.describe())

    async def get_attach_messages(self, request: web.Request) -> web.Response:
        """Attach messages built (sent, queued or withheld) and the AckRequests that answered."""
        messages = self.world.enis.attach_messages.query(task_arn=request.query.get("task_arn"))
        acks = self.world.acs.acks({m["message_id"] for m in messages})
        return web.json_response(
            {
                "messages": [
                    {
                        **m,
                        "acked": m["message_id"] in acks,
                        "ack_time": acks[m["message_id"]]["time"]
                        if m["message_id"] in acks
                        else None,
                        "ack_session": acks.get(m["message_id"], {}).get("session"),
                    }
                    for m in messages
                ]
            }
        )
