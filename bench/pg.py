"""PostgreSQL helpers for the benchmarks: a throw-away schema, bulk loads with COPY."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def with_schema(url: str, schema: str) -> str:
    return url + ("&" if "?" in url else "?") + f"schema={schema}"


def connect(url: str) -> Any:
    """A direct autocommit connection to ``url`` (its ``?schema=`` honoured)."""
    import psycopg

    from tether.store.postgres.url import parse

    target = parse(url)
    return psycopg.connect(target.conninfo, **target.kwargs)


@contextlib.contextmanager
def scratch_schema(base: str, tag: str) -> Iterator[str]:
    """A URL on a fresh schema of ``base``, dropped afterwards."""
    schema = f"tether_bench_{tag}_{uuid.uuid4().hex[:8]}"
    url = with_schema(base, schema)
    try:
        yield url
    finally:
        with connect(base) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def copy_rows(url: str, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Load ``rows`` with COPY (one transaction), then ANALYZE the table."""
    with connect(url) as conn:
        copy = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
        with conn.transaction(), conn.cursor() as cur, cur.copy(copy) as cp:
            for row in rows:
                cp.write_row(row)
        conn.execute(f"VACUUM ANALYZE {table}")


def server_version(url: str) -> str:
    with connect(url) as conn:
        return str(conn.execute("SHOW server_version").fetchone()[0])
