"""Run a benchmark: ``python -m bench store|liveness|gateway [--quick] [--no-write]``."""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHES = ("store", "liveness", "gateway")


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
    args = parser.parse_args()
    module = importlib.import_module(f"bench.{args.name}")
    module.run(quick=args.quick, write=not args.no_write, directory=args.dir)


if __name__ == "__main__":
    sys.exit(main())
