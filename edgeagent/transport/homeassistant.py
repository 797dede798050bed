"""Home Assistant MQTT discovery: the device appears in Home Assistant with no YAML.

One retained device discovery message (`{prefix}/device/edgeagent_{id}/config`, the form Home
Assistant has read since 2024.11): sensors read straight from `P/telemetry` with value
templates (fps, p95 latency, each thermal zone, power, energy per inference), a throttling
binary sensor, an `update` entity fed by a retained `P/update` state (installed version, the
version being installed, download progress), and `rollback` / `commit` buttons that publish the
ordinary commands on `P/cmd`. Availability comes from the retained `P/status`. The message is
published on every connect and again when Home Assistant announces itself on
`{prefix}/status` (it forgets discovered devices when it restarts without a persistent broker).

The update entity has no install command: an update needs a signed manifest, which comes from a
rollout or `edgeagent push`, not from a button.
"""

from __future__ import annotations

import json
import logging
import queue
import re
from typing import Any, Protocol

log = logging.getLogger("edgeagent.homeassistant")

ORIGIN_URL = "https://github.com/edgeagent/edgeagent"


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", s)


def discovery_topic(prefix: str, device_id: str) -> str:
    return f"{prefix}/device/edgeagent_{_slug(device_id)}/config"


def discovery_payload(*, device_id: str, topic_prefix: str, agent_version: str, model: dict,
                      thermal_zones: list[str]) -> dict:
    """The device discovery document (pure: a test checks it against Home Assistant's schema)."""
    uid = f"edgeagent_{_slug(device_id)}"
    P = topic_prefix
    none = "None"  # what an MQTT sensor's template renders for 'unknown'
    cmps: dict[str, dict] = {
        f"{uid}_fps": {"p": "sensor", "name": "Inference rate", "unique_id": f"{uid}_fps", "unit_of_measurement": "fps",
                       "state_class": "measurement", "icon": "mdi:speedometer", "suggested_display_precision": 1,
                       "value_template": "{{ value_json.inference.fps }}"},
        f"{uid}_p95": {"p": "sensor", "name": "Latency p95", "unique_id": f"{uid}_p95", "device_class": "duration",
                       "unit_of_measurement": "ms", "state_class": "measurement", "suggested_display_precision": 2,
                       "value_template": "{{ value_json.inference.latency_ms.p95 if value_json.inference.latency_ms"
                                         f".p95 is not none else '{none}' }}}}"},
        f"{uid}_power": {"p": "sensor", "name": "Power", "unique_id": f"{uid}_power", "device_class": "power",
                         "unit_of_measurement": "W", "state_class": "measurement", "suggested_display_precision": 2,
                         "value_template": "{% set p = value_json.power %}{{ p.total_w if p and p.total_w is not none "
                                           f"else (p.agent_w if p and p.agent_w is not none else '{none}') }}}}"},
        f"{uid}_epi": {"p": "sensor", "name": "Energy per inference", "unique_id": f"{uid}_epi",
                       "unit_of_measurement": "mJ", "state_class": "measurement", "icon": "mdi:lightning-bolt",
                       "value_template": "{{ value_json.energy_per_inference_mj if value_json.energy_per_inference_mj"
                                         f" is not none else '{none}' }}}}"},
        f"{uid}_throttled": {"p": "binary_sensor", "name": "Throttled", "unique_id": f"{uid}_throttled",
                             "device_class": "problem",
                             "value_template": "{{ 'ON' if value_json.throttled and value_json.throttled.now "
                                               "else 'OFF' }}"},
        f"{uid}_drift": {"p": "binary_sensor", "name": "Drift", "unique_id": f"{uid}_drift", "device_class": "problem",
                         "value_template": "{{ 'ON' if value_json.quality and value_json.quality.drift else 'OFF' }}"},
        **{f"{uid}_psi_{m}": {"p": "sensor", "name": f"Drift PSI ({m})", "unique_id": f"{uid}_psi_{m}",
                              "state_class": "measurement", "icon": "mdi:chart-bell-curve", "suggested_display_precision": 3,
                              "value_template": f"{{{{ value_json.quality.psi_{m} if value_json.quality and "
                                                f"value_json.quality.psi_{m} is not none else '{none}' }}}}"}
           for m in ("class", "input")},
        f"{uid}_low_conf": {"p": "sensor", "name": "Low-confidence frames", "unique_id": f"{uid}_low_conf",
                            "unit_of_measurement": "%", "state_class": "measurement", "icon": "mdi:help-circle-outline",
                            "value_template": "{{ value_json.quality.low_confidence_pct if value_json.quality and "
                                              f"value_json.quality.low_confidence_pct is not none else '{none}' }}}}"},
        f"{uid}_model": {"p": "update", "name": "Model", "unique_id": f"{uid}_model", "state_topic": f"{P}/update",
                         "title": str(model.get("name") or "model"), "device_class": "firmware",
                         "entity_category": "config"},
        f"{uid}_rollback": {"p": "button", "name": "Roll back model", "unique_id": f"{uid}_rollback",
                            "command_topic": f"{P}/cmd", "entity_category": "config", "icon": "mdi:undo",
                            # leave: the version serving when this was published (discovery is
                            # republished on every model change), so a second press does nothing
                            "payload_press": json.dumps({"id": "homeassistant-rollback", "op": "rollback",
                                                         "args": {"reason": "Home Assistant", **(
                                                             {"leave": model["version"]}
                                                             if isinstance(model.get("version"), int) else {})}})},
        f"{uid}_commit": {"p": "button", "name": "Commit model", "unique_id": f"{uid}_commit",
                          "command_topic": f"{P}/cmd", "entity_category": "config", "icon": "mdi:check",
                          "payload_press": json.dumps({"id": "homeassistant-commit", "op": "commit", "args": {}})},
    }
    for zone in thermal_zones:
        z = _slug(zone)
        cmps[f"{uid}_temp_{z}"] = {
            "p": "sensor", "name": f"Temperature {zone}", "unique_id": f"{uid}_temp_{z}",
            "device_class": "temperature", "unit_of_measurement": "°C", "state_class": "measurement",
            "value_template": f"{{{{ value_json.thermal[{json.dumps(zone)}] if value_json.thermal and "
                              f"value_json.thermal[{json.dumps(zone)}] is not none else '{none}' }}}}"}
    return {
        "dev": {"ids": [uid], "name": device_id, "mf": "edgeagent", "mdl": "edge ML agent", "sw": agent_version},
        "o": {"name": "edgeagent", "sw": agent_version, "url": ORIGIN_URL},
        "cmps": cmps,
        "state_topic": f"{P}/telemetry",
        "availability": [{"topic": f"{P}/status", "value_template": "{{ value_json.state }}",
                          "payload_available": "online", "payload_not_available": "offline"}],
        "qos": 1,
    }


def update_state(model: dict, progress: dict | None, installing: Any) -> dict:
    """The update entity's state: the installed version, and while an update runs, its version
    as `latest_version` with its progress; a staged update (downloaded, switching in its window)
    is the latest version, with when it switches as the release summary."""
    installed = str(model.get("version"))
    out = {"installed_version": installed, "latest_version": installed, "in_progress": False,
           "update_percentage": None, "title": str(model.get("name") or "model")}
    staged = model.get("staged")
    if isinstance(staged, dict) and staged.get("version") is not None:
        out["latest_version"] = str(staged["version"])
        out["release_summary"] = f"staged: switches at {staged.get('switch_at')} (or with the switch command)"
    if progress is not None:
        out["in_progress"] = True
        if installing is not None:
            out["latest_version"] = str(installing)
        pct = progress.get("percent")
        if isinstance(pct, (int, float)) and progress.get("phase") in ("download", "fetch", "transfer", None):
            out["update_percentage"] = round(float(pct), 1)
    return out


class Source(Protocol):
    """What discovery reads of the running daemon (service.agent.Agent provides it)."""

    @property
    def model_info(self) -> dict: ...

    @property
    def last_telemetry(self) -> dict | None: ...

    def thermal_zones(self) -> list[str]: ...

    def update_progress(self) -> dict | None: ...

    def installing_version(self) -> Any: ...


class Discovery:
    """Publishes discovery and the update state through the daemon's transport."""

    def __init__(self, source: Source, transport: Any, *, prefix: str, device_id: str, topic_prefix: str) -> None:
        self.source = source
        self.transport = transport  # transport.mqtt.MqttTransport
        self.prefix = prefix
        self.device_id = device_id
        self.topic_prefix = topic_prefix
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._last_state: dict | None = None
        self._announced_version: object = None

    def attach(self) -> None:
        self.transport.watch(f"{self.prefix}/status", self._on_ha_status)

    def _on_ha_status(self, payload: bytes) -> None:  # paho's thread: enqueue only
        if payload.strip().lower() == b"online":
            self._q.put("birth")

    def on_connected(self) -> None:
        self._q.put("connect")

    def tick(self) -> None:
        """From the main loop: publish what is due (discovery after a connect or HA's birth, the
        update state when it changed)."""
        announce = False
        while True:
            try:
                self._q.get_nowait()
                announce = True
            except queue.Empty:
                break
        if not self.transport.connected:
            return
        if self._announced_version != self.source.model_info.get("version"):
            announce = True  # the rollback button names the version it leaves
        if announce:
            self.publish_discovery()
            self._last_state = None
        self.publish_state()

    def publish_discovery(self) -> None:
        a = self.source
        zones = list(((a.last_telemetry or {}).get("thermal") or {}).keys()) or a.thermal_zones()
        from edgeagent import __version__

        self._announced_version = a.model_info.get("version")
        doc = discovery_payload(device_id=self.device_id, topic_prefix=self.topic_prefix,
                                agent_version=__version__, model=a.model_info, thermal_zones=zones)
        self.transport.publish_topic(discovery_topic(self.prefix, self.device_id),
                                     json.dumps(doc, separators=(",", ":")).encode(), qos=1, retain=True)
        log.info("home assistant: discovery published (%d entities)", len(doc["cmps"]))

    def publish_state(self) -> None:
        a = self.source
        st = update_state(a.model_info, a.update_progress(), a.installing_version())
        if st != self._last_state:
            self._last_state = st
            self.transport.publish("update", st, qos=1, retain=True)
