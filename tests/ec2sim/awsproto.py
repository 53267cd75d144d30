"""AWS wire protocols as ec2sim sees them: who is calling what, and how to answer an error.

Owns the parsing of an incoming AWS request into an :class:`AwsCall` (service, operation, region,
protocol, decoded body) and the rendering of error replies in the caller's protocol (JSON 1.0/1.1,
awsQuery XML, EC2 XML, smithy RPCv2 CBOR, S3's REST-XML). S3 calls are named as the S3 API names
them (GetObject, PutObject, HeadBucket, ...) from their method, path (path-style, or
virtual-hosted on ``<bucket>.localhost``), query and headers. It talks to nothing; it never
forwards anything.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import parse_qsl, unquote

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

# S3 subresources (query keys) -> operation for GET, PUT, DELETE; of a bucket, then of an object.
_S3_BUCKET_SUBRESOURCES = {
    "acl": ("GetBucketAcl", "PutBucketAcl", None),
    "cors": ("GetBucketCors", "PutBucketCors", "DeleteBucketCors"),
    "encryption": ("GetBucketEncryption", "PutBucketEncryption", "DeleteBucketEncryption"),
    "lifecycle": (
        "GetBucketLifecycleConfiguration",
        "PutBucketLifecycleConfiguration",
        "DeleteBucketLifecycle",
    ),
    "location": ("GetBucketLocation", None, None),
    "logging": ("GetBucketLogging", "PutBucketLogging", None),
    "notification": (
        "GetBucketNotificationConfiguration",
        "PutBucketNotificationConfiguration",
        None,
    ),
    "object-lock": ("GetObjectLockConfiguration", "PutObjectLockConfiguration", None),
    "ownershipControls": (
        "GetBucketOwnershipControls",
        "PutBucketOwnershipControls",
        "DeleteBucketOwnershipControls",
    ),
    "policy": ("GetBucketPolicy", "PutBucketPolicy", "DeleteBucketPolicy"),
    "publicAccessBlock": (
        "GetPublicAccessBlock",
        "PutPublicAccessBlock",
        "DeletePublicAccessBlock",
    ),
    "replication": ("GetBucketReplication", "PutBucketReplication", "DeleteBucketReplication"),
    "tagging": ("GetBucketTagging", "PutBucketTagging", "DeleteBucketTagging"),
    "uploads": ("ListMultipartUploads", None, None),
    "versioning": ("GetBucketVersioning", "PutBucketVersioning", None),
    "versions": ("ListObjectVersions", None, None),
    "website": ("GetBucketWebsite", "PutBucketWebsite", "DeleteBucketWebsite"),
}
_S3_OBJECT_SUBRESOURCES = {
    "acl": ("GetObjectAcl", "PutObjectAcl", None),
    "attributes": ("GetObjectAttributes", None, None),
    "legal-hold": ("GetObjectLegalHold", "PutObjectLegalHold", None),
    "retention": ("GetObjectRetention", "PutObjectRetention", None),
    "tagging": ("GetObjectTagging", "PutObjectTagging", "DeleteObjectTagging"),
    "uploadId": ("ListParts", "UploadPart", "AbortMultipartUpload"),
}
_S3_METHODS = ("GET", "PUT", "DELETE")
_S3_PLAIN = {  # (method, names an object) -> operation, without a subresource
    ("GET", False): "ListObjects",
    ("PUT", False): "CreateBucket",
    ("HEAD", False): "HeadBucket",
    ("DELETE", False): "DeleteBucket",
    ("POST", False): "PostObject",
    ("GET", True): "GetObject",
    ("PUT", True): "PutObject",
    ("HEAD", True): "HeadObject",
    ("DELETE", True): "DeleteObject",
}

#: An S3 request to ``<bucket>.localhost`` is virtual-hosted style.
VIRTUAL_HOST_SUFFIX = ".localhost"

CBOR_CONTENT_TYPE = "application/cbor"
RPCV2_PATH_RE = re.compile(r"^/service/([^/]+)/operation/([^/]+)$")


class AwsError(Exception):
    """An AWS error reply, raised by handlers and rendered in the caller's protocol."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: dict | None = None,
        headers: dict | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        #: More elements of an S3 ``<Error>`` (e.g. ``Region``); other protocols ignore them.
        self.fields = fields or {}
        #: More reply headers (e.g. ``x-amz-bucket-region``).
        self.headers = headers or {}


@dataclass
class AwsCall:
    """One decoded AWS API request."""

    service: str
    operation: str
    region: str
    #: "json", "query", "ec2", "cbor", "rest-xml" (S3) or "rest" (anything ec2sim does not
    #: decode).
    protocol: str
    #: Decoded body: JSON object, form fields, or CBOR map converted to JSON-able values; for S3
    #: ``{"Bucket", "Key"}`` of the path (never the object's content).
    body: dict
    raw_body: bytes
    headers: CIMultiDict = field(repr=False)
    method: str = "POST"
    path_qs: str = "/"
    json_version: str = "1.1"
    #: The SigV4 ``Credential=…`` the caller signed with: the Authorization header, or a
    #: presigned URL's ``X-Amz-Credential`` (``AWSAccessKeyId`` for SigV2). Empty if unsigned.
    credential: str = ""
    #: Whether ``region`` comes from a SigV4 credential scope (else it is ec2sim's default).
    scoped: bool = False

    @property
    def authorization(self) -> str:
        return self.headers.get("Authorization", "")

    @property
    def access_key_id(self) -> str | None:
        """The access key id the request was signed with (never the secret), or None."""
        match = _AKID_RE.search(self.credential)
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
    credential = headers.get("Authorization", "") or _presigned_credential(request)
    scope = scope_of(credential)
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
        credential=credential,
        scoped=scope is not None,
    )
    rpc = RPCV2_PATH_RE.match(request.path)
    if rpc and request.method == "POST":
        _decode_cbor(call, service_id=rpc.group(1), operation=rpc.group(2))
    elif "X-Amz-Target" in headers:
        _decode_json(call)
    else:
        _decode_query(call, request.query_string)
    # Unsigned REST calls are S3's (anonymous or SigV2-presigned), as moto also assumes.
    if call.protocol == "rest" and call.service in ("s3", ""):
        _decode_s3(call, request)
    call.service = call.service or "unknown"
    return call


def _presigned_credential(request: web.Request) -> str:
    """``Credential=<akid>/…`` of a presigned URL (SigV4, or SigV2's AWSAccessKeyId), or ""."""
    if "X-Amz-Credential" in request.query:
        return f"Credential={request.query['X-Amz-Credential']}"
    if "AWSAccessKeyId" in request.query:
        return f"Credential={request.query['AWSAccessKeyId']}/"
    return ""


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


def _decode_s3(call: AwsCall, request: web.Request) -> None:
    """S3 REST-XML: name the operation as the S3 API does.

    Path-style (``/<bucket>/<key>``, what SDKs send to an IP endpoint), or virtual-hosted on a
    ``<bucket>.localhost`` host, which becomes path-style (moto gets ``call.path_qs``).
    """
    call.protocol, call.service = "rest-xml", "s3"
    path = unquote(request.rel_url.raw_path)
    hostname = (request.host or "").split(":")[0].lower()
    if hostname.endswith(VIRTUAL_HOST_SUFFIX):
        bucket = hostname[: -len(VIRTUAL_HOST_SUFFIX)]
        path, call.path_qs = f"/{bucket}{path}", f"/{bucket}{call.path_qs}"
    bucket, _, key = path.lstrip("/").partition("/")
    call.body = {"Bucket": bucket, "Key": key} if key else {"Bucket": bucket} if bucket else {}
    call.operation = s3_operation(request.method, bucket, key, request.query, call.headers)


def s3_operation(method: str, bucket: str, key: str, query, headers) -> str:
    """The S3 API's name for a path-style request (``Unknown`` if ec2sim cannot tell)."""
    if not bucket:
        return "ListBuckets" if method == "GET" else "Unknown"
    copy = "x-amz-copy-source" in headers
    if method == "POST":
        if not key:
            return "DeleteObjects" if "delete" in query else "PostObject"
        if "uploads" in query:
            return "CreateMultipartUpload"
        if "uploadId" in query:
            return "CompleteMultipartUpload"
        return "RestoreObject" if "restore" in query else "PostObject"
    subresources = _S3_OBJECT_SUBRESOURCES if key else _S3_BUCKET_SUBRESOURCES
    if method in _S3_METHODS:
        index = _S3_METHODS.index(method)
        for name, operations in subresources.items():
            if name in query and operations[index]:
                operation = operations[index]
                return "UploadPartCopy" if operation == "UploadPart" and copy else operation
    if method == "GET" and not key and query.get("list-type") == "2":
        return "ListObjectsV2"
    if method == "PUT" and key and copy:
        return "CopyObject"
    return _S3_PLAIN.get((method, bool(key)), "Unknown")


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


def error_response(
    call: AwsCall,
    status: int,
    code: str,
    message: str,
    fields: dict | None = None,
    headers: dict | None = None,
) -> web.Response:
    """An error reply that the caller's SDK parses into ``code``.

    ``fields`` are more elements of an S3 ``<Error>``; ``headers`` are added to any reply.
    """
    reply = _error_response(call, status, code, message, fields or {})
    reply.headers.update(headers or {})
    return reply


def _error_response(
    call: AwsCall, status: int, code: str, message: str, fields: dict
) -> web.Response:
    request_id = str(uuid.uuid4())
    fault = "Receiver" if status >= 500 else "Sender"
    if call.protocol == "rest-xml":
        # S3: an unwrapped <Error>; a HEAD reply carries no body, only the status.
        extra = "".join(f"<{k}>{_xml_escape(str(v))}</{k}>" for k, v in fields.items())
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{_xml_escape(message)}</Message>{extra}"
            f"<RequestId>{request_id}</RequestId><HostId>ec2sim</HostId></Error>"
        )
        return web.Response(
            status=status,
            text=body if call.method != "HEAD" else None,
            content_type="application/xml",
            headers={"x-amz-request-id": request_id},
        )
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
