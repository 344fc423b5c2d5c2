"""The dashboard in a real browser: Debian's chromium driven by Playwright (no browser download).

One page follows a store that several processes share: a CLI agent's session,
a gateway session driven by a scripted client (working → idle → detached →
ended), a SIGKILLed owner's session (orphaned, then reaped once the reaper
runs), a transcript. Screenshots of each view go to tmp/artifacts/.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tether

from ..conftest import run_cli, spawn
from ..gateway.conftest import TOKEN, next_event, serve
from .conftest import run_web

CHROMIUM = "/usr/bin/chromium"
UPDATE_WITHIN = 2.0  # seconds: the bound for the page to follow an event


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian chromium (`make test` installs it; missing, the test fails, never skips)."""
    from playwright.sync_api import sync_playwright

    path = os.environ.get("TETHER_CHROMIUM", CHROMIUM)
    assert shutil.which(path), f"{path} is missing: `make test` installs Debian's chromium"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox"], headless=True)
        try:
            yield b
        finally:
            b.close()


class Page:
    """A logged-in dashboard page that records console errors."""

    def __init__(self, browser: Any, base: str, token: str, artifacts: Path, name: str) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 900})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.artifacts = artifacts
        self.name = name
        self.page.goto(f"{base}/login?token={token}")
        assert self.page.url == f"{base}/"
        self.page.wait_for_selector("#footer-count:has-text('open')", timeout=5000)

    def row(self, sid: str) -> Any:
        return self.page.locator(f"tr[data-session='{sid}']")

    def wait_state(self, sid: str, state: str, within: float = UPDATE_WITHIN) -> float:
        """Seconds until the session's row shows ``state`` (fails past ``within``)."""
        t0 = time.monotonic()
        self.page.wait_for_selector(
            f"tr[data-session='{sid}'][data-state='{state}']", timeout=within * 1000
        )
        return time.monotonic() - t0

    def wait_gone(self, sid: str, within: float = UPDATE_WITHIN) -> None:
        self.page.wait_for_selector(
            f"tr[data-session='{sid}']", state="detached", timeout=within * 1000
        )

    def shot(self, what: str) -> Path:
        path = self.artifacts / f"{self.name}-{what}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        self.context.close()


def test_dashboard_follows_every_process_of_the_store(
    browser: Any, tmp_path: Path, artifacts: Path
) -> None:
    db = str(tmp_path / "tether.db")
    store = tether.open_store(db, load_plugins=False)
    with (
        serve(tmp_path, "--detach-grace", "3", "-o", "delay=0.3", db=db) as gw,
        run_web(store, token=TOKEN) as web,
    ):
        page = Page(browser, web.base, TOKEN, artifacts, "dashboard")
        page.shot("empty")
        # A CLI agent in another process: its session shows up within 2 s.
        agent = spawn(
            """
            import sys, time, tether
            store = tether.open_store(sys.argv[1])
            h = store.session(source="cli", title="an agent in another process")
            h.append("user", "what is the weather?")
            h.append("assistant", None, tool_calls=[{"id": "c1", "type": "function",
                "function": {"name": "weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}}])
            h.append("tool", "4 degrees, rain", tool_call_id="c1", tool_name="weather")
            h.append("assistant", "It rains in Oslo.")
            print(h.id, flush=True)
            time.sleep(120)
            """,
            db,
        )
        try:
            assert agent.stdout is not None
            agent_sid = agent.stdout.readline().strip()
            assert agent_sid, agent.stderr.read() if agent.stderr else ""
            assert page.wait_state(agent_sid, "idle") < UPDATE_WITHIN
            assert "cli" in page.row(agent_sid).inner_text()

            # A gateway session driven by a scripted client, on a thread of its own
            # (Playwright's sync API owns this thread's event loop).
            steps: queue.Queue[str] = queue.Queue()
            go_abort = threading.Event()

            async def drive() -> None:
                client = await gw.client()
                s = await client.call("session.create", source="gateway", title="scripted")
                sid = str(s["session_id"])
                await client.call("prompt.submit", session_id=sid, text="a b c d e f g h")
                await next_event(client, "turn.start", sid)
                steps.put(sid)
                await next_event(client, "turn.end", sid, timeout=20)
                steps.put("turn ended")
                await asyncio.to_thread(go_abort.wait, 30)
                await client.abort()  # the tab died: no goodbye
                steps.put("aborted")

            driver = threading.Thread(target=lambda: asyncio.run(asyncio.wait_for(drive(), 60)))
            driver.start()
            gw_sid = steps.get(timeout=30)
            page.wait_state(gw_sid, "working")
            page.shot("working")
            assert steps.get(timeout=30) == "turn ended"
            page.wait_state(gw_sid, "idle")
            go_abort.set()
            assert steps.get(timeout=30) == "aborted"
            driver.join(30)
            page.wait_state(gw_sid, "detached")
            assert "no client attached" in page.row(gw_sid).inner_text()
            page.shot("detached")
            page.wait_gone(gw_sid, within=3 + UPDATE_WITHIN)  # the grace, then the end
            page.page.wait_for_selector("#feed li[data-kind='ended']", timeout=2000)

            # The gateway stops (its reaper would end the next session at once); the
            # page stays up, on `tether web`. SIGKILL the agent: orphaned (no event
            # says so: the page's refresh shows it), then reaped once a reaper runs.
            assert gw.stop() == 0
            agent.send_signal(signal.SIGKILL)
            agent.wait(10)
            page.wait_state(agent_sid, "orphaned", within=UPDATE_WITHIN + 1.5)
            assert "awaiting the reaper" in page.row(agent_sid).inner_text()
            page.shot("orphaned")
        finally:
            if agent.poll() is None:
                agent.kill()
            agent.wait(10)
        reaped = run_cli("reap", "--db", db)
        assert reaped.returncode == 0, reaped.stderr
        page.wait_gone(agent_sid)
        page.page.wait_for_selector("#feed li[data-kind='reaped']", timeout=2000)
        page.page.wait_for_selector("#reasons-chart .seg[data-reason='reaped']", timeout=2000)
        page.page.wait_for_selector(
            "#reasons-chart .seg[data-reason='ws_disconnect']", timeout=2000
        )
        page.shot("census")

        # The transcript: chain and tool calls.
        page.page.locator("#feed li[data-kind='reaped'] a.sid").first.click()
        page.page.wait_for_selector("#t-messages li[data-role='tool']", timeout=2000)
        text = page.page.inner_text("#transcript")
        assert "weather" in text and "It rains in Oslo." in text and "reaped" in text
        assert re.search(r"→ weather\(", text)
        page.shot("transcript")
        assert page.errors == []
        page.close()
    store.close()


def test_without_login_the_page_says_how_and_shows_nothing(
    browser: Any, tmp_path: Path, artifacts: Path
) -> None:
    store = tether.open_store(str(tmp_path / "t.db"), load_plugins=False)
    h = store.session(source="cli", title="secret title")
    h.append("user", "secret")
    with run_web(store) as web:
        context = browser.new_context()
        page = context.new_page()
        page.goto(web.base + "/")
        page.wait_for_selector("#login:not([hidden])", timeout=5000)
        assert "secret" not in page.content()
        page.screenshot(path=str(artifacts / "login-required.png"))
        context.close()
    store.close()
