"""Start-up time of the ``tether`` command, against ``python -c pass`` in the same run.

What is measured: the wall time of whole processes, as a user waits for them:
``python -c pass`` (the interpreter alone: the floor), ``tether --version``,
``tether --help`` and ``tether ls`` on a small database (20 sessions), each
run through the installed ``tether`` script of this environment. The commands
are run in interleaved rounds (one of each per round, order shuffled) so that
machine noise falls on all of them alike; the table gives the fastest run,
the median and the 90th percentile per command (the spread), the median CPU
time (user + system: what the process itself spends, much less sensitive to a
busy machine than the wall time), and the median wall time above the
interpreter. The load average before and after the run is in the notes: on a
shared machine, only a run under a load below about 1.5 says what a user sees.

The children run with bytecode caching on (``PYTHONDONTWRITEBYTECODE`` is
dropped from their environment), as an installed ``tether`` runs: without the
``.pyc`` files every start recompiles the modules it imports.

Target (issue 10): ``tether ls`` and ``tether --help`` under 150 ms.
"""

from __future__ import annotations

import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .report import median, percentile, progress, publish, table

TARGET_MS = 150.0


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _time(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + system) milliseconds of one run of ``argv``."""
    cpu, started = _cpu(), time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - started) * 1000, (_cpu() - cpu) * 1000


def run(quick: bool = False, write: bool = True, directory: str | None = None) -> None:
    rounds = 10 if quick else 40
    script = str(Path(sys.executable).parent / "tether")
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        db = str(Path(tmp) / "startup.db")
        import tether

        with tether.open_store(db, load_plugins=False) as store:
            for i in range(20):
                with store.session(source="cli", title=f"session {i}") as s:
                    s.append("user", "hello")
        env = dict(os.environ, TETHER_DB=db, COLUMNS="120")
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # see the module docstring
        load_before = os.getloadavg()[0]
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "tether --version": [script, "--version"],
            "tether --help": [script, "--help"],
            "tether ls": [script, "ls"],
        }
        for argv in commands.values():  # warm the page cache and the .pyc files
            _time(argv, env)
        times: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        for r in range(rounds):
            order = list(commands)
            random.shuffle(order)
            for name in order:
                wall, used = _time(commands[name], env)
                times[name].append(wall)
                cpu[name].append(used)
            progress(f"startup: round {r + 1}/{rounds}")
        load_after = os.getloadavg()[0]
    floor = median(times["python -c pass"])
    rows = []
    for name, ts in times.items():
        target = f"< {TARGET_MS:.0f} ms" if name in ("tether --help", "tether ls") else ""
        above = "" if name == "python -c pass" else f"{median(ts) - floor:.0f}"
        rows.append(
            (
                name,
                f"{min(ts):.0f}",
                f"{median(ts):.0f}",
                f"{percentile(ts, 0.9):.0f}",
                f"{median(cpu[name]):.0f}",
                above,
                target,
            )
        )
    text = table(
        [
            "command",
            "min ms",
            "median ms",
            "p90 ms",
            "CPU ms (median)",
            "ms above python",
            "target",
        ],
        rows,
    )
    notes = (
        f"{rounds} interleaved rounds; each command is a whole process started by this "
        "benchmark (`python -m bench startup`); `tether ls` lists a 20-session database. "
        f"Load average (1 min): {load_before:.2f} before, {load_after:.2f} after."
    )
    publish("startup", text, notes, write=write)
