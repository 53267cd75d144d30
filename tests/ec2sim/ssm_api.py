"""SSM Parameter Store as the agent reads it for a task's ``secrets`` (``valueFrom`` a parameter).

Owns ec2sim's GetParameters and GetParameter handlers; PutParameter and the rest go to moto, which
stores parameters per region (the region of the call's signature):

- GetParameters answers each requested string as asked: ``Parameters[].Name`` is exactly the
  requested name or full ARN ``arn:aws:ssm:<region>:<account>:parameter/<name>`` (moto answers
  every one with the stored name), a ``name:<version|label>`` request gives ``Name`` without the
  selector and ``Selector: ":<version|label>"``, and ``InvalidParameters`` lists the requested
  strings that name no parameter of the call's region. A name asked twice is answered once.
- A denied parameter (``/ec2sim/deny`` by name or ARN) fails the whole call with 400
  ``AccessDeniedException``, as IAM does.
"""

from __future__ import annotations

import json

from aiohttp import web
from moto.ssm.exceptions import ParameterVersionNotFound
from moto.ssm.models import ssm_backends

import awsproto
from awsproto import AwsCall, AwsError
from faults import Denials
from motohost import ACCOUNT_ID, MotoHost

_ARN_INFIX = ":parameter/"


def parameter_arn(region: str, name: str) -> str:
    return f"arn:aws:ssm:{region}:{ACCOUNT_ID}:parameter/{name.lstrip('/')}"


def split_selector(requested: str) -> tuple[str, str | None]:
    """(name or ARN, ``:<version|label>`` selector or None) of a requested parameter."""
    head, infix, tail = requested.partition(_ARN_INFIX)
    if not infix:
        head, tail = "", requested
    name, colon, selector = tail.partition(":")
    return head + infix + name, (colon + selector) if colon else None


def parameter_name(name_or_arn: str) -> str:
    """The parameter name of a name or ARN (an ARN's ``a/b`` is the hierarchy ``/a/b``)."""
    _, infix, tail = name_or_arn.partition(_ARN_INFIX)
    if not infix:
        return name_or_arn
    return "/" + tail if "/" in tail else tail


class SsmApi:
    """ec2sim's SSM operation handlers."""

    def __init__(self, moto: MotoHost, denials: Denials) -> None:
        self.moto = moto
        self.denials = denials

    def handlers(self) -> dict:
        return {"GetParameters": self.get_parameters, "GetParameter": self.get_parameter}

    def _check_denied(self, call: AwsCall, requested: list) -> None:
        for item in requested:
            if not isinstance(item, str):
                continue
            name = parameter_name(split_selector(item)[0])
            arn = parameter_arn(call.region, name)
            message = self.denials.reason(
                call.access_key_id, f"ssm:{call.operation}", arn, name, "/" + name.lstrip("/")
            )
            if message:
                raise AwsError(400, "AccessDeniedException", message)

    async def get_parameter(self, call: AwsCall) -> web.StreamResponse:
        self._check_denied(call, [call.body.get("Name")])
        return await self.moto.forward(call)

    async def get_parameters(self, call: AwsCall) -> web.StreamResponse:
        names = call.body.get("Names")
        names = names if isinstance(names, list) else []
        self._check_denied(call, names)
        status, headers, data = await self.moto.send(
            call.method, call.path_qs, call.headers, call.raw_body
        )
        if status != 200:
            return web.Response(status=status, body=data, headers=headers)
        try:
            backend = ssm_backends[ACCOUNT_ID][call.region]
        except KeyError:  # a region moto does not know: moto's answer as it is
            return web.Response(status=status, body=data, headers=headers)
        reply = json.loads(data)
        reply["Parameters"], reply["InvalidParameters"] = self._as_requested(
            backend, names, reply.get("Parameters", [])
        )
        return awsproto.json_response(call, reply)

    @staticmethod
    def _as_requested(backend, names: list, found: list[dict]) -> tuple[list, list]:
        """moto's parameters, one per distinct requested string, named as requested."""
        by_version = {(p["Name"], p["Version"]): p for p in found}
        parameters, invalid = [], []
        for requested in dict.fromkeys(n for n in names if isinstance(n, str)):
            try:
                parameter = backend.get_parameter(requested)
            except ParameterVersionNotFound:
                parameter = None
            entry = parameter and by_version.get((parameter.name, parameter.version))
            if entry is None:
                invalid.append(requested)
                continue
            name, selector = split_selector(requested)
            entry = {**entry, "Name": name}
            if selector:
                entry["Selector"] = selector
            parameters.append(entry)
        return parameters, invalid
