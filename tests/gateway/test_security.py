"""Token file, Host allowlist and Origin check, as pure functions of the handshake."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tether.gateway import security
from tether.gateway.security import Policy, TokenError, check_handshake

POLICY = Policy(
    token="s3cret",
    port=8765,
    allowed_hosts=frozenset({"box.lan"}),
    allowed_origins=frozenset({"http://localhost:3000"}),
)
OK = {"host": "127.0.0.1:8765", "authorization": "Bearer s3cret"}


def refused(headers: dict[str, str], query: dict[str, str] | None = None) -> int | None:
    r = check_handshake(headers, query or {}, POLICY)
    return None if r is None else r.status


def test_token_file_is_created_once_with_mode_0600(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(security.ENV_TOKEN, raising=False)
    path = tmp_path / "sub" / "gateway.token"
    token = security.load_token(path)
    assert len(token) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert security.load_token(path) == token


def test_token_env_wins_and_unsafe_or_missing_files_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(security.ENV_TOKEN, raising=False)
    path = tmp_path / "t"
    with pytest.raises(TokenError, match="start `tether serve` first"):
        security.load_token(path, create=False)
    path.write_text("abc\n")
    os.chmod(path, 0o644)
    with pytest.raises(TokenError, match="chmod 600"):
        security.load_token(path)
    os.chmod(path, 0o600)
    assert security.load_token(path) == "abc"
    path.write_text("")
    with pytest.raises(TokenError, match="empty"):
        security.load_token(path)
    monkeypatch.setenv(security.ENV_TOKEN, "from-env")
    assert security.load_token(path) == "from-env"


def test_good_handshakes() -> None:
    assert refused(OK) is None
    assert refused({"host": "localhost:8765"}, {"token": "s3cret"}) is None
    assert refused({**OK, "host": "[::1]:8765"}) is None
    assert refused({**OK, "host": "box.lan"}) is None
    assert refused({**OK, "host": "app.localhost:8765"}) is None
    assert refused({**OK, "origin": "http://localhost:3000"}) is None
    assert refused({**OK, "origin": "http://127.0.0.1:8765"}) is None  # our own origin


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"host": "127.0.0.1:8765"}, 401),
        ({**OK, "authorization": "Bearer nope"}, 401),
        ({**OK, "authorization": "Basic czNjcmV0"}, 401),
        ({**OK, "host": "evil.example:8765"}, 403),  # DNS rebinding
        ({**OK, "host": "127.0.0.1.evil.example"}, 403),
        ({**OK, "host": ""}, 403),
        ({**OK, "host": "127.0.0.1:notaport"}, 403),
        ({**OK, "host": "evil.com@localhost:8765"}, 403),  # userinfo is not part of a Host
        ({**OK, "host": "localhost:8765/evil"}, 403),  # nor is a path
        ({**OK, "host": "localhost:8765?x"}, 403),
        ({**OK, "host": "localhost:8765#x"}, 403),
        ({**OK, "host": "localhost:99999"}, 403),
        ({**OK, "host": "localhost:"}, 403),
        ({**OK, "host": "local host"}, 403),
        ({**OK, "host": "[::1"}, 403),
        ({**OK, "host": "[evil.com]:8765"}, 403),
        ({**OK, "host": "::1"}, 403),  # an IPv6 address needs its brackets
        ({**OK, "origin": "http://evil.example"}, 403),  # cross-site WebSocket hijacking
        ({**OK, "origin": "http://127.0.0.1:3000"}, 403),  # another local app
        ({**OK, "origin": "null"}, 403),
    ],
)
def test_refused_handshakes(headers: dict[str, str], status: int) -> None:
    assert refused(headers) == status


def test_bind_hosts() -> None:
    assert security.bind_hosts("127.0.0.1") == {"127.0.0.1"}
    assert security.bind_hosts("0.0.0.0", ["Box.LAN"]) == {"box.lan"}
