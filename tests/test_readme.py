"""The README, followed top to bottom: its snippets run and its commands print what it shows.

After sqlite-utils' ``tests/test_docs.py``: every command and option of
``tether`` is documented, and what the README shows is executed here.
Where a snippet needs a value only a real run has (a session id, a free port,
the test PostgreSQL server), the test substitutes that one value and says so.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from typer.main import get_command

from tether.cli.app import app

from .conftest import PG_URL, child_env, run_cli
from .gateway.conftest import TOKEN, serve

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
ID = re.compile(r"\b01[0-9A-HJKMNP-TV-Z]{24}\b")


def blocks(lang: str) -> list[str]:
    """The README's fenced blocks of one language, in order, dedented."""
    found = re.findall(rf"^( *)```{lang}\n(.*?)^\1```", README, flags=re.M | re.S)
    return [textwrap.dedent(body) for _, body in found]


def section(title: str) -> str:
    start = README.index(f"\n## {title}")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def run_python(code: str, cwd: Path, timeout: float = 120, **env: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(**env),
    )
    assert proc.returncode == 0, f"{code}\n---\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def console_steps(block: str) -> list[tuple[str, list[str]]]:
    """``$ command`` lines and the output lines shown under each."""
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps:
            steps[-1][1].append(line)
    return steps


def pattern(line: str) -> re.Pattern[str]:
    """An expected output line, with times and ages left free and spaces flexible."""
    out = []
    for token in line.split():
        if re.fullmatch(r"\d{4}-\d\d-\d\d", token):
            out.append(r"\d{4}-\d\d-\d\d")
        elif re.fullmatch(r"\d\d:\d\d:\d\d", token):
            out.append(r"\d\d:\d\d:\d\d")
        elif re.fullmatch(r"\d+[smhd]", token):
            out.append(r"\d+[smhd]")
        else:
            out.append(re.escape(token))
    return re.compile(r"\s+".join(out))


def shows(expected: list[str], actual: str) -> None:
    """Every non-blank expected line appears in ``actual``, in order."""
    lines = [line.strip() for line in actual.splitlines() if line.strip()]
    at = 0
    for want in (line for line in expected if line.strip()):
        rx = pattern(want)
        while at < len(lines) and not rx.fullmatch(lines[at]):
            at += 1
        assert at < len(lines), f"README shows {want!r}; the command printed:\n{actual}"
        at += 1


# --- everything is documented -----------------------------------------------------------


def test_every_command_and_option_is_in_the_readme() -> None:
    group = get_command(app)
    for opt in ("--db", "--version", "-h", "--help"):
        assert f"`{opt}" in README or f" {opt}" in README, opt
    commands = dict(group.commands)  # type: ignore[attr-defined]
    for name, command in list(
        commands.items()
    ):  # a group's subcommands too (`tether hermes census`)
        for sub, subcommand in getattr(command, "commands", {}).items():
            commands[f"{name} {sub}"] = subcommand
    for name, command in commands.items():
        assert f"tether {name}" in README, f"command {name} is not in the README"
        for param in command.params:
            if param.param_type_name != "option":
                continue
            for opt in param.opts:
                if opt in ("--help", "-h"):
                    continue
                assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", README), (
                    f"tether {name} {opt} is not in the README"
                )


# --- the quickstart ---------------------------------------------------------------------


def test_quickstart_make_targets_exist_and_say_how_to_get_tether_on_path() -> None:
    quick = blocks("sh")
    assert "make run" in quick[0] and "make test" in quick[0]
    dry = subprocess.run(
        ["make", "-n", "run", "test"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert dry.returncode == 0, dry.stderr
    assert "tether serve" in dry.stdout and "pytest" in dry.stdout
    assert ". .venv/bin/activate" in quick[1]
    assert "activate" in dry.stdout  # `make run` repeats how to get it on PATH


# --- the Python snippets ----------------------------------------------------------------


def test_python_usage_hooks_and_the_tether_command_as_shown(tmp_path: Path) -> None:
    python = blocks("python")
    usage, hooks = python[0], python[1]
    assert 'tether.open_store("sessions.db")' in usage
    # The hooks snippet continues the first one (it uses its `store`).
    printed = run_python(usage + "\n" + hooks + "\nstore.close()\n", tmp_path)
    assert printed == ""  # the plugin is registered after the session ended

    steps = console_steps(blocks("console")[-1])  # "The `tether` command"
    assert [c.split()[1] for c, _ in steps] == ["ls", "show", "end", "show"]
    [real] = ID.findall(run_cli("ls", "--db", str(tmp_path / "sessions.db")).stdout)
    shown_ids = set(ID.findall(blocks("console")[-1]))
    assert len(shown_ids) == 1
    for command, expected in steps:
        command = command.replace(shown_ids.pop() if shown_ids else real, real)
        for shown in ID.findall(command):
            command = command.replace(shown, real)
        proc = subprocess.run(
            command,
            shell=True,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            env=child_env(PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin", COLUMNS="100"),
        )
        expected = [ID.sub(real, line) for line in expected]
        shows(expected, proc.stdout + proc.stderr)
        if expected and expected[0].startswith("error:"):
            assert proc.returncode == 1
        else:
            assert proc.returncode == 0, proc.stderr


def test_liveness_snippet(tmp_path: Path) -> None:
    [snippet] = [b for b in blocks("python") if "ReaperLoop" in b]
    opening, *alternatives = [line for line in snippet.splitlines() if line.strip()]
    assert "open_store" in opening
    # Its lines are alternatives (a loop, one sweep, a takeover): each runs on its own,
    # with `session_id` a session whose owner died (a process that exited without
    # ending it, as after kill -9).
    child = (
        "import os, tether\n"
        "s = tether.open_store('sessions.db', load_plugins=False)\n"
        "h = s.session(source='cli'); h.append('user', 'hi'); print(h.id, flush=True)\n"
        "os._exit(0)\n"
    )
    for line in alternatives:
        session_id = run_python(child, tmp_path).strip()
        after = "loop.stop()\n" if line.startswith("loop =") else ""
        code = f"import tether\nsession_id = {session_id!r}\n{opening}\n{line}\n{after}"
        run_python(code + "store.close()\n", tmp_path)


@pytest.mark.postgres
def test_postgresql_snippets(tmp_path: Path) -> None:
    pg = section("PostgreSQL")
    [open_snippet] = [b for b in blocks("python") if "postgresql://" in b]
    shown = re.search(r'"(postgresql://[^"]+)"', open_snippet)
    assert shown is not None
    # The one substitution: the test server instead of db.internal, in a fresh schema.
    url = f"{PG_URL}?schema=readme_{uuid.uuid4().hex[:8]}"
    [listen] = [textwrap.dedent(b) for b in blocks("python") if "store.listen()" in b]
    listen = listen.replace("timeout=60", "timeout=0.5")  # no event comes: do not wait a minute
    code = (
        "import tether\n"
        + open_snippet.replace(shown.group(1), url)
        + "\n"
        + listen
        + "\nstore.close()\n"
    )
    run_python(code, tmp_path)
    [command] = [c for c, _ in console_steps(pg) if c.startswith("TETHER_DB=")]
    assert command.startswith("TETHER_DB='postgresql://")  # quoted: zsh globs an unquoted '?'
    command = re.sub(r"'postgresql://[^']+'", f"'{url}'", command)
    proc = subprocess.run(
        ["zsh" if Path("/bin/zsh").exists() else "bash", "-c", command],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin"),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "no sessions"


# --- the gateway ------------------------------------------------------------------------


def test_gateway_exchange_and_client_snippet(tmp_path: Path) -> None:
    gateway = section("The gateway")
    shown = [b for b in blocks("console") if "tether serve" in b or "tether chat" in b]
    serve_block, chat_block = shown[:2]
    [(serve_cmd, serve_out)] = console_steps(serve_block)
    assert serve_cmd == "tether serve --db sessions.db --agent-option delay=0.1"
    args = serve_cmd.split()[2:]
    # The substitution: a free port instead of 8765 (the tests run side by side).
    with serve(tmp_path, *args[2:], db=str(tmp_path / "sessions.db")) as served:
        assert "tether gateway on ws://" in serve_out[0]
        env = child_env(TETHER_TOKEN=TOKEN, TETHER_URL=served.url)
        steps = console_steps(chat_block)
        first_chat, expected = steps[0]
        assert first_chat == "tether chat"
        typed = [line.split("you> ", 1)[1] for line in expected if line.startswith("you> ")]
        typed = [t for t in typed if t and "^C" not in t]
        proc = subprocess.run(
            [sys.executable, "-m", "tether", "chat"],
            input="".join(t + "\n" for t in typed if not t.startswith("tell me everything")),
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
        for line in expected:
            if line.startswith(("echo: Why", "[word_count", "echo: /tool")):
                assert line in proc.stdout, (line, proc.stdout)
        assert re.search(r"left; continue with: tether chat --resume 01\w{24}", proc.stdout)
        [(ls_cmd, ls_out)] = [(c, o) for c, o in steps if c.startswith("tether ls")]
        listing = run_cli(*ls_cmd.split()[1:], "--db", served.db, env={"COLUMNS": "100"})
        assert listing.returncode == 0 and listing.stdout.split()[:7] == ls_out[0].split()

        [client] = [b for b in blocks("python") if "Client.connect" in b]
        assert "asyncio.run(main())" in client
        printed = run_python(
            client.replace("ws://127.0.0.1:8765/rpc", served.url),
            tmp_path,
            TETHER_TOKEN=TOKEN,
        )
        assert "('turn.start'," in printed and "'text': 'echo:'" in printed.replace('"', "'")
    assert "tether chat" in gateway
