"""``tether web`` as a user runs it: the login URL, the banner, a real request, clear errors."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
from pathlib import Path

from ..conftest import child_env, run_cli
from .conftest import make_session

TOKEN = "cli-web-token-abcdef0123"


def test_print_url_logs_in_with_the_token() -> None:
    r = run_cli("web", "--print-url", "--port", "9123", env={"TETHER_TOKEN": TOKEN})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"http://127.0.0.1:9123/login?token={TOKEN}"


def test_serves_the_store_and_stops_on_sigterm(tmp_path: Path) -> None:
    import tether

    db = str(tmp_path / "t.db")
    store = tether.open_store(db, load_plugins=False)
    sid = make_session(store)
    env = child_env(TETHER_TOKEN=TOKEN)
    env.pop("TETHER_DB", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tether", "web", "--db", db, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert banner.startswith("tether web on http://127.0.0.1:"), banner
        port = int(banner.split("http://127.0.0.1:", 1)[1].split("/", 1)[0])
        login = proc.stdout.readline().strip()
        assert login == f"log in: http://127.0.0.1:{port}/login?token={TOKEN}"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request(
            "GET",
            "/api/v1/live",
            headers={"Authorization": f"Bearer {TOKEN}", "Host": f"127.0.0.1:{port}"},
        )
        live = json.loads(conn.getresponse().read())
        # The server froze what start-up built (tether.gcpolicy, tests/test_gcpolicy.py).
        conn.request(
            "GET",
            "/metrics",
            headers={"Authorization": f"Bearer {TOKEN}", "Host": f"127.0.0.1:{port}"},
        )
        metrics = conn.getresponse().read().decode()
        conn.close()
        frozen = [x for x in metrics.splitlines() if x.startswith("tether_gc_frozen_objects ")]
        assert frozen and float(frozen[0].split()[1]) > 1000, metrics
        assert [r["id"] for r in live["sessions"]] == [sid]
        assert live["sessions"][0]["state"] == "idle"  # this test process owns it
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        store.close()
    assert "Traceback" not in err


def test_foreseeable_problems_are_one_line(tmp_path: Path) -> None:
    bad = run_cli("web", "--port", "99999")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        r = run_cli(
            "web", "--db", str(tmp_path / "t.db"), "--port", str(port), env={"TETHER_TOKEN": TOKEN}
        )
    finally:
        busy.close()
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr
