"""What the sandbox remembers about each call, and the HTTP-free :class:`Answer` it gives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["AcceptedCall", "Answer", "CallRecord", "TokenRecord"]


@dataclass(slots=True)
class AcceptedCall:
    """An events call answered 202: when, by whom, for which provider, and the body as sent."""

    at: float
    client_id: str
    provider_id: str
    body: list[dict[str, Any]]

    @property
    def ips(self) -> list[str]:
        """Subject IPs in the order sent, duplicates kept."""
        return [str(s["ip"]) for event in self.body for s in event["subjects"]]

    def to_json(self) -> dict[str, Any]:
        """The record as served by ``GET /_sandbox/accepted``."""
        return {
            "at": self.at,
            "client_id": self.client_id,
            "provider_id": self.provider_id,
            "body": self.body,
        }


@dataclass(slots=True)
class CallRecord:
    """Any call to the events endpoint and the status it got."""

    at: float
    client_id: str | None
    status: int

    def to_json(self) -> dict[str, Any]:
        """The record as served by ``GET /_sandbox/calls``."""
        return {"at": self.at, "client_id": self.client_id, "status": self.status}


@dataclass(slots=True)
class TokenRecord:
    """Any token request: the (claimed) client, the status and the OAuth ``error`` if any."""

    at: float
    client_id: str | None
    status: int
    error: str | None

    def to_json(self) -> dict[str, Any]:
        """The record as served by ``GET /_sandbox/tokens``."""
        return {
            "at": self.at,
            "client_id": self.client_id,
            "status": self.status,
            "error": self.error,
        }


@dataclass(slots=True)
class Answer:
    """An HTTP answer without HTTP: ``body`` is JSON (None: empty) unless ``text`` is set."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    text: str | None = None
