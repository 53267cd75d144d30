"""Fault injection for the AWS endpoint: one rule per service, and denied resources.

Owns the fault table the control API edits and the decision "does this call fail, and how", and
the list of resources whose reads are denied as an IAM explicit deny would deny them (secrets,
parameters, S3 objects and buckets; see :class:`Denials`). It renders nothing itself; the gateway
turns a chosen mode into a reply (or a dropped connection), and the service handlers ask
:meth:`Denials.reason` about the resources their call touches.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

MODES = ("unavailable", "throttle", "reset", "deny")


@dataclass
class FaultRule:
    """Fail calls to one service: all or only ``operations``; forever or ``count`` times."""

    service: str
    mode: str
    operations: list[str] | None = None
    count: int | None = None

    def matches(self, operation: str) -> bool:
        return self.operations is None or operation in self.operations

    def describe(self) -> dict:
        return {
            "service": self.service,
            "mode": self.mode,
            "operations": self.operations,
            "count": self.count,
        }


class FaultTable:
    """The active fault rules, keyed by service name (ecs, cloudwatch, autoscaling, ec2, ...)."""

    def __init__(self) -> None:
        self._rules: dict[str, FaultRule] = {}

    def configure(self, spec: dict) -> None:
        """Set or clear (``mode: null``) the rule of one service. Raise ValueError if invalid."""
        service = spec.get("service")
        if not isinstance(service, str) or not service:
            raise ValueError("service is required")
        mode = spec.get("mode")
        if mode is None:
            self._rules.pop(service, None)
            return
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES} or null")
        operations = spec.get("operations")
        if operations is not None and not (
            isinstance(operations, list) and all(isinstance(o, str) for o in operations)
        ):
            raise ValueError("operations must be a list of operation names")
        count = spec.get("count")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise ValueError("count must be a positive integer")
        self._rules[service] = FaultRule(service, mode, operations, count)

    def take(self, service: str, operation: str) -> str | None:
        """The fault mode to apply to this call, consuming one use of a counted rule."""
        rule = self._rules.get(service)
        if rule is None or not rule.matches(operation):
            return None
        if rule.count is not None:
            rule.count -= 1
            if rule.count <= 0:
                del self._rules[service]
        return rule.mode

    def describe(self) -> list[dict]:
        return [rule.describe() for rule in self._rules.values()]


class Denials:
    """Resources whose reads are denied: the ARN or name of a secret, parameter, S3 object or
    bucket, each possibly with ``*`` wildcards (IAM's resource syntax, e.g.
    ``arn:aws:s3:::bucket/*``). Which operations count as reads is the handlers' business.
    """

    def __init__(self, caller_arn: Callable[[str | None], str]) -> None:
        #: Whose name a denial message gives for an access key id.
        self.caller_arn = caller_arn
        self._patterns: dict[str, re.Pattern] = {}

    def configure(self, spec: dict) -> None:
        """Deny (or, with ``denied: false``, allow again) one resource. Raise ValueError."""
        resource = spec.get("resource")
        if not isinstance(resource, str) or not resource:
            raise ValueError("resource is required (an ARN or name, '*' matches any text)")
        denied = spec.get("denied", True)
        if not isinstance(denied, bool):
            raise ValueError("denied must be a boolean")
        if denied:
            pattern = ".*".join(re.escape(part) for part in resource.split("*"))
            self._patterns[resource] = re.compile(pattern, re.DOTALL)
        else:
            self._patterns.pop(resource, None)

    def clear(self) -> None:
        self._patterns.clear()

    def describe(self) -> list[str]:
        return list(self._patterns)

    def reason(
        self, access_key_id: str | None, action: str, resource: str, *aliases: str
    ) -> str | None:
        """The AccessDenied message if ``resource`` (an ARN; ``aliases`` are other names of the
        same resource) is denied, else None."""
        names = (resource, *aliases)
        if not any(p.fullmatch(n) for p in self._patterns.values() for n in names if n):
            return None
        return (
            f"User: {self.caller_arn(access_key_id)} is not authorized to perform: {action} "
            f"on resource: {resource} with an explicit deny in an identity-based policy "
            "(ec2sim /ec2sim/deny)"
        )
