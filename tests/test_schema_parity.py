"""The SQLite and PostgreSQL schemas cannot drift apart.

A fresh store is opened on each backend and its catalog read back: tables,
columns (name, nullability, a type family, default), primary keys and indexes
(name, uniqueness, columns, partial predicate) must be the same on both, after
the normalizations below, each of which names a difference made on purpose
(the module docstring of tether.store.postgres.schema says why).
"""

from __future__ import annotations

import os
import re
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tether

from .conftest import drop_schemas, pg_connect, with_params

pytestmark = pytest.mark.postgres

# Columns that hold JSON: TEXT on SQLite (decoded by tether.model), jsonb on PostgreSQL.
# A new JSON column is listed here, or the two backends disagree on its family.
JSON_COLUMNS = {
    ("sessions", "metadata"),
    ("messages", "tool_calls"),
    ("messages", "meta"),
    ("messages", "payload"),
    ("events", "data"),
}

# PostgreSQL only: the legacy version record that tethers from before the migration
# record read (see tether.store.migrations). SQLite keeps it in PRAGMA user_version.
PG_ONLY_TABLES = {"tether_schema"}

SQLITE_FAMILIES = {"INTEGER": "integer", "REAL": "real", "TEXT": "text"}
PG_FAMILIES = {
    "integer": "integer",
    "bigint": "integer",
    "smallint": "integer",
    "double precision": "real",
    "real": "real",
    "text": "text",
    "jsonb": "json",
}


def family(table: str, column: str, declared: str, families: dict[str, str]) -> str:
    fam = families[declared]  # a KeyError here: a type this test has no family for
    if (table, column) in JSON_COLUMNS:
        assert fam in ("text", "json"), (table, column, declared)
        return "json"
    return fam


def normalize_sql(text: str | None) -> str | None:
    """A predicate or default as both backends can be compared: no casts, parens or case."""
    if text is None:
        return None
    text = re.sub(r"::[a-z ]+", "", text.lower())  # PostgreSQL's explicit casts
    text = text.replace("(", " ").replace(")", " ").replace('"', "")
    return " ".join(text.split())


def sqlite_catalog(path: str) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    try:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        catalog: dict[str, Any] = {}
        for t in tables:
            info = conn.execute(f"PRAGMA table_info({t})").fetchall()
            pk = [r[1] for r in sorted(info, key=lambda r: r[5]) if r[5]]
            # Each column: (type family, NOT NULL, default).
            columns = {
                # SQLite lets a primary key other than INTEGER hold NULL (a historical
                # quirk); tether never writes one, and PostgreSQL forbids it: compared
                # as NOT NULL.
                r[1]: (
                    family(t, r[1], r[2], SQLITE_FAMILIES),
                    bool(r[3]) or r[1] in pk,
                    normalize_sql(r[4]),
                )
                for r in info
            }
            indexes = {}
            for _, name, unique, origin, partial in conn.execute(f"PRAGMA index_list({t})"):
                if origin != "c":  # the primary key's and UNIQUE constraints' own
                    continue
                cols = [r[2] for r in conn.execute(f"PRAGMA index_info({name})")]
                sql = conn.execute(
                    "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?", (name,)
                ).fetchone()[0]
                where = re.split(r"\bWHERE\b", sql, flags=re.IGNORECASE)
                predicate = normalize_sql(where[1]) if partial else None
                indexes[name] = (bool(unique), cols, predicate)
            catalog[t] = {"columns": columns, "primary_key": pk, "indexes": indexes}
        return catalog
    finally:
        conn.close()


def pg_catalog(url: str, schema: str) -> dict[str, Any]:
    conn = pg_connect(url)
    try:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)
            ).fetchall()
        ]
        catalog: dict[str, Any] = {}
        for t in tables:
            if t in PG_ONLY_TABLES:
                continue
            rows = conn.execute(
                """
                SELECT column_name, data_type, is_nullable = 'NO', column_default
                FROM information_schema.columns
                WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position
                """,
                (schema, t),
            ).fetchall()
            # Identity columns show no column_default: as SQLite's INTEGER PRIMARY KEY.
            columns = {
                name: (family(t, name, dtype, PG_FAMILIES), notnull, normalize_sql(default))
                for name, dtype, notnull, default in rows
            }
            index_rows = conn.execute(
                """
                SELECT c.relname, i.indisunique, i.indisprimary,
                    array(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY k(n, ord)
                          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n
                          ORDER BY k.ord),
                    pg_get_expr(i.indpred, i.indrelid)
                FROM pg_index i
                JOIN pg_class c ON c.oid = i.indexrelid
                JOIN pg_class r ON r.oid = i.indrelid
                JOIN pg_namespace n ON n.oid = r.relnamespace
                WHERE n.nspname = %s AND r.relname = %s
                """,
                (schema, t),
            ).fetchall()
            pk: list[str] = []
            indexes = {}
            for name, unique, primary, cols, predicate in index_rows:
                if primary:
                    pk = list(cols)
                    continue
                indexes[name] = (bool(unique), list(cols), normalize_sql(predicate))
            catalog[t] = {"columns": columns, "primary_key": pk, "indexes": indexes}
        return catalog
    finally:
        conn.close()


@pytest.fixture
def catalogs(tmp_path: Path, pg_server: str) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    path = str(tmp_path / "parity.db")
    schema = f"tether_parity_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    url = with_params(pg_server, schema=schema)
    try:
        for target in (path, url):
            tether.open_store(target, load_plugins=False).close()
        yield sqlite_catalog(path), pg_catalog(url, schema)
    finally:
        drop_schemas(schema)


def test_both_backends_have_the_same_tables(
    catalogs: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    lite, pg = catalogs
    assert sorted(lite) == sorted(pg)
    assert {"owners", "sessions", "messages", "events", "tether_migrations"} <= set(lite)


def test_both_backends_have_the_same_columns(
    catalogs: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    lite, pg = catalogs
    for table in lite:
        assert lite[table]["columns"] == pg[table]["columns"], table
        # Column order too: rows are still read by position in places.
        assert list(lite[table]["columns"]) == list(pg[table]["columns"]), table


def test_both_backends_have_the_same_primary_keys(
    catalogs: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    lite, pg = catalogs
    for table in lite:
        assert lite[table]["primary_key"], table
        assert lite[table]["primary_key"] == pg[table]["primary_key"], table


def test_both_backends_have_the_same_indexes(
    catalogs: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    lite, pg = catalogs
    for table in lite:
        assert lite[table]["indexes"] == pg[table]["indexes"], table
    # The partial predicates were read, not skipped.
    assert lite["sessions"]["indexes"]["sessions_origin"] == (
        True,
        ["origin"],
        "origin is not null",
    )
    assert lite["sessions"]["indexes"]["sessions_listing"][2] == "root_id = id"
