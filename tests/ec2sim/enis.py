"""Task ENIs for the awsvpc network mode: what EC2 and ECS know about each task's interface.

Owns the ENI ec2sim hands to every awsvpc task (one per task, from moto's EC2: the interface
moto's RunTask creates in the first subnet of ``awsvpcConfiguration``, given an address in the
subnet's CIDR as EC2 would), its attachment (ARN, status ATTACHING → ATTACHED → DETACHED, as
DescribeTasks shows it), the rendering of the ACS ``ElasticNetworkInterface`` object and of the
``AttachTaskNetworkInterfacesMessage``, a record of every attach message sent, and the switches
tests flip (``waitTimeoutMs``, delaying or withholding the attach message).

Reads and writes moto's EC2 network interfaces and ECS tasks directly. Never sends anything: the
ECS handlers (``ecs_api``) decide when, the ACS hub (``acs``) delivers.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import time
import uuid
from dataclasses import dataclass, field

from journal import Journal
from motohost import ACCOUNT_ID, MotoHost

LOG = logging.getLogger("ec2sim.enis")

#: ECS gives the agent this long to find the ENI (awsvpc.md §4 suggests 30 s; tests shorten it).
DEFAULT_WAIT_TIMEOUT_MS = 30_000
#: What SubmitTaskStateChange / SubmitAttachmentStateChanges may say about an attachment.
ATTACHMENT_STATUSES = ("ATTACHED", "DETACHED")
#: EC2 reserves the first four addresses of every subnet (network, router, DNS, future) and the
#: last one (broadcast); tasks get the lowest free address after them.
_RESERVED_LOW = 4


def dns_suffix(region: str) -> str:
    """EC2's internal DNS domain of a region (``ec2.internal`` only in us-east-1)."""
    return "ec2.internal" if region == "us-east-1" else f"{region}.compute.internal"


def private_dns_name(ip: str, region: str) -> str:
    return f"ip-{ip.replace('.', '-')}.{dns_suffix(region)}"


@dataclass
class Config:
    """Attach-message behaviour tests change through the control API."""

    #: ``waitTimeoutMs`` of the attach messages sent from now on.
    wait_timeout_ms: int = DEFAULT_WAIT_TIMEOUT_MS
    #: Seconds to hold the attach message back; the payload then goes first. None: attach message
    #: first, right away (what ECS does).
    attach_delay: float | None = None
    #: Never send the attach message (the payload still carries the ENI).
    withhold_attach: bool = False

    def update(self, changes: dict) -> None:
        known = {"wait_timeout_ms", "attach_delay", "withhold_attach"}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}; known: {sorted(known)}")
        if "wait_timeout_ms" in changes:
            value = changes["wait_timeout_ms"]
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError("wait_timeout_ms must be a positive integer (milliseconds)")
        if "attach_delay" in changes:
            value = changes["attach_delay"]
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
            ):
                raise ValueError("attach_delay must be seconds >= 0 or null")
        if "withhold_attach" in changes and not isinstance(changes["withhold_attach"], bool):
            raise ValueError("withhold_attach must be true or false")
        for key in known & set(changes):
            setattr(self, key, changes[key])

    def describe(self) -> dict:
        return {
            "wait_timeout_ms": self.wait_timeout_ms,
            "attach_delay": self.attach_delay,
            "withhold_attach": self.withhold_attach,
        }


@dataclass
class TaskEni:
    """One task's ENI and its attachment."""

    task_arn: str
    cluster_arn: str
    container_instance_arn: str
    region: str
    eni_id: str
    mac: str
    ipv4: str
    #: The subnet's CIDR (``10.0.1.0/24``): the ENI's address has its prefix length.
    subnet_cidr: str
    subnet_id: str
    vpc_id: str
    vpc_cidr: str
    attachment_id: str
    status: str = "ATTACHING"
    status_history: list = field(default_factory=list)

    @property
    def prefix_length(self) -> int:
        return ipaddress.ip_network(self.subnet_cidr).prefixlen

    @property
    def gateway(self) -> str:
        """The subnet's router: its first host address."""
        return str(ipaddress.ip_network(self.subnet_cidr).network_address + 1)

    @property
    def dns_server(self) -> str:
        """The Amazon-provided DNS: the VPC's base address plus two."""
        return str(ipaddress.ip_network(self.vpc_cidr).network_address + 2)

    @property
    def attachment_arn(self) -> str:
        return f"arn:aws:ecs:{self.region}:{ACCOUNT_ID}:attachment/{self.attachment_id}"

    @property
    def dns_name(self) -> str:
        return private_dns_name(self.ipv4, self.region)

    def acs(self) -> dict:
        """The ACS ``ElasticNetworkInterface`` (api-2.json): in the attach message and payload."""
        return {
            "attachmentArn": self.attachment_arn,
            "ec2Id": self.eni_id,
            "macAddress": self.mac,
            "ipv4Addresses": [{"privateAddress": self.ipv4, "primary": True}],
            "ipv6Addresses": [],
            "subnetGatewayIpv4Address": f"{self.gateway}/{self.prefix_length}",
            "domainNameServers": [self.dns_server],
            "domainName": [dns_suffix(self.region)],
            "privateDnsName": self.dns_name,
            "index": 0,
            "interfaceAssociationProtocol": "default",
        }

    def details(self) -> list[dict]:
        """DescribeTasks ``attachments[].details`` of an ENI attachment."""
        return [
            {"name": "subnetId", "value": self.subnet_id},
            {"name": "networkInterfaceId", "value": self.eni_id},
            {"name": "macAddress", "value": self.mac},
            {"name": "privateDnsName", "value": self.dns_name},
            {"name": "privateIPv4Address", "value": self.ipv4},
        ]

    def describe(self) -> dict:
        return {
            "task_arn": self.task_arn,
            "cluster_arn": self.cluster_arn,
            "container_instance_arn": self.container_instance_arn,
            "region": self.region,
            "eni_id": self.eni_id,
            "mac": self.mac,
            "ipv4": self.ipv4,
            "prefix_length": self.prefix_length,
            "ipv4_cidr": f"{self.ipv4}/{self.prefix_length}",
            "gateway": self.gateway,
            "gateway_cidr": f"{self.gateway}/{self.prefix_length}",
            "subnet_id": self.subnet_id,
            "subnet_cidr": self.subnet_cidr,
            "vpc_id": self.vpc_id,
            "vpc_cidr": self.vpc_cidr,
            "dns_server": self.dns_server,
            "private_dns_name": self.dns_name,
            "attachment_id": self.attachment_id,
            "attachment_arn": self.attachment_arn,
            "status": self.status,
            "status_history": list(self.status_history),
        }


class TaskEnis:
    """Every task ENI ec2sim handed out, the attach messages sent, and the switches."""

    def __init__(self, moto: MotoHost) -> None:
        self.moto = moto
        self.config = Config()
        #: task ARN -> its ENI.
        self.by_task: dict[str, TaskEni] = {}
        #: AttachTaskNetworkInterfacesMessages built (and whether/when they were sent).
        self.attach_messages = Journal()

    # ------------------------------------------------------------------ allocation

    def allocate(self, task) -> TaskEni | None:
        """Adopt the ENI moto created for an awsvpc task; give it an address in its subnet.

        moto's RunTask creates the interface in the subnet but with a random 10.x address and
        records it as an ``ATTACHED`` attachment; EC2 gives the lowest free address of the subnet,
        and ECS shows the attachment ``ATTACHING`` until the agent reports it attached.
        """
        attachment = next(
            (a for a in task.attachments or [] if a.get("type") == "ElasticNetworkInterface"),
            None,
        )
        if attachment is None:
            return None
        details = {d["name"]: d["value"] for d in attachment.get("details", [])}
        ec2 = self.moto.ec2_backend(task.region_name)
        eni = ec2.get_network_interface(details["networkInterfaceId"])
        subnet = eni.subnet
        vpc = ec2.get_vpc(subnet.vpc_id)
        address = self._free_address(ec2, subnet, eni.id)
        eni.private_ip_address = address
        eni.private_ip_addresses = [{"Primary": True, "PrivateIpAddress": address}]
        eni.private_dns_name = private_dns_name(address, task.region_name)
        eni.private_ip_addresses[0]["PrivateDnsName"] = eni.private_dns_name
        record = TaskEni(
            task_arn=task.task_arn,
            cluster_arn=task.cluster_arn,
            container_instance_arn=task.container_instance_arn or "",
            region=task.region_name,
            eni_id=eni.id,
            mac=eni.mac_address.lower(),
            ipv4=address,
            subnet_cidr=subnet.cidr_block,
            subnet_id=subnet.id,
            vpc_id=vpc.id,
            vpc_cidr=vpc.cidr_block,
            attachment_id=attachment["id"],
        )
        self.by_task[task.task_arn] = record
        self._set_status(task, record, "ATTACHING")
        LOG.info(
            "task %s: ENI %s (%s, %s/%d) in %s",
            task.task_arn,
            record.eni_id,
            record.mac,
            record.ipv4,
            record.prefix_length,
            record.subnet_id,
        )
        return record

    @staticmethod
    def _free_addresses(ec2, subnet, own_eni_id: str = ""):
        """The addresses of the subnet no other interface of it holds, lowest first."""
        network = ipaddress.ip_network(subnet.cidr_block)
        taken = {
            a.get("PrivateIpAddress")
            for other in ec2.enis.values()
            if other.id != own_eni_id and getattr(other.subnet, "id", None) == subnet.id
            for a in other.private_ip_addresses
        }
        # hosts() already leaves out the network and broadcast addresses.
        for candidate in itertools.islice(network.hosts(), _RESERVED_LOW - 1, None):
            if str(candidate) not in taken:
                yield str(candidate)

    def _free_address(self, ec2, subnet, own_eni_id: str) -> str:
        for address in self._free_addresses(ec2, subnet, own_eni_id):
            return address
        raise ValueError(f"subnet {subnet.id} ({subnet.cidr_block}) has no free address left")

    def has_room(self, region: str, subnet, count: int) -> bool:
        """Whether the subnet still has ``count`` free addresses (checked before RunTask)."""
        free = self._free_addresses(self.moto.ec2_backend(region), subnet)
        return len(list(itertools.islice(free, count))) == count

    # ------------------------------------------------------------------ attachments

    def of_task(self, task_arn: str) -> TaskEni | None:
        return self.by_task.get(task_arn)

    def by_attachment(self, attachment_arn: str) -> TaskEni | None:
        for record in self.by_task.values():
            if record.attachment_arn == attachment_arn:
                return record
        return None

    def report(self, task, attachment_arn: str, status: str) -> bool:
        """The agent reported an attachment's status; False if the ARN names no task ENI."""
        record = self.by_attachment(attachment_arn)
        if record is None:
            return False
        if task is None or task.task_arn != record.task_arn:
            task = self._task(record)
        if status == "ATTACHED" and record.status == "DETACHED":
            return True  # ECS never re-attaches a detached task ENI
        self._set_status(task, record, status)
        if status == "DETACHED":
            self._release(record)
        return True

    def task_stopped(self, task) -> None:
        """The agent reported the task STOPPED: ECS detaches the ENI and deletes it."""
        record = self.by_task.get(task.task_arn)
        if record is None or record.status == "DETACHED":
            return
        self._set_status(task, record, "DETACHED")
        self._release(record)

    def _set_status(self, task, record: TaskEni, status: str) -> None:
        record.status = status
        record.status_history.append({"status": status, "time": time.time()})
        if task is None:
            return
        for attachment in task.attachments or []:
            if attachment.get("id") == record.attachment_id:
                attachment["status"] = status
                attachment["details"] = record.details()
        if status == "ATTACHED" and getattr(task, "connectivity", None) != "CONNECTED":
            task.connectivity = "CONNECTED"
            task.connectivityAt = time.time()
        for container in task.containers or []:
            if isinstance(container, dict):
                container["networkInterfaces"] = [
                    {"attachmentId": record.attachment_id, "privateIpv4Address": record.ipv4}
                ]

    def _release(self, record: TaskEni) -> None:
        """Delete the detached interface from moto's EC2 (its address becomes free again)."""
        ec2 = self.moto.ec2_backend(record.region)
        if record.eni_id in ec2.enis:
            ec2.delete_network_interface(record.eni_id)
            LOG.info("task %s: ENI %s detached and deleted", record.task_arn, record.eni_id)

    def _task(self, record: TaskEni):
        backend = self.moto.ecs_backend(record.region)
        for tasks in backend.tasks.values():
            if record.task_arn in tasks:
                return tasks[record.task_arn]
        return None

    # ------------------------------------------------------------------ attach messages

    def attach_message(self, record: TaskEni) -> tuple[str, dict]:
        """A new ``AttachTaskNetworkInterfacesMessage`` for the task's ENI: (messageId, message)."""
        message_id = str(uuid.uuid4())
        message = {
            "messageId": message_id,
            "clusterArn": record.cluster_arn,
            "containerInstanceArn": record.container_instance_arn,
            "taskArn": record.task_arn,
            "taskClusterArn": record.cluster_arn,
            "generatedAt": int(time.time() * 1000),
            "waitTimeoutMs": self.config.wait_timeout_ms,
            "elasticNetworkInterfaces": [record.acs()],
        }
        return message_id, message

    def record_attach(self, record: TaskEni, message_id: str, message: dict, outcome: str) -> None:
        """Note an attach message and what became of it (``sent``, ``queued``, ``withheld``)."""
        self.attach_messages.record(
            message_id=message_id,
            task_arn=record.task_arn,
            container_instance_arn=record.container_instance_arn,
            attachment_arn=record.attachment_arn,
            mac=record.mac,
            wait_timeout_ms=message["waitTimeoutMs"],
            outcome=outcome,
        )

    def describe(self, task_arn: str | None = None) -> list[dict]:
        return [
            record.describe()
            for record in self.by_task.values()
            if task_arn is None or record.task_arn == task_arn
        ]
