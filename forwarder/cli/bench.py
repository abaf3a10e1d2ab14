"""``forwarder bench``: the benchmark suite (see docs/benchmarks.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from forwarder.bench.plan import SCENARIO_NAMES

__all__ = ["register"]


def _cmd_bench(args: argparse.Namespace) -> int:
    from forwarder.bench.runner import run_bench  # noqa: PLC0415

    return run_bench(
        quick=args.quick,
        json_path=args.json,
        only=args.only or (),
        keep=args.keep,
        load_processes=args.load_processes,
        tenant_orgs=args.tenant_orgs,
        scaleout_orgs=args.scale_out_orgs,
    )


def register(sub: Any) -> None:
    """Add ``bench`` to the ``forwarder`` parser."""
    bench = sub.add_parser(
        "bench",
        help="benchmark intake, coalescing, budget use, HIGH latency, memory, many orgs, scale-out",
        description="Run every scenario against a real daemon and the sandbox on loopback; "
        "report ratios against baselines measured in the same run. Exit 1 when a "
        "correctness check fails (a signal lost, a 429), never for speed.",
    )
    bench.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, under a minute (scale-out only with --only)",
    )
    bench.add_argument("--json", type=Path, help="also write the full results here")
    bench.add_argument(
        "--only", action="append", choices=SCENARIO_NAMES, help="run only this scenario"
    )
    bench.add_argument("--keep", type=Path, help="keep logs and stores in this directory")
    bench.add_argument(
        "--load-processes",
        type=int,
        default=1,
        help="load generator processes for intake (default %(default)s)",
    )
    bench.add_argument(
        "--tenant-orgs",
        type=int,
        metavar="N",
        help="orgs in the tenants scenario (default: 1000, 50 with --quick)",
    )
    bench.add_argument(
        "--scale-out-orgs",
        type=int,
        metavar="N",
        help="orgs in the scale-out scenario (default: 1000, 50 with --quick)",
    )
    bench.set_defaults(func=_cmd_bench)
