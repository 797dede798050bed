"""The one fetcher: every download goes through here (python-tuf's rule).

file://, http:// and https:// into a `.part` file under staging, resumed with an HTTP Range
request after an interruption (and after a restart: the .part survives), never reading more than
the manifest's size, hashed as it streams to disk (a resumed .part is hashed once first), then
checked whole before it is used. Every transport failure becomes one
TransportError("download.failed", why); bad data is UpdateRejected with its own code, and a full
disk is update.no_space.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from edgeagent.errors import TransportError
from edgeagent.state.atomic import fsync_dir
from edgeagent.update.errors import UpdateRejected
from edgeagent.update.staging import PhaseProgress, Progress, no_space, write_durably

CHUNK = 64 * 1024
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")


class _PartHash:
    """sha256 of the .part file's bytes, kept in step with the file across attempts.

    If the file and the hash ever disagree (a failed write, a restart from 0), the part is
    hashed again from disk, so a resumed file is never trusted on its length alone."""

    def __init__(self) -> None:
        self.h, self.n = hashlib.sha256(), 0

    def sync(self, part: Path, have: int) -> None:
        if self.n == have:
            return
        self.h, self.n = hashlib.sha256(), 0
        if have:
            with open(part, "rb") as fh:
                for b in iter(lambda: fh.read(1 << 20), b""):
                    self.h.update(b)
                    self.n += len(b)

    def update(self, b: bytes) -> None:
        self.h.update(b)
        self.n += len(b)


def _fail(url: str, why: object) -> TransportError:
    return TransportError("download.failed", f"{url}: {why}")


def _open_http(url: str, have: int, expected_size: int, part: Path, timeout: float):
    """Open the response; returns (response, offset it starts at)."""
    req = urllib.request.Request(url, headers={"User-Agent": "edgeagent", "Accept-Encoding": "identity"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - scheme checked by the caller
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416:
            if have == expected_size:
                return None, have  # nothing left to send: the part is complete
            part.unlink(missing_ok=True)  # the remote file is shorter than our part: start over
            raise _fail(url, f"HTTP 416 for bytes={have}-; restarting from 0") from None
        raise _fail(url, f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _fail(url, getattr(e, "reason", e)) from None
    start = 0
    if resp.status == 206:
        cr = resp.headers.get("Content-Range")
        m = _CONTENT_RANGE.match(cr or "")
        if cr is not None and (not m or int(m.group(1)) != have):  # (no header at all: trust it; sha256 decides)
            resp.close()
            part.unlink(missing_ok=True)
            raise _fail(url, f"HTTP 206 with Content-Range {cr!r} for bytes={have}-")
        if m and m.group(3) != "*" and int(m.group(3)) != expected_size:
            resp.close()
            raise UpdateRejected("update.payload_size", f"{url}: server has {m.group(3)} bytes, manifest says {expected_size}")
        start = have
    elif have:
        part.unlink(missing_ok=True)  # 200: the server ignored Range and sends it all again
    length = resp.headers.get("Content-Length")
    if length is not None and length.isdigit() and start + int(length) > expected_size:
        resp.close()
        raise UpdateRejected("update.payload_size",
                             f"{url}: server announces {start + int(length)} bytes, manifest says {expected_size}")
    return resp, start


def _open_file(url: str, have: int):
    src = urllib.parse.unquote(urllib.parse.urlparse(url).path)
    try:
        fi = open(src, "rb")
    except OSError as e:
        raise _fail(url, e.strerror) from None
    fi.seek(have)
    return fi, have


def _attempt(url: str, part: Path, expected_size: int, ph: _PartHash, rep: PhaseProgress, timeout: float,
             chunk: int) -> None:
    """One try: append to the .part file from where it ends."""
    have = part.stat().st_size if part.exists() else 0
    if have > expected_size:
        part.unlink()
        have = 0
    if url[:5].lower() == "file:":
        resp, done = _open_file(url, have)
    else:
        resp, done = _open_http(url, have, expected_size, part, timeout)
        if resp is None:
            ph.sync(part, have)
            return
    ph.sync(part, done)
    rep(done, force=True)
    read = getattr(resp, "read1", resp.read)  # what has arrived, so a timeout loses nothing already received
    with resp, open(part, "ab") as fo:
        try:
            while True:
                try:
                    b = read(chunk)
                except (OSError, http.client.HTTPException, ValueError) as e:
                    raise _fail(url, f"interrupted at {done} of {expected_size} bytes ({e or type(e).__name__})") from None
                if not b:
                    break
                n = len(b)
                if done + n > expected_size:
                    raise UpdateRejected("update.payload_size", f"{url}: more than the manifest's {expected_size} bytes")
                try:
                    fo.write(b)
                except OSError as e:
                    raise (no_space(e, part) or _fail(url, f"writing {part}: {e.strerror}")) from None
                ph.update(b)
                done += n
                rep(done)
        finally:
            try:
                fo.flush()
                os.fsync(fo.fileno())  # what we have survives a power cut, for the next resume
            except OSError:
                ph.n = -1  # the file may not hold what was hashed: hash it again next time
    if done < expected_size:
        raise _fail(url, f"short read: connection closed at {done} of {expected_size} bytes")


def fetch_to_staging(url: str, *, dest: Path, expected_size: int, expected_sha256: str, max_bytes: int,
                     progress: Progress | None = None, timeout: float = 30.0, chunk: int = CHUNK,
                     retries: int = 3, backoff: float = 0.5) -> Path:
    """Download url to dest (a verified payload), resuming from dest's .part file.

    Transport failures are retried `retries` times within the call (backoff doubling from
    `backoff` s), each try resuming where the last stopped; the .part is kept if all fail, so
    the next call resumes too. Bad data is never retried."""
    scheme = url.split(":", 1)[0].lower()
    if scheme not in ("file", "http", "https"):
        raise UpdateRejected("update.malformed", f"payload_url: unsupported scheme {scheme!r}")
    if expected_size > max_bytes:
        raise UpdateRejected("update.too_large", f"payload {expected_size} bytes > max_payload_bytes {max_bytes}")
    dest = Path(dest)
    part = dest.with_suffix(".part")
    rep = PhaseProgress("download", expected_size, progress)
    ph = _PartHash()
    delay = backoff
    for attempt in range(retries + 1):
        try:
            _attempt(url, part, expected_size, ph, rep, timeout, chunk)
            break
        except UpdateRejected as e:
            if e.code != "update.no_space":
                part.unlink(missing_ok=True)  # not the manifest's file: nothing worth resuming
            raise
        except TransportError:
            if attempt == retries:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
    size = part.stat().st_size
    ph.sync(part, size)
    if size != expected_size:  # a file:// source of the wrong length
        part.unlink(missing_ok=True)
        raise UpdateRejected("update.payload_size", f"{url}: {size} bytes, manifest says {expected_size}")
    if ph.h.hexdigest() != expected_sha256:
        part.unlink(missing_ok=True)  # so the next try starts clean
        raise UpdateRejected("update.payload_hash", f"{url}: sha256 differs from the manifest")
    rep(size, force=True)
    os.replace(part, dest)
    fsync_dir(dest.parent)
    return dest


def write_b64_to_staging(b64: str, *, dest: Path, expected_size: int, expected_sha256: str, max_bytes: int,
                         progress: Progress | None = None) -> Path:
    """A payload_b64 into staging: size-checked before decoding, verified, written durably."""
    if not isinstance(b64, str):
        raise UpdateRejected("update.malformed", "payload_b64: must be a base64 string")
    if expected_size > max_bytes:
        raise UpdateRejected("update.too_large", f"payload {expected_size} bytes > max_payload_bytes {max_bytes}")
    if len(b64) > 4 * (expected_size // 3 + 1) + 4096:  # don't decode something far bigger than announced
        raise UpdateRejected("update.payload_size", f"payload_b64: {len(b64)} characters for {expected_size} bytes")
    try:
        data = base64.b64decode("".join(b64.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise UpdateRejected("update.malformed", f"payload_b64: not valid base64 ({e})") from None
    if len(data) != expected_size:
        raise UpdateRejected("update.payload_size", f"payload_b64: {len(data)} bytes, manifest says {expected_size}")
    if hashlib.sha256(data).hexdigest() != expected_sha256:
        raise UpdateRejected("update.payload_hash", "payload_b64: sha256 differs from the manifest")
    dest = Path(dest)
    part = dest.with_suffix(".part")
    write_durably(part, data)
    os.replace(part, dest)
    fsync_dir(dest.parent)
    PhaseProgress("download", expected_size, progress)(expected_size, force=True)
    return dest
