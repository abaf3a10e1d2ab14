"""The backends the contract suite runs against: add one line to ``BACKENDS``.

A backend factory gets the pytest request (for fixtures of its own, e.g. a server) and a
fresh, empty directory, and returns an :class:`Opener` over a new, empty storage (a file,
a database): ``opener(**kwargs)`` builds a new store object over that *same* storage
each time it is called, so a test can close the store and open it again (a restart).
``kwargs`` are ``providers``, ``max_pending``, ``max_age_ms``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from forwarder.store import StoreBackend
from forwarder.store.postgres.store import PostgresStore
from forwarder.store.sqlite import SqliteStore
from tests.pg import PgCluster

Opener = Callable[..., StoreBackend]


def sqlite_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    path = tmp_path / "contract.db"
    return lambda **kwargs: SqliteStore(path, **kwargs)


_EMPTY_POSTGRES = """
DO $$ BEGIN
  IF to_regclass('counters') IS NOT NULL THEN
    TRUNCATE signals, targeted, cursors, done, dead_letters, provider_state, calls, call_log,
             provider_owner, replica, write_probe RESTART IDENTITY;
    UPDATE counters SET value = 0;
  END IF;
END $$
"""


def postgres_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """An empty database on the session's throwaway PostgreSQL server (tests/pg.py).

    One database per test; each new storage (a hypothesis example) empties it, which is
    much faster than a database per example.
    """
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    name = getattr(request.node, "_pg_contract_db", None)
    if name is None:
        name = cluster.create_database()
        request.node._pg_contract_db = name
        request.addfinalizer(lambda: cluster.drop_database(name))
    else:
        cluster.sql(_EMPTY_POSTGRES, dbname=name)
    dsn = cluster.dsn(name)
    return lambda **kwargs: PostgresStore(dsn, pool_size=4, **kwargs)


#: name -> factory.
BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Opener]] = {
    "sqlite": sqlite_backend,
    "postgres": postgres_backend,
}


@pytest.fixture(params=sorted(BACKENDS))
def new_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Opener]:
    """Makes fresh storages of one backend (one per hypothesis example, say)."""
    factory: Any = BACKENDS[request.param]
    counter = itertools.count()

    def new() -> Opener:
        directory = tmp_path / f"storage-{next(counter)}"
        directory.mkdir()
        result: Opener = factory(request, directory)
        return result

    return new


@pytest.fixture
def opener(new_storage: Callable[[], Opener]) -> Opener:
    """Opens stores of one backend over one fresh storage."""
    return new_storage()
