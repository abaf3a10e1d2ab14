"""Which dispatchers a commit wakes (``StoreBackend.wake_when``), for both stores.

A dispatcher waiting for a fuller batch asks to be woken once its backlog reaches
``pending`` (or, with ``high``, once a HIGH entry arrives). A provider's broadcast
estimate grows one for one with the broadcast versions stored, so the wake-up is a
threshold on one counter the store keeps (``added``): a commit wakes the dispatchers
whose threshold it passes (a heap), not all 1,000 (waking every dispatcher of a daemon on
every commit cost 34 ms per commit at 1,000 providers). Targeted commits wake their own
provider; anything that lowers a backlog meanwhile (an age-out, a recount) can only make
a wake-up early, never late.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Iterable, Mapping

__all__ = ["Wakeups"]


class Wakeups:
    """``wake_when`` registrations over the store's change events (one per provider)."""

    def __init__(self, events: Mapping[str, asyncio.Event]) -> None:
        self._events = events
        #: provider -> (generation, ``added`` at which it wakes); the heap holds the same,
        #: superseded registrations left in it lazily.
        self._at: dict[str, tuple[int, int]] = {}
        self._heap: list[tuple[int, int, str]] = []
        self._high: set[str] = set()
        self._gen = 0

    def register(
        self, provider: str, *, pending: int, high: bool, waiting: int, added: int
    ) -> None:
        """Wake ``provider`` once ``added`` passes what brings its ``waiting`` entries to
        ``pending`` (or on a HIGH entry, with ``high``), until it is next woken."""
        self._high.discard(provider)
        if pending <= 1 and high:
            self._at.pop(provider, None)  # any commit wakes it
            return
        if high:
            self._high.add(provider)
        self._gen += 1
        at = added + max(1, pending - waiting)
        self._at[provider] = (self._gen, at)
        heapq.heappush(self._heap, (at, self._gen, provider))
        if len(self._heap) > 2 * len(self._at) + 1_000:
            # Drop superseded registrations (each wait of each dispatcher adds one).
            self._heap = [(a, g, p) for p, (g, a) in self._at.items()]
            heapq.heapify(self._heap)

    def wake(self, provider: str) -> None:
        self._at.pop(provider, None)
        self._high.discard(provider)
        event = self._events.get(provider)
        if event is not None:
            event.set()

    def wake_all(self, providers: Iterable[str]) -> None:
        for provider in list(providers):
            self.wake(provider)

    def broadcast(self, added: int, *, high: bool) -> None:
        """A commit brought the broadcast versions stored to ``added`` (``high``: some of
        them HIGH): wake the dispatchers it concerns. Those not registered (busy, or
        waiting for a timer) get their event set, so they look when they next wait."""
        registered = self._at
        for provider, event in self._events.items():
            if provider not in registered:
                event.set()
        heap = self._heap
        while heap and heap[0][0] <= added:
            _, gen, provider = heapq.heappop(heap)
            if registered.get(provider, (None,))[0] == gen:
                self.wake(provider)
        if high:
            for provider in list(self._high):
                self.wake(provider)
