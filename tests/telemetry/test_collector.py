"""Telemetry on fake sysfs trees that copy real device layouts: the payload carries the tree's
values in the contract's units, and nothing that is not there."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from edgeagent.config import TelemetryConfig
from edgeagent.telemetry.collector import TelemetryCollector, decode_throttled

MODEL = {"name": "m", "version": 1, "slot": "a", "trial": False}


def w(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def thermal(root: Path, zones: list[tuple[str, int]]) -> None:
    for i, (typ, milli) in enumerate(zones):
        w(root / f"sys/class/thermal/thermal_zone{i}/type", typ)
        w(root / f"sys/class/thermal/thermal_zone{i}/temp", str(milli))


def collector(root: Path, profile: str = "none", vcgencmd: str | None = None) -> TelemetryCollector:
    return TelemetryCollector(TelemetryConfig(sysfs_root=str(root), power_profile=profile), "dev", vcgencmd=vcgencmd)


def inference(count: int) -> dict:
    return {"count": count, "errors": 0, "fps": 10.0, "deadline_misses": 0, "latency_ms": {}}


def test_jetson_nano_ina3221x_iio_layout(tmp_path):
    dev = tmp_path / "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    for n, (rail, mw) in enumerate([("POM_5V_IN", 4123), ("POM_5V_GPU", 512), ("POM_5V_CPU", 1038)]):
        w(dev / f"rail_name_{n}", rail)
        w(dev / f"in_power{n}_input", str(mw))
    thermal(tmp_path, [("CPU-therm", 41500), ("GPU-therm", 39000), ("thermal-fan-est", 40200)])
    w(tmp_path / "proc/device-tree/model", "NVIDIA Jetson Nano Developer Kit")
    t = collector(tmp_path, "auto").collect(model=MODEL, inference=inference(0))
    assert t["power"] == {"total_w": 4.123, "rails": {"POM_5V_IN": 4.123, "POM_5V_GPU": 0.512, "POM_5V_CPU": 1.038},
                          "source": "ina3221"}
    assert t["thermal"] == {"CPU-therm": 41.5, "GPU-therm": 39.0, "thermal-fan-est": 40.2}


def test_jetson_orin_hwmon_ina3221_layout(tmp_path):
    hw = tmp_path / "sys/class/hwmon/hwmon3"
    w(hw / "name", "ina3221")
    for n, (label, mv, ma) in enumerate([("VDD_IN", 5072, 1260), ("VDD_CPU_GPU_CV", 5064, 240), ("VDD_SOC", 5064, 400)], 1):
        w(hw / f"in{n}_label", label)
        w(hw / f"in{n}_input", str(mv))
        w(hw / f"curr{n}_input", str(ma))
    w(hw / "in7_label", "sum of shunt voltages")
    t = collector(tmp_path).collect(model=MODEL, inference=inference(0))
    p = t["power"]
    assert p["source"] == "ina3221"
    assert p["rails"]["VDD_IN"] == pytest.approx(5.072 * 1.26, abs=1e-4)
    assert p["rails"]["VDD_SOC"] == pytest.approx(5.064 * 0.4, abs=1e-4)
    assert p["total_w"] == p["rails"]["VDD_IN"]
    assert "sum of shunt voltages" not in p["rails"]


def test_raspberry_pi_4_thermal_throttling_and_estimate(tmp_path):
    thermal(tmp_path, [("cpu-thermal", 58374)])
    w(tmp_path / "proc/device-tree/model", "Raspberry Pi 4 Model B Rev 1.4")
    w(tmp_path / "sys/devices/platform/soc/soc:firmware/get_throttled", "50005")
    t = collector(tmp_path, "auto").collect(model=MODEL, inference=inference(0))
    assert t["thermal"] == {"cpu-thermal": 58.374}
    assert t["throttled"] == {"raw": "0x50005", "now": ["under-voltage", "throttled"],
                              "since_boot": ["under-voltage", "throttled"]}
    assert t["power"]["source"] == "estimate" and t["power"]["profile"] == "pi4"
    assert t["power"]["total_w"] is None and 0 <= t["power"]["agent_w"] <= 6.4 - 2.7


def test_raspberry_pi_5_pmic_through_vcgencmd(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "vcgencmd"
    fake.write_text("""#!/bin/sh
case "$1" in
  pmic_read_adc) cat <<'EOF'
     3V7_WL_SW_A current(0)=0.00390372A
    VDD_CORE_A current(7)=0.85000000A
     3V7_WL_SW_V volt(8)=3.71170000V
    VDD_CORE_V volt(15)=0.87000000V
EOF
  ;;
  get_throttled) echo "throttled=0x0" ;;
esac
""")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    thermal(tmp_path, [("cpu-thermal", 49000)])
    w(tmp_path / "proc/device-tree/model", "Raspberry Pi 5 Model B Rev 1.0")
    c = collector(tmp_path, "auto", vcgencmd=str(fake))
    t = c.collect(model=MODEL, inference=inference(0))
    assert t["power"]["source"] == "rpi-pmic"
    assert t["power"]["rails"]["VDD_CORE"] == pytest.approx(0.85 * 0.87, abs=1e-4)
    assert t["power"]["rails"]["3V7_WL_SW"] == pytest.approx(0.00390372 * 3.7117, abs=1e-4)
    assert t["throttled"] == {"raw": "0x0", "now": [], "since_boot": []}


def test_x86_laptop_rapl_with_wraparound_and_battery(tmp_path):
    pkg = tmp_path / "sys/class/powercap/intel-rapl:0"
    w(pkg / "name", "package-0")
    w(pkg / "max_energy_range_uj", "262143328850")
    w(pkg / "energy_uj", str(262143328850 - 1_000_000))
    w(tmp_path / "sys/class/powercap/intel-rapl:0:0/name", "core")
    w(tmp_path / "sys/class/powercap/intel-rapl:0:0/energy_uj", "5")
    w(tmp_path / "sys/class/power_supply/BAT0/power_now", "11500000")
    c = collector(tmp_path)
    c.collect(model=MODEL, inference=inference(0))
    time.sleep(0.2)
    w(pkg / "energy_uj", str(2_000_000))  # wrapped: 3 J since the last sample
    t0 = time.monotonic()
    t = c.collect(model=MODEL, inference=inference(30))
    p = t["power"]
    assert p["source"] == "rapl" and list(p["rails"]) == ["package-0"]
    # 3 J over ~0.2 s
    assert 3.0 / 0.35 < p["total_w"] < 3.0 / 0.19
    # energy per inference from the counter: 3 J / 30 inferences = 100 mJ
    assert t["energy_per_inference_mj"] == pytest.approx(100.0, rel=1e-6)


def test_battery_when_nothing_else(tmp_path):
    w(tmp_path / "sys/class/power_supply/BAT0/current_now", "-1500000")
    w(tmp_path / "sys/class/power_supply/BAT0/voltage_now", "12000000")
    t = collector(tmp_path).collect(model=MODEL, inference=inference(0))
    assert t["power"] == {"total_w": 18.0, "rails": {"BAT0": 18.0}, "source": "battery"}


def test_generic_hwmon_power_and_energy(tmp_path):
    hw = tmp_path / "sys/class/hwmon/hwmon0"
    w(hw / "name", "ltc2945")
    w(hw / "power1_input", "2500000")
    w(hw / "power1_label", "board")
    t = collector(tmp_path).collect(model=MODEL, inference=inference(0))
    assert t["power"] == {"total_w": 2.5, "rails": {"board": 2.5}, "source": "hwmon"}


def test_machine_with_nothing(tmp_path):
    t = collector(tmp_path, "none").collect(model=MODEL, inference=inference(5))
    assert t["power"] is None and t["thermal"] == {} and "throttled" not in t
    assert t["energy_per_inference_mj"] is None
    assert set(t["system"]) == {"cpu_percent", "agent_cpu_percent", "mem_percent", "agent_rss_mb", "load1", "uptime_s"}
    g = collector(tmp_path, "generic")
    g.collect(model=MODEL, inference=inference(0))
    time.sleep(0.1)
    t = g.collect(model=MODEL, inference=inference(10))
    assert t["power"]["source"] == "estimate" and t["energy_per_inference_mj"] is None  # only from measured power


def test_the_estimate_follows_the_agent_not_the_whole_systems_load(tmp_path):
    """Two busy neighbours fill the cores while the agent idles: the agent's estimated power stays
    near zero (it read 5-25 W, the board's whole range, from system load)."""
    import subprocess
    import sys

    c = collector(tmp_path, "generic")
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        c.collect(model=MODEL, inference=inference(0))
        time.sleep(1.0)
        t = c.collect(model=MODEL, inference=inference(0))
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    assert t["system"]["cpu_percent"] > 50  # the board is busy
    assert t["power"]["source"] == "estimate" and t["power"]["total_w"] is None
    assert t["power"]["agent_w"] < 0.1 * (25.0 - 5.0)  # the agent is not
    # the agent itself busy: its share shows. Busy for half a second of its own CPU time, not of
    # the clock: beside the other tests' processes it got under a quarter of a core in a second
    c.collect(model=MODEL, inference=inference(0))
    wall0, cpu0 = time.monotonic(), time.process_time()
    while time.process_time() - cpu0 < 0.5:
        pass
    t = c.collect(model=MODEL, inference=inference(0))
    share = (time.process_time() - cpu0) / (time.monotonic() - wall0) / (os.cpu_count() or 1)
    assert t["power"]["agent_w"] > 0.8 * (25.0 - 5.0) * share > 0, (t["power"], share)


def test_seq_and_extra_fields(tmp_path):
    c = collector(tmp_path)
    a = c.collect(model=MODEL, inference=inference(0))
    b = c.collect(model=MODEL, inference=inference(1), extra={"dropped": 4})
    assert (a["seq"], b["seq"]) == (0, 1) and b["dropped"] == 4 and "dropped" not in a
    assert b["device"] == "dev" and b["model"] == MODEL


def test_no_subprocess_per_interval_when_sysfs_has_the_figures(tmp_path):
    """A Pi 4 has the sysfs twin of get_throttled: vcgencmd must not run at each interval."""
    calls = tmp_path / "calls"
    fake = tmp_path / "vcgencmd"
    fake.write_text(f"#!/bin/sh\necho x >> {calls}\necho throttled=0x0\n")
    fake.chmod(0o755)
    w(tmp_path / "sys/devices/platform/soc/soc:firmware/get_throttled", "0")
    c = collector(tmp_path, vcgencmd=str(fake))
    probed = calls.read_text().count("x") if calls.exists() else 0  # discovery may probe once
    for _ in range(5):
        c.collect(model=MODEL, inference=inference(0))
    assert (calls.read_text().count("x") if calls.exists() else 0) == probed


def test_decode_throttled_bits():
    d = decode_throttled(0xF000F)
    assert d["now"] == d["since_boot"] == ["under-voltage", "frequency-capped", "throttled", "soft-temperature-limit"]
