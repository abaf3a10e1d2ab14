"""Group commit, for both stores: concurrent ingest requests share transactions.

One commit is in flight at a time; requests arriving meanwhile queue and share the next
one (up to ``max_rows``). Every caller of a group returns when that group committed, or
raises its ``StoreError`` (ingest's 503): a 202 is answered only after a commit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from forwarder.errors import StoreError

__all__ = ["GroupCommit"]

R = TypeVar("R")
T = TypeVar("T")


def _as_store_error(exc: Exception) -> StoreError:
    return exc if isinstance(exc, StoreError) else StoreError(str(exc))


class GroupCommit(Generic[R, T]):
    """Rows of type ``R`` committed in groups by ``commit``, which returns a ``T``.

    ``on_commit(rows, result)`` runs after each successful group; ``failed(exc)`` turns
    what a group raised into the ``StoreError`` its callers get.
    """

    def __init__(
        self,
        commit: Callable[[list[R]], Awaitable[T]],
        *,
        name: str,
        max_rows: int = 20_000,
        on_commit: Callable[[list[R], T], None] | None = None,
        failed: Callable[[Exception], StoreError] = _as_store_error,
    ) -> None:
        self._commit = commit
        self._name = name
        self._max_rows = max_rows
        self._on_commit = on_commit
        self._failed = failed
        self._queue: list[tuple[list[R], asyncio.Future[T]]] = []
        self._queued_rows = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: The last commit succeeded (readiness).
        self.ok = True

    @property
    def queued_rows(self) -> int:
        """Rows waiting for the next group (they count against ``max_pending``)."""
        return self._queued_rows

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self._name)

    async def stop(self) -> None:
        """Let queued writes commit, then stop."""
        if self._task is None:
            return
        self._wake.set()
        if self._queue and not self._task.done():
            await asyncio.gather(*(f for _, f in self._queue), return_exceptions=True)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def add(self, rows: list[R]) -> T:
        """Commit ``rows`` with the next group; its result once it committed."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((rows, fut))
        self._queued_rows += len(rows)
        self._wake.set()
        return await fut

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                group: list[tuple[list[R], asyncio.Future[T]]] = []
                n = 0
                while self._queue and (not group or n < self._max_rows):
                    batch, fut = self._queue.pop(0)
                    group.append((batch, fut))
                    n += len(batch)
                self._queued_rows -= n
                rows = [r for batch, _ in group for r in batch]
                try:
                    result = await self._commit(rows)
                except Exception as exc:
                    # Whatever failed, every waiter hears it (503): a surprise that ended
                    # this loop would leave ingest requests waiting forever.
                    error = self._failed(exc)
                    self.ok = False
                    for _, fut in group:
                        if not fut.done():
                            fut.set_exception(error)
                    continue
                self.ok = True
                for _, fut in group:
                    if not fut.done():
                        fut.set_result(result)
                if self._on_commit is not None:
                    self._on_commit(rows, result)
