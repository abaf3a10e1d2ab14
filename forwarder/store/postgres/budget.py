"""The call log a dispatcher spends through when several replicas share the budget.

It has the shape of the dispatcher's ``CallLog`` (``record_call`` / ``recent_calls``
under a key, the Okta app's), but ``record_call`` is a *reservation*, awaited just
before the events call goes out (the sender's ``spend``):

* the database grants a slot only to the replica whose epoch still owns the provider
  and only while the app has made fewer than ``calls`` calls in the window on the
  database's clock (:func:`~forwarder.store.postgres.owners.reserve_call`);
* a full window (another replica, or a restart, spent it) is waited out on this
  replica's clock, for as long as the database said, and asked again;
* a lost lease raises :class:`~forwarder.store.postgres.queue.Fenced`: the call is not
  made, and the dispatcher backs off until its coordinator stops it.

So no replica, paused or partitioned or not, ever makes a call the others did not count.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import asyncpg

from forwarder.clock import Clock
from forwarder.errors import StoreError
from forwarder.store.postgres import owners
from forwarder.store.postgres.connect import DB_ERRORS
from forwarder.store.postgres.queue import Fenced

__all__ = ["FencedCallLog"]


class FencedCallLog:
    """One provider's budget slots, reserved in the database under its lease's epoch."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        provider: str,
        replica_id: str,
        epoch: Callable[[], int | None],
        calls: int,
        window_s: float,
        clock: Clock,
        margin_s: float = 1.0,
        max_wait_s: float | None = None,
    ) -> None:
        self.provider = provider
        self._pool = pool
        self._replica_id = replica_id
        self._epoch = epoch
        self._calls = calls
        self._window_s = window_s
        # Okta stamps a call when it arrives, a little after the database does.
        self._margin_s = min(margin_s, window_s * 0.02)
        self._clock = clock
        self._max_wait_s = window_s + 5 if max_wait_s is None else max_wait_s
        #: Reservations refused because the window was full (another replica spent it).
        self.waited = 0
        #: The slot granted last per app (database clock): what ``call_answered`` moves.
        self._granted: dict[str, datetime] = {}

    async def record_call(self, key: str, at_ms: int) -> None:
        """Reserve the slot for the call about to go out under app ``key`` (or raise)."""
        del at_ms  # the database's clock stamps the call
        waited_s = 0.0
        while True:
            epoch = self._epoch()
            if epoch is None:
                raise Fenced(f"this replica no longer owns {self.provider}; the call is not made")
            try:
                async with self._pool.acquire() as conn:
                    slot = await owners.reserve_call(
                        conn,
                        provider=self.provider,
                        replica_id=self._replica_id,
                        epoch=epoch,
                        app_key=key,
                        calls=self._calls,
                        window_s=self._window_s,
                        margin_s=self._margin_s,
                    )
            except DB_ERRORS as exc:
                raise StoreError(f"cannot reserve a call slot: {exc}") from exc
            if slot.outcome == "granted":
                if slot.slot_at is not None:
                    self._granted[key] = slot.slot_at
                return
            if slot.outcome == "lost":
                raise Fenced(f"the lease on {self.provider} moved to another replica")
            if waited_s >= self._max_wait_s:
                raise StoreError(f"no call slot for {self.provider} after {waited_s:.0f} s")
            self.waited += 1
            wait = max(0.05, slot.wait_s)
            await self._clock.sleep(wait)
            waited_s += wait

    async def call_answered(self, key: str, at_ms: int, answered_ms: int) -> None:
        """Count the call just granted from now, on the database's clock: the receiver
        stamped it before this, so no replica's window reopens before the receiver's."""
        del at_ms, answered_ms  # the database's clock stamps it
        slot = self._granted.pop(key, None)
        if slot is None:
            return
        try:
            async with self._pool.acquire() as conn:
                await conn.execute(
                    "UPDATE call_log SET at = greatest(at, clock_timestamp())"
                    " WHERE app_key = $1 AND owner = $2 AND at = $3",
                    key,
                    self._replica_id,
                    slot,
                )
        except DB_ERRORS as exc:
            raise StoreError(f"cannot stamp the call's answer: {exc}") from exc

    async def recent_calls(self, key: str, since_ms: int) -> list[int]:
        """Call times of app ``key`` from ``since_ms`` (database clock), oldest first."""
        try:
            async with self._pool.acquire() as conn:
                rows = await conn.fetch(
                    "SELECT (extract(epoch FROM at) * 1000)::bigint AS at_ms FROM call_log"
                    " WHERE app_key = $1 AND at >= to_timestamp($2 / 1000.0) ORDER BY at",
                    key,
                    since_ms,
                )
        except DB_ERRORS as exc:
            raise StoreError(f"cannot read the call log: {exc}") from exc
        return [int(r["at_ms"]) for r in rows]
