"""Who may talk to the gateway: the install token, the Host allowlist, the Origin check.

* **Token.** Generated at first start (256 bits), kept in the data directory
  in a file of mode 0600, or given by ``$TETHER_TOKEN`` / ``--token-file``.
  Clients send it as ``Authorization: Bearer <token>`` or ``?token=<token>``;
  it is compared in constant time.
* **Host allowlist** (DNS rebinding): a page on ``evil.example`` that points
  its name at 127.0.0.1 still sends ``Host: evil.example``; only localhost
  names, loopback addresses, the bound address and configured names pass.
* **Origin** (cross-site WebSocket hijacking): browsers let any page open a
  WebSocket to 127.0.0.1 and say where it came from in ``Origin``. A request
  without Origin is not from a browser page (the token still applies); one
  with an Origin passes only if it is the gateway's own origin or configured.

The checks are pure functions of the handshake, tested without sockets.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
import secrets
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TetherError
from ..paths import data_dir

ENV_TOKEN = "TETHER_TOKEN"
TOKEN_FILE_NAME = "gateway.token"
LOCAL_NAMES = frozenset({"localhost"})


class TokenError(TetherError):
    """The token file cannot be created or is not safe to use."""


def default_token_file() -> Path:
    return data_dir() / TOKEN_FILE_NAME


def load_token(path: str | os.PathLike[str] | None = None, *, create: bool = True) -> str:
    """The gateway token: ``$TETHER_TOKEN``, else the token file (made on first use).

    A token file readable by other users is refused rather than trusted.
    """
    env = os.environ.get(ENV_TOKEN)
    if env:
        return env.strip()
    file = Path(path) if path is not None else default_token_file()
    try:
        return _read_token_file(file)
    except FileNotFoundError:
        if not create:
            raise TokenError(
                f"no gateway token at {file}: start `tether serve` first, or set ${ENV_TOKEN}"
            ) from None
    file.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return _read_token_file(file)
    except OSError as exc:
        raise TokenError(f"cannot create the token file {file}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def _read_token_file(file: Path) -> str:
    try:
        st = file.stat()
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise TokenError(
                f"the token file {file} is readable by other users "
                f"(mode {stat.S_IMODE(st.st_mode):o}); run `chmod 600 {file}`"
            )
        token = file.read_text().strip()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise TokenError(f"cannot read the token file {file}: {exc.strerror}") from None
    if not token:
        raise TokenError(f"the token file {file} is empty")
    return token


# --- the handshake --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Policy:
    """What a handshake must show to be let in."""

    token: str
    port: int
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)  # extra names / addresses
    allowed_origins: frozenset[str] = field(default_factory=frozenset)  # exact origins


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int  # HTTP status of the refused handshake
    reason: str


# A Host header is a host and an optional port, nothing else: no userinfo
# ("evil.com@localhost"), no path, query or fragment ("localhost:P/evil").
_HOST_RE = re.compile(
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?))"
    r"(?::(?P<port>[0-9]{1,5}))?"
)


def split_host(value: str) -> str | None:
    """The host name of a ``Host`` header (``name``, ``name:port``, ``[v6]:port``), or None.

    Anything but a host and an optional port is refused, so that what is
    checked is exactly what a browser resolved.
    """
    m = _HOST_RE.fullmatch(value.strip())
    if m is None:
        return None
    if m.group("port") is not None and int(m.group("port")) > 65535:
        return None
    if m.group("v6") is not None:
        try:
            return str(ipaddress.IPv6Address(m.group("v6")))
        except ValueError:
            return None
    return m.group("name").lower()


def host_allowed(host: str | None, policy: Policy) -> bool:
    if host is None:
        return False
    if host in LOCAL_NAMES or host.endswith(".localhost") or host in policy.allowed_hosts:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def origin_allowed(origin: str, host_header: str, policy: Policy) -> bool:
    origin = origin.strip()
    if origin in policy.allowed_origins:
        return True
    # Our own origin only: the gateway serves no pages, so in practice only a
    # configured origin (a dashboard) passes. Never a bare IP or a wildcard.
    return origin.lower() in (f"http://{host_header.lower()}", f"https://{host_header.lower()}")


def bearer(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return query.get("token") or None


def check_origin(headers: Mapping[str, str], policy: Policy) -> Refusal | None:
    """None if the Host header is allowed and the Origin (if any) matches it, else why not.

    The first check of every request, WebSocket or HTTP (the live view's too).
    """
    host_header = headers.get("host", "")
    if not host_allowed(split_host(host_header), policy):
        return Refusal(403, "host not allowed")
    origin = headers.get("origin")
    if origin is not None and not origin_allowed(origin, host_header, policy):
        return Refusal(403, "origin not allowed")
    return None


def token_ok(token: str, policy: Policy) -> bool:
    """The token matches, compared in constant time."""
    return hmac.compare_digest(token.encode(errors="replace"), policy.token.encode())


def check_handshake(
    headers: Mapping[str, str], query: Mapping[str, str], policy: Policy
) -> Refusal | None:
    """None if the WebSocket handshake may proceed, else why not (checked before any method)."""
    refused = check_origin(headers, policy)
    if refused is not None:
        return refused
    token = bearer(headers, query)
    if token is None:
        return Refusal(401, "token required")
    if not token_ok(token, policy):
        return Refusal(401, "wrong token")
    return None


def bind_hosts(host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """Names a Host header may carry besides localhost: the bound address and ``extra``."""
    names = {h.lower().strip("[]") for h in extra if h}
    if host not in ("0.0.0.0", "::", ""):
        names.add(host.lower().strip("[]"))
    return frozenset(names)
