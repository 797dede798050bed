"""A persisted lower bound on the current time, for devices without a real-time clock.

Every Raspberry Pi boots with the clock where it stopped, or at 1970, until NTP answers; a clock
can also jump back. An expiry check against such a clock accepts a manifest that expired long
ago. The floor is the newest time this device knows has passed: the `created` of the last update
it committed and the last wall time it saw while the clock looked sane. A wall clock below the
floor is unsynchronised, and expiry is decided against the floor instead.

The floor must not be poisoned by a clock that jumps forward (a bad NTP step to 2099): a wall
time is saved only while it is within `max_ahead` of the newest time the device knows for sure
(`known`: the last committed `created`, or the agent's release), a refused manifest never moves
it, and `edgeagent clock reset-floor` puts it back.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

from edgeagent.state.atomic import atomic_write_json

log = logging.getLogger("edgeagent.state")

FILE = "time-floor.json"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def parse_utc(s: str) -> datetime:
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def released() -> datetime:
    from edgeagent import RELEASED

    return parse_utc(RELEASED)


class TimeFloor:
    def __init__(self, state_dir: str | os.PathLike) -> None:
        self.path = Path(state_dir) / FILE

    def _read(self) -> dict:
        try:
            d = json.loads(self.path.read_text())
            return d if isinstance(d, dict) else {}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("%s is unreadable (%s); starting a new time floor", self.path, e)
            return {}

    @staticmethod
    def _ts(v: object) -> datetime | None:
        try:
            return datetime.fromtimestamp(float(v), timezone.utc)  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError, OSError):
            return None

    def get(self) -> datetime | None:
        return self._ts(self._read().get("floor"))

    def known(self) -> datetime | None:
        """The newest `created` of a committed update (a time the device knows has passed)."""
        return self._ts(self._read().get("committed_created"))

    def _write(self, floor: datetime, committed: datetime | None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        d = {"floor": floor.timestamp(), "iso": floor.strftime("%Y-%m-%dT%H:%M:%SZ")}
        if committed is not None:
            d["committed_created"] = committed.timestamp()
        atomic_write_json(self.path, d, mode=0o640)

    def raise_to(self, t: datetime) -> None:
        """Persist t if it is newer than the floor (atomic and durable; a no-op otherwise)."""
        cur = self.get()
        if cur is not None and t <= cur:
            return
        self._write(t, self.known())

    def committed(self, created: datetime) -> None:
        """An update created at `created` was committed: that time has passed, whatever the clock says."""
        cur, known = self.get(), self.known()
        if (cur is None or created > cur) or (known is None or created > known):
            self._write(max(created, cur) if cur else created, max(created, known) if known else created)

    def observe_wall_clock(self, now: datetime | None = None, *, released: datetime | None = None,
                           max_ahead: timedelta = timedelta(days=365)) -> str:
        """Raise the floor to the wall clock. Returns "ok", "behind" (the clock is below the floor:
        unsynchronised) or "ahead" (implausibly far past what the device knows: not saved)."""
        now = now or utcnow()
        cur = self.get()
        if cur is not None and now < cur:
            return "behind"
        sure = max((t for t in (self.known(), released) if t is not None), default=None)
        if sure is not None and now > sure + max_ahead:
            return "ahead"
        self.raise_to(now)
        return "ok"

    def reset(self, to: datetime | None = None) -> datetime | None:
        """Put the floor back (a poisoned floor refuses every update with update.clock_unsynced):
        to `to`, else to the newest committed `created`; None removes it."""
        target = to or self.known()
        if target is None:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            return None
        self._write(target, self.known())
        return target
