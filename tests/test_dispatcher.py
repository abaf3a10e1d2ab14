"""The dispatcher with a fake sender (the one part Okta's real behaviour cannot drive):
credentials before leasing, splitting on 413, surviving store and sender surprises."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from forwarder.clock import FakeClock
from forwarder.delivery import Delivery
from forwarder.dispatcher import Dispatcher
from forwarder.errors import RetryableSendError, StoreError
from forwarder.ratelimit import CallBudget
from forwarder.signals import RiskLevel, Signal
from forwarder.store.base import Lease
from forwarder.store.sqlite import SqliteStore


@dataclass
class FakeSender:
    """Records what it was asked to send; scripted failures come first."""

    clock: FakeClock
    kind: str = "fake"
    max_signals_per_call: int = 1000
    prepare_takes_s: float = 0.0
    answer_takes_s: float = 0.0
    failures: list[BaseException] = field(default_factory=list)
    batches: list[list[Signal]] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)

    async def prepare(self) -> None:
        self.clock.advance(self.prepare_takes_s)  # e.g. a slow token request

    async def send(
        self, signals: Sequence[Signal], *, spend: Callable[[], Awaitable[None]]
    ) -> Delivery:
        await spend()
        self.clock.advance(self.answer_takes_s)  # on the wire until the answer
        if self.failures:
            raise self.failures.pop(0)
        self.batches.append(list(signals))
        self.sent_at.append(self.clock.time())
        return Delivery(subjects=len(signals))


@dataclass
class Env:
    clock: FakeClock
    store: SqliteStore
    sender: FakeSender
    dispatcher: Dispatcher
    now_ms: int


def dispatcher_for(
    store: SqliteStore,
    sender: FakeSender,
    *,
    provider: str = "p",
    calls: int = 600,
    **options: Any,
) -> Dispatcher:
    """A dispatcher on ``store`` with no linger, on the sender's clock."""
    return Dispatcher(
        provider=provider,
        store=store,
        calls=store,
        sender=sender,
        budget=CallBudget(calls=calls, window_s=60, clock=sender.clock),
        clock=sender.clock,
        linger_s=0,
        **options,
    )


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    clock = FakeClock()
    sender = FakeSender(clock)
    async with SqliteStore(tmp_path / "f.db") as store:
        dispatcher = dispatcher_for(store, sender)
        stop = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(stop))
        yield Env(clock, store, sender, dispatcher, int(clock.time() * 1000))
        stop.set()
        await task


def sig(i: int, *, exp: int | None = None, risk: RiskLevel = RiskLevel.HIGH) -> Signal:
    now = 1_800_000_000_000
    return Signal(f"198.18.{i // 256}.{i % 256}", risk, "", now, exp, now)


async def test_token_is_had_before_the_batch_is_chosen(env: Env) -> None:
    """A 10 s token request cannot carry a subject past its expiry: it expires unsent."""
    env.sender.prepare_takes_s = 10
    await env.store.add([(["p"], sig(1, exp=env.now_ms + 8_000)), (["p"], sig(2))])
    await env.clock.run_until(lambda: env.sender.batches != [])
    (batch,) = env.sender.batches
    assert [s.ip for s in batch] == [sig(2).ip]
    for s in batch:
        assert s.expires_ms is None or s.expires_ms > env.sender.sent_at[0] * 1000


async def test_413_halves_the_next_call_then_grows_back(env: Env) -> None:
    """Too large: the same signals go again in two halves; later calls are full again."""
    env.sender.failures.append(RetryableSendError("413", outcome="client_error", shrink=True))
    await env.store.add([(["p"], sig(i, risk=RiskLevel.LOW)) for i in range(2500)])
    await env.clock.run_until(lambda: env.store.pending_total() == 0)
    assert [len(b) for b in env.sender.batches] == [500, 1000, 1000]


async def test_store_failure_backs_off_instead_of_stopping(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store error while leasing (a full disk) is a backoff for this provider, not a crash."""
    real_lease = env.store.lease
    calls = 0

    async def failing_lease(*args: object, **kwargs: object) -> Lease:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StoreError("database or disk is full")
        return await real_lease(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(env.store, "lease", failing_lease)
    await env.store.add([(["p"], sig(1))])
    await env.clock.run_until(lambda: env.dispatcher.state.status == "backing_off")
    assert "disk is full" in (env.dispatcher.state.last_error or "")
    await env.clock.run_until(lambda: env.sender.batches != [])
    assert env.store.pending_total() == 0


async def test_unexpected_sender_error_keeps_the_batch(env: Env) -> None:
    """A bug-shaped exception in the sender releases the batch and retries it later."""
    env.sender.failures.append(UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "invalid"))
    await env.store.add([(["p"], sig(i)) for i in range(3)])
    await env.clock.run_until(lambda: env.sender.batches != [])
    assert sorted(s.ip for s in env.sender.batches[0]) == sorted(sig(i).ip for i in range(3))
    assert env.store.pending_total() == 0


@dataclass
class GatedSender(FakeSender):
    """A sender whose token request (in prepare, or inside send) waits for a gate."""

    gate_in_send: bool = False
    waiting: asyncio.Event = field(default_factory=asyncio.Event)
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def prepare(self) -> None:
        if not self.gate_in_send:
            await self._token_request()

    async def send(
        self, signals: Sequence[Signal], *, spend: Callable[[], Awaitable[None]]
    ) -> Delivery:
        if self.gate_in_send:
            await self._token_request()  # the token ran out between prepare and send
        return await super().send(signals, spend=spend)

    async def _token_request(self) -> None:
        self.waiting.set()
        await self.gate.wait()


async def _stop_during_token_request(tmp_path: Path, *, gate_in_send: bool) -> None:
    clock = FakeClock()
    sender = GatedSender(clock, gate_in_send=gate_in_send)
    async with SqliteStore(tmp_path / "f.db") as store:
        budget = CallBudget(calls=3, window_s=60, clock=clock)
        dispatcher = Dispatcher(
            provider="p",
            store=store,
            sender=sender,
            budget=budget,
            calls=store,
            clock=clock,
            linger_s=0,
        )
        await store.add([(["p"], sig(i)) for i in range(3)])
        stop = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(stop))
        await sender.waiting.wait()
        stop.set()  # SIGTERM while the token request is out
        sender.gate.set()  # ... and it comes back within the grace
        await task
        assert sender.batches == []
        assert budget.last_call() is None
        assert await store.recent_calls("p", 0) == []
        again = await store.lease("p", limit=10, now_ms=sig(0).ts_ms, max_age_ms=86_400_000)
        assert len(again.signals) == 3  # nothing was left leased


async def test_no_call_starts_after_stop_when_prepare_returns(tmp_path: Path) -> None:
    """A token request in flight at SIGTERM that comes back leads to no lease and no call."""
    await _stop_during_token_request(tmp_path, gate_in_send=False)


async def test_no_call_starts_after_stop_when_send_needed_a_token(tmp_path: Path) -> None:
    """Stopped while the sender fetched a token after the lease: no call, batch released."""
    await _stop_during_token_request(tmp_path, gate_in_send=True)


class MovingClock(FakeClock):
    """A fake clock whose wall time has moved a little each time it is read, as a real
    one has between two reads (the monotonic one moves only when time is advanced)."""

    def time(self) -> float:
        self.step_wall(1e-6)
        return super().time()


async def test_a_ready_call_goes_without_spinning_on_a_moving_clock(tmp_path: Path) -> None:
    """Budget free, call full: it is made at once, not after a loop of microsecond waits."""
    clock = MovingClock()
    sender = FakeSender(clock, max_signals_per_call=3)
    sleeps: list[float] = []
    real_sleep = clock.sleep

    async def counting_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await real_sleep(seconds)

    clock.sleep = counting_sleep  # type: ignore[method-assign]
    async with SqliteStore(tmp_path / "f.db") as store:
        dispatcher = Dispatcher(
            provider="p",
            store=store,
            sender=sender,
            budget=CallBudget(calls=3, window_s=60, clock=clock),
            calls=store,
            clock=clock,
        )
        await store.add([(["p"], sig(i)) for i in range(3)])
        stop = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(stop))
        try:
            await clock.run_until(lambda: sender.batches != [], real_timeout=5)
        finally:
            stop.set()
            await task
    assert [len(b) for b in sender.batches] == [3]
    assert [s for s in sleeps if s < 0.001] == []


async def test_a_slow_answer_counts_the_call_from_the_answer(tmp_path: Path) -> None:
    """The receiver stamps a call between its start and its answer: a call answered 20 s
    after it was spent holds its slot until a window after the answer, in the process
    and in the call log (what a restart or another replica reads)."""
    clock = FakeClock()
    sender = FakeSender(clock, answer_takes_s=20)
    async with SqliteStore(tmp_path / "f.db") as store:
        dispatcher = dispatcher_for(store, sender, calls=1, max_age_s=10_000)
        stop = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(stop))
        start = clock.time()
        await store.add([(["p"], sig(1))])
        await clock.run_until(lambda: len(sender.batches) == 1)
        await store.add([(["p"], sig(2))])
        await clock.run_until(lambda: len(sender.batches) == 2)
        stop.set()
        await task
        logged = await store.recent_calls("p", 0)
    spent = [t - 20 for t in sender.sent_at]  # sent_at is each answer's time
    assert spent[1] - sender.sent_at[0] >= 60
    assert logged[0] == int((start + 20) * 1000)


async def test_leases_and_acks_take_turns_across_dispatchers(tmp_path: Path) -> None:
    """Twenty dispatchers with work at once: at most the shared number of turns are in
    a lease or an ack at any moment (ingest shares the event loop with them), and every
    signal is still sent."""
    clock = FakeClock()
    turns = asyncio.Semaphore(2)
    busy = peak = 0
    async with SqliteStore(tmp_path / "f.db") as store:
        real_lease, real_ack = store.lease, store.ack

        async def counted(call: Callable[[], Awaitable[object]]) -> object:
            nonlocal busy, peak
            busy += 1
            peak = max(peak, busy)
            try:
                await asyncio.sleep(0)  # let the others in, if they may
                return await call()
            finally:
                busy -= 1

        async def lease(provider: str, **kw: int) -> Lease:
            return await counted(lambda: real_lease(provider, **kw))  # type: ignore[return-value]

        async def ack(lease: Lease) -> int:
            return await counted(lambda: real_ack(lease))  # type: ignore[return-value]

        store.lease, store.ack = lease, ack  # type: ignore[method-assign]
        names = [f"p{i}" for i in range(20)]
        senders = [FakeSender(clock) for _ in names]
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(
                dispatcher_for(store, sender, provider=name, store_turns=turns).run(stop)
            )
            for name, sender in zip(names, senders, strict=True)
        ]
        await store.add([(names, sig(i)) for i in range(50)])
        await clock.run_until(lambda: all(len(s.batches) >= 1 for s in senders))
        stop.set()
        await asyncio.gather(*tasks)
    assert peak == 2
    assert all(sum(len(b) for b in s.batches) == 50 for s in senders)
