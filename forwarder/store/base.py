"""What a store backend offers the ingest API and the dispatchers.

Semantics every backend keeps:

* **Coalescing.** Keyed by (provider, ip): a new signal replaces the waiting one when its
  timestamp is newer (tie: higher risk wins), so the backlog is bounded by distinct IPs
  and a retried ingest request is harmless.
* **Durability.** ``add`` returns only after the signals are committed.
* **Leases.** ``lease`` hands out the next batch (HIGH, then MEDIUM, then LOW; oldest
  first within a level) and marks it in flight. ``ack`` removes only the versions that
  were sent: a row replaced while in flight loses its lease and stays pending.
  Leases do not survive a restart, so everything unacknowledged is sent again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from forwarder.signals import RiskLevel, Signal

__all__ = [
    "AddResult",
    "DeadLetter",
    "Lease",
    "ProviderRecord",
    "ProviderSummary",
    "Store",
    "StoreObserver",
]


@dataclass(frozen=True, slots=True)
class AddResult:
    """Outcome of one committed ``add``."""

    accepted: int


@dataclass(frozen=True, slots=True)
class Lease:
    """A batch handed to a dispatcher; ``expired`` rows were dropped, not leased."""

    provider: str
    lease_id: int
    signals: Sequence[Signal]
    expired: int = 0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A signal Okta rejected, with Okta's reasons."""

    provider: str
    signal: Signal
    failed_ms: int
    reason: str
    causes: Sequence[str] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class ProviderRecord:
    """A provider's state and last events call, as its dispatcher last persisted them.

    Times are epoch seconds. ``forwarder status`` reads these from another process.
    """

    provider: str
    status: str
    updated_at: float
    last_call_at: float | None = None
    last_outcome: str | None = None
    last_error: str | None = None
    hint: str | None = None
    until: float | None = None


@dataclass(frozen=True, slots=True)
class ProviderSummary:
    """What a store holds for one provider, read without disturbing a running daemon."""

    provider: str
    pending: Mapping[RiskLevel, int]
    oldest_ms: Mapping[RiskLevel, int]
    dead_letters: int
    record: ProviderRecord | None = None


class StoreObserver(Protocol):
    """Telemetry hooks a store calls after it commits (implemented by telemetry.Metrics)."""

    def signals_stored(self, provider: str, signals: int, new_rows: int) -> None: ...

    def signals_expired(self, provider: str, count: int) -> None: ...


class Store(Protocol):
    """The storage surface used by ingest and the dispatchers."""

    max_pending: int

    @property
    def writable(self) -> bool:
        """The store is open and its last write committed (readiness)."""
        ...

    async def add(self, items: Sequence[tuple[Sequence[str], Signal]]) -> AddResult:
        """Commit signals (each for the listed providers); raise ``StoreFull`` at capacity."""
        ...

    def pending_total(self) -> int:
        """Distinct (provider, ip) pairs waiting, all providers."""
        ...

    def pending_counts(self, provider: str) -> Mapping[RiskLevel, int]:
        """Pending rows of ``provider`` by risk level (in flight included)."""
        ...

    def changed(self, provider: str) -> asyncio.Event:
        """An event set whenever new signals for ``provider`` are committed."""
        ...

    async def lease(
        self, provider: str, *, limit: int, now_ms: int, max_age_ms: int, expiry_margin_ms: int
    ) -> Lease:
        """Lease the next batch, dropping (and counting) expired or too old signals."""
        ...

    async def ack(self, lease: Lease) -> int:
        """Okta accepted the batch: remove the versions sent; return rows removed."""
        ...

    async def release(self, lease: Lease) -> None:
        """Keep the batch for a later attempt."""
        ...

    async def dead_letter(
        self, lease: Lease, *, reason: str, causes: Sequence[str], at: float
    ) -> None:
        """Okta rejected the batch: move what was sent to the dead-letter table."""
        ...

    async def dead_letter_some(
        self, lease: Lease, rejected: Mapping[str, Sequence[str]], *, reason: str, at: float
    ) -> int:
        """Okta rejected some subjects: dead-letter the signals of ``lease`` whose IP is a
        key of ``rejected`` (with those causes), release the rest; return how many moved."""
        ...

    async def record_call(self, provider: str, at: float) -> None:
        """Persist the time of an events call (the budget survives restarts)."""
        ...

    async def recent_calls(self, provider: str, since: float) -> list[float]:
        """Call times of ``provider`` at or after ``since``, oldest first."""
        ...

    async def record_provider_state(self, record: ProviderRecord) -> None:
        """Persist a provider's state and last call (one small write per call)."""
        ...

    async def probe_writable(self) -> bool:
        """Try a tiny write now; True (and ``writable`` again) when it commits."""
        ...

    async def oldest_pending_ms(self, provider: str) -> Mapping[RiskLevel, int]:
        """Oldest observation time per risk level (levels with no rows are absent)."""
        ...

    async def refresh_dead_letter_counts(self) -> None:
        """Recount dead letters (``forwarder dead-letters requeue`` removes them from outside)."""
        ...

    def dead_letter_count(self, provider: str) -> int:
        """Signals of ``provider`` in the dead-letter table."""
        ...

    async def dead_letters(self, provider: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """The newest dead letters, newest first."""
        ...
