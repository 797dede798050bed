"""Client side of the control socket (the CLI and `edgeagent top` use it)."""

from __future__ import annotations

import itertools
import json
import os
import socket
from typing import Any, Callable, Iterator

from edgeagent.errors import CommandError, EdgeAgentError

_ids = itertools.count(1)


class DaemonNotRunning(EdgeAgentError):
    code = "control.not_running"


class ControlClient:
    def __init__(self, path: str | os.PathLike, timeout: float = 10.0) -> None:
        self.path = str(path)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""

    def connect(self) -> "ControlClient":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            raise DaemonNotRunning(message=f"no daemon is listening on {self.path}") from None
        except PermissionError:
            s.close()
            raise EdgeAgentError("control.permission", f"{self.path}: permission denied (are you in the edgeagent group?)") from None
        self._sock = s
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "ControlClient":
        return self.connect() if self._sock is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _readline(self, timeout: float | None) -> dict:
        assert self._sock is not None
        self._sock.settimeout(timeout)
        while b"\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise EdgeAgentError("control.closed", "the daemon closed the connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def send(self, op: str, args: dict | None = None) -> str:
        if self._sock is None:
            self.connect()
        rid = f"cli-{os.getpid()}-{next(_ids)}"
        msg = {"id": rid, "op": op, "args": args or {}}
        assert self._sock is not None
        self._sock.sendall((json.dumps(msg) + "\n").encode())
        return rid

    def call(self, op: str, args: dict | None = None, *, timeout: float | None = None,
             on_event: Callable[[dict], None] | None = None) -> Any:
        """Send one command and wait for its reply; raise CommandError on an error reply."""
        rid = self.send(op, args)
        while True:
            msg = self._readline(timeout or self.timeout)
            if "event" in msg:
                if on_event:
                    on_event(msg)
                continue
            if msg.get("id") != rid:
                continue
            if msg.get("ok"):
                return msg.get("result")
            err = msg.get("error") or {}
            raise CommandError(err.get("code", "cmd.failed"), err.get("message", ""))

    def _stream(self, op: str, pick: Callable[[dict], dict | None], timeout: float | None) -> Iterator[dict]:
        result = self.call(op)
        yield from result.get("recent", [])
        while True:
            try:
                msg = self._readline(timeout)
            except socket.timeout:
                return
            item = pick(msg)
            if item is not None:
                yield item

    def events(self, timeout: float | None = None) -> Iterator[dict]:
        """Subscribe and yield events as they come (first the recent ones)."""
        return self._stream("events.subscribe", lambda m: m if "event" in m else None, timeout)

    def outputs(self, timeout: float | None = None) -> Iterator[dict]:
        """Subscribe and yield output summaries as they come (first the latest one)."""
        return self._stream("outputs.subscribe", lambda m: m.get("output"), timeout)


def daemon_running(path: str | os.PathLike) -> bool:
    try:
        with ControlClient(path, timeout=2.0) as c:
            c.call("ping")
        return True
    except EdgeAgentError:
        return False
    except OSError:
        return False
