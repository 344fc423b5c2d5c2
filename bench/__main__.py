"""Run a benchmark: ``python -m bench NAME [--quick] [--no-write]`` (NAME: see ``BENCHES``).

``--pg URL|none`` adds (or skips) PostgreSQL where a benchmark supports it.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys

from .pg import DEFAULT_URL
from .report import progress

BENCHES = (
    "store",
    "liveness",
    "gateway",
    "startup",
    "hermes_census",
    "hermes_sync",
    "web",
    "peers",
    "retention",
    "sdk_sessions",  # in .venv-agents (make bench-agents)
)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("name", choices=BENCHES)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument(
        "--no-write", action="store_true", help="do not append to docs/benchmarks.md"
    )
    parser.add_argument(
        "--dir", default=None, help="where to put the databases (default: a temp dir)"
    )
    parser.add_argument(
        "--pg",
        default=os.environ.get("TETHER_TEST_PG", DEFAULT_URL),
        help="PostgreSQL URL to benchmark too, 'none' to skip (default: the test server)",
    )
    args = parser.parse_args()
    module = importlib.import_module(f"bench.{args.name}")
    pg_url = None if args.pg.lower() == "none" else args.pg
    options = {"quick": args.quick, "write": not args.no_write, "directory": args.dir}
    if "pg_url" in inspect.signature(module.run).parameters:
        options["pg_url"] = pg_url
    progress(f"{args.name}: starting ({'quick' if args.quick else 'full'} run)")
    module.run(**options)
    progress(f"{args.name}: done")


if __name__ == "__main__":
    sys.exit(main())
