"""staging/ under state_dir: where payloads are downloaded and verified before use.

On disk, never in tmpfs or RAM (a Pi runs out of memory). One stable name per payload sha256,
so a restart resumes the same partial file: `{sha256}.part` while incomplete, `{sha256}.payload`
once verified.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from edgeagent.state.atomic import fsync_dir
from edgeagent.update.errors import UpdateRejected


class Staging:
    def __init__(self, state_dir: str | os.PathLike) -> None:
        self.dir = Path(state_dir) / "staging"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

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
            raise UpdateRejected("update.no_space", f"need {need} bytes in {self.dir.parent}, {free} free")

    def store_bytes(self, data: bytes, *, expected_size: int, expected_sha256: str) -> Path:
        """A payload that arrived inline (payload_b64): verify, then write durably."""
        if len(data) != expected_size:
            raise UpdateRejected("update.payload_size", f"payload is {len(data)} bytes, manifest says {expected_size}")
        if hashlib.sha256(data).hexdigest() != expected_sha256:
            raise UpdateRejected("update.payload_hash", "payload sha256 differs from the manifest")
        part = self.part_path(expected_sha256)
        with open(part, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return self.promote(part, expected_sha256)

    def promote(self, part: Path, sha256: str) -> Path:
        final = self.payload_path(sha256)
        os.replace(part, final)
        fsync_dir(self.dir)
        return final

    def cleanup(self, keep: set[str], max_age_s: float = 0.0) -> None:
        """Remove staged files not named in keep (verified payloads are not needed after install)."""
        now = time.time()
        for p in self.dir.iterdir():
            if p.name in keep or p.name.startswith("pending-") or p.is_dir():
                continue
            if max_age_s and now - p.stat().st_mtime < max_age_s:
                continue
            try:
                p.unlink()
            except OSError:
                pass
