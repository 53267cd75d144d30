"""Tests of ec2sim itself: start the real process on port 0, drive it with boto3 and plain HTTP.

Run: <venv>/bin/python -m pytest tests/ec2sim -q
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import gzip
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import boto3
import botocore.exceptions
import cbor2
import pytest
import websockets

HERE = Path(__file__).resolve().parent
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
FAKE_SIGV4 = (
    "AWS4-HMAC-SHA256 Credential=AKIDTEST/20240101/us-east-1/ecs/aws4_request, "
    "SignedHeaders=host;x-amz-date, Signature=" + "ab" * 32
)


# ---- harness


class Sim:
    """A running ec2sim process and small HTTP helpers around it."""

    def __init__(self, process: subprocess.Popen, port: int) -> None:
        self.process = process
        self.port = port
        self.base = f"http://127.0.0.1:{port}"

    def http(self, method: str, path: str, body=None, headers=None, timeout=10.0):
        """(status, headers, bytes) of one request; never raises for HTTP errors."""
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    def control(self, method: str, path: str, body=None):
        status, _, data = self.http(
            method, "/ec2sim" + path, body, {"Content-Type": "application/json"}
        )
        assert status == 200, (status, data)
        return json.loads(data)

    def client(self, service: str, region: str = "us-east-1"):
        return boto3.client(
            service,
            endpoint_url=self.base,
            region_name=region,
            aws_access_key_id="AKIDTEST",
            aws_secret_access_key="secret",
            config=botocore.config.Config(retries={"total_max_attempts": 1, "mode": "standard"}),
        )

    def token(self, prefix: str = "", ttl: int = 60) -> str:
        status, headers, data = self.http(
            "PUT", prefix + "/latest/api/token", b"", {TTL_HEADER: str(ttl)}
        )
        assert status == 200
        return data.decode()

    def imds_get(self, path: str, token: str | None, prefix: str = ""):
        headers = {TOKEN_HEADER: token} if token else {}
        return self.http("GET", prefix + "/latest/" + path, headers=headers)


def start_sim(directory: Path) -> Sim:
    """Start ec2sim on port 0 and wait for its ready file."""
    ready = directory / "ready.json"
    process = subprocess.Popen(
        [sys.executable, str(HERE / "ec2sim.py"), "--port", "0", "--ready-file", str(ready)],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "ec2sim did not become ready"
        time.sleep(0.05)
    info = json.loads(ready.read_text())
    assert info["pid"] == process.pid
    return Sim(process, info["port"])


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    running = start_sim(tmp_path_factory.mktemp("ec2sim"))
    yield running
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(timeout=10) == 0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def identity(sim: Sim, prefix: str = "") -> str:
    token = sim.token(prefix)
    status, _, doc = sim.imds_get("dynamic/instance-identity/document", token, prefix)
    assert status == 200
    return doc.decode()


def total_resources(cpu=2048, memory=3000):
    return [
        {"name": "CPU", "type": "INTEGER", "integerValue": cpu},
        {"name": "MEMORY", "type": "INTEGER", "integerValue": memory},
        {
            "name": "PORTS",
            "type": "STRINGSET",
            "stringSetValue": ["22", "2375", "2376", "51678", "51679"],
        },
        {"name": "PORTS_UDP", "type": "STRINGSET", "stringSetValue": []},
    ]


#: What a capable agent advertises (every attribute placement.required_attributes can ask for
#: in these tests): instances register with them unless a test passes its own ``attributes``.
CAPABLE = [
    *(f"com.amazonaws.ecs.capability.docker-remote-api.1.{v}" for v in range(17, 33)),
    *(
        "com.amazonaws.ecs.capability." + n
        for n in (
            "task-iam-role",
            "privileged-container",
            "ecr-auth",
            "logging-driver.json-file",
            "logging-driver.awslogs",
            "logging-driver.none",
        )
    ),
    *(
        "ecs.capability." + n
        for n in (
            "task-eni",
            "pid-ipc-namespace-sharing",
            "task-cpu-mem-limit",
            "docker-plugin.local",
            "container-health-check",
            "container-ordering",
            "secrets.ssm.environment-variables",
            "secrets.asm.environment-variables",
            "secrets.ssm.bootstrap.log-driver",
            "secrets.asm.bootstrap.log-driver",
            "env-files.s3",
            "private-registry-authentication.secretsmanager",
            "execution-role-awslogs",
            "execution-role-ecr-pull",
        )
    ),
]


def register(sim: Sim, cluster: str, prefix: str = "", **extra):
    ecs = sim.client("ecs")
    extra.setdefault("attributes", [{"name": n} for n in CAPABLE])
    return ecs.register_container_instance(
        cluster=cluster,
        instanceIdentityDocument=identity(sim, prefix),
        instanceIdentityDocumentSignature="sig",
        totalResources=total_resources(),
        **extra,
    )["containerInstance"]


def new_instance_prefix(sim: Sim, **body) -> str:
    created = sim.control("POST", "/instances", body)
    assert created["imds"].startswith(sim.base)
    return created["imds"][len(sim.base) :]


# ---- IMDS


def test_imds_requires_token_and_counts(sim):
    prefix = new_instance_prefix(sim)
    status, _, _ = sim.imds_get("meta-data/instance-id", None, prefix)
    assert status == 401
    status, _, _ = sim.imds_get("meta-data/instance-id", "bogus", prefix)
    assert status == 401
    token = sim.token(prefix)
    status, _, body = sim.imds_get("meta-data/instance-id", token, prefix)
    assert status == 200 and body.decode().startswith("i-")
    state = sim.control("GET", prefix.replace("/imds/", "/instances/") + "/imds")
    assert state["unauthorized"] == 2 and state["token_puts"] == 1 and state["gets"] == 3


def test_imds_token_put_validation_and_echo(sim):
    for bad in ("0", "21601", "abc"):
        status, _, _ = sim.http("PUT", "/latest/api/token", b"", {TTL_HEADER: bad})
        assert status == 400
    status, _, _ = sim.http("PUT", "/latest/api/token", b"")
    assert status == 400
    status, headers, _ = sim.http("PUT", "/latest/api/token", b"", {TTL_HEADER: "300"})
    assert status == 200 and headers[TTL_HEADER] == "300"


def test_imds_token_expiry_and_ttl_cap(sim):
    prefix = new_instance_prefix(sim)
    instance_id = prefix.split("/")[-1]
    sim.control("POST", f"/instances/{instance_id}/imds", {"token_ttl_cap": 1})
    status, headers, token = sim.http("PUT", prefix + "/latest/api/token", b"", {TTL_HEADER: "600"})
    assert status == 200 and headers[TTL_HEADER] == "1"
    assert sim.imds_get("meta-data/ami-id", token.decode(), prefix)[0] == 200
    time.sleep(1.2)
    assert sim.imds_get("meta-data/ami-id", token.decode(), prefix)[0] == 401


def test_imds_tokens_are_per_instance(sim):
    prefix = new_instance_prefix(sim)
    default_token = sim.token()
    assert sim.imds_get("meta-data/instance-id", default_token, prefix)[0] == 401


def test_imds_faults(sim):
    prefix = new_instance_prefix(sim)
    instance_id = prefix.split("/")[-1]
    token = sim.token(prefix)
    sim.control("POST", f"/instances/{instance_id}/imds", {"get_fault": "401-once"})
    assert sim.imds_get("meta-data/instance-id", token, prefix)[0] == 401
    assert sim.imds_get("meta-data/instance-id", token, prefix)[0] == 200
    sim.control("POST", f"/instances/{instance_id}/imds", {"get_fault": "500"})
    assert sim.imds_get("meta-data/instance-id", token, prefix)[0] == 500
    sim.control("POST", f"/instances/{instance_id}/imds", {"get_fault": None, "token_fault": "405"})
    assert sim.http("PUT", prefix + "/latest/api/token", b"", {TTL_HEADER: "60"})[0] == 405
    sim.control("POST", f"/instances/{instance_id}/imds", {"token_fault": "403"})
    assert sim.http("PUT", prefix + "/latest/api/token", b"", {TTL_HEADER: "60"})[0] == 403
    sim.control("POST", f"/instances/{instance_id}/imds", {"token_fault": None})
    status, _, _ = sim.http("POST", f"/ec2sim/instances/{instance_id}/imds", {"get_fault": "nope"})
    assert status == 400


def test_imds_metadata_tree(sim):
    prefix = new_instance_prefix(sim, lifecycle="spot", instance_type="m5.large")
    token = sim.token(prefix)

    def get(path):
        status, _, body = sim.imds_get(path, token, prefix)
        return status, body.decode()

    assert get("meta-data/instance-type") == (200, "m5.large")
    assert get("meta-data/instance-life-cycle") == (200, "spot")
    assert get("meta-data/placement/region") == (200, "us-east-1")
    mac = get("meta-data/mac")[1]
    assert get(f"meta-data/network/interfaces/macs/{mac}/vpc-id")[1].startswith("vpc-")
    assert get(f"meta-data/network/interfaces/macs/{mac}/subnet-id")[1].startswith("subnet-")
    assert get("meta-data/no-such-key")[0] == 404
    assert get("user-data")[0] == 404
    assert get("dynamic/instance-identity/signature")[0] == 200
    role = get("meta-data/iam/security-credentials/")[1]
    creds = json.loads(get(f"meta-data/iam/security-credentials/{role}")[1])
    assert creds["Code"] == "Success" and creds["AccessKeyId"] and creds["Token"]


def test_imds_notices(sim):
    prefix = new_instance_prefix(sim)
    instance_id = prefix.split("/")[-1]
    token = sim.token(prefix)
    assert sim.imds_get("meta-data/spot/instance-action", token, prefix)[0] == 404
    assert sim.imds_get("meta-data/events/recommendations/rebalance", token, prefix)[0] == 404
    sim.control(
        "POST",
        f"/instances/{instance_id}/imds",
        {
            "spot_action": {"action": "terminate", "time": "2030-01-01T00:02:00Z"},
            "rebalance": {},
            "lifecycle_state": "Warmed:Stopped",
        },
    )
    status, _, body = sim.imds_get("meta-data/spot/instance-action", token, prefix)
    assert status == 200 and json.loads(body) == {
        "action": "terminate",
        "time": "2030-01-01T00:02:00Z",
    }
    status, _, body = sim.imds_get("meta-data/events/recommendations/rebalance", token, prefix)
    assert status == 200 and json.loads(body)["noticeTime"].endswith("Z")
    assert (
        sim.imds_get("meta-data/autoscaling/target-lifecycle-state", token, prefix)[2]
        == b"Warmed:Stopped"
    )
    sim.control(
        "POST", f"/instances/{instance_id}/imds", {"lifecycle_state": "absent", "spot_action": None}
    )
    assert sim.imds_get("meta-data/autoscaling/target-lifecycle-state", token, prefix)[0] == 404
    assert sim.imds_get("meta-data/spot/instance-action", token, prefix)[0] == 404


def test_identity_document_instance_exists_in_ec2(sim):
    doc = json.loads(identity(sim))
    assert doc["instanceId"] == sim.control("GET", "/instances/default")["instance_id"]
    assert doc["accountId"] == "123456789012" and doc["version"] == "2017-09-30"
    reservations = sim.client("ec2").describe_instances(InstanceIds=[doc["instanceId"]])[
        "Reservations"
    ]
    assert reservations[0]["Instances"][0]["InstanceId"] == doc["instanceId"]


def test_asg_instance_is_tagged(sim):
    created = sim.control("POST", "/instances", {"asg": "my-asg"})
    described = sim.client("ec2").describe_instances(InstanceIds=[created["instance_id"]])
    tags = described["Reservations"][0]["Instances"][0]["Tags"]
    assert {"Key": "aws:autoscaling:groupName", "Value": "my-asg"} in tags


def test_asg_tag_in_instance_metadata(sim):
    created = sim.control("POST", "/instances", {"asg": "my-asg"})
    prefix = "/imds/" + created["instance_id"]
    token = sim.token(prefix)
    path = "meta-data/tags/instance/aws:autoscaling:groupName"
    assert sim.imds_get(path, token, prefix)[2] == b"my-asg"
    assert sim.imds_get("meta-data/tags/instance", token, prefix)[2] == b"aws:autoscaling:groupName"
    state = sim.control(
        "POST", f"/instances/{created['instance_id']}/imds", {"metadata_tags": False}
    )
    assert state["metadata_tags"] is False
    assert sim.imds_get(path, token, prefix)[0] == 404
    status, _, _ = sim.http(
        "POST", f"/ec2sim/instances/{created['instance_id']}/imds", {"metadata_tags": "no"}
    )
    assert status == 400
    plain = new_instance_prefix(sim)
    assert sim.imds_get("meta-data/tags/instance", sim.token(plain), plain)[0] == 404


# ---- ECS registration


def test_register_unknown_cluster(sim):
    with pytest.raises(botocore.exceptions.ClientError) as err:
        register(sim, unique("missing"))
    assert err.value.response["Error"]["Code"] == "ClusterNotFoundException"


def test_register_stores_resources_attributes_tags(sim):
    ecs = sim.client("ecs")
    cluster = unique("reg")
    ecs.create_cluster(clusterName=cluster)
    attributes = [
        {"name": "ecs.os-type", "value": "linux"},
        {"name": "ecs.os-family", "value": "LINUX"},
        {"name": "com.amazonaws.ecs.capability.privileged-container"},
        {"name": "custom", "value": "yes"},
    ]
    instance = register(
        sim,
        cluster,
        prefix=new_instance_prefix(sim),
        attributes=attributes,
        tags=[{"key": "team", "value": "a"}],
    )
    returned = {a["name"]: a.get("value") for a in instance["attributes"]}
    for attribute in attributes:
        assert returned[attribute["name"]] == attribute.get("value")
    assert returned["ecs.availability-zone"] == "us-east-1a"
    described = ecs.describe_container_instances(
        cluster=cluster, containerInstances=[instance["containerInstanceArn"]], include=["TAGS"]
    )["containerInstances"][0]
    registered = {r["name"]: r for r in described["registeredResources"]}
    assert (
        registered["CPU"]["integerValue"] == 2048 and registered["MEMORY"]["integerValue"] == 3000
    )
    remaining = {r["name"]: r for r in described["remainingResources"]}
    assert remaining["MEMORY"]["integerValue"] == 3000
    assert described["tags"] == [{"key": "team", "value": "a"}]


def test_reregister_same_arn_and_deregistered(sim):
    ecs = sim.client("ecs")
    cluster = unique("rereg")
    ecs.create_cluster(clusterName=cluster)
    prefix = new_instance_prefix(sim)
    first = register(sim, cluster, prefix)
    arn = first["containerInstanceArn"]
    again = register(sim, cluster, prefix, containerInstanceArn=arn)
    assert again["containerInstanceArn"] == arn
    assert ecs.list_container_instances(cluster=cluster)["containerInstanceArns"] == [arn]
    with pytest.raises(botocore.exceptions.ClientError) as err:
        register(
            sim,
            cluster,
            prefix,
            containerInstanceArn=arn.rsplit("/", 1)[0] + "/" + str(uuid.uuid4()),
        )
    assert err.value.response["Error"]["Code"] == "ClientException"
    ecs.deregister_container_instance(cluster=cluster, containerInstance=arn, force=True)
    with pytest.raises(botocore.exceptions.ClientError) as err:
        register(sim, cluster, prefix, containerInstanceArn=arn)
    assert err.value.response["Error"]["Code"] == "ClientException"
    assert err.value.response["Error"]["Message"] == f"Container instance {arn} is inactive."


def test_discover_poll_endpoint(sim):
    reply = sim.client("ecs").discover_poll_endpoint(containerInstance="x", cluster="y")
    assert reply["endpoint"] == sim.base and reply["telemetryEndpoint"] == sim.base


# ---- records and faults


def test_requests_are_recorded(sim):
    sim.control("DELETE", "/requests")
    sim.client("ecs").list_clusters()
    sim.client("ec2").describe_regions()
    ecs_requests = sim.control("GET", "/requests?service=ecs&operation=ListClusters")["requests"]
    assert len(ecs_requests) == 1
    assert ecs_requests[0]["region"] == "us-east-1" and ecs_requests[0]["body"] == {}
    ec2_requests = sim.control("GET", "/requests?service=ec2")["requests"]
    assert [r["operation"] for r in ec2_requests] == ["DescribeRegions"]


def test_region_comes_from_signature(sim):
    west = sim.client("ecs", region="us-west-2")
    name = unique("west")
    west.create_cluster(clusterName=name)
    assert any(name in arn for arn in west.list_clusters()["clusterArns"])
    assert not any(name in arn for arn in sim.client("ecs").list_clusters()["clusterArns"])


def test_faults_by_service_operation_and_count(sim):
    ecs = sim.client("ecs")
    sim.control(
        "POST",
        "/faults",
        {"service": "ecs", "mode": "throttle", "operations": ["ListClusters"], "count": 2},
    )
    for _ in range(2):
        with pytest.raises(botocore.exceptions.ClientError) as err:
            ecs.list_clusters()
        assert err.value.response["Error"]["Code"] == "ThrottlingException"
    ecs.describe_clusters()  # other operations unaffected
    ecs.list_clusters()  # count used up
    assert sim.control("GET", "/faults")["faults"] == []

    sim.control("POST", "/faults", {"service": "ec2", "mode": "unavailable"})
    with pytest.raises(botocore.exceptions.ClientError) as err:
        sim.client("ec2").describe_regions()
    assert err.value.response["Error"]["Code"] == "ServiceUnavailable"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    sim.control("POST", "/faults", {"service": "ec2", "mode": None})

    sim.control("POST", "/faults", {"service": "autoscaling", "mode": "unavailable", "count": 1})
    with pytest.raises(botocore.exceptions.ClientError) as err:
        sim.client("autoscaling").describe_auto_scaling_groups()
    assert err.value.response["Error"]["Code"] == "ServiceUnavailable"

    sim.control("POST", "/faults", {"service": "ecs", "mode": "reset", "count": 1})
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        ecs.list_clusters()
    ecs.list_clusters()


# ---- CloudWatch CBOR


def cbor_call(sim: Sim, operation: str, body: dict, compress: bool = False):
    """Send a CloudWatch call the way aws-sdk-cloudwatch >= 1.100 does (smithy RPCv2 CBOR)."""
    data = cbor2.dumps(body, datetime_as_timestamp=True)
    headers = {
        "Content-Type": "application/cbor",
        "Accept": "application/cbor",
        "smithy-protocol": "rpc-v2-cbor",
        "X-Amz-Date": "20240101T000000Z",
        "Authorization": FAKE_SIGV4.replace("/ecs/", "/monitoring/"),
    }
    if compress:
        data = gzip.compress(data)
        headers["Content-Encoding"] = "gzip"
    path = f"/service/GraniteServiceVersion20100801/operation/{operation}"
    status, reply_headers, reply = sim.http("POST", path, data, headers)
    assert reply_headers["Content-Type"].startswith("application/cbor")
    assert reply_headers["smithy-protocol"] == "rpc-v2-cbor"
    return status, cbor2.loads(reply) if reply else {}


def test_cloudwatch_cbor_put_and_read_back(sim):
    namespace = unique("CWAgent")
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    datum = {
        "MetricName": "mem_used_percent",
        "Value": 42.5,
        "Unit": "Percent",
        "Timestamp": now,
        "Dimensions": [{"Name": "InstanceId", "Value": "i-1"}],
    }
    status, _ = cbor_call(sim, "PutMetricData", {"Namespace": namespace, "MetricData": [datum]})
    assert status == 200
    status, _ = cbor_call(
        sim,
        "PutMetricData",
        {"Namespace": namespace, "MetricData": [{**datum, "Value": 57.5}]},
        compress=True,
    )
    assert status == 200
    cloudwatch = sim.client("cloudwatch")
    metrics = cloudwatch.list_metrics(Namespace=namespace)["Metrics"]
    assert metrics[0]["Dimensions"] == [{"Name": "InstanceId", "Value": "i-1"}]
    stats = cloudwatch.get_metric_statistics(
        Namespace=namespace,
        MetricName="mem_used_percent",
        StartTime=now - datetime.timedelta(minutes=5),
        EndTime=now + datetime.timedelta(minutes=5),
        Period=60,
        Statistics=["Average", "SampleCount"],
    )["Datapoints"]
    assert stats[0]["SampleCount"] == 2 and stats[0]["Average"] == 50.0

    query = {
        "MetricDataQueries": [
            {
                "Id": "m1",
                "MetricStat": {
                    "Metric": {
                        "Namespace": namespace,
                        "MetricName": "mem_used_percent",
                        "Dimensions": [{"Name": "InstanceId", "Value": "i-1"}],
                    },
                    "Period": 60,
                    "Stat": "Maximum",
                },
            }
        ],
        "StartTime": now - datetime.timedelta(minutes=5),
        "EndTime": now + datetime.timedelta(minutes=5),
    }
    status, reply = cbor_call(sim, "GetMetricData", query)
    assert status == 200
    result = reply["MetricDataResults"][0]
    assert result["Values"] == [57.5]
    assert isinstance(result["Timestamps"][0], datetime.datetime)  # CBOR tag 1

    status, reply = cbor_call(
        sim,
        "GetMetricStatistics",
        {
            "Namespace": namespace,
            "MetricName": "mem_used_percent",
            "StartTime": now - datetime.timedelta(minutes=5),
            "EndTime": now + datetime.timedelta(minutes=5),
            "Period": 60,
            "Statistics": ["SampleCount", "Sum"],
        },
    )
    assert status == 200
    [point] = reply["Datapoints"]
    assert isinstance(point["SampleCount"], float) and point["SampleCount"] == 2.0
    assert isinstance(point["Timestamp"], datetime.datetime)

    status, listed = cbor_call(sim, "ListMetrics", {"Namespace": namespace})
    assert status == 200 and listed["Metrics"][0]["MetricName"] == "mem_used_percent"


def test_cloudwatch_cbor_errors_and_faults(sim):
    bad = {
        "MetricName": "m",
        "Value": 1.0,
        "StatisticValues": {"SampleCount": 1.0, "Sum": 1.0, "Minimum": 1.0, "Maximum": 1.0},
    }
    status, reply = cbor_call(
        sim, "PutMetricData", {"Namespace": unique("ns"), "MetricData": [bad]}
    )
    assert status == 400 and reply["__type"] == "InvalidParameterCombination"
    sim.control("POST", "/faults", {"service": "cloudwatch", "mode": "unavailable", "count": 1})
    status, reply = cbor_call(sim, "ListMetrics", {})
    assert status == 503 and reply["__type"] == "ServiceUnavailable"
    recorded = sim.control("GET", "/requests?service=cloudwatch&operation=PutMetricData")[
        "requests"
    ]
    assert (
        recorded[-1]["protocol"] == "cbor"
        and recorded[-1]["body"]["MetricData"][0]["MetricName"] == "m"
    )


# ---- tasks, ACS


def setup_cluster(sim: Sim, containers=None, **task_definition):
    """A cluster with one registered instance and a two-container task definition."""
    ecs = sim.client("ecs")
    cluster = unique("tasks")
    ecs.create_cluster(clusterName=cluster)
    instance = register(sim, cluster, new_instance_prefix(sim))
    family = unique("fam")
    ecs.register_task_definition(
        family=family,
        containerDefinitions=containers
        or [
            {
                "name": "web",
                "image": "local/busybox:test",
                "memory": 64,
                "portMappings": [{"containerPort": 8080, "hostPort": 0}],
            },
            {"name": "side", "image": "local/busybox:test", "memory": 32, "essential": False},
        ],
        **task_definition,
    )
    return ecs, cluster, instance["containerInstanceArn"], family


def acs_url(sim: Sim, cluster: str, instance_arn: str, send_credentials: bool = True) -> str:
    from urllib.parse import urlencode

    query = urlencode(
        {
            "clusterArn": cluster,
            "containerInstanceArn": instance_arn,
            "seqNum": "1",
            "protocolVersion": "2",
            "sendCredentials": "true" if send_credentials else "false",
            "agentVersion": "1.105.1",
            "agentHash": "abcdef01",
            "dockerVersion": "DockerVersion: 20.10.24",
        }
    )
    return f"ws://127.0.0.1:{sim.port}/ws?{query}"


def acs_connect(
    sim: Sim, cluster: str, instance_arn: str, headers=None, send_credentials: bool = True
):
    headers = (
        {"Authorization": FAKE_SIGV4, "X-Amz-Date": "20240101T000000Z"}
        if headers is None
        else headers
    )
    return websockets.connect(
        acs_url(sim, cluster, instance_arn, send_credentials), additional_headers=headers
    )


async def next_frame(ws, kind: str, timeout: float = 5.0) -> dict:
    """The next frame of the given type (others, e.g. heartbeats, are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
        if frame["type"] == kind:
            return frame["message"]


async def ack(ws, message: dict) -> None:
    await ws.send(
        json.dumps(
            {
                "type": "AckRequest",
                "message": {
                    "cluster": message["clusterArn"],
                    "containerInstance": message["containerInstanceArn"],
                    "messageId": message["messageId"],
                },
            }
        )
    )


def test_submit_task_state_change_reflected_in_describe_tasks(sim):
    ecs, cluster, instance_arn, family = setup_cluster(sim)
    task = ecs.run_task(cluster=cluster, taskDefinition=family)["tasks"][0]
    assert task["lastStatus"] == "PENDING" and task["containerInstanceArn"] == instance_arn
    assert sorted(c["name"] for c in task["containers"]) == ["side", "web"]
    binding = {"bindIP": "0.0.0.0", "containerPort": 8080, "hostPort": 32768, "protocol": "tcp"}
    ecs.submit_task_state_change(
        cluster=cluster,
        task=task["taskArn"],
        status="RUNNING",
        pullStartedAt=datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
        containers=[
            {
                "containerName": "web",
                "runtimeId": "dock1",
                "status": "RUNNING",
                "networkBindings": [binding],
            },
            {"containerName": "side", "runtimeId": "dock2", "status": "RUNNING"},
        ],
    )
    described = ecs.describe_tasks(cluster=cluster, tasks=[task["taskArn"]])["tasks"][0]
    assert described["lastStatus"] == "RUNNING" and described["desiredStatus"] == "RUNNING"
    assert described["pullStartedAt"].year == 2024
    web = next(c for c in described["containers"] if c["name"] == "web")
    assert web["lastStatus"] == "RUNNING" and web["runtimeId"] == "dock1"
    assert web["networkBindings"] == [binding]

    ecs.submit_task_state_change(
        cluster=cluster,
        task=task["taskArn"],
        status="STOPPED",
        reason="Essential container in task exited",
        containers=[{"containerName": "web", "status": "STOPPED", "exitCode": 3, "reason": "boom"}],
    )
    described = ecs.describe_tasks(cluster=cluster, tasks=[task["taskArn"]])["tasks"][0]
    assert described["lastStatus"] == "STOPPED" and described["desiredStatus"] == "STOPPED"
    assert described["stoppedReason"] == "Essential container in task exited"
    web = next(c for c in described["containers"] if c["name"] == "web")
    assert web["exitCode"] == 3 and web["reason"] == "boom"
    instance = ecs.describe_container_instances(cluster=cluster, containerInstances=[instance_arn])
    remaining = {r["name"]: r for r in instance["containerInstances"][0]["remainingResources"]}
    assert remaining["MEMORY"]["integerValue"] == 3000  # given back

    changes = sim.control("GET", "/state-changes")["state_changes"]
    mine = [c for c in changes if c["body"]["task"] == task["taskArn"]]
    assert [c["body"]["status"] for c in mine] == ["RUNNING", "STOPPED"]

    with pytest.raises(botocore.exceptions.ClientError) as err:
        ecs.submit_task_state_change(cluster=cluster, status="RUNNING")
    assert err.value.response["Error"]["Code"] == "InvalidParameterException"
    ecs.submit_container_state_change(
        cluster=cluster, task=task["taskArn"], containerName="side", status="STOPPED", exitCode=0
    )
    described = ecs.describe_tasks(cluster=cluster, tasks=[task["taskArn"]])["tasks"][0]
    assert next(c for c in described["containers"] if c["name"] == "side")["exitCode"] == 0


def test_run_and_stop_task_push_payloads(sim):
    containers = [
        {
            "name": "app",
            "image": "local/busybox:test",
            "cpu": 128,
            "memory": 64,
            "memoryReservation": 32,
            "command": ["sleep", "60"],
            "environment": [{"name": "A", "value": "1"}],
            "user": "nobody",
            "workingDirectory": "/tmp",
            "dockerLabels": {"l": "v"},
            "readonlyRootFilesystem": True,
            "ulimits": [{"name": "nofile", "softLimit": 10, "hardLimit": 20}],
            "logConfiguration": {"logDriver": "json-file", "options": {"max-size": "1m"}},
            "healthCheck": {"command": ["CMD", "true"], "interval": 5, "timeout": 2, "retries": 1},
            "stopTimeout": 5,
        }
    ]
    ecs, cluster, instance_arn, family = setup_cluster(sim, containers=containers)

    async def scenario():
        async with acs_connect(sim, cluster, instance_arn) as ws:
            task = (await asyncio.to_thread(ecs.run_task, cluster=cluster, taskDefinition=family))[
                "tasks"
            ][0]
            message = await next_frame(ws, "PayloadMessage")
            await ack(ws, message)
            assert message["containerInstanceArn"] == instance_arn and message["seqNum"] >= 1
            [pushed] = message["tasks"]
            assert pushed["arn"] == task["taskArn"] and pushed["desiredStatus"] == "RUNNING"
            assert (
                pushed["family"] == family
                and pushed["version"] == "1"
                and pushed["launchType"] == "EC2"
            )
            [container] = pushed["containers"]
            assert container["environment"] == {"A": "1"} and container["command"] == [
                "sleep",
                "60",
            ]
            assert container["healthCheckType"] == "docker" and container["stopTimeout"] == 5
            config = json.loads(container["dockerConfig"]["config"])
            host = json.loads(container["dockerConfig"]["hostConfig"])
            assert (
                config["User"] == "nobody"
                and config["WorkingDir"] == "/tmp"
                and config["Labels"] == {"l": "v"}
            )
            assert config["HealthCheck"]["Interval"] == 5_000_000_000
            assert host["MemoryReservation"] == 32 * 1024 * 1024 and host["ReadonlyRootfs"] is True
            assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "1m"}}
            assert host["Ulimits"] == [{"Name": "nofile", "Soft": 10, "Hard": 20}]
            assert host["NetworkMode"] == "bridge"
            assert host["CapAdd"] == [] and host["CapDrop"] == []

            await asyncio.to_thread(
                ecs.stop_task, cluster=cluster, task=task["taskArn"], reason="test"
            )
            stop = await next_frame(ws, "PayloadMessage")
            await ack(ws, stop)
            assert (
                stop["tasks"][0]["desiredStatus"] == "STOPPED"
                and stop["seqNum"] > message["seqNum"]
            )
            return task

    task = asyncio.run(scenario())
    described = ecs.describe_tasks(cluster=cluster, tasks=[task["taskArn"]])["tasks"][0]
    assert described["desiredStatus"] == "STOPPED" and described["lastStatus"] == "PENDING"
    session = [
        s
        for s in sim.control("GET", "/acs/sessions")["sessions"]
        if s["container_instance_arn"] == instance_arn
    ][-1]
    assert not session["connected"] and session["query"]["protocolVersion"] == "2"
    assert [f["type"] for f in session["received"]] == ["AckRequest", "AckRequest"]


def test_payload_renders_linux_and_runtime_parameters_as_ecs_does(sim):
    """linuxParameters (capabilities, devices, init, shm, tmpfs, swap), interactive and
    pseudoTerminal, systemControls and the task's pidMode/ipcMode, registered with boto3 and
    pushed over ACS as ECS renders them (container-features.md §1, §11.1)."""
    containers = [
        {
            "name": "app",
            "image": "local/busybox:test",
            "memory": 64,
            "interactive": True,
            "pseudoTerminal": True,
            "systemControls": [{"namespace": "net.core.somaxconn", "value": "1024"}],
            "startTimeout": 7,
            "linuxParameters": {
                "capabilities": {"add": ["NET_ADMIN"], "drop": ["CHOWN"]},
                "devices": [
                    {"hostPath": "/dev/zero", "containerPath": "/dev/z", "permissions": ["read"]},
                    {"hostPath": "/dev/null"},
                ],
                "initProcessEnabled": True,
                "sharedMemorySize": 32,
                "tmpfs": [{"containerPath": "/scratch", "size": 8, "mountOptions": ["noexec"]}],
                "maxSwap": 16,
                "swappiness": 10,
            },
        },
        # No swappiness: 60 once maxSwap is set; maxSwap 0 turns swap off.
        {
            "name": "noswap",
            "image": "local/busybox:test",
            "memory": 32,
            "linuxParameters": {"maxSwap": 0},
        },
        # No linuxParameters at all: empty CapAdd/CapDrop as in real payloads, no swap keys.
        {"name": "plain", "image": "local/busybox:test", "memoryReservation": 16},
    ]
    ecs, cluster, instance_arn, family = setup_cluster(
        sim, containers=containers, pidMode="host", ipcMode="none"
    )

    async def scenario():
        async with acs_connect(sim, cluster, instance_arn) as ws:
            await asyncio.to_thread(ecs.run_task, cluster=cluster, taskDefinition=family)
            message = await next_frame(ws, "PayloadMessage")
            await ack(ws, message)
            return message["tasks"][0]

    pushed = asyncio.run(scenario())
    assert pushed["pidMode"] == "host" and pushed["ipcMode"] == "none"
    app, noswap, plain = pushed["containers"]
    config = json.loads(app["dockerConfig"]["config"])
    host = json.loads(app["dockerConfig"]["hostConfig"])
    assert config["OpenStdin"] is True and config["Tty"] is True
    assert host["CapAdd"] == ["NET_ADMIN"] and host["CapDrop"] == ["CHOWN"]
    assert host["Devices"] == [
        {"PathOnHost": "/dev/zero", "PathInContainer": "/dev/z", "CgroupPermissions": "r"},
        {"PathOnHost": "/dev/null", "PathInContainer": "/dev/null", "CgroupPermissions": "rwm"},
    ]
    assert host["Init"] is True and host["ShmSize"] == 32 * 1024 * 1024
    assert host["Tmpfs"] == {"/scratch": "size=8m,noexec"}
    assert host["MemorySwap"] == (64 + 16) * 1024 * 1024 and host["MemorySwappiness"] == 10
    assert host["Sysctls"] == {"net.core.somaxconn": "1024"}
    assert app["startTimeout"] == 7
    # ECS also sends the ACS LinuxParameters object (which the agent ignores): its four members.
    assert app["linuxParameters"] == {
        k: containers[0]["linuxParameters"][k]
        for k in ("capabilities", "devices", "initProcessEnabled", "sharedMemorySize")
    }
    noswap_host = json.loads(noswap["dockerConfig"]["hostConfig"])
    assert noswap_host["MemorySwap"] == 32 * 1024 * 1024
    assert noswap_host["MemorySwappiness"] == 60
    plain_config = json.loads(plain["dockerConfig"]["config"])
    plain_host = json.loads(plain["dockerConfig"]["hostConfig"])
    assert plain_host["CapAdd"] == [] and plain_host["CapDrop"] == []
    assert "MemorySwap" not in plain_host and "Devices" not in plain_host
    assert "OpenStdin" not in plain_config and "Tty" not in plain_config
    assert "linuxParameters" not in plain


def test_acs_refuses_bad_upgrades(sim):
    ecs, cluster, instance_arn, _ = setup_cluster(sim)

    async def refused(cluster_name, arn, headers=None):
        with pytest.raises(websockets.exceptions.InvalidStatus) as err:
            async with acs_connect(sim, cluster_name, arn, headers):
                pass
        return err.value.response.status_code, json.loads(err.value.response.body)

    async def scenario():
        assert await refused(cluster, instance_arn, headers={}) == (
            403,
            {"AccessDeniedException": "Missing or malformed SigV4 authentication."},
        )
        assert await refused("nope", instance_arn) == (
            400,
            {"InvalidClusterException": "Invalid cluster"},
        )
        status, body = await refused(cluster, instance_arn + "0")
        assert status == 400 and "InvalidInstanceException" in body
        await asyncio.to_thread(
            ecs.deregister_container_instance,
            cluster=cluster,
            containerInstance=instance_arn,
            force=True,
        )
        status, body = await refused(cluster, instance_arn)
        assert status == 400 and "InactiveInstanceException" in body

    asyncio.run(scenario())


def test_acs_redelivery_heartbeat_manifest_and_stop_verification(sim):
    ecs, cluster, instance_arn, family = setup_cluster(sim)
    sim.control(
        "POST",
        "/acs/config",
        {"heartbeat_interval": 0.3, "manifest_interval": 0.5, "drop_after_next_payload": True},
    )
    try:

        async def scenario():
            async with acs_connect(sim, cluster, instance_arn) as ws:
                await asyncio.to_thread(ecs.run_task, cluster=cluster, taskDefinition=family)
                first = await next_frame(ws, "PayloadMessage")
                with pytest.raises(websockets.exceptions.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 5)
            async with acs_connect(sim, cluster, instance_arn) as ws:
                again = await next_frame(ws, "PayloadMessage")
                assert again["messageId"] == first["messageId"]
                await ack(ws, again)
                heartbeat = await next_frame(ws, "HeartbeatMessage")
                await ws.send(
                    json.dumps(
                        {
                            "type": "HeartbeatAckRequest",
                            "message": {"messageId": heartbeat["messageId"]},
                        }
                    )
                )
                manifest = await next_frame(ws, "TaskManifestMessage")
                assert manifest["timeline"] == again["seqNum"]
                assert [t["taskArn"] for t in manifest["tasks"]] == [
                    t["arn"] for t in again["tasks"]
                ]
                stale = "arn:aws:ecs:us-east-1:123456789012:task/x/stale"
                await ws.send(
                    json.dumps(
                        {
                            "type": "TaskStopVerificationMessage",
                            "message": {
                                "messageId": manifest["messageId"],
                                "stopCandidates": [
                                    {
                                        "taskArn": stale,
                                        "taskClusterArn": manifest["clusterArn"],
                                        "desiredStatus": "STOPPED",
                                    }
                                ],
                            },
                        }
                    )
                )
                verified = await next_frame(ws, "TaskStopVerificationAck")
                assert verified["messageId"] == manifest["messageId"]
                assert [t["taskArn"] for t in verified["stopTasks"]] == [stale]
                await ws.send("not json")
                await asyncio.sleep(0.2)

        asyncio.run(scenario())
    finally:
        sim.control("POST", "/acs/config", {"heartbeat_interval": 20, "manifest_interval": 60})
    sessions = [
        s
        for s in sim.control("GET", "/acs/sessions")["sessions"]
        if s["container_instance_arn"] == instance_arn
    ]
    assert len(sessions) == 2
    assert {"raw": "not json"}.items() <= sessions[1]["received"][-1].items()


def test_acs_control_send_and_drop(sim):
    ecs, cluster, instance_arn, _ = setup_cluster(sim)
    described = ecs.describe_container_instances(cluster=cluster, containerInstances=[instance_arn])
    assert described["containerInstances"][0]["agentConnected"] is False

    async def scenario():
        async with acs_connect(sim, cluster, instance_arn) as ws:
            await asyncio.sleep(0.1)
            body = {"container_instance_arn": instance_arn, "raw": "{broken"}
            await asyncio.to_thread(sim.control, "POST", "/acs/send", body)
            assert await asyncio.wait_for(ws.recv(), 5) == "{broken"
            message = {"type": "CloseMessage", "message": {"message": "bye"}}
            await asyncio.to_thread(
                sim.control,
                "POST",
                "/acs/send",
                {"container_instance_arn": instance_arn, "message": message},
            )
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == message
            [session] = [
                s
                for s in (await asyncio.to_thread(sim.control, "GET", "/acs/sessions"))["sessions"]
                if s["container_instance_arn"] == instance_arn and s["connected"]
            ]
            described = await asyncio.to_thread(
                ecs.describe_container_instances, cluster=cluster, containerInstances=[instance_arn]
            )
            assert described["containerInstances"][0]["agentConnected"] is True
            await asyncio.to_thread(
                sim.control,
                "POST",
                "/acs/credentials",
                {"container_instance_arn": instance_arn, "task_arn": "arn:task/x"},
            )
            credentials = await next_frame(ws, "IAMRoleCredentialsMessage")
            assert (
                credentials["taskArn"] == "arn:task/x"
                and credentials["roleType"] == "TaskApplication"
            )
            assert credentials["roleCredentials"]["credentialsId"]
            await asyncio.to_thread(
                sim.control, "POST", f"/acs/sessions/{session['id']}/drop", {"code": 4000}
            )
            with pytest.raises(websockets.exceptions.ConnectionClosed) as err:
                await asyncio.wait_for(ws.recv(), 5)
            assert err.value.rcvd.code == 4000

    asyncio.run(scenario())
    status, _, _ = sim.http(
        "POST",
        "/ec2sim/acs/send",
        {"container_instance_arn": instance_arn, "raw": "x"},
        {"Content-Type": "application/json"},
    )
    assert status == 409


def test_tcs_connection_is_accepted(sim):
    _, cluster, instance_arn, _ = setup_cluster(sim)
    from urllib.parse import urlencode

    url = f"ws://127.0.0.1:{sim.port}/ws?" + urlencode(
        {"cluster": cluster, "containerInstance": instance_arn}
    )

    async def scenario():
        headers = {"Authorization": FAKE_SIGV4, "X-Amz-Date": "20240101T000000Z"}
        async with websockets.connect(url, additional_headers=headers) as ws:
            await ws.send(json.dumps({"type": "PublishMetricsRequest", "message": {}}))
            await asyncio.sleep(0.2)

    asyncio.run(scenario())
    tcs = [s for s in sim.control("GET", "/acs/sessions")["sessions"] if s["kind"] == "tcs"]
    assert tcs and tcs[-1]["container_instance_arn"] == instance_arn


# ---- TCS


def tcs_url(sim: Sim, cluster: str, instance_arn: str) -> str:
    from urllib.parse import urlencode

    query = urlencode(
        {
            "agentHash": "abcdef01",
            "agentVersion": "1.105.1",
            "cluster": cluster,
            "containerInstance": instance_arn,
            "dockerVersion": "20.10.24",
        }
    )
    return f"ws://127.0.0.1:{sim.port}/ws?{query}"


def tcs_connect(sim: Sim, cluster: str, instance_arn: str):
    headers = {"Authorization": FAKE_SIGV4, "X-Amz-Date": "20240101T000000Z"}
    return websockets.connect(tcs_url(sim, cluster, instance_arn), additional_headers=headers)


def tcs_frame(kind: str, message: dict, headers=None, region: str = "us-east-1") -> str:
    """A TCS frame as the agent sends it: signed header block, blank line, envelope (§2.2)."""
    if headers is None:
        headers = [
            (
                "Authorization",
                f"AWS4-HMAC-SHA256 Credential=ASIATCSTEST/20240101/{region}/ecs/aws4_request, "
                "SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=" + "cd" * 32,
            ),
            ("Host", "127.0.0.1"),
            ("X-Amz-Date", "20240101T000000Z"),
            ("X-Amz-Security-Token", "IQoJtoken"),
        ]
    block = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return block + "\r\n" + json.dumps({"type": kind, "message": message}, separators=(",", ":"))


def tcs_session(sim: Sim, instance_arn: str) -> dict:
    """The instance's latest TCS session, as ``/ec2sim/tcs/sessions`` describes it."""
    sessions = sim.control("GET", "/tcs/sessions?instance=" + quote(instance_arn))["sessions"]
    assert sessions, f"no TCS session of {instance_arn}"
    return sessions[-1]


def quote(text: str) -> str:
    from urllib.parse import quote as url_quote

    return url_quote(text, safe="")


def test_tcs_acks_signed_frames_and_refuses_unsigned_and_binary(sim):
    _, cluster, instance_arn, _ = setup_cluster(sim)
    metadata = {"cluster": cluster, "containerInstance": instance_arn, "messageId": "m1"}
    idle = {"metadata": {**metadata, "idle": True, "fin": True}, "timestamp": time.time()}

    async def scenario():
        async with tcs_connect(sim, cluster, instance_arn) as ws:
            for kind, answer in (
                ("PublishMetricsRequest", "AckPublishMetric"),
                ("PublishHealthRequest", "AckPublishHealth"),
                ("PublishInstanceStatusRequest", "AckPublishInstanceStatus"),
            ):
                await ws.send(tcs_frame(kind, idle))
                reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert reply == {"type": answer, "message": {"message": "ok"}}
            await ws.send(json.dumps({"type": "PublishMetricsRequest", "message": idle}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert reply["type"] == "BadRequestException"
            assert "unsigned" in reply["message"]["message"]
            no_date = [("Authorization", FAKE_SIGV4), ("Host", "127.0.0.1")]
            await ws.send(tcs_frame("PublishHealthRequest", idle, headers=no_date))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert reply["type"] == "BadRequestException"
            assert "X-Amz-Date" in reply["message"]["message"]
            await ws.send(tcs_frame("PublishMetricsRequest", idle, region="eu-west-1"))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert reply["type"] == "BadRequestException"
            await ws.send(b"\x00binary")
            with pytest.raises(websockets.exceptions.ConnectionClosed) as err:
                await asyncio.wait_for(ws.recv(), 5)
            assert err.value.rcvd.code == 1003

    asyncio.run(scenario())
    frames = sim.control("GET", "/tcs/frames?instance=" + quote(instance_arn))["frames"]
    assert [(f["type"], f["signed"], f["reply"]) for f in frames] == [
        ("PublishMetricsRequest", True, "AckPublishMetric"),
        ("PublishHealthRequest", True, "AckPublishHealth"),
        ("PublishInstanceStatusRequest", True, "AckPublishInstanceStatus"),
        ("PublishMetricsRequest", False, "BadRequestException"),
        ("PublishHealthRequest", False, "BadRequestException"),
        ("PublishMetricsRequest", False, "BadRequestException"),
        (None, False, None),
    ]
    assert frames[0]["headers"] == ["Authorization", "Host", "X-Amz-Date", "X-Amz-Security-Token"]
    assert frames[0]["message"] == idle and frames[0]["error"] is None
    assert frames[0]["access_key_id"] == "ASIATCSTEST" and frames[0]["signed_region"] == "us-east-1"
    assert frames[3]["error"].startswith("unsigned") and frames[3]["headers"] == []
    assert frames[6]["error"] == "binary frame"
    assert all(f["container_instance_arn"] == instance_arn for f in frames)
    since = frames[2]["time"]
    later = sim.control("GET", f"/tcs/frames?instance={quote(instance_arn)}&since={since}")
    assert [f["seq"] for f in later["frames"]] == [f["seq"] for f in frames[3:]]
    health_frames = sim.control(
        "GET", f"/tcs/frames?instance={quote(instance_arn)}&type=PublishHealthRequest"
    )["frames"]
    assert len(health_frames) == 2
    session = tcs_session(sim, instance_arn)
    assert not session["connected"] and session["close_code"] == 1003
    assert session["closed_by"] == "ec2sim" and session["acks_sent"] == 3
    assert session["errors_sent"] == 3 and session["frames_received"] == 7
    assert session["query"]["dockerVersion"] == "20.10.24"
    listed = [
        s for s in sim.control("GET", "/acs/sessions")["sessions"] if s["id"] == session["id"]
    ]
    assert listed[0]["kind"] == "tcs" and len(listed[0]["sent"]) == 6


def test_tcs_heartbeats_and_silent(sim):
    _, cluster, instance_arn, _ = setup_cluster(sim)
    scope = {"container_instance_arn": instance_arn}
    config = sim.control("POST", "/tcs/config", {**scope, "heartbeat_interval": 0.2})
    assert config["instances"][instance_arn] == {"heartbeat_interval": 0.2}
    assert config["heartbeat_interval"] == 30 and config["silent"] is False
    frame = tcs_frame("PublishMetricsRequest", {"metadata": {"idle": True, "fin": True}})
    try:

        async def scenario():
            async with tcs_connect(sim, cluster, instance_arn) as ws:
                started = time.monotonic()
                for _ in range(3):
                    beat = await next_frame(ws, "HeartbeatMessage", timeout=2)
                    assert beat == {"healthy": True}
                assert time.monotonic() - started < 2
                await asyncio.to_thread(
                    sim.control, "POST", "/tcs/config", {**scope, "silent": True}
                )
                await asyncio.sleep(0.3)  # a heartbeat may have been on its way
                while True:
                    try:
                        await asyncio.wait_for(ws.recv(), 0.05)
                    except TimeoutError:
                        break
                await ws.send(frame)
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(ws.recv(), 1.0)  # neither ack nor heartbeat
                await asyncio.to_thread(
                    sim.control, "POST", "/tcs/config", {**scope, "silent": False}
                )
                await ws.send(frame)
                assert (await next_frame(ws, "AckPublishMetric", timeout=2)) == {"message": "ok"}
                await next_frame(ws, "HeartbeatMessage", timeout=2)
                await ws.close(code=1000, reason="ConnectionExpired: Reconnect to continue")

        asyncio.run(scenario())
    finally:
        cleared = sim.control("POST", "/tcs/config", {**scope, "clear": True})
        assert instance_arn not in cleared["instances"]
    frames = sim.control("GET", "/tcs/frames?instance=" + quote(instance_arn))["frames"]
    assert [f["reply"] for f in frames] == [None, "AckPublishMetric"]
    session = tcs_session(sim, instance_arn)
    assert session["heartbeats_sent"] >= 4 and session["closed_by"] == "agent"
    assert (session["close_code"], session["close_reason"]) == (
        1000,
        "ConnectionExpired: Reconnect to continue",
    )
    status, _, body = sim.http(
        "POST",
        "/ec2sim/tcs/config",
        {"heartbeat_interval": -1},
        {"Content-Type": "application/json"},
    )
    assert status == 400 and "heartbeat_interval" in json.loads(body)["error"]


def test_tcs_refuse_counts_attempts_and_drop_closes(sim):
    _, cluster, instance_arn, _ = setup_cluster(sim)
    scope = {"container_instance_arn": instance_arn}
    sim.control("POST", "/tcs/config", {**scope, "refuse": True})

    async def refused():
        with pytest.raises(websockets.exceptions.InvalidStatus) as err:
            async with tcs_connect(sim, cluster, instance_arn):
                pass
        return err.value.response.status_code, json.loads(err.value.response.body)

    async def closed(ws) -> websockets.exceptions.ConnectionClosed:
        with pytest.raises(websockets.exceptions.ConnectionClosed) as err:
            await asyncio.wait_for(ws.recv(), 5)
        return err.value

    async def scenario():
        for _ in range(2):
            status, body = await refused()
            assert status == 403
            assert body == {"AccessDeniedException": sim_config["refuse_message"]}
        await asyncio.to_thread(sim.control, "POST", "/tcs/config", {**scope, "refuse": False})
        async with tcs_connect(sim, cluster, instance_arn) as ws:
            await asyncio.sleep(0.1)
            session = await asyncio.to_thread(tcs_session, sim, instance_arn)
            assert session["connected"]
            await asyncio.to_thread(
                sim.control, "POST", f"/tcs/sessions/{session['id']}/drop", {"code": 4001}
            )
            assert (await closed(ws)).rcvd.code == 4001
        async with tcs_connect(sim, cluster, instance_arn) as ws:
            await asyncio.sleep(0.1)
            dropped = await asyncio.to_thread(sim.control, "POST", "/tcs/drop", scope)
            assert len(dropped["dropped"]) == 1
            assert (await closed(ws)).rcvd is None  # abrupt: no close frame

    sim_config = sim.control("GET", "/tcs/config")
    try:
        asyncio.run(scenario())
    finally:
        sim.control("POST", "/tcs/config", {**scope, "clear": True})
    attempts = sim.control("GET", "/tcs/attempts?instance=" + quote(instance_arn))
    assert attempts["counts"] == {instance_arn: {"total": 4, "accepted": 2, "refused": 2}}
    assert [a["status"] for a in attempts["attempts"]] == [403, 403, 101, 101]
    assert attempts["attempts"][0]["error"].startswith("AccessDeniedException")
    assert attempts["attempts"][2]["session"] and attempts["attempts"][0]["region"] == "us-east-1"
    sessions = sim.control("GET", "/tcs/sessions?instance=" + quote(instance_arn))["sessions"]
    assert [(s["close_code"], s["closed_by"]) for s in sessions][0] == (4001, "ec2sim")
    assert not any(s["connected"] for s in sessions)
    status, _, _ = sim.http("POST", "/ec2sim/tcs/sessions/nope/drop", b"")
    assert status == 404


def container_metrics(name: str, cpu_sum: float, cpu_count: int, mem_sum: float, mem_count: int):
    return {
        "containerName": name,
        "cpuStatsSet": {"max": 99.0, "min": 0.0, "sampleCount": cpu_count, "sum": cpu_sum},
        "memoryStatsSet": {"max": 999, "min": 0, "sampleCount": mem_count, "sum": mem_sum},
    }


def test_tcs_metrics_become_aws_ecs_utilization_and_health(sim):
    health_check = {"command": ["CMD", "true"], "interval": 5, "timeout": 2, "retries": 1}
    ecs, cluster, instance_arn, web_family = setup_cluster(
        sim,
        containers=[
            {
                "name": "web",
                "image": "local/busybox:test",
                "memory": 64,
                "healthCheck": health_check,
            },
            {"name": "side", "image": "local/busybox:test", "memory": 32, "essential": False},
        ],
        cpu="512",
        memory="1024",
    )
    # No task-level sizes: CPU = Σ cpu, memory = Σ (memoryReservation, else memory).
    worker_family = unique("worker")
    ecs.register_task_definition(
        family=worker_family,
        containerDefinitions=[
            {"name": "a", "image": "i", "cpu": 128, "memory": 256, "memoryReservation": 128},
            {"name": "b", "image": "i", "cpu": 64, "memory": 64},
        ],
    )
    web_service, worker_service = unique("web"), unique("worker")
    ecs.create_service(
        cluster=cluster, serviceName=web_service, taskDefinition=web_family, desiredCount=2
    )
    deployment = ecs.create_service(
        cluster=cluster, serviceName=worker_service, taskDefinition=worker_family, desiredCount=1
    )["service"]["deployments"][0]["id"]
    web_tasks = ecs.run_task(
        cluster=cluster, taskDefinition=web_family, count=2, group=f"service:{web_service}"
    )["tasks"]
    [worker_task] = ecs.run_task(
        cluster=cluster, taskDefinition=worker_family, startedBy=deployment
    )["tasks"]
    [lone_task] = ecs.run_task(cluster=cluster, taskDefinition=worker_family)["tasks"]
    unknown = f"arn:aws:ecs:us-east-1:123456789012:task/{cluster}/0123456789abcdef"
    registered_cpu, registered_memory = 2048, 3000  # total_resources()
    # (task, [(container, cpu sum, cpu samples, memory sum, memory samples)])
    sent = [
        (web_tasks[0]["taskArn"], [("web", 190.0, 19, 800, 20), ("side", 19.0, 19, 200, 20)]),
        (web_tasks[1]["taskArn"], [("web", 57.0, 19, 1000, 20), ("side", 0.0, 19, 100, 20)]),
        (worker_task["taskArn"], [("a", 300.0, 20, 2000, 20), ("b", 40.0, 20, 400, 20)]),
        (lone_task["taskArn"], [("a", 100.0, 20, 1200, 20), ("b", 20.0, 20, 200, 20)]),
        (unknown, [("x", 500.0, 5, 500, 5)]),
    ]

    def used(task_arn):
        containers = next(c for arn, c in sent if arn == task_arn)
        cpu = sum(s / n / 100 * registered_cpu for _, s, n, _, _ in containers)
        memory = sum(s / n for _, _, _, s, n in containers)
        return cpu, memory

    stamp = round(time.time(), 3)
    message = {
        "metadata": {
            "cluster": cluster,
            "containerInstance": instance_arn,
            "idle": False,
            "messageId": str(uuid.uuid4()),
            "fin": True,
        },
        "taskMetrics": [
            {
                "taskArn": arn,
                "taskDefinitionFamily": "f",
                "taskDefinitionVersion": "1",
                "containerMetrics": [container_metrics(*c) for c in containers],
            }
            for arn, containers in sent
        ],
        "timestamp": stamp,
    }
    health = {
        "metadata": {"cluster": cluster, "containerInstance": instance_arn, "fin": True},
        "tasks": [
            {
                "taskArn": web_tasks[0]["taskArn"],
                "taskDefinitionFamily": web_family,
                "taskDefinitionVersion": "1",
                "containers": [
                    {"containerName": "web", "healthStatus": "UNHEALTHY", "statusSince": stamp}
                ],
            }
        ],
        "timestamp": stamp,
    }

    async def scenario():
        async with tcs_connect(sim, cluster, instance_arn) as ws:
            await ws.send(tcs_frame("PublishMetricsRequest", message))
            await next_frame(ws, "AckPublishMetric")
            await ws.send(tcs_frame("PublishHealthRequest", health))
            await next_frame(ws, "AckPublishHealth")

    asyncio.run(scenario())

    expected = {}
    web_used = [used(t["taskArn"]) for t in web_tasks]
    expected[(web_service, "CPUUtilization")] = sum(c for c, _ in web_used) * 100 / (512 * 2)
    expected[(web_service, "MemoryUtilization")] = sum(m for _, m in web_used) * 100 / (1024 * 2)
    worker_cpu, worker_memory = used(worker_task["taskArn"])
    expected[(worker_service, "CPUUtilization")] = worker_cpu * 100 / (128 + 64)
    expected[(worker_service, "MemoryUtilization")] = worker_memory * 100 / (128 + 64)
    every = [used(arn) for arn, _ in sent[:4]]
    expected[(None, "CPUUtilization")] = sum(c for c, _ in every) * 100 / registered_cpu
    expected[(None, "MemoryUtilization")] = sum(m for _, m in every) * 100 / registered_memory

    cloudwatch = sim.client("cloudwatch")
    start = datetime.datetime.fromtimestamp(stamp - 60, tz=datetime.UTC)
    end = datetime.datetime.fromtimestamp(stamp + 60, tz=datetime.UTC)
    for (service, metric), value in expected.items():
        dimensions = [{"Name": "ClusterName", "Value": cluster}]
        if service is None:
            # moto's GetMetricStatistics also matches datums with more dimensions; GetMetricData
            # matches them exactly, as CloudWatch does.
            result = cloudwatch.get_metric_data(
                MetricDataQueries=[
                    {
                        "Id": "q",
                        "MetricStat": {
                            "Metric": {
                                "Namespace": "AWS/ECS",
                                "MetricName": metric,
                                "Dimensions": dimensions,
                            },
                            "Period": 60,
                            "Stat": "Average",
                        },
                    }
                ],
                StartTime=start,
                EndTime=end,
            )["MetricDataResults"][0]
            assert result["Values"] == [pytest.approx(value)], (metric, result)
            continue
        dimensions.append({"Name": "ServiceName", "Value": service})
        points = cloudwatch.get_metric_statistics(
            Namespace="AWS/ECS",
            MetricName=metric,
            Dimensions=dimensions,
            StartTime=start,
            EndTime=end,
            Period=60,
            Statistics=["Average", "SampleCount"],
        )["Datapoints"]
        assert len(points) == 1, (service, metric, points)
        assert points[0]["Average"] == pytest.approx(value) and points[0]["Unit"] == "Percent"
        assert points[0]["SampleCount"] == 1
        assert points[0]["Timestamp"].timestamp() == pytest.approx(stamp, abs=1)
    listed = cloudwatch.list_metrics(Namespace="AWS/ECS", MetricName="CPUUtilization")["Metrics"]
    mine = sorted(
        tuple(sorted((d["Name"], d["Value"]) for d in m["Dimensions"]))
        for m in listed
        if {"Name": "ClusterName", "Value": cluster} in m["Dimensions"]
    )
    assert mine == sorted(
        [
            (("ClusterName", cluster),),
            (("ClusterName", cluster), ("ServiceName", web_service)),
            (("ClusterName", cluster), ("ServiceName", worker_service)),
        ]
    )
    [derived] = sim.control("GET", "/tcs/metrics?instance=" + quote(instance_arn))["metrics"]
    assert derived["timestamp"] == stamp and len(derived["datums"]) == 6
    assert [s["task_arn"] for s in derived["skipped"]] == [unknown]
    assert "moto knows no task" in derived["skipped"][0]["reason"]

    [reported] = sim.control("GET", "/tcs/health?instance=" + quote(instance_arn))["health"]
    assert reported["task_arn"] == web_tasks[0]["taskArn"] and reported["container_name"] == "web"
    assert reported["health_status"] == "UNHEALTHY" and reported["status_since"] == stamp
    described = ecs.describe_tasks(cluster=cluster, tasks=[web_tasks[0]["taskArn"]])["tasks"][0]
    assert described["healthStatus"] == "UNHEALTHY"
    web = next(c for c in described["containers"] if c["name"] == "web")
    assert web["healthStatus"] == "UNHEALTHY"


def test_draining_stops_only_service_tasks(sim):
    ecs, cluster, instance_arn, family = setup_cluster(sim)

    async def scenario():
        async with acs_connect(sim, cluster, instance_arn) as ws:
            service = (
                await asyncio.to_thread(
                    ecs.run_task, cluster=cluster, taskDefinition=family, startedBy="ecs-svc/123"
                )
            )["tasks"][0]
            await ack(ws, await next_frame(ws, "PayloadMessage"))
            standalone = (
                await asyncio.to_thread(ecs.run_task, cluster=cluster, taskDefinition=family)
            )["tasks"][0]
            await ack(ws, await next_frame(ws, "PayloadMessage"))
            await asyncio.to_thread(
                ecs.update_container_instances_state,
                cluster=cluster,
                containerInstances=[instance_arn],
                status="DRAINING",
            )
            stop = await next_frame(ws, "PayloadMessage")
            assert [(t["arn"], t["desiredStatus"]) for t in stop["tasks"]] == [
                (service["taskArn"], "STOPPED")
            ]
            return service, standalone

    service, standalone = asyncio.run(scenario())
    described = {
        t["taskArn"]: t
        for t in ecs.describe_tasks(
            cluster=cluster, tasks=[service["taskArn"], standalone["taskArn"]]
        )["tasks"]
    }
    assert described[service["taskArn"]]["desiredStatus"] == "STOPPED"
    assert described[standalone["taskArn"]]["desiredStatus"] == "RUNNING"


def test_task_queued_while_agent_offline_is_delivered_on_connect(sim):
    ecs, cluster, instance_arn, family = setup_cluster(sim)
    task = ecs.run_task(cluster=cluster, taskDefinition=family)["tasks"][0]

    async def scenario():
        async with acs_connect(sim, cluster, instance_arn) as ws:
            message = await next_frame(ws, "PayloadMessage")
            assert message["tasks"][0]["arn"] == task["taskArn"]

    asyncio.run(scenario())


# ---- Auto Scaling


TOKEN = "bcd2f1b8-9a78-44d3-8a7a-4dd07d7cf635"


def test_lifecycle_actions_recorded(sim):
    autoscaling = sim.client("autoscaling")
    autoscaling.record_lifecycle_action_heartbeat(
        LifecycleHookName="drain",
        AutoScalingGroupName="asg",
        InstanceId="i-1",
        LifecycleActionToken=TOKEN,
    )
    autoscaling.complete_lifecycle_action(
        LifecycleHookName="drain",
        AutoScalingGroupName="asg",
        InstanceId="i-1",
        LifecycleActionResult="CONTINUE",
    )
    actions = sim.control("GET", "/lifecycle-actions")["lifecycle_actions"][-2:]
    assert [a["operation"] for a in actions] == [
        "RecordLifecycleActionHeartbeat",
        "CompleteLifecycleAction",
    ]
    assert actions[1]["result"] == "CONTINUE" and actions[1]["instance_id"] == "i-1"
    assert actions[0]["token"] == TOKEN and actions[0]["hook_name"] == "drain"
    assert (
        autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"] == []
    )  # moto still answers


def test_run_task_failures(sim):
    ecs = sim.client("ecs")
    empty = unique("empty")
    ecs.create_cluster(clusterName=empty)
    family = unique("fam")
    ecs.register_task_definition(
        family=family, containerDefinitions=[{"name": "a", "image": "i", "memory": 2000}]
    )
    with pytest.raises(botocore.exceptions.ClientError) as err:
        ecs.run_task(cluster=empty, taskDefinition=family)
    assert err.value.response["Error"]["Code"] == "InvalidParameterException"
    _, cluster, instance_arn, _ = setup_cluster(sim)
    placed = ecs.run_task(cluster=cluster, taskDefinition=family)
    assert len(placed["tasks"]) == 1
    full = ecs.run_task(cluster=cluster, taskDefinition=family)
    assert full["tasks"] == []
    assert full["failures"] == [{"arn": instance_arn, "reason": "RESOURCE:MEMORY"}]
    task_arn = placed["tasks"][0]["taskArn"]
    ecs.stop_task(cluster=cluster, task=task_arn)
    ecs.stop_task(cluster=cluster, task=task_arn)  # idempotent: resources given back once
    described = ecs.describe_container_instances(cluster=cluster, containerInstances=[instance_arn])
    remaining = {r["name"]: r for r in described["containerInstances"][0]["remainingResources"]}
    assert remaining["MEMORY"]["integerValue"] == 3000


def test_task_definitions_carry_the_attributes_ecs_requires(sim):
    ecs = sim.client("ecs")
    plain = ecs.register_task_definition(
        family=unique("plain"),
        containerDefinitions=[{"name": "a", "image": "busybox", "memory": 32}],
    )["taskDefinition"]
    assert plain.get("requiresAttributes", []) == []
    family = unique("rich")
    ecs.register_task_definition(
        family=family,
        taskRoleArn="arn:aws:iam::123456789012:role/app",
        executionRoleArn="arn:aws:iam::123456789012:role/exec",
        networkMode="awsvpc",
        pidMode="task",
        cpu="256",
        memory="512",
        volumes=[
            {"name": "v", "dockerVolumeConfiguration": {"scope": "task", "driver": "local"}},
            {"name": "p", "dockerVolumeConfiguration": {"driver": "rexray/ebs:latest"}},
        ],
        containerDefinitions=[
            {
                "name": "app",
                "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/app:1",
                "memory": 128,
                "healthCheck": {"command": ["CMD", "true"]},
                "secrets": [
                    {"name": "A", "valueFrom": "/param"},
                    {
                        "name": "B",
                        "valueFrom": "arn:aws:secretsmanager:us-east-1:123456789012:secret:s",
                    },
                ],
                "logConfiguration": {
                    "logDriver": "awslogs",
                    "options": {"awslogs-group": "g"},
                    "secretOptions": [{"name": "k", "valueFrom": "/logkey"}],
                },
                "environmentFiles": [{"value": "arn:aws:s3:::b/e.env", "type": "s3"}],
                "dependsOn": [{"containerName": "side", "condition": "START"}],
                "privileged": True,
                "linuxParameters": {"initProcessEnabled": True},
            },
            {
                "name": "side",
                "image": "busybox",
                "memory": 32,
                "repositoryCredentials": {"credentialsParameter": "arn:aws:secretsmanager:x"},
                "ulimits": [{"name": "nofile", "softLimit": 1, "hardLimit": 2}],
            },
        ],
    )
    described = ecs.describe_task_definition(taskDefinition=family)["taskDefinition"]
    names = sorted(a["name"] for a in described["requiresAttributes"])
    legacy, current = "com.amazonaws.ecs.capability.", "ecs.capability."
    assert names == sorted(
        [
            legacy + "task-iam-role",
            legacy + "ecr-auth",
            legacy + "logging-driver.awslogs",
            legacy + "privileged-container",
            legacy + "docker-remote-api.1.18",
            legacy + "docker-remote-api.1.24",
            legacy + "docker-remote-api.1.25",
            current + "task-eni",
            current + "pid-ipc-namespace-sharing",
            current + "task-cpu-mem-limit",
            current + "docker-plugin.local",
            current + "docker-plugin.rexray/ebs.latest",
            current + "container-health-check",
            current + "secrets.ssm.environment-variables",
            current + "secrets.asm.environment-variables",
            current + "secrets.ssm.bootstrap.log-driver",
            current + "execution-role-awslogs",
            current + "execution-role-ecr-pull",
            current + "env-files.s3",
            current + "container-ordering",
            current + "private-registry-authentication.secretsmanager",
        ]
    )


def test_run_task_places_only_where_every_required_attribute_is(sim):
    ecs = sim.client("ecs")
    cluster = unique("attrs")
    ecs.create_cluster(clusterName=cluster)
    instance_arn = register(sim, cluster, new_instance_prefix(sim), attributes=[])[
        "containerInstanceArn"
    ]
    family = unique("health")
    ecs.register_task_definition(
        family=family,
        containerDefinitions=[
            {
                "name": "a",
                "image": "busybox",
                "memory": 32,
                "healthCheck": {"command": ["CMD", "true"]},
            }
        ],
    )
    # moto's PutAttributes finds an instance by its id, not its ARN.
    target = instance_arn.rsplit("/", 1)[-1]
    refused = ecs.run_task(cluster=cluster, taskDefinition=family)
    assert refused["tasks"] == []
    assert refused["failures"] == [{"arn": instance_arn, "reason": "ATTRIBUTE"}]
    # One of the two is not enough.
    ecs.put_attributes(
        cluster=cluster,
        attributes=[
            {
                "name": "ecs.capability.container-health-check",
                "targetId": target,
                "targetType": "container-instance",
            }
        ],
    )
    assert ecs.run_task(cluster=cluster, taskDefinition=family)["tasks"] == []
    ecs.put_attributes(
        cluster=cluster,
        attributes=[
            {
                "name": "com.amazonaws.ecs.capability.docker-remote-api.1.24",
                "targetId": target,
                "targetType": "container-instance",
            }
        ],
    )
    placed = ecs.run_task(cluster=cluster, taskDefinition=family)
    assert len(placed["tasks"]) == 1
    assert placed["tasks"][0]["containerInstanceArn"] == instance_arn


def hang_on_token(sim: Sim) -> None:
    """A token PUT that an IMDS timeout fault leaves hanging; the connection drop is expected."""
    with contextlib.suppress(OSError):
        sim.http("PUT", "/latest/api/token", b"", {TTL_HEADER: "60"}, timeout=30)


def test_sigterm_exits_promptly_with_open_connections(tmp_path):
    own = start_sim(tmp_path)
    try:
        own.control("POST", "/instances/default/imds", {"token_fault": "timeout"})
        hanging = threading.Thread(target=hang_on_token, args=(own,))
        hanging.start()
        url = f"ws://127.0.0.1:{own.port}/ws?cluster=c&containerInstance=i"

        async def scenario():
            headers = {"Authorization": FAKE_SIGV4, "X-Amz-Date": "20240101T000000Z"}
            async with websockets.connect(url, additional_headers=headers) as ws:
                await asyncio.sleep(0.2)
                started = time.monotonic()
                own.process.send_signal(signal.SIGTERM)
                with pytest.raises(websockets.exceptions.ConnectionClosed) as err:
                    await asyncio.wait_for(ws.recv(), 10)
                assert err.value.rcvd.code == 1001
                return started

        started = asyncio.run(scenario())
        assert own.process.wait(timeout=10) == 0
        # Shutdown takes SHUTDOWN_SECONDS (2 s) plus the interpreter's exit; the hanging token
        # request alone would hold it for HANG_SECONDS. 8 s leaves room for a loaded 2-core CI
        # machine (6.6 s seen with a release build beside it) and still tells the two apart.
        assert time.monotonic() - started < 8
        hanging.join(timeout=5)
    finally:
        if own.process.poll() is None:
            own.process.kill()


# ---- ECR


def test_ecr_token_encodes_the_configured_registry_and_records_the_access_key(sim):
    ecr_client = boto3.client(
        "ecr",
        endpoint_url=sim.base,
        region_name="us-east-1",
        aws_access_key_id="AKIDEXECROLE",
        aws_secret_access_key="secret",
        aws_session_token="session",
        config=botocore.config.Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )
    # Without a configured registry moto answers (its own token).
    assert sim.control("GET", "/ecr")["registry"] is None
    moto_token = ecr_client.get_authorization_token()["authorizationData"][0]
    assert base64.b64decode(moto_token["authorizationToken"]).startswith(b"AWS:")
    try:
        assert sim.http("POST", "/ec2sim/ecr", {"registry": "http://x/y"}, {})[0] == 400, (
            "scheme refused"
        )
        assert sim.http("POST", "/ec2sim/ecr", {"username": "a:b"}, {})[0] == 400
        state = sim.control(
            "POST", "/ecr", {"registry": "127.0.0.1:5999", "username": "AWS", "password": "pw:1"}
        )
        assert state["registry"] == "127.0.0.1:5999" and state["registry_id"] == "123456789012"
        sim.control("DELETE", "/requests")
        data = ecr_client.get_authorization_token()["authorizationData"][0]
        assert base64.b64decode(data["authorizationToken"]) == b"AWS:pw:1"
        assert data["proxyEndpoint"] == "https://127.0.0.1:5999"
        assert data["expiresAt"].timestamp() > time.time() + 3600
        [call] = sim.control("GET", "/requests?service=ecr&operation=GetAuthorizationToken")[
            "requests"
        ]
        assert call["access_key_id"] == "AKIDEXECROLE" and call["region"] == "us-east-1"
        # The secret and session token are never recorded.
        assert "secret" not in json.dumps(call) and "session" not in json.dumps(call)
    finally:
        sim.control("POST", "/ecr", {"registry": None, "password": ""})


def test_payload_gives_ecr_images_ecr_auth_data(sim):
    containers = [
        {"name": "ecr", "image": "127.0.0.1:5998/app/x:1", "memory": 32},
        {"name": "hub", "image": "library/busybox:1", "memory": 32, "essential": False},
        {
            "name": "real",
            "image": "210987654321.dkr.ecr.eu-west-1.amazonaws.com/r:1",
            "memory": 32,
            "essential": False,
        },
    ]
    with_role = "arn:aws:iam::123456789012:role/exec"
    sim.control("POST", "/ecr", {"registry": "127.0.0.1:5998", "password": "p"})
    try:
        for execution_role in (with_role, None):
            extra = {"executionRoleArn": execution_role} if execution_role else {}
            ecs, cluster, instance_arn, family = setup_cluster(sim, containers, **extra)

            async def scenario(ecs=ecs, cluster=cluster, instance_arn=instance_arn, family=family):
                async with acs_connect(sim, cluster, instance_arn) as ws:
                    await asyncio.to_thread(ecs.run_task, cluster=cluster, taskDefinition=family)
                    message = await next_frame(ws, "PayloadMessage")
                    await ack(ws, message)
                    return message["tasks"][0]

            task = asyncio.run(scenario())
            by_name = {c["name"]: c for c in task["containers"]}
            assert by_name["ecr"]["registryAuthentication"] == {
                "type": "ecr",
                "ecrAuthData": {
                    "region": "us-east-1",
                    "registryId": "123456789012",
                    "useExecutionRole": execution_role is not None,
                    "endpointOverride": sim.base,
                },
            }
            assert "registryAuthentication" not in by_name["hub"]
            real = by_name["real"]["registryAuthentication"]["ecrAuthData"]
            assert (real["registryId"], real["region"]) == ("210987654321", "eu-west-1")
            assert ("executionRoleCredentials" in task) == (execution_role is not None)
    finally:
        sim.control("POST", "/ecr", {"registry": None, "password": ""})


# ---- role credentials, STS, CloudWatch Logs

APP_ROLE = "arn:aws:iam::123456789012:role/app"
EXEC_ROLE = "arn:aws:iam::123456789012:role/service/exec"
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
ASIA_KEY = re.compile(r"^ASIA[0-9A-F]{16}$")


def client_with(sim: Sim, service: str, credentials: dict | None = None, **keys):
    """A boto3 client signing with ACS ``roleCredentials`` (or explicit keys)."""
    if credentials is not None:
        keys = {
            "aws_access_key_id": credentials["accessKeyId"],
            "aws_secret_access_key": credentials["secretAccessKey"],
            "aws_session_token": credentials["sessionToken"],
        }
    return boto3.client(
        service,
        endpoint_url=sim.base,
        region_name="us-east-1",
        config=botocore.config.Config(retries={"total_max_attempts": 1, "mode": "standard"}),
        **keys,
    )


def caller_arn(sim: Sim, credentials: dict | None = None, **keys) -> str:
    return client_with(sim, "sts", credentials, **keys).get_caller_identity()["Arn"]


def roles_cluster(sim: Sim):
    return setup_cluster(sim, taskRoleArn=APP_ROLE, executionRoleArn=EXEC_ROLE)


async def credentials_ack(ws, message_id: str, credentials: dict, expiration=None) -> None:
    ack_message = {
        "messageId": message_id,
        "credentialsId": credentials["credentialsId"],
        "expiration": expiration or credentials["expiration"],
    }
    await ws.send(json.dumps({"type": "IAMRoleCredentialsAckRequest", "message": ack_message}))


async def no_frame(ws, kind: str, seconds: float) -> None:
    """Fail if a frame of ``kind`` arrives within ``seconds``."""
    with contextlib.suppress(TimeoutError):
        frame = await next_frame(ws, kind, timeout=seconds)
        raise AssertionError(f"unexpected {kind}: {frame}")


def test_payload_credentials_and_sts_caller_identity_per_key(sim):
    ecs, cluster, instance_arn, family = roles_cluster(sim)
    prefix = new_instance_prefix(sim)

    async def scenario():
        async with acs_connect(sim, cluster, instance_arn) as ws:
            task = (await asyncio.to_thread(ecs.run_task, cluster=cluster, taskDefinition=family))[
                "tasks"
            ][0]
            message = await next_frame(ws, "PayloadMessage")
            await ack(ws, message)
            return task, message["tasks"][0]

    task, pushed = asyncio.run(scenario())
    task_id = task["taskArn"].rsplit("/", 1)[-1]
    app, execution = pushed["roleCredentials"], pushed["executionRoleCredentials"]
    assert (app["roleArn"], execution["roleArn"]) == (APP_ROLE, EXEC_ROLE)
    for credentials in (app, execution):
        assert ASIA_KEY.match(credentials["accessKeyId"]), credentials
        assert str(uuid.UUID(credentials["credentialsId"])) == credentials["credentialsId"]
        assert RFC3339_Z.match(credentials["expiration"]), credentials["expiration"]
        expires = datetime.datetime.fromisoformat(credentials["expiration"]).timestamp()
        assert 5 * 3600 < expires - time.time() <= 6 * 3600 + 5
    assert app["credentialsId"] != execution["credentialsId"]
    assert app["accessKeyId"] != execution["accessKeyId"]

    app_identity = client_with(sim, "sts", app).get_caller_identity()
    assert app_identity["Arn"] == f"arn:aws:sts::123456789012:assumed-role/app/{task_id}"
    assert app_identity["Account"] == "123456789012"
    assert re.match(r"^AROA[0-9A-Z]{17}:" + task_id + "$", app_identity["UserId"])
    assert caller_arn(sim, execution) == (f"arn:aws:sts::123456789012:assumed-role/exec/{task_id}")
    # ec2sim remembers whose each key is.
    [key] = sim.control("GET", f"/credentials/keys?access_key_id={execution['accessKeyId']}")[
        "keys"
    ]
    assert (key["role_arn"], key["task_arn"], key["role_type"], key["credentials_id"]) == (
        EXEC_ROLE,
        task["taskArn"],
        "TaskExecution",
        execution["credentialsId"],
    )

    # The instance role's keys from IMDS, and keys nobody issued: the instance profile's role.
    token = sim.token(prefix)
    status, _, body = sim.imds_get(
        "meta-data/iam/security-credentials/ec2sim-instance-role", token, prefix
    )
    assert status == 200
    imds = json.loads(body)
    instance_id = prefix.rsplit("/", 1)[-1]
    assert RFC3339_Z.match(imds["Expiration"])
    assert caller_arn(
        sim,
        aws_access_key_id=imds["AccessKeyId"],
        aws_secret_access_key=imds["SecretAccessKey"],
        aws_session_token=imds["Token"],
    ) == (f"arn:aws:sts::123456789012:assumed-role/ec2sim-instance-role/{instance_id}")
    default_id = sim.control("GET", "/instances/default")["instance_id"]
    assert caller_arn(sim, aws_access_key_id="AKIDNOBODY", aws_secret_access_key="x") == (
        f"arn:aws:sts::123456789012:assumed-role/ec2sim-instance-role/{default_id}"
    )
    # Keys moto issued are moto's to answer.
    assumed = client_with(
        sim, "sts", aws_access_key_id="AKIDTEST", aws_secret_access_key="x"
    ).assume_role(RoleArn=APP_ROLE, RoleSessionName="moto-session")["Credentials"]
    assert caller_arn(
        sim,
        aws_access_key_id=assumed["AccessKeyId"],
        aws_secret_access_key=assumed["SecretAccessKey"],
        aws_session_token=assumed["SessionToken"],
    ).endswith("/app/moto-session")
    calls = sim.control("GET", "/requests?service=sts&operation=GetCallerIdentity")["requests"]
    assert app["accessKeyId"] in [c["access_key_id"] for c in calls]


def test_credentials_refresh_on_request_keeps_the_id_and_records_acks(sim):
    ecs, cluster, instance_arn, family = roles_cluster(sim)

    async def scenario():
        async with acs_connect(sim, cluster, instance_arn, send_credentials=False) as ws:
            task = (await asyncio.to_thread(ecs.run_task, cluster=cluster, taskDefinition=family))[
                "tasks"
            ][0]
            payload_message = await next_frame(ws, "PayloadMessage")
            await ack(ws, payload_message)
            pushed = payload_message["tasks"][0]
            for key in ("roleCredentials", "executionRoleCredentials"):
                await credentials_ack(ws, payload_message["messageId"], pushed[key])
            # The instance defaults to the task's.
            sent = await asyncio.to_thread(
                sim.control,
                "POST",
                "/acs/credentials",
                {"task_arn": task["taskArn"], "role_type": "TaskExecution"},
            )
            refresh = await next_frame(ws, "IAMRoleCredentialsMessage")
            await credentials_ack(ws, refresh["messageId"], refresh["roleCredentials"])
            # A second refresh, acked with the wrong expiration.
            await asyncio.to_thread(
                sim.control,
                "POST",
                "/acs/credentials",
                {"container_instance_arn": instance_arn, "task_arn": task["taskArn"]},
            )
            again = await next_frame(ws, "IAMRoleCredentialsMessage")
            await credentials_ack(ws, again["messageId"], again["roleCredentials"], "2000-01-01")
            await asyncio.sleep(0.3)
            return task, payload_message, sent, refresh, again

    task, payload_message, sent, refresh, again = asyncio.run(scenario())
    pushed = payload_message["tasks"][0]
    old, new = pushed["executionRoleCredentials"], refresh["roleCredentials"]
    assert refresh["taskArn"] == task["taskArn"] and refresh["roleType"] == "TaskExecution"
    assert refresh["taskClusterArn"] == task["clusterArn"]
    assert new["credentialsId"] == old["credentialsId"] and new["roleArn"] == EXEC_ROLE
    for secret in ("accessKeyId", "secretAccessKey", "sessionToken"):
        assert new[secret] != old[secret]
    assert ASIA_KEY.match(new["accessKeyId"]) and RFC3339_Z.match(new["expiration"])
    assert sent["message_id"] == refresh["messageId"]
    assert sent["credentials_id"] == old["credentialsId"]
    assert sent["access_key_id"] == new["accessKeyId"]
    assert again["roleType"] == "TaskApplication"
    assert again["roleCredentials"]["credentialsId"] == pushed["roleCredentials"]["credentialsId"]
    # Old and new keys both identify the role (old STS keys stay valid until they expire).
    task_id = task["taskArn"].rsplit("/", 1)[-1]
    for credentials in (old, new):
        assert caller_arn(sim, credentials).endswith(f"assumed-role/exec/{task_id}")

    record = sim.control("GET", f"/acs/credentials?task_arn={task['taskArn']}")
    assert [(m["message_id"], m["reason"], m["acked"]) for m in record["messages"]] == [
        (refresh["messageId"], "control", True),
        (again["messageId"], "control", True),
    ]
    acks = {(a["message_id"], a["credentials_id"]): a for a in record["acks"]}
    assert len(acks) == 4
    execution_id = old["credentialsId"]
    payload_ack = acks[(payload_message["messageId"], execution_id)]
    assert payload_ack["answers"] == "PayloadMessage" and payload_ack["matches"] is True
    refresh_ack = acks[(refresh["messageId"], execution_id)]
    assert refresh_ack["answers"] == "IAMRoleCredentialsMessage" and refresh_ack["matches"]
    assert refresh_ack["expiration"] == new["expiration"]
    wrong = acks[(again["messageId"], again["roleCredentials"]["credentialsId"])]
    assert wrong["matches"] is False
    frames = sim.control(
        "GET",
        f"/acs/received?type=IAMRoleCredentialsAckRequest&container_instance_arn={instance_arn}",
    )["frames"]
    assert len(frames) == 4 and all(f["session"] for f in frames)

    sets = sim.control("GET", f"/credentials?task_arn={task['taskArn']}")["sets"]
    [execution_set] = [s for s in sets if s["role_type"] == "TaskExecution"]
    assert execution_set["refreshes"] == 1 and len(sets) == 2
    assert execution_set["access_key_ids"] == [old["accessKeyId"], new["accessKeyId"]]
    assert execution_set["credentials"]["accessKeyId"] == new["accessKeyId"]

    def post(body):
        return sim.http(
            "POST", "/ec2sim/acs/credentials", body, {"Content-Type": "application/json"}
        )[0]

    assert post({"task_arn": task["taskArn"], "role_type": "Nope"}) == 400
    assert post({"role_type": "TaskApplication"}) == 400
    assert post({"task_arn": task["taskArn"]}) == 409  # the session is gone


def test_credentials_refresh_every_half_lifetime(sim):
    ecs, cluster, instance_arn, family = roles_cluster(sim)
    sim.control("POST", "/credentials", {"lifetime": 2})
    try:

        async def scenario():
            async with acs_connect(sim, cluster, instance_arn) as ws:
                await asyncio.to_thread(ecs.run_task, cluster=cluster, taskDefinition=family)
                message = await next_frame(ws, "PayloadMessage")
                started = time.monotonic()
                await ack(ws, message)
                first = await next_frame(ws, "IAMRoleCredentialsMessage", timeout=3)
                second = await next_frame(ws, "IAMRoleCredentialsMessage", timeout=3)
                return message["tasks"][0], [first, second], time.monotonic() - started

        pushed, refreshes, elapsed = asyncio.run(scenario())
    finally:
        sim.control("POST", "/credentials", {"lifetime": 21600})
    assert 0.5 < elapsed < 3
    by_type = {r["roleType"]: r["roleCredentials"] for r in refreshes}
    for role_type, key in (
        ("TaskApplication", "roleCredentials"),
        ("TaskExecution", "executionRoleCredentials"),
    ):
        assert by_type[role_type]["credentialsId"] == pushed[key]["credentialsId"]
        assert by_type[role_type]["accessKeyId"] != pushed[key]["accessKeyId"]
        expires = datetime.datetime.fromisoformat(by_type[role_type]["expiration"]).timestamp()
        assert expires - time.time() < 3
    reasons = [
        m["reason"]
        for m in sim.control("GET", "/acs/credentials")["messages"]
        if m["task_arn"] == pushed["arn"]
    ]
    assert reasons[:2] == ["refresh", "refresh"]
    config = sim.control("GET", "/credentials")
    assert config["lifetime"] == 21600 and config["auto_refresh"] is True
    assert sim.http("POST", "/ec2sim/credentials", {"lifetime": 0}, {})[0] == 400


def test_send_credentials_true_resends_every_live_task(sim):
    ecs, cluster, instance_arn, family = roles_cluster(sim)
    plain = unique("plain")
    ecs.register_task_definition(
        family=plain, containerDefinitions=[{"name": "a", "image": "i", "memory": 16}]
    )

    async def deliver(ws, definition):
        task = (await asyncio.to_thread(ecs.run_task, cluster=cluster, taskDefinition=definition))[
            "tasks"
        ][0]
        message = await next_frame(ws, "PayloadMessage")
        await ack(ws, message)
        return task, message["tasks"][0]

    async def scenario():
        async with acs_connect(sim, cluster, instance_arn, send_credentials=False) as ws:
            live, live_pushed = await deliver(ws, family)
            stopped, _ = await deliver(ws, family)
            await deliver(ws, plain)
            await asyncio.to_thread(
                ecs.submit_task_state_change,
                cluster=cluster,
                task=stopped["taskArn"],
                status="STOPPED",
            )
            await no_frame(ws, "IAMRoleCredentialsMessage", 0.5)
        async with acs_connect(sim, cluster, instance_arn, send_credentials=False) as ws:
            await no_frame(ws, "IAMRoleCredentialsMessage", 0.5)
        async with acs_connect(sim, cluster, instance_arn, send_credentials=True) as ws:
            resent = [await next_frame(ws, "IAMRoleCredentialsMessage") for _ in range(2)]
            await no_frame(ws, "IAMRoleCredentialsMessage", 0.5)
        return live, live_pushed, resent

    live, live_pushed, resent = asyncio.run(scenario())
    assert {(m["taskArn"], m["roleType"]) for m in resent} == {
        (live["taskArn"], "TaskApplication"),
        (live["taskArn"], "TaskExecution"),
    }
    by_type = {m["roleType"]: m["roleCredentials"] for m in resent}
    # The current credentials, again (no refresh was due).
    assert by_type["TaskApplication"] == live_pushed["roleCredentials"]
    assert by_type["TaskExecution"] == live_pushed["executionRoleCredentials"]
    assert all(m["taskClusterArn"] == live["clusterArn"] for m in resent)
    reasons = {
        m["reason"]
        for m in sim.control("GET", f"/acs/credentials?task_arn={live['taskArn']}")["messages"]
    }
    assert reasons == {"sendCredentials"}


def test_cloudwatch_logs_round_trip(sim):
    logs = client_with(
        sim,
        "logs",
        aws_access_key_id="ASIALOGSTEST0001",
        aws_secret_access_key="x",
        aws_session_token="t",
    )
    group, stream = unique("/ecs/app"), "app/web/0123"
    sim.control("DELETE", "/requests")
    logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName=stream)
    now = int(time.time() * 1000)
    logs.put_log_events(
        logGroupName=group,
        logStreamName=stream,
        logEvents=[{"timestamp": now, "message": "hello"}, {"timestamp": now + 1, "message": "2"}],
    )
    events = logs.get_log_events(logGroupName=group, logStreamName=stream, startFromHead=True)
    assert [e["message"] for e in events["events"]] == ["hello", "2"]
    [described] = logs.describe_log_streams(logGroupName=group)["logStreams"]
    assert described["logStreamName"] == stream
    with pytest.raises(botocore.exceptions.ClientError) as err:
        logs.create_log_stream(logGroupName=unique("/missing"), logStreamName="s")
    assert err.value.response["Error"]["Code"] == "ResourceNotFoundException"
    calls = sim.control("GET", "/requests?service=logs")["requests"]
    assert [c["operation"] for c in calls] == [
        "CreateLogGroup",
        "CreateLogStream",
        "PutLogEvents",
        "GetLogEvents",
        "DescribeLogStreams",
        "CreateLogStream",
    ]
    assert {c["access_key_id"] for c in calls} == {"ASIALOGSTEST0001"}


def test_payload_container_arns_and_execution_role_awslogs(sim):
    options = {
        "awslogs-group": "/ecs/app",
        "awslogs-region": "us-east-1",
        "awslogs-stream-prefix": "ecs",
        "awslogs-create-group": "true",
    }
    containers = [
        {
            "name": "web",
            "image": "i",
            "memory": 32,
            "logConfiguration": {"logDriver": "awslogs", "options": options},
        },
        {
            "name": "side",
            "image": "i",
            "memory": 32,
            "essential": False,
            "logConfiguration": {"logDriver": "json-file"},
        },
    ]
    ecs, cluster, instance_arn, family = setup_cluster(sim, containers, executionRoleArn=EXEC_ROLE)

    async def scenario():
        async with acs_connect(sim, cluster, instance_arn) as ws:
            task = (await asyncio.to_thread(ecs.run_task, cluster=cluster, taskDefinition=family))[
                "tasks"
            ][0]
            message = await next_frame(ws, "PayloadMessage")
            await ack(ws, message)
            return task, message["tasks"][0]

    task, pushed = asyncio.run(scenario())
    described = {c["name"]: c["containerArn"] for c in task["containers"]}
    by_name = {c["name"]: c for c in pushed["containers"]}
    assert {n: c["containerArn"] for n, c in by_name.items()} == described
    assert by_name["web"]["logsAuthStrategy"] == "ExecutionRole"
    assert "logsAuthStrategy" not in by_name["side"]
    log_config = json.loads(by_name["web"]["dockerConfig"]["hostConfig"])["LogConfig"]
    task_id = task["taskArn"].rsplit("/", 1)[-1]
    assert log_config == {
        "Type": "awslogs",
        "Config": {
            "awslogs-group": "/ecs/app",
            "awslogs-region": "us-east-1",
            "awslogs-create-group": "true",
            "awslogs-stream": f"ecs/web/{task_id}",
        },
    }
    assert "roleCredentials" not in pushed and "executionRoleCredentials" in pushed


# ---- SSM Parameter Store, Secrets Manager, S3 (a task's secrets and environment files)

ACCOUNT = "123456789012"


def ssm_arn(region: str, name: str) -> str:
    return f"arn:aws:ssm:{region}:{ACCOUNT}:parameter/{name.lstrip('/')}"


def client_error(call, *args, **kwargs) -> dict:
    """The ``response`` of the ClientError that ``call(*args, **kwargs)`` must raise."""
    with pytest.raises(botocore.exceptions.ClientError) as err:
        call(*args, **kwargs)
    return err.value.response


def sigv4(region: str, service: str = "s3", key: str = "AKIDRAWS3") -> dict:
    """Headers of a SigV4-signed request (ec2sim, like moto, checks no signature)."""
    return {
        "Authorization": f"AWS4-HMAC-SHA256 Credential={key}/20240101/{region}/{service}/"
        "aws4_request, SignedHeaders=host;x-amz-date, Signature=" + "ab" * 32,
        "X-Amz-Date": "20240101T000000Z",
        "Content-Type": "application/octet-stream",
    }


def test_ssm_get_parameters_echoes_requested_names_and_arns(sim):
    region = "eu-central-1"  # any region: parameters live in the region of the signature
    ssm = sim.client("ssm", region)
    plain, path = unique("plain"), f"/{unique('app')}/db/password"
    ssm.put_parameter(Name=plain, Value="v1", Type="String")
    ssm.put_parameter(Name=path, Value="first", Type="SecureString")
    ssm.put_parameter(Name=path, Value="second", Type="SecureString", Overwrite=True)
    wrong_region = ssm_arn("us-east-1", plain)
    requested = [
        plain,
        ssm_arn(region, plain),
        ssm_arn(region, path),
        f"{path}:1",
        f"{ssm_arn(region, path)}:2",
        plain,  # asked twice, answered once
        "missing",
        ssm_arn(region, "missing"),
        wrong_region,
    ]
    reply = ssm.get_parameters(Names=requested, WithDecryption=True)
    got = [(p["Name"], p.get("Selector"), p["Value"], p["Version"]) for p in reply["Parameters"]]
    assert got == [
        (plain, None, "v1", 1),
        (ssm_arn(region, plain), None, "v1", 1),
        (ssm_arn(region, path), None, "second", 2),
        (path, ":1", "first", 1),
        (ssm_arn(region, path), ":2", "second", 2),
    ]
    arns = {p["ARN"] for p in reply["Parameters"]}
    assert arns == {ssm_arn(region, plain), ssm_arn(region, path)}
    assert reply["InvalidParameters"] == ["missing", ssm_arn(region, "missing"), wrong_region]
    # SecureString values are plain only WithDecryption.
    [hidden] = ssm.get_parameters(Names=[path])["Parameters"]
    assert hidden["Type"] == "SecureString" and hidden["Value"] != "second"
    # Other regions do not see them.
    assert sim.client("ssm").get_parameters(Names=[plain])["InvalidParameters"] == [plain]
    too_many = client_error(ssm.get_parameters, Names=[f"p{i}" for i in range(11)])
    assert too_many["Error"]["Code"] == "ValidationException"


def test_secrets_manager_versions_stages_and_errors(sim):
    sm = sim.client("secretsmanager", "eu-west-1")
    name = unique("prod/db")
    created = sm.create_secret(Name=name, SecretString="one")
    arn = created["ARN"]
    assert arn.startswith(f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:{name}-")
    two = sm.put_secret_value(SecretId=arn, SecretString="two", VersionStages=["AWSCURRENT"])
    staged_id = str(uuid.uuid4())
    staged = sm.put_secret_value(
        SecretId=name, SecretString="three", VersionStages=["blue"], ClientRequestToken=staged_id
    )
    assert staged["VersionId"] == staged_id and staged["VersionStages"] == ["blue"]

    def value(**query):
        reply = sm.get_secret_value(**query)
        return reply["SecretString"], reply["VersionId"], reply["VersionStages"], reply["ARN"]

    current = ("two", two["VersionId"], ["AWSCURRENT"], arn)
    assert value(SecretId=arn) == current
    assert value(SecretId=name) == current
    assert value(SecretId=arn.rsplit("-", 1)[0]) == current  # partial ARN
    assert value(SecretId=arn, VersionStage="AWSPREVIOUS")[:3] == (
        "one",
        created["VersionId"],
        ["AWSPREVIOUS"],
    )
    assert value(SecretId=arn, VersionStage="blue")[:2] == ("three", staged_id)
    assert value(SecretId=arn, VersionId=staged_id)[:2] == ("three", staged_id)

    not_found = "Secrets Manager can't find the specified secret."
    for secret_id in ("missing", f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:x-AbCdEf"):
        error = client_error(sm.get_secret_value, SecretId=secret_id)
        assert error["Error"] == {"Code": "ResourceNotFoundException", "Message": not_found}
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    # A secret of another region is not found from this one.
    other = client_error(sim.client("secretsmanager").get_secret_value, SecretId=arn)
    assert other["Error"]["Code"] == "ResourceNotFoundException"
    stage = client_error(sm.get_secret_value, SecretId=arn, VersionStage="green")["Error"]
    assert stage["Message"].endswith("for staging label: green")
    unknown_id = str(uuid.uuid4())
    version = client_error(sm.get_secret_value, SecretId=arn, VersionId=unknown_id)["Error"]
    assert version["Code"] == "ResourceNotFoundException"
    assert version["Message"].endswith(f"for VersionId: {unknown_id}")


def test_s3_objects_bucket_region_and_recorded_operations(sim):
    bucket = unique("envfiles")
    s3 = sim.client("s3", "eu-west-1")
    sim.control("DELETE", "/requests")
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_object(Bucket=bucket, Key="app/prod.env", Body=b"A=1\nB=two words\n")
    assert s3.get_object(Bucket=bucket, Key="app/prod.env")["Body"].read() == (
        b"A=1\nB=two words\n"
    )
    head = s3.head_bucket(Bucket=bucket)
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-amz-bucket-region"] == "eu-west-1"
    assert head["BucketRegion"] == "eu-west-1"
    # GetBucketLocation answers from any region.
    location = sim.client("s3").get_bucket_location(Bucket=bucket)
    assert location["LocationConstraint"] == "eu-west-1"

    # Signed for another region than the bucket's: what S3 answers (boto3 follows it by itself).
    status, headers, body = sim.http("GET", f"/{bucket}/app/prod.env", headers=sigv4("us-east-1"))
    assert status == 400 and headers["x-amz-bucket-region"] == "eu-west-1"
    assert b"<Code>AuthorizationHeaderMalformed</Code>" in body
    assert b"<Region>eu-west-1</Region>" in body
    status, headers, body = sim.http("HEAD", f"/{bucket}", headers=sigv4("us-east-1"))
    assert (status, headers["x-amz-bucket-region"], body) == (400, "eu-west-1", b"")
    assert sim.http("HEAD", f"/{unique('nobucket')}", headers=sigv4("eu-west-1"))[0] == 404
    redirected = sim.client("s3").get_object(Bucket=bucket, Key="app/prod.env")
    assert redirected["Body"].read().startswith(b"A=1")

    # Bodies as other clients send them: aws-chunked with a trailing checksum (boto3 over TLS,
    # the Rust SDK), SigV4-signed chunks, UNSIGNED-PAYLOAD.
    uploads = {
        "trailer.env": (
            b"4\r\nC=3\n\r\n4\r\nD=4\n\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n",
            {
                "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
                "x-amz-trailer": "x-amz-checksum-crc32",
                "x-amz-decoded-content-length": "8",
                "Content-Encoding": "aws-chunked",
            },
        ),
        "chunks.env": (
            b"4;chunk-signature="
            + b"0" * 64
            + b"\r\nC=3\n\r\n0;chunk-signature="
            + b"0" * 64
            + b"\r\n\r\n",
            {
                "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
                "x-amz-decoded-content-length": "4",
                "Content-Encoding": "aws-chunked",
            },
        ),
        "unsigned.env": (b"E=5\n", {"x-amz-content-sha256": "UNSIGNED-PAYLOAD"}),
    }
    for key, (body, extra) in uploads.items():
        status, _, reply = sim.http("PUT", f"/{bucket}/{key}", body, sigv4("eu-west-1") | extra)
        assert status == 200, reply
    read = {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in uploads}
    assert read == {"trailer.env": b"C=3\nD=4\n", "chunks.env": b"C=3\n", "unsigned.env": b"E=5\n"}
    # Virtual-hosted style on <bucket>.localhost, and a SigV4-presigned URL.
    status, _, body = sim.http(
        "GET", "/unsigned.env", headers=sigv4("eu-west-1") | {"Host": f"{bucket}.localhost"}
    )
    assert (status, body) == (200, b"E=5\n")
    url = boto3.client(
        "s3",
        endpoint_url=sim.base,
        region_name="eu-west-1",
        aws_access_key_id="AKIDPRESIGNED",
        aws_secret_access_key="x",
        config=botocore.config.Config(signature_version="s3v4"),
    ).generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "chunks.env"})
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == b"C=3\n"

    calls = sim.control("GET", "/requests?service=s3")["requests"]
    assert [(c["operation"], c["region"], c["access_key_id"]) for c in calls] == [
        ("CreateBucket", "eu-west-1", "AKIDTEST"),
        ("PutObject", "eu-west-1", "AKIDTEST"),
        ("GetObject", "eu-west-1", "AKIDTEST"),
        ("HeadBucket", "eu-west-1", "AKIDTEST"),
        ("GetBucketLocation", "us-east-1", "AKIDTEST"),
        ("GetObject", "us-east-1", "AKIDRAWS3"),
        ("HeadBucket", "us-east-1", "AKIDRAWS3"),
        ("HeadBucket", "eu-west-1", "AKIDRAWS3"),
        ("GetObject", "us-east-1", "AKIDTEST"),  # boto3 follows the 400 ...
        ("GetObject", "eu-west-1", "AKIDTEST"),  # ... to the bucket's region
        ("PutObject", "eu-west-1", "AKIDRAWS3"),
        ("PutObject", "eu-west-1", "AKIDRAWS3"),
        ("PutObject", "eu-west-1", "AKIDRAWS3"),
        ("GetObject", "eu-west-1", "AKIDTEST"),
        ("GetObject", "eu-west-1", "AKIDTEST"),
        ("GetObject", "eu-west-1", "AKIDTEST"),
        ("GetObject", "eu-west-1", "AKIDRAWS3"),
        ("GetObject", "eu-west-1", "AKIDPRESIGNED"),
    ]
    assert calls[1]["body"] == {"Bucket": bucket, "Key": "app/prod.env"}
    assert calls[-1]["protocol"] == "rest-xml"
    gets = sim.control("GET", "/requests?service=s3&operation=GetObject")["requests"]
    assert len(gets) == 9


def test_execution_role_reads_are_recorded_and_denied_per_resource(sim):
    ecs, cluster, instance_arn, family = setup_cluster(sim, executionRoleArn=EXEC_ROLE)

    async def scenario():
        async with acs_connect(sim, cluster, instance_arn) as ws:
            task = (await asyncio.to_thread(ecs.run_task, cluster=cluster, taskDefinition=family))[
                "tasks"
            ][0]
            message = await next_frame(ws, "PayloadMessage")
            await ack(ws, message)
            return task, message["tasks"][0]["executionRoleCredentials"]

    task, execution = asyncio.run(scenario())
    caller = f"arn:aws:sts::{ACCOUNT}:assumed-role/exec/{task['taskArn'].rsplit('/', 1)[-1]}"
    # The test seeds with its own keys; the "agent" reads with the execution role's.
    param, other_param = f"/{unique('svc')}/token", unique("flag")
    sim.client("ssm").put_parameter(Name=param, Value="t0k3n", Type="SecureString")
    sim.client("ssm").put_parameter(Name=other_param, Value="on", Type="String")
    secret = sim.client("secretsmanager").create_secret(Name=unique("db"), SecretString="pw")
    other_secret = sim.client("secretsmanager").create_secret(Name=unique("api"), SecretString="k")
    bucket = unique("env")
    sim.client("s3").create_bucket(Bucket=bucket)
    for key in ("task.env", "other.env"):
        sim.client("s3").put_object(Bucket=bucket, Key=key, Body=b"X=1\n")
    ssm = client_with(sim, "ssm", execution)
    sm = client_with(sim, "secretsmanager", execution)
    s3 = client_with(sim, "s3", execution)
    sim.control("DELETE", "/requests")
    assert (
        ssm.get_parameters(Names=[ssm_arn("us-east-1", param)], WithDecryption=True)["Parameters"][
            0
        ]["Value"]
        == "t0k3n"
    )
    assert sm.get_secret_value(SecretId=secret["ARN"])["SecretString"] == "pw"
    assert s3.get_object(Bucket=bucket, Key="task.env")["Body"].read() == b"X=1\n"
    key_id = execution["accessKeyId"]
    for service, operation in (
        ("ssm", "GetParameters"),
        ("secretsmanager", "GetSecretValue"),
        ("s3", "GetObject"),
    ):
        [call] = sim.control("GET", f"/requests?service={service}&operation={operation}")[
            "requests"
        ]
        assert call["access_key_id"] == key_id, call
    [key] = sim.control("GET", f"/credentials/keys?access_key_id={key_id}")["keys"]
    assert (key["role_type"], key["task_arn"]) == ("TaskExecution", task["taskArn"])

    # Per-resource denials: by name or ARN, '*' patterns; other resources still readable.
    assert sim.http("POST", "/ec2sim/deny", {"resource": ""}, {})[0] == 400
    assert sim.http("POST", "/ec2sim/deny", {"resource": "x", "denied": "no"}, {})[0] == 400
    try:
        for resource in (param, secret["ARN"], f"arn:aws:s3:::{bucket}/task.*"):
            sim.control("POST", "/deny", {"resource": resource})
        assert sim.control("GET", "/deny")["denied"] == [
            param,
            secret["ARN"],
            f"arn:aws:s3:::{bucket}/task.*",
        ]
        denied = client_error(ssm.get_parameters, Names=[other_param, ssm_arn("us-east-1", param)])
        assert denied["Error"]["Code"] == "AccessDeniedException"
        assert denied["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert denied["Error"]["Message"].startswith(
            f"User: {caller} is not authorized to perform: ssm:GetParameters on resource: "
            f"{ssm_arn('us-east-1', param)}"
        )
        assert ssm.get_parameters(Names=[other_param])["Parameters"][0]["Value"] == "on"
        for secret_id in (secret["ARN"], secret["Name"]):
            denied = client_error(sm.get_secret_value, SecretId=secret_id)
            assert denied["Error"]["Code"] == "AccessDeniedException"
            assert denied["ResponseMetadata"]["HTTPStatusCode"] == 400
            assert (
                f"secretsmanager:GetSecretValue on resource: {secret['ARN']}"
                in (denied["Error"]["Message"])
            )
        assert sm.get_secret_value(SecretId=other_secret["ARN"])["SecretString"] == "k"
        denied = client_error(s3.get_object, Bucket=bucket, Key="task.env")
        assert denied["Error"]["Code"] == "AccessDenied"
        assert denied["ResponseMetadata"]["HTTPStatusCode"] == 403
        message = denied["Error"]["Message"]
        assert f"User: {caller} is not authorized to perform: s3:GetObject" in message
        assert client_error(s3.head_object, Bucket=bucket, Key="task.env")["Error"]["Code"] == (
            "403"
        )
        assert s3.get_object(Bucket=bucket, Key="other.env")["Body"].read() == b"X=1\n"
        # A denied bucket: HeadBucket's 403 still names the bucket's region.
        sim.control("POST", "/deny", {"resource": f"arn:aws:s3:::{bucket}"})
        head = client_error(s3.head_bucket, Bucket=bucket)
        assert head["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert head["ResponseMetadata"]["HTTPHeaders"]["x-amz-bucket-region"] == "us-east-1"
        # Allowed again one by one, or all at once.
        sim.control("POST", "/deny", {"resource": param, "denied": False})
        assert ssm.get_parameters(Names=[param])["Parameters"][0]["Name"] == param
        assert sim.control("DELETE", "/deny") == {"denied": []}
        assert sm.get_secret_value(SecretId=secret["ARN"])["SecretString"] == "pw"
        assert s3.head_bucket(Bucket=bucket)["BucketRegion"] == "us-east-1"
    finally:
        sim.control("DELETE", "/deny")
    recorded = sim.control("GET", "/requests?service=s3&operation=GetObject")["requests"]
    assert {c["access_key_id"] for c in recorded} == {key_id}


# ---- awsvpc: task ENIs, attach messages, attachments, IMDS VPC paths

MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def make_vpc(sim: Sim, vpc_cidr: str = "10.0.0.0/16", subnet_cidr: str = "10.0.1.0/24"):
    """A VPC, one subnet and one security group, created with boto3 as a user would."""
    ec2 = sim.client("ec2")
    vpc = ec2.create_vpc(CidrBlock=vpc_cidr)["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=subnet_cidr)["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName=unique("sg"), Description="t", VpcId=vpc)
    return ec2, vpc, subnet, group["GroupId"]


def awsvpc_cluster(sim: Sim):
    containers = [
        {
            "name": "web",
            "image": "local/busybox:test",
            "memory": 64,
            "portMappings": [{"containerPort": 8080}, {"containerPort": 53, "protocol": "udp"}],
        },
        {"name": "side", "image": "local/busybox:test", "memory": 32, "essential": False},
    ]
    return setup_cluster(sim, containers=containers, networkMode="awsvpc")


def awsvpc_config(subnet: str, group: str | None) -> dict:
    config = {"subnets": [subnet]}
    if group is not None:
        config["securityGroups"] = [group]
    return {"awsvpcConfiguration": config}


def attachment_of(described: dict) -> dict:
    [attachment] = [a for a in described["attachments"] if a["type"] == "ElasticNetworkInterface"]
    return attachment


def details_of(attachment: dict) -> dict:
    return {d["name"]: d["value"] for d in attachment["details"]}


async def next_of(ws, kinds: tuple[str, ...], timeout: float = 5.0) -> tuple[str, dict]:
    """The next frame whose type is one of ``kinds`` (heartbeats etc. skipped): (type, message)."""
    deadline = time.monotonic() + timeout
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
        if frame["type"] in kinds:
            return frame["type"], frame["message"]


KINDS = ("AttachTaskNetworkInterfacesMessage", "PayloadMessage")


def test_awsvpc_run_task_sends_attach_then_payload_and_tracks_the_attachment(sim):
    ec2, vpc, subnet, group = make_vpc(sim)
    ecs, cluster, instance_arn, family = awsvpc_cluster(sim)
    network = awsvpc_config(subnet, group)

    async def scenario():
        async with acs_connect(sim, cluster, instance_arn) as ws:
            run = await asyncio.to_thread(
                ecs.run_task, cluster=cluster, taskDefinition=family, networkConfiguration=network
            )
            kind, attach = await next_of(ws, KINDS)
            assert kind == "AttachTaskNetworkInterfacesMessage"
            await ack(ws, attach)
            kind, message = await next_of(ws, KINDS)
            assert kind == "PayloadMessage"
            await ack(ws, message)
            # A second task of the same subnet: its own ENI, MAC and address.
            second = await asyncio.to_thread(
                ecs.run_task, cluster=cluster, taskDefinition=family, networkConfiguration=network
            )
            kind, attach2 = await next_of(ws, KINDS)
            assert kind == "AttachTaskNetworkInterfacesMessage"
            await ack(ws, attach2)
            await ack(ws, (await next_of(ws, ("PayloadMessage",)))[1])
            return run["tasks"][0], attach, message, second["tasks"][0], attach2

    task, attach, message, second, attach2 = asyncio.run(scenario())
    task_arn = task["taskArn"]
    assert attach["taskArn"] == task_arn and attach["containerInstanceArn"] == instance_arn
    assert attach["clusterArn"] == attach["taskClusterArn"] == task["clusterArn"]
    assert attach["waitTimeoutMs"] == 30000 and isinstance(attach["generatedAt"], int)
    [eni] = attach["elasticNetworkInterfaces"]
    # What EC2 says about the interface: the same id, MAC and address, in the given subnet.
    [described_eni] = ec2.describe_network_interfaces(NetworkInterfaceIds=[eni["ec2Id"]])[
        "NetworkInterfaces"
    ]
    assert described_eni["SubnetId"] == subnet and described_eni["VpcId"] == vpc
    assert described_eni["Groups"][0]["GroupId"] == group
    assert eni["macAddress"] == described_eni["MacAddress"] and MAC_RE.match(eni["macAddress"])
    assert int(eni["macAddress"][:2], 16) & 0b11 == 0b10  # locally administered, unicast
    ip = eni["ipv4Addresses"][0]["privateAddress"]
    assert eni["ipv4Addresses"] == [{"privateAddress": ip, "primary": True}]
    assert described_eni["PrivateIpAddress"] == ip
    assert ipaddress_in(ip, "10.0.1.0/24") and ip not in ("10.0.1.0", "10.0.1.1", "10.0.1.255")
    assert eni["subnetGatewayIpv4Address"] == "10.0.1.1/24"
    assert eni["domainNameServers"] == ["10.0.0.2"] and eni["domainName"] == ["ec2.internal"]
    assert eni["privateDnsName"] == f"ip-{ip.replace('.', '-')}.ec2.internal"
    assert eni["privateDnsName"] == described_eni["PrivateDnsName"]
    assert eni["index"] == 0 and eni["interfaceAssociationProtocol"] == "default"
    assert eni["attachmentArn"].startswith("arn:aws:ecs:us-east-1:123456789012:attachment/")
    # The payload's task carries the same ENI; awsvpc host ports are the container ports.
    [pushed] = message["tasks"]
    assert pushed["arn"] == task_arn and pushed["networkMode"] == "awsvpc"
    assert pushed["elasticNetworkInterfaces"] == [eni]
    web = next(c for c in pushed["containers"] if c["name"] == "web")
    assert web["portMappings"] == [
        {"containerPort": 8080, "protocol": "tcp", "hostPort": 8080},
        {"containerPort": 53, "protocol": "udp", "hostPort": 53},
    ]
    [eni2] = attach2["elasticNetworkInterfaces"]
    assert attach2["taskArn"] == second["taskArn"]
    assert eni2["ec2Id"] != eni["ec2Id"] and eni2["macAddress"] != eni["macAddress"]
    ip2 = eni2["ipv4Addresses"][0]["privateAddress"]
    assert ip2 != ip and ipaddress_in(ip2, "10.0.1.0/24")

    # DescribeTasks before the agent confirms: ATTACHING, with EC2's details.
    described = ecs.describe_tasks(cluster=cluster, tasks=[task_arn])["tasks"][0]
    attachment = attachment_of(described)
    assert attachment["status"] == "ATTACHING" and "connectivity" not in described
    assert eni["attachmentArn"].endswith("/" + attachment["id"])
    assert details_of(attachment) == {
        "subnetId": subnet,
        "networkInterfaceId": eni["ec2Id"],
        "macAddress": eni["macAddress"],
        "privateDnsName": eni["privateDnsName"],
        "privateIPv4Address": ip,
    }
    for container in described["containers"]:
        assert container["networkInterfaces"] == [
            {"attachmentId": attachment["id"], "privateIpv4Address": ip}
        ]

    # The control API: the ENI, and the attach message with its ack.
    [record] = sim.control("GET", f"/enis?task_arn={quote(task_arn)}")["enis"]
    assert record["eni_id"] == eni["ec2Id"] and record["mac"] == eni["macAddress"]
    assert record["ipv4_cidr"] == f"{ip}/24" and record["gateway_cidr"] == "10.0.1.1/24"
    assert record["attachment_arn"] == eni["attachmentArn"] and record["status"] == "ATTACHING"
    [sent] = sim.control("GET", f"/acs/attach?task_arn={quote(task_arn)}")["messages"]
    assert sent["message_id"] == attach["messageId"] and sent["outcome"] == "sent"
    assert sent["acked"] is True and sent["ack_time"] >= sent["time"]

    # The agent reports the ENI attached, the task running.
    ecs.submit_task_state_change(
        cluster=cluster,
        task=task_arn,
        status="RUNNING",
        attachments=[{"attachmentArn": eni["attachmentArn"], "status": "ATTACHED"}],
    )
    described = ecs.describe_tasks(cluster=cluster, tasks=[task_arn])["tasks"][0]
    assert attachment_of(described)["status"] == "ATTACHED"
    assert described["connectivity"] == "CONNECTED" and described["connectivityAt"]
    # The second task's attachment is untouched.
    other = ecs.describe_tasks(cluster=cluster, tasks=[second["taskArn"]])["tasks"][0]
    assert attachment_of(other)["status"] == "ATTACHING"

    async def stop():
        async with acs_connect(sim, cluster, instance_arn) as ws:
            await asyncio.to_thread(ecs.stop_task, cluster=cluster, task=task_arn, reason="t")
            kind, message = await next_of(ws, KINDS)
            assert kind == "PayloadMessage"
            await ack(ws, message)
            return message

    stopped = asyncio.run(stop())
    assert stopped["tasks"][0]["desiredStatus"] == "STOPPED"
    assert stopped["tasks"][0]["elasticNetworkInterfaces"] == [eni]
    described = ecs.describe_tasks(cluster=cluster, tasks=[task_arn])["tasks"][0]
    assert attachment_of(described)["status"] == "ATTACHED"  # until the agent reports STOPPED
    ecs.submit_task_state_change(cluster=cluster, task=task_arn, status="STOPPED")
    described = ecs.describe_tasks(cluster=cluster, tasks=[task_arn])["tasks"][0]
    assert attachment_of(described)["status"] == "DETACHED"
    # ECS deletes the detached interface: EC2 no longer knows it, its address is free again.
    with pytest.raises(botocore.exceptions.ClientError):
        ec2.describe_network_interfaces(NetworkInterfaceIds=[eni["ec2Id"]])
    changes = sim.control("GET", "/state-changes?operation=SubmitTaskStateChange")
    mine = [c["body"] for c in changes["state_changes"] if c["body"]["task"] == task_arn]
    assert mine[0]["attachments"] == [{"attachmentArn": eni["attachmentArn"], "status": "ATTACHED"}]
    history = [
        h["status"]
        for h in sim.control("GET", f"/enis?task_arn={quote(task_arn)}")["enis"][0][
            "status_history"
        ]
    ]
    assert history == ["ATTACHING", "ATTACHED", "DETACHED"]


def ipaddress_in(ip: str, cidr: str) -> bool:
    import ipaddress

    return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr)


def test_awsvpc_attachment_reported_detached_and_bad_input(sim):
    _, _, subnet, group = make_vpc(sim, "10.9.0.0/16", "10.9.4.0/22")
    ecs, cluster, instance_arn, family = awsvpc_cluster(sim)
    # Without securityGroups ECS uses the VPC's default group.
    task = ecs.run_task(
        cluster=cluster, taskDefinition=family, networkConfiguration=awsvpc_config(subnet, None)
    )["tasks"][0]
    attachment = attachment_of(task)
    assert attachment["status"] == "ATTACHING"
    ip = details_of(attachment)["privateIPv4Address"]
    assert ipaddress_in(ip, "10.9.4.0/22")
    [record] = sim.control("GET", f"/enis?task_arn={quote(task['taskArn'])}")["enis"]
    assert record["gateway_cidr"] == "10.9.4.1/22" and record["dns_server"] == "10.9.0.2"
    arn = record["attachment_arn"]

    def refused(call, **kwargs) -> str:
        with pytest.raises(botocore.exceptions.ClientError) as err:
            call(**kwargs)
        assert err.value.response["Error"]["Code"] == "InvalidParameterException"
        return err.value.response["Error"]["Message"]

    message = refused(
        ecs.submit_task_state_change,
        cluster=cluster,
        task=task["taskArn"],
        attachments=[{"attachmentArn": arn, "status": "GLUED"}],
    )
    assert "GLUED" in message and arn in message
    before = len(sim.control("GET", "/state-changes")["state_changes"])
    status, _, body = sim.http(
        "POST",
        "/",
        json.dumps({"cluster": cluster, "task": task["taskArn"], "attachments": "x"}).encode(),
        {
            "X-Amz-Target": "AmazonEC2ContainerServiceV20141113.SubmitTaskStateChange",
            "Content-Type": "application/x-amz-json-1.1",
            "Authorization": FAKE_SIGV4,
        },
    )
    assert status == 400 and b"attachments must be a list" in body
    assert len(sim.control("GET", "/state-changes")["state_changes"]) == before  # not recorded
    assert (
        attachment_of(ecs.describe_tasks(cluster=cluster, tasks=[task["taskArn"]])["tasks"][0])[
            "status"
        ]
        == "ATTACHING"
    )

    # The agent may also say DETACHED itself (SubmitAttachmentStateChanges, e.g. on expiry).
    ecs.submit_attachment_state_changes(
        cluster=cluster, attachments=[{"attachmentArn": arn, "status": "DETACHED"}]
    )
    described = ecs.describe_tasks(cluster=cluster, tasks=[task["taskArn"]])["tasks"][0]
    assert attachment_of(described)["status"] == "DETACHED"
    # An unknown attachment ARN is recorded, changes nothing, and is not an error.
    ecs.submit_attachment_state_changes(
        cluster=cluster,
        attachments=[{"attachmentArn": arn + "-nope", "status": "ATTACHED"}],
    )
    # RunTask's own checks of awsvpcConfiguration.
    message = refused(
        ecs.run_task,
        cluster=cluster,
        taskDefinition=family,
        networkConfiguration=awsvpc_config("subnet-0000nope", group),
    )
    assert "subnet-0000nope" in message and "does not exist" in message
    message = refused(
        ecs.run_task,
        cluster=cluster,
        taskDefinition=family,
        networkConfiguration=awsvpc_config(subnet, "sg-0000nope"),
    )
    assert "sg-0000nope" in message
    message = refused(ecs.run_task, cluster=cluster, taskDefinition=family)
    assert "Network Configuration must be provided" in message


def test_attach_message_switches_delay_withhold_wait_timeout_and_offline_queue(sim):
    _, _, subnet, group = make_vpc(sim, "10.20.0.0/16", "10.20.3.0/24")
    ecs, cluster, instance_arn, family = awsvpc_cluster(sim)
    network = awsvpc_config(subnet, group)
    for bad in (
        {"wait_timeout_ms": 0},
        {"wait_timeout_ms": "5"},
        {"attach_delay": -1},
        {"withhold_attach": "yes"},
        {"nope": 1},
    ):
        status, _, body = sim.http("POST", "/ec2sim/enis/config", bad)
        assert status == 400, bad
        assert next(iter(bad)) in json.loads(body)["error"]
    assert sim.control("GET", "/enis/config") == {
        "wait_timeout_ms": 30000,
        "attach_delay": None,
        "withhold_attach": False,
    }

    async def scenario():
        async with acs_connect(sim, cluster, instance_arn) as ws:
            # Delayed: the payload goes first, the attach message (short timeout) 0.5 s later.
            sim.control("POST", "/enis/config", {"wait_timeout_ms": 1500, "attach_delay": 0.5})
            started = time.monotonic()
            delayed = (
                await asyncio.to_thread(
                    ecs.run_task,
                    cluster=cluster,
                    taskDefinition=family,
                    networkConfiguration=network,
                )
            )["tasks"][0]
            kind, first = await next_of(ws, KINDS)
            assert kind == "PayloadMessage"
            await ack(ws, first)
            kind, attach = await next_of(ws, KINDS)
            assert kind == "AttachTaskNetworkInterfacesMessage"
            assert time.monotonic() - started >= 0.5
            assert attach["waitTimeoutMs"] == 1500 and attach["taskArn"] == delayed["taskArn"]
            assert (
                attach["elasticNetworkInterfaces"] == first["tasks"][0]["elasticNetworkInterfaces"]
            )
            # Withheld: only the payload, never the attach message; it stays unacked here.
            sim.control("POST", "/enis/config", {"withhold_attach": True, "attach_delay": None})
            withheld = (
                await asyncio.to_thread(
                    ecs.run_task,
                    cluster=cluster,
                    taskDefinition=family,
                    networkConfiguration=network,
                )
            )["tasks"][0]
            kind, payload_only = await next_of(ws, KINDS)
            assert kind == "PayloadMessage"
            await ack(ws, payload_only)
            await no_frame(ws, "AttachTaskNetworkInterfacesMessage", 1.0)
            return delayed, withheld

    try:
        delayed, withheld = asyncio.run(scenario())
    finally:
        sim.control(
            "POST",
            "/enis/config",
            {"wait_timeout_ms": 30000, "attach_delay": None, "withhold_attach": False},
        )
    [sent] = sim.control("GET", f"/acs/attach?task_arn={quote(delayed['taskArn'])}")["messages"]
    assert sent["outcome"] == "sent" and sent["wait_timeout_ms"] == 1500 and not sent["acked"]
    [held] = sim.control("GET", f"/acs/attach?task_arn={quote(withheld['taskArn'])}")["messages"]
    assert held["outcome"] == "withheld" and not held["acked"]

    # Agent offline: the attach message is queued and delivered, before the payload, on connect;
    # the unacked delayed one from before comes again too.
    queued = ecs.run_task(cluster=cluster, taskDefinition=family, networkConfiguration=network)[
        "tasks"
    ][0]

    async def reconnect():
        async with acs_connect(sim, cluster, instance_arn) as ws:
            seen = []
            while len(seen) < 3:
                kind, message = await next_of(ws, KINDS)
                seen.append((kind, message.get("taskArn") or message["tasks"][0]["arn"]))
                await ack(ws, message)
            return seen

    seen = asyncio.run(reconnect())
    assert ("AttachTaskNetworkInterfacesMessage", delayed["taskArn"]) in seen
    mine = [kind for kind, arn in seen if arn == queued["taskArn"]]
    assert mine == ["AttachTaskNetworkInterfacesMessage", "PayloadMessage"]
    [record] = sim.control("GET", f"/acs/attach?task_arn={quote(queued['taskArn'])}")["messages"]
    assert record["outcome"] == "queued" and record["acked"]


def test_imds_vpc_paths_match_ec2(sim):
    ec2 = sim.client("ec2")

    def imds_vpc(prefix: str) -> dict:
        token = sim.token(prefix)
        mac = sim.imds_get("meta-data/mac", token, prefix)[2].decode()
        base = f"meta-data/network/interfaces/macs/{mac}/"
        got = {"mac": mac}
        for key in (
            "vpc-id",
            "subnet-id",
            "vpc-ipv4-cidr-block",
            "vpc-ipv4-cidr-blocks",
            "subnet-ipv4-cidr-block",
            "local-ipv4s",
        ):
            status, _, body = sim.imds_get(base + key, token, prefix)
            assert status == 200, key
            got[key] = body.decode()
        listing = sim.imds_get(base, token, prefix)[2].decode().split("\n")
        assert "vpc-ipv4-cidr-blocks" in listing and "subnet-id" in listing
        return got

    # The default instance: moto's default VPC.
    default = imds_vpc("")
    instance_id = sim.control("GET", "/instances/default")["instance_id"]
    [reservation] = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    instance = reservation["Instances"][0]
    assert default["mac"] == instance["NetworkInterfaces"][0]["MacAddress"]
    assert default["vpc-id"] == instance["VpcId"] and default["subnet-id"] == instance["SubnetId"]
    [vpc] = ec2.describe_vpcs(VpcIds=[instance["VpcId"]])["Vpcs"]
    assert default["vpc-ipv4-cidr-block"] == vpc["CidrBlock"] == default["vpc-ipv4-cidr-blocks"]
    [subnet] = ec2.describe_subnets(SubnetIds=[instance["SubnetId"]])["Subnets"]
    assert default["subnet-ipv4-cidr-block"] == subnet["CidrBlock"]

    # An instance launched into the test's own subnet (with a second VPC CIDR block).
    _, vpc_id, subnet_id, _ = make_vpc(sim, "10.30.0.0/16", "10.30.2.0/24")
    ec2.associate_vpc_cidr_block(VpcId=vpc_id, CidrBlock="10.31.0.0/16")
    prefix = new_instance_prefix(sim, subnet_id=subnet_id)
    mine = imds_vpc(prefix)
    assert mine["vpc-id"] == vpc_id and mine["subnet-id"] == subnet_id
    assert mine["vpc-ipv4-cidr-block"] == "10.30.0.0/16"
    assert mine["vpc-ipv4-cidr-blocks"].split("\n") == ["10.30.0.0/16", "10.31.0.0/16"]
    assert mine["subnet-ipv4-cidr-block"] == "10.30.2.0/24"
    assert ipaddress_in(mine["local-ipv4s"], "10.30.2.0/24")
    state = sim.control("GET", prefix.replace("/imds/", "/instances/") + "/imds")
    assert state["vpc_id"] == vpc_id and state["mac"] == mine["mac"]
    status, _, body = sim.http("POST", "/ec2sim/instances", {"subnet_id": "subnet-0000nope"})
    assert status == 400 and b"subnet-0000nope" in body


def test_awsvpc_addresses_fill_the_subnet_and_come_back_when_detached(sim):
    _, _, subnet, group = make_vpc(sim, "10.40.0.0/16", "10.40.7.0/28")
    ecs, cluster, _, family = awsvpc_cluster(sim)
    network = awsvpc_config(subnet, group)
    tasks = ecs.run_task(
        cluster=cluster, taskDefinition=family, networkConfiguration=network, count=10
    )["tasks"]
    tasks += ecs.run_task(cluster=cluster, taskDefinition=family, networkConfiguration=network)[
        "tasks"
    ]
    addresses = [details_of(attachment_of(t))["privateIPv4Address"] for t in tasks]
    # EC2 keeps .0-.3 and .15 of a /28: eleven addresses, lowest first, each once.
    assert addresses == [f"10.40.7.{n}" for n in range(4, 15)]
    with pytest.raises(botocore.exceptions.ClientError) as err:
        ecs.run_task(cluster=cluster, taskDefinition=family, networkConfiguration=network)
    assert err.value.response["Error"]["Code"] == "InvalidParameterException"
    assert subnet in err.value.response["Error"]["Message"]
    assert "no free IPv4 address" in err.value.response["Error"]["Message"]
    ecs.submit_task_state_change(cluster=cluster, task=tasks[2]["taskArn"], status="STOPPED")
    again = ecs.run_task(cluster=cluster, taskDefinition=family, networkConfiguration=network)
    assert details_of(attachment_of(again["tasks"][0]))["privateIPv4Address"] == "10.40.7.6"
