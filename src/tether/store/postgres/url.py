"""Reading a ``postgresql://`` URL: tether's own options, libpq's, and a safe display form.

tether's options are stripped before the rest goes to libpq, which rejects
parameters it does not know:

* ``schema=NAME``: keep tether's tables in schema NAME (created if missing and
  permitted), through the connection's ``search_path``;
* ``prepare_threshold=none|N``: ``none`` turns off server-side prepared
  statements, as a transaction-mode pooler (PgBouncer before 1.21) requires;
  otherwise psycopg prepares a statement after N executions (default 5);
* ``pool_size=N``: the most connections this process keeps (default 4).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from ...errors import StoreOpenError

SCHEMES = ("postgresql://", "postgres://")
DEFAULT_PREPARE_THRESHOLD = 5
DEFAULT_POOL_SIZE = 4
DEFAULT_CONNECT_TIMEOUT = 10  # seconds, unless the URL says otherwise
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_SECRET_PARAMS = {"password", "sslpassword"}


@dataclass(frozen=True)
class Target:
    """Where to connect, and how."""

    conninfo: str  # for libpq, without tether's options
    display: str  # the URL without any password, for messages
    schema: str | None
    kwargs: dict[str, Any] = field(default_factory=dict)  # psycopg.connect() keywords
    pool_size: int = DEFAULT_POOL_SIZE

    @property
    def dbname(self) -> str:
        return str(conninfo_to_dict(self.conninfo).get("dbname") or "")


def _display(url: str, params: list[tuple[str, str]]) -> str:
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    netloc = f"{user}@{hostport}" if at else hostport
    shown = [(k, v) for k, v in params if k not in _SECRET_PARAMS]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(shown, safe="/,:"), ""))


def parse(url: str) -> Target:
    """Split ``url`` into libpq's conninfo and tether's options; raise one clear line."""
    if not url.startswith(SCHEMES):
        raise StoreOpenError(f"not a PostgreSQL URL: {url.split('@')[-1]!r}")
    try:
        parts = urlsplit(url)
        params = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError as exc:
        raise StoreOpenError(f"invalid PostgreSQL URL: {exc}") from None
    display = _display(url, params)
    options: dict[str, str | None] = {"schema": None, "prepare_threshold": None, "pool_size": None}
    rest = []
    for key, value in params:
        if key in options:
            options[key] = value
        else:
            rest.append((key, value))
    conninfo = urlunsplit(parts._replace(query=urlencode(rest, quote_via=quote)))
    try:
        info = conninfo_to_dict(conninfo)
    except psycopg.Error as exc:
        raise StoreOpenError(f"invalid PostgreSQL URL {display}: {exc}") from None

    kwargs: dict[str, Any] = {"autocommit": True}
    if "connect_timeout" not in info:
        kwargs["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT
    if "application_name" not in info:
        kwargs["application_name"] = "tether"

    schema = options["schema"]
    if schema is not None:
        schema = unquote(schema)
        if not _SCHEMA_NAME.fullmatch(schema):
            raise StoreOpenError(
                f"invalid schema name {schema!r} in {display}: "
                "use lowercase letters, digits and _ (at most 63), not starting with a digit"
            )
        kwargs["options"] = f"{info.get('options', '')} -c search_path={schema}".strip()

    threshold = options["prepare_threshold"]
    if threshold is None:
        kwargs["prepare_threshold"] = DEFAULT_PREPARE_THRESHOLD
    elif threshold.lower() in ("none", "off", "false", ""):
        kwargs["prepare_threshold"] = None
    elif threshold.isdigit():
        kwargs["prepare_threshold"] = int(threshold)
    else:
        raise StoreOpenError(
            f"invalid prepare_threshold {threshold!r} in {display}: expected none or a number"
        )

    size = options["pool_size"]
    if size is not None and not (size.isdigit() and 1 <= int(size) <= 100):
        raise StoreOpenError(f"invalid pool_size {size!r} in {display}: expected 1 to 100")
    return Target(
        conninfo,
        display,
        schema,
        kwargs,
        int(size) if size is not None else DEFAULT_POOL_SIZE,
    )
