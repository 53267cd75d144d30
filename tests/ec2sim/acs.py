"""The ACS websocket (task delivery to agents), and the admission of TCS websockets, at ``GET /ws``.

Owns the sessions (one per websocket the agents open), each instance's delivery channel (the
PayloadMessage/TaskManifestMessage sequence number and the payloads not yet acked, which are resent
at the start of the instance's next session), the periodic HeartbeatMessage and TaskManifestMessage,
answers to TaskStopVerificationMessage, the delivery of other frames that want an ack (ENI attach
messages, built by ``enis``), the delivery of role credentials (IAMRoleCredentialsMessage:
refreshes every half lifetime or on request, and all sets again on a ``sendCredentials=true``
connection; task-credentials.md §10) with a record of what was sent and acked, and the control
operations tests use (drop, send, config). Envelope and messages follow protocol spec §5; the task
objects come from ``payload``, the credentials from ``credentials``. Reads moto's ECS backend for
clusters, instances and tasks; never writes moto except ``agentConnected``. TCS sessions (query has
``containerInstance``) are admitted here (SigV4 check, the ``refuse`` switch) and listed with the
others, then served by ``tcs.Tcs``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

import payload
from awsproto import scope_of
from credentials import TASK_ROLE_TYPES, Credentials, CredentialSet
from ecs_api import find_cluster, find_container_instance, find_task, is_inactive
from journal import Journal
from motohost import MotoHost
from tcs import Tcs, is_tcs_query

LOG = logging.getLogger("ec2sim.acs")

SIGV4_RE = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=[^/\s]+/\d{8}/[^/\s]+/ecs/aws4_request,\s*"
    r"SignedHeaders=[^,\s]+,\s*Signature=[0-9a-fA-F]+$"
)
TICK_SECONDS = 0.1


def _millis() -> int:
    return int(time.time() * 1000)


def envelope(kind: str, message: dict) -> str:
    return json.dumps({"type": kind, "message": message})


@dataclass
class Config:
    """Session behaviour tests can change at any time through the control API."""

    heartbeat_interval: float | None = 20.0
    manifest_interval: float | None = 60.0
    drop_after_next_payload: bool = False

    def update(self, changes: dict) -> None:
        for key in ("heartbeat_interval", "manifest_interval"):
            if key in changes:
                value = changes[key]
                if value is not None and (not isinstance(value, (int, float)) or value <= 0):
                    raise ValueError(f"{key} must be a positive number or null")
                setattr(self, key, value)
        if "drop_after_next_payload" in changes:
            self.drop_after_next_payload = bool(changes["drop_after_next_payload"])

    def describe(self) -> dict:
        return {
            "heartbeat_interval": self.heartbeat_interval,
            "manifest_interval": self.manifest_interval,
            "drop_after_next_payload": self.drop_after_next_payload,
        }


@dataclass
class Channel:
    """Per container instance: the shared payload/manifest counter and unacked payloads."""

    seq_num: int = 0
    #: messageId -> frame text, in delivery order.
    unacked: OrderedDict = field(default_factory=OrderedDict)


@dataclass
class Session:
    """One websocket an agent opened (ACS or TCS)."""

    id: str
    kind: str
    region: str
    cluster: str
    container_instance_arn: str
    query: dict
    ws: web.WebSocketResponse = field(repr=False)
    request: web.Request = field(repr=False)
    connected: bool = True
    opened_at: float = field(default_factory=time.time)
    closed_at: float | None = None
    close_code: int | None = None
    received: list = field(default_factory=list)
    sent: list = field(default_factory=list)

    def describe(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "container_instance_arn": self.container_instance_arn,
            "cluster": self.cluster,
            "region": self.region,
            "query": self.query,
            "connected": self.connected,
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "close_code": self.close_code,
            "received": self.received,
            "sent": self.sent,
        }


class AcsError(Exception):
    """A refused websocket upgrade: HTTP status and the one-key JSON body of spec §5.2."""

    def __init__(self, status: int, exception: str, message: str) -> None:
        super().__init__(f"{exception}: {message}")
        self.status = status
        self.exception = exception
        self.message = message

    def response(self) -> web.Response:
        return web.json_response({self.exception: self.message}, status=self.status)


class Acs:
    """All ACS/TCS sessions and the delivery channels of container instances."""

    def __init__(
        self,
        moto: MotoHost,
        inactive: set[str],
        credentials: Credentials | None = None,
        tcs: Tcs | None = None,
    ) -> None:
        self.moto = moto
        self.tcs = tcs or Tcs(moto)
        self.inactive = inactive
        self.credentials = credentials or Credentials()
        self.config = Config()
        self.sessions: list[Session] = []
        self.channels: dict[str, Channel] = {}
        #: IAMRoleCredentialsMessages sent (no secrets) and IAMRoleCredentialsAckRequests received.
        self.credential_messages = Journal()
        self.credential_acks = Journal()
        #: (messageId, credentialsId) -> expiration, for every credential set sent (in a
        #: PayloadMessage or an IAMRoleCredentialsMessage): what a correct ack echoes.
        self._sent_expirations: dict[tuple[str, str], str] = {}
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ connection

    async def serve(self, request: web.Request) -> web.StreamResponse:
        try:
            session = self._admit(request)
        except AcsError as err:
            LOG.info("refused websocket: %s", err)
            if is_tcs_query(request.query):
                self.tcs.record_attempt(request, err.status, str(err), None)
            return err.response()
        await session.ws.prepare(request)
        self.sessions.append(session)
        LOG.info(
            "%s session %s opened for %s", session.kind, session.id, session.container_instance_arn
        )
        if session.kind == "tcs":
            try:
                await self.tcs.run(session)
            finally:
                self._closed(session)
        else:
            await self._run_acs(session)
        return session.ws

    def _admit(self, request: web.Request) -> Session:
        """Check the upgrade request; return the session it opens, or raise AcsError."""
        authorization = request.headers.get("Authorization", "")
        scope = scope_of(authorization)
        if (
            not SIGV4_RE.match(authorization)
            or scope is None
            or not request.headers.get("X-Amz-Date")
        ):
            raise AcsError(
                403, "AccessDeniedException", "Missing or malformed SigV4 authentication."
            )
        query = dict(request.query)
        if "containerInstanceArn" in query:
            kind, cluster, instance = (
                "acs",
                query.get("clusterArn", ""),
                query["containerInstanceArn"],
            )
        elif "containerInstance" in query:
            kind, cluster, instance = "tcs", query.get("cluster", ""), query["containerInstance"]
        else:
            raise AcsError(400, "BadRequestException", "containerInstanceArn is required.")
        if kind == "acs":
            self._check_instance(scope[0], cluster, instance)
        else:
            refusal = self.tcs.refusal(instance)
            if refusal is not None:
                raise AcsError(403, "AccessDeniedException", refusal)
        return Session(
            id=f"s{next(self._ids)}",
            kind=kind,
            region=scope[0],
            cluster=cluster,
            container_instance_arn=instance,
            query=query,
            ws=web.WebSocketResponse(max_msg_size=16 * 1024 * 1024),
            request=request,
        )

    def _check_instance(self, region: str, cluster_name: str, instance_arn: str) -> None:
        backend = self.moto.ecs_backend(region)
        cluster = find_cluster(backend, cluster_name) if cluster_name else None
        if cluster is None:
            raise AcsError(400, "InvalidClusterException", "Invalid cluster")
        if is_inactive(self.inactive, instance_arn):
            raise AcsError(400, "InactiveInstanceException", "Container instance is inactive.")
        if find_container_instance(backend, cluster.name, instance_arn) is None:
            raise AcsError(400, "InvalidInstanceException", "Invalid container instance.")

    async def _run_acs(self, session: Session) -> None:
        self._set_agent_connected(session, True)
        ticker = asyncio.create_task(self._tick(session))
        try:
            for text in list(self.channel(session.container_instance_arn).unacked.values()):
                await self._send_payload(session, text)
            if session.query.get("sendCredentials") == "true":
                await self._resend_credentials(session)
            async for msg in session.ws:
                if msg.type == WSMsgType.TEXT:
                    await self._on_frame(session, msg.data)
        finally:
            ticker.cancel()
            self._closed(session)
            if self.live_session(session.container_instance_arn) is None:
                self._set_agent_connected(session, False)

    def _closed(self, session: Session) -> None:
        session.connected = False
        session.closed_at = time.time()
        session.close_code = session.ws.close_code
        LOG.info("%s session %s closed (code %s)", session.kind, session.id, session.close_code)

    def _set_agent_connected(self, session: Session, connected: bool) -> None:
        backend = self.moto.ecs_backend(session.region)
        cluster = find_cluster(backend, session.cluster)
        instance = cluster and find_container_instance(
            backend, cluster.name, session.container_instance_arn
        )
        if instance:
            instance.agent_connected = connected

    # ------------------------------------------------------------------ frames

    async def _on_frame(self, session: Session, text: str) -> None:
        frame = _parse_frame(text)
        session.received.append(frame)
        message = frame.get("message") if isinstance(frame.get("message"), dict) else {}
        if frame.get("type") == "AckRequest":
            self.channel(session.container_instance_arn).unacked.pop(message.get("messageId"), None)
        elif frame.get("type") == "IAMRoleCredentialsAckRequest":
            self._record_credentials_ack(session, message)
        elif frame.get("type") == "TaskStopVerificationMessage":
            await self._verify_stops(session, message)

    async def _verify_stops(self, session: Session, message: dict) -> None:
        """Confirm the candidates ECS also wants stopped (desired STOPPED, or unknown tasks)."""
        backend = self.moto.ecs_backend(session.region)
        confirmed = []
        for candidate in message.get("stopCandidates") or []:
            task = find_task(backend, candidate.get("taskArn", ""))
            if task is None or task.desired_status == "STOPPED":
                confirmed.append({**candidate, "desiredStatus": "STOPPED"})
        ack = {
            "messageId": message.get("messageId"),
            "generatedAt": _millis(),
            "stopTasks": confirmed,
        }
        await self._send(session, envelope("TaskStopVerificationAck", ack))

    async def _send(self, session: Session, text: str) -> None:
        if session.ws.closed:
            return
        try:
            await session.ws.send_str(text)
        except ConnectionResetError:
            LOG.info("session %s: connection gone, frame not sent", session.id)
            return
        session.sent.append(_parse_frame(text))

    async def _send_payload(self, session: Session, text: str) -> None:
        await self._send(session, text)
        if self.config.drop_after_next_payload:
            self.config.drop_after_next_payload = False
            LOG.info("dropping session %s right after a payload", session.id)
            session.request.transport.abort()

    # ------------------------------------------------------------------ periodic messages

    async def _tick(self, session: Session) -> None:
        """Send HeartbeatMessage and TaskManifestMessage at the configured intervals."""
        last_heartbeat = last_manifest = time.monotonic()
        while not session.ws.closed:
            await asyncio.sleep(TICK_SECONDS)
            now = time.monotonic()
            if (
                self.config.heartbeat_interval
                and now - last_heartbeat >= self.config.heartbeat_interval
            ):
                last_heartbeat = now
                heartbeat = {"messageId": str(uuid.uuid4()), "healthy": True}
                await self._send(session, envelope("HeartbeatMessage", heartbeat))
            if (
                self.config.manifest_interval
                and now - last_manifest >= self.config.manifest_interval
            ):
                last_manifest = now
                await self._send(session, self.manifest(session))
            if self.credentials.auto_refresh:
                for due in self.credentials.due(session.container_instance_arn):
                    if self._task_live(session.region, due.task_arn):
                        self.credentials.refresh(due.task_arn, due.role_type)
                        await self._send_credentials(session, due, "refresh")

    def manifest(self, session: Session) -> str:
        """A TaskManifestMessage listing what ECS thinks the instance should run."""
        backend = self.moto.ecs_backend(session.region)
        arn = session.container_instance_arn
        listed = [
            {
                "taskArn": t.task_arn,
                "taskClusterArn": t.cluster_arn,
                "desiredStatus": t.desired_status,
            }
            for tasks in backend.tasks.values()
            for t in tasks.values()
            if t.container_instance_arn == arn
            and not (t.desired_status == t.last_status == "STOPPED")
        ]
        cluster = find_cluster(backend, session.cluster)
        message = {
            "messageId": str(uuid.uuid4()),
            "clusterArn": cluster.arn if cluster else session.cluster,
            "containerInstanceArn": arn,
            "generatedAt": _millis(),
            "timeline": self.channel(arn).seq_num,
            "tasks": listed,
        }
        return envelope("TaskManifestMessage", message)

    # ------------------------------------------------------------------ delivery

    def channel(self, instance_arn: str) -> Channel:
        return self.channels.setdefault(instance_arn, Channel())

    def live_session(self, instance_arn: str) -> Session | None:
        for session in reversed(self.sessions):
            if (
                session.kind == "acs"
                and session.connected
                and session.container_instance_arn == instance_arn
            ):
                return session
        return None

    async def deliver(self, instance_arn: str, cluster_arn: str, tasks: list[dict]) -> None:
        """Queue a PayloadMessage for the instance and send it now if its agent is connected."""
        channel = self.channel(instance_arn)
        channel.seq_num += 1
        message_id = str(uuid.uuid4())
        text = envelope(
            "PayloadMessage",
            {
                "messageId": message_id,
                "clusterArn": cluster_arn,
                "containerInstanceArn": instance_arn,
                "seqNum": channel.seq_num,
                "timeline": channel.seq_num,
                "generatedAt": _millis(),
                "tasks": tasks,
            },
        )
        channel.unacked[message_id] = text
        for task in tasks:
            for key in ("roleCredentials", "executionRoleCredentials"):
                sent = task.get(key)
                if isinstance(sent, dict):
                    self._sent_expirations[(message_id, sent.get("credentialsId"))] = sent.get(
                        "expiration"
                    )
        session = self.live_session(instance_arn)
        LOG.info(
            "payload %s (%d task(s)) for %s: %s",
            message_id,
            len(tasks),
            instance_arn,
            "sent" if session else "queued",
        )
        if session is not None:
            await self._send_payload(session, text)

    async def deliver_acked(self, instance_arn: str, message_id: str, text: str) -> bool:
        """Queue a frame that wants an ``AckRequest`` (e.g. AttachTaskNetworkInterfacesMessage).

        Like a payload it stays unacked, and is resent at the start of the instance's next
        session, until an AckRequest with its ``messageId`` arrives. Returns whether it was sent
        now (False: queued for the next session).
        """
        self.channel(instance_arn).unacked[message_id] = text
        session = self.live_session(instance_arn)
        if session is not None:
            await self._send(session, text)
        return session is not None

    def acks(self, message_ids: set[str]) -> dict[str, dict]:
        """The first ``AckRequest`` received for each of these messageIds (with its session)."""
        found: dict[str, dict] = {}
        for frame in self.received(kind="AckRequest"):
            message_id = (frame.get("message") or {}).get("messageId")
            if message_id in message_ids and message_id not in found:
                found[message_id] = frame
        return found

    async def close_all(self, _app: web.Application | None = None) -> None:
        """Close every open session with 1001 (going away); used when ec2sim shuts down."""
        for session in self.sessions:
            if session.connected and not session.ws.closed:
                await session.ws.close(code=1001, message=b"ec2sim shutting down")

    # ------------------------------------------------------------------ control operations

    def describe(self) -> list[dict]:
        return [s.describe() for s in self.sessions]

    async def drop(self, session_id: str, code: int | None) -> bool:
        """Close a session with a close code, or abruptly (no close frame) without one."""
        session = next((s for s in self.sessions if s.id == session_id), None)
        if session is None:
            return False
        if session.kind == "tcs":
            return await self.tcs.drop(session_id, code)
        if code is None:
            session.request.transport.abort()
        else:
            await session.ws.close(code=code, message=b"ec2sim drop")
        return True

    async def send(self, instance_arn: str, text: str) -> bool:
        """Send one raw text frame to the instance's live session; False if none is connected."""
        session = self.live_session(instance_arn)
        if session is None:
            return False
        await self._send(session, text)
        return True

    async def send_credentials(
        self, instance_arn: str | None, task_arn: str, role_type: str
    ) -> dict | None:
        """Refresh one task's credentials (new keys, same credentialsId) and send them.

        The instance defaults to the task's. Returns the record of the message sent, or None if
        the instance has no connected ACS session (nothing is issued then).
        """
        task = self._find_task_anywhere(task_arn)
        known = self.credentials.get(task_arn, role_type)
        instance_arn = (
            instance_arn
            or (known.container_instance_arn if known else "")
            or (task.container_instance_arn if task is not None else "")
        )
        session = self.live_session(instance_arn) if instance_arn else None
        if session is None:
            return None
        role_arn = None
        if task is not None:
            definition = self.moto.ecs_backend(task.region_name).describe_task_definition(
                task.task_definition_arn
            )
            role_arn = payload.role_arns(task, definition).get(role_type)
        refreshed = self.credentials.refresh(task_arn, role_type, task=task, role_arn=role_arn)
        return await self._send_credentials(session, refreshed, "control")

    # ------------------------------------------------------------------ credentials

    async def _resend_credentials(self, session: Session) -> None:
        """``sendCredentials=true``: every set of the instance's live tasks, current keys."""
        for issued in self.credentials.of_instance(session.container_instance_arn):
            if issued.role_type in TASK_ROLE_TYPES and self._task_live(
                session.region, issued.task_arn
            ):
                await self._send_credentials(session, issued, "sendCredentials")

    async def _send_credentials(self, session: Session, issued: CredentialSet, reason: str) -> dict:
        """Send the set's current credentials in an IAMRoleCredentialsMessage; record it."""
        message_id = str(uuid.uuid4())
        message = {
            "messageId": message_id,
            "taskArn": issued.task_arn,
            "taskClusterArn": issued.cluster_arn or session.cluster,
            "roleType": issued.role_type,
            "roleCredentials": dict(issued.credentials),
        }
        expiration = issued.credentials["expiration"]
        self._sent_expirations[(message_id, issued.credentials_id)] = expiration
        await self._send(session, envelope("IAMRoleCredentialsMessage", message))
        LOG.info(
            "credentials %s (%s) of %s sent to session %s (%s)",
            issued.credentials_id,
            issued.role_type,
            issued.task_arn,
            session.id,
            reason,
        )
        return self.credential_messages.record(
            session=session.id,
            container_instance_arn=session.container_instance_arn,
            message_id=message_id,
            task_arn=issued.task_arn,
            role_type=issued.role_type,
            role_arn=issued.role_arn,
            credentials_id=issued.credentials_id,
            access_key_id=issued.credentials["accessKeyId"],
            expiration=expiration,
            reason=reason,
        )

    def _record_credentials_ack(self, session: Session, message: dict) -> None:
        message_id, credentials_id = message.get("messageId"), message.get("credentialsId")
        expected = self._sent_expirations.get((message_id, credentials_id))
        self.credential_acks.record(
            session=session.id,
            container_instance_arn=session.container_instance_arn,
            message_id=message_id,
            credentials_id=credentials_id,
            expiration=message.get("expiration"),
            answers=self._sent_type(session.container_instance_arn, message_id),
            matches=expected is not None and expected == message.get("expiration"),
        )

    def _sent_type(self, instance_arn: str, message_id) -> str | None:
        """Type of the frame with this messageId sent to the instance (latest session first)."""
        for session in reversed(self.sessions):
            if session.container_instance_arn != instance_arn:
                continue
            for frame in reversed(session.sent):
                if (frame.get("message") or {}).get("messageId") == message_id:
                    return frame.get("type")
        return None

    def _task_live(self, region: str, task_arn: str) -> bool:
        """Whether ECS still runs the task (not both desired and last STOPPED)."""
        task = find_task(self.moto.ecs_backend(region), task_arn)
        return task is not None and not (task.desired_status == task.last_status == "STOPPED")

    def _find_task_anywhere(self, task_arn: str):
        region = task_arn.split(":")[3] if task_arn.count(":") >= 5 else ""
        if not region:
            return None
        try:
            return find_task(self.moto.ecs_backend(region), task_arn)
        except KeyError:
            return None

    def describe_credentials(self, task_arn: str | None = None) -> dict:
        """What was sent and acked, optionally for one task's messages and sets."""
        messages = self.credential_messages.query(task_arn=task_arn)
        acks = self.credential_acks.query()
        if task_arn is not None:
            credential_ids = {
                s.credentials_id for s in self.credentials.sets.values() if s.task_arn == task_arn
            }
            acks = [a for a in acks if a["credentials_id"] in credential_ids]
        acked = {(a["message_id"], a["credentials_id"]) for a in acks}
        return {
            "messages": [
                {**m, "acked": (m["message_id"], m["credentials_id"]) in acked} for m in messages
            ],
            "acks": acks,
        }

    def received(self, kind: str | None = None, instance_arn: str | None = None) -> list[dict]:
        """Frames agents sent, over all ACS sessions in order, each with its session id."""
        return [
            {**frame, "session": session.id}
            for session in self.sessions
            if session.kind == "acs"
            and (instance_arn is None or session.container_instance_arn == instance_arn)
            for frame in session.received
            if kind is None or frame.get("type") == kind
        ]


def _parse_frame(text: str) -> dict:
    """A received frame as recorded: the parsed envelope, or the raw text if it is not one."""
    try:
        frame = json.loads(text)
    except ValueError:
        frame = None
    recorded = {"time": time.time()}
    if isinstance(frame, dict):
        recorded.update(frame)
    else:
        recorded["raw"] = text
    return recorded
