"""Power readers, each for one hardware family, all read under sysfs_root.

Preference (the first that finds something wins): ina3221 (Jetson; both the JetPack <= 4
iio layout and the JetPack 5/6 hwmon layout) > hwmon power/energy > rpi-pmic (Pi 5, through
`vcgencmd pmic_read_adc`) > rapl (Intel/AMD, from energy counters) > battery (power_supply) >
estimate (the agent's own CPU share x a board profile's dynamic power). Files are found once and kept open; sysfs
attributes can be re-read after a seek(0), so no interval opens a file or spawns a process,
except vcgencmd on a Pi 5 where nothing else exists.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import time

# Idle and full-load board power in watts, for the estimate. Sources: Raspberry Pi 4B ~2.7 W idle,
# ~6.4 W under stress (RPi foundation / Tom's Hardware measurements); Pi 5 ~2.7 W idle, ~7 W loaded
# (RPi foundation); Jetson Nano 5 W / 10 W power modes (NVIDIA); Orin Nano 7 W idle-ish .. 15 W mode
# (NVIDIA); generic: a small x86 box.
PROFILES = {
    "pi4": (2.7, 6.4),
    "pi5": (2.7, 7.0),
    "jetson-nano": (1.5, 10.0),
    "orin-nano": (4.0, 15.0),
    "generic": (5.0, 25.0),
}


class _Attr:
    """A sysfs attribute kept open; read() re-reads it from the start."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fh = open(path, "rb", buffering=0)

    def read(self) -> float | None:
        try:
            self._fh.seek(0)
            return float(self._fh.read().strip())
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        self._fh.close()


def _text(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def _open(path: str) -> _Attr | None:
    try:
        return _Attr(path)
    except OSError:
        return None


class Ina3221:
    """Jetson INA3221 rail monitors -> {rail: W}."""

    source = "ina3221"

    def __init__(self, root: str) -> None:
        self.rails: list[tuple[str, _Attr | None, _Attr | None, _Attr | None]] = []  # name, mW | mV, mA
        # JetPack <= 4: /sys/bus/i2c/drivers/ina3221x/*/iio:device*/in_power{N}_input (mW), rail_name_{N}
        for dev in sorted(glob.glob(f"{root}/sys/bus/i2c/drivers/ina3221x/*/iio:device*")):
            for p in sorted(glob.glob(f"{dev}/in_power*_input")):
                n = re.search(r"in_power(\d+)_input$", p).group(1)
                name = _text(f"{dev}/rail_name_{n}") or f"rail{n}"
                self.rails.append((name, _open(p), None, None))
        # JetPack 5/6: hwmon with name "ina3221": in{N}_label, in{N}_input (mV), curr{N}_input (mA)
        for hw in sorted(glob.glob(f"{root}/sys/class/hwmon/hwmon*")):
            if _text(f"{hw}/name") != "ina3221":
                continue
            for lab in sorted(glob.glob(f"{hw}/in*_label")):
                n = re.search(r"in(\d+)_label$", lab).group(1)
                name = _text(lab) or f"in{n}"
                if name.lower().startswith("sum of"):
                    continue
                mv, ma = _open(f"{hw}/in{n}_input"), _open(f"{hw}/curr{n}_input")
                if mv and ma:
                    self.rails.append((name, None, mv, ma))

    def read(self) -> dict[str, float]:
        out = {}
        for name, mw, mv, ma in self.rails:
            if mw is not None:
                v = mw.read()
                if v is not None:
                    out[name] = v / 1000.0
            else:
                v, i = mv.read(), ma.read()
                if v is not None and i is not None:
                    out[name] = v * i / 1e6
        return out

    @staticmethod
    def total(rails: dict[str, float]) -> float | None:
        # the input rail is the board total when it is there (POM_5V_IN, VDD_IN); else the sum
        for k, v in rails.items():
            if k.upper() in ("POM_5V_IN", "VDD_IN", "VIN_SYS_5V0"):
                return v
        return sum(rails.values()) if rails else None


class Hwmon:
    """Generic hwmon power{N}_input (µW) and energy{N}_input (µJ)."""

    source = "hwmon"

    def __init__(self, root: str) -> None:
        self.power: list[tuple[str, _Attr]] = []
        self.energy: list[tuple[str, _Attr]] = []
        for hw in sorted(glob.glob(f"{root}/sys/class/hwmon/hwmon*")):
            hname = _text(f"{hw}/name") or os.path.basename(hw)
            if hname == "ina3221":
                continue
            for p in sorted(glob.glob(f"{hw}/power*_input")):
                n = re.search(r"power(\d+)_input$", p).group(1)
                a = _open(p)
                if a:
                    self.power.append((_text(f"{hw}/power{n}_label") or f"{hname}_power{n}", a))
            for p in sorted(glob.glob(f"{hw}/energy*_input")):
                n = re.search(r"energy(\d+)_input$", p).group(1)
                a = _open(p)
                if a:
                    self.energy.append((_text(f"{hw}/energy{n}_label") or f"{hname}_energy{n}", a))
        self._last: dict[str, tuple[float, float]] = {}

    def read(self) -> tuple[dict[str, float], float | None]:
        """({rail: W}, energy counter J or None)."""
        rails = {}
        for name, a in self.power:
            v = a.read()
            if v is not None:
                rails[name] = v / 1e6
        energy = None
        now = time.monotonic()
        for name, a in self.energy:
            v = a.read()
            if v is None:
                continue
            j = v / 1e6
            energy = (energy or 0.0) + j
            prev = self._last.get(name)
            self._last[name] = (now, j)
            if name not in rails and prev and now > prev[0] and j >= prev[1]:
                rails[name] = (j - prev[1]) / (now - prev[0])
        return rails, energy


class Rapl:
    """Intel/AMD RAPL package energy counters -> W over the interval, wrap-around handled."""

    source = "rapl"

    def __init__(self, root: str) -> None:
        self.zones = []
        for z in sorted(glob.glob(f"{root}/sys/class/powercap/intel-rapl:*")):
            if re.search(r"intel-rapl:\d+:\d+$", z):
                continue  # subzones (core, uncore, dram) are inside the package figure
            e = _open(f"{z}/energy_uj")
            if e:
                rng = _text(f"{z}/max_energy_range_uj")
                self.zones.append((_text(f"{z}/name") or os.path.basename(z), e, float(rng) if rng else None))
        self._last: dict[str, tuple[float, float]] = {}
        self.energy_j = 0.0  # accumulated since start, wrap-corrected
        self.read()  # prime the counters: the first interval starts now

    def read(self) -> dict[str, float]:
        now = time.monotonic()
        rails = {}
        for name, e, rng in self.zones:
            uj = e.read()
            if uj is None:
                continue
            prev = self._last.get(name)
            self._last[name] = (now, uj)
            if prev is None or now <= prev[0]:
                continue
            d = uj - prev[1]
            if d < 0 and rng:
                d += rng  # the counter wrapped at max_energy_range_uj
            if d < 0:
                continue
            self.energy_j += d / 1e6
            rails[name] = d / 1e6 / (now - prev[0])
        return rails


class Battery:
    """/sys/class/power_supply/BAT*: power_now (µW) or current_now (µA) x voltage_now (µV)."""

    source = "battery"

    def __init__(self, root: str) -> None:
        self.bats = []
        for b in sorted(glob.glob(f"{root}/sys/class/power_supply/BAT*")):
            p = _open(f"{b}/power_now")
            i, v = _open(f"{b}/current_now"), _open(f"{b}/voltage_now")
            if p or (i and v):
                self.bats.append((os.path.basename(b), p, i, v))

    def read(self) -> dict[str, float]:
        out = {}
        for name, p, i, v in self.bats:
            if p is not None:
                w = p.read()
                if w is not None:
                    out[name] = w / 1e6
            elif i is not None and v is not None:
                a, u = i.read(), v.read()
                if a is not None and u is not None:
                    out[name] = abs(a) * u / 1e12
        return out


class RpiPmic:
    """Pi 5: `vcgencmd pmic_read_adc` prints paired current (_A) and voltage (_V) lines."""

    source = "rpi-pmic"

    def __init__(self, vcgencmd: str | None) -> None:
        self.cmd = shutil.which(vcgencmd) if vcgencmd else None
        self.ok = False
        if self.cmd:
            self.ok = bool(self.read())

    def read(self) -> dict[str, float]:
        if not self.cmd:
            return {}
        try:
            out = subprocess.run([self.cmd, "pmic_read_adc"], capture_output=True, text=True, timeout=2).stdout
        except (OSError, subprocess.TimeoutExpired):
            return {}
        amps, volts = {}, {}
        for m in re.finditer(r"^\s*(\S+)_([AV])\s+\w+\(\d+\)=([0-9.]+)[AV]", out, re.M):
            (amps if m.group(2) == "A" else volts)[m.group(1)] = float(m.group(3))
        return {k: amps[k] * volts[k] for k in amps if k in volts}


def detect_profile(root: str) -> str:
    model = (_text(f"{root}/proc/device-tree/model") or "").replace("\x00", "")
    if "Raspberry Pi 5" in model:
        return "pi5"
    if "Raspberry Pi 4" in model:
        return "pi4"
    if "Orin Nano" in model:
        return "orin-nano"
    if "Jetson Nano" in model or "Jetson-Nano" in model:
        return "jetson-nano"
    return "generic"


def estimate_w(profile: str, agent_cpu_percent: float, cores: int) -> float:
    """The agent's own share of the board's dynamic power: (peak - idle) x the fraction of all
    cores the agent kept busy. Not the board's draw: the whole system's load (a neighbour, the
    desktop) is not the agent's cost, and idle power is paid with or without it."""
    idle, peak = PROFILES[profile]
    share = max(0.0, min(agent_cpu_percent / (100.0 * max(cores, 1)), 1.0))
    return (peak - idle) * share
