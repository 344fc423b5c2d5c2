"""Printing a benchmark table and appending it to docs/benchmarks.md with the machine and date."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sqlite3
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores{mem}; {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )


_STARTED = time.monotonic()


def progress(message: str) -> None:
    """One line of progress on stderr (a long benchmark should not look hung)."""
    print(f"[{time.monotonic() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def percentile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    return "\n".join([line, sep, *body])


def publish(title: str, text: str, notes: str = "", write: bool = True) -> None:
    """Print ``text`` and append it, dated, to docs/benchmarks.md."""
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    section = f"\n## {title} — {stamp}\n\nMachine: {machine()}\n\n{text}\n"
    if notes:
        section += f"\n{notes.strip()}\n"
    print(section)
    if write:
        DOC.parent.mkdir(exist_ok=True)
        if not DOC.exists():
            DOC.write_text(
                "# Benchmarks\n\nMeasured by `python -m bench <name>`; newest results at the end. "
                "See the top of each `bench/*.py` for what is measured and how.\n"
            )
        with DOC.open("a") as f:
            f.write(section)
