"""The per-provider call budget: a sliding window, fed back by the server's headers.

Okta's guide allows three calls per minute per risk provider. A bucket that refills
continuously at 3/min lets five calls through inside one minute and earns 429s, so
this is a *sliding log*: each spent call comes back exactly ``window_s`` after it was
spent, and never more than ``calls`` are made in any ``window_s``. Every call counts,
including retries and calls answered 401 or 429. Call times are persisted by the store
so the budget holds across restarts.

On top of that, whatever the server says wins: when ``X-Rate-Limit-Remaining`` is 0,
nothing is sent before ``X-Rate-Limit-Reset`` (computed against the response's
``Date``; see :class:`forwarder.delivery.ServerWindow`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Protocol

from forwarder.clock import Clock
from forwarder.delivery import ServerWindow

__all__ = ["CallBudget", "CallLog", "max_calls_in_window"]


class CallLog(Protocol):
    """Where call times persist, so a budget survives restarts (the store provides it).

    ``key`` is the caller's choice: whatever owns the budget (a provider, an Okta app).
    """

    async def record_call(self, key: str, at_ms: int) -> None:
        """Persist one call made at ``at_ms`` (epoch milliseconds)."""
        ...

    async def recent_calls(self, key: str, since_ms: int) -> list[int]:
        """Times of ``key``'s calls at or after ``since_ms``, oldest first."""
        ...

    async def call_answered(self, key: str, at_ms: int, answered_ms: int) -> None:
        """The call logged at ``at_ms`` was answered at ``answered_ms``: count it from then.

        The receiver stamps a call when it arrives, somewhere between the two; counted
        from the earlier time, a window could reopen before the receiver's does (a
        starved process may take a second from its stamp to the wire).
        """
        ...


class CallBudget:
    """Sliding-window call budget for one provider, driven by an injected clock.

    Inside a process the window runs on the monotonic clock, so a wall-clock step (NTP,
    a resumed VM) cannot reopen it early; wall times are used only at the edges: the
    call history loaded from the store, the times persisted, and the times reported.
    """

    def __init__(
        self,
        *,
        calls: int,
        window_s: float,
        clock: Clock,
        history: Iterable[float] = (),
        margin_s: float = 1.0,
    ) -> None:
        if calls < 1 or window_s <= 0:
            raise ValueError("a budget needs at least one call per positive window")
        self.calls = calls
        self.window_s = window_s
        self._clock = clock
        # Okta stamps a call when it arrives, a little after we stamp it; the margin
        # keeps our window from reopening before theirs does.
        self._margin_s = min(margin_s, window_s * 0.02)
        # Calls made before this process started, placed on this process's monotonic line.
        offset = clock.monotonic() - clock.time()
        self._times: deque[float] = deque(sorted(t + offset for t in history))
        self._blocked_until = 0.0  # monotonic
        self.server_remaining: int | None = None

    def _wall(self, mono: float) -> float:
        return self._clock.time() + (mono - self._clock.monotonic())

    def _prune(self, now: float) -> None:
        horizon = now - self.window_s - self._margin_s
        while self._times and self._times[0] <= horizon:
            self._times.popleft()

    def used(self) -> int:
        """Calls made in the current window."""
        self._prune(self._clock.monotonic())
        return len(self._times)

    def remaining(self) -> int:
        """Calls still allowed in the current window by our own budget."""
        return max(0, self.calls - self.used())

    def _next_slot_mono(self) -> float:
        now = self._clock.monotonic()
        self._prune(now)
        slot = now
        if len(self._times) >= self.calls:
            # The call that must leave the window before another may enter it.
            slot = self._times[-self.calls] + self.window_s + self._margin_s
        return max(slot, self._blocked_until, now)

    def next_slot(self) -> float:
        """Wall time at which the next call may be made (now, if it may be made now)."""
        return self._wall(self._next_slot_mono())

    def wait_s(self) -> float:
        """Seconds until :meth:`next_slot`."""
        return max(0.0, self._next_slot_mono() - self._clock.monotonic())

    def last_call(self) -> float | None:
        """Wall time of the most recent call still remembered (None when none)."""
        return self._wall(self._times[-1]) if self._times else None

    def blocked_until(self) -> float:
        """Wall time until which the server told us to hold off (0 when it did not)."""
        if self._blocked_until <= self._clock.monotonic():
            return 0.0
        return self._wall(self._blocked_until)

    def spend(self) -> float:
        """Record a call made now; return its wall time (what the store persists)."""
        self._times.append(self._clock.monotonic())
        return self._clock.time()

    def answered(self) -> None:
        """The call spent last was answered now: count it from now (see
        :meth:`CallLog.call_answered`)."""
        if self._times:
            self._times[-1] = max(self._times[-1], self._clock.monotonic())

    def block_for(self, seconds: float) -> None:
        """Send nothing for ``seconds`` from now (a 429 or a spent server window)."""
        self._blocked_until = max(self._blocked_until, self._clock.monotonic() + seconds)

    def observe(self, window: ServerWindow | None) -> None:
        """Obey the server's rate headers from any response."""
        if window is None:
            return
        self.server_remaining = window.remaining
        if window.remaining == 0 and window.reset_in_s is not None:
            self.block_for(window.reset_in_s)


def max_calls_in_window(times: Iterable[float], window_s: float) -> int:
    """Most calls inside any ``window_s`` span (two calls exactly a window apart are not).

    The budget's promise, measured: the demo, the benchmarks and the tests check it on
    what the org recorded.
    """
    ordered = sorted(times)
    best = 0
    first = 0
    for i, t in enumerate(ordered):
        while ordered[first] <= t - window_s:
            first += 1
        best = max(best, i - first + 1)
    return best
