"""ec2sim: everything outside an EC2 instance, for testing ecs-hostd offline, on one local port.

Usage::

    <venv>/bin/python tests/ec2sim/ec2sim.py --port 0 --ready-file PATH [--region us-east-1]

One process, bound to 127.0.0.1 only, serving on one port:

- ``/latest/...`` and ``/imds/<instance-id>/latest/...``: IMDSv2 (imds.py)
- ``GET /ws``: the ACS websocket (acs.py) and the TCS websocket (tcs.py; admitted by acs.py)
- ``/ec2sim/...``: the control API tests use (control.py, README.md)
- anything else: the AWS APIs, moto in-process plus ec2sim's additions (gateway.py, ecs_api.py,
  enis.py (awsvpc task ENIs),
  cloudwatch_cbor.py, autoscaling.py, ecr_api.py, sts_api.py, ssm_api.py, secretsmanager_api.py,
  s3_api.py; role credentials in credentials.py)

When ready it writes ``{"port": N, "pid": P}`` to the ready file (atomically) and serves until
SIGTERM or SIGINT, then exits 0. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys

from aiohttp import web

from acs import Acs
from autoscaling import LifecycleActions
from cloudwatch_cbor import CloudWatchCbor
from control import Control, World
from credentials import Credentials
from ecr_api import EcrApi, EcrRegistry
from ecs_api import EcsApi
from enis import TaskEnis
from faults import Denials, FaultTable
from gateway import Gateway
from imds import Imds
from journal import Journal
from motohost import MotoHost
from s3_api import S3Api
from secretsmanager_api import SecretsManagerApi
from ssm_api import SsmApi
from sts_api import StsApi
from tcs import Tcs

LOG = logging.getLogger("ec2sim")
BIND_ADDRESS = "127.0.0.1"
# PutMetricData bodies can be megabytes (test-world.md §3.3); aiohttp's default limit is 1 MiB.
MAX_BODY_BYTES = 64 * 1024 * 1024
# How long shutdown waits for in-flight requests (e.g. a hanging IMDS fault) before cancelling.
SHUTDOWN_SECONDS = 2.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free port)")
    parser.add_argument(
        "--ready-file", required=True, help='where to write {"port", "pid"} when ready'
    )
    parser.add_argument("--region", default="us-east-1", help="region of the default instance")
    return parser.parse_args(argv)


def write_ready_file(path: str, port: int) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump({"port": port, "pid": os.getpid()}, handle)
    os.replace(tmp, path)


class Ec2Sim:
    """Wires the parts together and owns the HTTP server's lifetime."""

    def __init__(self, region: str) -> None:
        self.port = 0
        self.moto = MotoHost()
        inactive: set[str] = set()
        credentials = Credentials()
        enis = TaskEnis(self.moto)
        self.tcs = Tcs(self.moto)
        self.acs = Acs(self.moto, inactive, credentials, self.tcs)
        self.world = World(
            imds=Imds(self.moto, region, credentials),
            faults=FaultTable(),
            requests=Journal(),
            state_changes=Journal(),
            lifecycle_actions=Journal(),
            acs=self.acs,
            tcs=self.tcs,
            base_url=self.base_url,
            ecr=EcrRegistry(),
            credentials=credentials,
            denials=Denials(credentials.caller_arn),
            enis=enis,
        )
        self.gateway = Gateway(self.moto, self.world.faults, self.world.requests, region)
        ecs = EcsApi(
            self.moto,
            self.acs,
            self.world.state_changes,
            self.base_url,
            inactive,
            self.world.ecr,
            credentials,
            enis,
        )
        self.gateway.handle_operations("ecs", ecs.handlers())
        sts = StsApi(self.moto, credentials, lambda: self.world.imds.default_id)
        self.gateway.handle_operations("sts", sts.handlers())
        self.gateway.handle_operations("ecr", EcrApi(self.moto, self.world.ecr).handlers())
        self.gateway.handle_operations(
            "autoscaling", LifecycleActions(self.world.lifecycle_actions).handlers()
        )
        denials = self.world.denials
        self.gateway.handle_operations("ssm", SsmApi(self.moto, denials).handlers())
        self.gateway.handle_operations(
            "secretsmanager", SecretsManagerApi(self.moto, denials).handlers()
        )
        self.gateway.handle_protocol("cbor", CloudWatchCbor(self.moto).handle)
        self.gateway.handle_protocol("rest-xml", S3Api(self.moto, denials).handle)

    def base_url(self) -> str:
        return f"http://{BIND_ADDRESS}:{self.port}"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.add_routes(Control(self.world).routes())
        app.add_routes(self.world.imds.routes())
        app.add_routes([web.get("/ws", self.acs.serve)])
        app.add_routes([web.route("*", "/{tail:.*}", self.gateway.serve)])
        app.on_shutdown.append(self.acs.close_all)
        return app

    async def run(self, requested_port: int, ready_file: str) -> None:
        self.moto.start()
        runner = web.AppRunner(
            self.app(),
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=SHUTDOWN_SECONDS,
        )
        await runner.setup()
        site = web.TCPSite(runner, BIND_ADDRESS, requested_port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        default = await self.world.imds.create_default()
        write_ready_file(ready_file, self.port)
        LOG.info("ready on %s (default instance %s)", self.base_url(), default.instance_id)
        try:
            await _until_signalled()
        finally:
            LOG.info("shutting down")
            await runner.cleanup()
            await self.moto.close()
            self.moto.stop()


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(Ec2Sim(args.region).run(args.port, args.ready_file))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
