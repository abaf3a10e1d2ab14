"""One customer org's ``[[providers]]`` file for the daemon's drop-in directory.

``forwarder okta setup --write-to DIR`` ends here: the file appears whole or not at all
(written beside its destination, then linked into place), and an existing file is
never replaced unless ``force``, so a running daemon's ``SIGHUP`` never reads half a file
or loses a customer by accident.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import unicodedata
from pathlib import Path

from forwarder.okta.provision.errors import ProvisionError

__all__ = ["drop_in_path", "provider_slug", "write_drop_in"]

_NOT_SLUG = re.compile(r"[^a-z0-9]+")
#: forwarder's provider names: ``[A-Za-z0-9][A-Za-z0-9_.-]*``, at most 64 characters.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def provider_slug(display_name: str) -> str:
    """forwarder's provider name for an Okta display name: "Risk Provider Example" ->
    ``risk-provider-example`` (accents dropped, anything else becomes ``-``)."""
    ascii_name = (
        unicodedata.normalize("NFKD", display_name).encode("ascii", "ignore").decode().lower()
    )
    slug = _NOT_SLUG.sub("-", ascii_name).strip("-")[:64].strip("-")
    if not slug:
        raise ProvisionError(
            f"--name {display_name!r} has no letters or digits to name the provider in "
            "forwarder's config; pass --provider-name"
        )
    return slug


def check_provider_name(name: str) -> str:
    """``name`` if forwarder's config accepts it as a provider name."""
    if not _NAME.fullmatch(name):
        raise ProvisionError(
            f"--provider-name {name!r} must be 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def drop_in_path(directory: Path, provider_name: str, *, force: bool) -> Path:
    """Where the file goes; refuses before anything changes in Okta if it exists."""
    path = directory / f"{provider_name}.toml"
    if path.exists() and not force:
        raise ProvisionError(
            f"{path} exists; pass --force to replace it, or choose another --provider-name"
        )
    if directory.exists() and not directory.is_dir():
        raise ProvisionError(f"--write-to {directory} is not a directory")
    return path


def write_drop_in(path: Path, block: str, *, force: bool) -> None:
    """Write ``block`` to ``path`` atomically; never over an existing file unless ``force``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(block.rstrip("\n") + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            if force:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)  # fails if it exists: no overwrite, even racing
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    except FileExistsError:
        raise ProvisionError(f"{path} appeared meanwhile; pass --force to replace it") from None
    except OSError as exc:
        raise ProvisionError(f"cannot write {path}: {exc.strerror}") from None
