"""Secrets Manager as the agent reads it for a task's ``secrets`` (``valueFrom`` a secret ARN).

Owns ec2sim's GetSecretValue handler; CreateSecret, PutSecretValue and the rest go to moto, which
stores secrets per region (the region of the call's signature) and finds them by name, full ARN
or partial ARN (without the random ``-XXXXXX`` suffix). What ec2sim changes:

- a denied secret (``/ec2sim/deny`` by ARN, name or pattern) answers 400 ``AccessDeniedException``;
- errors answer 400 as Secrets Manager does (moto answers ``ResourceNotFoundException`` with 404);
- an unknown ``VersionStage`` of a known secret says so ("... can't find the specified secret
  value for staging label: <stage>") instead of moto's "can't find the specified secret."
"""

from __future__ import annotations

import json

from aiohttp import web
from moto.secretsmanager.models import secretsmanager_backends

import awsproto
from awsproto import AwsCall, AwsError
from faults import Denials
from motohost import ACCOUNT_ID, MotoHost

_NOT_FOUND = "Secrets Manager can't find the specified secret."


class SecretsManagerApi:
    """ec2sim's Secrets Manager operation handlers."""

    def __init__(self, moto: MotoHost, denials: Denials) -> None:
        self.moto = moto
        self.denials = denials

    def handlers(self) -> dict:
        return {"GetSecretValue": self.get_secret_value}

    async def get_secret_value(self, call: AwsCall) -> web.StreamResponse:
        secret_id = call.body.get("SecretId")
        secret_id = secret_id if isinstance(secret_id, str) else ""
        secret = _secrets(call.region).get(secret_id)
        if secret is not None:
            resource, aliases = secret.arn, (secret_id, secret.name, secret.arn.rsplit("-", 1)[0])
        elif secret_id.startswith("arn:"):
            resource, aliases = secret_id, ()
        else:
            resource = f"arn:aws:secretsmanager:{call.region}:{ACCOUNT_ID}:secret:{secret_id}"
            aliases = (secret_id,)
        message = self.denials.reason(
            call.access_key_id, "secretsmanager:GetSecretValue", resource, *aliases
        )
        if message:
            raise AwsError(400, "AccessDeniedException", message)
        status, headers, data = await self.moto.send(
            call.method, call.path_qs, call.headers, call.raw_body
        )
        if status < 400:
            return web.Response(status=status, body=data, headers=headers)
        try:
            error = json.loads(data)
        except ValueError:
            return web.Response(status=status, body=data, headers=headers)
        code, message = error.get("__type", "InternalFailure"), error.get("message", "")
        stage = call.body.get("VersionStage")
        if secret is not None and message == _NOT_FOUND and stage and "VersionId" not in call.body:
            message = f"{_NOT_FOUND[:-1]} value for staging label: {stage}"
        return awsproto.error_response(call, 400 if status < 500 else status, code, message)


def _secrets(region: str) -> dict:
    """moto's secrets of a region (none for a region moto does not know)."""
    try:
        return secretsmanager_backends[ACCOUNT_ID][region].secrets
    except KeyError:
        return {}
