"""The Grafana dashboard: its queries name only exported metrics and honour the variables."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.exported import exported, metric_names_in

GRAFANA = Path(__file__).resolve().parent.parent / "deploy" / "grafana"
DASHBOARD = GRAFANA / "forwarder-dashboard.json"


def load() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in doc["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep theirs inside


def queries(doc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in panels(doc):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


async def test_every_query_names_only_exported_metrics(tmp_path: Path) -> None:
    """Each panel query (and variable query) uses series a running daemon exports."""
    live = await exported(tmp_path)
    doc = load()
    exprs = [expr for _, expr in queries(doc)]
    exprs += [v["definition"] for v in doc["templating"]["list"] if v["type"] == "query"]
    unknown = {name for expr in exprs for name in metric_names_in(expr)} - live.sample_names
    assert sorted(unknown) == []


async def test_queries_follow_the_provider_and_instance_variables(tmp_path: Path) -> None:
    """Every selector of a per-provider metric filters by $provider; every one by $instance."""
    live = await exported(tmp_path)
    per_provider = {name for name, (_, labels) in live.metrics.items() if "provider" in labels}
    selector = re.compile(r"\b([a-z_]+)(\{[^}]*\})?")
    for title, expr in queries(load()):
        for name, labels in selector.findall(expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name not in live.sample_names:
                continue
            assert 'instance=~"$instance"' in labels, (title, name)
            if base in per_provider or name in per_provider:
                assert 'provider=~"$provider"' in labels, (title, name)


def test_dashboard_covers_what_an_sre_watches() -> None:
    """Intake, backlog by risk level, budget, latency by risk level, outcomes, tokens."""
    doc = load()
    titles = " | ".join(p["title"].lower() for p in panels(doc))
    for topic in (
        "signals received",
        "pending ips by risk level",
        "budget used",
        "delivery latency p95 by risk level",
        "okta calls by outcome",
        "token requests by outcome",
        "backlog drain time",
        "oldest pending by risk level",
    ):
        assert topic in titles, topic
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["provider"]["multi"]
    assert variables["provider"]["includeAll"]
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(doc)]
    assert len(ids) == len(set(ids))
    for panel in panels(doc):
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_provisioning_points_at_the_dashboard_and_datasource() -> None:
    """Provisioning loads dashboards from a directory and defines datasource `prometheus`."""
    dashboards = (GRAFANA / "provisioning" / "dashboards" / "forwarder.yml").read_text()
    datasources = (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    assert re.search(r"^\s+type: file$", dashboards, re.MULTILINE)
    assert re.search(r"^\s+path: /\S+$", dashboards, re.MULTILINE)
    assert re.search(r"^\s+uid: prometheus$", datasources, re.MULTILINE)
    assert re.search(r"^\s+type: prometheus$", datasources, re.MULTILINE)
    current = {v["name"]: v.get("current") for v in load()["templating"]["list"]}
    assert current["datasource"] == {"text": "Prometheus", "value": "prometheus"}
