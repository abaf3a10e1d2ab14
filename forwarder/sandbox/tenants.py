"""Many orgs in one sandbox: what each client id (one customer org each) was answered.

With ``org_per_client`` a :class:`~forwarder.sandbox.state.SandboxOrg` stands in for a
fleet: every registered service app is its own org's risk provider, with its own rate
window, tokens and grants, so a benchmark can run 1,000 orgs on loopback in one
process. :class:`OrgTally` keeps per-client counts (no request bodies, which at 1,000
orgs would take gigabytes) for ``GET /_sandbox/orgs``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OrgTally"]


@dataclass(slots=True)
class OrgTally:
    """What one client id's org saw on its events endpoint."""

    calls: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    subjects: int = 0
    ips: set[str] = field(default_factory=set)
    #: When the number of distinct IPs last grew (the org's "has it all" moment).
    last_new_ip_at: float | None = None

    def called(self, at: float, status: int) -> None:
        self.calls.append(at)
        self.statuses[status] += 1

    def accepted(self, at: float, ips: list[str]) -> None:
        before = len(self.ips)
        self.ips.update(ips)
        self.subjects += len(ips)
        if len(self.ips) > before:
            self.last_new_ip_at = at

    def to_json(self, window_s: float) -> dict[str, Any]:
        from forwarder.ratelimit import max_calls_in_window  # noqa: PLC0415

        return {
            "calls": len(self.calls),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "subjects": self.subjects,
            "distinct_ips": len(self.ips),
            "last_new_ip_at": self.last_new_ip_at,
            "max_calls_in_window": max_calls_in_window(self.calls, window_s),
        }
