"""``tether hermes ...``: Hermes ``state.db`` stores, read without changing them.

Only Typer is imported at load time (``tether`` starts fast); each command imports
:mod:`tether.interop.hermes` when it runs.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .common import JsonOption, clean, cli_errors, emit_json

app = typer.Typer(
    name="hermes",
    help="Hermes state.db stores: census (read-only; never migrates or vacuums them).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

PathsArgument = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="[PATH]...",
        help="state.db files [default: $HERMES_HOME/state.db, ~/.hermes/state.db and "
        "~/.hermes/profiles/*/state.db].",
        show_default=False,
    ),
]


@app.command("census")
@cli_errors
def census(paths: PathsArgument = None, json_: JsonOption = False) -> None:
    """Count a Hermes store's sessions and messages by plain SQL, per store and summed.

    \b
    Examples:
      tether hermes census                         the stores Hermes itself would use
      tether hermes census a/state.db b/state.db   a fleet of gateways, summed
      tether hermes census --json                  the same keys as `tether doctor --json`
    """
    from ..interop.hermes import census_stores

    result = census_stores(paths or ())
    if json_:
        emit_json(result)
        return
    for store in result["stores"]:
        version = store["schema_version"]
        print(f"{clean(store['path'])} (Hermes schema {version if version is not None else '?'})")
        _print_figures(store)
    if len(result["stores"]) > 1:
        print(f"all {len(result['stores'])} stores")
        _print_figures(result)


def _print_figures(c: dict[str, Any]) -> None:
    rows: list[tuple[str, Any]] = [
        ("sessions", c["total"]),
        ("  open", c["open"]),
        ("  ended", c["ended"]),
        ("ghosts (no messages)", c["ghosts"]),
        ("  open", c["ghosts_open"]),
        ("chains (compression)", c["chains"]["count"]),
        ("  open tips", c["chains"]["open_tips"]),
        ("messages", c["messages"]["rows"]),
        ("  active", c["messages"]["active"]),
        ("  compacted", c["messages"]["compacted"]),
        ("  NULL content", c["messages"]["null_content"]),
        ("  dangling tool calls", c["messages"]["dangling_tool_calls"]),
    ]
    if c["chains"]["lengths"]:
        lengths = ", ".join(f"{k} rows: {v}" for k, v in c["chains"]["lengths"].items())
        rows.insert(6, ("  lengths", lengths))
    if c["end_reasons"]:
        rows.append(("end reasons (ended rows)", ""))
        rows.extend((f"  {clean(reason)}", n) for reason, n in c["end_reasons"].items())
    width = max(len(label) for label, _ in rows) + 2
    for label, value in rows:
        print(f"  {label.ljust(width)}{value}".rstrip())
    if c["by_source"]:
        names = [clean(s) or "(empty)" for s in c["by_source"]]
        w = max(len("by source"), *(len(n) for n in names)) + 2
        print(f"  {'by source'.ljust(w)}{'total':>7}{'open':>7}{'ended':>7}{'ghosts':>7}")
        for name, inner in zip(names, c["by_source"].values(), strict=True):
            figures = "".join(f"{inner[k]:>7}" for k in ("total", "open", "ended", "ghosts"))
            print(f"    {name.ljust(w - 2)}{figures}")


CLASS_LABELS = {
    "dead": "dead: no process holds the store (proof)",
    "probably_dead": "probably dead: every holder started after its last activity",
    "live": "live or unknown: a holder may own it",
    "parked": "parked gateway chats (never ended by default)",
    "by_design": "api_server rows (Hermes never ends them)",
}


@app.command("repair")
@cli_errors
def repair(
    paths: PathsArgument = None,
    stale_after: Annotated[
        str | None,
        typer.Option(
            "--stale-after",
            metavar="DURATION",
            help="Also list open rows idle this long (e.g. 2h, 7d); idleness alone ends nothing.",
        ),
    ] = None,
    json_: JsonOption = False,
) -> None:
    """Classify the open rows of Hermes stores by the evidence that their owner is dead.

    A dry run: it prints each class and changes nothing (the file stays
    byte-identical). Ending the dead rows (`--yes`) is not there yet.

    \b
    Examples:
      tether hermes repair                        the stores Hermes itself would use
      tether hermes repair state.db --stale-after 2h
    """
    from ..interop.hermes import discover
    from ..interop.hermes.repair import CLASSES, plan_repair
    from .common import parse_duration

    stale = parse_duration(stale_after) if stale_after is not None else None
    plans = [plan_repair(p, stale_after=stale) for p in discover(paths or ())]
    if json_:
        emit_json({"stores": [p.to_dict() for p in plans]})
        return
    for plan in plans:
        lock = "held" if plan.gateway_lock_held else "free"
        pids = ", ".join(str(h.pid) for h in plan.holders) or "none"
        print(f"{clean(str(plan.path))}: processes holding it: {pids}; gateway.lock {lock}")
        width = max(len(label) for label in CLASS_LABELS.values()) + 2
        for cls in CLASSES:
            ids = plan.classes[cls]
            print(f"  {CLASS_LABELS[cls].ljust(width)}{len(ids)}")
            if cls in ("dead", "probably_dead"):
                for sid in ids:
                    print(f"    {clean(sid)}")
        if stale is not None:
            print(
                f"  {f'idle longer than {stale_after} (listed only)'.ljust(width)}{len(plan.idle)}"
            )
            for sid in plan.idle:
                print(f"    {clean(sid)}")


# import, mirror and gc live in their own module (cli/hermes_sync.py).
from .hermes_sync import register  # noqa: E402

register(app)
