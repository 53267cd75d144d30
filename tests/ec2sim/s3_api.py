"""S3 as the agent reads it for a task's ``environmentFiles`` (``arn:aws:s3:::bucket/key``).

Owns ec2sim's handling of every S3 call (REST-XML, path-style ``/<bucket>/<key>``; awsproto names
the operation). moto stores the buckets and objects; ec2sim adds what real S3 checks first:

- a call signed for another region than its bucket's (any bucket operation but CreateBucket and
  GetBucketLocation) answers 400 ``AuthorizationHeaderMalformed`` with ``<Region>`` and the
  ``x-amz-bucket-region`` header (a HEAD: status and header only), so a caller must find the
  bucket's region first: HeadBucket signed for the right region answers 200 with that header,
  GetBucketLocation answers from any region;
- reads of a denied resource (``/ec2sim/deny``) answer 403 ``AccessDenied``: GetObject, HeadObject,
  GetObjectAttributes of a denied object ARN; HeadBucket, GetBucketLocation, ListObjects(V2) of a
  denied bucket ARN (HeadBucket's 403 still names the region in ``x-amz-bucket-region``).

Unsigned (anonymous or presigned) calls skip the region check.
"""

from __future__ import annotations

from aiohttp import web
from moto.s3.models import s3_backends

from awsproto import AwsCall, AwsError
from faults import Denials
from motohost import ACCOUNT_ID, MotoHost

_REGION_FREE = {"CreateBucket", "GetBucketLocation", "ListBuckets", "Unknown"}
_OBJECT_READS = {"GetObject", "HeadObject", "GetObjectAttributes"}
_BUCKET_READS = {"HeadBucket", "GetBucketLocation", "ListObjects", "ListObjectsV2"}
# The IAM action of an operation, where it is not ``s3:<operation>``.
_ACTIONS = {
    "HeadObject": "s3:GetObject",
    "HeadBucket": "s3:ListBucket",
    "ListObjects": "s3:ListBucket",
    "ListObjectsV2": "s3:ListBucket",
}


class S3Api:
    """ec2sim's S3 handler (all operations)."""

    def __init__(self, moto: MotoHost, denials: Denials) -> None:
        self.moto = moto
        self.denials = denials

    async def handle(self, call: AwsCall) -> web.StreamResponse:
        bucket_name, key = call.body.get("Bucket", ""), call.body.get("Key", "")
        bucket = s3_backends[ACCOUNT_ID]["aws"].buckets.get(bucket_name) if bucket_name else None
        region = bucket.region_name if bucket is not None else None
        located = {"x-amz-bucket-region": region} if region else {}
        if region and call.scoped and call.region != region and call.operation not in _REGION_FREE:
            raise AwsError(
                400,
                "AuthorizationHeaderMalformed",
                f"The authorization header is malformed; the region '{call.region}' is wrong; "
                f"expecting '{region}'",
                fields={"Region": region},
                headers=located,
            )
        resource = None
        if call.operation in _OBJECT_READS:
            resource = f"arn:aws:s3:::{bucket_name}/{key}"
        elif call.operation in _BUCKET_READS:
            resource = f"arn:aws:s3:::{bucket_name}"
        action = _ACTIONS.get(call.operation, f"s3:{call.operation}")
        message = resource and self.denials.reason(call.access_key_id, action, resource)
        if message:
            headers = located if call.operation == "HeadBucket" else {}
            raise AwsError(403, "AccessDenied", message, headers=headers)
        return await self.moto.forward(call)
