"""The local control socket: a Unix stream socket speaking the command JSON, one object per line.

It is a thin transport in front of the shared Dispatcher (gunicorn's ctl/ split: framing, a
table of handlers, a small server, a client). Replies go back on the same connection. Two extra,
socket-only requests stream: ``{"id": ..., "op": "events.subscribe"}`` answers once and then sends
every event as a line ``{"event": ...}`` until the client hangs up (used by ``edgeagent install``
for its progress bar and by ``edgeagent top``); ``outputs.subscribe`` does the same with each
output summary as a line ``{"output": {...}}`` (``edgeagent output --follow``).
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import threading
from pathlib import Path
from typing import Callable, Protocol

from edgeagent.control.dispatcher import Dispatcher, parse_request
from edgeagent.errors import EdgeAgentError
from edgeagent.events import EventBus


class Stream(Protocol):
    """What a subscription streams from: the event bus, the output summaries."""

    def subscribe(self, sink: Callable[[dict], None]) -> Callable[[], None]: ...

    def recent(self, n: int) -> list[dict]: ...

log = logging.getLogger("edgeagent.control")

MAX_LINE = 4 << 20
MAX_OUTBOX = 1 << 20  # bytes a client may fall behind before it is dropped


class _Conn:
    """One client. Sending never blocks the sender (the event bus, the dispatcher, the updater):
    what the socket does not take at once waits in a bounded outbox that the connection's own
    thread flushes; a client that falls MAX_OUTBOX bytes behind (a suspended `edgeagent top`,
    requests sent without reading the replies) is dropped with one log line."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.open = True
        self.out = bytearray()

    def send(self, obj: dict) -> None:
        data = (json.dumps(obj, separators=(",", ":"), default=str) + "\n").encode()
        with self.lock:
            if not self.open:
                raise OSError("connection closed")
            if not self.out:
                try:
                    n = self.sock.send(data, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    n = 0
                data = data[n:]
            self.out += data
            if len(self.out) > MAX_OUTBOX:
                log.warning("control: a client fell %d bytes behind (it does not read); dropped", len(self.out))
                self._drop()
                raise OSError("client dropped: not reading")

    def flush(self) -> None:
        with self.lock:
            if not self.out or not self.open:
                return
            try:
                n = self.sock.send(self.out, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                self._drop()
                return
            del self.out[:n]

    def _drop(self) -> None:
        self.open = False
        self.out.clear()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # the connection's thread sees EOF and ends
        except OSError:
            pass


class ControlServer:
    def __init__(self, path: str | os.PathLike, dispatcher: Dispatcher, events: EventBus | None = None,
                 outputs: Callable[[], Stream | None] = lambda: None) -> None:
        self.path = Path(path)
        self.dispatcher = dispatcher
        self.events = events
        self._outputs = outputs  # a getter: the output publisher exists once the model is loaded
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.settimeout(1.0)
                probe.connect(str(self.path))
            except (ConnectionRefusedError, FileNotFoundError):
                self.path.unlink()  # stale socket of a daemon that died
            except OSError:  # a timeout: a daemon that is busy or hung, but there
                raise EdgeAgentError("control.in_use", f"{self.path}: another edgeagent daemon holds it "
                                                       f"and does not answer") from None
            else:
                raise EdgeAgentError("control.in_use", f"{self.path}: another edgeagent daemon is running")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o117)  # the socket is created 0660: owner and group (operators) only
        try:
            sock.bind(str(self.path))
        except OSError as e:
            sock.close()
            raise EdgeAgentError("control.bind_failed", f"{self.path}: {e.strerror}") from None
        finally:
            os.umask(old)
        os.chmod(self.path, 0o660)
        sock.listen(16)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept, name="control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(2.0)
        if self._sock is None:
            return  # never bound: the path may belong to another daemon
        self._sock.close()
        try:
            self.path.unlink()
        except OSError:
            pass

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                s, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            s.settimeout(None)
            try:
                threading.Thread(target=self._serve, args=(s,), name="control-conn", daemon=True).start()
            except RuntimeError as e:  # no thread to be had (a pids limit): refuse this one, keep accepting
                log.error("control: connection refused: %s", e)
                s.close()

    def _serve(self, s: socket.socket) -> None:
        conn = _Conn(s)
        unsubscribe = None
        buf = b""
        try:
            while not self._stopping.is_set():
                readable, writable, _ = select.select([s], [s] if conn.out else [], [], 0.2)
                if writable:
                    conn.flush()
                if not readable:
                    continue
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > MAX_LINE and b"\n" not in buf:
                    conn.send({"id": None, "ok": False, "error": {"code": "cmd.too_large", "message": "line too long"}})
                    break
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    if self._is_subscribe(line):
                        if unsubscribe is None:
                            unsubscribe = self._subscribe(conn, line)
                        continue
                    self.dispatcher.submit(line, conn.send, source="control")
        except OSError:
            pass
        finally:
            if unsubscribe:
                unsubscribe()
            with conn.lock:
                conn.open = False
            s.close()

    @staticmethod
    def _is_subscribe(line: bytes) -> bool:
        return b'"events.subscribe"' in line or b'"outputs.subscribe"' in line

    def _subscribe(self, conn: _Conn, line: bytes):
        try:
            req = parse_request(line)
        except EdgeAgentError as e:
            conn.send({"id": None, "ok": False, "error": e.to_dict()})
            return None
        stream: Stream | None = {"events.subscribe": lambda: self.events,
                                 "outputs.subscribe": self._outputs}.get(req.op, lambda: None)()
        if req.op not in ("events.subscribe", "outputs.subscribe"):
            self.dispatcher.submit(line, conn.send, source="control")
            return None
        if stream is None:
            conn.send({"id": req.id, "ok": False, "error": {
                "code": "output.disabled", "message": "no output summaries: [output] publish is \"none\""
                if req.op == "outputs.subscribe" else "no event stream"}})
            return None
        wrap = (lambda m: m) if req.op == "events.subscribe" else (lambda m: {"output": m})

        def sink(item: dict) -> None:
            try:
                conn.send(wrap(item))
            except OSError:
                pass

        recent = stream.recent(20 if req.op == "events.subscribe" else 1)
        conn.send({"id": req.id, "ok": True, "result": {"subscribed": True, "recent": recent}})
        return stream.subscribe(sink)
