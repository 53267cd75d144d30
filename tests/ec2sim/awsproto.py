"""AWS wire protocols as ec2sim sees them: who is calling what, and how to answer an error.

Owns the parsing of an incoming AWS request into an :class:`AwsCall` (service, operation, region,
protocol, decoded body) and the rendering of error replies in the caller's protocol (JSON 1.0/1.1,
awsQuery XML, EC2 XML, smithy RPCv2 CBOR). It talks to nothing; it never forwards anything.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import parse_qsl

import cbor2
from aiohttp import web
from multidict import CIMultiDict

# SigV4 credential scope: Credential=<akid>/<date>/<region>/<service>/aws4_request
_SCOPE_RE = re.compile(r"Credential=[^/,\s]+/\d{8}/([^/,\s]+)/([^/,\s]+)/aws4_request")

# SigV4 access key id: Credential=<akid>/...
_AKID_RE = re.compile(r"Credential=([^/,\s]+)/")

# SigV4 signing name -> the service name ec2sim uses in its records and fault table.
_SIGNING_NAME_TO_SERVICE = {"monitoring": "cloudwatch"}

# X-Amz-Target prefix / RPCv2 service id -> service name, when the scope is missing.
_TARGET_PREFIX_TO_SERVICE = {
    "AmazonEC2ContainerServiceV20141113": "ecs",
    "GraniteServiceVersion20100801": "cloudwatch",
    "Logs_20140328": "logs",
}

CBOR_CONTENT_TYPE = "application/cbor"
RPCV2_PATH_RE = re.compile(r"^/service/([^/]+)/operation/([^/]+)$")


class AwsError(Exception):
    """An AWS error reply, raised by handlers and rendered in the caller's protocol."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass
class AwsCall:
    """One decoded AWS API request."""

    service: str
    operation: str
    region: str
    #: "json", "query", "ec2", "cbor" or "rest" (anything ec2sim does not decode).
    protocol: str
    #: Decoded body: JSON object, form fields, or CBOR map converted to JSON-able values.
    body: dict
    raw_body: bytes
    headers: CIMultiDict = field(repr=False)
    method: str = "POST"
    path_qs: str = "/"
    json_version: str = "1.1"

    @property
    def authorization(self) -> str:
        return self.headers.get("Authorization", "")

    @property
    def access_key_id(self) -> str | None:
        """The access key id the request was signed with (never the secret), or None."""
        match = _AKID_RE.search(self.authorization)
        return match.group(1) if match else None


def scope_of(authorization: str) -> tuple[str, str] | None:
    """Return (region, signing name) from a SigV4 Authorization header, or None."""
    match = _SCOPE_RE.search(authorization or "")
    return (match.group(1), match.group(2)) if match else None


def jsonable(value):
    """Convert decoded CBOR values (datetimes, bytes, tags) into JSON-able values.

    Datetimes become epoch seconds, as the AWS JSON protocols send timestamps.
    """
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, cbor2.CBORTag):
        return jsonable(value.value)
    return value


async def parse(request: web.Request, default_region: str) -> AwsCall:
    """Decode an incoming AWS request. Never fails: undecodable bodies give an empty dict."""
    # aiohttp has already undone any Content-Encoding (gzip), so the header no longer applies.
    raw = await request.read()
    headers = CIMultiDict(
        (k, v) for k, v in request.headers.items() if k.lower() != "content-encoding"
    )
    scope = scope_of(headers.get("Authorization", ""))
    call = AwsCall(
        service=_SIGNING_NAME_TO_SERVICE.get(scope[1], scope[1]) if scope else "",
        operation="",
        region=scope[0] if scope else default_region,
        protocol="rest",
        body={},
        raw_body=raw,
        headers=headers,
        method=request.method,
        path_qs=request.path_qs,
    )
    rpc = RPCV2_PATH_RE.match(request.path)
    if rpc and request.method == "POST":
        _decode_cbor(call, service_id=rpc.group(1), operation=rpc.group(2))
    elif "X-Amz-Target" in headers:
        _decode_json(call)
    else:
        _decode_query(call, request.query_string)
    call.service = call.service or "unknown"
    return call


def _decode_cbor(call: AwsCall, service_id: str, operation: str) -> None:
    call.protocol, call.operation = "cbor", operation
    call.service = call.service or _TARGET_PREFIX_TO_SERVICE.get(service_id, service_id)
    try:
        decoded = cbor2.loads(call.raw_body) if call.raw_body else {}
    except cbor2.CBORDecodeError:
        decoded = {}
    call.body = jsonable(decoded) if isinstance(decoded, dict) else {}


def _decode_json(call: AwsCall) -> None:
    prefix, _, call.operation = call.headers["X-Amz-Target"].rpartition(".")
    call.protocol = "json"
    call.service = call.service or _TARGET_PREFIX_TO_SERVICE.get(prefix, prefix)
    call.json_version = "1.0" if "1.0" in call.headers.get("Content-Type", "") else "1.1"
    try:
        loaded = json.loads(call.raw_body or b"{}")
    except ValueError:
        loaded = {}
    call.body = loaded if isinstance(loaded, dict) else {}


def _decode_query(call: AwsCall, query_string: str) -> None:
    """awsQuery / EC2 protocol: form fields in the body (or the query string) with ``Action``."""
    form = dict(parse_qsl(query_string))
    if "x-www-form-urlencoded" in call.headers.get("Content-Type", "").lower():
        form.update(parse_qsl(call.raw_body.decode("utf-8", "replace")))
    if "Action" in form:
        call.operation = form["Action"]
        call.protocol = "ec2" if call.service == "ec2" else "query"
        call.body = form


def json_response(call: AwsCall, payload: dict, status: int = 200) -> web.Response:
    """A success reply in the AWS JSON protocol of ``call``."""
    return web.Response(
        status=status,
        body=json.dumps(payload).encode(),
        content_type=f"application/x-amz-json-{call.json_version}",
        headers={"x-amzn-RequestId": str(uuid.uuid4())},
    )


def query_response(operation: str, result_xml: str = "", xmlns: str = "") -> web.Response:
    """A success reply in the awsQuery protocol (``<OpResponse><OpResult>…``)."""
    request_id = uuid.uuid4()
    result = f"<{operation}Result>{result_xml}</{operation}Result>"
    ns = f' xmlns="{xmlns}"' if xmlns else ""
    body = (
        f"<{operation}Response{ns}>{result}"
        f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>"
        f"</{operation}Response>"
    )
    return web.Response(text=body, content_type="text/xml")


def error_response(call: AwsCall, status: int, code: str, message: str) -> web.Response:
    """An error reply that the caller's SDK parses into ``code``."""
    request_id = str(uuid.uuid4())
    fault = "Receiver" if status >= 500 else "Sender"
    if call.protocol == "cbor":
        # awsQueryCompatible services (CloudWatch) also name the code in x-amzn-query-error.
        return web.Response(
            status=status,
            body=cbor2.dumps({"__type": code, "message": message}),
            content_type=CBOR_CONTENT_TYPE,
            headers={
                "smithy-protocol": "rpc-v2-cbor",
                "x-amzn-query-error": f"{code};{fault}",
                "x-amzn-RequestId": request_id,
            },
        )
    if call.protocol == "json":
        return web.Response(
            status=status,
            body=json.dumps({"__type": code, "message": message}).encode(),
            content_type=f"application/x-amz-json-{call.json_version}",
            headers={"x-amzn-ErrorType": code, "x-amzn-RequestId": request_id},
        )
    if call.protocol == "ec2":
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}</Code>'
            f"<Message>{_xml_escape(message)}</Message></Error></Errors>"
            f"<RequestID>{request_id}</RequestID></Response>"
        )
        return web.Response(status=status, text=body, content_type="text/xml")
    body = (
        f"<ErrorResponse><Error><Type>{fault}</Type><Code>{code}</Code>"
        f"<Message>{_xml_escape(message)}</Message></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>"
    )
    return web.Response(status=status, text=body, content_type="text/xml")


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
