"""What every store backend hands its consumers, and the whole surface a backend offers.

Each consumer declares the few methods it calls, next to itself:

* ``ingest.SignalSink``: ``add``;
* ``dispatcher.Queue``: ``lease`` / ``ack`` / ``release`` / ``dead_letter``, the backlog
  counts and the wake-up event;
* ``ratelimit.CallLog``: ``record_call`` / ``recent_calls`` under a key of the caller's
  choosing (a provider name, or an app identity);
* ``telemetry`` and ``forwarder status`` / ``dead-letters``: ``StoreMonitor`` and
  :class:`StoreReader` (a snapshot and the dead-letter table, from any process).

:class:`StoreBackend` is their sum: what :func:`forwarder.store.open_store` returns.
``tests/store_contract/`` is the real definition of the semantics; any backend passes it.

Every time in this seam is an integer count of milliseconds since the Unix epoch
(names end in ``_ms``).

Semantics every backend keeps:

* **Broadcast stored once.** A signal without targets is one stored entry whatever the
  number of providers; each provider works through it on its own. A targeted signal is
  one entry per (provider, ip). ``max_pending`` counts stored entries.
* **Coalescing.** Per ip (broadcast) and per (provider, ip) (targeted): the newest
  observation wins (tie: higher risk). Between a targeted entry and the broadcast entry
  of the same ip, a provider is sent the newer of the two once, never both.
* **Durability.** ``add`` returns only after the signals are committed.
* **Leases.** ``lease`` hands a provider its next batch (HIGH, then MEDIUM, then LOW;
  first stored first within a level), never an ip that provider already has in flight.
  ``ack`` settles only the versions that were sent: an entry replaced while in flight
  stays pending. Leases do not survive a restart: everything unacknowledged is sent again.
* **Ageing.** Entries older than ``max_age`` are dropped (counted as expired for each
  provider that had not sent them), so a provider failing for hours cannot fill the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self

from forwarder.signals import RiskLevel, Signal

__all__ = [
    "DeadLetter",
    "Lease",
    "ProviderRecord",
    "ProviderSummary",
    "StoreBackend",
    "StoreObserver",
    "StoreReader",
]


@dataclass(frozen=True, slots=True)
class Lease:
    """A batch handed to a dispatcher; ``expired`` entries were dropped, not leased."""

    provider: str
    lease_id: int
    signals: Sequence[Signal]
    expired: int = 0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A signal Okta rejected, with Okta's reasons; ``id`` names it for a requeue."""

    provider: str
    signal: Signal
    failed_ms: int
    reason: str
    causes: Sequence[str] = field(default_factory=tuple)
    id: int = 0


@dataclass(frozen=True, slots=True)
class ProviderRecord:
    """A provider's state and last events call, as its dispatcher last persisted them."""

    provider: str
    status: str
    updated_ms: int
    last_call_ms: int | None = None
    last_outcome: str | None = None
    last_error: str | None = None
    hint: str | None = None
    until_ms: int | None = None

    def row(
        self,
    ) -> tuple[str, str, int, int | None, str | None, str | None, str | None, int | None]:
        """The fields in ``provider_state`` column order (both stores' upserts)."""
        return (
            self.provider,
            self.status,
            self.updated_ms,
            self.last_call_ms,
            self.last_outcome,
            self.last_error,
            self.hint,
            self.until_ms,
        )


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


class StoreReader(Protocol):
    """A snapshot of the store and its dead letters, usable from another process."""

    async def summaries(self, providers: Sequence[str] = ()) -> list[ProviderSummary]:
        """Per provider, ``providers`` first, then any other the store knows."""
        ...

    async def dead_letters(
        self,
        provider: str | None = None,
        *,
        ids: Collection[int] = (),
        limit: int | None = 100,
    ) -> list[DeadLetter]:
        """Dead letters, newest first; filtered by provider and/or ids."""
        ...

    async def delete_dead_letters(self, ids: Collection[int]) -> int:
        """Remove these dead letters (after they were accepted again); return how many."""
        ...


class StoreBackend(StoreReader, Protocol):
    """Everything a backend offers (the sum of its consumers' protocols)."""

    max_pending: int

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    @property
    def writable(self) -> bool: ...

    async def probe_writable(self) -> bool: ...

    async def attach(self, provider: str) -> None: ...

    async def add(self, items: Sequence[tuple[Sequence[str], Signal]]) -> None: ...

    def pending_total(self) -> int: ...

    def pending_counts(self, provider: str) -> Mapping[RiskLevel, int]: ...

    def dead_letter_count(self, provider: str) -> int: ...

    def changed(self, provider: str) -> asyncio.Event: ...

    def wake_when(self, provider: str, *, pending: int = 1, high: bool = True) -> None: ...

    async def lease(
        self, provider: str, *, limit: int, now_ms: int, max_age_ms: int, expiry_margin_ms: int
    ) -> Lease: ...

    async def ack(self, lease: Lease) -> int: ...

    async def release(self, lease: Lease) -> None: ...

    async def dead_letter(
        self, lease: Lease, *, reason: str, causes: Sequence[str], at_ms: int
    ) -> int: ...

    async def dead_letter_some(
        self, lease: Lease, rejected: Mapping[str, Sequence[str]], *, reason: str, at_ms: int
    ) -> int: ...

    async def sweep(self, *, now_ms: int, max_age_ms: int) -> int: ...

    async def record_call(self, key: str, at_ms: int) -> None: ...

    async def recent_calls(self, key: str, since_ms: int) -> list[int]: ...

    async def call_answered(self, key: str, at_ms: int, answered_ms: int) -> None: ...

    async def record_provider_state(self, record: ProviderRecord) -> None: ...

    async def oldest_pending_ms(self, provider: str) -> Mapping[RiskLevel, int]: ...

    async def oldest_pending_many(
        self, providers: Sequence[str]
    ) -> dict[str, Mapping[RiskLevel, int]]: ...

    async def refresh(self) -> None: ...
