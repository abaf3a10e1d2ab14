"""Alert rules: promtool accepts them, their unit tests pass, and they name real metrics."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.conftest import require_tool
from tests.exported import exported, metric_names_in

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
RULES = DEPLOY / "forwarder-rules.yml"
RULE_TESTS = DEPLOY / "forwarder-rules.test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *args],
        cwd=DEPLOY,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(), re.MULTILINE)


def test_promtool_checks_the_rules() -> None:
    """`promtool check rules` accepts the rules file."""
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in result.stdout


def test_rule_unit_tests_pass() -> None:
    """`promtool test rules` passes every case (labels, annotations, timing)."""
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_example_prometheus_config_is_valid() -> None:
    """The example prometheus.yml (scrape job `forwarder` + the rules) passes `check config`."""
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    """Each alert is tested firing and not firing."""
    cases = re.findall(
        r"alertname: (\w+)\s*\n\s*exp_alerts:(\s*\[\])?", RULE_TESTS.read_text(), re.MULTILINE
    )
    firing = {name for name, empty in cases if not empty}
    quiet = {name for name, empty in cases if empty}
    names = set(alert_names())
    assert {"ForwarderDown", "ForwarderProviderAuthFailing", "ForwarderHighSignalsWaiting"} <= names
    assert sorted(names - firing) == []
    assert sorted(names - quiet) == []
    assert sorted((firing | quiet) - names) == []


def test_every_alert_has_severity_and_runbook() -> None:
    """Each alert carries a severity label and summary, description and runbook annotations."""
    blocks = re.split(r"^\s*- alert: ", RULES.read_text(), flags=re.MULTILINE)[1:]
    assert len(blocks) == len(alert_names())
    for block in blocks:
        name = block.split("\n", 1)[0]
        assert re.search(r"^\s+severity: (critical|warning)$", block, re.MULTILINE), name
        for key in ("summary", "description", "runbook"):
            assert re.search(rf"^\s+{key}: ", block, re.MULTILINE), f"{name} lacks {key}"


async def test_rules_name_only_exported_metrics(tmp_path: Path) -> None:
    """Every series a rule mentions is one a running daemon exports."""
    live = await exported(tmp_path)
    used = metric_names_in(RULES.read_text())
    assert used, "no forwarder metric found in the rules"
    assert sorted(used - live.sample_names) == []
