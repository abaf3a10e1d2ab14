"""One leased entry, as both stores' queues keep it between a lease and its settling."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["BROADCAST", "TARGETED", "Item"]

#: ``Item.kind``: an entry for every provider (stored once), or for one provider.
BROADCAST = 0
TARGETED = 1


class Item(NamedTuple):
    """Which table, which ip, which version (a tuple: a lease makes a thousand at a time)."""

    kind: int
    ip: str
    risk: int
    seq: int
    ts_ms: int
