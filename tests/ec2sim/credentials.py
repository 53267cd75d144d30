"""Role credentials as ECS, STS and IMDS hand them out (task-credentials.md §2, §10).

Owns the fake STS key generator and what it issued:

- per task and role type (``TaskApplication`` from ``taskRoleArn``, ``TaskExecution`` from
  ``executionRoleArn``) one credential set: a UUID ``credentialsId`` kept for the life of the task,
  and the current temporary keys (random ``ASIA…`` key id, RFC 3339 ``expiration``). A refresh
  gives the set new keys under the same ``credentialsId``; a refresh is due every half lifetime.
- every access key id ever issued (task sets and IMDS instance-role keys), with the role ARN,
  task ARN, role type and session name it stands for, so STS GetCallerIdentity can answer and
  tests can tell whose credentials a caller used.

Decides nothing about delivery (acs.py sends, payload.py renders); talks to nothing.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from motohost import ACCOUNT_ID

#: Lifetime of issued credentials unless configured (STS's default for ECS task roles: 6 h).
DEFAULT_LIFETIME = 6 * 3600.0
TASK_ROLE_TYPES = ("TaskApplication", "TaskExecution")
#: Role type recorded for keys served by IMDS (the instance profile's role).
INSTANCE_ROLE_TYPE = "InstanceRole"
INSTANCE_ROLE_NAME = "ec2sim-instance-role"
INSTANCE_ROLE_ARN = f"arn:aws:iam::{ACCOUNT_ID}:role/{INSTANCE_ROLE_NAME}"


def rfc3339(epoch: float) -> str:
    """``2026-07-01T13:00:00Z``: what AWS SDKs and dockerd's endpoint-credentials parser accept.

    (ACS fixtures show ``…318+0000``, which Go's time.RFC3339 parser, e.g. dockerd's awslogs
    driver, refuses.)
    """
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_access_key_id() -> str:
    """A temporary (STS) access key id: ``ASIA`` and 16 upper-case hex digits."""
    return "ASIA" + secrets.token_hex(8).upper()


def role_name(role_arn: str) -> str:
    """The role's name: the last path element of ``arn:aws:iam::<acct>:role/<path/>name``."""
    return role_arn.rsplit("/", 1)[-1] if "/" in role_arn else role_arn.rsplit(":", 1)[-1]


def role_account(role_arn: str) -> str:
    parts = role_arn.split(":")
    return parts[4] if len(parts) > 5 and parts[4].isdigit() else ACCOUNT_ID


def role_id(role_arn: str) -> str:
    """A stable unique id for a role, in IAM's form (``AROA`` + 17 characters)."""
    digest = hashlib.sha256(role_arn.encode()).hexdigest().upper()
    return "AROA" + digest[:17]


@dataclass
class Key:
    """One issued access key id and whom it stands for."""

    access_key_id: str
    role_arn: str
    role_type: str
    session_name: str
    expiration: str
    issued_at: float
    task_arn: str | None = None
    credentials_id: str | None = None
    instance_id: str | None = None

    def describe(self) -> dict:
        return {
            "access_key_id": self.access_key_id,
            "role_arn": self.role_arn,
            "role_type": self.role_type,
            "task_arn": self.task_arn,
            "credentials_id": self.credentials_id,
            "instance_id": self.instance_id,
            "session_name": self.session_name,
            "expiration": self.expiration,
            "issued_at": self.issued_at,
        }

    def identity(self) -> dict:
        """STS GetCallerIdentity's answer for this key."""
        name = role_name(self.role_arn)
        account = role_account(self.role_arn)
        return {
            "Arn": f"arn:aws:sts::{account}:assumed-role/{name}/{self.session_name}",
            "UserId": f"{role_id(self.role_arn)}:{self.session_name}",
            "Account": account,
        }


@dataclass
class CredentialSet:
    """One task's credentials for one role type: a fixed credentialsId, keys that change."""

    credentials_id: str
    task_arn: str
    role_type: str
    role_arn: str
    cluster_arn: str
    container_instance_arn: str
    region: str
    #: The IAMRoleCredentials object of the current keys (as sent over ACS).
    credentials: dict
    issued_at: float
    lifetime: float
    refreshes: int = 0
    #: Access key ids this set has had, oldest first (the last one is current).
    history: list = field(default_factory=list)

    @property
    def refresh_due(self) -> float:
        """Epoch time at which the current keys are half way through their lifetime."""
        return self.issued_at + self.lifetime / 2

    def describe(self) -> dict:
        return {
            "credentials_id": self.credentials_id,
            "task_arn": self.task_arn,
            "role_type": self.role_type,
            "role_arn": self.role_arn,
            "cluster_arn": self.cluster_arn,
            "container_instance_arn": self.container_instance_arn,
            "region": self.region,
            "credentials": dict(self.credentials),
            "issued_at": self.issued_at,
            "lifetime": self.lifetime,
            "refresh_due": self.refresh_due,
            "refreshes": self.refreshes,
            "access_key_ids": list(self.history),
        }


class Credentials:
    """Every credential set and key ec2sim issued, and the issuing settings."""

    def __init__(self) -> None:
        #: Lifetime (seconds) of keys issued from now on; refreshes fall due at half of it.
        self.lifetime = DEFAULT_LIFETIME
        #: Whether ACS sessions push refreshes by themselves when they fall due.
        self.auto_refresh = True
        self.sets: dict[tuple[str, str], CredentialSet] = {}
        self.keys: dict[str, Key] = {}

    # ------------------------------------------------------------------ settings

    def configure(self, changes: dict) -> None:
        """Apply control-API settings; raise ValueError for a bad value."""
        if "lifetime" in changes:
            value = changes["lifetime"]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError("lifetime must be a positive number of seconds")
            self.lifetime = float(value)
        if "auto_refresh" in changes:
            if not isinstance(changes["auto_refresh"], bool):
                raise ValueError("auto_refresh must be true or false")
            self.auto_refresh = changes["auto_refresh"]

    def describe(self) -> dict:
        return {
            "lifetime": self.lifetime,
            "auto_refresh": self.auto_refresh,
            "sets": [s.describe() for s in self.sets.values()],
        }

    # ------------------------------------------------------------------ task credentials

    def for_task(self, task, role_arn: str, role_type: str) -> dict:
        """The task's current credentials for ``role_type`` (a moto Task), issued on first use.

        Rendering the same task again (redelivery, a later payload) gives the same set: ECS keeps
        one credentialsId per task and role for the task's life.
        """
        existing = self.sets.get((task.task_arn, role_type))
        if existing is not None:
            return dict(existing.credentials)
        return dict(self._new_set(task, role_arn, role_type).credentials)

    def refresh(
        self, task_arn: str, role_type: str, task=None, role_arn: str | None = None
    ) -> CredentialSet:
        """New keys for the task's set (same credentialsId); creates the set if there is none.

        A new set is for ``role_arn`` (the task definition's role), else for
        ``arn:aws:iam::<account>:role/ec2sim-<role type>``; ``task`` (moto's, if known) gives it
        its cluster, instance and region.
        """
        existing = self.sets.get((task_arn, role_type))
        if existing is None:
            role_arn = role_arn or f"arn:aws:iam::{ACCOUNT_ID}:role/ec2sim-{role_type}"
            return self._new_set(task, role_arn, role_type, task_arn=task_arn)
        self._issue(existing)
        existing.refreshes += 1
        return existing

    def due(self, container_instance_arn: str, now: float | None = None) -> list[CredentialSet]:
        """The instance's sets whose keys are half way through their lifetime."""
        now = time.time() if now is None else now
        return [
            s
            for s in self.sets.values()
            if s.container_instance_arn == container_instance_arn and s.refresh_due <= now
        ]

    def of_instance(self, container_instance_arn: str) -> list[CredentialSet]:
        return [s for s in self.sets.values() if s.container_instance_arn == container_instance_arn]

    def get(self, task_arn: str, role_type: str) -> CredentialSet | None:
        return self.sets.get((task_arn, role_type))

    def _new_set(
        self, task, role_arn: str, role_type: str, task_arn: str | None = None
    ) -> CredentialSet:
        task_arn = task_arn or task.task_arn
        issued = CredentialSet(
            credentials_id=str(uuid.uuid4()),
            task_arn=task_arn,
            role_type=role_type,
            role_arn=role_arn,
            cluster_arn=getattr(task, "cluster_arn", "") or "",
            container_instance_arn=getattr(task, "container_instance_arn", "") or "",
            region=getattr(task, "region_name", "") or "",
            credentials={},
            issued_at=0.0,
            lifetime=self.lifetime,
        )
        self._issue(issued)
        self.sets[(task_arn, role_type)] = issued
        return issued

    def _issue(self, target: CredentialSet) -> None:
        now = time.time()
        expiration = rfc3339(now + self.lifetime)
        key = Key(
            access_key_id=new_access_key_id(),
            role_arn=target.role_arn,
            role_type=target.role_type,
            session_name=target.task_arn.rsplit("/", 1)[-1],
            expiration=expiration,
            issued_at=now,
            task_arn=target.task_arn,
            credentials_id=target.credentials_id,
        )
        self.keys[key.access_key_id] = key
        target.credentials = {
            "credentialsId": target.credentials_id,
            "roleArn": target.role_arn,
            "accessKeyId": key.access_key_id,
            "secretAccessKey": secrets.token_urlsafe(30),
            "sessionToken": secrets.token_urlsafe(60),
            "expiration": expiration,
            "credentialScope": target.role_type,
        }
        target.issued_at = now
        target.lifetime = self.lifetime
        target.history.append(key.access_key_id)

    # ------------------------------------------------------------------ instance role (IMDS)

    def instance_key(self, instance_id: str, lifetime: float = DEFAULT_LIFETIME) -> dict:
        """Keys for the instance profile's role as IMDS serves them (registered for STS)."""
        now = time.time()
        key = Key(
            access_key_id=new_access_key_id(),
            role_arn=INSTANCE_ROLE_ARN,
            role_type=INSTANCE_ROLE_TYPE,
            session_name=instance_id,
            expiration=rfc3339(now + lifetime),
            issued_at=now,
            instance_id=instance_id,
        )
        self.keys[key.access_key_id] = key
        return {
            "AccessKeyId": key.access_key_id,
            "SecretAccessKey": secrets.token_urlsafe(30),
            "Token": secrets.token_urlsafe(60),
            "Expiration": key.expiration,
            "LastUpdated": rfc3339(now),
        }

    # ------------------------------------------------------------------ lookups

    def key(self, access_key_id: str | None) -> Key | None:
        return self.keys.get(access_key_id or "")

    def caller_arn(self, access_key_id: str | None) -> str:
        """Whom AWS names in an access-denied message: the assumed role of a key ec2sim issued,
        else an IAM user named after the key (``anonymous`` when unsigned)."""
        key = self.key(access_key_id)
        if key is not None:
            return key.identity()["Arn"]
        return f"arn:aws:iam::{ACCOUNT_ID}:user/{access_key_id or 'anonymous'}"

    def describe_keys(self, **filters) -> list[dict]:
        wanted = {k: v for k, v in filters.items() if v is not None}
        described = [k.describe() for k in self.keys.values()]
        return [d for d in described if all(d.get(k) == v for k, v in wanted.items())]
