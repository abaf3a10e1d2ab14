"""The PostgreSQL DSN: checked without echoing it, shown without its secrets.

A DSN can carry a password (in the user part or as ``?password=``), so no message built
here contains the value itself: :func:`describe_dsn` is the only way a DSN reaches a log
line, ``/readyz``, ``forwarder status`` or an error.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["EXAMPLE_DSN", "check_dsn", "describe_dsn", "read_dsn_file"]

EXAMPLE_DSN = "postgresql://forwarder@db:5432/forwarder"
_SCHEMES = ("postgresql", "postgres")


def _split(dsn: str) -> tuple[str, str, str, str]:
    """(user, password, hosts, dbname) of a libpq URI; hosts may list several host:port."""
    parts = urlsplit(dsn)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    return unquote(user), unquote(password), hosts, unquote(parts.path.lstrip("/"))


def check_dsn(value: str, field: str, *, inline: bool) -> str:
    """Raise ``ValueError`` naming ``field`` unless ``value`` is a usable libpq URI.

    ``inline`` DSNs come from the config file or environment, which are not secrets: a
    password there is refused with where to put it instead.
    """
    if value != value.strip():
        raise ValueError(f"{field} has leading or trailing whitespace; remove it")
    scheme = urlsplit(value).scheme if "://" in value else ""
    if scheme not in _SCHEMES:
        raise ValueError(
            f"{field} must be a libpq URI such as {EXAMPLE_DSN} "
            "(key=value connection strings are not supported)"
        )
    _, password, hosts, _ = _split(value)
    query = parse_qs(urlsplit(value).query)
    if inline and (password or "password" in query):
        raise ValueError(
            f"{field} contains a password, and the config is not a secret: put the password "
            "in PGPASSWORD or a PGPASSFILE, or the whole DSN in store.dsn_file (a mounted Secret)"
        )
    for host in filter(None, hosts.split(",")):
        port = host.rpartition("]")[2].rpartition(":")[2] if ":" in host else ""
        if port and not port.isdigit():
            raise ValueError(f"{field}: a port must be a number, e.g. {EXAMPLE_DSN}")
    return value


def describe_dsn(dsn: str) -> str:
    """``user@host:port/dbname``: what to show of a DSN (no password, no query string)."""
    try:
        user, _, hosts, dbname = _split(dsn)
    except ValueError:
        return "postgresql://(unparsable DSN)"
    who = f"{user}@" if user else ""
    return f"postgresql://{who}{hosts or 'localhost'}/{dbname}"


def read_dsn_file(path: Path, field: str = "store.dsn_file") -> str:
    """The DSN held in ``path`` (surrounding whitespace dropped); ``ValueError`` if unusable."""
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"{field}: cannot read {path}: {exc.strerror}") from None
    if not text:
        raise ValueError(f"{field}: {path} is empty; it must hold a DSN such as {EXAMPLE_DSN}")
    check_dsn(text, f"{field} ({path})", inline=False)
    return text
