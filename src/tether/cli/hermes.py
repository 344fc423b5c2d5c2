"""``tether hermes ...``: Hermes ``state.db`` stores, read without changing them.

Only Typer is imported at load time (``tether`` starts fast); each command imports
:mod:`tether.interop.hermes` when it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import TetherError
from .common import JsonOption, clean, cli_errors, emit_json, fail

if TYPE_CHECKING:
    from ..interop.hermes.repair import RepairPlan, RepairResult

app = typer.Typer(
    name="hermes",
    help="Hermes state.db stores: census and repair (never migrates or vacuums them).",
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
GROUND_LABELS = {
    "dead": "dead (proof)",
    "probably_dead": "probably dead",
    "gateway_dead": "gateway chats, gateway gone (--include-gateway)",
    "api_idle": "api_server rows, owner gone and idle (--include-api)",
}


@app.command("repair")
@cli_errors
def repair(
    paths: PathsArgument = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="End the rows listed as ending (reason `reaped`).")
    ] = False,
    include_gateway: Annotated[
        bool,
        typer.Option(
            "--include-gateway",
            help="Also end messaging-platform rows, when the gateway is gone (its lock free, "
            "its process dead) and no process holding the store may own them.",
        ),
    ] = False,
    include_api: Annotated[
        bool,
        typer.Option(
            "--include-api",
            help="Also end api_server rows idle longer than --stale-after whose owner is gone.",
        ),
    ] = False,
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
    """End the open rows of Hermes stores whose owner is provably dead.

    Hermes has no owner columns: the evidence is which processes on this host
    hold the store open and since when, whether the gateway's lock is held, and
    each row's last activity. Without --yes it is a dry run: it prints each class
    and what --yes would end, and changes nothing (the file stays byte-identical).
    Gateway chats and api_server rows are never ended without their own flag.

    \b
    Examples:
      tether hermes repair                        the stores Hermes itself would use
      tether hermes repair state.db --yes         end the dead rows
      tether hermes repair state.db --include-api --stale-after 2h --yes
    """
    from ..interop.hermes import discover
    from ..interop.hermes.repair import apply_repair, plan_repair
    from .common import parse_duration, usage_error

    if include_api and stale_after is None:
        raise usage_error("--include-api needs --stale-after (how long an API row stays idle)")
    stale = parse_duration(stale_after) if stale_after is not None else None
    plans = [
        plan_repair(p, stale_after=stale, include_gateway=include_gateway, include_api=include_api)
        for p in discover(paths or ())
    ]
    # Every store is repaired even if one fails, and what was ended is always printed.
    results: list[RepairResult | str] = []  # a store's result, or why it failed
    for plan in plans if yes else []:
        try:
            results.append(apply_repair(plan))
        except TetherError as exc:
            results.append(str(exc))
    failures = [r for r in results if isinstance(r, str)]
    _print_repair(plans, results, yes=yes, json_=json_, stale_after=stale_after)
    for message in failures[:-1]:
        fail(message)
    if failures:
        raise fail(failures[-1])


def _print_repair(
    plans: list[RepairPlan],
    results: list[RepairResult | str],
    *,
    yes: bool,
    json_: bool,
    stale_after: str | None,
) -> None:
    from ..interop.hermes.repair import CLASSES, END_GROUNDS

    if json_:
        stores = [p.to_dict() for p in plans]
        for store, result in zip(stores, results, strict=False):
            store.update({"error": result} if isinstance(result, str) else result.to_dict())
        emit_json({"stores": stores})
        return
    for i, plan in enumerate(plans):
        lock = "held" if plan.gateway_lock_held else "free"
        pids = ", ".join(str(h.pid) for h in plan.holders) or "none"
        print(f"{clean(str(plan.path))}: processes holding it: {pids}; gateway.lock {lock}")
        width = max(len(label) for label in CLASS_LABELS.values()) + 2
        for cls in CLASSES:
            print(f"  {CLASS_LABELS[cls].ljust(width)}{len(plan.classes[cls])}")
        if stale_after is not None:
            print(
                f"  {f'idle longer than {stale_after} (listed only)'.ljust(width)}{len(plan.idle)}"
            )
            for sid in plan.idle:
                print(f"    {clean(sid)}")
        outcome = results[i] if yes else None
        if isinstance(outcome, str):
            print(f"  {'ended (reaped)'.ljust(width)}none (see the error below)")
            continue
        ends = outcome.ended if outcome else plan.to_end
        verb = "ended (reaped)" if yes else "--yes would end"
        print(f"  {verb.ljust(width)}{sum(len(ids) for ids in ends.values())}")
        for ground in END_GROUNDS:
            for sid in ends[ground]:
                print(f"    {clean(sid)}  {GROUND_LABELS[ground]}")
        if outcome and outcome.skipped:
            print(
                f"  {'left open: ended or active again since'.ljust(width)}{len(outcome.skipped)}"
            )
            for sid in outcome.skipped:
                print(f"    {clean(sid)}")


# import, mirror and gc live in their own module (cli/hermes_sync.py).
from .hermes_sync import register  # noqa: E402

register(app)
