"""A broker that stops reading must not reach inference or the watchdog (issue 18).

The broker is SIGSTOPped for 10 s while the daemon publishes every frame's full outputs (about
20 KB each, 100 a second: the socket buffers fill within a second). Compared with 10 s of the
same run while the broker reads: the frame rate holds, WATCHDOG=1 keeps arriving, and the output
messages that could not be sent are dropped and counted rather than queued without bound
(today's main queued all ~20 MB of them in paho's memory).
"""

from __future__ import annotations

import signal
import time

import psutil
import pytest

from edgeagent.engine import testmodels
from tests.mqtt.test_mqtt_daemon import mqtt_cfg

pytestmark = pytest.mark.long(seconds=25)

RATE_HZ = 100.0
WATCHDOG_S = 2.0


def _phase(d, seconds: float) -> tuple[int, float, float]:
    """(frames, seconds, the longest time without a WATCHDOG=1) over the phase. Frames and
    seconds between the telemetry samples (every 0.5 s) at its ends: the count and the time of
    the same sample, not a count up to half a second old against the test's clock."""
    first = d.call("status")["telemetry"]
    t0 = time.monotonic()
    stale = 0.0
    while time.monotonic() - t0 < seconds:
        time.sleep(0.05)
        stale = max(stale, time.monotonic() - d.last_watchdog)
    last = d.call("status", timeout=10)["telemetry"]
    return last["inference"]["count"] - first["inference"]["count"], last["ts"] - first["ts"], stale


def test_a_broker_that_stops_reading_does_not_slow_inference(tmp_path, broker, peers, start_daemon):
    wide = testmodels.write_model(tmp_path / "wide.tflite", kind="dense", input_shape=(1, 16), outputs=2000, seed=3)
    d = start_daemon(model_file=wide, env={"WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6))},
                     input={"source": "synthetic", "rate_hz": RATE_HZ},
                     output={"publish": "full", "max_rate_hz": RATE_HZ}, **mqtt_cfg(broker.port))
    peer = peers(broker.port)
    peer.wait(lambda t, b: t.endswith("/output") and len(b["outputs"][0]["values"]) == 2000)
    d.wait_for("WATCHDOG=1")
    deadline = time.monotonic() + 10
    while d.call("status")["telemetry"] is None and time.monotonic() < deadline:  # the first sample
        time.sleep(0.1)
    frames, seconds, stale_reading = _phase(d, 10.0)
    fps_reading = frames / seconds

    mosq = psutil.Process(broker.proc.pid)
    me = psutil.Process(d.proc.pid)
    rss0 = me.memory_info().rss
    mosq.send_signal(signal.SIGSTOP)
    try:
        frames, seconds, stale_stopped = _phase(d, 10.0)
        fps_stopped = frames / seconds
        st = d.call("status", timeout=10)
        grew_mb = (me.memory_info().rss - rss0) / 2**20
    finally:
        mosq.send_signal(signal.SIGCONT)

    assert fps_reading > 0.8 * RATE_HZ, fps_reading
    assert fps_stopped >= 0.9 * fps_reading, (fps_stopped, fps_reading, d.log()[-2000:])
    # the main thread fed the watchdog all along (it pings at a quarter of the period)
    assert stale_stopped < WATCHDOG_S / 2, (stale_stopped, stale_reading)
    # what could not be sent was dropped and counted (and reported in telemetry)
    dropped = st["mqtt"]["backlog_dropped"] + st["mqtt"].get("output_dropped", 0)
    assert dropped > 0, st["mqtt"]
    assert st["telemetry"].get("output_dropped", 0) > 0 or st["mqtt"]["backlog_dropped"] > 0
    # ~20 MB of outputs were produced while the broker slept; what is held for it stays bounded
    assert grew_mb < 12, grew_mb
    print(f"fps reading {fps_reading:.1f}, stopped {fps_stopped:.1f}; watchdog stale at most {stale_stopped:.2f} s; "
          f"dropped {dropped}; RSS +{grew_mb:.1f} MiB")
    # and the daemon is still whole: the broker reads again, outputs flow again
    n = len(peer.msgs)
    peer.wait(lambda t, b: t.endswith("/output"), 30, start=n)
    assert d.call("status")["daemon"] == "running"
