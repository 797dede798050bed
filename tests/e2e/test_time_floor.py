"""The time floor cannot be poisoned for good (issue 19, point 1): a clock that once read 2099, a
signed manifest created in 2099 that is refused, and a floor an older version left in the future."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from edgeagent.update.keys import generate_keypair
from tests.e2e.test_update import cli, model, release, trusted

FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")


def floor_of(tmp_path: Path) -> str | None:
    p = tmp_path / "state" / "time-floor.json"
    return json.loads(p.read_text()).get("iso") if p.exists() else None


def _v2_commits(tmp_path: Path, d, model_path: Path) -> None:
    rel = release(tmp_path, tmp_path, model(tmp_path, "v2.tflite", version_tag=2), 2, base=model_path)
    r = cli(d.config_path, "install", rel["manifest"], "--payload", rel["payload"], "--wait")
    assert r.returncode == 0, r.stderr + d.log()[-2000:]
    assert d.call("status")["model"]["version"] == 2
    created = json.loads(Path(rel["manifest"]).read_text())["signed"]["created"]
    assert floor_of(tmp_path) >= created  # the commit raised the floor to its created (or the clock past it)


@pytest.fixture
def k1(tmp_path):
    generate_keypair(tmp_path / "k1")
    return trusted(tmp_path, "k1")


def test_a_start_with_the_clock_at_2099_is_not_saved(tmp_path, start_daemon, model_path, k1):
    if not FAKETIME.exists():
        pytest.skip("needs libfaketime (Debian package libfaketime; .ci/run installs it)")
    # a device in service (its state seeded), then a start with the clock stepped to 2099
    start_daemon(update={**k1, "probation_s": 0.5, "min_inferences": 5}, name="seed").stop()
    env = {"LD_PRELOAD": str(FAKETIME), "FAKETIME": "@2099-01-01 00:00:00", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    d = start_daemon(update={**k1, "probation_s": 0.5, "min_inferences": 5}, env=env, name="future")
    assert d.call("ping")["ts"] > datetime(2098, 1, 1, tzinfo=timezone.utc).timestamp()  # the fake clock took
    assert d.stop() == 0
    assert "clock_max_ahead_days" in d.log()
    assert (floor_of(tmp_path) or "") < "2098"
    d = start_daemon(update={**k1, "probation_s": 0.5, "min_inferences": 5}, name="now")
    _v2_commits(tmp_path, d, model_path)


def test_a_refused_manifest_created_in_2099_does_not_move_the_floor(tmp_path, start_daemon, model_path, k1):
    d = start_daemon(update={**k1, "probation_s": 0.5, "min_inferences": 5})
    other = model(tmp_path, "other.tflite", version_tag=9, seed=7)
    future = release(tmp_path, tmp_path, model(tmp_path, "v5.tflite", version_tag=5), 5, base=other,
                     created=datetime(2099, 1, 1, tzinfo=timezone.utc), expires_days=30000)
    r = cli(d.config_path, "install", future["manifest"], "--payload", future["payload"])
    assert r.returncode == 1 and "update.wrong_base" in r.stderr, r.stderr
    assert (floor_of(tmp_path) or "") < "2098"
    _v2_commits(tmp_path, d, model_path)


def test_clock_reset_floor_puts_a_poisoned_floor_back(tmp_path, start_daemon, model_path, k1):
    d = start_daemon(update={**k1, "probation_s": 0.5, "min_inferences": 5})
    poisoned = datetime(2099, 1, 1, tzinfo=timezone.utc)
    (tmp_path / "state" / "time-floor.json").write_text(json.dumps({"floor": poisoned.timestamp(),
                                                                    "iso": "2099-01-01T00:00:00Z"}))
    rel = release(tmp_path, tmp_path, model(tmp_path, "v2.tflite", version_tag=2), 2, base=model_path)
    r = cli(d.config_path, "install", rel["manifest"], "--payload", rel["payload"])
    assert r.returncode == 1 and "update.clock_unsynced" in r.stderr, r.stderr
    r = cli(d.config_path, "clock", "show", "--json")
    assert json.loads(r.stdout)["clock_behind_floor"] is True
    r = cli(d.config_path, "clock", "reset-floor")
    assert r.returncode == 0 and "2099-01-01T00:00:00Z -> none" in r.stdout, r.stdout + r.stderr
    assert not os.path.exists(tmp_path / "state" / "time-floor.json") or (floor_of(tmp_path) or "") < "2098"
    r = cli(d.config_path, "install", rel["manifest"], "--payload", rel["payload"], "--wait")
    assert r.returncode == 0, r.stderr
