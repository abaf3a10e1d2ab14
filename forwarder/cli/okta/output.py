"""How ``forwarder okta`` commands report: readable lines, or one JSON document (``--json``).

Failures map to the exit codes of :mod:`forwarder.cli.common`: 1 when the org (or the
network) said no, 2 for a usage or config error. Okta's error body is shown in full
(``errorCode``, ``errorSummary``, every ``errorCauses`` entry, ``errorId``), then a hint.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from forwarder.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from forwarder.errors import AdminApiError, ConfigError, ForwarderError
from forwarder.okta.provision import CheckFailed, ProvisionError

__all__ = ["Output", "exit_code", "okta_body_lines", "run"]


def exit_code(exc: ForwarderError) -> int:
    """2 for what the operator typed or configured, 1 for what the org answered."""
    return EXIT_USAGE if isinstance(exc, ProvisionError | ConfigError) else EXIT_FAILED


def okta_body_lines(body: object) -> list[str]:
    """Okta's error body, every field of it, one per line."""
    if isinstance(body, dict):
        lines = []
        for field, value in body.items():
            if field == "errorCauses" and isinstance(value, list):
                if not value:
                    lines.append("errorCauses: (none)")
                for i, cause in enumerate(value):
                    items = cause.items() if isinstance(cause, dict) else [("", cause)]
                    for name, text in items:
                        lines.append(f"errorCauses[{i}]{'.' + name if name else ''}: {text}")
            else:
                lines.append(f"{field}: {value if isinstance(value, str) else json.dumps(value)}")
        return lines
    if body in (None, ""):
        return []
    return [f"body: {body if isinstance(body, str) else json.dumps(body)}"]


def _error_dict(exc: ForwarderError) -> dict[str, Any]:
    data: dict[str, Any] = {"message": str(exc)}
    if isinstance(exc, AdminApiError):
        data.update(status=exc.status, okta=exc.body, hint=exc.hint)
    elif isinstance(exc, ProvisionError):
        data.update(details=exc.details)
    elif isinstance(exc, CheckFailed):
        data.update(check=exc.result.as_dict(), hint=exc.hint)
    elif hasattr(exc, "hint"):
        data.update(hint=exc.hint)
    return data


class Output:
    """Collects a command's result; prints lines as it goes, or one JSON document at the end."""

    def __init__(self, *, as_json: bool) -> None:
        self.as_json = as_json
        #: Merged into the JSON document, success or failure.
        self.data: dict[str, Any] = {}

    def say(self, text: str = "") -> None:
        """A line of readable output (nothing with ``--json``)."""
        if not self.as_json:
            print(text, flush=True)

    def note(self, text: str) -> None:
        """A remark on stderr, such as an input we normalised (nothing with ``--json``)."""
        if not self.as_json:
            print(f"note: {text}", file=sys.stderr, flush=True)

    def finish(self, *, ok: bool = True, **data: Any) -> int:
        """Print the JSON document (with ``--json``); 0 when ``ok``, else 1."""
        if self.as_json:
            print(json.dumps({"ok": ok, **self.data, **data}, indent=2), flush=True)
        return EXIT_OK if ok else EXIT_FAILED

    def fail(self, exc: ForwarderError) -> int:
        """Report ``exc`` (Okta's body in full, then the hint) and return its exit code."""
        if self.as_json:
            document = {"ok": False, **self.data, "error": _error_dict(exc)}
            print(json.dumps(document, indent=2), flush=True)
            return exit_code(exc)
        lines = [f"forwarder: {exc}"]
        if isinstance(exc, ProvisionError):
            lines += [f"  {d}" for d in exc.details]
        if isinstance(exc, AdminApiError):
            lines += [f"  {line}" for line in okta_body_lines(exc.body)]
        hint = getattr(exc, "hint", "")
        if hint:
            lines.append(f"hint: {hint}")
        print("\n".join(lines), file=sys.stderr, flush=True)
        return exit_code(exc)


def run(as_json: bool, command: Callable[[Output], Coroutine[Any, Any, int]]) -> int:
    """Run an async command, turning every forwarder error into its report and exit code."""
    out = Output(as_json=as_json)
    try:
        return asyncio.run(command(out))
    except ForwarderError as exc:
        return out.fail(exc)
