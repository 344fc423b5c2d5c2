"""Export and import of transcripts (JSON Lines), mixed into :class:`StoreCore`.

The JSONL format: for each session, one ``{"type": "session", ...}`` line,
then its messages, one ``{"type": "message", ...}`` line each, in seq order.
Times are seconds since the epoch as stored (floats survive a round trip
exactly; ISO strings would round them). Every line is serialised
canonically (keys sorted, compact separators, UTF-8): PostgreSQL's jsonb
keeps no key order, so a canonical form is what makes a round trip SQLite →
JSONL → PostgreSQL → JSONL byte-identical. Owner, epoch and detachment are
left out: they describe a process of the exporting machine.

Export streams in constant memory: sessions in keyset pages by id, each page
claimed for the reader first (see :mod:`tether.store.retention`) and the
claims renewed as the export goes on (:class:`_Lease`), so a prune running
meanwhile never deletes what is being copied, however long the export takes;
a store this process cannot write is read without claims. The sessions of a page are read in groups
of at most MESSAGE_PAGE messages, each group's rows and messages in one
snapshot; a larger session page by page, and an error if it lost messages
meanwhile (a claim that expired). A session's messages are exported up to the
count read with its row: appends that land meanwhile wait for the next export.
Python spells the session lines (:func:`session_piece_lines`) and, on SQLite,
the times of the messages too, a group's at once (:func:`spell_times`: SQLite
cannot print Python's repr). On SQLite a plain message (the bulk of a
conversation, see sql_retention.export_plain_messages) is fetched as its four
varying values and spelled by one ``%`` of its session's template
(:func:`plain_template`), the others from the pieces SQLite builds
(sql_retention.export_message_lines). On PostgreSQL the server builds the
message lines (sql_retention.EXPORT_MESSAGE_ROWS) but those whose time it
cannot spell as Python does. Python writes the nested JSON (keys
sorted), and tests compare every line with ``canonical``. While a page of
sessions is read, the next one is claimed on a thread (:class:`_Ahead`); on
PostgreSQL the next group is read on a thread too (:func:`_page_items`), so
the server builds its lines while Python writes this group's. On SQLite a
thread would not help (the GIL changes hands at every row): an export of
more than a page starts a worker process instead, which reads and spells every
other group (see :mod:`tether.store.sqlite.export_worker`).

Import (:meth:`Transfer.import_lines`) is idempotent by session id (ids are
globally unique, time-sortable): a session already in the store is skipped
with its messages. It runs in one transaction, so a truncated or corrupt
file (one clear error naming the line) leaves nothing half-imported.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import threading
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice, pairwise
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar, cast

import orjson

from ..errors import InvalidInputError, StoreError, StoreOpenError
from ..model import MESSAGE_STATES, Message, Session, message_from_row
from ..threads import PeriodicThread
from ..validate import (
    ROLES,
    check_detail,
    check_id,
    check_int,
    check_meta,
    check_metadata,
    check_payload,
    check_reason,
    check_role,
    check_source,
    check_text,
    check_timestamp,
    check_tool_calls,
)
from . import sql_retention as q
from .backend import Conn
from .toolrepair import answered

if TYPE_CHECKING:
    from ..clock import Clock
    from .backend import Backend
    from .sqlite.export_worker import ExportWorker

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "openai")
SESSION_PAGE = 1000  # sessions claimed per transaction (a commit each)
# PostgreSQL reads a page's groups one ahead (see _page_items), and a page's
# first group waits for the page's claim: larger pages keep the server busy
# for more of the export (100,000 sessions: 0.47x the raw SELECT's rate with
# pages of 1,000 and no read-ahead, 0.55x with read-ahead, 0.60x with pages
# of 5,000 too; 10,000 gained nothing more).
SESSION_PAGES = {"postgresql": 5000}
MESSAGE_PAGE = 2000  # messages per read (a snapshot each) and per chunk of output
# Groups of small sessions hold this many pages' worth of messages on PostgreSQL,
# where each group costs three round trips (begin, read, commit): 12% faster an
# export with three than with one (measured, 10,000 sessions), for a peak of
# about 7 MB instead of 2.5.
GROUP_PAGES = {"postgresql": 3}
CLAIM_TTL = 300.0  # seconds a page stays claimed without being renewed
# Seconds between two renewals by the exporting process's thread: a claim
# outlives two of them, so one failed renewal (retried sooner) loses nothing.
RENEW_EVERY = CLAIM_TTL / 3
RENEWER_NAME = "tether-export-claims"
AHEAD_NAME = "tether-export-claim-ahead"
GROUP_READER_NAME = "tether-export-read-ahead"
# SQLite: an export of more than a page of sessions reads and spells every other
# group in a worker process (see tether.store.sqlite.export_worker).
EXPORT_WORKER = True
# With a worker, groups hold this many times fewer messages: a page's groups
# alternate between the two processes, and a page's first is always this
# process's, so ten groups a page share out better than five.
WORKER_SPLIT = 2

SESSION_FIELDS = (
    "id",
    "source",
    "model",
    "title",
    "cwd",
    "parent_id",
    "root_id",
    "origin",
    "created_at",
    "last_active_at",
    "ended_at",
    "end_reason",
    "end_detail",
    "message_count",
    "metadata",
)
MESSAGE_FIELDS = (
    "session_id",
    "seq",
    "role",
    "content",
    "tool_calls",
    "tool_call_id",
    "tool_name",
    "created_at",
    "idem_key",
    "meta",
    "state",
    "payload",
)


# One encoder, made once: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(
    sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False
)


# Strings as the encoder writes them (ensure_ascii=False): the C function it uses.
_encode_text = json.encoder.encode_basestring


def canonical(obj: Any) -> str:
    """One JSON line: sorted keys, compact, UTF-8 text (the export's only form)."""
    return _ENCODER.encode(obj)


def session_line(s: Session) -> str:
    d: dict[str, Any] = {f: getattr(s, f) for f in SESSION_FIELDS}
    d["type"] = "session"
    return canonical(d)


def message_line(m: Message) -> str:
    d: dict[str, Any] = {f: getattr(m, f) for f in MESSAGE_FIELDS}
    d["type"] = "message"
    return canonical(d)


def _decoded(value: Any) -> Any:
    # SQLite hands JSON columns back as text, PostgreSQL's jsonb decoded.
    return json.loads(value) if isinstance(value, str) else value


def _text(value: str | None) -> str:
    return "null" if value is None else _encode_text(value)


def _nested(value: Any) -> str:
    return "null" if value is None else _ENCODER.encode(_decoded(value))


def message_row_line(row: Sequence[Any]) -> str:
    """:func:`message_line` straight from a row in MESSAGE_READ_COLUMNS order.

    The hot path of an export: the keys are fixed, so the line is spelled out
    in their sorted order, and only the values go through the encoder (the
    same text as ``canonical``: a test compares the two).
    """
    sid, seq, role, content, calls, call_id, name, at, idem, meta, state, payload = row
    enc = _encode_text
    return (
        f'{{"content":{"null" if content is None else enc(content)},"created_at":{float(at)!r},'
        f'"idem_key":{"null" if idem is None else enc(idem)},'
        f'"meta":{"null" if meta is None else _nested(meta)},'
        f'"payload":{"null" if payload is None else _nested(payload)},'
        f'"role":{enc(role)},"seq":{int(seq)},"session_id":{enc(sid)},"state":{enc(state)},'
        f'"tool_call_id":{"null" if call_id is None else enc(call_id)},'
        f'"tool_calls":{"null" if calls is None else _nested(calls)},'
        f'"tool_name":{"null" if name is None else enc(name)},"type":"message"}}'
    )


# A message line from the pieces the database built (sql_retention.export_message_lines):
# content, created_at, the rest. Python spells created_at: its repr is the
# canonical form, and neither database prints floats so.
MESSAGE_TEMPLATE = '{"content":%s,"created_at":%r,%s'


def _message_lines(rows: list[Any], nested: list[Any]) -> Iterable[str]:
    """The lines of export_message_lines' rows; those with nested JSON (rest NULL)
    from ``nested``, the full rows of the same messages in the same order."""
    if not nested:
        return map(MESSAGE_TEMPLATE.__mod__, rows)  # one C call a line
    full = iter(nested)
    return [message_row_line(next(full)) if r[2] is None else MESSAGE_TEMPLATE % r for r in rows]


# The third column: the rest of a message line's row (None when nested JSON), or
# the role of a row of export_plain_messages (not in ROLES when not plain).
_THIRD = itemgetter(2)
_FIRST = itemgetter(0)
MESSAGE_HOLE = q.MESSAGE_HOLE
_HOLE = re.compile(MESSAGE_HOLE)


def _check_counts(ids: list[str], expected: int, got: int) -> None:
    """A group's messages read against the sum of its sessions' counts (one snapshot)."""
    if got != expected:
        raise StoreError(
            "the store is inconsistent: sessions in "
            f"{ids[0]}..{ids[-1]} have fewer messages than their message_count "
            "(run `tether doctor`)"
        )


def _page_reader(query: str, sid: str, after: int, upto: int) -> Callable[[Conn], list[str]]:
    """A read of one page of a session's message lines (seq after..upto), bound now."""

    def run(c: Conn) -> list[str]:
        rows = c.execute(query, (sid, after, upto)).fetchall()
        nested = []
        if None in map(_THIRD, rows):
            nested = c.execute(q.EXPORT_NESTED_PAGE, (sid, after, upto)).fetchall()
        return list(_message_lines(rows, nested))

    return run


# Where orjson spells a float as Python's repr does: both write the shortest
# digits that read back, in positional notation from 1e-4 up to 1e16 (checked
# on millions of values, in a test too; outside, their exponents differ).
_ORJSON_FLOATS = (1e-4, 1e16)


def spell_times(values: Sequence[float]) -> list[str]:
    """``repr`` of each time (a float, as both databases hand back their time
    columns), as the canonical encoder writes it: by orjson in one call (a tenth
    of repr's time, which was most of an export's Python time) when every value
    is in the range where the two agree, else by repr."""
    if values and _ORJSON_FLOATS[0] <= min(values) and max(values) < _ORJSON_FLOATS[1]:
        return orjson.dumps(values).decode().strip("[]").split(",")
    return list(map(repr, values))


def spell_texts(values: Sequence[str | None]) -> list[str]:
    """Each text (or None) as a JSON string (or null), as the canonical encoder
    writes it: by its own C function, mapped in C (no Python call per value)."""
    if None in values:
        return [_text(v) for v in values]
    return list(map(_encode_text, values))  # type: ignore[arg-type]


# A session line from sql_retention.export_session_pieces, its times
# spelled by spell_times (ended_at: 'null' when NULL) and its metadata canonical.
SESSION_TEMPLATE = (
    '{"created_at":%s,"cwd":%s,"end_detail":%s,"end_reason":%s,"ended_at":%s,"id":%s,'
    '"last_active_at":%s,"message_count":%d,"metadata":%s,%s'
)


def plain_template(session: str) -> str:
    """The ``%`` template of the lines of a session's plain messages (see
    sql_retention.export_plain_messages): content (a JSON string), created_at
    (spelled by spell_times), role and seq fill it; ``session`` is the session's
    id as a JSON string."""
    return (
        '{"content":%s,"created_at":%s,"idem_key":null,"meta":null,"payload":null,'
        '"role":"%s","seq":%d,"session_id":'
        + session.replace("%", "%%")
        + ',"state":"active","tool_call_id":null,"tool_calls":null,"tool_name":null,'
        '"type":"message"}'
    )


def session_piece_lines(rows: list[Any]) -> list[str]:
    """:func:`session_line` of each row of sql_retention.export_session_pieces: the
    times of all spelled at once, then one ``%`` a line."""
    if not rows:
        return []
    columns = zip(*rows, strict=True)
    created, cwd, detail, reason, ended, sid, active, count, metadata, rest = columns
    ends = iter(spell_times([e for e in ended if e is not None]))
    ended_text = ["null" if e is None else next(ends) for e in ended]
    meta = [m if m == "null" else _nested(m) for m in metadata]
    return list(
        map(
            SESSION_TEMPLATE.__mod__,
            zip(
                spell_times(created),
                cwd,
                detail,
                reason,
                ended_text,
                sid,
                spell_times(active),
                count,
                meta,
                rest,
                strict=True,
            ),
        )
    )


def openai_message(m: Message) -> dict[str, Any]:
    """A message as the chat-completions API takes it."""
    d: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        d["tool_calls"] = m.tool_calls
    if m.tool_call_id is not None:
        d["tool_call_id"] = m.tool_call_id
    return d


@dataclass(frozen=True, slots=True)
class TransferSummary:
    """What an import did (or an export wrote)."""

    sessions: int = 0
    skipped: int = 0
    messages: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"sessions": self.sessions, "skipped": self.skipped, "messages": self.messages}


def _fetch_all(query: str, params: Sequence[Any]) -> Callable[[Conn], list[Any]]:
    """A read of every row of one query (bound now, not when a loop has moved on)."""

    def run(c: Conn) -> list[Any]:
        return c.execute(query, params).fetchall()

    return run


class _Lease:
    """An export's claims: taken a page of sessions at a time, and kept alive while
    the exporting process lives, whatever its consumer does.

    A claim expires CLAIM_TTL after it was taken, and prune and purge are free
    to take what is no longer claimed. Two things renew the claims of what the
    export has yet to read: every read first calls :meth:`keep` (or
    :meth:`hold` in the middle of a session), which renews them once a third
    of CLAIM_TTL has passed on the store's clock; and a thread of this process
    (:meth:`start_renewing`) renews them every RENEW_EVERY seconds, so a
    consumer that leaves the iterator suspended (a blocked pipe, a slow sink)
    longer than CLAIM_TTL keeps them too. Only a process that dies, or a
    renewal that keeps failing (the store unreachable), lets them lapse: what
    was trashed meanwhile is then left out, and a session half written is an
    error (see :meth:`hold`). A store that refuses writes is read without
    claims (``active`` False). A forked child never renews nor releases the
    claims of the process it was forked from (``pid``).

    The next page is claimed ahead (:meth:`claim_ahead`), on a thread of its
    own while this page is read: the claim is committed before any of its
    sessions is read, as ever, and its cost (on PostgreSQL a fifth of an
    export's time) overlaps the reads.
    """

    __slots__ = (
        "active",
        "ahead",
        "holder",
        "lock",
        "pending",
        "pid",
        "renewer",
        "store",
        "taken",
    )

    def __init__(self, store: Transfer, holder: str) -> None:
        self.store = store
        self.holder = holder
        self.active = True
        self.taken = 0.0  # the clock's monotonic time when the claims were last taken
        self.pending: dict[str, None] = {}  # claimed, not yet fully read (in order)
        # Held across each renewal: the consumer's and the thread's never interleave.
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.renewer: PeriodicThread | None = None
        self.ahead: _Ahead | None = None  # the next page's claim, under way

    def claim_ahead(self, ids: list[str], written: list[str]) -> None:
        """Start claiming the page after this one (:meth:`claim` takes it over), and
        releasing the claims of ``written``, a page already written (a prune may
        take those sessions now; and the release at the end is shorter)."""
        if self.active and self.ahead is None:
            self.ahead = _Ahead(self.store, self.holder, ids, written)

    def claim(self, ids: list[str]) -> list[str]:
        """Claim a page of sessions; those claimed (all of them without claims)."""
        ahead, self.ahead = self.ahead, None
        if not self.active:
            if ahead is not None:
                ahead.thread.join()
            return ids
        with self.lock:
            try:
                if ahead is not None and ahead.ids == ids:
                    started, got = ahead.result()
                else:
                    if ahead is not None:  # another page (never, by export_text): wait it out
                        ahead.thread.join()
                    started = self.store.clock.monotonic()
                    got = set(self.store._claim_ids(ids, self.holder, CLAIM_TTL))
            except StoreOpenError as exc:
                # Claims are writes; nobody prunes through a store that refuses them.
                log.debug("exporting without claims: %s", exc)
                self.active = False
                return ids
            self.taken = started
            self.pending = dict.fromkeys(i for i in ids if i in got)
        if self.renewer is None:
            self.start_renewing()
        return list(self.pending)

    def _renew(self) -> None:
        """Renew the claims of what is yet to be read (``lock`` held); drop those lost."""
        started = self.store.clock.monotonic()
        got = set(self.store._claim_ids(list(self.pending), self.holder, CLAIM_TTL))
        self.taken = started
        self.pending = {i: None for i in self.pending if i in got}

    def keep(self, reading: list[str]) -> list[str]:
        """Before reading these sessions: renew the claims if due; those of
        ``reading`` still claimed (the rest were trashed while unclaimed)."""
        if not self.active:
            return reading
        with self.lock:
            if self.store.clock.monotonic() - self.taken >= CLAIM_TTL / 3:
                self._renew()
            return [i for i in reading if i in self.pending]

    def start_renewing(self) -> None:
        """Start the thread that renews the claims every RENEW_EVERY seconds."""
        self.renewer = PeriodicThread(self._tick, interval=RENEW_EVERY, name=RENEWER_NAME)
        self.renewer.start()

    def _tick(self, woken: bool) -> float | None:
        """The renewal thread's work: a failure is a warning and a sooner retry,
        never an exception in the consumer (its next read says what was lost)."""
        with self.lock:
            if not self.active or not self.pending or os.getpid() != self.pid:
                return None
            if self.store.closed:  # an iterator left open past its store: nothing to keep
                self.active = False
                if self.renewer is not None:
                    self.renewer.stop()  # from the thread itself: stops the loop, no join
                return None
            try:
                self._renew()
            except Exception as exc:  # any failure: log, retry (claims may lapse meanwhile)
                log.warning(
                    "export %s: renewing the claims of %d sessions failed (%s); retrying",
                    self.holder,
                    len(self.pending),
                    exc,
                )
                return RENEW_EVERY / 10
        return None

    def close(self) -> None:
        """The export is over (finished, closed or collected): stop renewing, release."""
        if os.getpid() != self.pid:
            return  # a forked child: the claims are its parent's, still exporting
        ahead, self.ahead = self.ahead, None
        if ahead is not None:
            if ahead.thread is threading.current_thread():
                return  # collected on the claiming thread itself: the claims expire
            ahead.thread.join()  # a claim that lands after the release would linger
        renewer, self.renewer = self.renewer, None
        if renewer is not None:
            renewer.stop()
            if renewer is threading.current_thread():
                # Collected on the renewal thread itself (a cyclic GC there): it may
                # hold the store's locks, so the claims are left to expire.
                return
        with self.lock:  # a renewal still under way (stop's join timed out) ends first
            active, self.active = self.active, False
        if active:
            try:
                self.store.release(self.holder)
            except StoreError as exc:
                # The store closed first (an iterator dropped after it): claims expire.
                log.debug("export %s: claims left to expire: %s", self.holder, exc)

    def renewing(self, chunks: Generator[str, None, int]) -> Generator[str, None, int]:
        """These chunks, renewing the claims (if due) each time the consumer asks for
        the next: the time the consumer took to write the last one counts too."""
        while True:
            try:
                chunk = next(chunks)
            except StopIteration as stop:
                return stop.value
            yield chunk
            self.keep([])

    def hold(self, sid: str) -> None:
        """Before reading the next page of a session already partly written."""
        if not self.keep([sid]):
            raise StoreError(
                f"session {sid} was trashed while it was exported: its claim expired "
                f"(the export could not renew it for {CLAIM_TTL:.0f} s: the store "
                "unreachable?); export it again"
            )

    def done(self, ids: list[str]) -> None:
        """These sessions are written: their claims need no renewal."""
        with self.lock:
            for i in ids:
                self.pending.pop(i, None)


T = TypeVar("T")


class _OnThread(Generic[T]):
    """``fn()`` run on a daemon thread of its own (``name``), started now:
    :meth:`result` waits for it and gives what it returned, or raises what it
    raised (an export's claim ahead and read ahead)."""

    __slots__ = ("error", "thread", "value")

    def __init__(self, fn: Callable[[], T], name: str) -> None:
        self.value: T | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), name=name, daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], T]) -> None:
        try:
            self.value = fn()
        except BaseException as exc:  # handed to the consumer by result()
            self.error = exc

    def result(self) -> T:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return cast(T, self.value)

    def wait(self) -> None:
        """Until ``fn`` is over (at once if it runs here: a dropped export
        collected by a cyclic GC on this very thread)."""
        if self.thread is not threading.current_thread():
            self.thread.join()


def _claim_page(
    store: Transfer, holder: str, ids: list[str], written: list[str]
) -> tuple[float, set[str]]:
    """Release ``written`` (a page already written), then claim ``ids``: (when the
    claim started on the store's clock, the ids claimed)."""
    store._release_ids(written, holder)
    started = store.clock.monotonic()
    return started, set(store._claim_ids(ids, holder, CLAIM_TTL))


class _Ahead(_OnThread[tuple[float, set[str]]]):
    """A claim of the next page of an export (:func:`_claim_page`), taken on a
    thread of its own (AHEAD_NAME) while the consumer reads the current page."""

    __slots__ = ("ids",)

    def __init__(self, store: Transfer, holder: str, ids: list[str], written: list[str]) -> None:
        self.ids = ids
        # The thread holds the store, not the lease: a dropped export is still collected.
        super().__init__(functools.partial(_claim_page, store, holder, ids, written), AHEAD_NAME)


# --- a group of small sessions: read (any thread), then spelled -------------------


def read_group_sqlite(ids: list[str], c: Conn) -> tuple[list[Any], ...]:
    """A group's session pieces and plain messages (and the others, if any) on SQLite."""
    n = len(ids)
    sessions = c.execute(q.export_session_pieces("sqlite", n), ids).fetchall()
    messages = c.execute(q.export_plain_messages(n), ids).fetchall()
    odd = nested = []
    # In C, no Python call per row: a NULL role, or one outside ROLES.
    if not ROLES.issuperset(map(_THIRD, messages)):
        odd = c.execute(q.export_odd_messages(n), ids).fetchall()
        if None in map(_THIRD, odd):
            nested = c.execute(q.export_odd_messages(n, nested=True), ids).fetchall()
    return sessions, messages, odd, nested


def group_text_sqlite(
    ids: list[str], sessions: list[Any], messages: list[Any], odd: list[Any], nested: list[Any]
) -> tuple[str, int]:
    """The lines of what :func:`read_group_sqlite` read, and its sessions."""
    _check_counts(ids, sum(s[7] for s in sessions), len(messages))
    out: list[str] = []
    lines = session_piece_lines(sessions)
    rows: Iterator[tuple[Any, ...]] = iter(())
    if messages:  # (content, created_at spelled, role, seq): the times spelled at once
        contents, times, roles, seqs = zip(*messages, strict=True)
        rows = zip(spell_texts(contents), spell_times(times), roles, seqs, strict=True)
    if not odd:  # every message plain: one % each, by map (no Python call per row)
        for s, line in zip(sessions, lines, strict=True):
            out.append(line)
            out.extend(map(plain_template(s[5]).__mod__, islice(rows, s[7])))
    else:
        odd_lines = iter(_message_lines(odd, nested))
        for s, line in zip(sessions, lines, strict=True):
            out.append(line)
            plain = plain_template(s[5])
            out.extend(
                [plain % r if r[2] in ROLES else next(odd_lines) for r in islice(rows, s[7])]
            )
    out.append("")
    return "\n".join(out), len(sessions)  # one chunk per group: fewer, larger writes


def _read_group_pg(ids: list[str], c: Conn) -> tuple[list[Any], ...]:
    """A group's session pieces and message lines on PostgreSQL: the server builds
    the message lines (sql_retention.EXPORT_MESSAGE_ROWS) but those whose time it
    cannot spell as Python does (holes, read as rows)."""
    query = q.export_session_pieces("postgresql", 1)
    sessions = c.execute(query, q.ids_json_param("postgresql", ids)).fetchall()
    # Those not trashed meanwhile (the id is the JSON string of the fifth piece).
    live = ids if len(sessions) == len(ids) else [json.loads(s[5]) for s in sessions]
    arg = q.ids_json_param("postgresql", live)
    messages = c.execute(q.EXPORT_MESSAGE_ROWS, arg).fetchall()
    holes = []
    if MESSAGE_HOLE in "".join(map(_FIRST, messages)):  # in C, not a line at a time
        holes = c.execute(q.EXPORT_HOLE_MESSAGES, arg).fetchall()
    return sessions, messages, holes


def _group_text_pg(
    ids: list[str], sessions: list[Any], messages: list[Any], holes: list[Any]
) -> tuple[str, int]:
    """The lines of what :func:`_read_group_pg` read, and its sessions: Python
    spells the session lines and the messages the server left out."""
    _check_counts(ids, sum(s[7] for s in sessions), len(messages))
    out: list[str] = []
    lines = map(_FIRST, messages)
    for s, line in zip(sessions, session_piece_lines(sessions), strict=True):
        out.append(line)
        out.extend(islice(lines, s[7]))
    out.append("")
    text = "\n".join(out)
    if holes:
        odd = iter(holes)
        text = _HOLE.sub(lambda _: message_row_line(next(odd)), text)
    return text, len(sessions)


def _plan(rows: list[tuple[str, int]], limit: int) -> list[str | list[str]]:
    """A page's groups of small sessions (lists of ids, at most ``limit`` messages
    each by the page's counts) and its large sessions (ids), in order."""
    items: list[str | list[str]] = []
    group: list[str] = []
    total = 0
    for sid, count in rows:
        if count <= MESSAGE_PAGE and count <= limit - total:
            group.append(sid)
            total += count
            continue
        if group:
            items.append(group)
        group, total = [], 0
        if count > MESSAGE_PAGE:
            items.append(sid)
        else:
            group, total = [sid], count
    if group:
        items.append(group)
    return items


class _Read:
    """One group's read: on a thread of its own (GROUP_READER_NAME), started now;
    read and spelled by an export worker (SQLite, see
    :mod:`tether.store.sqlite.export_worker`), asked now; or on the consumer's
    thread when :meth:`result` asks for it."""

    __slots__ = ("ids", "job", "store", "worker")

    def __init__(
        self,
        store: Transfer,
        ids: list[str],
        *,
        thread: bool = False,
        worker: ExportWorker | None = None,
    ) -> None:
        self.store = store
        self.ids = ids
        self.job: _OnThread[Any] | None = None
        self.worker: ExportWorker | None = None
        if worker is not None and ids and worker.send(ids):
            self.worker = worker
        elif thread and ids:
            self.job = _OnThread(functools.partial(store._read_group, ids), GROUP_READER_NAME)

    def result(self) -> Any:
        """What was read (None: no session of the group was still claimed); from a
        worker, the group's text already (:class:`_Spelled`), or, if the worker
        failed, what this thread read instead."""
        if self.worker is not None:
            spelled = self.worker.receive()
            if spelled is not None:
                return _Spelled(*spelled)
        if self.job is not None:
            return self.job.result()
        return self.store._read_group(self.ids) if self.ids else None

    def wait(self) -> None:
        if self.job is not None:
            self.job.wait()


class _Spelled(NamedTuple):
    """A group's lines as an export worker sent them, and its sessions."""

    text: str
    sessions: int


def _page_items(
    store: Transfer,
    lease: _Lease,
    rows: list[tuple[str, int]],
    *,
    ahead: bool,
    worker: ExportWorker | None = None,
) -> Generator[str | tuple[list[str], Any], None, None]:
    """A page's large sessions (ids) and groups ((ids still claimed, what was
    read)), in order. With ``ahead``, the read of the next group starts on a
    thread before this one is handed over, so the database builds it while the
    consumer spells and writes this one. With a ``worker`` (SQLite), groups
    alternate: the worker reads and spells the next group while this process
    reads and spells this one. A group is read only once :meth:`_Lease.keep`
    said which of its sessions are still claimed, as without either; a read
    still under way when the consumer stops is waited for (a worker's is left
    to it: it only reads), so none outlives the export."""
    limit = MESSAGE_PAGE * GROUP_PAGES.get(store.backend.dialect, 1)
    if worker is not None:
        limit //= WORKER_SPLIT
    items = _plan(rows, limit)
    groups = [(k, item) for k, item in enumerate(items) if isinstance(item, list)]
    following = {k: after for (k, _), after in pairwise(groups)}
    pending: tuple[int, _Read] | None = None  # the next group's read, under way
    try:
        for k, item in enumerate(items):
            if isinstance(item, str):
                yield item
                continue
            if pending is not None and pending[0] == k:
                read, pending = pending[1], None
            else:
                read = _Read(store, lease.keep(item))
            if k in following:
                after, group = following[k]
                if worker is not None and read.worker is None and worker.ready():
                    pending = (after, _Read(store, lease.keep(group), worker=worker))
                elif ahead:
                    pending = (after, _Read(store, lease.keep(group), thread=True))
            data = read.result()
            if data is not None:
                yield read.ids, data
    finally:
        if pending is not None:
            pending[1].wait()


class _Bad(Exception):
    """A bad line (wrapped with its number into InvalidInputError)."""


def _field(d: dict[str, Any], name: str) -> Any:
    if name not in d:
        raise _Bad(f"missing field {name!r}")
    return d[name]


class Transfer:
    """Export and import (mixed into :class:`~tether.store.StoreCore`)."""

    backend: Backend
    clock: Clock

    if TYPE_CHECKING:  # provided by Retention and MessageWrites

        def _claim_ids(self, ids: list[str], holder: str, ttl: float) -> list[str]: ...

        def _release_ids(self, ids: list[str], holder: str) -> int: ...

        @property
        def closed(self) -> bool: ...

        def release(self, holder: str) -> int: ...

        def get_chain(self, session_id: str) -> list[Session]: ...

        def _event(
            self, c: Conn, session_id: str | None, kind: str, data: dict[str, Any]
        ) -> None: ...

    # --- export ---------------------------------------------------------------------

    def export_text(
        self,
        session_ids: Sequence[str] | None = None,
        *,
        fmt: str = "jsonl",
        since: float | None = None,
        page: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[str]:
        """Text (whole lines, each ending in a newline) exporting these sessions' chains, or all.

        ``since``: only sessions active at or after this time. ``fmt``:
        ``jsonl`` (sessions and their messages, every state: what
        :meth:`import_lines` reads back) or ``openai`` (per session, its active
        messages as a chat-completions list). Trashed sessions are left out.
        Each page of sessions is claimed while it is read; a store this
        process cannot write (a read-only file or mount, a read-only role) is
        read without claims: no prune can run through this process, and each
        group of sessions is read with its messages in one snapshot anyway.
        ``page``: sessions per page (claimed in one transaction; default
        SESSION_PAGES by backend, else SESSION_PAGE). ``progress`` is called
        with the number of sessions written so far.
        """
        if fmt not in FORMATS:
            raise InvalidInputError(f"invalid format {fmt!r}: expected one of {', '.join(FORMATS)}")
        floor = -math.inf if since is None else check_timestamp(since, "since")
        lease = _Lease(self, f"export:{uuid.uuid4().hex}")
        done = 0
        if page is None:
            page = SESSION_PAGES.get(self.backend.dialect, SESSION_PAGE)
        pages = self._export_pages(session_ids, floor, page)
        written: list[str] = []  # the ids of the page before this one
        worker: ExportWorker | None = None
        try:
            rows = next(pages, None)
            while rows is not None:
                ids = lease.claim([r[0] for r in rows])
                claimed = set(ids)
                following = next(pages, None)
                if following is not None:
                    lease.claim_ahead([r[0] for r in following], written)
                    if worker is None and fmt == "jsonl" and not written:
                        # More than a page: a worker pays for its start (it starts
                        # while this page is read, and helps from the next group).
                        worker = self._export_worker()
                written = ids
                rows = [r for r in rows if r[0] in claimed]
                if fmt == "jsonl":
                    page_lines = self._export_jsonl_page(rows, lease, worker)
                    done += yield from lease.renewing(page_lines)
                else:
                    for sid, count in rows:
                        if lease.keep([sid]):
                            done += yield from lease.renewing(
                                self._export_openai(sid, count, lease)
                            )
                            lease.done([sid])
                if progress is not None:
                    progress(done)
                rows = following
        finally:
            if worker is not None:
                worker.close()
            lease.close()

    def _export_worker(self) -> ExportWorker | None:
        """A worker process for a large export, where one helps (a SQLite file, more
        than one core, EXPORT_WORKER on); None otherwise or if it cannot start."""
        start = getattr(self.backend, "export_worker", None)
        if start is None or not EXPORT_WORKER or (os.cpu_count() or 1) < 2:
            return None
        return cast("ExportWorker | None", start())

    def _export_pages(
        self, session_ids: Sequence[str] | None, floor: float, page: int
    ) -> Iterator[list[tuple[str, int]]]:
        """Pages of (id, message_count) of the sessions to export, by id."""
        if session_ids is not None:
            wanted: dict[str, None] = {}
            for sid in session_ids:
                for member in self.get_chain(check_id(sid)):
                    wanted[member.id] = None
            ids = sorted(wanted)
            for i in range(0, len(ids), page):
                chunk = ids[i : i + page]
                query = q.export_page_by_id(len(chunk))
                yield self.backend.read(_fetch_all(query, [*chunk, floor]))
            return
        after = ""
        while True:
            rows = self.backend.read(_fetch_all(q.EXPORT_PAGE, (after, floor, page)))
            if not rows:
                return
            yield rows
            after = rows[-1][0]
            if len(rows) < page:
                return

    def _ordered_read(self, fn: Callable[[Conn], Any]) -> Any:
        """A read whose queries walk the indexes in their order (PostgreSQL's
        ``read_ordered``): a planner that prices a sort below them otherwise scans
        every message to hash-join a page of sessions."""
        return getattr(self.backend, "read_ordered", self.backend.read)(fn)

    def _export_jsonl_page(
        self, rows: list[tuple[str, int]], lease: _Lease, worker: ExportWorker | None = None
    ) -> Generator[str, None, int]:
        """A page of sessions as JSONL, in groups of at most MESSAGE_PAGE messages
        (times GROUP_PAGES on PostgreSQL; by the counts of the page: the group's own
        snapshot may have a few more), each large session (more than MESSAGE_PAGE)
        on its own; returns how many sessions were written.

        On PostgreSQL the next group is read on a thread (:func:`_page_items`)
        while this one is spelled and written: the server builds the next group's
        lines meanwhile, where it sat idle before."""
        written = 0
        ahead = self.backend.dialect == "postgresql"
        # closing: a consumer that stops here waits for the read under way, now.
        items = _page_items(self, lease, rows, ahead=ahead, worker=worker)
        with contextlib.closing(items):
            for item in items:
                if isinstance(item, str):  # a large session, read page by page
                    if lease.keep([item]):
                        written += yield from self._export_large(item, lease)
                        lease.done([item])
                    continue
                ids, data = item
                text, n = self._group_text(ids, data)
                yield text
                written += n
                lease.done(ids)
        return written

    def _read_group(self, ids: list[str]) -> Any:
        """A group's sessions and messages, read in one snapshot (any thread)."""
        if self.backend.dialect == "postgresql":
            return self._ordered_read(functools.partial(_read_group_pg, ids))
        return self._ordered_read(functools.partial(read_group_sqlite, ids))

    def _group_text(self, ids: list[str], data: Any) -> tuple[str, int]:
        """The lines of a group read by :meth:`_read_group` (one chunk), and its sessions."""
        if isinstance(data, _Spelled):
            return data.text, data.sessions
        if self.backend.dialect == "postgresql":
            return _group_text_pg(ids, *data)
        return group_text_sqlite(ids, *data)

    def _export_large(self, sid: str, lease: _Lease) -> Generator[str, None, int]:
        """A session with more than MESSAGE_PAGE messages: its row and first page in
        one snapshot, then page by page up to the count read with the row."""
        dialect = self.backend.dialect
        lines_query = q.export_message_page(dialect)

        def first(c: Conn) -> tuple[Any, list[str]]:
            query = q.export_session_pieces(dialect, 1)
            found = c.execute(query, q.ids_json_param(dialect, [sid])).fetchone()
            if found is None:
                return None, []
            return found, _page_reader(lines_query, sid, 0, min(found[7], MESSAGE_PAGE))(c)

        row, lines = self._ordered_read(first)
        if row is None:
            return 0
        count = row[7]
        yield session_piece_lines([row])[0] + "\n"
        after = 0
        while True:
            upto = min(count, after + MESSAGE_PAGE)
            if len(lines) != upto - after:
                raise StoreError(
                    f"session {sid} lost messages while it was exported (deleted meanwhile?): "
                    f"{len(lines)} of seq {after + 1}..{upto} found"
                )
            if lines:
                lines.append("")
                yield "\n".join(lines)
            after = upto
            if after >= count:
                return 1
            lease.hold(sid)
            page = _page_reader(lines_query, sid, after, min(count, after + MESSAGE_PAGE))
            lines = self._ordered_read(page)

    def _messages(self, sid: str, count: int, lease: _Lease) -> Iterator[Message]:
        # Up to the count read with the row: appends after it are not this export's.
        after = 0
        while after < count:
            lease.hold(sid)
            upto = min(count, after + MESSAGE_PAGE)
            rows = self.backend.read(_fetch_all(q.EXPORT_MESSAGES, (sid, after, upto)))
            if not rows:
                return
            for r in rows:
                yield message_from_row(r)
            after = upto

    def _export_openai(self, sid: str, count: int, lease: _Lease) -> Generator[str, None, int]:
        """One object per session, its chat-completions list streamed item by item."""
        yield '{"messages":['
        first = True
        # A list a model takes: calls left unanswered in the middle get their
        # synthetic result after them, as the gateway's agent reads them.
        active = (m for m in self._messages(sid, count, lease) if m.state == "active")
        for m in answered(active):
            yield ("" if first else ",") + canonical(openai_message(m))
            first = False
        yield f'],"session_id":{canonical(sid)}}}\n'
        return 1

    # --- import ---------------------------------------------------------------------

    def import_lines(self, lines: Iterable[str], *, name: str = "input") -> TransferSummary:
        """Import an export (JSONL lines, each ending in a newline) in one transaction.

        Idempotent by session id: sessions already here are skipped with their
        messages. Any bad line raises :class:`InvalidInputError` naming
        ``name`` and the line number, and nothing is imported.
        """

        def tx(c: Conn) -> TransferSummary:
            return _Importer(self, c, name).run(lines)

        return self.backend.write(tx)


class _Importer:
    """One import transaction: validates line by line, writes as it goes."""

    def __init__(self, store: Transfer, c: Conn, name: str) -> None:
        self.store = store
        self.c = c
        self.name = name
        self.created = self.skipped = self.messages = 0
        self.current: str | None = None
        self.current_line = 0
        self.expected = 0
        self.seen = 0
        self.writing = False
        self.roots: set[str] = set()

    def run(self, lines: Iterable[str]) -> TransferSummary:
        lineno = 0
        for lineno, text in enumerate(lines, start=1):
            try:
                if not text.endswith("\n"):
                    raise _Bad("truncated: the line does not end (an incomplete file?)")
                if not text.strip():
                    raise _Bad("empty line")
                try:
                    obj = json.loads(text)
                except (ValueError, RecursionError):
                    raise _Bad("not valid JSON (a corrupt or truncated file?)") from None
                if not isinstance(obj, dict):
                    raise _Bad("not a JSON object")
                kind = obj.get("type")
                if kind == "session":
                    self.finish(lineno)
                    self.session(obj, lineno)
                elif kind == "message":
                    self.message(obj)
                else:
                    raise _Bad(f"unknown line type {kind!r} (expected session or message)")
            except (_Bad, InvalidInputError) as exc:
                raise InvalidInputError(f"{self.name}: line {lineno}: {exc}") from None
        try:
            self.finish(lineno + 1)
        except (_Bad, InvalidInputError) as exc:
            raise InvalidInputError(f"{self.name}: line {lineno + 1}: {exc}") from None
        for root in sorted(self.roots):
            self.c.execute(q.CHAIN_SUMMARY, (root,))
        return TransferSummary(self.created, self.skipped, self.messages)

    def finish(self, lineno: int) -> None:
        if self.current is not None and self.seen != self.expected:
            raise _Bad(
                f"session {self.current} (line {self.current_line}) has {self.seen} of its "
                f"{self.expected} messages before this point: the file is truncated or corrupt"
            )
        self.current = None

    def session(self, d: dict[str, Any], lineno: int) -> None:
        unknown = sorted(set(d) - {*SESSION_FIELDS, "type"})
        if unknown:
            raise _Bad(f"unknown session fields: {', '.join(unknown)}")
        sid = check_id(_field(d, "id"))
        root = check_id(_field(d, "root_id"), "root id")
        parent = d.get("parent_id")
        parent = None if parent is None else check_id(parent, "parent id")
        ended_at = d.get("ended_at")
        end_reason = d.get("end_reason")
        if (ended_at is None) != (end_reason is None):
            raise _Bad("ended_at and end_reason go together")
        count = check_int(_field(d, "message_count"), "message_count", minimum=0)
        row = (
            sid,
            check_source(_field(d, "source")),
            check_text(d.get("model"), "model"),
            check_text(d.get("title"), "title"),
            check_text(d.get("cwd"), "cwd"),
            parent,
            root,
            None if d.get("origin") is None else check_text(d["origin"], "origin"),
            check_timestamp(_field(d, "created_at"), "created_at"),
            check_timestamp(_field(d, "last_active_at"), "last_active_at"),
            None if ended_at is None else check_timestamp(ended_at, "ended_at"),
            None if end_reason is None else check_reason(end_reason),
            check_detail(d.get("end_detail")),
            count,
            check_metadata(d.get("metadata")),
        )
        inserted = self.c.execute(q.INSERT_TRANSFERRED_SESSION, row).rowcount == 1
        self.current, self.current_line = sid, lineno
        self.expected, self.seen = count, 0
        self.writing = inserted
        if inserted:
            self.created += 1
            self.roots.add(root)
            self.store._event(self.c, sid, "imported", {"source": row[1], "origin": "export"})
        else:
            self.skipped += 1

    def message(self, d: dict[str, Any]) -> None:
        if self.current is None:
            raise _Bad("a message before any session")
        unknown = sorted(set(d) - {*MESSAGE_FIELDS, "type"})
        if unknown:
            raise _Bad(f"unknown message fields: {', '.join(unknown)}")
        if _field(d, "session_id") != self.current:
            raise _Bad(f"a message of {d['session_id']!r} inside session {self.current}")
        seq = check_int(_field(d, "seq"), "seq", minimum=1)
        if seq != self.seen + 1:
            raise _Bad(f"message seq {seq} where {self.seen + 1} was expected")
        if seq > self.expected:
            raise _Bad(f"more messages than the session's message_count ({self.expected})")
        state = d.get("state", "active")
        if state not in MESSAGE_STATES:
            raise _Bad(f"invalid message state {state!r}")
        row = (
            self.current,
            seq,
            check_role(_field(d, "role")),
            check_text(d.get("content"), "content"),
            check_tool_calls(d.get("tool_calls")),
            check_text(d.get("tool_call_id"), "tool_call_id"),
            check_text(d.get("tool_name"), "tool_name"),
            check_timestamp(_field(d, "created_at"), "message created_at"),
            check_text(d.get("idem_key"), "idem_key"),
            check_meta(d.get("meta")),
            state,
            check_payload(d.get("payload")),
        )
        self.seen = seq
        if self.writing:
            self.c.execute(q.INSERT_TRANSFERRED_MESSAGE, row)
            self.messages += 1
