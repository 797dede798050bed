"""A persisted lower bound on the current time, for devices without a real-time clock.

Every Raspberry Pi boots with the clock where it stopped, or at 1970, until NTP answers; a clock
can also jump back. An expiry check against such a clock accepts a manifest that expired long
ago. The floor is the newest time this device knows has passed: the `created` of any manifest it
verified and the last wall time it saw while the clock looked sane. A wall clock below the floor
is unsynchronised, and expiry is decided against the floor instead.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

from edgeagent.state.atomic import atomic_write_json

log = logging.getLogger("edgeagent.state")

FILE = "time-floor.json"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class TimeFloor:
    def __init__(self, state_dir: str | os.PathLike) -> None:
        self.path = Path(state_dir) / FILE

    def get(self) -> datetime | None:
        try:
            d = json.loads(self.path.read_text())
            return datetime.fromtimestamp(float(d["floor"]), timezone.utc)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError, OverflowError) as e:
            log.warning("%s is unreadable (%s); starting a new time floor", self.path, e)
            return None

    def raise_to(self, t: datetime) -> None:
        """Persist t if it is newer than the floor (atomic and durable; a no-op otherwise)."""
        cur = self.get()
        if cur is not None and t <= cur:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, {"floor": t.timestamp(), "iso": t.strftime("%Y-%m-%dT%H:%M:%SZ")}, mode=0o640)

    def observe_wall_clock(self, now: datetime | None = None) -> bool:
        """Raise the floor to the wall clock when it is above it; False when the clock is below
        the floor (unsynchronised)."""
        now = now or utcnow()
        cur = self.get()
        if cur is not None and now < cur:
            return False
        self.raise_to(now)
        return True
