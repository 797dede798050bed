"""Issue 9's soak: junk from the broker at a serving daemon, while it takes a good update.

Bounded: EDGEAGENT_SOAK_S seconds of junk (60 by default; the README's figure comes from 300).
The daemon must keep answering commands, commit the good update, and end with RSS growth under
32 MiB."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.mqtt.test_mqtt_daemon import P, REPO, broker, bundle, mqtt_cfg, peers, signer  # noqa: F401

SOAK_S = float(os.environ.get("EDGEAGENT_SOAK_S", "60"))
pytestmark = [pytest.mark.long(seconds=65), pytest.mark.timeout(int(SOAK_S) + 240)]


# Random bodies drawn once: the daemon cannot tell fresh noise from the same noise again, and the
# test leaves the CPU to the daemon and the tests running beside it.
_NOISE = {n: os.urandom(n) for n in (10, 1 << 16, 900_000, 2 << 20)}


def junk_messages(rng: random.Random, manifest: dict, big: bool = True) -> list[tuple[str, bytes, Properties | None]]:
    """One batch of every kind of junk; `big`: with the 0.9 and 2 MiB bodies too. The flood sends
    a batch every 0.1 s and the big bodies in one batch of four: about 6,000 messages a minute,
    which leaves CPU to the tests running beside it (a leak per message shows all the same)."""
    deep = "[" * 5000 + "]" * 5000
    bad_reply = Properties(PacketTypes.PUBLISH)
    bad_reply.ResponseTopic = f"{P}/status"
    out = [
        (f"{P}/transfer/x/\u00b2", b"j", None),
        (f"{P}/transfer/x/" + "9" * 5000, b"j", None),
        (f"{P}/transfer/junk{rng.randrange(1000)}/{rng.randrange(10**6)}",
         _NOISE[rng.choice([10, 1 << 16, 900_000] if big else [10, 1 << 16])], None),
        *([(f"{P}/transfer/junk/{rng.randrange(100)}", _NOISE[2 << 20], None)] if big else []),  # above max_message_bytes
        (f"{P}/cmd", b"\xff\xfe not json", None),
        (f"{P}/cmd", ('{"id":"d","op":"update","args":{"manifest":' + deep + "}}").encode(), None),
        (f"{P}/cmd", json.dumps({"id": "r", "op": "status"}).encode(), bad_reply),
        (f"{P}/cmd", json.dumps({"id": "f", "op": "update", "args": {"manifest": manifest,
                                                                    "payload_url": "file:///etc/shadow"}}).encode(), None),
        (f"{P}/cmd", json.dumps({"id": "c", "op": "config.set", "args": {"key": "input.rate_hz", "value": 1e-11}}).encode(), None),
        (f"{P}/cmd", json.dumps({"id": "c2", "op": "config.set",
                                 "args": {"key": "telemetry.interval_s", "value": 1e308}}).encode(), None),
        (f"{P}/cmd", json.dumps({"id": "t", "op": "update", "args": {
            "manifest": manifest, "transfer": {"id": "big", "chunks": 52_428_800, "chunk_size": 1024,
                                               "chunk_sha256": []}}}).encode(), None),
        (f"{P}/cmd", ('{"id":"n","op":"update","args":{"manifest":{"signed":{"version":1e999},"signatures":[]},'
                      '"payload_b64":"AA=="}}').encode(), None),
    ]
    return out


def test_soak_junk_while_serving_and_updating(tmp_path, broker, peers, start_daemon, signer, model_path):
    d = start_daemon(**mqtt_cfg(broker.port), input={"rate_hz": 30.0},
                     update={"trusted_keys": [str(signer / "edgeagent.pub")], "probation_s": 3.0, "min_inferences": 20,
                             "max_chunk_buffer_bytes": 8 << 20})
    peer = peers(broker.port)
    peer.wait(lambda t, b: t == f"{P}/status" and b.get("state") == "online")
    rel = bundle(tmp_path, signer, model_path, 2)
    manifest = json.loads(Path(rel["manifest"]).read_text())
    proc = psutil.Process(d.proc.pid)
    # warm up: the first update path, the first junk of each kind, then the baseline
    attacker = peers(broker.port)
    rng = random.Random(9)
    for topic, payload, props in junk_messages(rng, manifest):
        attacker.c.publish(topic, payload, qos=1, properties=props).wait_for_publish(10)
    assert peer.request("ping", timeout=20)["ok"]
    time.sleep(1.0)
    base = proc.memory_info().rss
    stop = threading.Event()
    sent = [0]

    def flood() -> None:
        batch = 0
        while not stop.is_set():
            batch += 1
            for topic, payload, props in junk_messages(rng, manifest, big=batch % 4 == 0):
                if stop.is_set():
                    return
                info = attacker.c.publish(topic, payload, qos=0, properties=props)
                sent[0] += 1
                if sent[0] % 20 == 0:
                    info.wait_for_publish(5)  # keep the test's own queue small
            time.sleep(0.1)  # about 100 junk messages a second

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    try:
        t_end = time.monotonic() + SOAK_S
        time.sleep(min(5.0, SOAK_S / 4))
        push = subprocess.run([sys.executable, "-m", "edgeagent", "push", rel["manifest"], "--broker",
                               f"127.0.0.1:{broker.port}", "--device", "test-dev", "--chunk-size", "1024", "--wait",
                               "--timeout", "120"], capture_output=True, text=True, cwd=REPO, timeout=150)
        assert push.returncode == 0, push.stdout + push.stderr + d.log()[-4000:]
        while time.monotonic() < t_end:
            assert peer.request("ping", timeout=20)["ok"]
            time.sleep(2.0)
    finally:
        stop.set()
        t.join(10)
    assert peer.request("status", timeout=20)["result"]["model"]["version"] == 2
    st = d.call("status")
    assert st["mqtt"]["connected"] and st["telemetry"]["inference"]["count"] > 0
    assert d.call("slots")["slots"][1]["status"] == "good"
    growth = (proc.memory_info().rss - base) / 2**20
    print(f"soak: {SOAK_S:.0f} s, {sent[0]} junk messages, RSS growth {growth:.1f} MiB, "
          f"refused {st['mqtt']['refused']}")
    assert growth < 32, f"RSS grew {growth:.1f} MiB"
