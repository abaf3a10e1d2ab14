"""The provisioning error: an input the operator must change (exit code 2)."""

from __future__ import annotations

from collections.abc import Sequence

from forwarder.errors import ForwarderError

__all__ = ["ProvisionError"]


class ProvisionError(ForwarderError):
    """An input the operator must change; ``details`` are extra lines (e.g. the choices).

    The org said nothing yet (or what it said makes the operator choose): a usage error,
    unlike :class:`~forwarder.errors.AdminApiError`, which is the org saying no.
    """

    def __init__(self, message: str, details: Sequence[str] = ()) -> None:
        self.details = list(details)
        super().__init__(message)
