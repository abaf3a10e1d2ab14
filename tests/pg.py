"""A throwaway PostgreSQL server for the tests: Debian's binaries, a private cluster.

``pg_cluster`` (session-scoped) runs ``initdb`` and ``pg_ctl start`` on a free port on
127.0.0.1 with a socket directory of its own, and stops the server when the session
ends. The server refuses to run as root, so under root (CI, this machine) both run as
the ``postgres`` user through ``runuser``; elsewhere as the current user.
``pg_dsn`` gives each test a fresh database of that cluster (isolation: leases, call logs,
advisory locks and LISTEN channels are all per database) and drops it afterwards.

TCP connections need a password (scram-sha-256), so a DSN without one really exercises
``PGPASSWORD``/``PGPASSFILE``; the superuser's password is random per session. Without the
binaries the tests skip, or fail in CI (``FORWARDER_REQUIRE_SERVICES=1``), as
:func:`tests.conftest.require_tool` does.

The cluster trades crash safety of the *server* for speed (``fsync=off``): commits are
still commits for every client, which is what the tests observe.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import asyncpg
import pytest

from forwarder.store.postgres.schema import migrate
from forwarder.store.postgres.writer import BroadcastRow, TargetedRow, upsert_rows
from tests.procs import free_port

__all__ = [
    "PgCluster",
    "pg_bin_dir",
    "pg_cluster",
    "pg_dsn",
    "pg_pool",
    "start_cluster",
    "write_rows",
]

_USER = "postgres"
_counter = itertools.count(1)


def pg_bin_dir() -> Path:
    """Where ``initdb`` and ``pg_ctl`` live (Debian keeps them off PATH, per major version)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    from tests.conftest import require_tool  # noqa: PLC0415

    return Path(require_tool("pg_ctl")).parent


@dataclass(frozen=True)
class PgCluster:
    """A running server: where it listens and how to reach it as its superuser."""

    host: str
    port: int
    socket_dir: Path
    password: str
    data_dir: Path

    def dsn(self, dbname: str = "postgres", *, password: bool = True) -> str:
        """A libpq URI for the superuser over TCP (``password=False`` leaves it out)."""
        auth = f"{_USER}:{quote(self.password, safe='')}" if password else _USER
        return f"postgresql://{auth}@{self.host}:{self.port}/{dbname}"

    bin_dir: Path

    def sql(self, statement: str, dbname: str = "postgres") -> str:
        """Run one statement as the superuser through the socket (trusted); its output."""
        result = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                _USER,
                "-d",
                dbname,
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                statement,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql {statement!r}: {result.stderr}")
        return result.stdout.strip()

    def create_database(self) -> str:
        name = f"t{os.getpid()}_{next(_counter)}"
        self.sql(f'CREATE DATABASE "{name}" TEMPLATE template0 STRATEGY FILE_COPY')
        return name

    def drop_database(self, name: str) -> None:
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", _USER, "--", *cmd] if os.geteuid() == 0 else cmd


def _give_to_server_user(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, _USER, _USER)


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)


@contextlib.contextmanager
def start_cluster() -> Iterator[PgCluster]:
    """initdb + pg_ctl start in a temporary directory; stopped and removed on exit."""
    bindir = pg_bin_dir()
    root = Path(tempfile.mkdtemp(prefix="forwarder-pg-"))
    data, sock = root / "data", root / "sock"
    password = secrets.token_urlsafe(16)
    pwfile = root / "pw"
    for path in (data, sock):
        path.mkdir()
    pwfile.write_text(password)
    for path in (root, data, sock, pwfile):
        _give_to_server_user(path)
    _run(
        _as_server_user(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                _USER,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
                "--no-instructions",
                "-E",
                "UTF8",
                "--locale=C",
            ]
        )
    )
    port = free_port()
    options = " ".join(
        [
            f"-p {port}",
            f"-k {sock}",
            "-c listen_addresses=127.0.0.1",
            "-c fsync=off",
            "-c full_page_writes=off",
            "-c max_connections=200",
            "-c shared_buffers=32MB",
        ]
    )
    ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log")]
    try:
        _run(_as_server_user([*ctl, "-o", options, "-w", "start"]))
    except subprocess.CalledProcessError as exc:
        log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {exc.stderr}\n{log}") from None
    try:
        yield PgCluster("127.0.0.1", port, sock, password, data, bindir)
    finally:
        subprocess.run(
            _as_server_user([*ctl, "-m", "immediate", "-w", "stop"]),
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One PostgreSQL server for the whole test session."""
    with start_cluster() as cluster:
        yield cluster


@pytest.fixture
def pg_dsn(pg_cluster: PgCluster) -> Iterator[str]:
    """A DSN (with password) to a fresh, empty database, dropped after the test."""
    name = pg_cluster.create_database()
    try:
        yield pg_cluster.dsn(name)
    finally:
        pg_cluster.drop_database(name)


@pytest.fixture(name="pool")
async def pg_pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a fresh database with forwarder's schema (import it to use ``pool``)."""
    made = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=6)
    try:
        async with made.acquire() as conn:
            await migrate(conn)
        yield made
    finally:
        await made.close()


async def write_rows(
    pool: asyncpg.Pool, broadcast: Sequence[BroadcastRow], targeted: Sequence[TargetedRow] = ()
) -> None:
    """Store broadcast and targeted rows in one transaction, as the writer does."""
    async with pool.acquire() as conn, conn.transaction():
        await upsert_rows(conn, [*broadcast, *targeted])
