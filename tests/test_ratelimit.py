"""The call budget: a sliding window, server feedback, restart history."""

from __future__ import annotations

from forwarder.clock import FakeClock
from forwarder.delivery import ServerWindow
from forwarder.ratelimit import CallBudget, max_calls_in_window


def test_max_calls_in_window_counts_a_sliding_half_open_window() -> None:
    """Calls exactly a window apart are in different windows; any other span counts."""
    assert max_calls_in_window([], 60) == 0
    assert max_calls_in_window([0, 60, 120], 60) == 1
    assert max_calls_in_window([0, 59.9, 60, 61], 60) == 3
    assert max_calls_in_window([30, 0, 10, 100, 65], 60) == 3


def test_never_more_than_budget_in_any_window() -> None:
    """Spending whenever allowed never puts more than 3 calls in any 60 s window."""
    clock = FakeClock()
    budget = CallBudget(calls=3, window_s=60, clock=clock, margin_s=0)
    times: list[float] = []
    for _ in range(12):
        clock.advance(max(0.0, budget.next_slot() - clock.time()))
        times.append(budget.spend())
        clock.advance(7)
    assert max_calls_in_window(times, 60) == 3


def test_token_returns_exactly_one_window_after_spending() -> None:
    """A continuous 3/min refill would allow a 4th call at +20 s; the sliding log does not."""
    clock = FakeClock()
    budget = CallBudget(calls=3, window_s=60, clock=clock, margin_s=0)
    t0 = budget.spend()
    clock.advance(1)
    budget.spend()
    budget.spend()
    clock.advance(20)
    assert budget.remaining() == 0
    assert budget.next_slot() == t0 + 60


def test_history_from_store_counts() -> None:
    """Calls made before a restart still count."""
    clock = FakeClock()
    now = clock.time()
    budget = CallBudget(
        calls=3, window_s=60, clock=clock, history=[now - 50, now - 40, now - 10], margin_s=0
    )
    assert budget.remaining() == 0
    assert budget.wait_s() == 10


def test_server_saying_window_spent_is_obeyed() -> None:
    """Remaining 0 blocks until Reset, even when our own budget has room."""
    clock = FakeClock()
    budget = CallBudget(calls=3, window_s=60, clock=clock)
    budget.observe(ServerWindow(limit=30, remaining=0, reset_in_s=42))
    assert budget.wait_s() == 42
    budget.observe(ServerWindow(limit=30, remaining=5, reset_in_s=10))
    assert budget.wait_s() == 42


def test_wall_clock_step_does_not_reopen_the_window() -> None:
    """A forward jump of the wall clock leaves the window to monotonic time."""
    clock = FakeClock()
    budget = CallBudget(calls=3, window_s=60, clock=clock, margin_s=0)
    for _ in range(3):
        budget.spend()
    clock.step_wall(3600)
    assert budget.remaining() == 0
    assert budget.wait_s() == 60
    clock.advance(60)
    assert budget.remaining() == 3


def test_spend_reports_wall_time_for_the_store() -> None:
    """What spend() returns is wall time, so history reloads correctly after a restart."""
    clock = FakeClock()
    budget = CallBudget(calls=3, window_s=60, clock=clock, margin_s=0)
    at = budget.spend()
    assert at == clock.time()
    clock.advance(10)
    again = CallBudget(calls=3, window_s=60, clock=clock, history=[at], margin_s=0)
    assert again.remaining() == 2
    assert again.last_call() == at
