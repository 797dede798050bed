"""Builds one P/telemetry payload (CONTRACT section 6) from the loop's window and the hardware.

A figure the device cannot read is absent or null, never invented. Without a power sensor the
estimate is the agent's own share (`agent_w`, from its CPU time and a board profile) with
"source": "estimate" and `total_w` null, and energy per inference stays null: it is reported only
from measured power. Hardware files are discovered once (and again every minute, for
hot-plugged sensors), then re-read in place.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import time
from typing import Any

from edgeagent.config import TelemetryConfig
from edgeagent.telemetry import power as pw

REDISCOVER_S = 60.0

THROTTLE_BITS = {0: "under-voltage", 1: "frequency-capped", 2: "throttled", 3: "soft-temperature-limit"}


def decode_throttled(value: int) -> dict:
    """Raspberry Pi get_throttled flags: bits 0-3 now, bits 16-19 the same since boot."""
    return {
        "raw": hex(value),
        "now": [name for bit, name in THROTTLE_BITS.items() if value & (1 << bit)],
        "since_boot": [name for bit, name in THROTTLE_BITS.items() if value & (1 << (bit + 16))],
    }


class _Thermal:
    def __init__(self, root: str) -> None:
        self.zones = []
        seen: dict[str, int] = {}
        for z in sorted(glob.glob(f"{root}/sys/class/thermal/thermal_zone*"), key=lambda p: int(re.sub(r"\D", "", os.path.basename(p)) or 0)):
            typ = pw._text(f"{z}/type") or os.path.basename(z)
            a = pw._open(f"{z}/temp")
            if a is None:
                continue
            n = seen.get(typ, 0)
            seen[typ] = n + 1
            self.zones.append((typ if n == 0 else f"{typ}_{n}", a))

    def read(self) -> dict[str, float]:
        out = {}
        for name, a in self.zones:
            v = a.read()
            if v is not None:
                out[name] = round(v / 1000.0, 3)
        return out


class TelemetryCollector:
    def __init__(self, cfg: TelemetryConfig, device_id: str, *, vcgencmd: str | None = "vcgencmd") -> None:
        self.cfg = cfg
        self.device = device_id
        self.root = cfg.sysfs_root.rstrip("/")
        self.vcgencmd = vcgencmd
        self.seq = 0
        self.started = time.monotonic()
        self._proc: Any = None  # psutil.Process, with the first window: psutil is imported after READY=1
        self._cores = os.cpu_count() or 1
        self._last_count: int | None = None
        self._last_t = time.monotonic()
        self._last_energy: float | None = None
        self._discover()

    def _discover(self) -> None:
        root = self.root
        self._discovered = time.monotonic()
        self.thermal = _Thermal(root)
        self.ina = pw.Ina3221(root)
        self.hwmon = pw.Hwmon(root)
        self.rapl = pw.Rapl(root)
        self.battery = pw.Battery(root)
        self.pmic = None
        self._throttled_file = pw._open(f"{root}/sys/devices/platform/soc/soc:firmware/get_throttled")
        self._vcgencmd = shutil.which(self.vcgencmd) if self.vcgencmd else None
        if not (self.ina.rails or self.hwmon.power or self.hwmon.energy):
            pmic = pw.RpiPmic(self.vcgencmd)
            self.pmic = pmic if pmic.ok else None
        profile = self.cfg.power_profile
        self.profile = pw.detect_profile(root) if profile == "auto" else (None if profile == "none" else profile)

    def _throttled(self) -> dict | None:
        if self._throttled_file is not None:
            try:
                self._throttled_file._fh.seek(0)
                return decode_throttled(int(self._throttled_file._fh.read().strip(), 16))
            except (OSError, ValueError):
                return None
        if self._vcgencmd:  # only where no sysfs twin exists
            try:
                out = subprocess.run([self._vcgencmd, "get_throttled"], capture_output=True, text=True, timeout=2).stdout
                m = re.search(r"throttled=(0x[0-9a-fA-F]+)", out)
                return decode_throttled(int(m.group(1), 16)) if m else None
            except (OSError, subprocess.TimeoutExpired):
                return None
        return None

    def _power(self, agent_cpu_percent: float | None) -> tuple[dict | None, float | None]:
        """(power dict, energy counter in J if the hardware has one)."""
        if self.ina.rails:
            rails = self.ina.read()
            if rails:
                return {"total_w": _r(pw.Ina3221.total(rails)), "rails": _rr(rails), "source": "ina3221"}, None
        if self.hwmon.power or self.hwmon.energy:
            rails, energy = self.hwmon.read()
            if rails:
                return {"total_w": _r(sum(rails.values())), "rails": _rr(rails), "source": "hwmon"}, energy
        if self.pmic is not None:
            rails = self.pmic.read()
            if rails:
                return {"total_w": _r(sum(rails.values())), "rails": _rr(rails), "source": "rpi-pmic"}, None
        if self.rapl.zones:
            rails = self.rapl.read()
            if rails:
                return {"total_w": _r(sum(rails.values())), "rails": _rr(rails), "source": "rapl"}, self.rapl.energy_j
        if self.battery.bats:
            rails = self.battery.read()
            if rails:
                return {"total_w": _r(sum(rails.values())), "rails": _rr(rails), "source": "battery"}, None
        if self.profile and agent_cpu_percent is not None:
            # no sensor: the agent's share, never passed off as the board's draw (total_w null)
            w = pw.estimate_w(self.profile, agent_cpu_percent, self._cores)
            return {"total_w": None, "agent_w": _r(w), "rails": {}, "source": "estimate",
                    "profile": self.profile}, None
        return None, None

    def begin_window(self) -> None:
        """The next sample's CPU figures count from now: called once the model is loaded, so the
        first sample is not the start-up (imports, model load, slot hashing) reported as running cost."""
        import psutil

        if self._proc is None:
            self._proc = psutil.Process()
        self._proc.cpu_percent(None)
        psutil.cpu_percent(None)
        self._last_t = time.monotonic()

    def collect(self, *, model: dict, inference: dict, extra: dict | None = None) -> dict:
        import psutil

        if self._proc is None:
            self.begin_window()
        now = time.monotonic()
        if now - self._discovered > REDISCOVER_S:
            self._discover()
        cpu: float | None = psutil.cpu_percent(None)
        vm = psutil.virtual_memory()
        with self._proc.oneshot():
            agent_cpu: float | None = self._proc.cpu_percent(None)
            rss = self._proc.memory_info().rss
        try:
            load1 = os.getloadavg()[0]
        except OSError:
            load1 = None
        power, energy = self._power(agent_cpu)
        count = inference.get("count")
        window_s = now - self._last_t
        epi = None
        measured = power is not None and power.get("source") != "estimate"  # an estimate makes no energy figure
        if measured and isinstance(count, int) and self._last_count is not None and count > self._last_count:
            if energy is not None and self._last_energy is not None and energy >= self._last_energy:
                joules = energy - self._last_energy
            else:
                joules = (power.get("total_w") or 0.0) * window_s
            epi = round(joules * 1000.0 / (count - self._last_count), 4)
        self._last_count, self._last_t, self._last_energy = count, now, energy
        payload: dict[str, Any] = {
            "ts": round(time.time(), 3),
            "seq": self.seq,
            "device": self.device,
            "model": model,
            "inference": inference,
            "system": {
                "cpu_percent": round(cpu, 1) if cpu is not None else None,
                "agent_cpu_percent": round(agent_cpu, 1) if agent_cpu is not None else None,
                "mem_percent": round(vm.percent, 1),
                "agent_rss_mb": round(rss / (1 << 20), 1),
                "load1": round(load1, 2) if load1 is not None else None,
                "uptime_s": round(now - self.started, 1),
            },
            "thermal": self.thermal.read(),
            "power": power,
            "energy_per_inference_mj": epi,
        }
        thr = self._throttled()
        if thr is not None:
            payload["throttled"] = thr
        if extra:
            payload.update(extra)
        self.seq += 1
        return payload


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def _rr(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in d.items()}
