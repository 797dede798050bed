"""staging/ under state_dir: where payloads are downloaded and verified before use.

On disk, never in tmpfs or RAM (a Pi runs out of memory). One stable name per payload sha256,
so a restart resumes the same partial file: `{sha256}.part` while incomplete, `{sha256}.payload`
once verified. Also the throttled progress reporter every delivery step shares, so `update.downloading`
events come in fine steps without flooding MQTT.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from edgeagent.state.atomic import create_new, fsync_dir
from edgeagent.update.errors import UpdateRejected

Progress = Callable[[dict], None]
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class PhaseProgress:
    """Progress of one phase in fine steps, but at most every 1% or 0.5 s (and always at the end)."""

    def __init__(self, phase: str, total: int, progress: Progress | None) -> None:
        self.phase, self.total, self.progress = phase, total, progress
        self.last_pct, self.last_t = -1.0, 0.0

    def __call__(self, done: int, force: bool = False) -> None:
        if self.progress is None:
            return
        pct = min(100.0, 100.0 * done / self.total) if self.total else 100.0
        now = time.monotonic()
        if force or pct - self.last_pct >= 1.0 or now - self.last_t >= 0.5:
            self.last_pct, self.last_t = pct, now
            self.progress({"phase": self.phase, "bytes": done, "total": self.total, "percent": round(pct, 1)})


def no_space(err: OSError, where: Path) -> UpdateRejected | None:
    """An ENOSPC/EDQUOT while writing is the device's fault, not the server's: its own code."""
    if err.errno in NO_SPACE:
        return UpdateRejected("update.no_space", f"{where}: disk full ({err.strerror})")
    return None


def write_durably(path: Path, data: bytes) -> None:
    """Write, fsync: what a later rename relies on."""
    try:
        with os.fdopen(create_new(path, 0o600), "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as e:
        path.unlink(missing_ok=True)
        raise (no_space(e, path) or e) from None


class Staging:
    def __init__(self, state_dir: str | os.PathLike) -> None:
        self.dir = Path(state_dir) / "staging"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)  # mkdir's mode is filtered by the umask

    def payload_path(self, sha256: str) -> Path:
        return self.dir / f"{sha256}.payload"

    def part_path(self, sha256: str) -> Path:
        return self.dir / f"{sha256}.part"

    def free_bytes(self) -> int:
        st = os.statvfs(self.dir)
        return st.f_bavail * st.f_frsize

    def check_space(self, need: int) -> None:
        free = self.free_bytes()
        if need > free:
            raise UpdateRejected("update.no_space", f"need {need} bytes in {self.dir.parent}, {free} free "
                                                    f"({self.used_bytes()} held by staging)")

    def store_bytes(self, data: bytes, *, expected_size: int, expected_sha256: str) -> Path:
        """A payload that arrived inline (payload_b64): verify, then write durably."""
        if len(data) != expected_size:
            raise UpdateRejected("update.payload_size", f"payload is {len(data)} bytes, manifest says {expected_size}")
        if hashlib.sha256(data).hexdigest() != expected_sha256:
            raise UpdateRejected("update.payload_hash", "payload sha256 differs from the manifest")
        part = self.part_path(expected_sha256)
        write_durably(part, data)
        return self.promote(part, expected_sha256)

    def promote(self, part: Path, sha256: str) -> Path:
        final = self.payload_path(sha256)
        os.replace(part, final)
        fsync_dir(self.dir)
        return final

    def used_bytes(self) -> int:
        """Bytes staging holds now (partial downloads and transfers count against the space check)."""
        total = 0
        for root, _dirs, files in os.walk(self.dir):
            for f in files:
                try:
                    total += os.lstat(os.path.join(root, f)).st_blocks * 512
                except OSError:
                    pass
        return total

    def cleanup(self, keep: set[str] = frozenset(), max_age_s: float = 0.0) -> int:
        """Remove staged files and transfer directories not named in keep: after every install,
        failure and refusal, and at start (what a killed daemon left). pending-update.json
        belongs to the updater and is left alone. Returns how many entries went."""
        now = time.time()
        removed = 0
        for p in self.dir.iterdir():
            if p.name in keep or p.name.startswith("pending-"):
                continue
            try:
                if max_age_s and now - p.lstat().st_mtime < max_age_s:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink()
                removed += 1
            except OSError:
                pass
        return removed

    def names_for(self, sha256: str, transfer_id: str | None = None) -> set[str]:
        """What one update may leave in staging to resume from."""
        out = {f"{sha256}.part", f"{sha256}.payload"}
        if transfer_id:
            out.add(f"transfer-{transfer_id}")
        return out
