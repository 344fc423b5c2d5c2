"""The engine of ``tether chat``: one session over a connection that may drop.

It creates a session (or resumes one), streams replies as they come, and
survives a transient drop: it reconnects by itself and re-attaches with the
last event seq it saw, so the server replays exactly what it missed (or says
to reload, and the client reads the stored history instead). Ctrl+C
interrupts the running reply; a second Ctrl+C, Ctrl+D or ``/quit`` leaves
(Ctrl+C while reconnecting leaves at once).

Imported only when ``tether chat`` runs (it loads the gateway client).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sys
import threading
from typing import Any, TextIO

from websockets.exceptions import WebSocketException

from ..gateway import rpc
from ..gateway.client import Client, ConnectionLost, RemoteError
from .turns import TurnTracker

LEAVE_REASON = "cli_close"
RECONNECT_FOR = 30.0  # seconds of trying before giving up
RESOLVE_PAGES = 20  # listing pages read to resolve an id prefix (1,000 sessions each)


class GatewayGone(Exception):
    """The gateway stayed away for the whole reconnect window."""

    def __init__(self, url: str, session_id: str | None, waited: float = RECONNECT_FOR) -> None:
        hint = f"; {resume_hint(session_id)} once it is back" if session_id else ""
        super().__init__(
            f"lost the gateway at {url} and could not reconnect within {waited:g} s{hint}"
        )


class Ambiguous(Exception):
    """An id prefix that names no session, or several."""


def resume_hint(session_id: str) -> str:
    return f"continue with: tether chat --resume {session_id}"


def ended_message(session_id: str | None, params: dict[str, Any]) -> str:
    """What the chat says when its session was ended from elsewhere."""
    detail = params.get("detail")
    why = f"{params.get('reason')}" + (f": {detail}" if detail else "")
    return f"[session {session_id} was ended ({why})]"


def quit_message(session_id: str, result: dict[str, Any]) -> str:
    """What ``/quit`` says, from the ``session.close {if_alone: true}`` result."""
    others = int(result.get("others_attached") or 0)
    if result.get("ended", True) or others == 0:
        return f"left; {resume_hint(session_id)}"
    clients = "1 other client is" if others == 1 else f"{others} other clients are"
    return f"detached; the session stays open because {clients} attached; {resume_hint(session_id)}"


class Chat:
    """One chat session over a connection that may drop and come back."""

    def __init__(
        self,
        url: str,
        token: str,
        out: TextIO = sys.stdout,
        *,
        reconnect_for: float = RECONNECT_FOR,
    ) -> None:
        self.url = url
        self.reconnect_for = reconnect_for
        self.token = token
        self.out = out
        self.client: Client | None = None
        self.session_id: str | None = None
        self.stream: str | None = None
        self.last_seq = 0  # the last event of this session seen, for exactly-once replay
        self.last_message = 0  # the last stored message seen (for a reload)
        self.turn = TurnTracker()
        self.turn_done = asyncio.Event()
        self.turn_done.set()
        self.interrupting = False
        self.reconnecting = False
        self.leaving = asyncio.Event()
        self.closing = False  # we are closing the session ourselves
        self.ended: dict[str, Any] | None = None  # session.ended params, when it ended
        self.reloaded = False  # events were lost: show the running turn's reply whole

    def say(self, text: str, end: str = "\n") -> None:
        self.out.write(text + end)
        self.out.flush()

    def note(self, text: str) -> None:
        """Status on stderr, so the transcript on stdout stays exactly what was said."""
        print(text, file=sys.stderr, flush=True)

    async def open(self) -> None:
        self.client = await Client.connect(self.url, self.token, on_event=self.on_event)

    async def call(self, method: str, **params: Any) -> Any:
        if self.client is None:
            raise ConnectionLost(method)
        return await self.client.call(method, **params)

    def _sync_turn(self) -> None:
        """Mirror the tracker's state in the event the waiters wait on."""
        if self.turn.done:
            self.reloaded = False
            self.interrupting = False
            self.turn_done.set()
        else:
            self.turn_done.clear()

    # --- events --------------------------------------------------------------------------

    def on_event(self, method: str, p: dict[str, Any]) -> None:
        if p.get("session_id") != self.session_id:
            return
        seq = p.get("seq", 0)
        if seq <= self.last_seq:
            return  # seen already (never expected: the server replays exactly once)
        self.last_seq = seq
        if method == "turn.start":
            self.turn.started(p["turn_id"])
        elif method == "message.delta":
            if not self.reloaded:
                self.say(p["text"], end="")
        elif method == "message":
            m = p["message"]
            self.last_message = max(self.last_message, m["seq"])
            if self.reloaded and m["role"] == "assistant" and m["content"]:
                self.say(f"[reloaded] {m['content']}", end="")  # the deltas had a gap
        elif method == "tool.call":
            self.say(f"[{p['name']} {p['arguments']}]")
        elif method == "tool.result":
            self.say(f"[{p['name']} -> {p['content']}]")
        elif method == "turn.end":
            status = p.get("status")
            if status == "interrupted":
                self.say(" [interrupted]", end="")
            elif status == "error":
                self.say(f"\n[error: {p.get('error')}]", end="")
            self.say("")
            self.turn.ended(p.get("turn_id"))
        elif method == "session.ended":
            self.ended = p
            if not self.closing:
                self.note(ended_message(self.session_id, p))
            self.turn.reset()
            self.leaving.set()
        self._sync_turn()

    # --- sessions ------------------------------------------------------------------------

    async def resolve(self, prefix: str) -> str:
        """The session a unique id prefix names (``tether show`` and ``end`` accept them too)."""
        try:
            await self.call("session.history", session_id=prefix, limit=1)
            return prefix  # a whole id
        except RemoteError as exc:
            if exc.code != rpc.SESSION_NOT_FOUND:
                raise
        needle = prefix.upper()
        found: set[str] = set()
        cursor = None
        for _ in range(RESOLVE_PAGES):
            page = await self.call("session.list", limit=1000, cursor=cursor, include_empty=True)
            for item in page["items"]:
                # A listed row is a chain's tip; its parent may be the one meant.
                for sid in (item["id"], item.get("parent_id"), item.get("root_id")):
                    if sid and sid.upper().startswith(needle):
                        found.add(sid)
            cursor = page["next_cursor"]
            if cursor is None:
                break
        if len(found) == 1:
            return found.pop()
        if not found:
            raise Ambiguous(f"no session with id {prefix!r}")
        raise Ambiguous(
            f"{prefix!r} names {len(found)} sessions ({', '.join(sorted(found)[:3])}...): "
            "give more of the id"
        )

    async def start(self, resume: str | None) -> None:
        if resume is None:
            self.adopt(await self.call("session.create"))
            self.say(f"session {self.session_id} (new)")
            return
        resume = await self.resolve(resume)
        try:
            result = await self.call("session.resume", session_id=resume)
            status = "resumed"
        except RemoteError as exc:
            if exc.code != rpc.SESSION_ENDED:
                raise
            # Ended is ended: continue it as a new session in the same chain.
            result = await self.call("session.create", parent_id=resume)
            status = f"continues {resume}, which ended ({(exc.data or {}).get('reason')})"
        history = await self.call("session.history", session_id=resume, limit=1000)
        for m in history["messages"]:
            if m["role"] in ("user", "assistant") and m["content"]:
                mark = " [interrupted]" if m["interrupted"] else ""
                self.say(f"{'you' if m['role'] == 'user' else '   '}> {m['content']}{mark}")
        self.adopt(result)
        if self.session_id == resume:
            self.last_message = history["messages"][-1]["seq"] if history["messages"] else 0
        self.say(f"session {self.session_id} ({status})")
        if result["turn_id"] is not None:
            self.turn.started(result["turn_id"])
            self._sync_turn()

    def adopt(self, result: dict[str, Any]) -> None:
        self.session_id = result["session_id"]
        self.stream = result["stream"]
        self.last_seq = result["last_seq"]

    async def reconnect(self) -> bool:
        """Re-open and re-attach after a drop; False if the gateway stays away or we leave."""
        self.reconnecting = True
        try:
            attempt = asyncio.create_task(self._reconnect())
            leave = asyncio.create_task(self.leaving.wait())
            await asyncio.wait({attempt, leave}, return_when=asyncio.FIRST_COMPLETED)
            if not attempt.done():  # Ctrl+C while reconnecting: leave now, not in 30 s
                attempt.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await attempt
                return False
            leave.cancel()
            return attempt.result()
        finally:
            self.reconnecting = False

    async def _reconnect(self) -> bool:
        deadline = asyncio.get_running_loop().time() + self.reconnect_for
        attempt = 0
        while True:
            try:
                await self.open()
                result = await self.call(
                    "session.resume",
                    session_id=self.session_id,
                    since=self.last_seq,
                    stream=self.stream,
                )
                break
            except RemoteError as exc:
                if exc.code != rpc.SESSION_ENDED:
                    raise
                # Ended while we were away (the gateway restarted, say): carry on in its chain.
                result = await self.call("session.create", parent_id=self.session_id)
                why = (exc.data or {}).get("reason")
                self.note(
                    f"[session {self.session_id} ended ({why}); continuing it as "
                    f"{result['session_id']}]"
                )
                self.adopt(result)
                self.turn.reset()
                self._sync_turn()
                return True
            except (TimeoutError, OSError, WebSocketException, ConnectionLost):
                await self.drop()
            if asyncio.get_running_loop().time() > deadline:
                return False
            attempt += 1
            await asyncio.sleep(random.uniform(0, min(2.0, 0.05 * 2**attempt)))  # full jitter
        if result["reload"]:
            await self.reload(result)
        return True

    async def recover(self) -> None:
        self.note(
            f"[connection lost; reconnecting for up to {RECONNECT_FOR:.0f} s (Ctrl+C leaves)]"
        )
        if not await self.reconnect():
            if self.leaving.is_set():
                return
            raise GatewayGone(self.url, self.session_id, self.reconnect_for)
        self.note("[reconnected]")

    async def reload(self, result: dict[str, Any]) -> None:
        """The missed events are gone: show the stored messages we have not shown."""
        self.stream, self.last_seq = result["stream"], result["last_seq"]
        history = await self.call(
            "session.history", session_id=self.session_id, after_seq=self.last_message
        )
        for m in history["messages"]:
            self.last_message = m["seq"]
            if m["role"] == "assistant" and m["content"]:
                self.say(f"\n[reloaded] {m['content']}")
        if result["state"] == "running" and result["turn_id"] is not None:
            self.turn.started(result["turn_id"])
            self.reloaded = True  # its reply is printed whole when it is stored
        else:
            self.turn.reset()
        self._sync_turn()

    async def drop(self) -> None:
        if self.client is not None:
            await self.client.close()

    # --- the conversation ----------------------------------------------------------------

    async def submit(self, text: str) -> None:
        self.turn.submitting()
        self._sync_turn()
        while True:
            try:
                result = await self.call("prompt.submit", session_id=self.session_id, text=text)
            except ConnectionLost:
                if not await self.reconnect():
                    self.turn.failed()
                    self._sync_turn()
                    if self.leaving.is_set():
                        return
                    raise GatewayGone(self.url, self.session_id, self.reconnect_for) from None
                if self.turn.began is not None or self.ended is not None:
                    return  # it got through: the replay showed its turn
                continue
            except BaseException:
                self.turn.failed()
                self._sync_turn()
                raise
            self.turn.submitted(result["turn_id"])
            self._sync_turn()
            return

    async def wait_turn(self) -> None:
        """Wait for the reply, reconnecting as often as needed."""
        while not self.turn_done.is_set() and not self.leaving.is_set():
            assert self.client is not None
            waiter = asyncio.create_task(self.turn_done.wait())
            leave = asyncio.create_task(self.leaving.wait())
            lost = asyncio.create_task(self.client.lost.wait())
            await asyncio.wait({waiter, leave, lost}, return_when=asyncio.FIRST_COMPLETED)
            for task in (waiter, leave, lost):
                task.cancel()
            if (
                self.client.lost.is_set()
                and not self.turn_done.is_set()
                and not self.leaving.is_set()
            ):
                await self.recover()

    async def next_line(self, lines: asyncio.Queue[str | None]) -> str | None:
        """The next line typed; meanwhile, reconnect if the connection drops."""
        while True:
            assert self.client is not None
            get = asyncio.create_task(lines.get())
            leave = asyncio.create_task(self.leaving.wait())
            lost = asyncio.create_task(self.client.lost.wait())
            await asyncio.wait([get, leave, lost], return_when=asyncio.FIRST_COMPLETED)
            for task in (leave, lost):
                task.cancel()
            if get.done():
                return get.result()
            get.cancel()  # Queue.get is safe to cancel: no line is lost
            if self.leaving.is_set():
                return None
            await self.recover()

    def on_sigint(self) -> None:
        if self.reconnecting or self.turn.done or self.interrupting:
            self.leaving.set()
            return
        self.interrupting = True
        task = asyncio.ensure_future(self._interrupt())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _interrupt(self) -> None:
        with contextlib.suppress(ConnectionLost, RemoteError):
            await self.call("session.interrupt", session_id=self.session_id)

    async def close_session(self) -> dict[str, Any]:
        """``session.close``, ending the session only if no other client is attached."""
        return await self.call(
            "session.close", session_id=self.session_id, reason=LEAVE_REASON, if_alone=True
        )

    async def leave(self) -> None:
        """Close (or detach from) the session and say how to come back."""
        if self.session_id is None:
            await self.drop()
            return
        message = f"left; {resume_hint(self.session_id)}"
        if self.ended is None and self.client and not self.client.lost.is_set():
            self.closing = True
            with contextlib.suppress(ConnectionLost, RemoteError, TimeoutError):
                message = quit_message(
                    self.session_id, await asyncio.wait_for(self.close_session(), 5)
                )
        self.say(message)
        await self.drop()


def _stdin_lines(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
    """Read stdin on a daemon thread (a blocked read must not keep the process alive)."""

    def pump() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line.rstrip("\n"))
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=pump, name="tether-chat-stdin", daemon=True).start()


async def run_chat(url: str, token: str, resume: str | None) -> None:
    chat = Chat(url, token)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, chat.on_sigint)
    interactive = sys.stdin.isatty()
    try:
        await chat.open()
        await chat.start(resume)
        await chat.wait_turn()
        if interactive:
            chat.say("Ctrl+C interrupts a reply (twice: leaves); Ctrl+D or /quit leaves.")
        lines: asyncio.Queue[str | None] = asyncio.Queue()
        _stdin_lines(loop, lines)
        while not chat.leaving.is_set():
            if interactive:
                chat.say("you> ", end="")
            line = await chat.next_line(lines)
            if chat.leaving.is_set():
                break
            if line is None or line.strip() in ("/quit", "/exit"):
                break
            if not line.strip():
                continue
            await chat.submit(line)
            await chat.wait_turn()
        if interactive:
            chat.say("")
        await chat.leave()
    finally:
        loop.remove_signal_handler(signal.SIGINT)
