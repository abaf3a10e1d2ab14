"""What telemetry reads from a running daemon: ``/readyz`` and the scrape-time gauges.

:class:`DaemonView` implements ``telemetry.LiveSource`` over the daemon's running
dispatchers and store, so ``app`` composes and this module reports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from forwarder.clock import Clock
from forwarder.dispatcher import Dispatcher
from forwarder.errors import StoreError
from forwarder.signals import RiskLevel, format_ms
from forwarder.telemetry import BudgetView, drain_estimate_s, readiness_body

if TYPE_CHECKING:
    from forwarder.app import Daemon
    from forwarder.store import StoreBackend

__all__ = ["REFRESH_WAIT_S", "DaemonView"]

#: Longest a scrape waits for the store before answering with the previous values.
REFRESH_WAIT_S = 0.5


class DaemonView:
    """Readiness and live metrics of one :class:`~forwarder.app.Daemon`."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon
        self._oldest: dict[str, Mapping[RiskLevel, int]] = {}
        self._refreshing: asyncio.Future[None] | None = None
        self._log = structlog.get_logger("forwarder")

    @property
    def store(self) -> StoreBackend | None:
        return self._daemon.store

    @property
    def dispatchers(self) -> Mapping[str, Dispatcher]:
        return self._daemon.dispatchers

    @property
    def clock(self) -> Clock:
        return self._daemon.clock

    @property
    def ready(self) -> asyncio.Event:
        return self._daemon.ready

    def _ingest_up(self) -> bool:
        ingest = self._daemon.ingest
        return ingest is not None and ingest.accepting and self.ready.is_set()

    def is_ready(self) -> bool:
        return self.store is not None and self.store.writable and self._ingest_up()

    def provider_entry(self, name: str, d: Dispatcher, now: float) -> dict[str, Any]:
        """What ``/readyz`` says about one provider."""
        store = self.store
        st = d.state
        entry: dict[str, Any] = {
            "state": st.status,
            "pending": sum(store.pending_counts(name).values()) if store else None,
            "dead_letters": store.dead_letter_count(name) if store else None,
            "next_call_in_s": round(max(0.0, d.next_call_at() - now), 3),
            "last_call_at": _iso(st.last_call_at),
            "last_outcome": st.last_outcome,
        }
        if st.status != "ok":
            entry.update(
                last_error=st.last_error,
                hint=st.hint,
                until=_iso(st.until),
                retry_in_s=round(max(0.0, st.until - now), 3) if st.until else None,
            )
        return entry

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """``/readyz``: 200 when the store is writable, ingest listens and dispatchers run.

        Tokens are not waited for: at 1,000 orgs they take a while, and one org's
        credentials must not keep the others' signals out. A provider's trouble
        (failing credentials, 429s, Okta errors) is reported in the body, never as
        not-ready: restarting or unrouting the pod cannot fix it and would stop every
        other provider's intake too. The body is bounded: a count of providers by state
        and the first providers that are not ok; ``forwarder status`` has every one.
        """
        store = self.store
        store_ok = store is not None and (store.writable or await store.probe_writable())
        ingest_ok = self._ingest_up()
        now = self.clock.time()
        dispatchers = self.dispatchers
        states = {name: d.state.status for name, d in dispatchers.items()}
        body = readiness_body(
            states,
            detail=lambda name: self.provider_entry(name, dispatchers[name], now),
        )
        ready = store_ok and ingest_ok
        return ready, {
            "status": "ready" if ready else "not_ready",
            "store": "writable" if store_ok else "unavailable",
            "ingest": "listening" if ingest_ok else "not_accepting",
            "dispatchers": "running" if self.ready.is_set() else "starting",
            **body,
        }

    def providers(self) -> Sequence[str]:
        return list(self.dispatchers)

    def store_entries(self) -> int:
        return self.store.pending_total() if self.store else 0

    def pending_counts(self, provider: str) -> Mapping[RiskLevel, int]:
        return self.store.pending_counts(provider) if self.store else {}

    def dead_letter_count(self, provider: str) -> int:
        return self.store.dead_letter_count(provider) if self.store else 0

    def oldest_pending_ms(self, provider: str) -> Mapping[RiskLevel, int]:
        return self._oldest.get(provider, {})

    def budget(self, provider: str) -> BudgetView:
        d = self.dispatchers[provider]
        b = d.budget
        now = self.clock.time()
        wait = max(0.0, d.next_call_at() - now)
        # While Okta said "wait" (429 or Remaining: 0) no call is allowed, whatever our
        # own sliding window says.
        remaining = 0 if b.blocked_until() > now else b.remaining()
        pending = sum(self.pending_counts(provider).values())
        drain = drain_estimate_s(
            pending=pending,
            per_call=d.max_per_call,
            calls=b.calls,
            window_s=b.window_s,
            next_call_s=wait,
        )
        return BudgetView(
            calls=b.calls,
            window_s=b.window_s,
            remaining=remaining,
            next_call_s=wait,
            server_remaining=b.server_remaining,
            drain_s=drain,
        )

    def provider_status(self, provider: str) -> str:
        return self.dispatchers[provider].state.status

    async def refresh(self) -> None:
        """Update the values that need the store, waiting at most ``REFRESH_WAIT_S``.

        The store thread may be busy behind a long write (an ack of 1,000 rows, a burst of
        intake): a scrape then answers with the values of the refresh before, and the
        refresh in flight finishes in the background (one at a time).
        """
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._refresh())
        await asyncio.wait({self._refreshing}, timeout=REFRESH_WAIT_S)
        if self._refreshing.done():
            self._refreshing.result()

    async def close(self) -> None:
        """Cancel a refresh still in flight (the daemon is stopping)."""
        if self._refreshing is not None and not self._refreshing.done():
            self._refreshing.cancel()
            await asyncio.wait({self._refreshing})

    async def _refresh(self) -> None:
        if self.store is None:
            return
        if not self.store.writable:
            # forwarder_ready recovers on a scrape too, where nothing polls /readyz.
            await self.store.probe_writable()
        try:
            await self.store.refresh()
        except StoreError as exc:
            self._log.warning("metrics_refresh_failed", error=str(exc))
        store = self.store
        # Only orgs with something waiting have an age to read; at 1,000 orgs the reads
        # go to the store thread in one hop (one hop each cost ~7 ms under load: 7 s).
        waiting = [n for n in self.dispatchers if any(store.pending_counts(n).values())]
        for name in set(self._oldest) - set(waiting):
            del self._oldest[name]
        try:
            self._oldest.update(await store.oldest_pending_many(waiting))
        except StoreError as exc:
            # A scrape still answers (with the previous ages); readiness reports the store.
            self._log.warning("metrics_refresh_failed", error=str(exc))


def _iso(epoch_s: float | None) -> str | None:
    return format_ms(int(epoch_s * 1000)) if epoch_s is not None else None
