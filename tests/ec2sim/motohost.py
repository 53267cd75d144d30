"""moto, run inside the ec2sim process.

Owns the in-process moto server (a ``ThreadedMotoServer`` on its own 127.0.0.1 port), HTTP
forwarding of AWS requests to it, direct access to moto's backend objects (same process, same
globals), and synchronous boto3 clients aimed at it for ec2sim's own setup calls. It never decides
what a request means; callers do.
"""

from __future__ import annotations

import json
import logging

import aiohttp
import boto3
from aiohttp import web
from moto.ec2.models import ec2_backends
from moto.ec2.models.elastic_network_interfaces import NetworkInterface
from moto.ec2.utils import generate_dns_from_ip
from moto.ecs.models import EC2ContainerServiceBackend, ecs_backends
from moto.moto_api import state_manager
from moto.server import ThreadedMotoServer

from awsproto import AwsCall
from placement import missing_attributes, required_attributes

ACCOUNT_ID = "123456789012"
LOG = logging.getLogger("ec2sim.moto")

# Hop-by-hop and framing headers that must not be copied between the two HTTP legs.
_REQUEST_SKIP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}
# The client session decompresses replies, so their Content-Encoding no longer applies.
_RESPONSE_SKIP = _REQUEST_SKIP | {"content-encoding", "server", "date"}

ECS_TARGET_PREFIX = "AmazonEC2ContainerServiceV20141113"


class MotoHost:
    """The in-process moto server and the ways ec2sim reaches it."""

    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    def start(self) -> None:
        """Start moto and freeze its ECS task state machine (test-world.md §3.2)."""
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        _patch_dynamic_host_ports()
        _patch_eni_dns_name()
        _patch_required_attributes()
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        state_manager.set_transition(
            model_name="ecs::task", transition={"progression": "manual", "times": 1000000}
        )
        LOG.info("moto listening on %s", self.url)

    def stop(self) -> None:
        self._server.stop()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _client_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300))
        return self._session

    async def send(
        self, method: str, path_qs: str, headers: dict, body: bytes
    ) -> tuple[int, dict, bytes]:
        """Send one raw HTTP request to moto; return (status, headers, body)."""
        out_headers = {k: v for k, v in headers.items() if k.lower() not in _REQUEST_SKIP}
        async with self._client_session().request(
            method, self.url + path_qs, headers=out_headers, data=body
        ) as resp:
            data = await resp.read()
            resp_headers = {
                k: v for k, v in resp.headers.items() if k.lower() not in _RESPONSE_SKIP
            }
            return resp.status, resp_headers, data

    async def forward(self, call: AwsCall) -> web.Response:
        """Forward ``call`` unchanged to moto and relay moto's answer."""
        status, resp_headers, data = await self.send(
            call.method, call.path_qs, call.headers, call.raw_body
        )
        return web.Response(status=status, body=data, headers=resp_headers)

    async def ecs_call(self, call: AwsCall, operation: str, body: dict) -> tuple[int, dict]:
        """Call an ECS operation on moto with the caller's credentials (so, its region)."""
        headers = {
            "Authorization": call.authorization,
            "X-Amz-Target": f"{ECS_TARGET_PREFIX}.{operation}",
            "Content-Type": "application/x-amz-json-1.1",
        }
        status, _, data = await self.send("POST", "/", headers, json.dumps(body).encode())
        try:
            return status, json.loads(data or b"{}")
        except ValueError:
            return status, {
                "__type": "InternalFailure",
                "message": data[:500].decode("utf-8", "replace"),
            }

    @staticmethod
    def ecs_backend(region: str):
        return ecs_backends[ACCOUNT_ID][region]

    @staticmethod
    def ec2_backend(region: str):
        return ec2_backends[ACCOUNT_ID][region]

    def boto3_client(self, service: str, region: str):
        """A synchronous boto3 client aimed at moto (for ec2sim's own setup calls)."""
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=region,
            aws_access_key_id="AKIDEC2SIM",
            aws_secret_access_key="ec2sim",
        )


def _patch_dynamic_host_ports() -> None:
    """Make moto stop reserving host port 0 (a dynamic port) when it places a task.

    moto counts ``hostPort: 0`` as a reserved port "0", so a second task of a definition with a
    dynamic port mapping never fits on the instance. ECS reserves only fixed host ports, and none
    for an awsvpc task (its ports are on its own ENI).
    """
    original = EC2ContainerServiceBackend._calculate_task_resource_requirements

    def requirements(task_definition):
        needs = original(task_definition)
        awsvpc = getattr(task_definition, "network_mode", None) == "awsvpc"
        needs["PORTS"] = [] if awsvpc else [port for port in needs["PORTS"] if port]
        if awsvpc and "PORTS_UDP" in needs:
            needs["PORTS_UDP"] = []
        return needs

    EC2ContainerServiceBackend._calculate_task_resource_requirements = staticmethod(requirements)


def _patch_required_attributes() -> None:
    """Give task definitions ECS's ``requiresAttributes`` and place tasks only on instances that
    advertise all of them (container-features.md §11.2; moto does neither).

    The names are computed at registration (``placement.required_attributes``) and shown by
    Register/DescribeTaskDefinition; placement sees them as one more requirement beside moto's
    CPU, memory and ports.
    """
    register = EC2ContainerServiceBackend.register_task_definition
    requirements = EC2ContainerServiceBackend._calculate_task_resource_requirements
    can_be_placed = EC2ContainerServiceBackend._can_be_placed

    def register_task_definition(self, *args, **kwargs):
        definition = register(self, *args, **kwargs)
        definition.requires_attributes = [{"name": n} for n in required_attributes(definition)]
        return definition

    def needs(task_definition):
        out = requirements(task_definition)
        out["ATTRIBUTES"] = [a["name"] for a in getattr(task_definition, "requires_attributes", [])]
        return out

    def placeable(container_instance, task_resource_requirements):
        required = task_resource_requirements.get("ATTRIBUTES") or []
        if missing_attributes(container_instance, required):
            return False
        return can_be_placed(container_instance, task_resource_requirements)

    EC2ContainerServiceBackend.register_task_definition = register_task_definition
    EC2ContainerServiceBackend._calculate_task_resource_requirements = staticmethod(needs)
    EC2ContainerServiceBackend._can_be_placed = staticmethod(placeable)


def _patch_eni_dns_name() -> None:
    """Give every moto ENI a ``private_dns_name``, as EC2 does.

    moto sets it only in VPCs with DNS hostnames enabled, and its own awsvpc RunTask then fails
    with an AttributeError for a subnet of a VPC created with CreateVpc (hostnames off).
    """
    original = NetworkInterface.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if not hasattr(self, "private_dns_name") and self.private_ip_address:
            self.private_dns_name = generate_dns_from_ip(self.private_ip_address)

    NetworkInterface.__init__ = init
