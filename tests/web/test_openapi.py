"""The served OpenAPI description holds: every documented route, with good and hostile
queries, answers a documented status (never a 5xx) with a body matching its schema."""

from __future__ import annotations

import itertools
import urllib.parse
from typing import Any

from tether.compose import Store

from .conftest import WebServer, make_session

HOSTILE = ["", "x", "-1", "0", "1", "2", "1.5", "99999999999999999999999", "%00", "open", "a" * 300]


def check(value: Any, schema: dict[str, Any], where: str = "$") -> None:
    """A small JSON Schema check: type (with null), enum, required, properties, items, oneOf."""
    if "oneOf" in schema:
        errors = []
        for option in schema["oneOf"]:
            try:
                check(value, option, where)
                return
            except AssertionError as exc:
                errors.append(str(exc))
        raise AssertionError(f"{where}: matches no option: {errors}")
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        kinds = {
            "object": dict,
            "array": list,
            "string": str,
            "integer": int,
            "number": (int, float),
            "boolean": bool,
            "null": type(None),
        }
        ok = any(
            isinstance(value, kinds[t])
            and not (t in ("integer", "number") and isinstance(value, bool))
            for t in types
        )
        assert ok, f"{where}: {value!r} is not {types}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{where}: missing {key}"
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                check(value[key], sub, f"{where}.{key}")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, v in value.items():
                if key not in schema.get("properties", {}):
                    check(v, extra, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            check(v, schema["items"], f"{where}[{i}]")


def test_every_route_matches_its_description(web: WebServer, store: Store) -> None:
    sid = make_session(store)
    store.end_session(make_session(store, source="tui"), "tui_close")
    store.record_event(sid, "turn_started", {"turn_id": "t"})
    spec = web.get("/api/v1/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    calls = 0
    for path, item in spec["paths"].items():
        op = item["get"]
        if path.endswith("/stream"):
            continue  # a stream, tested in test_sse.py
        concrete = path.replace("{session_id}", sid)
        queries = [""]
        for p in op["parameters"]:
            if p["in"] != "query":
                continue
            queries += [urllib.parse.urlencode({p["name"]: v}) for v in HOSTILE]
        # Pairs of parameters too (bounded): a limit with a cursor, a state with a source...
        names = [p["name"] for p in op["parameters"] if p["in"] == "query"]
        for a, b in itertools.combinations(names, 2):
            queries.append(urllib.parse.urlencode({a: "1", b: "x"}))
        for q in queries:
            r = web.get(concrete + ("?" + q if q else ""))
            calls += 1
            assert r.status < 500, (concrete, q, r.body)
            documented = op["responses"].get(str(r.status))
            assert documented is not None, (concrete, q, r.status)
            check(r.json(), documented["content"]["application/json"]["schema"], f"{concrete}?{q}")
        # The unknown session id of a documented path: a documented 404.
        if "{session_id}" in path:
            r = web.get(path.replace("{session_id}", "01NOSUCH0000000000000000"))
            assert r.status == 404
            check(r.json(), op["responses"]["404"]["content"]["application/json"]["schema"])
    assert calls > 100
