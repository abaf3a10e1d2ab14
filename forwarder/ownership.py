"""One task per provider this replica owns, started and stopped by the coordinator.

With several replicas on PostgreSQL, a provider's dispatcher runs only on the replica
holding its lease. :class:`OwnedTasks` is the coordinator's observer that turns lease
changes into tasks in one TaskGroup: ``acquired`` starts ``start(provider, epoch,
stop)``; ``lost`` sets that task's ``stop`` (its call in flight may finish, no new one
starts). A provider lost and won back before its old task ended starts only after the
old one returned, so one process never runs two dispatchers for one provider.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

__all__ = ["OwnedTasks"]

Start = Callable[[str, int, asyncio.Event], Awaitable[None]]


class OwnedTasks:
    """Runs ``start(provider, epoch, stop)`` for each provider while it is owned."""

    def __init__(self, start: Start) -> None:
        self._start = start
        self._events: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        self._stops: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._log = structlog.get_logger("forwarder.ownership")

    # -- OwnershipObserver -----------------------------------------------------------

    def acquired(self, provider: str, epoch: int) -> None:
        self._events.put_nowait((provider, epoch))

    def lost(self, provider: str, reason: str) -> None:
        stop = self._stops.pop(provider, None)
        if stop is not None:
            stop.set()

    # -- running -----------------------------------------------------------------------

    def running(self) -> list[str]:
        """Providers whose task is running now (owned, or finishing a call)."""
        return sorted(p for p, t in self._tasks.items() if not t.done())

    async def run(self, stop: asyncio.Event, *, grace_s: float) -> None:
        """Start and stop tasks until ``stop``; then stop them all, cancelling after ``grace_s``."""
        async with asyncio.TaskGroup() as tg:
            stopping = asyncio.ensure_future(stop.wait())
            try:
                while not stop.is_set():
                    getting = asyncio.ensure_future(self._events.get())
                    await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    if not getting.done():
                        getting.cancel()
                        break
                    provider, epoch = getting.result()
                    previous = self._tasks.get(provider)
                    own_stop = asyncio.Event()
                    self._stops[provider] = own_stop
                    self._tasks[provider] = tg.create_task(
                        self._after(previous, provider, epoch, own_stop),
                        name=f"dispatch:{provider}",
                    )
            finally:
                stopping.cancel()
                for own_stop in self._stops.values():
                    own_stop.set()
                self._stops.clear()
                pending = [t for t in self._tasks.values() if not t.done()]
                if pending:
                    _, late = await asyncio.wait(pending, timeout=grace_s)
                    for task in late:
                        self._log.warning("call_cancelled_at_shutdown", task=task.get_name())
                        task.cancel()

    async def _after(
        self,
        previous: asyncio.Task[None] | None,
        provider: str,
        epoch: int,
        stop: asyncio.Event,
    ) -> None:
        if previous is not None and not previous.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(previous)
        if stop.is_set():
            return
        await self._start(provider, epoch, stop)
