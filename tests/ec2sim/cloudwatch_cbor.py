"""CloudWatch in smithy RPCv2 CBOR, translated to the JSON 1.0 protocol moto speaks.

The newest aws-sdk-cloudwatch sends ``POST /service/GraniteServiceVersion20100801/operation/<Op>``
with a CBOR body; moto 5.2.5 has no route for that (test-world.md §2). This module owns the
translation both ways: the decoded request (awsproto already turned tag-1 timestamps into epoch
seconds) goes to moto as JSON 1.0 with the original Authorization header; moto's JSON reply comes
back as CBOR, with timestamps as tag-1 epoch values (found by walking botocore's output shape) and
errors as a CBOR map carrying ``__type``. It never touches moto's backend.
"""

from __future__ import annotations

import base64
import json
import logging
from datetime import UTC, datetime

import botocore.session
import cbor2
from aiohttp import web
from botocore.model import OperationNotFoundError

from awsproto import CBOR_CONTENT_TYPE, AwsCall, error_response
from motohost import MotoHost

LOG = logging.getLogger("ec2sim.cloudwatch")

TARGET_PREFIX = "GraniteServiceVersion20100801"


class CloudWatchCbor:
    """Answers RPCv2 CBOR CloudWatch calls by way of moto's JSON protocol."""

    def __init__(self, moto: MotoHost) -> None:
        self.moto = moto
        self.model = botocore.session.get_session().get_service_model("cloudwatch")

    async def handle(self, call: AwsCall) -> web.StreamResponse:
        headers = {
            "Authorization": call.authorization,
            "X-Amz-Target": f"{TARGET_PREFIX}.{call.operation}",
            "Content-Type": "application/x-amz-json-1.0",
        }
        if "X-Amz-Date" in call.headers:
            headers["X-Amz-Date"] = call.headers["X-Amz-Date"]
        status, moto_headers, data = await self.moto.send(
            "POST", "/", headers, json.dumps(call.body).encode()
        )
        reply = _json_or_error(status, data)
        if status >= 300:
            code, message = _error_code(reply, moto_headers)
            LOG.info("CloudWatch %s failed in moto: %s: %s", call.operation, code, message)
            return error_response(call, status, code, message)
        return web.Response(
            status=status,
            body=cbor2.dumps(
                self._typed_output(call.operation, reply),
                datetime_as_timestamp=True,
                timezone=UTC,
            ),
            content_type=CBOR_CONTENT_TYPE,
            headers={"smithy-protocol": "rpc-v2-cbor"},
        )

    def _typed_output(self, operation: str, reply: dict) -> dict:
        try:
            shape = self.model.operation_model(operation).output_shape
        except OperationNotFoundError:
            return reply
        return _retype(reply, shape) if shape is not None else reply


def _json_or_error(status: int, data: bytes) -> dict:
    try:
        parsed = json.loads(data or b"{}")
        if isinstance(parsed, dict):
            return parsed
    except ValueError:
        pass
    text = data[:300].decode("utf-8", "replace")
    return {"__type": "InternalFailure" if status >= 500 else "UnknownError", "message": text}


def _error_code(reply: dict, moto_headers: dict) -> tuple[str, str]:
    """Error code (without namespace) and message of a moto JSON error reply."""
    code = reply.get("__type") or "InternalFailure"
    query_error = {k.lower(): v for k, v in moto_headers.items()}.get("x-amzn-query-error")
    if query_error:
        code = query_error.split(";")[0]
    return code.split("#")[-1], reply.get("message") or reply.get("Message") or ""


def _retype(value, shape):
    """Give JSON values their CBOR types: timestamps -> tag 1, blobs -> bytes, doubles -> floats."""
    if value is None:
        return None
    kind = shape.type_name
    if kind == "structure":
        return {
            k: (_retype(v, shape.members[k]) if k in shape.members else v) for k, v in value.items()
        }
    if kind == "list":
        return [_retype(v, shape.member) for v in value]
    if kind == "map":
        return {k: _retype(v, shape.value) for k, v in value.items()}
    if kind == "timestamp":
        return _timestamp(value)
    if kind == "blob" and isinstance(value, str):
        return base64.b64decode(value)
    if kind in ("double", "float") and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # the SDK's CBOR decoder reads doubles only from CBOR floats
    return value


def _timestamp(value) -> datetime:
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, tz=UTC)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
