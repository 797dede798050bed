"""Switch windows and not_before (state/schedule.py): when a staged update may switch."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from edgeagent.config import ConfigError, from_dict
from edgeagent.state.schedule import due, in_window, next_switch, parse_window


def local(h: int, m: int = 0) -> datetime:
    """An aware time at local h:m today (the schedule reads windows in local time)."""
    return datetime.now().astimezone().replace(hour=h, minute=m, second=0, microsecond=0)


def test_windows_in_local_time_including_one_past_midnight():
    w = ["02:00-04:00", "22:30-00:30"]
    assert in_window(local(3), w) and in_window(local(23), w) and in_window(local(0, 10), w)
    assert not in_window(local(4), w) and not in_window(local(12), w) and not in_window(local(0, 30), w)
    assert in_window(local(12), [])  # no windows: any time


def test_the_next_switch_is_the_next_window_start_and_never_before_not_before():
    w = ["02:00-04:00"]
    now = local(12)
    at = next_switch(now, w)
    assert at.astimezone() == local(2) + timedelta(days=1) and not due(now, w)
    assert next_switch(local(3), w) == local(3) and due(local(3), w)
    nb = local(3) + timedelta(days=2)
    assert next_switch(local(3), w, nb) == nb  # inside a window two days on
    nb = (local(5) + timedelta(days=1)).astimezone(timezone.utc)
    assert next_switch(local(3), w, nb).astimezone() == local(2) + timedelta(days=2)  # the window after it
    assert next_switch(now, [], nb) == nb and not due(now, [], nb) and due(nb, [], nb)


@pytest.mark.parametrize("bad", ["2-4", "02:00-02:00", "25:00-26:00", "02:00-04:60", "02:00", 3])
def test_a_bad_window_is_refused_in_the_config_with_one_line(bad):
    with pytest.raises(ValueError):
        parse_window(bad)
    with pytest.raises(ConfigError) as e:
        from_dict({"update": {"switch_window": [bad] if isinstance(bad, str) else bad}}, None)
    assert "update.switch_window" in e.value.message and "\n" not in e.value.message
