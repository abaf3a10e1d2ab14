"""OwnedTasks: one task per owned provider, stopped on loss, never two at once."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, generate_latest

from forwarder.ownership import OwnedTasks
from forwarder.store.postgres.coordinator import ObserverGroup
from forwarder.telemetry.ownership import OwnershipMetrics


class Work:
    def __init__(self) -> None:
        self.started: list[tuple[str, int]] = []
        self.active: dict[str, int] = {}
        self.most_at_once = 0

    async def __call__(self, provider: str, epoch: int, stop: asyncio.Event) -> None:
        self.started.append((provider, epoch))
        self.active[provider] = self.active.get(provider, 0) + 1
        self.most_at_once = max(self.most_at_once, self.active[provider])
        await stop.wait()
        await asyncio.sleep(0.05)  # the call in flight finishing
        self.active[provider] -= 1


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_tasks_follow_ownership() -> None:
    """acquired starts a task, lost stops it; stop ends all; never two for one provider."""
    work = Work()
    tasks = OwnedTasks(work)
    stop = asyncio.Event()
    runner = asyncio.create_task(tasks.run(stop, grace_s=1))
    tasks.acquired("a", 1)
    tasks.acquired("b", 1)
    await settle()
    assert tasks.running() == ["a", "b"]
    tasks.lost("a", "shed")
    tasks.acquired("a", 3)  # won back while its old task is still finishing its call
    await asyncio.sleep(0.2)
    assert work.started == [("a", 1), ("b", 1), ("a", 3)]
    assert work.most_at_once == 1
    assert tasks.running() == ["a", "b"]
    stop.set()
    await asyncio.wait_for(runner, 2)
    assert tasks.running() == []
    assert work.active == {"a": 0, "b": 0}


def test_ownership_metrics_show_what_this_replica_owns() -> None:
    """One series per owned provider, removed on loss; counts of changes by kind."""
    registry = CollectorRegistry()
    metrics = OwnershipMetrics(registry, live=lambda: 3)
    both = ObserverGroup(metrics)
    both.acquired("a", 1)
    both.acquired("b", 4)
    both.lost("a", "shed")
    both.lost("a", "shed")  # told twice: counted once
    text = generate_latest(registry).decode()
    assert 'forwarder_provider_owned{provider="b"} 1.0' in text
    assert 'provider="a"' not in text
    assert "forwarder_providers_owned 1.0" in text
    assert "forwarder_replicas_live 3.0" in text
    assert 'forwarder_lease_changes_total{change="acquired"} 2.0' in text
    assert 'forwarder_lease_changes_total{change="shed"} 1.0' in text
