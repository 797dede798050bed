"""The controller's first read of the broker ends when it has every retained message, not after
a quiet spell: with a fleet's telemetry flowing there never is one (issue 24). A real mosquitto
holds 300 devices' retained status and rollout results while another client publishes telemetry
without pause; the read must know all 300 and say it ended on its marker."""

from __future__ import annotations

import json
import threading

import paho.mqtt.client as mqtt

from edgeagent.fleet.controller import RolloutController
from edgeagent.transport.client import MqttClient


def test_the_retained_read_ends_on_its_marker_with_every_device_while_telemetry_never_stops(broker):
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="devices", protocol=mqtt.MQTTv5)
    pub.max_inflight_messages_set(1000)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    stop = threading.Event()
    try:
        ids = [f"d{i:03d}" for i in range(300)]
        sent = []
        for d in ids:
            sent.append(pub.publish(f"edgeagent/{d}/status", json.dumps(
                {"state": "online", "device": d, "groups": ["big"], "model": {"name": "m", "version": 1}}),
                qos=1, retain=True))
            sent.append(pub.publish(f"edgeagent/{d}/rollout", json.dumps(
                {"rollout": "r-old", "group": "big", "version": 1, "result": "committed", "ts": 1.0}),
                qos=1, retain=True))
        for s in sent:
            s.wait_for_publish(20)

        def noise() -> None:
            n = 0
            while not stop.wait(0.002):
                pub.publish(f"edgeagent/{ids[n % len(ids)]}/telemetry", b'{"inference": {"fps": 10}}', qos=0)
                n += 1

        threading.Thread(target=noise, daemon=True).start()
        c = MqttClient("127.0.0.1", broker.port)
        try:
            ctl = RolloutController(c, "big")
            ctl.load()
            assert c.settled_by_marker  # it ended because it had them all, not on a quiet spell or a cap
            assert len(ctl.view.in_group("big")) == 300
            assert len(ctl.results()) == 300 and all(r is not None for r in ctl.results().values())
        finally:
            c.close()
    finally:
        stop.set()
        pub.loop_stop()
        pub.disconnect()
