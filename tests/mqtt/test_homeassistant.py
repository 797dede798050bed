"""Home Assistant MQTT discovery from a real daemon: the retained device discovery message is
checked against the fields Home Assistant documents for device discovery and for each platform,
its value templates are rendered with Jinja2 (what Home Assistant uses) against the daemon's
real telemetry, and its buttons and update entity are driven the way Home Assistant drives them."""

from __future__ import annotations

import base64
import json
import time

import jinja2
import pytest

from tests.mqtt.test_mqtt_daemon import P, bundle, mqtt_cfg

DISCOVERY = "homeassistant/device/edgeagent_test-dev/config"

# https://www.home-assistant.io/integrations/mqtt/#device-discovery-payload and the platform pages
# (sensor.mqtt, binary_sensor.mqtt, update.mqtt, button.mqtt), abbreviated keys as documented
ROOT_FIELDS = {"dev", "o", "cmps", "state_topic", "availability", "availability_mode", "qos", "encoding", "~"}
DEVICE_FIELDS = {"ids", "name", "mf", "mdl", "mdl_id", "sw", "hw", "sn", "sa", "cu", "cns", "via_device"}
ORIGIN_FIELDS = {"name", "sw", "url"}
COMMON = {"p", "name", "unique_id", "object_id", "default_entity_id", "icon", "entity_category", "enabled_by_default",
          "availability", "availability_topic", "json_attributes_topic", "json_attributes_template", "qos",
          "device_class", "entity_picture", "encoding"}
PLATFORMS = {
    "sensor": COMMON | {"state_topic", "value_template", "unit_of_measurement", "state_class", "force_update",
                        "expire_after", "suggested_display_precision", "last_reset_value_template", "options"},
    "binary_sensor": COMMON | {"state_topic", "value_template", "payload_on", "payload_off", "force_update",
                               "expire_after", "off_delay"},
    "update": COMMON | {"state_topic", "value_template", "latest_version_topic", "latest_version_template",
                        "command_topic", "payload_install", "release_summary", "release_url", "title",
                        "display_precision", "retain"},
    "button": COMMON | {"command_topic", "command_template", "payload_press", "retain"},
}
DEVICE_CLASSES = {"sensor": {"duration", "power", "temperature", "energy", None},
                  "binary_sensor": {"problem", None}, "update": {"firmware", None}, "button": {None}}
UNITS = {"duration": {"ms", "s"}, "power": {"W", "kW"}, "temperature": {"°C", "°F"}}


def render(template: str, payload: dict) -> str:
    """How Home Assistant renders an MQTT value template: Jinja2 with value_json."""
    return jinja2.Environment().from_string(template).render(value_json=payload, value=json.dumps(payload))


def test_discovery_matches_the_schema_and_drives_the_device(tmp_path, broker, peers, start_daemon, signer, model_path):
    sysfs = tmp_path / "sysfs"
    zone = sysfs / "sys" / "class" / "thermal" / "thermal_zone0"  # a Pi's layout
    zone.mkdir(parents=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text("48312\n")
    p = peers(broker.port)
    p.c.subscribe("homeassistant/#", 1)
    time.sleep(0.2)
    d = start_daemon(**mqtt_cfg(broker.port), homeassistant={"discovery": True},
                     telemetry={"interval_s": 0.2, "sysfs_root": str(sysfs), "power_profile": "pi4"},
                     update={"trusted_keys": [str(signer / "edgeagent.pub")], "probation_s": 600.0})
    doc = p.wait(lambda t, b: t == DISCOVERY and isinstance(b, dict))

    # -- the schema ----------------------------------------------------------------------------
    assert set(doc) <= ROOT_FIELDS and {"dev", "o", "cmps"} <= set(doc)
    assert set(doc["dev"]) <= DEVICE_FIELDS and doc["dev"]["ids"] and doc["dev"]["name"] == "test-dev"
    assert set(doc["o"]) <= ORIGIN_FIELDS and doc["o"]["name"] == "edgeagent"
    assert doc["availability"] == [{"topic": f"{P}/status", "value_template": "{{ value_json.state }}",
                                     "payload_available": "online", "payload_not_available": "offline"}]
    assert doc["state_topic"] == f"{P}/telemetry"
    ids = set()
    by_platform: dict[str, list[dict]] = {}
    for key, c in doc["cmps"].items():
        plat = c["p"]
        assert plat in PLATFORMS, key
        assert set(c) <= PLATFORMS[plat], (key, set(c) - PLATFORMS[plat])
        assert c["unique_id"] == key and c["unique_id"] not in ids
        ids.add(c["unique_id"])
        assert c.get("device_class") in DEVICE_CLASSES[plat], key
        if c.get("device_class") in UNITS:
            assert c["unit_of_measurement"] in UNITS[c["device_class"]], key
        assert c.get("state_class") in (None, "measurement", "total", "total_increasing")
        assert c.get("entity_category") in (None, "config", "diagnostic")
        by_platform.setdefault(plat, []).append(c)
    names = {c["name"] for c in by_platform["sensor"]}
    assert names == {"Inference rate", "Latency p95", "Power", "Energy per inference", "Temperature cpu-thermal",
                     "Drift PSI (class)", "Drift PSI (input)", "Low-confidence frames"}
    assert [c["name"] for c in by_platform["binary_sensor"]] == ["Throttled", "Drift"]
    assert [c["name"] for c in by_platform["update"]] == ["Model"]
    assert sorted(c["name"] for c in by_platform["button"]) == ["Commit model", "Roll back model"]

    # -- the templates render real telemetry into the right numbers ------------------------------
    tel = p.wait(lambda t, b: t == f"{P}/telemetry" and isinstance(b, dict) and b["inference"]["fps"])
    got = {c["name"]: render(c["value_template"], tel) for c in by_platform["sensor"] + by_platform["binary_sensor"]}
    assert float(got["Inference rate"]) == tel["inference"]["fps"]
    assert float(got["Latency p95"]) == tel["inference"]["latency_ms"]["p95"]
    assert float(got["Temperature cpu-thermal"]) == pytest.approx(48.312)
    assert float(got["Power"]) == tel["power"]["agent_w"]  # no sensor: the agent's estimated share
    assert got["Energy per inference"] == "None"  # not measured: unknown, not a made-up number
    assert got["Throttled"] == "OFF"
    assert got["Drift"] == "OFF" and got["Drift PSI (class)"] == "None"  # no window judged against a reference yet
    drifting = {**tel, "quality": {"reference": "learned", "psi_class": 0.4123, "psi_input": 0.02, "drift": ["class"],
                                   "low_confidence_pct": 12.5}}
    got = {c["name"]: render(c["value_template"], drifting) for c in by_platform["sensor"] + by_platform["binary_sensor"]}
    assert got["Drift"] == "ON" and float(got["Drift PSI (class)"]) == 0.4123 and float(got["Low-confidence frames"]) == 12.5
    assert render(doc["availability"][0]["value_template"], {"state": "online"}) == "online"

    # -- the update entity: installed version; then an update, then the commit button -------------
    st = p.wait(lambda t, b: t == f"{P}/update" and isinstance(b, dict))
    assert st == {"installed_version": "1", "latest_version": "1", "in_progress": False, "update_percentage": None,
                  "title": "testmodel"}
    rel = bundle(tmp_path, signer, model_path, 2)
    start = len(p.msgs)
    r = p.request("update", {"manifest": json.loads(open(rel["manifest"]).read()),
                             "payload_b64": base64.b64encode(open(rel["payload"], "rb").read()).decode()})
    assert r["ok"], r
    p.wait(lambda t, b: t == f"{P}/update" and isinstance(b, dict) and b["installed_version"] == "2", start=start)
    button = next(c for c in by_platform["button"] if c["name"] == "Commit model")
    p.c.publish(button["command_topic"], button["payload_press"], qos=1)  # what pressing it does
    p.event("update.committed", version=2, start=start)
    # discovery is republished with the new model: its rollback button names the version it leaves,
    # so a second press (or the stale button of v1) cannot toggle back
    old_button = next(c for c in by_platform["button"] if c["name"] == "Roll back model")
    assert json.loads(old_button["payload_press"])["args"]["leave"] == 1
    newer = p.wait(lambda t, b: t == DISCOVERY and isinstance(b, dict) and any(
        c["name"] == "Roll back model" and json.loads(c["payload_press"])["args"].get("leave") == 2
        for c in b["cmps"].values()), start=start)
    rollback = next(c for c in newer["cmps"].values() if c["name"] == "Roll back model")
    p.c.publish(rollback["command_topic"], rollback["payload_press"], qos=1)
    p.event("rollback", version=1, start=start)
    n_roll = sum(1 for t, b, _ in p.msgs if t == f"{P}/events" and b.get("event") == "rollback")
    p.c.publish(rollback["command_topic"], rollback["payload_press"], qos=1)  # pressed twice
    time.sleep(1.0)
    assert sum(1 for t, b, _ in p.msgs if t == f"{P}/events" and b.get("event") == "rollback") == n_roll
    assert d.call("status")["model"]["version"] == 1

    # -- Home Assistant restarts and announces itself: the device publishes discovery again ------
    n = sum(1 for t, _, _ in p.msgs if t == DISCOVERY)
    p.c.publish("homeassistant/status", "online", qos=1)
    deadline = time.monotonic() + 10
    while sum(1 for t, _, _ in p.msgs if t == DISCOVERY) <= n:
        assert time.monotonic() < deadline, "discovery not republished after Home Assistant's birth"
        time.sleep(0.05)
    d.stop()


def test_discovery_is_off_by_default(tmp_path, broker, peers, start_daemon):
    p = peers(broker.port)
    p.c.subscribe("homeassistant/#", 1)
    time.sleep(0.2)
    start_daemon(**mqtt_cfg(broker.port))
    p.wait(lambda t, b: t == f"{P}/telemetry")
    time.sleep(0.5)
    assert not [t for t, _, _ in p.msgs if t.startswith("homeassistant/") or t == f"{P}/update"]


def test_a_staged_update_is_the_latest_version_with_when_it_switches(tmp_path, broker, peers, start_daemon, signer,
                                                                      model_path):
    from datetime import datetime, timedelta

    later = datetime.now() + timedelta(hours=2)
    p = peers(broker.port)
    start_daemon(**mqtt_cfg(broker.port), homeassistant={"discovery": True},
                 update={"trusted_keys": [str(signer / "edgeagent.pub")],
                         "switch_window": [f"{later:%H:%M}-{later + timedelta(hours=1):%H:%M}"]})
    p.wait(lambda t, b: t == f"{P}/update" and isinstance(b, dict) and b["installed_version"] == "1")
    rel = bundle(tmp_path, signer, model_path, 2)
    r = p.request("update", {"manifest": json.loads(open(rel["manifest"]).read()),
                             "payload_b64": base64.b64encode(open(rel["payload"], "rb").read()).decode()})
    assert r["ok"] and r["result"]["state"] == "staged", r
    # while the update's thread tidies up the state may say in progress; it settles on staged
    st = p.wait(lambda t, b: t == f"{P}/update" and isinstance(b, dict) and b["latest_version"] == "2"
                and b["in_progress"] is False)
    assert st["installed_version"] == "1" and st["update_percentage"] is None
    assert st["release_summary"].startswith(f"staged: switches at {r['result']['switch_at']}")
    tel = p.wait(lambda t, b: t == f"{P}/telemetry" and isinstance(b, dict) and (b.get("model") or {}).get("staged"))
    assert tel["model"]["staged"]["version"] == 2 and tel["model"]["version"] == 1  # what the fleet view reads
    from edgeagent.fleet.view import FleetView, table

    v = FleetView()
    v.ingest(f"{P}/status", json.dumps(p.wait(lambda t, b: t == f"{P}/status" and isinstance(b, dict))).encode())
    v.ingest(f"{P}/telemetry", json.dumps(tel).encode())
    (row,) = v.rows()
    assert row["staged"] == 2 and "staged v2" in table([row])[1]
