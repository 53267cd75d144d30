"""ECR as the agent needs it for pulls: GetAuthorizationToken for a test registry.

Owns the "ECR registry" a test configures through the control API (which ``host[:port]`` counts
as ECR, the user and password its tokens encode, the registry id) and ec2sim's
GetAuthorizationToken handler: with a registry configured, the token is
``base64("<username>:<password>")`` and ``proxyEndpoint`` is ``https://<host[:port]>``, so a
local ``docker-registry`` with htpasswd accepts it; without one, moto answers.

``auth_for`` tells payload rendering which images are on ECR (the configured host, or a real
``<account>.dkr.ecr.<region>.amazonaws.com`` host) and how ECS describes them
(``registryAuthentication.ecrAuthData``). Talks to nothing; never contacts the registry.
"""

from __future__ import annotations

import base64
import re
import time

from aiohttp import web

from awsproto import AwsCall, json_response
from motohost import ACCOUNT_ID, MotoHost

# ECR authorization tokens are valid for 12 hours.
TOKEN_SECONDS = 12 * 3600
_ECR_HOST_RE = re.compile(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")


def registry_host(image: str) -> str | None:
    """The registry host of an image reference (``host[:port]``), or None for Docker Hub."""
    first, sep, _ = image.partition("/")
    if not sep:
        return None
    if "." in first or ":" in first or first == "localhost":
        return first
    return None


class EcrRegistry:
    """Which registry counts as ECR, and what its tokens encode (see module docstring)."""

    def __init__(self) -> None:
        self.registry: str | None = None
        self.username = "AWS"
        self.password = ""
        self.registry_id = ACCOUNT_ID
        self.region: str | None = None

    def describe(self) -> dict:
        return {
            "registry": self.registry,
            "username": self.username,
            "password": self.password,
            "registry_id": self.registry_id,
            "region": self.region,
        }

    def update(self, body: dict) -> None:
        """Apply a control-API body; raises ValueError (nothing changed) when it is invalid."""
        registry = body.get("registry", self.registry)
        if registry is not None and (not isinstance(registry, str) or not registry):
            raise ValueError("registry must be a non-empty host[:port] string or null")
        if registry is not None and ("/" in registry or "://" in registry):
            raise ValueError("registry is host[:port], without scheme or path")
        strings = {}
        for key in ("username", "password", "registry_id"):
            value = body.get(key, getattr(self, key))
            if not isinstance(value, str):
                raise ValueError(f"{key} must be a string")
            strings[key] = value
        if ":" in strings["username"]:
            raise ValueError("username must not contain ':'")
        region = body.get("region", self.region)
        if region is not None and not isinstance(region, str):
            raise ValueError("region must be a string or null")
        self.registry = registry
        self.username = strings["username"]
        self.password = strings["password"]
        self.registry_id = strings["registry_id"]
        self.region = region

    def auth_for(
        self, image: str, use_execution_role: bool, region: str, endpoint: str
    ) -> dict | None:
        """``registryAuthentication`` for a container whose image is on ECR, else None."""
        host = registry_host(image or "")
        if host is None:
            return None
        real = _ECR_HOST_RE.match(host)
        if self.registry is not None and host == self.registry:
            registry_id, region = self.registry_id, self.region or region
        elif real:
            registry_id, region = real.group(1), real.group(2)
        else:
            return None
        return {
            "type": "ecr",
            "ecrAuthData": {
                "region": region,
                "registryId": registry_id,
                "useExecutionRole": use_execution_role,
                "endpointOverride": endpoint,
            },
        }


class EcrApi:
    """ec2sim's ECR operation handlers."""

    def __init__(self, moto: MotoHost, registry: EcrRegistry) -> None:
        self.moto = moto
        self.registry = registry

    def handlers(self) -> dict:
        return {"GetAuthorizationToken": self.get_authorization_token}

    async def get_authorization_token(self, call: AwsCall) -> web.StreamResponse:
        if self.registry.registry is None:
            return await self.moto.forward(call)
        token = f"{self.registry.username}:{self.registry.password}"
        return json_response(
            call,
            {
                "authorizationData": [
                    {
                        "authorizationToken": base64.b64encode(token.encode()).decode(),
                        "expiresAt": time.time() + TOKEN_SECONDS,
                        "proxyEndpoint": f"https://{self.registry.registry}",
                    }
                ]
            },
        )
