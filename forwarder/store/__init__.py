"""Durable, coalescing storage of pending signals; the backend is chosen here, once.

Consumers type against their own small protocols (``ingest.SignalSink``,
``dispatcher.Queue``, ``ratelimit.CallLog``, ``telemetry`` / CLI readers); what a
backend offers in sum is :class:`~forwarder.store.base.StoreBackend`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from forwarder.config import StoreSettings, resolve_path, store_dsn
from forwarder.errors import ConfigError
from forwarder.store.base import (
    DeadLetter,
    Lease,
    ProviderRecord,
    ProviderSummary,
    StoreBackend,
    StoreObserver,
    StoreReader,
)

__all__ = [
    "DeadLetter",
    "Lease",
    "ProviderRecord",
    "ProviderSummary",
    "StoreBackend",
    "StoreObserver",
    "StoreReader",
    "open_reader",
    "open_store",
]


def open_store(
    settings: StoreSettings,
    *,
    base: Path,
    providers: Sequence[str] = (),
    max_age_ms: int | None = None,
    observer: StoreObserver | None = None,
) -> StoreBackend:
    """The store ``[store] backend`` names; use it as an async context manager.

    ``base`` is the config file's directory (relative paths are resolved against it);
    ``providers`` are tracked from the start (broadcasts are kept for them); entries
    older than ``max_age_ms`` are aged out (``None``: only by explicit sweeps).
    """
    if settings.backend == "sqlite":
        from forwarder.store.sqlite import SqliteStore  # noqa: PLC0415

        return SqliteStore(
            resolve_path(base, settings.path),
            max_pending=settings.max_pending,
            providers=providers,
            max_age_ms=max_age_ms,
            observer=observer,
        )
    if settings.backend == "postgres":
        from forwarder.store.postgres.store import PostgresStore  # noqa: PLC0415

        return PostgresStore(
            store_dsn(settings, base),
            max_pending=settings.max_pending,
            providers=providers,
            max_age_ms=max_age_ms,
            observer=observer,
            pool_size=settings.pool_size,
            migrate_at_start=settings.migrate_at_start,
        )
    raise ConfigError([f"store.backend: unknown backend {settings.backend!r}"])


def open_reader(settings: StoreSettings, *, base: Path) -> StoreReader:
    """A reader for ``forwarder status`` and ``dead-letters``, from outside the daemon."""
    if settings.backend == "sqlite":
        from forwarder.store.sqlite import SqliteReader  # noqa: PLC0415

        return SqliteReader(resolve_path(base, settings.path))
    if settings.backend == "postgres":
        from forwarder.store.postgres.reader import PostgresReader  # noqa: PLC0415

        return PostgresReader(store_dsn(settings, base))
    raise ConfigError([f"store.backend: unknown backend {settings.backend!r}"])
