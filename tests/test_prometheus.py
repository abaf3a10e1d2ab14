"""A real Prometheus scrapes a real daemon (subprocess, sandbox as Okta, 5 s window).

Prometheus runs with its own temp config and TSDB on a free port, scraping every second
and loading deploy/prometheus/forwarder-rules.yml. What it stores must equal what the
sandbox recorded; the rules and every dashboard query must evaluate there.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_tool
from tests.harness import ips
from tests.procs import Proc, free_port, sandbox
from tests.test_process import accepted_ips, provision, urls, wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "deploy" / "prometheus" / "forwarder-rules.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "forwarder-dashboard.json"
LOW, HIGH = 1500, 20


@dataclass
class Stack:
    prometheus: str
    metrics_url: str
    org: str
    api_token: str
    accepted: list[str]


def http_json(url: str, data: Any = None) -> Any:
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def query(stack: Stack, promql: str) -> list[dict[str, Any]]:
    """Instant query; the result vector (Prometheus must answer `success`)."""
    url = f"{stack.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    doc = http_json(url)
    assert doc["status"] == "success", doc
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def scalar(stack: Stack, promql: str) -> float | None:
    result = query(stack, promql)
    return float(result[0]["value"][1]) if result else None


def eventually(check: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {seconds} s")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = require_tool("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    with sandbox(tmp) as (org, api_token):
        config = asyncio.run(provision(org, api_token, tmp))
        ingest, metrics = urls(config)
        daemon = Proc(tmp / "daemon.log", "run", "--config", str(config))
        port = free_port()
        (tmp / "prometheus.yml").write_text(
            f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {RULES}
scrape_configs:
  - job_name: forwarder
    static_configs:
      - targets: ["{metrics.removeprefix("http://")}"]
"""
        )
        with (tmp / "prometheus.log").open("w") as log:
            prom = subprocess.Popen(
                [
                    binary,
                    f"--config.file={tmp / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            asyncio.run(wait_ready(metrics, daemon))
            items = [{"ip": ip, "riskLevel": "LOW"} for ip in ips(LOW)]
            items += [{"ip": ip, "riskLevel": "HIGH"} for ip in ips(HIGH, offset=LOW)]
            assert http_json(f"{ingest}/v1/signals", items) == {"accepted": LOW + HIGH}
            with pytest.raises(urllib.error.HTTPError):
                http_json(f"{ingest}/v1/signals", [{"ip": "nope", "riskLevel": "LOW"}])
            accepted: list[str] = []

            def delivered() -> bool:
                accepted[:] = asyncio.run(accepted_ips(org, api_token))
                return len(set(accepted)) >= LOW + HIGH

            eventually(delivered, 30)
            prometheus = f"http://127.0.0.1:{port}"

            def prometheus_ready() -> bool:
                try:
                    with urllib.request.urlopen(f"{prometheus}/-/ready", timeout=2) as r:
                        return bool(r.status == 200)
                except OSError:
                    return False

            eventually(prometheus_ready, 20)
            yield Stack(prometheus, metrics, org, api_token, accepted)
        finally:
            prom.terminate()
            prom.wait(timeout=15)
            daemon.stop()


def test_prometheus_stores_what_the_sandbox_accepted(stack: Stack) -> None:
    """Subjects sent, calls and intake in Prometheus equal what the sandbox recorded."""
    eventually(lambda: scalar(stack, "sum(forwarder_subjects_sent_total)") == len(stack.accepted))
    calls = asyncio.run(_accepted_calls(stack))
    assert scalar(stack, 'sum(forwarder_okta_calls_total{outcome="accepted"})') == calls
    assert scalar(stack, 'sum(forwarder_okta_calls_total{outcome!="accepted"})') == 0
    assert scalar(stack, 'forwarder_subjects_sent_total{risk_level="HIGH"}') == HIGH
    assert scalar(stack, 'forwarder_signals_received_total{result="accepted"}') == LOW + HIGH
    assert scalar(stack, 'forwarder_signals_received_total{reason="invalid"}') == 1
    assert scalar(stack, 'forwarder_ingest_requests_total{code="400"}') == 1
    assert scalar(stack, "sum(forwarder_pending_signals)") == 0
    assert scalar(stack, 'forwarder_provider_state{state="ok"}') == 1
    assert scalar(stack, 'up{job="forwarder"}') == 1
    targets = http_json(f"{stack.prometheus}/api/v1/targets")["data"]["activeTargets"]
    assert [(t["health"], t["lastError"]) for t in targets] == [("up", "")]


def test_alert_rules_load_and_evaluate_quietly(stack: Stack) -> None:
    """Every rule loads and evaluates without error; a healthy daemon raises no alert."""

    def quiet() -> bool:
        # Before the first scrape absent(up) holds, so ForwarderDown starts out pending.
        groups = http_json(f"{stack.prometheus}/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return bool(rules) and all(r["state"] == "inactive" for r in rules)

    eventually(lambda: scalar(stack, 'up{job="forwarder"}') == 1)
    eventually(quiet)
    groups = http_json(f"{stack.prometheus}/api/v1/rules")["data"]["groups"]
    assert [g["name"] for g in groups] == ["forwarder"]
    rules = groups[0]["rules"]
    assert len(rules) == 10
    for rule in rules:
        assert rule["type"] == "alerting"
        assert (rule["health"], rule.get("lastError", "")) == ("ok", ""), rule["name"]
        assert set(rule["annotations"]) == {"summary", "description", "runbook"}
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["lastEvaluation"] > "2000", rule["name"]


#: Panels that list trouble: a healthy daemon gives them nothing (the query still runs).
EMPTY_WHEN_HEALTHY = {"Orgs not ok"}


def test_dashboard_queries_run_in_prometheus(stack: Stack) -> None:
    """Every dashboard query, with its variables filled in, returns data from the daemon."""
    doc = json.loads(DASHBOARD.read_text())
    exprs = [(p["title"], t["expr"]) for p in doc["panels"] for t in p.get("targets", [])]
    # rate() needs a few scrapes inside $__rate_interval.
    eventually(lambda: bool(query(stack, "rate(forwarder_okta_calls_total[30s])")))
    empty = []
    for title, expr in exprs:
        filled = (
            expr.replace("$__rate_interval", "30s")
            .replace("$instance", ".*")
            .replace("$provider", ".*")
        )
        if not query(stack, filled) and title not in EMPTY_WHEN_HEALTHY:
            empty.append(title)
    assert empty == []


async def _accepted_calls(stack: Stack) -> int:
    import aiohttp  # noqa: PLC0415

    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{stack.org}/_sandbox/accepted",
            headers={"Authorization": f"SSWS {stack.api_token}"},
        ) as resp,
    ):
        return len(await resp.json())
