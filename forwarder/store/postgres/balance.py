"""How many providers each live replica should own: an even spread, decided alone.

Pure: every replica computes the same targets from the same sorted list of live
replicas, so they agree without talking. With P providers and N replicas the first
``P mod N`` replicas (by id) own ``P // N + 1`` and the rest ``P // N``; the targets add
up to P, so a provider left free means some replica is below its target and claims it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

__all__ = ["Plan", "plan", "target"]


def target(me: str, live: Collection[str], providers: int) -> int:
    """Providers ``me`` should own when ``live`` replicas (``me`` included) share them."""
    ids = sorted(set(live) | {me})
    base, extra = divmod(providers, len(ids))
    return base + (1 if ids.index(me) < extra else 0)


@dataclass(frozen=True, slots=True)
class Plan:
    """What one replica does on this tick: give these up, and claim up to ``claim`` more."""

    release: Sequence[str]
    claim: int


def plan(
    me: str, live: Collection[str], providers: Collection[str], owned: Collection[str]
) -> Plan:
    """Shed the excess over the target (and anything no longer configured), or claim the gap."""
    configured = set(providers)
    removed = sorted(p for p in owned if p not in configured)
    kept = sorted(p for p in owned if p in configured)
    want = target(me, live, len(configured))
    if len(kept) > want:
        return Plan(release=removed + kept[want:], claim=0)
    return Plan(release=removed, claim=want - len(kept))
