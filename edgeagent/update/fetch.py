"""The one fetcher: every download goes through here (python-tuf's rule).

file://, http:// and https:// into a `.part` file under staging, resumed with an HTTP Range
request after an interruption (and after a restart: the .part survives), never reading more than
the manifest's size, hashed as it streams to disk (a resumed .part is hashed once first), then
checked whole before it is used.

Every download is bounded: a read that gets no byte for `stall_s` ends the attempt (it is
retried with Range), the whole fetch ends at `deadline` (monotonic) whatever the server does
(a server trickling one byte every 5 s cannot hold the updater), and a cancel closes the socket
at once. Every transport failure becomes one TransportError("download.failed", why); a deadline
is TransportError("download.timeout"); bad data is UpdateRejected with its own code, a full disk
is update.no_space.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import re
import socket
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from edgeagent.errors import TransportError
from edgeagent.state.atomic import fsync_dir, open_regular
from edgeagent.update.cancel import NEVER, Cancel
from edgeagent.update.pacing import Pacer
from edgeagent.update.errors import UpdateRejected
from edgeagent.update.staging import PhaseProgress, Progress, no_space

CHUNK = 64 * 1024
_CONTENT_RANGE = re.compile(r"\A\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*\Z")


class _PartHash:
    """sha256 of the .part file's bytes, kept in step with the file across attempts; if the file
    and the hash ever disagree, the part is hashed again from disk (never trusted on length)."""

    def __init__(self) -> None:
        self.h, self.n = hashlib.sha256(), 0

    def sync(self, fd: int, have: int) -> None:
        if self.n == have:
            return
        self.h, self.n = hashlib.sha256(), 0
        pos = 0
        while pos < have:
            b = os.pread(fd, min(1 << 20, have - pos), pos)
            if not b:
                break
            self.h.update(b)
            pos += len(b)
        self.n = pos

    def update(self, b: bytes) -> None:
        self.h.update(b)
        self.n += len(b)


def _fail(url: str, why: object) -> TransportError:
    return TransportError("download.failed", f"{_redact(url)}: {why}")


def _redact(url: str) -> str:
    """A URL for messages: no userinfo, no query (presigned URLs carry credentials there)."""
    try:
        u = urllib.parse.urlsplit(url)
        host = u.hostname or ""
        port = f":{u.port}" if u.port else ""
        return urllib.parse.urlunsplit((u.scheme, host + port, u.path, "", ""))
    except ValueError:
        return "(invalid URL)"


def _sock_of(resp: Any) -> socket.socket | None:
    """The socket under a urllib response, so a cancel can shut it down from another thread."""
    raw = getattr(getattr(resp, "fp", None), "raw", None)
    s = getattr(raw, "_sock", None)
    return s if isinstance(s, socket.socket) else None


def _shutdown(resp: Any) -> None:
    s = _sock_of(resp)
    if s is not None:
        try:
            s.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv() at once
        except OSError:
            pass


def _open_http(url: str, have: int, expected_size: int, stall_s: float) -> tuple[Any, int]:
    """Open the response; returns (response or None when complete, offset it starts at).
    Offset 0 with have > 0 means: the server sends it all again, truncate first."""
    req = urllib.request.Request(url, headers={"User-Agent": "edgeagent", "Accept-Encoding": "identity"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=stall_s)  # noqa: S310 - scheme checked by the caller
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and have == expected_size:
            return None, have  # nothing left to send: the part is complete
        if e.code == 416:
            return "restart", 0  # the remote file is shorter than our part: start over
        raise _fail(url, f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
        raise _fail(url, getattr(e, "reason", e) or type(e).__name__) from None
    start = 0
    if resp.status == 206:
        cr = resp.headers.get("Content-Range")
        m = _CONTENT_RANGE.match(cr or "")
        if cr is not None and (not m or int(m.group(1)) != have):
            resp.close()
            raise _fail(url, f"HTTP 206 with Content-Range {cr!r} for bytes={have}-")
        if m and m.group(3) != "*" and int(m.group(3)) != expected_size:
            resp.close()
            raise UpdateRejected("update.payload_size", f"{_redact(url)}: server has {m.group(3)} bytes, "
                                                        f"manifest says {expected_size}")
        start = have
    length = resp.headers.get("Content-Length")
    if length is not None and length.isascii() and length.isdigit() and len(length) < 19 \
            and start + int(length) > expected_size:
        resp.close()
        raise UpdateRejected("update.payload_size", f"{_redact(url)}: server announces {start + int(length)} bytes, "
                                                    f"manifest says {expected_size}")
    return resp, start


class _LocalFile:
    """file:// as a response: a regular file only (a FIFO or a device could block forever or
    never end), opened without blocking."""

    def __init__(self, url: str, offset: int) -> None:
        src = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
        try:
            fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise _fail(url, e.strerror) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise _fail(url, "not a regular file")
        self.f = os.fdopen(fd, "rb")
        self.f.seek(offset)

    def read1(self, n: int) -> bytes:
        return self.f.read(n)

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> "_LocalFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _attempt(url: str, part: Path, expected_size: int, ph: _PartHash, rep: PhaseProgress, *, stall_s: float,
             deadline: float, cancel: Cancel, chunk: int, pace: Pacer) -> None:
    """One try: append to the .part file from where it ends."""
    fd = open_regular(part, os.O_RDWR)  # never through a planted symlink
    try:
        have = os.fstat(fd).st_size
        if have > expected_size:
            os.ftruncate(fd, 0)
            have = 0
        if url[:5].lower() == "file:":
            resp: Any = _LocalFile(url, have)
            done = have
        else:
            resp, done = _open_http(url, have, expected_size, stall_s)
            if resp is None:
                ph.sync(fd, have)
                return
            if resp == "restart" or (have and done == 0):
                os.ftruncate(fd, 0)
                if resp == "restart":
                    raise _fail(url, f"HTTP 416 for bytes={have}-; restarting from 0")
        ph.sync(fd, done)
        rep(done, force=True)
        read = getattr(resp, "read1", None) or resp.read
        with resp, cancel.hook(lambda: _shutdown(resp)):
            while True:
                cancel.check()
                if time.monotonic() > deadline:
                    raise TransportError("download.timeout", f"{_redact(url)}: not complete by the download deadline "
                                                             f"({done} of {expected_size} bytes)")
                try:
                    b = read(pace.chunk(chunk))
                except (OSError, http.client.HTTPException, ValueError) as e:
                    cancel.check()
                    if isinstance(e, socket.timeout) or getattr(e, "errno", None) == errno.ETIMEDOUT:
                        raise _fail(url, f"stalled: no byte for {stall_s:.0f} s at {done} of {expected_size}") from None
                    raise _fail(url, f"interrupted at {done} of {expected_size} bytes ({e or type(e).__name__})") from None
                if not b:
                    break
                n = len(b)
                if done + n > expected_size:
                    raise UpdateRejected("update.payload_size", f"{_redact(url)}: more than the manifest's "
                                                                f"{expected_size} bytes")
                try:
                    os.pwrite(fd, b, done)
                except OSError as e:
                    raise (no_space(e, part) or _fail(url, f"writing {part.name}: {e.strerror}")) from None
                ph.update(b)
                done += n
                rep(done)
                pace.take(n, cancel)  # update.max_bytes_per_s: the socket is not read faster than that
        if done < expected_size:
            raise _fail(url, f"short read: connection closed at {done} of {expected_size} bytes")
    finally:
        try:
            os.fsync(fd)  # what we have survives a power cut, for the next resume
        except OSError:
            ph.n = -1
        os.close(fd)


def fetch_to_staging(url: str, *, dest: Path, expected_size: int, expected_sha256: str, max_bytes: int,
                     progress: Progress | None = None, stall_s: float = 60.0, deadline_s: float = 3600.0,
                     deadline: float | None = None, cancel: Cancel = NEVER, chunk: int = CHUNK,
                     backoff: float = 0.5, retries: int | None = None, pace: Pacer | None = None) -> Path:
    """Download url to dest (a verified payload), resuming from dest's .part file.

    Transport failures are retried (backoff doubling from `backoff` s, at most 8 s) until the
    deadline (or `retries` times when given), each try resuming where the last stopped; the .part is kept for the next call.
    Bad data is never retried and its .part is deleted."""
    scheme = url.split(":", 1)[0].lower()
    if scheme not in ("file", "http", "https"):
        raise UpdateRejected("update.malformed", f"payload_url: unsupported scheme {scheme!r}")
    if expected_size > max_bytes:
        raise UpdateRejected("update.too_large", f"payload {expected_size} bytes > max_payload_bytes {max_bytes}")
    dest = Path(dest)
    part = dest.with_suffix(".part")
    rep = PhaseProgress("download", expected_size, progress)
    ph = _PartHash()
    pace = pace or Pacer(lambda: 0)
    end = deadline if deadline is not None else time.monotonic() + deadline_s
    delay = backoff
    attempt = 0
    while True:
        attempt += 1
        try:
            _attempt(url, part, expected_size, ph, rep, stall_s=stall_s, deadline=end, cancel=cancel, chunk=chunk,
                     pace=pace)
            break
        except UpdateRejected as e:
            if e.code not in ("update.no_space", "update.cancelled"):
                part.unlink(missing_ok=True)  # not the manifest's file: nothing worth resuming
            raise
        except TransportError as e:
            if e.code == "download.timeout" or scheme == "file" or time.monotonic() + delay > end \
                    or (retries is not None and attempt > retries):
                raise
            if cancel.wait(delay):
                cancel.check()
            delay = min(delay * 2, 8.0)
    size = part.stat().st_size
    if size != expected_size:  # a file:// source of the wrong length
        part.unlink(missing_ok=True)
        raise UpdateRejected("update.payload_size", f"{_redact(url)}: {size} bytes, manifest says {expected_size}")
    if ph.n != size:
        fd = open_regular(part, os.O_RDONLY)
        try:
            ph.sync(fd, size)
        finally:
            os.close(fd)
    if ph.h.hexdigest() != expected_sha256:
        part.unlink(missing_ok=True)
        raise UpdateRejected("update.payload_hash", f"{_redact(url)}: sha256 differs from the manifest")
    rep(size, force=True)
    os.replace(part, dest)
    fsync_dir(dest.parent)
    return dest


