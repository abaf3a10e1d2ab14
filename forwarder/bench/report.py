"""The bench report: the machine it ran on, one table, and the JSON document."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from forwarder import __version__

__all__ = ["checks_ok", "machine", "render_table"]

_PACKAGES = ("aiohttp", "pydantic", "structlog", "prometheus-client", "cryptography", "joserfc")


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _memory_mib() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        return None
    return None


def machine() -> dict[str, Any]:
    """CPU count, Python, OS and the versions of forwarder and its key dependencies."""
    versions = {"forwarder": __version__, "sqlite": sqlite3.sqlite_version}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "missing"
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "memory_mib": _memory_mib(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "versions": versions,
    }


def checks_ok(scenarios: dict[str, Any]) -> list[str]:
    """Correctness problems (never speed): lost signals and 429s; empty when all is well."""
    problems = []
    for name, result in scenarios.items():
        check = result.get("check")
        if check is None:
            problems.append(f"{name}: no result")
            continue
        if check["delivered"] != check["sent"]:
            problems.append(f"{name}: sent {check['sent']} but delivered {check['delivered']}")
        if check["http_429"]:
            problems.append(f"{name}: {check['http_429']} answers were 429")
        if check.get("max_calls_in_any_window", 0) > check.get("calls_per_window", 1 << 30):
            problems.append(
                f"{name}: an org saw {check['max_calls_in_any_window']} calls in one window "
                f"(budget {check['calls_per_window']})"
            )
    return problems


def _n(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _r(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _intake_rows(result: dict[str, Any]) -> Iterable[Sequence[str]]:
    for run in result["runs"]:
        d, h, s = run["daemon"], run["http_floor"], run["storage_floor"]
        size = run["size"]
        target = {1: ">= 0.50 of HTTP floor", 100: ">= 0.60 of lower floor"}.get(size, "")
        yield (
            f"intake, {size}/request",
            "signals/s answered 202",
            _n(d["signals_per_s"]),
            f"HTTP floor {_n(h['signals_per_s'])}",
            _r(run["vs_http_floor"]),
            target if size == 1 else "",
        )
        yield (
            "",
            "",
            "",
            f"storage floor {_n(s['rows_per_s'])}",
            _r(run["vs_storage_floor"]),
            "",
        )
        if size != 1:
            yield ("", "", "", "lower of the two", _r(run["vs_lower_floor"]), target)
        yield (
            "",
            "requests/s; p50 / p99 ms",
            f"{_n(d['requests_per_s'])}; {_n(d['p50_ms'], 1)} / {_n(d['p99_ms'], 1)}",
            f"HTTP floor {_n(h['requests_per_s'])}; {_n(h['p50_ms'], 1)} / {_n(h['p99_ms'], 1)}",
            "",
            "",
        )
        yield (
            "",
            "CPU cores: server / load generator",
            f"{_n(d['server_cpu_cores'], 2)} / {_n(d['load_cpu'], 2)}",
            f"HTTP floor {_n(h['server_cpu_cores'], 2)} / {_n(h['load_cpu'], 2)}",
            "",
            "",
        )
        yield ("", "daemon peak RSS MiB", _n(d["peak_rss_mib"], 1), "", "", "")


def _coalescing_rows(r: dict[str, Any]) -> Iterable[Sequence[str]]:
    yield (
        "coalescing",
        f"rows after {r['signals']:,} signals",
        _n(r["rows"]),
        f"{r['distinct_ips']:,} distinct IPs",
        _r(r["rows_per_distinct_ip"]),
        "1.00",
    )
    yield (
        "",
        "store MiB running / after stop",
        f"{_n(r['store_mib_running'], 1)} / {_n(r['store_mib_after_stop'], 2)}",
        "",
        "",
        "",
    )
    yield ("", "daemon peak RSS MiB", _n(r["peak_rss_mib"], 1), "", "", "")
    yield (
        "",
        f"signals/s; p50 / p99 ms ({r['request_size']}/request)",
        f"{_n(r['signals_per_s'])}; {_n(r['p50_ms'], 1)} / {_n(r['p99_ms'], 1)}",
        "",
        "",
        "",
    )


def _budget_rows(r: dict[str, Any]) -> Iterable[Sequence[str]]:
    per_call = r["subjects_per_call"]
    mean = sum(per_call) / len(per_call) if per_call else None
    yield (
        "budget use",
        f"subjects per call ({r['backlog']:,} backlog)",
        _n(mean),
        f"per-call max {r['per_call_max']:,}",
        _r(r["subjects_per_call_ratio"]),
        "1.00",
    )
    yield (
        "",
        f"calls per {r['window_s']:g} s window",
        f"{r['calls']} calls in {r['drain_s']:.1f} s",
        f"budget {r['calls_per_window']}/window",
        _r(r["calls_per_window_ratio"]),
        "1.00",
    )
    yield (
        "",
        "gap between bursts s (overhead/window)",
        f"{_n(r['overhead_per_window_s'] + r['window_s'], 2)} ({_n(r['overhead_per_window_s'], 2)})"
        if r["overhead_per_window_s"] is not None
        else "-",
        "projected at 60 s",
        _r(r["projected_calls_per_window_ratio_60s"]),
        "",
    )
    yield ("", "429 answers", str(r["check"]["http_429"]), "", "", "0")
    yield (
        "",
        "drain time s",
        _n(r["drain_s"], 2),
        f"ideal {_n(r['ideal_drain_s'], 2)}",
        "",
        "",
    )


def _high_rows(r: dict[str, Any]) -> Iterable[Sequence[str]]:
    n = len(r["highs"])
    yield (
        "HIGH latency",
        f"in first call after 202 ({r['backlog']:,} backlog)",
        f"{r['in_first_call']}/{n}",
        "",
        _r(r["in_first_call_ratio"]),
        "1.00",
    )
    yield (
        "",
        "delivery / wait for next call, max",
        "",
        "",
        _r(r["latency_vs_next_call_max"]),
        "1.00",
    )
    yield (
        "",
        "202 latency p50 ms; / wait for next call, max",
        _n(r["ack_ms_p50"], 1),
        "",
        _r(r["ack_vs_next_call_max"]),
        "",
    )


def _memory_rows(r: dict[str, Any]) -> Iterable[Sequence[str]]:
    yield (
        "memory at scale",
        f"peak RSS MiB, {r['pending']:,} pending / {r['providers']} providers",
        _n(r["peak_rss_mib"], 1),
        f"loading it {_n(r['peak_rss_mib_while_loading'], 1)}",
        "",
        "<= 150",
    )
    yield (
        "",
        "start to /readyz 200, s",
        _n(r["ready_s"], 2),
        f"empty store {_n(r['ready_s_empty_store'], 2)}",
        _r(r["ready_vs_empty"]),
        "<= 2 s",
    )
    lease = r["lease_1000_ms"]
    yield (
        "",
        "lease next 1000, ms (median)",
        _n(max(lease.values()) if lease else None, 1),
        "",
        "",
        "",
    )
    yield ("", f"store MiB with {r['pending']:,} pending", _n(r["store_mib"], 1), "", "", "")


def _tenant_rows(r: dict[str, Any]) -> Iterable[Sequence[str]]:
    n = f"{r['orgs']:,} orgs"
    yield ("tenants", f"start to /healthz, s ({n}, one key)", _n(r["healthz_s"], 2), "", "", "<= 5")
    yield ("", "start to /readyz, s (one key file)", _n(r["readyz_s"], 2), "", "", "<= 10")
    yield (
        "",
        "start to /readyz, s (distinct key files)",
        _n(r["readyz_distinct_keys_s"], 2),
        "",
        "",
        "<= 30",
    )
    yield (
        "",
        f"every org has all {r['feed_ips']:,} IPs after, s",
        _n(r["all_orgs_have_all_ips_s"], 1),
        f"{r['orgs_complete']:,} complete",
        "",
        "<= 90",
    )
    yield (
        "",
        "calls / most in one window per org",
        f"{r['calls']:,} / {r['max_calls_in_any_window']}",
        f"{r['calls_per_org_needed']} per org needed",
        "",
        "<= 3",
    )
    yield (
        "",
        "intake signals/s at N orgs",
        _n(r["intake_signals_per_s"]),
        f"1 org {_n(r['intake_signals_per_s_one_org'])}",
        _r(r["intake_ratio"]),
        ">= 0.8",
    )
    if r.get("intake_signals_per_s_not_delivering") is not None:
        yield (
            "",
            "  same, N orgs not delivering (unreachable)",
            _n(r["intake_signals_per_s_not_delivering"]),
            "",
            _r(r["intake_ratio_not_delivering"]),
            "",
        )
    yield (
        "",
        "peak RSS MiB (feed + delivery; with intake)",
        _n(r["peak_rss_mib_feed_and_delivery"], 1),
        f"with intake {_n(r['peak_rss_mib'], 1)}",
        "",
        "<= 200",
    )
    yield (
        "",
        "/readyz KiB; /metrics MB, scrape s",
        f"{r['readyz_bytes'] / 1024:.1f}; {r['metrics_bytes'] / 1e6:.2f}, "
        f"{r['metrics_scrape_s']:.2f}",
        "idle",
        "",
        "< 64; < 5, < 1",
    )
    yield (
        "",
        "",
        f"{r['readyz_bytes_backlog'] / 1024:.1f}; {r['metrics_bytes_backlog'] / 1e6:.2f}, "
        f"{r['metrics_scrape_backlog_s']:.2f}",
        "every org has a backlog",
        "",
        "",
    )


def _scaleout_rows(r: dict[str, Any]) -> Iterable[Sequence[str]]:
    if "skipped" in r:
        yield ("scale-out", "skipped", r["skipped"], "", "", "")
        return
    sq = r["sqlite"]
    yield (
        "scale-out",
        f"SQLite, 1 daemon ({r['orgs']:,} orgs): intake signals/s",
        _n(sq["intake_signals_per_s"]),
        f"delivery {_n(sq['delivery_calls_per_s'], 1)} calls/s",
        "",
        "",
    )
    for run in r["rounds"]:
        n = run["replicas"]
        yield (
            "",
            f"Postgres, {n} replica{'s' if n > 1 else ''}: intake signals/s",
            _n(run["intake_signals_per_s"]),
            "per replica " + " / ".join(_n(x) for x in run["intake_per_replica_signals_per_s"]),
            _r(run["intake_growth"]),
            "grows" if n > 1 else "",
        )
        yield (
            "",
            f"  delivery calls/s (all {r['feed_ips']:,} IPs to every org)",
            _n(run["delivery_calls_per_s"], 1),
            f"{_n(run['all_orgs_have_all_ips_s'], 1)} s, {run['calls']:,} calls, "
            f"most {run['max_calls_in_any_window']}/window",
            _r(run["delivery_growth"]),
            "grows" if n > 1 else "",
        )
    yield (
        "",
        "Postgres intake / SQLite's (100-signal requests)",
        _n(r["rounds"][0]["intake_signals_per_s"]),
        f"SQLite {_n(sq['intake_signals_per_s'])}",
        _r(r["pg_vs_sqlite_intake"]),
        ">= 0.5",
    )
    pg, sq_idle = r["postgres_not_delivering"], r["sqlite_not_delivering"]
    yield (
        "",
        "  same, 1 daemon, N orgs not delivering",
        _n(pg["intake_signals_per_s"]),
        f"SQLite {_n(sq_idle['intake_signals_per_s'])}",
        _r(r["pg_vs_sqlite_intake_not_delivering"]),
        ">= 0.5",
    )


_ROWS = {
    "intake": _intake_rows,
    "coalescing": _coalescing_rows,
    "budget": _budget_rows,
    "high_latency": _high_rows,
    "memory": _memory_rows,
    "tenants": _tenant_rows,
    "scale-out": _scaleout_rows,
}


def render_table(report: dict[str, Any]) -> str:
    """The human table: one block per scenario, then the correctness line."""
    header = ("scenario", "measure", "forwarder", "baseline", "ratio", "target")
    rows: list[Sequence[str]] = [header]
    for name, result in report["scenarios"].items():
        if "error" in result:
            rows.append((name, "failed", result["error"][:60], "", "", ""))
            continue
        rows.extend(_ROWS[name](result))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        cells = [
            cell.ljust(w) if i < 2 or i == 3 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    m = report["machine"]
    v = m["versions"]
    lines.insert(
        0,
        f"forwarder bench ({report['plan']['name']}): {m['cpus']} CPUs, Python {m['python']}, "
        f"forwarder {v['forwarder']}, aiohttp {v['aiohttp']}, SQLite {v['sqlite']}\n",
    )
    problems = report["problems"]
    lines.append("")
    lines.append(
        "correctness: OK (everything sent was delivered or kept; no 429)"
        if not problems
        else "correctness: FAILED\n  " + "\n  ".join(problems)
    )
    return "\n".join(lines)
