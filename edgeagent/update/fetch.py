"""The one fetcher: every download goes through here (python-tuf's rule).

file://, http:// and https:// into a `.part` file under staging, resumed with an HTTP Range
request after an interruption (and after a restart: the .part survives), never reading more than
the manifest's size, then hashed whole before it is used. Every transport failure becomes one
TransportError("download.failed", why); bad data is UpdateRejected with its own code.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from edgeagent.errors import TransportError
from edgeagent.state.atomic import fsync_dir
from edgeagent.update.errors import UpdateRejected

Progress = Callable[[dict], None]
CHUNK = 64 * 1024


class _Reporter:
    """Progress in fine steps, but at most every 1% or 0.5 s."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total, self.progress = total, progress
        self.last_pct, self.last_t = -1.0, 0.0

    def __call__(self, done: int, force: bool = False) -> None:
        if self.progress is None:
            return
        pct = 100.0 * done / self.total if self.total else 100.0
        now = time.monotonic()
        if force or pct - self.last_pct >= 1.0 or now - self.last_t >= 0.5:
            self.last_pct, self.last_t = pct, now
            self.progress({"phase": "download", "bytes": done, "total": self.total, "percent": round(pct, 1)})


def _hash_existing(part: Path, h) -> int:
    n = 0
    with open(part, "rb") as fh:
        while True:
            b = fh.read(1 << 20)
            if not b:
                return n
            h.update(b)
            n += len(b)


def _open(url: str, offset: int, timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": "edgeagent"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - schemes checked by the caller


def _attempt(url: str, part: Path, expected_size: int, rep: _Reporter, timeout: float) -> None:
    """One try: append to the .part file from where it ends."""
    have = part.stat().st_size if part.exists() else 0
    if have > expected_size:
        part.unlink()
        have = 0
    if url.startswith("file://"):
        src = urllib.parse.unquote(urllib.parse.urlparse(url).path)
        try:
            fi = open(src, "rb")
        except OSError as e:
            raise TransportError("download.failed", f"{url}: {e.strerror}") from None
        fi.seek(have)
        resp = fi
    else:
        try:
            resp = _open(url, have, timeout)
        except urllib.error.HTTPError as e:
            if e.code == 416 and have == expected_size:
                return  # already complete
            raise TransportError("download.failed", f"{url}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            raise TransportError("download.failed", f"{url}: {reason}") from None
        if have and getattr(resp, "status", 200) == 200:
            # the server ignored Range: start over
            have = 0
            part.unlink(missing_ok=True)
    with resp, open(part, "ab") as fo:
        done = have
        try:
            while True:
                b = resp.read(CHUNK)
                if not b:
                    break
                if done + len(b) > expected_size:
                    raise UpdateRejected("update.payload_size", f"{url}: more than the manifest's {expected_size} bytes")
                fo.write(b)
                done += len(b)
                rep(done)
        except (OSError, http.client.HTTPException, socket.timeout) as e:
            fo.flush()
            os.fsync(fo.fileno())
            raise TransportError("download.failed", f"{url}: interrupted at {done} bytes ({e})") from None
        fo.flush()
        os.fsync(fo.fileno())
    if done < expected_size:
        raise TransportError("download.failed", f"{url}: connection closed at {done} of {expected_size} bytes")


def fetch_to_staging(url: str, *, dest: Path, expected_size: int, expected_sha256: str, max_bytes: int,
                     progress: Progress | None = None, timeout: float = 30.0, retries: int = 3) -> Path:
    """Download url to dest (a verified payload), resuming from dest's .part file."""
    scheme = url.split(":", 1)[0]
    if scheme not in ("file", "http", "https"):
        raise UpdateRejected("update.malformed", f"payload_url: unsupported scheme {scheme!r}")
    if expected_size > max_bytes:
        raise UpdateRejected("update.too_large", f"payload {expected_size} bytes > max_payload_bytes {max_bytes}")
    dest = Path(dest)
    part = dest.with_suffix(".part")
    rep = _Reporter(expected_size, progress)
    delay = 0.5
    for attempt in range(retries + 1):
        try:
            _attempt(url, part, expected_size, rep, timeout)
            break
        except TransportError:
            if attempt == retries:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
    h = hashlib.sha256()
    _hash_existing(part, h)  # the whole file, resumed parts included
    if h.hexdigest() != expected_sha256:
        part.unlink(missing_ok=True)
        raise UpdateRejected("update.payload_hash", f"{url}: sha256 differs from the manifest")
    size = part.stat().st_size
    if size != expected_size:
        part.unlink(missing_ok=True)
        raise UpdateRejected("update.payload_size", f"{url}: {size} bytes, manifest says {expected_size}")
    rep(size, force=True)
    os.replace(part, dest)
    fsync_dir(dest.parent)
    return dest
