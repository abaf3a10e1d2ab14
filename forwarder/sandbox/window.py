"""The sliding-window call budget of the events endpoint and its ``X-Rate-Limit-*`` headers.

Okta's guide allows three calls per minute per risk provider on ``/api/v1/risk/events/ip``
(risk-api.md §5) and returns ``X-Rate-Limit-Limit``, ``-Remaining`` and ``-Reset`` (UTC epoch
seconds, an absolute time) on every answer. Times are passed in by the caller, which reads
them from the injected clock.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["SlidingWindow"]


class SlidingWindow:
    """Calls seen in the last ``window_s`` seconds, of which ``limit`` may pass.

    A call made at ``t`` occupies the window until ``t + window_s``. Every call counts,
    including the ones refused with 429, so a client that ignores the headers and keeps
    calling keeps its window full.
    """

    def __init__(self, *, limit: int, window_s: float) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.limit = limit
        self.window_s = window_s
        self._calls: deque[float] = deque()

    def _prune(self, now: float) -> None:
        while self._calls and self._calls[0] <= now - self.window_s:
            self._calls.popleft()

    def count(self, now: float) -> int:
        """Calls inside the window at ``now``."""
        self._prune(now)
        return len(self._calls)

    def hit(self, now: float) -> bool:
        """Record a call at ``now``; True when it fits in the budget, False for a 429."""
        self._prune(now)
        allowed = len(self._calls) < self.limit
        self._calls.append(now)
        return allowed

    def reset_at(self, now: float) -> float:
        """When the window next has room (exact, not rounded).

        With the window not full this is when its oldest call leaves (``now + window_s``
        when it is empty). When refused calls have overfilled it, it is when enough calls
        have left for one more to fit, so a client that waits until ``Reset`` succeeds.
        """
        self._prune(now)
        if not self._calls:
            return now + self.window_s
        over = max(0, len(self._calls) - self.limit)
        return self._calls[over] + self.window_s

    def headers(self, now: float, *, exhausted: bool = False) -> dict[str, str]:
        """``X-Rate-Limit-*`` values after the calls recorded so far.

        ``exhausted`` forces ``Remaining: 0`` (an injected 429 must not advertise room).
        """
        remaining = 0 if exhausted else max(0, self.limit - self.count(now))
        return {
            "X-Rate-Limit-Limit": str(self.limit),
            "X-Rate-Limit-Remaining": str(remaining),
            "X-Rate-Limit-Reset": str(math.ceil(self.reset_at(now))),
        }
