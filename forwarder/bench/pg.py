"""A throwaway PostgreSQL server: Debian's binaries, a private cluster.

:func:`start_cluster` runs ``initdb`` and ``pg_ctl start`` on a free port on 127.0.0.1
with a socket directory of its own, and stops and removes the server on exit. The server
refuses to run as root, so under root (CI, this machine) both run as the ``postgres``
user through ``runuser``; elsewhere as the current user. TCP connections need a password
(scram-sha-256); the superuser's password is random per cluster.

The cluster trades crash safety of the *server* for speed (``fsync=off``): commits are
still commits for every client. Used by the ``scale-out`` bench scenario and the tests
(tests/pg.py adds the pytest fixtures).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from forwarder.bench.procs import free_port

__all__ = ["PgCluster", "pg_bin_dir", "start_cluster"]

_USER = "postgres"
_counter = itertools.count(1)


def pg_bin_dir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` live (Debian keeps them off PATH, per major version).

    None when PostgreSQL's server binaries are not installed.
    """
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


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
        result = subprocess.run(  # noqa: S603 - Debian's psql, our own arguments
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


#: ``FORWARDER_BENCH_PG_STATEMENTS=1``: the cluster loads this extension and each
#: scale-out round prints the statements that took the server's time (where to look).
STATEMENTS = "pg_stat_statements"


def statements_wanted() -> bool:
    return os.environ.get("FORWARDER_BENCH_PG_STATEMENTS") == "1"


def top_statements(cluster: PgCluster, db: str) -> str:
    """The 15 statements that took the server longest since the last call (then reset)."""
    cluster.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", db)
    text = cluster.sql(
        "SELECT calls, round(total_exec_time) AS ms, rows,"
        " left(regexp_replace(query, '\\s+', ' ', 'g'), 120)"
        " FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 15",
        db,
    )
    cluster.sql("SELECT pg_stat_statements_reset()", db)
    return text


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", _USER, "--", *cmd] if os.geteuid() == 0 else cmd


def _give_to_server_user(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, _USER, _USER)


def _run(cmd: list[str]) -> None:
    subprocess.run(  # noqa: S603 - initdb/pg_ctl, our own arguments
        cmd,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )


@contextlib.contextmanager
def start_cluster(bindir: Path | None = None) -> Iterator[PgCluster]:
    """initdb + pg_ctl start in a temporary directory; stopped and removed on exit."""
    bindir = bindir or pg_bin_dir()
    if bindir is None:
        raise RuntimeError("PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
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
            *([f"-c shared_preload_libraries={STATEMENTS}"] if statements_wanted() else []),
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
        subprocess.run(  # noqa: S603 - pg_ctl, our own arguments
            _as_server_user([*ctl, "-m", "immediate", "-w", "stop"]),
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)
