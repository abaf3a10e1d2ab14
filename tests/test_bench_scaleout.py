"""The scale-out bench scenario's edges: no PostgreSQL, and the budget check it adds.

The scenario itself (four rounds of replicas) is too slow for the suite; it runs with
``forwarder bench --only scale-out`` (docs/benchmarks.md). ``--quick`` leaves it out,
which tests/test_bench.py checks (its scenario list).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from forwarder.bench import scaleout
from forwarder.bench.plan import QUICK, Context
from forwarder.bench.report import checks_ok, render_table
from forwarder.bench.runner import SCENARIOS


def _context(tmp_path: Path) -> Context:
    return Context(QUICK, tmp_path, lambda _text: None)


def test_without_postgres_the_scenario_says_it_was_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scaleout, "pg_bin_dir", lambda: None)
    monkeypatch.delenv("FORWARDER_REQUIRE_SERVICES", raising=False)
    result = asyncio.run(scaleout.scale_out(_context(tmp_path)))
    assert "not installed" in result["skipped"]
    assert checks_ok({"scale-out": result}) == []
    table = render_table(
        {
            "scenarios": {"scale-out": result},
            "machine": {
                "cpus": 2,
                "python": "3",
                "versions": dict.fromkeys(("forwarder", "aiohttp", "sqlite"), "x"),
            },
            "plan": {"name": "quick"},
            "problems": [],
        }
    )
    assert "skipped" in table
    assert "not installed" in table


def test_without_postgres_in_ci_the_scenario_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scaleout, "pg_bin_dir", lambda: None)
    monkeypatch.setenv("FORWARDER_REQUIRE_SERVICES", "1")
    with pytest.raises(RuntimeError, match="FORWARDER_REQUIRE_SERVICES"):
        asyncio.run(scaleout.scale_out(_context(tmp_path)))


def test_an_org_over_its_budget_is_a_correctness_problem() -> None:
    check = {"sent": 4, "delivered": 4, "http_429": 0, "calls_per_window": 3}
    assert checks_ok({"scale-out": {"check": {**check, "max_calls_in_any_window": 3}}}) == []
    problems = checks_ok({"scale-out": {"check": {**check, "max_calls_in_any_window": 4}}})
    assert problems == ["scale-out: an org saw 4 calls in one window (budget 3)"]


def test_scale_out_is_a_scenario_of_the_full_run() -> None:
    assert list(SCENARIOS)[-1] == "scale-out"
