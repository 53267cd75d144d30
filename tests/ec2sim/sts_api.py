"""STS as a task container sees it: GetCallerIdentity answers for the keys ec2sim issued.

Owns ec2sim's STS GetCallerIdentity (awsQuery, form-encoded POST as boto3 and the AWS CLI send
it). The caller is the access key id of the request's SigV4 signature:

- a key ec2sim issued (task role / execution role credentials over ACS, instance-role keys from
  IMDS): ``arn:aws:sts::<account>:assumed-role/<role name>/<session>``, the session being the
  task id (task roles) or the instance id (instance role);
- a key moto issued (moto's AssumeRole, IAM user keys): moto answers;
- any other key: the default instance's role, as if the caller had used IMDS credentials.

Every other STS call goes to moto (as do unsigned requests: without a SigV4 scope ec2sim cannot
tell they are meant for STS).
"""

from __future__ import annotations

from collections.abc import Callable
from xml.sax.saxutils import escape

from aiohttp import web
from moto.iam.models import iam_backends
from moto.sts.models import sts_backends

import awsproto
from awsproto import AwsCall
from credentials import INSTANCE_ROLE_ARN, INSTANCE_ROLE_TYPE, Credentials, Key
from motohost import ACCOUNT_ID, MotoHost

STS_XMLNS = "https://sts.amazonaws.com/doc/2011-06-15/"


class StsApi:
    """ec2sim's STS operation handlers."""

    def __init__(
        self, moto: MotoHost, credentials: Credentials, default_instance: Callable[[], str]
    ) -> None:
        self.moto = moto
        self.credentials = credentials
        #: The default instance's id: the session name of unknown callers.
        self.default_instance = default_instance

    def handlers(self) -> dict:
        return {"GetCallerIdentity": self.get_caller_identity}

    async def get_caller_identity(self, call: AwsCall) -> web.StreamResponse:
        # The gateway knows the call is STS from its SigV4 scope, so it is signed.
        access_key_id = call.access_key_id or ""
        key = self.credentials.key(access_key_id)
        if key is None:
            if _moto_knows(access_key_id):
                return await self.moto.forward(call)
            key = Key(
                access_key_id=access_key_id,
                role_arn=INSTANCE_ROLE_ARN,
                role_type=INSTANCE_ROLE_TYPE,
                session_name=self.default_instance(),
                expiration="",
                issued_at=0.0,
            )
        identity = key.identity()
        result = "".join(
            f"<{name}>{escape(identity[name])}</{name}>" for name in ("Arn", "UserId", "Account")
        )
        return awsproto.query_response("GetCallerIdentity", result, xmlns=STS_XMLNS)


def _moto_knows(access_key_id: str) -> bool:
    """Whether moto issued the key (its AssumeRole, or an IAM user's access key)."""
    for partitions in (sts_backends.get(ACCOUNT_ID) or {}).values():
        if partitions.get_assumed_role_from_access_key(access_key_id):
            return True
    for partitions in (iam_backends.get(ACCOUNT_ID) or {}).values():
        if partitions.get_user_from_access_key_id(access_key_id):
            return True
    return False
