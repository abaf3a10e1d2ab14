"""The per-provider dispatcher tasks of a running daemon, started and stopped one by one.

A reload adds, removes and restarts providers while the others keep sending, so each
dispatcher runs in its own task (inside the daemon's one ``TaskGroup``) with its own
stop event. Stopping a provider lets its call in flight finish; a provider stopped and
started again under the same name waits for the old task to end first, so two
dispatchers never spend one provider's budget at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import structlog

from forwarder.dispatcher import Dispatcher

__all__ = ["Supervisor"]


@dataclass(slots=True)
class _Running:
    dispatcher: Dispatcher
    stop: asyncio.Event
    task: asyncio.Task[None]


class Supervisor:
    """Starts and stops dispatcher tasks in ``group``; knows which are running."""

    def __init__(self, group: asyncio.TaskGroup) -> None:
        self._group = group
        self._running: dict[str, _Running] = {}
        self._stopping: dict[str, _Running] = {}
        # Read at every scrape for each of 1,000 orgs: a live view, never a fresh copy.
        self._dispatchers: dict[str, Dispatcher] = {}
        self._view = MappingProxyType(self._dispatchers)
        self._log = structlog.get_logger("forwarder.supervisor")

    @property
    def running(self) -> Mapping[str, Dispatcher]:
        """Running dispatchers by provider name (a read-only live view)."""
        return self._view

    def get(self, name: str) -> Dispatcher | None:
        """The running dispatcher of ``name``, or the stopping one while it finishes."""
        entry = self._running.get(name) or self._stopping.get(name)
        return entry.dispatcher if entry else None

    def is_stopping(self, name: str) -> bool:
        return name in self._stopping

    async def start(self, name: str, dispatcher: Dispatcher) -> None:
        """Run ``dispatcher`` as ``name`` (after an earlier one of that name has stopped)."""
        if name in self._running:
            raise RuntimeError(f"provider {name!r} is already running")
        previous = self._stopping.get(name)
        if previous is not None:
            await asyncio.wait({previous.task})
        stop = asyncio.Event()
        task = self._group.create_task(dispatcher.run(stop), name=f"dispatch:{name}")
        self._running[name] = _Running(dispatcher, stop, task)
        self._dispatchers[name] = dispatcher

    def _begin_stop(self, name: str) -> _Running:
        entry = self._running.pop(name)
        del self._dispatchers[name]
        self._stopping[name] = entry
        entry.stop.set()
        return entry

    async def _ended(self, name: str, entry: _Running) -> Dispatcher:
        try:
            await asyncio.wait({entry.task})
        finally:
            if self._stopping.get(name) is entry:
                del self._stopping[name]
        return entry.dispatcher

    async def stop(self, name: str) -> Dispatcher:
        """Stop ``name`` after its call in flight; return its dispatcher once it has ended."""
        return await self._ended(name, self._begin_stop(name))

    def retire(self, name: str, *, then: Callable[[str], None]) -> None:
        """Stop ``name`` now, in the background (its call in flight finishes), then ``then``."""
        entry = self._begin_stop(name)

        async def retiring() -> None:
            await self._ended(name, entry)
            then(name)

        self._group.create_task(retiring(), name=f"retire:{name}")

    async def shutdown(self, grace_s: float) -> None:
        """Stop everything: calls in flight get ``grace_s``, then they are cancelled."""
        entries = [*self._running.values(), *self._stopping.values()]
        for entry in entries:
            entry.stop.set()
        tasks = {entry.task for entry in entries}
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=grace_s)
        for task in late:
            self._log.warning("call_cancelled_at_shutdown", task=task.get_name())
            task.cancel()
