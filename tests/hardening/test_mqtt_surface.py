"""Issue 9, points 1, 2 (message bounds), 7 and 10 (reply topics): one publish must not disable
the device's command handling, and runtime settings cannot stop telemetry or the loop."""

from __future__ import annotations

import json
import time

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeagent.errors import EdgeAgentError
from tests.mqtt.test_mqtt_daemon import P, broker, mqtt_cfg, peers  # noqa: F401 - fixtures

pytestmark = [pytest.mark.long(seconds=40), pytest.mark.timeout(120)]


def test_junk_transfer_topics_do_not_end_command_handling(broker, peers, start_daemon):
    d = start_daemon(**mqtt_cfg(broker.port))
    peer = peers(broker.port)
    peer.wait(lambda t, b: t == f"{P}/status" and b.get("state") == "online")
    for topic in (f"{P}/transfer/x/\u00b2", f"{P}/transfer/x/" + "9" * 5000, f"{P}/transfer/x/-1",
                  f"{P}/transfer/../1", f"{P}/transfer/x/1/2", f"{P}/transfer/x/\u0663"):
        peer.c.publish(topic, b"junk", qos=1).wait_for_publish(5)
    # the network thread is alive: commands are still answered, nothing had to be restarted
    assert peer.request("ping", timeout=10)["ok"]
    st = d.call("status")["mqtt"]
    assert st["connected"] and st["thread_restarts"] == 0 and st["refused"] >= 3


def test_chunk_larger_than_max_message_bytes_is_dropped(broker, peers, start_daemon):
    d = start_daemon(**mqtt_cfg(broker.port, max_message_bytes=64 * 1024))
    peer = peers(broker.port)
    peer.wait(lambda t, b: t == f"{P}/status" and b.get("state") == "online")
    before = d.call("status")["mqtt"]["refused"]
    peer.c.publish(f"{P}/transfer/junk/0", b"\0" * (65 * 1024), qos=1).wait_for_publish(5)
    assert peer.request("ping", timeout=10)["ok"]
    assert d.call("status")["mqtt"]["refused"] == before + 1


@pytest.mark.parametrize("asked", [f"{P}/status", f"{P}/cmd", "edgeagent/group/lab/cmd", "resp/#", f"{P}"])
def test_reply_topic_under_the_device_prefix_is_refused(asked, broker, peers, start_daemon):
    start_daemon(**mqtt_cfg(broker.port))
    peer = peers(broker.port)
    peer.wait(lambda t, b: t == f"{P}/status" and b.get("state") == "online")
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = asked
    props.CorrelationData = b"c1"
    n = len(peer.msgs)
    peer.c.publish(f"{P}/cmd", json.dumps({"id": "r1", "op": "status"}), qos=1, properties=props)
    err = peer.wait(lambda t, b: t == f"{P}/cmd/reply" and isinstance(b, dict) and not b.get("ok"), 10, start=n)
    assert err["error"]["code"] == "cmd.bad_reply_topic"
    time.sleep(0.3)
    # nothing was published where the requester asked, and the retained status is untouched
    assert not [t for t, b, _ in peer.msgs[n:] if t == asked and isinstance(b, dict) and "ok" in b]
    late = peers(broker.port)
    assert late.wait(lambda t, b: t == f"{P}/status")["state"] == "online"


def test_reply_topic_p_cmd_reply_is_allowed(broker, peers, start_daemon):
    start_daemon(**mqtt_cfg(broker.port))
    peer = peers(broker.port)
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = f"{P}/cmd/reply"
    props.CorrelationData = b"c2"
    peer.c.publish(f"{P}/cmd", json.dumps({"id": "r2", "op": "ping"}), qos=1, properties=props)
    ok = peer.wait(lambda t, b: t == f"{P}/cmd/reply" and isinstance(b, dict) and b.get("id") == "r2", 10)
    assert ok["ok"]


@pytest.mark.parametrize("key,value", [("telemetry.interval_s", 1e308), ("telemetry.interval_s", 0.01),
                                       ("input.rate_hz", 1e-11), ("input.rate_hz", 0.01), ("input.rate_hz", 5000)])
def test_config_set_refuses_values_that_would_stop_the_device(key, value, start_daemon):
    d = start_daemon(telemetry={"interval_s": 0.2})
    with pytest.raises(EdgeAgentError) as e:
        d.call("config.set", {"key": key, "value": value})
    assert e.value.code == "config.invalid", e.value
    assert d.call("config.get", {"key": key})["value"] == (0.2 if key.startswith("tel") else d.cfg["input"]["rate_hz"])
    deadline = time.monotonic() + 10
    while d.call("status")["telemetry"] is None and time.monotonic() < deadline:
        time.sleep(0.1)
    f0 = d.call("status")["telemetry"]["seq"]
    time.sleep(1.0)
    st = d.call("status")
    assert st["telemetry"]["seq"] > f0 and st["telemetry"]["inference"]["count"] > 0


def test_config_set_accepts_the_documented_ranges(start_daemon):
    d = start_daemon()
    for key, value in (("input.rate_hz", 0), ("input.rate_hz", 0.1), ("input.rate_hz", 1000),
                       ("telemetry.interval_s", 0.1), ("telemetry.interval_s", 3600)):
        assert d.call("config.set", {"key": key, "value": value})["value"] == value
