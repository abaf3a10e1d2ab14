"""Runs the scenarios in order and assembles the report (``forwarder bench``)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from forwarder.bench.delivery import budget_use, high_latency
from forwarder.bench.intake import intake
from forwarder.bench.plan import FULL, NOT_QUICK, QUICK, Context
from forwarder.bench.report import checks_ok, machine, render_table
from forwarder.bench.scale import coalescing, memory_at_scale
from forwarder.bench.scaleout import scale_out
from forwarder.bench.tenants import tenants

__all__ = ["SCENARIOS", "run_bench"]

#: Every scenario, in the order they run and appear.
SCENARIOS: dict[str, Callable[[Context], Awaitable[dict[str, Any]]]] = {
    "intake": intake,
    "coalescing": coalescing,
    "budget": budget_use,
    "high_latency": high_latency,
    "memory": memory_at_scale,
    "tenants": tenants,
    "scale-out": scale_out,
}


def _say(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


async def _run_all(ctx: Context, names: Sequence[str]) -> dict[str, Any]:
    scenarios: dict[str, Any] = {}
    for name in names:
        started = time.monotonic()
        try:
            result = await SCENARIOS[name](ctx.sub(name))
        except Exception as exc:  # one failed scenario must not hide the others
            traceback.print_exc(file=sys.stderr)
            result = {"error": f"{type(exc).__name__}: {exc}"}
        result["elapsed_s"] = round(time.monotonic() - started, 1)
        scenarios[name] = result
    return scenarios


def run_bench(
    *,
    quick: bool,
    json_path: Path | None = None,
    only: Sequence[str] = (),
    keep: Path | None = None,
    load_processes: int = 1,
    tenant_orgs: int | None = None,
    scaleout_orgs: int | None = None,
) -> int:
    """Run the bench, print the table, write the JSON; 0 when every check passed."""
    plan = QUICK if quick else FULL
    if tenant_orgs is not None:
        plan = dataclasses.replace(plan, tenant_orgs=tenant_orgs)
    if scaleout_orgs is not None:
        plan = dataclasses.replace(plan, scaleout_orgs=scaleout_orgs)
    names = list(only) or [n for n in SCENARIOS if not (quick and n in NOT_QUICK)]
    directory = keep or Path(tempfile.mkdtemp(prefix="forwarder-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    ctx = Context(plan, directory, _say, load_processes)
    started = time.monotonic()
    print(f"forwarder bench ({plan.name}): {', '.join(names)}", file=sys.stderr, flush=True)
    scenarios = asyncio.run(_run_all(ctx, names))
    problems = checks_ok(scenarios)
    report = {
        "machine": machine(),
        "plan": dataclasses.asdict(plan),
        "started": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - time.monotonic() + started)
        ),
        "elapsed_s": round(time.monotonic() - started, 1),
        "scenarios": scenarios,
        "problems": problems,
        "ok": not problems,
    }
    print(render_table(report))
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    if problems or keep is not None:
        print(f"logs and stores: {directory}", file=sys.stderr)
    else:
        shutil.rmtree(directory, ignore_errors=True)
    return 0 if not problems else 1
