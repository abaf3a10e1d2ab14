"""Time, injected.

Everything that waits or compares times (the call budget, token expiry, linger,
backoff, the sandbox's rate window) takes a :class:`Clock` instead of calling
:mod:`time` or :func:`asyncio.sleep` directly, so tests drive time with
:class:`FakeClock` and never wait out a real minute (trio's ``MockClock`` idea).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    """Wall time, monotonic time and sleeping, as one injectable object."""

    def time(self) -> float:
        """Seconds since the Unix epoch (wall clock; persisted and sent on the wire)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (durations only)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the caller for ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that only moves when told to.

    ``sleep`` parks the caller until :meth:`advance` moves time past its deadline.
    :meth:`run_until` is the test driver: it lets real I/O (loopback sockets, the
    SQLite thread) make progress and, whenever nothing is due, jumps straight to the
    next sleeper's deadline, so a minute-long rate window passes in milliseconds.
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._wall = start
        self._mono = 1000.0
        self._seq = itertools.count()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + seconds, next(self._seq), fut))
        await fut

    def next_deadline(self) -> float | None:
        """Seconds until the earliest live sleeper wakes, or ``None`` when nobody sleeps."""
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        if not self._sleepers:
            return None
        return max(0.0, self._sleepers[0][0] - self._mono)

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and wake every sleeper now due."""
        if seconds < 0:
            raise ValueError("time does not go backwards")
        target = self._mono + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            step = max(0.0, deadline - self._mono)
            self._mono += step
            self._wall += step
            if not fut.done():
                fut.set_result(None)
        step = target - self._mono
        self._mono += step
        self._wall += step

    def step_wall(self, seconds: float) -> None:
        """Step only the wall clock (an NTP correction, a resumed VM); monotonic time holds."""
        self._wall += seconds

    async def run_until(
        self,
        condition: Callable[[], bool],
        *,
        max_seconds: float = 3600.0,
        real_timeout: float = 20.0,
        settle: float = 0.02,
    ) -> float:
        """Drive time until ``condition()`` holds; return the fake seconds that passed.

        Between checks it yields real time (``settle``) so sockets and threads finish
        their work, then jumps to the next sleeper's deadline. Raises ``TimeoutError``
        when ``max_seconds`` of fake time or ``real_timeout`` of real time run out.
        """
        start = self._mono
        loop = asyncio.get_running_loop()
        real_deadline = loop.time() + real_timeout
        while True:
            if condition():
                return self._mono - start
            if loop.time() > real_deadline:
                raise TimeoutError(f"condition not met after {self._mono - start:.1f} fake s")
            await asyncio.sleep(settle)
            if condition():
                return self._mono - start
            nxt = self.next_deadline()
            if nxt is None:
                continue
            if self._mono + nxt - start > max_seconds:
                raise TimeoutError(f"condition not met within {max_seconds} fake seconds")
            self.advance(nxt)
