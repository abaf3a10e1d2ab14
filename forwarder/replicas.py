"""Dispatch with several replicas on PostgreSQL: each runs only the providers it leases.

The coordinator claims an even share of the providers over the live replicas; a
provider's dispatcher is (re)built when its lease is granted (budget history from the
shared call log), runs under the lease's fencing epoch (every call slot is reserved under
it, in the transaction that checks the epoch) and stops after its call in flight when the
lease is lost. On ``stop``: drain, then release every lease, so a rolling upgrade hands
over in about a second instead of a TTL.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING

import structlog

from forwarder.errors import StoreError
from forwarder.okta.keys import SigningKey
from forwarder.ownership import OwnedTasks
from forwarder.store import StoreBackend
from forwarder.store.postgres.budget import FencedCallLog
from forwarder.store.postgres.coordinator import Coordinator, ObserverGroup
from forwarder.store.postgres.owners import Replica
from forwarder.store.postgres.store import PostgresStore
from forwarder.telemetry.ownership import OwnershipMetrics

if TYPE_CHECKING:
    from forwarder.app import Daemon

__all__ = ["dispatch_replicated"]

#: Seconds between attempts to start an owned provider's dispatcher while the store fails.
START_RETRY_S = 1.0


async def dispatch_replicated(
    daemon: Daemon,
    stop: asyncio.Event,
    store: StoreBackend,
    keys: Mapping[str, tuple[SigningKey, SigningKey | None]],
) -> None:
    """Dispatch the providers this replica owns until ``stop``; then hand them over."""
    assert isinstance(store, PostgresStore)
    assert daemon.owned is not None
    owned = daemon.owned
    s = daemon.settings
    log = structlog.get_logger("forwarder")
    by_name = {p.name: p for p in s.providers}
    daemon.replica_keys.update(keys)
    host = socket.gethostname()
    replica = Replica(f"{host}-{os.getpid()}-{secrets.token_hex(2)}", host, os.getpid())

    async def start(provider: str, epoch: int, own_stop: asyncio.Event) -> None:
        # The settings and keys of now: a reload may have changed them since the start.
        p = daemon.provider_settings(provider)
        key = daemon.replica_keys.get(provider)
        if p is None or key is None:
            return  # removed by a reload meanwhile; the coordinator releases it
        calls = FencedCallLog(
            pool=store.pool,
            provider=provider,
            replica_id=replica.id,
            epoch=lambda: coordinator.epoch(provider),
            calls=p.calls_per_minute,
            window_s=p.window_s,
            clock=daemon.clock,
        )
        while True:
            # The database may be unreachable just as a lease is granted (a failover):
            # try again while the lease holds; a store error here must not end the daemon.
            try:
                await store.adopt(provider, (replica.id, epoch))
                dispatcher = await daemon.build_dispatcher(p, key, calls=calls)
                break
            except StoreError as exc:
                log.warning("provider_start_failed", provider=provider, error=str(exc))
                napping = asyncio.ensure_future(daemon.clock.sleep(START_RETRY_S))
                stopping = asyncio.ensure_future(own_stop.wait())
                await asyncio.wait({napping, stopping}, return_when=asyncio.FIRST_COMPLETED)
                napping.cancel()
                stopping.cancel()
                if own_stop.is_set():
                    return
        owned[provider] = dispatcher
        try:
            await dispatcher.run(own_stop)
        finally:
            if owned.get(provider) is dispatcher:
                del owned[provider]
            store.forget(provider, (replica.id, epoch))

    tasks = OwnedTasks(start)
    coordinator = Coordinator(
        pool=store.pool,
        replica=replica,
        providers=list(by_name),
        ttl_s=s.store.lease_ttl_s,
        clock=daemon.clock,
        observer=ObserverGroup(
            tasks, OwnershipMetrics(daemon.metrics.registry, live=lambda: len(coordinator.live))
        ),
        on_config=daemon.config_announced,
    )
    daemon.coordinator = coordinator
    coord_stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        coordinating = tg.create_task(coordinator.run(coord_stop), name="coordinator")
        dispatching = tg.create_task(
            tasks.run(stop, grace_s=s.dispatch.shutdown_grace_s), name="owned-dispatch"
        )
        await stop.wait()
        await dispatching
        # Only now hand the providers over: nothing of ours is in flight any more.
        coord_stop.set()
        await coordinating
    log.info("replica_handed_over", replica=replica.id)
