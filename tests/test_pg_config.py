"""The PostgreSQL store's configuration, secrets and schema, against a real server.

The DSN and its password never appear in an error, a log line or command output; the
password reaches the server through the DSN file, PGPASSWORD or PGPASSFILE; the schema
is migrated once however many replicas start together, or required to be current.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from urllib.parse import unquote, urlsplit

import asyncpg
import pytest
import structlog

from forwarder.config import load_settings, store_dsn
from forwarder.errors import ConfigError, StoreError
from forwarder.okta.keys import generate_signing_key, write_private_key
from forwarder.store.postgres.connect import open_pool
from forwarder.store.postgres.dsn import describe_dsn
from forwarder.store.postgres.schema import LATEST_VERSION, migrate, schema_version
from forwarder.telemetry import configure_logging
from tests.pg import PgCluster
from tests.procs import run_cli

SECRET = "s3cr3t-Pa55"
PROVIDER = """
[[providers]]
name = "acme"
org_url = "https://acme.okta.com"
client_id = "0oa123"
private_key_file = "k.json"
"""


def write_config(tmp_path: Path, store: str) -> Path:
    write_private_key(tmp_path / "k.json", generate_signing_key("ES256"), force=True)
    path = tmp_path / "forwarder.toml"
    path.write_text("[store]\n" + store + "\n" + PROVIDER)
    return path


def problems(tmp_path: Path, store: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_settings(write_config(tmp_path, store))
    return err.value.problems


def password_of(dsn: str) -> str:
    return unquote(urlsplit(dsn).password or "")


# -- validation ----------------------------------------------------------------------


def test_postgres_defaults(tmp_path: Path) -> None:
    """backend = "postgres" with a DSN: lease TTL 15 s, a pool of 10, migrate at start."""
    settings, _ = load_settings(
        write_config(tmp_path, 'backend = "postgres"\ndsn = "postgresql://forwarder@db/forwarder"')
    )
    store = settings.store
    assert (store.lease_ttl_s, store.pool_size, store.migrate_at_start) == (15.0, 10, True)


@pytest.mark.parametrize(
    ("store", "expected"),
    [
        ('backend = "postgres"', "needs exactly one of dsn"),
        (
            'backend = "postgres"\ndsn = "postgresql://a@b/c"\ndsn_file = "dsn"',
            "needs exactly one of dsn",
        ),
        ('backend = "postgres"\ndsn = "host=db dbname=forwarder"', "must be a libpq URI"),
        ('backend = "postgres"\ndsn = "postgresql://u@db:port/x"', "a port must be a number"),
        ('dsn = "postgresql://forwarder@db/forwarder"', 'for backend = "postgres"'),
        ('backend = "mysql"', "store.backend"),
    ],
)
def test_store_mistakes_are_named(tmp_path: Path, store: str, expected: str) -> None:
    """Missing or doubled DSN, key=value strings, bad ports, DSN without postgres: named."""
    found = problems(tmp_path, store)
    assert any(expected in p for p in found), found


@pytest.mark.parametrize(
    "dsn",
    [f"postgresql://forwarder:{SECRET}@db/forwarder", f"postgresql://db/f?password={SECRET}"],
)
def test_a_password_in_the_config_is_refused_without_repeating_it(tmp_path: Path, dsn: str) -> None:
    """The config is not a secret: a password there is refused, and the message says where
    it belongs, without quoting it."""
    found = problems(tmp_path, f'backend = "postgres"\ndsn = "{dsn}"')
    text = "\n".join(found)
    assert "PGPASSWORD" in text
    assert "dsn_file" in text
    assert SECRET not in text


def test_dsn_file_problems_never_quote_the_file(tmp_path: Path) -> None:
    """Missing, empty or unusable DSN files are named by path; their content never shown."""
    store = 'backend = "postgres"\ndsn_file = "dsn"'
    assert any("cannot read" in p for p in problems(tmp_path, store))
    (tmp_path / "dsn").write_text("\n")
    assert any("is empty" in p for p in problems(tmp_path, store))
    (tmp_path / "dsn").write_text(f"host=db password={SECRET}\n")
    found = problems(tmp_path, store)
    assert any("must be a libpq URI" in p for p in found)
    assert SECRET not in "\n".join(found)


def test_dsn_file_may_hold_the_password(tmp_path: Path) -> None:
    """The DSN file is the secret: a password inside is fine, surrounding whitespace dropped."""
    (tmp_path / "dsn").write_text(f"postgresql://forwarder:{SECRET}@db:5432/forwarder\n")
    settings, base = load_settings(write_config(tmp_path, 'backend = "postgres"\ndsn_file = "dsn"'))
    assert store_dsn(settings.store, base) == f"postgresql://forwarder:{SECRET}@db:5432/forwarder"


def test_env_selects_postgres(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FORWARDER_STORE__BACKEND / __DSN / __LEASE_TTL_S override the file."""
    monkeypatch.setenv("FORWARDER_STORE__BACKEND", "postgres")
    monkeypatch.setenv("FORWARDER_STORE__DSN", "postgresql://forwarder@db/forwarder")
    monkeypatch.setenv("FORWARDER_STORE__LEASE_TTL_S", "5")
    settings, _ = load_settings(write_config(tmp_path, ""))
    assert settings.store.backend == "postgres"
    assert settings.store.lease_ttl_s == 5


def test_describe_dsn_keeps_only_what_is_safe_to_show() -> None:
    """user@hosts/db: no password, no query string (which may carry one, or key paths)."""
    assert (
        describe_dsn(f"postgresql://fw:{SECRET}@db1:5432,db2:5433/prod?password={SECRET}")
        == "postgresql://fw@db1:5432,db2:5433/prod"
    )
    assert describe_dsn("postgresql:///forwarder") == "postgresql://localhost/forwarder"


# -- the password reaches the server -------------------------------------------------

pg = pytest.mark.slow


@pg
async def test_wrong_password_error_names_the_server_not_the_secret(pg_dsn: str) -> None:
    """A refused login says what to check, and shows neither password nor DSN."""
    wrong = pg_dsn.replace(password_of(pg_dsn), SECRET)
    with pytest.raises(StoreError) as err:
        async with open_pool(wrong, size=2):
            pass
    text = str(err.value)
    assert "PGPASSWORD" in text
    assert describe_dsn(wrong) in text
    assert SECRET not in text
    assert password_of(pg_dsn) not in text


@pg
async def test_unreachable_server_error_says_what_to_check() -> None:
    """Nothing listening: the message names host and port and asks whether it runs."""
    with pytest.raises(StoreError) as err:
        async with open_pool(f"postgresql://u:{SECRET}@127.0.0.1:1/db", size=2):
            pass
    assert "is the server running" in str(err.value)
    assert SECRET not in str(err.value)


@pg
@pytest.mark.parametrize("source", ["PGPASSWORD", "PGPASSFILE"])
async def test_password_from_the_environment(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    """A DSN without a password connects with PGPASSWORD, or a PGPASSFILE (0600)."""
    password = password_of(pg_dsn)
    bare = pg_dsn.replace(f":{urlsplit(pg_dsn).password}@", "@")
    monkeypatch.delenv("PGPASSWORD", raising=False)
    if source == "PGPASSWORD":
        monkeypatch.setenv("PGPASSWORD", password)
    else:
        passfile = tmp_path / "pgpass"
        passfile.write_text(f"*:*:*:*:{password}\n")
        passfile.chmod(0o600)
        monkeypatch.setenv("PGPASSFILE", str(passfile))
    async with open_pool(bare, size=2) as (pool, _):
        assert await pool.fetchval("SELECT 1") == 1


# -- schema ----------------------------------------------------------------------------


@pg
async def test_replicas_starting_together_migrate_once(pg_dsn: str) -> None:
    """Five replicas start at once: one applies each migration, the rest find it done."""

    async def start() -> list[int]:
        async with open_pool(pg_dsn, size=2) as (_, result):
            assert result is not None
            return list(result.applied)

    results = await asyncio.gather(*(start() for _ in range(5)))
    assert sorted(results) == [[], [], [], [], list(range(1, LATEST_VERSION + 1))]
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await schema_version(conn) == LATEST_VERSION
        assert await conn.fetchval("SELECT count(*) FROM schema_version") == LATEST_VERSION
    finally:
        await conn.close()


@pg
async def test_a_newer_schema_is_refused(pg_dsn: str) -> None:
    """A database migrated by a newer forwarder: this one refuses to touch it."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        await migrate(conn)
        await conn.execute("INSERT INTO schema_version VALUES (99, 'from the future')")
        with pytest.raises(StoreError, match="newer than this forwarder"):
            await migrate(conn)
    finally:
        await conn.close()


@pg
async def test_start_can_require_a_migrated_schema(pg_dsn: str) -> None:
    """migrate_at_start = false: an empty database is refused with the command to run."""
    with pytest.raises(StoreError, match="forwarder store migrate"):
        async with open_pool(pg_dsn, size=2, migrate_at_start=False):
            pass
    async with open_pool(pg_dsn, size=2) as _, open_pool(pg_dsn, size=2, migrate_at_start=False):
        pass


@pg
async def test_store_migrate_command_migrates_without_showing_the_dsn(
    pg_cluster: PgCluster, pg_dsn: str, tmp_path: Path
) -> None:
    """`forwarder store migrate` with the DSN in a file: migrated, then nothing to do;
    the output names the server, never the password."""
    (tmp_path / "dsn").write_text(pg_dsn + "\n")
    config = write_config(tmp_path, 'backend = "postgres"\ndsn_file = "dsn"')
    first = await run_cli("store", "migrate", "--config", str(config))
    assert first.code == 0, first.output
    assert f"migrated from version 0 to {LATEST_VERSION}" in first.stdout
    assert describe_dsn(pg_dsn) in first.stdout
    again = await run_cli("store", "migrate", "--config", str(config))
    assert "nothing to do" in again.stdout
    for result in (first, again):
        assert pg_cluster.password not in result.output
    sqlite = write_config(tmp_path, "")
    refused = await run_cli("store", "migrate", "--config", str(sqlite))
    assert refused.code == 2
    assert 'store.backend = "postgres"' in refused.stderr


def test_logs_mask_a_dsn_password_wherever_it_appears() -> None:
    """A DSN logged by mistake (as a field, or inside an error text) loses its password."""
    log = io.StringIO()
    configure_logging("info", "json", stream=log)
    try:
        logger = structlog.get_logger("test")
        logger.info("x", dsn=f"postgresql://fw:{SECRET}@db/forwarder")
        logger.warning("y", error=f"failed: postgresql://fw:{SECRET}@db:5432/f?password={SECRET}")
    finally:
        structlog.reset_defaults()
    text = log.getvalue()
    assert SECRET not in text
    assert "postgresql://fw:[redacted]@db:5432/f?password=[redacted]" in text
