"""`forwarder bench --quick`: every scenario runs end to end and nothing is lost.

A smoke test of the benchmark suite, not of speed: it checks that every scenario
produced its figures and ratios, that everything sent was delivered (or, where the
scenario keeps signals waiting, is in the store), and that the org answered no 429.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
REPO = Path(__file__).resolve().parent.parent
SCENARIOS = ("intake", "coalescing", "budget", "high_latency", "memory", "tenants")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    env = {k: v for k, v in os.environ.items() if k != "FORWARDER_CONFIG"}
    proc = subprocess.run(
        [sys.executable, "-m", "forwarder", "bench", "--quick", "--json", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "correctness: OK" in proc.stdout
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def test_every_scenario_ran(report: dict[str, Any]) -> None:
    """Each of the six scenarios is in the JSON without an error."""
    assert tuple(report["scenarios"]) == SCENARIOS
    for name, result in report["scenarios"].items():
        assert "error" not in result, (name, result.get("error"))


def test_everything_sent_was_delivered_without_429(report: dict[str, Any]) -> None:
    """Per scenario: delivered (or kept, where nothing may be sent) equals sent; no 429."""
    assert report["ok"] is True
    assert report["problems"] == []
    for name, result in report["scenarios"].items():
        check = result["check"]
        assert check["sent"] > 0, name
        assert check["delivered"] == check["sent"], (name, check)
        assert check["http_429"] == 0, (name, check)


def test_ratios_and_machine_are_reported(report: dict[str, Any]) -> None:
    """The ratios against the baselines are present (their values are not judged)."""
    machine = report["machine"]
    assert machine["cpus"] >= 1
    assert machine["python"]
    assert {"forwarder", "aiohttp", "sqlite"} <= set(machine["versions"])
    s = report["scenarios"]
    assert [run["size"] for run in s["intake"]["runs"]] == [1, 100, 1000]
    for run in s["intake"]["runs"]:
        for key in ("vs_http_floor", "vs_storage_floor", "vs_lower_floor"):
            assert isinstance(run[key], float), (run["size"], key)
        assert run["daemon"]["p50_ms"] is not None
        assert run["daemon"]["p99_ms"] is not None
    assert isinstance(s["coalescing"]["rows_per_distinct_ip"], float)
    assert s["coalescing"]["peak_rss_mib"] > 0
    assert isinstance(s["budget"]["subjects_per_call_ratio"], float)
    assert isinstance(s["budget"]["calls_per_window_ratio"], float)
    assert isinstance(s["high_latency"]["in_first_call_ratio"], float)
    assert all(h["delivered"] for h in s["high_latency"]["highs"])
    assert s["memory"]["peak_rss_mib"] > 0
    assert s["memory"]["ready_s"] > 0


def test_coalescing_keeps_one_row_per_ip(report: dict[str, Any]) -> None:
    """Many signals for few IPs leave exactly one row per IP (a correctness property)."""
    coalescing = report["scenarios"]["coalescing"]
    assert coalescing["rows"] == coalescing["distinct_ips"]


def test_tenants_reports_start_up_delivery_and_telemetry(report: dict[str, Any]) -> None:
    """The many-orgs scenario: every org got every IP within its budget; figures present."""
    t = report["scenarios"]["tenants"]
    assert t["orgs"] == 50
    assert t["orgs_complete"] == t["orgs"]
    assert t["max_calls_in_any_window"] <= 3
    assert 0 < t["healthz_s"] <= t["readyz_s"]
    assert t["readyz_distinct_keys_s"] > 0
    assert t["readyz_bytes"] < 64 * 1024
    assert isinstance(t["intake_ratio"], float)
    assert t["intake_signals_per_s_not_delivering"] > 0
    assert t["peak_rss_mib"] > 0
