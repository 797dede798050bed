"""One command dispatcher for every transport (MQTT and the local control socket).

Pure framing and validation here, a table of handlers, and one worker thread: transports only
call ``submit`` (it enqueues and returns), so no handler ever runs on paho's network thread or in
a socket reader. A malformed command gets an error reply with a stable code when it carries a
usable id, and a log line; nothing here can crash the daemon.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable

from edgeagent.errors import CommandError, EdgeAgentError
from edgeagent.record import Record

log = logging.getLogger("edgeagent.cmd")

MAX_COMMAND_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_ID_LEN = 128

Reply = Callable[[dict], None]


class _Deferred:
    def __repr__(self) -> str:
        return "DEFERRED"


DEFERRED = _Deferred()  # a handler returns this when it will reply later through its Context


@dataclass(frozen=True, eq=False, repr=False)
class Request(Record):
    """One command, whichever way it came (socket, MQTT): handlers see no transport."""

    id: str | None
    op: str
    args: dict


def _depth(obj: Any, limit: int) -> int:
    """Nesting depth, iteratively (a deep document must not blow the Python stack)."""
    stack = [(obj, 1)]
    deepest = 0
    while stack:
        o, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)
    return deepest


def _usable_id(obj: Any) -> str | None:
    if isinstance(obj, dict):
        cid = obj.get("id")
        if isinstance(cid, str) and 0 < len(cid) <= MAX_ID_LEN:
            return cid
    return None


def parse_request(raw: bytes | str | dict) -> Request:
    """Validate one command; raise CommandError (with .request_id when one was readable)."""
    obj: Any = raw
    if isinstance(raw, (bytes, bytearray, str)):
        if len(raw) > MAX_COMMAND_BYTES:
            raise CommandError("cmd.too_large", f"command is {len(raw)} bytes, limit {MAX_COMMAND_BYTES}")
        try:
            obj = json.loads(raw)
        except RecursionError:
            raise CommandError("cmd.too_deep", f"nesting deeper than {MAX_DEPTH}") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise CommandError("cmd.malformed_json", f"not JSON: {e}") from None
    rid = _usable_id(obj)
    try:
        if not isinstance(obj, dict):
            raise CommandError("cmd.not_object", f"command must be a JSON object, got {type(obj).__name__}")
        if _depth(obj, MAX_DEPTH) > MAX_DEPTH:
            raise CommandError("cmd.too_deep", f"nesting deeper than {MAX_DEPTH}")
        unknown = set(obj) - {"id", "op", "args"}
        if unknown:
            raise CommandError("cmd.bad_field", f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
        if "id" not in obj or rid is None:
            raise CommandError("cmd.bad_field", f"id: must be a non-empty string of at most {MAX_ID_LEN} chars")
        op = obj.get("op")
        if not isinstance(op, str) or not op:
            raise CommandError("cmd.bad_field", "op: must be a non-empty string")
        args = obj.get("args", {})
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise CommandError("cmd.bad_field", "args: must be an object")
    except CommandError as e:
        e.request_id = rid  # type: ignore[attr-defined]
        raise
    return Request(rid, op, args)


def ok_reply(rid: str | None, result: Any) -> dict:
    return {"id": rid, "ok": True, "result": result if result is not None else {}}


def error_reply(rid: str | None, err: EdgeAgentError) -> dict:
    return {"id": rid, "ok": False, "error": err.to_dict()}


class Context:
    """What a handler knows about its request, and how it answers later (DEFERRED)."""

    def __init__(self, request: Request, reply: Reply, source: str) -> None:
        self.request = request
        self.source = source
        self._reply = reply
        self._done = False
        self._lock = threading.Lock()

    def reply(self, result: Any) -> None:
        self._send(ok_reply(self.request.id, result))

    def fail(self, err: EdgeAgentError) -> None:
        self._send(error_reply(self.request.id, err))

    def _send(self, msg: dict) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        try:
            self._reply(msg)
        except OSError as e:  # a client that hung up or was dropped (said once, where it was dropped)
            log.debug("reply to %s command %s not delivered: %s", self.source, self.request.id, e)
        except Exception:  # noqa: BLE001 - a vanished client must not hurt the daemon
            log.warning("reply to %s command %s could not be delivered", self.source, self.request.id)


Handler = Callable[[dict, Context], Any]


class Dispatcher:
    def __init__(self, max_pending: int = 256) -> None:
        self._ops: dict[str, Handler] = {}
        self._q: queue.Queue = queue.Queue(maxsize=max_pending)
        self._thread: threading.Thread | None = None

    def register(self, op: str, handler: Handler) -> None:
        self._ops[op] = handler

    @property
    def ops(self) -> list[str]:
        return sorted(self._ops)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(timeout)

    def submit(self, raw: bytes | str | dict, reply: Reply, source: str = "control") -> None:
        """Queue a command; never blocks (a full queue answers cmd.busy at once)."""
        try:
            self._q.put_nowait((raw, reply, source))
        except queue.Full:
            self._safe_reply(reply, error_reply(_peek_id(raw), CommandError("cmd.busy", "too many pending commands")))

    def handle(self, raw: bytes | str | dict, reply: Reply, source: str = "control") -> None:
        """Run one command now, on the calling thread (the worker, tests and the offline CLI)."""
        try:
            req = parse_request(raw)
        except CommandError as e:
            rid = getattr(e, "request_id", None)
            log.warning("rejected %s command (id=%s): %s", source, rid, e)
            if rid is not None or source == "control":
                self._safe_reply(reply, error_reply(rid, e))
            return
        ctx = Context(req, reply, source)
        handler = self._ops.get(req.op)
        if handler is None:
            ctx.fail(CommandError("cmd.unknown_op", f"unknown op {req.op!r}; known: {', '.join(self.ops)}"))
            return
        try:
            result = handler(req.args, ctx)
        except EdgeAgentError as e:
            log.info("%s command %s (%s) refused: %s", source, req.id, req.op, e)
            ctx.fail(e)
            return
        except Exception as e:  # noqa: BLE001 - a handler bug answers, it does not crash
            log.exception("%s command %s (%s) failed", source, req.id, req.op)
            ctx.fail(CommandError("cmd.internal", f"{type(e).__name__}: {e}"))
            return
        if result is not DEFERRED:
            ctx.reply(result)

    def _work(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            self.handle(*item)

    @staticmethod
    def _safe_reply(reply: Reply, msg: dict) -> None:
        try:
            reply(msg)
        except Exception:  # noqa: BLE001
            log.warning("reply could not be delivered")


def _peek_id(raw: Any) -> str | None:
    if isinstance(raw, dict):
        return _usable_id(raw)
    try:
        return _usable_id(json.loads(raw))
    except Exception:  # noqa: BLE001
        return None


def require(args: dict, key: str, typ: type | tuple, *, optional: bool = False, default: Any = None) -> Any:
    """Fetch a typed argument or raise cmd.bad_args naming it."""
    if key not in args:
        if optional:
            return default
        raise CommandError("cmd.bad_args", f"args.{key}: required")
    v = args[key]
    if isinstance(v, bool) and typ in (int, float, (int, float)):
        raise CommandError("cmd.bad_args", f"args.{key}: expected a number")
    if not isinstance(v, typ):
        name = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise CommandError("cmd.bad_args", f"args.{key}: expected {name}, got {type(v).__name__}")
    return v
