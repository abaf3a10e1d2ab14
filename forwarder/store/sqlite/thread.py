"""The one thread that owns the SQLite connection, with ingest served first.

Every store operation runs on this thread in order, except that ingest's group commits
go ahead of whatever dispatch work (leases, acks, call-log writes) is queued: at 1,000
providers a commit queued first-come-first-served waited behind hundreds of leases,
and intake fell to a few requests a second. Within each of the two classes the order
is first submitted, first run.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["StoreThread"]

T = TypeVar("T")

_URGENT = 0
_NORMAL = 1
_STOP = 2


class StoreThread:
    """A single worker thread running submitted calls, urgent ones first."""

    def __init__(self, name: str = "sqlite") -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], *args: Any, urgent: bool = False) -> Future[T]:
        if self._closed:
            raise RuntimeError("store thread is shut down")
        fut: Future[T] = Future()
        self._queue.put((_URGENT if urgent else _NORMAL, next(self._order), (fut, fn, args)))
        return fut

    def shutdown(self) -> None:
        """Run what is queued, then stop the thread (waits for it)."""
        if not self._closed:
            self._closed = True
            self._queue.put((_STOP, next(self._order), None))
        self._thread.join()

    def _work(self) -> None:
        while True:
            _, _, job = self._queue.get()
            if job is None:
                return
            fut, fn, args = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the awaiting caller
                fut.set_exception(exc)
            else:
                fut.set_result(result)
