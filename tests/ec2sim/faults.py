"""Fault injection for the AWS endpoint, one rule per service.

Owns the fault table the control API edits and the decision "does this call fail, and how". It
renders nothing itself; the gateway turns a chosen mode into a reply (or a dropped connection).
"""

from __future__ import annotations

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
