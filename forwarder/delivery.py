"""What a sender reports back to the dispatcher: pure value types shared by both sides."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Delivery", "ServerWindow"]


@dataclass(frozen=True, slots=True)
class ServerWindow:
    """The server's own view of its rate window, from ``X-Rate-Limit-*`` headers.

    ``reset_in_s`` is ``Reset - Date`` (plus Okta's recommended second), so local clock
    skew does not matter: the caller adds it to its own clock.
    """

    limit: int | None = None
    remaining: int | None = None
    reset_in_s: float | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """A batch the receiver accepted."""

    subjects: int
    calls: int = 1
    window: ServerWindow | None = None
