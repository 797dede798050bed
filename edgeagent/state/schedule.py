"""When a staged update may switch: maintenance windows (local time) and a signed `not_before`.

A camera on a production line downloads and health-checks an update whenever it arrives, but
switches only inside a window ("02:00-04:00") and never before the manifest's `not_before`.
Pure functions of the time they are given, so they are tested without clocks or threads.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Sequence

_WINDOW = re.compile(r"\A([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]|24):([0-5]\d)\Z")


def parse_window(text: str) -> tuple[int, int]:
    """"HH:MM-HH:MM" -> (start, end) in minutes after midnight; an end before the start wraps
    past midnight ("22:00-02:00"). ValueError with the reason."""
    m = _WINDOW.match(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"{text!r}: expected HH:MM-HH:MM (local time, 24-hour)")
    start, end = int(m[1]) * 60 + int(m[2]), int(m[3]) * 60 + int(m[4])
    if end > 24 * 60 or start == end:
        raise ValueError(f"{text!r}: a window needs a start and a different end, at most 24:00")
    return start, end


def check_windows(v: object) -> str | None:
    """The config check of update.switch_window: None when it is good, else why not."""
    if not isinstance(v, list):
        return "expected a list of \"HH:MM-HH:MM\" strings"
    for w in v:
        try:
            parse_window(w)
        except ValueError as e:
            return str(e)
    return None


def in_window(local: datetime, windows: Sequence[str]) -> bool:
    """`local`: the device's local time, naive or aware. No windows: any time."""
    if not windows:
        return True
    now = local.hour * 60 + local.minute
    for w in windows:
        s, e = parse_window(w)
        if (s <= now < e) if s < e else (now >= s or now < e):
            return True
    return False


def next_switch(now: datetime, windows: Sequence[str], not_before: datetime | None = None) -> datetime:
    """The earliest time at or after `now` (aware) at which a staged update may switch: after
    not_before and inside a window. Windows are in the local time of `now.astimezone()`."""
    t = max(now, not_before) if not_before is not None else now
    if not windows:
        return t
    local = t.astimezone()
    if in_window(local, windows):
        return t
    starts = []
    for w in windows:
        s, _e = parse_window(w)
        for day in (0, 1):
            cand = (local.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=day, minutes=s))
            if cand > local:
                starts.append(cand)
    return min(starts).astimezone(timezone.utc)


def due(now: datetime, windows: Sequence[str], not_before: datetime | None = None) -> bool:
    return next_switch(now, windows, not_before) <= now
