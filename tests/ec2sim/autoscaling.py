"""Auto Scaling lifecycle actions, which moto does not implement (test-world.md §3.4).

Owns ec2sim's answers to CompleteLifecycleAction and RecordLifecycleActionHeartbeat (awsQuery,
form-encoded): each call is recorded for tests and answered with the XML success reply. Every other
Auto Scaling call goes to moto. Talks to nothing.
"""

from __future__ import annotations

from aiohttp import web

from awsproto import AwsCall, AwsError, query_response
from journal import Journal

XMLNS = "http://autoscaling.amazonaws.com/doc/2011-01-01/"
REQUIRED = ("LifecycleHookName", "AutoScalingGroupName")


class LifecycleActions:
    """Records lifecycle-action completions and heartbeats."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def handlers(self) -> dict:
        return {
            "CompleteLifecycleAction": self.record,
            "RecordLifecycleActionHeartbeat": self.record,
        }

    async def record(self, call: AwsCall) -> web.StreamResponse:
        form = call.body
        missing = [k for k in REQUIRED if not form.get(k)]
        if missing:
            raise AwsError(400, "ValidationError", f"missing {', '.join(missing)}")
        if call.operation == "CompleteLifecycleAction" and not form.get("LifecycleActionResult"):
            raise AwsError(400, "ValidationError", "missing LifecycleActionResult")
        self.journal.record(
            operation=call.operation,
            region=call.region,
            hook_name=form.get("LifecycleHookName"),
            asg_name=form.get("AutoScalingGroupName"),
            instance_id=form.get("InstanceId"),
            result=form.get("LifecycleActionResult"),
            token=form.get("LifecycleActionToken"),
        )
        return query_response(call.operation, "", XMLNS)
