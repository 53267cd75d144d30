"""The fake EC2 instance metadata service (IMDSv2 only), one identity per simulated instance.

Owns every simulated instance's metadata (identity document, meta-data tree, spot and Auto Scaling
notices, instance-role credentials), its IMDSv2 tokens, its fault switches and its counters. Serves
``/latest/...`` for the default instance and ``/imds/<instance-id>/latest/...`` for any instance.
Instances are created in moto's EC2 first (moto's RegisterContainerInstance rejects unknown ids).
It never forwards anything to moto after creation.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from aiohttp import web

from credentials import INSTANCE_ROLE_NAME, Credentials
from motohost import ACCOUNT_ID, MotoHost

LOG = logging.getLogger("ec2sim.imds")

DEFAULT_AMI = "ami-760aaa0f"
DEFAULT_INSTANCE_TYPE = "c5.xlarge"
ROLE_NAME = INSTANCE_ROLE_NAME
INSTANCE_PROFILE_ARN = f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/{ROLE_NAME}"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
MAX_TTL = 21600
HANG_SECONDS = 30
LIFECYCLES = ("on-demand", "spot")
TOKEN_FAULTS = (None, "timeout", "403", "405")
GET_FAULTS = (None, "timeout", "500", "401-once")


def iso_z(moment: datetime) -> str:
    """ISO-8601 UTC with a trailing Z and no fractional seconds, as IMDS writes times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Instance:
    """One simulated EC2 instance as its metadata service describes it."""

    instance_id: str
    region: str
    availability_zone: str
    instance_type: str
    ami_id: str
    private_ip: str
    mac: str
    vpc_id: str
    subnet_id: str
    hostname: str
    #: The VPC's IPv4 CIDR blocks (primary first) and the subnet's, from moto's EC2.
    vpc_cidrs: list
    subnet_cidr: str
    lifecycle: str
    pending_time: str
    asg: str | None = None
    # Switches tests flip through the control API.
    token_fault: str | None = None
    get_fault: str | None = None
    token_ttl_cap: int | None = None
    spot_action: dict | None = None
    lifecycle_state: str | None = "InService"
    rebalance: dict | None = None
    #: Serve the instance's tags under meta-data/tags/instance (InstanceMetadataTags=enabled).
    metadata_tags: bool = True
    # Counters tests read back.
    token_puts: int = 0
    unauthorized: int = 0
    gets: int = 0
    #: token -> monotonic expiry time.
    tokens: dict = field(default_factory=dict, repr=False)
    #: Where issued instance-role keys are remembered (for STS GetCallerIdentity and tests).
    credentials: Credentials = field(default_factory=Credentials, repr=False)

    def issue_token(self, ttl: int) -> tuple[str, int]:
        granted = min(ttl, self.token_ttl_cap) if self.token_ttl_cap else ttl
        token = base64.urlsafe_b64encode(secrets.token_bytes(42)).decode()
        self.tokens[token] = time.monotonic() + granted
        return token, granted

    def token_valid(self, token: str | None) -> bool:
        now = time.monotonic()
        self.tokens = {t: exp for t, exp in self.tokens.items() if exp > now}
        return token is not None and token in self.tokens

    def identity_document(self) -> str:
        doc = {
            "accountId": ACCOUNT_ID,
            "architecture": "x86_64",
            "availabilityZone": self.availability_zone,
            "billingProducts": None,
            "devpayProductCodes": None,
            "marketplaceProductCodes": None,
            "imageId": self.ami_id,
            "instanceId": self.instance_id,
            "instanceType": self.instance_type,
            "kernelId": None,
            "pendingTime": self.pending_time,
            "privateIp": self.private_ip,
            "ramdiskId": None,
            "region": self.region,
            "version": "2017-09-30",
        }
        # AWS pretty-prints with "key" : value.
        return json.dumps(doc, indent=2, separators=(",", " : "))

    def role_credentials(self) -> str:
        issued = self.credentials.instance_key(self.instance_id)
        return json.dumps(
            {
                "Code": "Success",
                "LastUpdated": issued["LastUpdated"],
                "Type": "AWS-HMAC",
                "AccessKeyId": issued["AccessKeyId"],
                "SecretAccessKey": issued["SecretAccessKey"],
                "Token": issued["Token"],
                "Expiration": issued["Expiration"],
            },
            indent=2,
        )

    def metadata_tree(self) -> dict:
        """The meta-data tree as nested dicts; leaves are strings. Absent keys answer 404."""
        tree: dict = {
            "ami-id": self.ami_id,
            "hostname": self.hostname,
            "local-hostname": self.hostname,
            "instance-id": self.instance_id,
            "instance-type": self.instance_type,
            "instance-life-cycle": self.lifecycle,
            "local-ipv4": self.private_ip,
            "mac": self.mac,
            "placement": {"region": self.region, "availability-zone": self.availability_zone},
            "network": {
                "interfaces": {
                    "macs": {
                        self.mac: {
                            "vpc-id": self.vpc_id,
                            "subnet-id": self.subnet_id,
                            "local-ipv4s": self.private_ip,
                            "mac": self.mac,
                            "device-number": "0",
                            "vpc-ipv4-cidr-block": self.vpc_cidrs[0],
                            "vpc-ipv4-cidr-blocks": "\n".join(self.vpc_cidrs),
                            "subnet-ipv4-cidr-block": self.subnet_cidr,
                        }
                    }
                }
            },
            "iam": {
                "info": json.dumps(
                    {
                        "Code": "Success",
                        "InstanceProfileArn": INSTANCE_PROFILE_ARN,
                        "InstanceProfileId": "AIPAEC2SIM",
                    }
                ),
                "security-credentials": {ROLE_NAME: self.role_credentials},
            },
        }
        if self.spot_action is not None:
            tree["spot"] = {"instance-action": json.dumps(self.spot_action)}
        if self.lifecycle_state is not None:
            tree["autoscaling"] = {"target-lifecycle-state": self.lifecycle_state}
        if self.rebalance is not None:
            tree["events"] = {"recommendations": {"rebalance": json.dumps(self.rebalance)}}
        if self.metadata_tags and self.asg:
            tree["tags"] = {"instance": {"aws:autoscaling:groupName": self.asg}}
        return tree

    def lookup(self, path: str) -> str | None:
        """Resolve a path below ``/latest/`` to response text, or None for 404."""
        if path.rstrip("/") == "dynamic/instance-identity/document":
            return self.identity_document()
        if path.rstrip("/") == "dynamic/instance-identity/signature":
            return base64.b64encode(secrets.token_bytes(128)).decode()
        if not (path == "meta-data" or path.startswith("meta-data/")):
            return None
        node: object = self.metadata_tree()
        for part in [p for p in path.split("/")[1:] if p]:
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        if isinstance(node, dict):
            return "\n".join(k + "/" if isinstance(v, dict) else k for k, v in node.items())
        return node() if callable(node) else str(node)

    def state(self) -> dict:
        return {
            "instance_id": self.instance_id,
            "region": self.region,
            "availability_zone": self.availability_zone,
            "instance_type": self.instance_type,
            "lifecycle": self.lifecycle,
            "asg": self.asg,
            "mac": self.mac,
            "vpc_id": self.vpc_id,
            "subnet_id": self.subnet_id,
            "vpc_cidrs": list(self.vpc_cidrs),
            "subnet_cidr": self.subnet_cidr,
            "token_fault": self.token_fault,
            "get_fault": self.get_fault,
            "token_ttl_cap": self.token_ttl_cap,
            "spot_action": self.spot_action,
            "lifecycle_state": self.lifecycle_state,
            "rebalance": self.rebalance,
            "metadata_tags": self.metadata_tags,
            "token_puts": self.token_puts,
            "unauthorized": self.unauthorized,
            "gets": self.gets,
        }

    def configure(self, settings: dict) -> None:
        """Apply control-API switches; raise ValueError for a bad value."""
        if "token_fault" in settings:
            if settings["token_fault"] not in TOKEN_FAULTS:
                raise ValueError(f"token_fault must be one of {TOKEN_FAULTS}")
            self.token_fault = settings["token_fault"]
        if "get_fault" in settings:
            if settings["get_fault"] not in GET_FAULTS:
                raise ValueError(f"get_fault must be one of {GET_FAULTS}")
            self.get_fault = settings["get_fault"]
        if "token_ttl_cap" in settings:
            cap = settings["token_ttl_cap"]
            if cap is not None and (not isinstance(cap, int) or cap < 1):
                raise ValueError("token_ttl_cap must be a positive integer or null")
            self.token_ttl_cap = cap
        if "spot_action" in settings:
            self.spot_action = _notice(settings["spot_action"], {"action": "terminate"}, "time")
        if "rebalance" in settings:
            self.rebalance = _notice(settings["rebalance"], {}, "noticeTime")
        if "metadata_tags" in settings:
            if not isinstance(settings["metadata_tags"], bool):
                raise ValueError("metadata_tags must be true or false")
            self.metadata_tags = settings["metadata_tags"]
        if "lifecycle_state" in settings:
            state = settings["lifecycle_state"]
            self.lifecycle_state = None if state in (None, "absent") else str(state)


def _notice(value: dict | None, defaults: dict, time_key: str) -> dict | None:
    """Fill a spot/rebalance notice with defaults (the time defaults to two minutes ahead)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("notice must be an object or null")
    notice = dict(defaults)
    notice.update(value)
    notice.setdefault(time_key, iso_z(datetime.now(UTC) + timedelta(minutes=2)))
    return notice


class Imds:
    """All simulated instances and the HTTP handlers of their metadata service."""

    def __init__(
        self, moto: MotoHost, default_region: str, credentials: Credentials | None = None
    ) -> None:
        self.moto = moto
        self.default_region = default_region
        self.credentials = credentials or Credentials()
        self.instances: dict[str, Instance] = {}
        self.default_id = ""

    async def create_instance(
        self,
        region: str | None = None,
        instance_type: str | None = None,
        lifecycle: str | None = None,
        asg: str | None = None,
        subnet_id: str | None = None,
    ) -> Instance:
        """RunInstances in moto (in ``subnet_id``, else the default VPC), then give the new
        instance an IMDS identity."""
        region = region or self.default_region
        lifecycle = lifecycle or "on-demand"
        if lifecycle not in LIFECYCLES:
            raise ValueError(f"lifecycle must be one of {LIFECYCLES}")
        loop = asyncio.get_running_loop()
        if subnet_id is not None and not isinstance(subnet_id, str):
            raise ValueError("subnet_id must be a string")
        described, vpc_cidrs, subnet_cidr = await loop.run_in_executor(
            None,
            self._run_instance,
            region,
            instance_type or DEFAULT_INSTANCE_TYPE,
            lifecycle,
            asg,
            subnet_id,
        )
        instance = Instance(
            instance_id=described["InstanceId"],
            region=region,
            availability_zone=described["Placement"]["AvailabilityZone"],
            instance_type=described["InstanceType"],
            ami_id=described["ImageId"],
            private_ip=described["PrivateIpAddress"],
            mac=described["NetworkInterfaces"][0]["MacAddress"],
            vpc_id=described["VpcId"],
            subnet_id=described["SubnetId"],
            vpc_cidrs=vpc_cidrs,
            subnet_cidr=subnet_cidr,
            hostname=described["PrivateDnsName"],
            lifecycle=lifecycle,
            pending_time=iso_z(described["LaunchTime"]),
            asg=asg,
            credentials=self.credentials,
        )
        self.instances[instance.instance_id] = instance
        LOG.info("instance %s created in %s (%s)", instance.instance_id, region, lifecycle)
        return instance

    def _run_instance(
        self,
        region: str,
        instance_type: str,
        lifecycle: str,
        asg: str | None,
        subnet_id: str | None,
    ) -> tuple[dict, list[str], str]:
        """The RunInstances record, its VPC's IPv4 CIDR blocks and its subnet's CIDR."""
        ec2 = self.moto.boto3_client("ec2", region)
        kwargs: dict = {
            "ImageId": DEFAULT_AMI,
            "InstanceType": instance_type,
            "MinCount": 1,
            "MaxCount": 1,
        }
        if lifecycle == "spot":
            kwargs["InstanceMarketOptions"] = {"MarketType": "spot"}
        if asg:
            kwargs["TagSpecifications"] = [
                {
                    "ResourceType": "instance",
                    "Tags": [{"Key": "aws:autoscaling:groupName", "Value": asg}],
                }
            ]
        if subnet_id:
            known = ec2.describe_subnets(Filters=[{"Name": "subnet-id", "Values": [subnet_id]}])[
                "Subnets"
            ]
            if not known:
                raise ValueError(f"unknown subnet {subnet_id} in {region}")
            kwargs["SubnetId"] = subnet_id
        described = ec2.run_instances(**kwargs)["Instances"][0]
        vpc = ec2.describe_vpcs(VpcIds=[described["VpcId"]])["Vpcs"][0]
        cidrs = [vpc["CidrBlock"]] + [
            a["CidrBlock"]
            for a in vpc.get("CidrBlockAssociationSet", [])
            if a["CidrBlock"] != vpc["CidrBlock"]
            and a.get("CidrBlockState", {}).get("State", "associated") == "associated"
        ]
        subnet = ec2.describe_subnets(SubnetIds=[described["SubnetId"]])["Subnets"][0]
        return described, cidrs, subnet["CidrBlock"]

    async def create_default(self) -> Instance:
        instance = await self.create_instance()
        self.default_id = instance.instance_id
        return instance

    # ------------------------------------------------------------------ HTTP handlers

    def routes(self) -> list[web.RouteDef]:
        return [
            web.put("/latest/api/token", self.put_token),
            web.get("/latest/{path:.*}", self.get_path),
            web.put("/imds/{instance_id}/latest/api/token", self.put_token),
            web.get("/imds/{instance_id}/latest/{path:.*}", self.get_path),
        ]

    def _instance_for(self, request: web.Request) -> Instance:
        instance_id = request.match_info.get("instance_id", self.default_id)
        instance = self.instances.get(instance_id)
        if instance is None:
            raise web.HTTPNotFound(text=f"unknown instance {instance_id}")
        return instance

    async def put_token(self, request: web.Request) -> web.StreamResponse:
        instance = self._instance_for(request)
        instance.token_puts += 1
        if instance.token_fault == "timeout":
            await _hang_then_drop(request)
        if instance.token_fault in ("403", "405"):
            return web.Response(status=int(instance.token_fault), text="Forbidden")
        try:
            ttl = int(request.headers.get(TTL_HEADER, ""))
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= MAX_TTL:
            return web.Response(status=400, text="Bad Request")
        token, granted = instance.issue_token(ttl)
        return web.Response(text=token, headers={TTL_HEADER: str(granted)})

    async def get_path(self, request: web.Request) -> web.StreamResponse:
        instance = self._instance_for(request)
        instance.gets += 1
        if not instance.token_valid(request.headers.get(TOKEN_HEADER)):
            instance.unauthorized += 1
            return web.Response(status=401, text="Unauthorized")
        if instance.get_fault == "401-once":
            instance.get_fault = None
            instance.unauthorized += 1
            return web.Response(status=401, text="Unauthorized")
        if instance.get_fault == "timeout":
            await _hang_then_drop(request)
        if instance.get_fault == "500":
            return web.Response(status=500, text="Internal Server Error")
        text = instance.lookup(request.match_info["path"])
        if text is None:
            return web.Response(status=404, text="Not Found")
        content_type = "application/json" if text.startswith("{") else "text/plain"
        return web.Response(text=text, content_type=content_type)


async def _hang_then_drop(request: web.Request) -> None:
    """Simulate an unresponsive IMDS: wait, then close the connection without answering."""
    await asyncio.sleep(HANG_SECONDS)
    request.transport.abort()
    raise web.HTTPServiceUnavailable()
