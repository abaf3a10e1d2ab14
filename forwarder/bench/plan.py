"""How big each scenario runs: the full plan and the ``--quick`` one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FULL", "NOT_QUICK", "PER_CALL_MAX", "QUICK", "SCENARIO_NAMES", "Context", "Plan"]

#: Every scenario, in the order they run (the runner maps each to its coroutine).
SCENARIO_NAMES = (
    "intake",
    "coalescing",
    "budget",
    "high_latency",
    "memory",
    "tenants",
    "scale-out",
)
#: Scenarios ``--quick`` leaves out unless named with ``--only`` (the CI smoke test runs
#: ``--quick``; scale-out at 3 rounds of replicas takes too long for it, see its module).
NOT_QUICK = ("scale-out",)
#: Okta's per-call maximum: 20 events x 50 subjects.
PER_CALL_MAX = 1000


@dataclass(frozen=True)
class Plan:
    """Sizes and durations of every scenario."""

    name: str
    intake_sizes: tuple[int, ...]
    intake_seconds: float
    intake_repeats: int
    warmup_seconds: float
    connections: int
    storage_floor_seconds: float
    coalesce_signals: int
    coalesce_ips: int
    coalesce_request: int
    window_s: float
    calls: int
    budget_backlog: int
    high_backlog: int
    high_count: int
    high_windows: int
    scale_pending: int
    scale_providers: int
    scale_run_s: float
    tenant_orgs: int
    tenant_ips: int
    tenant_window_s: float
    tenant_intake_s: float
    scaleout_orgs: int
    scaleout_ips: int
    scaleout_window_s: float
    scaleout_intake_s: float
    scaleout_replicas: tuple[int, ...]


FULL = Plan(
    name="full",
    intake_sizes=(1, 100, 1000),
    intake_seconds=5.0,
    intake_repeats=2,
    warmup_seconds=1.5,
    connections=64,
    storage_floor_seconds=4.0,
    coalesce_signals=1_000_000,
    coalesce_ips=10_000,
    coalesce_request=1000,
    window_s=5.0,
    calls=3,
    budget_backlog=12 * PER_CALL_MAX,
    high_backlog=100_000,
    high_count=12,
    high_windows=8,
    scale_pending=1_000_000,
    scale_providers=3,
    scale_run_s=12.0,
    tenant_orgs=1000,
    tenant_ips=2000,
    tenant_window_s=10.0,
    tenant_intake_s=4.0,
    scaleout_orgs=1000,
    scaleout_ips=2000,
    scaleout_window_s=10.0,
    scaleout_intake_s=4.0,
    scaleout_replicas=(1, 2, 3),
)

QUICK = Plan(
    name="quick",
    intake_sizes=(1, 100, 1000),
    intake_seconds=0.8,
    intake_repeats=1,
    warmup_seconds=0.2,
    connections=32,
    storage_floor_seconds=0.3,
    coalesce_signals=50_000,
    coalesce_ips=1_000,
    coalesce_request=100,
    window_s=2.0,
    calls=3,
    budget_backlog=6 * PER_CALL_MAX,
    high_backlog=10_000,
    high_count=3,
    high_windows=2,
    scale_pending=30_000,
    scale_providers=3,
    scale_run_s=2.0,
    tenant_orgs=50,
    tenant_ips=500,
    tenant_window_s=3.0,
    tenant_intake_s=1.0,
    scaleout_orgs=50,
    scaleout_ips=500,
    scaleout_window_s=3.0,
    scaleout_intake_s=1.0,
    scaleout_replicas=(1, 2, 3),
)


@dataclass(frozen=True)
class Context:
    """What every scenario gets: the plan, a directory of its own, a progress printer."""

    plan: Plan
    directory: Path
    say: Callable[[str], None]
    load_processes: int = 1

    def sub(self, name: str) -> Context:
        """The same context with a fresh sub-directory."""
        path = self.directory / name
        path.mkdir(parents=True, exist_ok=True)
        return Context(self.plan, path, self.say, self.load_processes)
