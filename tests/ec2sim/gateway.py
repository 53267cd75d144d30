"""The AWS API endpoint: every request that is not IMDS, ACS or control lands here.

Owns the request pipeline: decode (awsproto) -> record -> inject a fault if one is armed -> run
ec2sim's own handler for the operation if there is one -> otherwise forward to moto unchanged.
Service-specific behaviour lives in the handler modules (ecs_api, cloudwatch_cbor, autoscaling,
ssm_api, secretsmanager_api, s3_api, ...); this module never knows what an operation means.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

import awsproto
from awsproto import AwsCall, AwsError
from faults import FaultTable
from journal import Journal
from motohost import MotoHost

LOG = logging.getLogger("ec2sim.gateway")

Handler = Callable[[AwsCall], Awaitable[web.StreamResponse]]


class Gateway:
    """Routes decoded AWS calls to ec2sim handlers or to moto."""

    def __init__(self, moto: MotoHost, faults: FaultTable, requests: Journal, region: str) -> None:
        self.moto = moto
        self.faults = faults
        self.requests = requests
        self.region = region
        self._operation_handlers: dict[tuple[str, str], Handler] = {}
        self._protocol_handlers: dict[str, Handler] = {}

    def handle_operations(self, service: str, handlers: dict[str, Handler]) -> None:
        """Let ec2sim answer these operations of ``service`` itself."""
        for operation, handler in handlers.items():
            self._operation_handlers[(service, operation)] = handler

    def handle_protocol(self, protocol: str, handler: Handler) -> None:
        """Let ec2sim answer every call in ``protocol`` (e.g. RPCv2 CBOR) itself."""
        self._protocol_handlers[protocol] = handler

    async def serve(self, request: web.Request) -> web.StreamResponse:
        call = await awsproto.parse(request, self.region)
        fault = self.faults.take(call.service, call.operation)
        self.requests.record(
            service=call.service,
            operation=call.operation,
            region=call.region,
            protocol=call.protocol,
            access_key_id=call.access_key_id,
            body=call.body,
            fault=fault,
        )
        if fault is not None:
            return self._inject(request, call, fault)
        handler = self._operation_handlers.get((call.service, call.operation))
        handler = handler or self._protocol_handlers.get(call.protocol)
        try:
            if handler is not None:
                return await handler(call)
            return await self.moto.forward(call)
        except AwsError as err:
            return awsproto.error_response(
                call, err.status, err.code, err.message, err.fields, err.headers
            )

    @staticmethod
    def _inject(request: web.Request, call: AwsCall, mode: str) -> web.StreamResponse:
        LOG.info("fault %s on %s.%s", mode, call.service, call.operation)
        if mode == "reset":
            request.transport.abort()
            return web.Response(status=503)
        if mode == "throttle":
            return awsproto.error_response(call, 400, "ThrottlingException", "Rate exceeded")
        if mode == "deny":
            return awsproto.error_response(
                call,
                400,
                "AccessDeniedException",
                f"User is not authorized to perform: {call.service}:{call.operation} "
                "(ec2sim fault injection)",
            )
        return awsproto.error_response(
            call, 503, "ServiceUnavailable", "Service is unavailable (ec2sim fault injection)"
        )
