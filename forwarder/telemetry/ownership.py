"""Metrics of replica coordination (PostgreSQL backend): who owns which org, hand-overs.

Each replica exports ``forwarder_provider_owned{provider}`` = 1 for the orgs it owns now
(the series disappears when it stops owning one, so across the fleet there is one
series per org: ``max by (provider, instance)`` shows the owner), the number it owns,
the live replicas it sees, and every change of ownership by kind. It is an
``OwnershipObserver`` of the coordinator.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["LEASE_CHANGES", "OwnershipMetrics"]

#: acquired (claimed), shed (rebalanced away), lapsed (not renewed in time), released (stop).
LEASE_CHANGES = ("acquired", "shed", "lapsed", "released")


class OwnershipMetrics:
    """Lease metrics on the daemon's registry."""

    def __init__(self, registry: CollectorRegistry, *, live: Callable[[], int]) -> None:
        self.owned = Gauge(
            "forwarder_provider_owned",
            "1 for each provider this replica dispatches now (holds its lease).",
            ["provider"],
            registry=registry,
        )
        self.owned_total = Gauge(
            "forwarder_providers_owned",
            "Providers this replica dispatches now.",
            registry=registry,
        )
        self.replicas = Gauge(
            "forwarder_replicas_live",
            "Replicas with a live heartbeat, as this replica last saw them.",
            registry=registry,
        )
        self.replicas.set_function(lambda: float(live()))
        self.changes = Counter(
            "forwarder_lease_changes",
            "Changes of provider ownership at this replica, by kind.",
            ["change"],
            registry=registry,
        )
        for change in LEASE_CHANGES:
            self.changes.labels(change)
        self._owned: set[str] = set()

    def acquired(self, provider: str, epoch: int) -> None:
        self.owned.labels(provider).set(1)
        self._owned.add(provider)
        self.owned_total.set(len(self._owned))
        self.changes.labels("acquired").inc()

    def lost(self, provider: str, reason: str) -> None:
        if provider not in self._owned:
            return
        self._owned.discard(provider)
        self.owned.remove(provider)
        self.owned_total.set(len(self._owned))
        self.changes.labels(reason if reason in LEASE_CHANGES else "released").inc()
