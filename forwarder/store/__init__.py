"""Durable, coalescing storage of pending signals (one row per provider and IP)."""

from forwarder.store.base import AddResult, Lease, Store, StoreObserver
from forwarder.store.sqlite import SqliteStore

__all__ = ["AddResult", "Lease", "SqliteStore", "Store", "StoreObserver"]
