"""What ec2sim saw: AWS requests, ECS state changes and Auto Scaling lifecycle actions.

Owns the in-memory, append-only records the control API reads back. Records are plain JSON-able
dicts with a ``time`` in epoch seconds. It talks to nothing.
"""

from __future__ import annotations

import time


class Journal:
    """An ordered list of records, filterable by exact field values."""

    def __init__(self) -> None:
        self._entries: list[dict] = []

    def record(self, **fields) -> dict:
        entry = {"time": time.time(), **fields}
        self._entries.append(entry)
        return entry

    def query(self, **filters) -> list[dict]:
        wanted = {k: v for k, v in filters.items() if v is not None}
        return [e for e in self._entries if all(e.get(k) == v for k, v in wanted.items())]

    def clear(self) -> None:
        self._entries.clear()
