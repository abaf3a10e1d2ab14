"""``forwarder bench``: scenarios run against a real daemon and the sandbox on loopback.

Each scenario starts its own processes (sandbox org, daemon, load generators, floors)
and reports ratios against baselines measured in the same run, so results from
different machines compare. :mod:`forwarder.bench.runner` runs them all;
:mod:`forwarder.bench.load` and :mod:`forwarder.bench.floor` are the helper processes.
"""

from __future__ import annotations

__all__: list[str] = []
