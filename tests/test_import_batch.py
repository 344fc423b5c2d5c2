"""``store.import_batch`` (schema 6) on both backends: items and cursor in one
transaction, continuations after a reopen, branches, states, source deletes."""

from __future__ import annotations

import pytest

from tether.compose import Store
from tether.errors import InvalidInputError
from tether.store.imports import ImportItem


def msg(key: int, t: float, content: str | None = "x", **extra: object) -> dict[str, object]:
    return {"key": f"k:{key}", "role": "user", "content": content, "created_at": t, **extra}


def test_items_and_cursor_commit_together_and_a_rerun_writes_nothing(store: Store) -> None:
    root = ImportItem("src:a", source="cli", created_at=10.0, messages=[msg(1, 11.0), msg(2, 12.0)])
    child = ImportItem(
        "src:b",
        source="cli",
        created_at=20.0,
        parent_origin="src:a",
        messages=[msg(3, 21.0, None, state="compacted")],
        ended_at=22.0,
        end_reason="compression",
    )
    branch = ImportItem(
        "src:c", source="cli", created_at=30.0, parent_origin="src:a", branch=True,
        messages=[msg(4, 31.0)],
    )  # fmt: skip
    results = store.import_batch([root, child, branch], cursor=("src", '{"n": 4}'))
    assert [(r.created, r.written) for r in results] == [(True, 2), (True, 1), (True, 1)]
    assert store.import_cursor("src") == '{"n": 4}'
    a, b, c = (store.find_by_origin(o) for o in ("src:a", "src:b", "src:c"))
    assert a and b and c
    assert (b.root_id, b.parent_id, b.end_reason) == (a.id, a.id, "compression")
    assert (c.root_id, c.parent_id) == (c.id, a.id)
    assert [m.state for m in store.get_messages(b.id, states=("active", "compacted"))] == [
        "compacted"
    ]
    assert store.get_messages(b.id) == []
    again = store.import_batch([root, child, branch], cursor=("src", '{"n": 4}'))
    assert [(r.created, r.written, r.ended) for r in again] == [(False, 0, False)] * 3


def test_a_failing_item_leaves_neither_data_nor_cursor(store: Store) -> None:
    good = ImportItem("src:a", source="cli", created_at=1.0, messages=[msg(1, 1.0)])
    with pytest.raises(InvalidInputError):
        store.import_batch(
            [good, ImportItem("src:b", source="cli", created_at=1.0, messages=[{"key": "k"}])],
            cursor=("src", "1"),
        )
    assert store.find_by_origin("src:a") is None and store.import_cursor("src") is None


def test_messages_after_the_end_go_to_a_continuation_then_end_it(store: Store) -> None:
    first = ImportItem(
        "src:a", source="tui", created_at=1.0, messages=[msg(1, 2.0)], ended_at=3.0,
        end_reason="tui_close",
    )  # fmt: skip
    store.import_batch([first])
    reopened = ImportItem(
        "src:a", source="tui", created_at=1.0, messages=[msg(1, 2.0), msg(2, 5.0)]
    )
    (r,) = store.import_batch([reopened])
    assert (r.origin, r.continued, r.written) == ("src:a#2", True, 1)
    ended = ImportItem(
        "src:a", source="tui", created_at=1.0, messages=[msg(2, 5.0)], ended_at=6.0,
        end_reason="user_exit", title="renamed",
    )  # fmt: skip
    (r,) = store.import_batch([ended])
    assert (r.origin, r.ended, r.written, r.titled) == ("src:a#2", True, 0, True)
    family = store.origin_family("src:a")
    assert [s.end_reason for s in family] == ["tui_close", "user_exit"]
    assert family[1].root_id == family[0].id and family[1].title == "renamed"


def test_a_source_delete_is_recorded_once_and_ends_an_open_session(store: Store) -> None:
    store.import_batch(
        [
            ImportItem("src:open", source="api_server", created_at=1.0, messages=[msg(1, 1.0)]),
            ImportItem(
                "src:done", source="cli", created_at=1.0, messages=[msg(2, 1.0)], ended_at=2.0,
                end_reason="user_exit",
            ),
        ]
    )  # fmt: skip
    gone = [
        ImportItem("src:open", source_deleted=True),
        ImportItem("src:done", source_deleted=True),
    ]
    first = store.import_batch(gone)
    assert [(r.marked_deleted, r.ended) for r in first] == [(True, True), (True, False)]
    assert [(r.marked_deleted, r.ended) for r in store.import_batch(gone)] == [(False, False)] * 2
    assert store.source_deleted_origins("src:") == {"src:open", "src:done"}
    opened = store.find_by_origin("src:open")
    assert opened is not None and opened.end_reason == "source_deleted"
    assert len(store.get_messages(opened.id)) == 1
    assert [s.origin for s in store.imported_sessions("src:", open_only=True)] == []


def test_states_follow_the_source_on_every_member_and_a_title_can_be_cleared(
    store: Store,
) -> None:
    # k:1 imported before a reopen (first member), k:2 after (the continuation).
    store.import_batch(
        [
            ImportItem(
                "src:a", source="tui", created_at=1.0, title="t", messages=[msg(1, 2.0)],
                ended_at=3.0, end_reason="tui_close",
            )
        ]
    )  # fmt: skip
    store.import_batch(
        [ImportItem("src:a", source="tui", created_at=1.0, title="t", messages=[msg(2, 5.0)])]
    )
    compacted = {"k:1": "compacted", "k:2": "compacted"}
    (r,) = store.import_batch([ImportItem("src:a", states=compacted)])
    assert (r.restated, r.written, r.titled) == (2, 0, False)
    first, cont = store.origin_family("src:a")
    assert [m.state for m in store.get_messages(first.id, states=("compacted",))] == ["compacted"]
    assert [m.state for m in store.get_messages(cont.id, states=("compacted",))] == ["compacted"]
    assert sorted(store.imported_states("src:")) == [
        ("src:a", "k:1", "compacted"),
        ("src:a#2", "k:2", "compacted"),
    ]
    (r,) = store.import_batch([ImportItem("src:a", states=compacted)])
    assert r.restated == 0  # nothing differs: nothing written
    (r,) = store.import_batch([ImportItem("src:a", states={"k:2": "active"}, clear_title=True)])
    assert (r.restated, r.titled) == (1, True)
    assert store.imported_states("src:") == [("src:a", "k:1", "compacted")]
    assert store.origin_family("src:a")[-1].title is None
    with pytest.raises(InvalidInputError):
        store.import_batch([ImportItem("src:a", states={"k:1": "gone"})])


def test_keyed_states_lists_every_keyed_message_of_the_sessions_given(store: Store) -> None:
    """What a follower compares with the rows its source still has (one query a chunk)."""
    store.import_batch(
        [
            ImportItem("src:k", source="cli", created_at=1.0, messages=[msg(1, 2.0), msg(2, 3.0)]),
            ImportItem("src:l", source="cli", created_at=1.0, messages=[msg(3, 2.0)]),
        ]
    )
    store.import_batch([ImportItem("src:k", states={"k:2": "retracted"})])
    k, l_ = (store.origin_family(o)[0].id for o in ("src:k", "src:l"))
    assert sorted(store.keyed_states([k, l_])) == sorted(
        [(k, "k:1", "active"), (k, "k:2", "retracted"), (l_, "k:3", "active")]
    )
    assert store.keyed_states([l_]) == [(l_, "k:3", "active")]
    assert store.keyed_states([]) == []
