"""One dispatcher per provider: budget -> batch -> send -> ack / retry / dead-letter.

Dispatchers are independent: each has its own budget, token, backoff and state, so a
slow or failing provider never delays another. The loop, in order:

1. wait for work (the store's ``changed`` event);
2. wait for the budget (our sliding window and whatever the server said) and any backoff;
3. unless a full call is ready: linger briefly to fill the call (skipped when a HIGH
   signal waits) and keep partial calls at least ``window / calls`` apart, so a burst
   cannot spend the whole budget on small calls and then make the backlog wait a window;
4. lease the next batch (HIGH first, oldest first) and hand it to the :class:`Sender`.

Only what the sender reports decides what happens to the batch: acknowledged, kept for
a retry, or dead-lettered. Nothing is dropped.

After each attempt whose outcome changed the provider's state, the state and last call
are persisted through the store (one small write), so ``forwarder status`` can show
them from another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, overload

import structlog

from forwarder.clock import Clock
from forwarder.delivery import Delivery
from forwarder.errors import (
    AuthError,
    InvalidCredentials,
    PermanentSendError,
    RetryableSendError,
    StoreError,
)
from forwarder.ratelimit import CallBudget, CallLog
from forwarder.signals import EXPIRY_MARGIN_MS, RiskLevel, Signal
from forwarder.store.base import Lease, ProviderRecord

__all__ = ["DispatchObserver", "Dispatcher", "ProviderState", "Queue", "Sender"]


class Sender(Protocol):
    """An output for one provider (Okta Risk Events today; SSF SETs could be another)."""

    kind: str
    max_signals_per_call: int

    async def prepare(self) -> None:
        """Get ready to send (e.g. a valid token) before a batch is leased.

        Raises ``InvalidCredentials`` or ``AuthError``; never spends a call.
        """
        ...

    async def send(
        self, signals: Sequence[Signal], *, spend: Callable[[], Awaitable[None]]
    ) -> Delivery:
        """Deliver one batch, awaiting ``spend()`` just before the call goes out.

        ``spend()`` may raise (the daemon is stopping): the call must then not be made,
        and the exception must propagate.

        Raises ``RetryableSendError``, ``PermanentSendError``, ``InvalidCredentials`` or
        ``AuthError``; returns only when the receiver accepted the whole batch. A
        ``PermanentSendError`` whose ``rejected`` names signals blames only those.
        """
        ...


class Queue(Protocol):
    """What a dispatcher needs from the store (any backend; see tests/store_contract)."""

    def pending_counts(self, provider: str) -> Mapping[RiskLevel, int]:
        """Entries ``provider`` has still to send, by level; may overcount, never under."""
        ...

    def changed(self, provider: str) -> asyncio.Event:
        """Set whenever entries for ``provider`` are committed (the dispatcher clears it)."""
        ...

    def wake_when(self, provider: str, *, pending: int = 1, high: bool = True) -> None:
        """Until ``changed(provider)`` is next set, set it only for a commit after which
        ``provider`` has ``pending`` entries or more (by ``pending_counts``), or, when
        ``high``, one with a HIGH entry for it. It may be set earlier, never later.

        The default is every commit. A store may ignore this (every commit then wakes the
        dispatcher); at 1,000 providers honouring it is what keeps a commit from waking
        every lingering dispatcher to find nothing changed for it.
        """
        ...

    async def lease(
        self, provider: str, *, limit: int, now_ms: int, max_age_ms: int, expiry_margin_ms: int
    ) -> Lease:
        """The next batch: HIGH first, first stored first; expired entries dropped."""
        ...

    async def ack(self, lease: Lease) -> int:
        """The receiver accepted the batch; return how many entries it settled."""
        ...

    async def release(self, lease: Lease) -> None:
        """Keep the batch for a later attempt."""
        ...

    async def dead_letter(
        self, lease: Lease, *, reason: str, causes: Sequence[str], at_ms: int
    ) -> int:
        """The receiver rejected the whole batch: move it to the dead letters."""
        ...

    async def dead_letter_some(
        self, lease: Lease, rejected: Mapping[str, Sequence[str]], *, reason: str, at_ms: int
    ) -> int:
        """Dead-letter the ips ``rejected`` names (with their causes); release the rest."""
        ...

    async def record_provider_state(self, record: ProviderRecord) -> None:
        """Persist the provider's state for ``forwarder status`` (another process)."""
        ...


class DispatchObserver(Protocol):
    """Telemetry hooks (implemented by ``telemetry.Metrics``)."""

    def call_finished(self, provider: str, outcome: str, duration_s: float) -> None: ...

    def delivered(self, provider: str, signals: Sequence[Signal], now: float) -> None: ...

    def retried(self, provider: str, reason: str) -> None: ...

    def dead_lettered(self, provider: str, count: int) -> None: ...


class _Stopped(Exception):
    """Raised by ``spend()`` when the daemon stopped before the call went out."""


@dataclass(frozen=True, slots=True)
class ProviderState:
    """What ``/readyz`` and the logs say about a provider."""

    status: str = "ok"  # ok | failing | rate_limited | backing_off
    last_error: str | None = None
    hint: str | None = None
    until: float | None = None
    last_call_at: float | None = None
    last_outcome: str | None = None


class Dispatcher:
    """Moves one provider's pending signals to its sender within its budget."""

    def __init__(
        self,
        *,
        provider: str,
        store: Queue,
        sender: Sender,
        budget: CallBudget,
        calls: CallLog,
        clock: Clock,
        linger_s: float = 2.0,
        pace_s: float | None = None,
        max_age_s: float = 86_400.0,
        expiry_margin_s: float = EXPIRY_MARGIN_MS / 1000,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 300.0,
        observer: DispatchObserver | None = None,
        rng: random.Random | None = None,
        call_key: str | None = None,
        slots: asyncio.Semaphore | None = None,
        store_turns: asyncio.Semaphore | None = None,
    ) -> None:
        self.provider = provider
        #: The budget belongs to the receiving app; its calls are logged under this key.
        self.call_key = provider if call_key is None else call_key
        self._calls = calls
        self.budget = budget
        self.state = ProviderState()
        self._store = store
        self._sender = sender
        self._clock = clock
        self._linger_s = linger_s
        #: Least spacing between partial calls; full calls only need the budget.
        self._pace_s = budget.window_s / budget.calls if pace_s is None else pace_s
        self._max_age_ms = int(max_age_s * 1000)
        self._margin_ms = int(expiry_margin_s * 1000)
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._observer = observer
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self._failures = 0
        self._not_before = 0.0
        self._work_since: float | None = None
        self._auth_retry_pending = False
        #: Signals per call; halved when the receiver says a request is too large (413).
        self._call_limit = sender.max_signals_per_call
        self._persisted: ProviderState | None = None
        #: Shared by every dispatcher of the daemon: leases held at once (lease to
        #: settle). Bounds the signals materialised in memory and the dispatch work
        #: queued at the store ahead of ingest, whatever the number of providers.
        self._slots = slots
        #: Shared too: leases and acks being worked at once. Their CPU (rows to signals,
        #: payloads, settling) shares one event loop with ingest; fewer at a time keep
        #: ingest requests from queueing behind hundreds of them, while calls waiting
        #: on the network hold no turn (they do not limit the calls in flight).
        self._store_turns = store_turns
        self._log = structlog.get_logger("forwarder.dispatcher").bind(provider=provider)

    @property
    def max_per_call(self) -> int:
        return self._sender.max_signals_per_call

    def next_call_at(self) -> float:
        """Earliest wall time of the next call (budget, server word, backoff, pacing)."""
        at = self._budget_at()
        if sum(self._store.pending_counts(self.provider).values()) < self.max_per_call:
            at = max(at, self._paced_from())
        return at

    def _budget_at(self) -> float:
        return max(self.budget.next_slot(), self._not_before)

    # -- the loop --------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until ``stop`` is set; a call in flight finishes first."""
        changed = self._store.changed(self.provider)
        while not stop.is_set():
            changed.clear()
            counts = self._store.pending_counts(self.provider)
            waiting = sum(counts.values())
            now = self._clock.time()
            if waiting == 0:
                self._work_since = None
                self._store.wake_when(self.provider)
                await self._wait(None, changed, stop)
                continue
            if self._work_since is None:
                self._work_since = now
            # Seconds, each part on its own clock: a wall time computed a moment after
            # ``now`` would always lie in its future, and the loop would spin on
            # microsecond waits instead of calling (1,000 providers: most of the CPU).
            hold = max(self.budget.wait_s(), self._not_before - now)
            if hold > 0:
                await self._wait(hold, stop)
                continue
            if self.state.status in ("rate_limited", "backing_off"):
                self.state = replace(self.state, status="ok", until=None)
            if waiting < self.max_per_call:
                # A partial call is paced (one per window/calls) so a burst cannot spend
                # the whole budget on small calls; HIGH skips the linger, not the pace.
                urgent = counts.get(RiskLevel.HIGH, 0) > 0
                linger_until = self._work_since if urgent else self._work_since + self._linger_s
                paced_from = self._paced_from()
                wait = max(paced_from - now, linger_until - now)
                if wait > 0:
                    # Until the timer only a full call (no pacing) changes the decision, or
                    # a first HIGH when the linger, not the pace, is what holds.
                    self._store.wake_when(
                        self.provider,
                        pending=self.max_per_call,
                        high=not urgent and linger_until > paced_from,
                    )
                    await self._wait(wait, changed, stop)
                    continue
            try:
                await self._attempt(stop)
            except Exception as exc:
                # Store trouble (a full disk) or a bug: this provider backs off and
                # retries; the daemon and the other providers carry on.
                self._log.exception("dispatch_failed", error=f"{type(exc).__name__}: {exc}")
                self._backoff("internal", f"{type(exc).__name__}: {exc}")
            self._work_since = self._clock.time()

    def _paced_from(self) -> float:
        last = self.budget.last_call()
        return last + self._pace_s if last is not None else 0.0

    async def _wait(self, seconds: float | None, *events: asyncio.Event) -> None:
        if any(e.is_set() for e in events):
            return
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(e.wait()) for e in events]
        if seconds is not None:
            waiters.append(asyncio.ensure_future(self._clock.sleep(seconds)))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    # -- one call --------------------------------------------------------------------

    async def _attempt(self, stop: asyncio.Event) -> None:
        # Credentials first: a slow token request must not eat into leased signals'
        # expiry margin (a subject is never sent after its own expiry).
        try:
            await self._sender.prepare()
        except InvalidCredentials as exc:
            self._failing(exc.message, exc.hint)
            await self._persist_state()
            return
        except AuthError as exc:
            self._backoff("token", str(exc))
            await self._persist_state()
            return
        async with self._slots if self._slots is not None else contextlib.nullcontext():
            if stop.is_set():
                # Stopped while the token request was out (or waiting for a slot): after
                # SIGTERM only calls already on the wire may finish, so no new batch is
                # leased or sent.
                return
            if not await self._lease_and_send(stop):
                return
        await self._persist_state()

    def _turn(self) -> contextlib.AbstractAsyncContextManager[object]:
        if self._store_turns is None:
            return contextlib.nullcontext()
        return self._store_turns

    async def _lease_and_send(self, stop: asyncio.Event) -> bool:
        """One lease, one call, and the lease settled; False when nothing was leased or
        the call never went out (no state to persist)."""
        now = self._clock.time()
        async with self._turn():
            lease = await self._store.lease(
                self.provider,
                limit=min(self.max_per_call, self._call_limit),
                now_ms=int(now * 1000),
                max_age_ms=self._max_age_ms,
                expiry_margin_ms=self._margin_ms,
            )
        if lease.expired:
            self._log.info("signals_expired", count=lease.expired)
        if not lease.signals:
            return False
        spent_at: float | None = None
        started = self._clock.monotonic()

        async def spend() -> None:
            nonlocal spent_at, started
            if stop.is_set():
                # The last moment before a call goes out (the sender may have needed a
                # new token after the lease): a stopping daemon starts no call.
                raise _Stopped
            spent_at = self.budget.spend()
            await self._calls.record_call(self.call_key, int(spent_at * 1000))
            # The call's duration starts here, not before a token request it may need.
            started = self._clock.monotonic()

        try:
            try:
                delivery = await self._sender.send(lease.signals, spend=spend)
            except Exception:
                await self._answered(spent_at)
                raise
            await self._answered(spent_at)
        except _Stopped:
            await self._store.release(lease)
            return False
        except RetryableSendError as exc:
            await self._store.release(lease)
            self._after_call(spent_at, exc.outcome, started)
            self.budget.observe(exc.window)
            self._retryable(exc, len(lease.signals))
        except PermanentSendError as exc:
            if exc.rejected:
                # Only the blamed subjects are dead; the rest go in the next call (a
                # normal call of the budget), HIGH first as always.
                moved = await self._store.dead_letter_some(
                    lease,
                    {s.ip: causes for s, causes in exc.rejected},
                    reason=str(exc),
                    at_ms=int(self._clock.time() * 1000),
                )
            else:
                await self._store.dead_letter(
                    lease, reason=str(exc), causes=exc.causes, at_ms=int(self._clock.time() * 1000)
                )
                moved = len(lease.signals)
            self._after_call(spent_at, exc.outcome, started)
            self.budget.observe(exc.window)
            self._failures = 0
            if self._observer is not None:
                self._observer.dead_lettered(self.provider, moved)
            self._log.error(
                "batch_dead_lettered" if moved == len(lease.signals) else "subjects_dead_lettered",
                subjects=moved,
                kept=len(lease.signals) - moved,
                causes=list(exc.causes)[:10],
                hint="Okta rejected the payload: `forwarder dead-letters list` shows it; "
                "fix the cause, then `forwarder dead-letters requeue`",
            )
        except InvalidCredentials as exc:
            await self._store.release(lease)
            self._after_call(spent_at, "auth_error", started)
            self._failing(exc.message, exc.hint)
        except AuthError as exc:
            await self._store.release(lease)
            self._backoff("token", str(exc))
        except Exception:
            # A surprise in one provider's path must not stop the daemon (and with it
            # every other provider): keep the batch, say what happened, back off.
            with contextlib.suppress(StoreError):
                await self._store.release(lease)
            self._after_call(spent_at, "server_error", started)
            raise
        except BaseException:
            # Cancelled mid-call (shutdown past its grace): leases die with the process
            # and the batch is sent again after restart.
            with contextlib.suppress(StoreError):
                await asyncio.shield(self._store.release(lease))
            raise
        else:
            async with self._turn():
                removed = await self._store.ack(lease)
            self._after_call(spent_at, "accepted", started)
            self.budget.observe(delivery.window)
            self._failures = 0
            self._auth_retry_pending = False
            self._call_limit = min(self.max_per_call, self._call_limit * 2)
            self.state = ProviderState(status="ok", last_call_at=spent_at, last_outcome="accepted")
            if self._observer is not None:
                self._observer.delivered(self.provider, lease.signals, self._clock.time())
            self._log.info(
                "batch_delivered",
                subjects=len(lease.signals),
                removed=removed,
                pending=sum(self._store.pending_counts(self.provider).values()),
                budget_remaining=self.budget.remaining(),
            )
        return True

    async def _persist_state(self) -> None:
        state = self.state
        if state == self._persisted:
            return
        record = ProviderRecord(
            provider=self.provider,
            status=state.status,
            updated_ms=_ms(self._clock.time()),
            last_call_ms=_ms(state.last_call_at),
            last_outcome=state.last_outcome,
            last_error=state.last_error,
            hint=state.hint,
            until_ms=_ms(state.until),
        )
        try:
            await self._store.record_provider_state(record)
        except StoreError as exc:
            # Only `forwarder status` reads it; never fail a delivery over it.
            self._log.warning("provider_state_not_saved", error=str(exc))
            return
        self._persisted = state

    async def _answered(self, spent_at: float | None) -> None:
        """The call spent at ``spent_at`` has its answer (or failed): from now on it is
        counted from this moment, after the receiver's stamp (see ``CallLog``)."""
        if spent_at is None:
            return
        self.budget.answered()
        try:
            await self._calls.call_answered(
                self.call_key, int(spent_at * 1000), int(self._clock.time() * 1000)
            )
        except StoreError as exc:
            # The in-process budget has it; only a restart within a window would miss it.
            self._log.warning("call_answer_not_recorded", error=str(exc))

    def _after_call(self, spent_at: float | None, outcome: str, started: float) -> None:
        if spent_at is None:
            return
        self.state = replace(self.state, last_call_at=spent_at, last_outcome=outcome)
        if self._observer is not None:
            self._observer.call_finished(self.provider, outcome, self._clock.monotonic() - started)

    def _retryable(self, exc: RetryableSendError, subjects: int) -> None:
        now = self._clock.time()
        if exc.outcome == "rate_limited":
            if exc.retry_at is not None:
                self.budget.block_for(exc.retry_at - now)
            else:
                self.budget.block_for(self.budget.window_s)
            self.state = replace(
                self.state,
                status="rate_limited",
                until=self.budget.blocked_until(),
                last_error=str(exc),
                hint="another client may be spending this provider's budget",
            )
            self._retry_note("rate_limited", str(exc), subjects)
            return
        if exc.retry_now:
            self._retry_note("auth", str(exc), subjects)
            return
        if exc.shrink:
            self._call_limit = max(1, subjects // 2)
            self._retry_note("too_large", str(exc), subjects)
            return
        if exc.drop_token:
            if not self._auth_retry_pending:
                # Okta's 401: drop the token, fetch a new one, retry the batch once.
                self._auth_retry_pending = True
                self._retry_note("auth", str(exc), subjects)
                return
            self._auth_retry_pending = False
            self._failing(
                "Okta refused a freshly issued token (401 twice)",
                "the token may be revoked or the service app deactivated; "
                "run `forwarder okta check`",
            )
            return
        self._auth_retry_pending = False
        self._backoff(exc.outcome, str(exc))

    def _retry_note(self, reason: str, error: str, subjects: int) -> None:
        if self._observer is not None:
            self._observer.retried(self.provider, reason)
        self._log.warning("batch_kept_for_retry", reason=reason, error=error, subjects=subjects)

    def _delay(self, base: float) -> float:
        raw = min(self._backoff_max_s, base * 2.0 ** min(self._failures, 20))
        self._failures += 1
        return raw * (0.5 + self._rng.random() / 2)  # equal jitter

    def _backoff(self, reason: str, error: str) -> None:
        delay = self._delay(self._backoff_base_s)
        self._not_before = self._clock.time() + delay
        self.state = replace(
            self.state, status="backing_off", until=self._not_before, last_error=error, hint=None
        )
        if self._observer is not None:
            self._observer.retried(self.provider, reason)
        self._log.warning("backing_off", reason=reason, error=error, retry_in_s=round(delay, 3))

    def _failing(self, error: str, hint: str) -> None:
        delay = self._delay(max(self._backoff_base_s, 5.0))
        self._not_before = self._clock.time() + delay
        self.state = replace(
            self.state, status="failing", until=self._not_before, last_error=error, hint=hint
        )
        if self._observer is not None:
            self._observer.retried(self.provider, "failing")
        self._log.error("provider_failing", error=error, hint=hint, retry_in_s=round(delay, 3))


@overload
def _ms(seconds: float) -> int: ...
@overload
def _ms(seconds: None) -> None: ...
def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)
