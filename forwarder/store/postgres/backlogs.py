"""What a replica believes each of its providers has waiting, and whom a commit wakes.

A scrape and a dispatcher read backlog counts synchronously, so they are kept in memory
as in SQLite: raised by every replica's commits (this replica's own, and the others' as
announced by NOTIFY; a version replacing one still pending is counted twice until the
next exact count), lowered by what leases settle, expire or dead-letter, and replaced by
an exact count from the tables whenever one is cheap (the store decides when: a small
backlog, a short lease). Counting reads every row above a provider's cursor, so an exact
count after every call of 1,000 providers cost the database more than everything else.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable, Mapping

from forwarder.signals import RiskLevel
from forwarder.store.wakeups import Wakeups

__all__ = ["Backlogs"]

_HIGH = int(RiskLevel.HIGH)


class Backlogs:
    """Per-provider backlog estimates (level -> entries) with their change events."""

    def __init__(self) -> None:
        self._counts: dict[str, dict[int, int]] = {}
        #: Set when something for the provider is committed (``StoreBackend.changed``).
        self.events: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self._wakeups = Wakeups(self.events)
        #: Broadcast versions stored by every replica, as far as this one heard.
        self._added = 0

    def track(self, provider: str) -> None:
        """Count ``provider`` from now on (commits landing meanwhile are not lost)."""
        self._counts.setdefault(provider, {})

    def drop(self, provider: str) -> None:
        self._counts.pop(provider, None)

    def counts(self, provider: str) -> Mapping[int, int]:
        return self._counts.get(provider, {})

    def estimate(self, provider: str) -> int:
        return sum(self._counts.get(provider, {}).values())

    def snapshot(self, provider: str) -> dict[int, int]:
        """The estimate before an exact count starts (see :meth:`counted`)."""
        return dict(self._counts.get(provider, {}))

    def counted(self, provider: str, exact: dict[int, int], before: Mapping[int, int]) -> None:
        """An exact count from the tables, begun at ``before``: commits counted while it
        ran may or may not be in its snapshot, so they are added (an overcount until the
        next count, never an undercount, which could leave a dispatcher asleep)."""
        for level, n in self._counts.get(provider, {}).items():
            if n > before.get(level, 0):
                exact[level] = exact.get(level, 0) + n - before.get(level, 0)
        self._counts[provider] = exact

    def lower(self, provider: str, levels: Mapping[int, int]) -> None:
        """What a lease or an ack took out of ``provider``'s backlog."""
        counts = self._counts.get(provider)
        if counts is None:
            return
        for level, n in levels.items():
            counts[level] = max(0, counts.get(level, 0) - n)

    def broadcast(self, versions: Mapping[int, int]) -> None:
        """Broadcast versions stored per level (every tracked provider's backlog grows)."""
        for level, n in versions.items():
            if not n:
                continue
            for counts in self._counts.values():
                counts[level] = counts.get(level, 0) + n
        added = sum(versions.values())
        if added:
            self._added += added
            self._wakeups.broadcast(self._added, high=versions.get(_HIGH, 0) > 0)

    def targeted(self, versions: Mapping[tuple[str, int], int]) -> None:
        """Targeted entries stored per (provider, level): theirs grow, they are woken."""
        for (provider, level), n in versions.items():
            counts = self._counts.get(provider)
            if counts is not None:
                counts[level] = counts.get(level, 0) + n
        self._wakeups.wake_all({provider for provider, _ in versions})

    def some_for(self, providers: Iterable[str]) -> None:
        """Something more (unsaid how much) for ``providers``: one more each, woken."""
        named = [p for p in providers if p in self._counts]
        for provider in named:
            counts = self._counts[provider]
            counts[1] = counts.get(1, 0) + 1  # at least one more; exact after a lease
        self._wakeups.wake_all(named)

    def tracked(self) -> Iterable[str]:
        return self._counts.keys()

    def wake_when(self, provider: str, *, pending: int, high: bool) -> None:
        """``StoreBackend.wake_when``: woken once commits bring the estimate to
        ``pending`` or, with ``high``, bring a HIGH entry."""
        self._wakeups.register(
            provider,
            pending=pending,
            high=high,
            waiting=self.estimate(provider),
            added=self._added,
        )
