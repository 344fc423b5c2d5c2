"""What a user of ``tether`` expects: data printed as written, one-line errors, usable hints.

Regression tests for issue 10 (bugs 1 and 3, and the conventions) and issue 8 §6
(bad values give one ``error:`` line).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tether
from tether.cli.app import app

from .conftest import child_env, run_cli

runner = CliRunner()

WIDE = {"COLUMNS": "200"}
NASTY = "close [/] tag [bold]x[/bold] [red]y"


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture
def marked(tmp_path: Path) -> dict[str, str]:
    """A database whose every printed field is full of Rich markup."""
    db = str(tmp_path / "marked.db")
    s = tether.open_store(db, load_plugins=False)
    with s.session(source="cli[x]", model="[red]m", title=NASTY, cwd="/src/[/]") as h:
        h.append("user", "why [/] and [bold]this[/bold]?")
        h.append("assistant", "[link=http://x]no[/link]")
    other = s.session(source="tui", title="[bold]x[/bold]")
    other.append("user", "hi")
    other.end("manual", "said [/] so")
    s.close()
    return {"db": db, "id": h.id, "other": other.id}


def one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """The process failed with ``code`` and one ``error:`` line (plus at most one hint)."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[0].startswith("error: "), proc.stderr
    assert len(lines) <= 2, proc.stderr
    assert "Traceback" not in proc.stderr and "╭" not in proc.stderr and "│" not in proc.stderr
    assert "internal error" not in proc.stderr
    return lines[0]


# --- bug 1: square brackets are data, never markup ---------------------------------------


def test_ls_prints_titles_models_and_sources_as_written(marked: dict[str, str]) -> None:
    r = run_cli("ls", "--db", marked["db"], env=WIDE)
    assert r.returncode == 0, r.stderr
    assert NASTY in r.stdout
    assert "[red]m" in r.stdout and "cli[x]" in r.stdout and "[bold]x[/bold]" in r.stdout


def test_show_prints_every_field_as_written(marked: dict[str, str]) -> None:
    r = run_cli("show", marked["id"], "--db", marked["db"], env=WIDE)
    assert r.returncode == 0, r.stderr
    for text in (NASTY, "[red]m", "cli[x]", "/src/[/]", "why [/] and [bold]this[/bold]?"):
        assert text in r.stdout, text
    assert "[link=http://x]no[/link]" in r.stdout
    r = invoke("show", marked["other"], "--db", marked["db"])
    assert "manual (said [/] so)" in r.stdout


@pytest.mark.parametrize("bad_id", ["[abc]", "[/]", "[bold]01M"])
def test_errors_quote_ids_and_paths_as_written(marked: dict[str, str], bad_id: str) -> None:
    proc = run_cli("show", bad_id, "--db", marked["db"])
    assert one_line_error(proc, 1) == f"error: no session with id {bad_id!r}"


def test_a_path_with_brackets_is_named_as_written(tmp_path: Path) -> None:
    missing = str(tmp_path / "[dir]" / "[/]x.db")
    proc = run_cli("ls", "--db", missing)
    assert missing in one_line_error(proc, 1)


def test_doctor_and_demo_survive_markup(marked: dict[str, str]) -> None:
    r = run_cli("doctor", "--db", marked["db"], env=WIDE)
    assert r.returncode == 0 and "cli[x]" in r.stdout, r.stderr
    folder = Path(marked["db"]).parent / "[demo]"
    (folder / "[").mkdir(parents=True)
    r = run_cli("demo", "--db", str(folder / "[/]x.db"), env=WIDE)
    assert r.returncode == 0, r.stderr
    assert "[demo]/[/]x.db" in r.stdout


def test_help_keeps_its_bracketed_parts() -> None:
    proc = run_cli("chat", "--help")
    assert proc.returncode == 0
    assert "[default: $TETHER_TOKEN, else the data directory's]" in " ".join(proc.stdout.split())
    proc = run_cli("ls", "--help")
    assert "[default: $TETHER_DB, else tether.db in the user data directory]" in " ".join(
        proc.stdout.split()
    )


def test_the_openai_install_hint_keeps_its_extra(tmp_path: Path) -> None:
    # Run without the openai package importable, as a fresh install would.
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "openai.py").write_text("raise ImportError('No module named openai')\n")
    proc = subprocess.run(
        [sys.executable, "-m", "tether", "serve", "--agent", "openai",
         "--db", str(tmp_path / "x.db"), "--port", "0"],
        capture_output=True, text=True, timeout=60,
        env=child_env(
            PYTHONPATH=os.pathsep.join(filter(None, [str(blocker), os.environ.get("PYTHONPATH")])),
            TETHER_TOKEN="t",
        ),
    )  # fmt: skip
    assert "pip install 'tether[openai]'" in one_line_error(proc, 1)


# --- bug 3: the paging hint repeats what selected the data -------------------------------


def test_paging_hint_repeats_every_selecting_option_quoted(tmp_path: Path) -> None:
    db = str(tmp_path / "my sessions [1].db")
    s = tether.open_store(db, load_plugins=False)
    for i in range(5):
        with s.session(source="my src", model="m", cwd="/w d") as h:
            h.append("user", f"q{i}")
    with s.session(source="other") as h:
        h.append("user", "not mine")
    s.close()
    proc = run_cli("ls", "--db", db, "--source", "my src", "--cwd", "/w d", "-n", "2", "--all")
    assert proc.returncode == 0, proc.stderr
    [hint] = [line for line in proc.stdout.splitlines() if line.startswith("more: ")]
    argv = shlex.split(hint.removeprefix("more: "))
    assert argv[:2] == ["tether", "ls"]
    assert argv[argv.index("--db") + 1] == db
    assert argv[argv.index("--source") + 1] == "my src"
    assert argv[argv.index("--cwd") + 1] == "/w d"
    assert argv[argv.index("--limit") + 1] == "2" and "--all" in argv
    seen: list[str] = []
    argv = ["tether", "ls", "--db", db, "--source", "my src", "--cwd", "/w d", "-n", "2", "--all"]
    while True:  # following the hints walks exactly the selected sessions
        page = run_cli(*argv[1:], "--json")
        data = json.loads(page.stdout)
        seen += [i["id"] for i in data["items"]]
        proc = run_cli(*argv[1:])
        hints = [line for line in proc.stdout.splitlines() if line.startswith("more: ")]
        if not hints:
            break
        argv = shlex.split(hints[0].removeprefix("more: "))
    assert len(seen) == 5 == len(set(seen))


# --- usage errors, exit codes, --db anywhere, -h -----------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["ls", "--limit", "0"],
        ["ls", "--limit", "x"],
        ["ls", "--open", "--ended"],
        ["ls", "--bogus"],
        ["show"],
        ["doctor", "--yes"],
        ["doctor", "--repair"],
        ["reap", "--ttl", "0"],
        ["nosuchcommand"],
        ["--db", "a.db", "ls", "--db", "b.db"],
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args: list[str], tmp_path: Path) -> None:
    proc = run_cli(*args, env={"TETHER_DB": str(tmp_path / "none.db")})
    one_line_error(proc, 2)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["doctor", "--repair", "--stale-after", "nan"], "finite"),
        (["doctor", "--repair", "--stale-after", "infd"], "finite"),
        (["doctor", "--repair", "--stale-after", "1e400"], "finite"),
        (["ls", "--cursor", "garbage"], "cursor"),
        (["serve", "--idle-timeout", "nan"], "finite"),
        (["serve", "--detach-grace", "inf"], "finite"),
        (["show", "\udcff"], "surrogate"),
        (["end", "01M", "--reason", "r\udcff"], ""),
        (["show", "9" * 400], ""),
    ],
)
def test_bad_values_are_one_line_and_exit_1(
    args: list[str], needle: str, marked: dict[str, str]
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tether", *args, "--db", marked["db"]],
        capture_output=True, timeout=60, env=child_env(PYTHONIOENCODING="utf-8:surrogateescape"),
    )  # fmt: skip
    text = subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(errors="replace"),
        proc.stderr.decode(errors="replace"),
    )  # fmt: skip
    assert needle in one_line_error(text, 1)


def test_db_before_or_after_the_command(marked: dict[str, str]) -> None:
    before = run_cli("--db", marked["db"], "ls", "--json")
    after = run_cli("ls", "--json", "--db", marked["db"])
    assert before.returncode == after.returncode == 0, before.stderr + after.stderr
    assert json.loads(before.stdout) == json.loads(after.stdout)
    assert len(json.loads(before.stdout)["items"]) == 2
    shown = run_cli("--db", marked["db"], "show", marked["id"])
    assert shown.returncode == 0 and marked["id"] in shown.stdout


def test_short_help_and_version() -> None:
    for args in (["-h"], ["ls", "-h"], ["chat", "-h"], ["serve", "-h"]):
        proc = run_cli(*args)
        assert proc.returncode == 0 and proc.stdout.startswith("Usage: "), args
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout == f"tether {tether.__version__}\n"


def _commands() -> dict[str, object]:
    from typer.main import get_command

    group = get_command(app)
    return dict(group.commands)  # type: ignore[attr-defined]


def test_help_has_no_type_metavars_and_every_option_has_help() -> None:
    for name, command in _commands().items():
        for param in command.params:  # type: ignore[attr-defined]
            if param.param_type_name == "option":
                assert param.help, f"tether {name} {param.opts[0]} has no help"
        proc = run_cli(name, "--help")
        options = proc.stdout.partition("Options:")[2]
        assert "<bool>" not in proc.stdout and " <" not in options, proc.stdout
    for name in ("ls", "show", "end", "doctor", "serve", "chat"):
        assert "Example" in run_cli(name, "--help").stdout, name


# --- doctor and reap: readable, plurals right --------------------------------------------


def test_doctor_counts_stay_next_to_their_labels(tmp_path: Path) -> None:
    db = str(tmp_path / "d.db")
    s = tether.open_store(db, load_plugins=False)
    h = s.session(source="a-long-source-name-" + "x" * 40)
    h.append("user", "open, and the oldest")
    from tether.lifecycle import exits

    exits.untrack(h)
    s.close()
    r = run_cli("doctor", "--db", db, env={"COLUMNS": "100"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    from tether.cli.doctor import census_rows

    s = tether.open_store(db, load_plugins=False)
    labels = [label for label, _ in census_rows(s.census())]
    s.close()
    counts = lines[: len(labels)]
    assert counts[0].split() == ["sessions", "1"]
    # The numbers sit in one narrow column, right after the longest label.
    assert max(len(line.rstrip()) for line in counts) <= max(map(len, labels)) + 2 + 3
    assert any(line.startswith("oldest open: ") and h.id in line for line in lines)


def test_counts_in_sentences_are_singular_or_plural() -> None:
    from tether.cli.common import plural

    assert plural(1, "session") == "1 session" and plural(2, "session") == "2 sessions"
    assert plural(0, "dead owner") == "0 dead owners" and plural(1, "dead owner") == "1 dead owner"


def test_reap_says_one_session_of_one_dead_owner(tmp_path: Path) -> None:
    db = str(tmp_path / "r.db")
    code = f"""
import os, tether
s = tether.open_store({db!r}, load_plugins=False)
s.session(source="x").append("user", "hi")
os._exit(0)
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=child_env())
    proc = run_cli("reap", "--db", db)
    assert proc.returncode == 0, proc.stderr
    assert "reaped 1 session of 1 dead owner\n" in proc.stdout


# --- start-up: importing the CLI loads only what a listing needs --------------------------


def test_the_cli_imports_no_gateway_rich_or_store_backend_at_start() -> None:
    code = (
        "import sys, tether.cli.app\n"
        "heavy = ['websockets', 'uvicorn', 'starlette', 'rich', 'tether.gateway', "
        "'psycopg', 'openai', 'pydantic', 'tether.store', 'tether.lifecycle', 'logging', "
        "'platformdirs', 'tether.cli.sessions', 'tether.cli.chat', 'tether.cli.serve']\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=child_env()
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def _modules_after(*argv: str) -> tuple[str, list[str]]:
    """Run ``tether *argv`` in a fresh interpreter; its stdout and the modules it loaded."""
    code = (
        "import sys\n"
        "from tether.cli.app import main\n"
        f"sys.argv = ['tether', *{list(argv)!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "print('MODULES', ' '.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=child_env()
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, proc.stderr.split("MODULES ", 1)[1].split()


# What `tether --help` and `tether ls` must not pay for at start-up (issue 10: < 150 ms):
# the other commands' modules, the session lifecycle (secrets, hmac and OpenSSL), the
# reaper, and the platform directories when the database is named.
NOT_FOR_LS = [
    "tether.cli.chat",
    "tether.cli.chatloop",
    "tether.cli.demo",
    "tether.cli.doctor",
    "tether.cli.liveness",
    "tether.cli.serve",
    "tether.lifecycle.handle",
    "tether.liveness.reaper",
    "secrets",
    "hmac",
    "platformdirs",
    "rich",
    "websockets",
    "tether.gateway",
]


def test_tether_help_loads_no_store_no_chat_engine_and_no_logging() -> None:
    out, loaded = _modules_after("--help")
    assert "tether ls" in out and "Exit codes" in out
    assert "tether.cli.chat" in loaded  # the commands' modules: their help is listed
    not_for_help = ["tether.store", "tether.cli.chatloop", "tether.lifecycle", "logging"]
    heavy = [m for m in NOT_FOR_LS if not m.startswith("tether.cli.")] + not_for_help
    assert [m for m in heavy if m in loaded] == []


def test_tether_ls_loads_only_what_listing_needs(tmp_path: Path) -> None:
    db = str(tmp_path / "few.db")
    store = tether.open_store(db, load_plugins=False)
    with store.session(source="cli", title="only one") as s:
        s.append("user", "hello")
    store.close()
    out, loaded = _modules_after("ls", "--db", db)
    assert "only one" in out
    assert "tether.store" in loaded  # it did list, from the store
    assert [m for m in NOT_FOR_LS if m in loaded] == []
    out, loaded = _modules_after("--db", db, "ls", "--limit", "1")  # root --db too
    assert "only one" in out
    assert [m for m in NOT_FOR_LS if m in loaded] == []


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["ls"], "ls"),
        (["ls", "--help"], "ls"),
        (["--db", "show", "end", "01M7"], "end"),  # a database named like a command
        (["--db=x.db", "doctor"], "doctor"),
        (["--help"], None),
        (["-h", "ls"], None),  # the root's help: every command is listed
        (["--version"], None),
        (["lss"], None),  # unknown: the whole app says so
        ([], None),
    ],
)
def test_main_builds_only_the_command_on_the_line(argv: list[str], command: str | None) -> None:
    from tether.cli.app import command_named

    assert command_named(argv) == command


def test_control_characters_in_data_never_reach_the_terminal(tmp_path: Path) -> None:
    db = str(tmp_path / "esc.db")
    s = tether.open_store(db, load_plugins=False)
    with s.session(source="cli", model="m\x1b[2J", title="\x1b]0;pwned\x07title") as h:
        h.append("user", "line one\nline two \x1b[31mred\x1b[0m\r")
    s.close()
    for args in (["ls", "--db", db], ["show", h.id, "--db", db]):
        proc = run_cli(*args, env=WIDE)
        assert proc.returncode == 0, proc.stderr
        assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout and "\r" not in proc.stdout
    assert "line one\nline two \ufffd[31mred" in proc.stdout  # newlines kept, ESC shown
