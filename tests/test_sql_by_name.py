"""SQL by name: ``:name`` parameters on both backends beside ``?`` ones, column
lists from one source, and no statement of the store outside its SQL modules."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import tether
from tether.compose import Store
from tether.model import SESSION_COLUMNS, Session
from tether.store import sql
from tether.store.postgres.backend import to_pg

STORE = Path(tether.__file__).parent / "store"


def test_named_and_positional_placeholders_translate_for_psycopg() -> None:
    assert to_pg("SELECT a FROM t WHERE id = ? AND b LIKE '5%'") == (
        "SELECT a FROM t WHERE id = %s AND b LIKE '5%%'"
    )
    assert to_pg("UPDATE t SET a = :a_1, b = :b WHERE id = :id") == (
        "UPDATE t SET a = %(a_1)s, b = %(b)s WHERE id = %(id)s"
    )
    # A cast is no parameter, whatever follows it.
    assert to_pg("SELECT :at::float8, x::text FROM t") == "SELECT %(at)s::float8, x::text FROM t"


def test_a_named_insert_writes_every_field_and_refuses_unknown_ones(store: Store) -> None:
    params = sql.new_session_params(
        id="S1",
        source="named",
        root_id="S1",
        created_at=1.0,
        last_active_at=2.0,
        chain_tip_id="S1",
        chain_last_active_at=2.0,
    )
    store.backend.write(lambda c: c.execute(sql.INSERT_SESSION, params))
    s = store.get_session("S1")
    assert (s.source, s.created_at, s.last_active_at, s.epoch, s.message_count) == (
        "named",
        1.0,
        2.0,
        0,
        0,
    )
    assert s.owner_id is None and s.model is None
    with pytest.raises(KeyError, match="not a field of this statement: sourse"):
        sql.new_session_params(id="S2", sourse="typo")


def test_named_rows_go_through_executemany_on_both_backends(store: Store) -> None:
    rows = [
        sql.new_session_params(
            id=f"M{k}",
            source="many",
            root_id=f"M{k}",
            created_at=float(k),
            last_active_at=float(k),
            chain_tip_id=f"M{k}",
            chain_last_active_at=float(k),
        )
        for k in range(3)
    ]
    store.backend.write(lambda c: c.executemany(sql.INSERT_SESSION.split("ON CONFLICT")[0], rows))
    got = store.backend.read(
        lambda c: c.execute(
            "SELECT id, created_at FROM sessions WHERE source = ? ORDER BY id", ("many",)
        ).fetchall()
    )
    assert [tuple(r) for r in got] == [("M0", 0.0), ("M1", 1.0), ("M2", 2.0)]


def test_the_session_columns_come_from_the_dataclass() -> None:
    fields = [f.name for f in dataclasses.fields(Session)]
    assert [c.strip() for c in SESSION_COLUMNS.split(",")] == fields
    assert set(sql.NEW_SESSION_FIELDS) <= set(fields) | {"chain_tip_id", "chain_last_active_at"}


def test_every_statement_of_the_store_lives_in_its_sql_modules() -> None:
    """Code modules name statements from sql.py (or sql_<topic>.py); they write none."""
    statement = re.compile(r"""["'](SELECT|INSERT|UPDATE|DELETE)\s""")
    offenders = []
    for path in sorted(STORE.glob("*.py")):
        if path.name == "sql.py" or path.name.startswith("sql_") or path.name == "listing.py":
            continue  # listing.py is the listing's query builder (one SQL module)
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if statement.search(line):
                offenders.append(f"{path.name}:{n}: {line.strip()}")
    assert offenders == []
