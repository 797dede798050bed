"""What the broker knows about the fleet: retained status, recent telemetry, rollout results.

Pure bookkeeping fed by MQTT messages (no network here): `edgeagent fleet`, `top --fleet` and
the rollout controller all ingest into one FleetView. Devices are named by the topic segment the
prefix pattern's `{device_id}` stands at, so a custom `mqtt.topic_prefix` works as long as the
whole fleet uses the same one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from edgeagent.fleet.rollout_doc import RESULT_SUBTOPIC, DeviceResult, parse_result

DEFAULT_PREFIX = "edgeagent/{device_id}"


@dataclass
class Device:
    id: str
    status: dict = field(default_factory=dict)
    telemetry: dict = field(default_factory=dict)
    result: DeviceResult | None = None
    last_seen: float | None = None  # wall time of the last message from it (ours, not its clock)

    @property
    def groups(self) -> list[str]:
        g = self.status.get("groups")
        return [x for x in g if isinstance(x, str)] if isinstance(g, list) else []

    def row(self) -> dict:
        """The fleet table's row: model from the newest of status and telemetry."""
        t = self.telemetry
        model = dict(self.status.get("model") or {})
        model.update({k: v for k, v in (t.get("model") or {}).items() if v is not None})
        inf = t.get("inference") or {}
        lat = inf.get("latency_ms") or {}
        temps = [v for v in (t.get("thermal") or {}).values() if isinstance(v, (int, float))]
        power = t.get("power") or {}
        thr = t.get("throttled") or {}
        return {
            "id": self.id, "state": self.status.get("state", "unknown"), "groups": self.groups,
            "agent": self.status.get("agent"),
            "model": model.get("name"), "version": model.get("version"), "slot": model.get("slot"),
            "trial": bool(model.get("trial")),
            "staged": (model.get("staged") or {}).get("version") if isinstance(model.get("staged"), dict) else None,
            "fps": inf.get("fps"), "p95_ms": lat.get("p95"),
            "temp_c": max(temps) if temps else None,
            "power_w": power.get("total_w") if power.get("total_w") is not None else power.get("agent_w"),
            "power_source": power.get("source"),
            "throttled": bool(thr.get("now")) if thr else None,
            "quality": _quality(t.get("quality")),
            "rollout": ({"id": self.result.rollout, "result": self.result.result, "version": self.result.version}
                        if self.result else None),
            "last_seen": self.last_seen,
        }


def _quality(q: object) -> dict | None:
    """The row's prediction quality: the largest PSI of the last window, and what drifts."""
    if not isinstance(q, dict):
        return None
    psis = [v for k, v in q.items() if k.startswith("psi_") and isinstance(v, (int, float))]
    drift = q.get("drift") if isinstance(q.get("drift"), list) else []
    return {"psi_max": max(psis) if psis else None, "drift": [d for d in drift if isinstance(d, str)],
            "reference": q.get("reference")}


class FleetView:
    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        if "{device_id}" not in prefix:
            raise ValueError("the topic prefix must contain {device_id}")
        self.prefix = prefix.rstrip("/")
        self._parts = self.prefix.split("/")
        self._at = self._parts.index("{device_id}")
        self.devices: dict[str, Device] = {}

    def topics(self, *, events: bool = False, live: bool = True, retained: bool = True) -> list[tuple[str, int]]:
        """The device topics to follow: the retained ones (status, rollout result) and the live
        ones (telemetry, and events when asked)."""
        wild = "/".join("+" if p == "{device_id}" else p for p in self._parts)
        subs = [(f"{wild}/status", 1), (f"{wild}/{RESULT_SUBTOPIC}", 1)] if retained else []
        if live:
            subs += [(f"{wild}/telemetry", 0)] + ([(f"{wild}/events", 1)] if events else [])
        return subs

    def prefix_of(self, device: str) -> str:
        return self.prefix.replace("{device_id}", device)

    def split(self, topic: str) -> tuple[str, str] | None:
        """(device id, subtopic) of a device topic, or None."""
        parts = topic.split("/")
        n = len(self._parts)
        if len(parts) != n + 1:
            return None
        for i, p in enumerate(self._parts):
            if i != self._at and parts[i] != p:
                return None
        dev = parts[self._at]
        if not dev or (self._parts[0] == "edgeagent" and self._at == 1 and dev == "group"):
            return None
        return dev, parts[n]

    def ingest(self, topic: str, payload: bytes, now: float | None = None) -> tuple[Device, str, Any] | None:
        """Take one message; (device, subtopic, decoded body) when it was a device's, else None."""
        where = self.split(topic)
        if where is None:
            return None
        dev_id, sub = where
        if sub == RESULT_SUBTOPIC:
            d = self.devices.setdefault(dev_id, Device(dev_id))
            d.result = parse_result(dev_id, payload)
            return d, sub, d.result
        try:
            body = json.loads(payload) if payload else None
        except (ValueError, RecursionError, UnicodeDecodeError):
            return None
        if not isinstance(body, dict):
            return None
        d = self.devices.setdefault(dev_id, Device(dev_id))
        if sub == "status":
            d.status = body
        elif sub == "telemetry":
            d.telemetry = body
        d.last_seen = now if now is not None else time.time()
        return d, sub, body

    def in_group(self, group: str) -> list[str]:
        return sorted(d.id for d in self.devices.values() if group in d.groups)

    def rows(self, group: str | None = None) -> list[dict]:
        return [self.devices[k].row() for k in sorted(self.devices)
                if (group is None or group in self.devices[k].groups) and self.devices[k].status]


def _f(v: Any, nd: int = 1) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    s = max(0.0, now - ts)
    return f"{s:.0f}s" if s < 120 else (f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.0f}h")


COLUMNS = ("DEVICE", "STATE", "GROUPS", "MODEL", "SLOT", "TRIAL", "FPS", "P95 MS", "TEMP C", "POWER W", "PSI",
           "ROLLOUT", "SEEN")


def _psi_cell(q: dict | None) -> str:
    """`0.03`, or `0.41 DRIFT` while model.drift is raised."""
    if not q or q.get("psi_max") is None:
        return "-"
    return f"{q['psi_max']:.2f}" + (" DRIFT" if q.get("drift") else "")


def table(rows: list[dict], now: float | None = None) -> list[str]:
    """The fleet as aligned text lines (the plain form of `fleet` and `top --fleet`)."""
    now = time.time() if now is None else now
    cells = [COLUMNS]
    for r in rows:
        ro = r.get("rollout")
        cells.append((
            r["id"], r["state"], ",".join(r["groups"]) or "-",
            f"{r['model'] or '-'} v{r['version']}" if r.get("version") is not None else (r["model"] or "-"),
            r["slot"] or "-", "yes" if r["trial"] else (f"staged v{r['staged']}" if r.get("staged") else "-"), _f(r["fps"]), _f(r["p95_ms"], 2), _f(r["temp_c"]),
            (_f(r["power_w"], 2) + ("~" if r.get("power_source") == "estimate" else "")) if r["power_w"] is not None else "-",
            _psi_cell(r.get("quality")), f"{ro['id']}:{ro['result']}" if ro else "-", _ago(r["last_seen"], now)))
    widths = [max(len(str(c[i])) for c in cells) for i in range(len(COLUMNS))]
    return ["  ".join(str(c[i]).ljust(widths[i]) for i in range(len(COLUMNS))).rstrip() for c in cells]
