"""Prometheus output of a real daemon, read the way Prometheus reads it: prometheus_client's own
parser over the node_exporter textfile and over the /metrics endpoint."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from edgeagent.engine import testmodels
from edgeagent.update.keys import generate_keypair
from edgeagent.update.release import make_release
from tests.support.broker import free_port


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(fam, suffix: str = "") -> list:
    return [s for s in fam.samples if s.name == fam.name + suffix]


def wait_file(path: Path, pred, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        if text and pred(text):
            return text
        assert time.monotonic() < deadline, f"{path}: {text[:2000]}"
        time.sleep(0.1)


def test_textfile_and_endpoint_parse_and_tell_the_truth(tmp_path, start_daemon, model_path):
    generate_keypair(tmp_path / "keys")
    prom = tmp_path / "textfile" / "edgeagent.prom"
    prom.parent.mkdir()
    port = free_port()
    d = start_daemon(metrics={"textfile": str(prom), "listen": f"127.0.0.1:{port}"},
                     telemetry={"interval_s": 0.2, "sysfs_root": str(tmp_path / "nosys"), "power_profile": "pi4"},
                     update={"trusted_keys": [str(tmp_path / "keys" / "edgeagent.pub")], "probation_s": 0.5,
                             "min_inferences": 3})
    text = wait_file(prom, lambda t: "edgeagent_inferences_total" in t and "edgeagent_power_watts{" in t)
    f = families(text)
    # the model version as an _info metric, with the served model's labels
    info = samples(f["edgeagent_model_info"])  # Prometheus text has no info type: a gauge of 1
    assert len(info) == 1 and info[0].value == 1.0
    assert info[0].labels == {"name": "testmodel", "version": "1", "slot": "a",
                              "sha256": d.call("status")["model"]["sha256"], "trial": "false"}
    assert f["edgeagent_inferences"].type == "counter"
    assert samples(f["edgeagent_inferences"], "_total")[0].value > 0
    # latency is a histogram in seconds: cumulative buckets ending at +Inf == _count, a sane _sum
    h = f["edgeagent_inference_latency_seconds"]
    assert h.type == "histogram"
    buckets = samples(h, "_bucket")
    les = [b.labels["le"] for b in buckets]
    assert les[-1] == "+Inf" and [float(x) for x in les[:-1]] == sorted(float(x) for x in les[:-1])
    counts = [b.value for b in buckets]
    assert counts == sorted(counts)
    count, total = samples(h, "_count")[0].value, samples(h, "_sum")[0].value
    assert count == counts[-1] > 0
    assert 0 < total / count < 0.05  # a tiny dense model: well under 50 ms a frame
    assert count <= samples(f["edgeagent_inferences"], "_total")[0].value
    # no per-device quantiles anywhere: summaries cannot be aggregated across a fleet
    assert all(fam.type != "summary" for fam in f.values())
    # estimated power is labelled as such, in watts
    power = samples(f["edgeagent_power_watts"])
    assert [(s.labels["scope"], s.labels["source"]) for s in power] == [("agent", "estimate")]
    assert 0 <= power[0].value < 10
    assert not any(name.endswith(("_ms", "_milliseconds", "_mj")) for name in f)

    # the endpoint serves the same registry
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        live = families(r.read().decode())
    assert samples(live["edgeagent_model_info"])[0].labels["version"] == "1"
    assert samples(live["edgeagent_inferences"], "_total")[0].value >= samples(f["edgeagent_inferences"], "_total")[0].value

    # an update: the info metric follows the served model, the outcome is counted
    v2 = testmodels.write_model(tmp_path / "v2.tflite", kind="dense", input_shape=(1, 16), outputs=4, seed=1,
                                version_tag=2)
    rel = make_release(keys=[str(tmp_path / "keys" / "edgeagent.key")], target=v2, base=model_path,
                       model="testmodel", version=2, out_dir=tmp_path / "rel2")
    d.call("update", {"manifest": json.loads(Path(rel["manifest"]).read_text()),
                      "payload_url": Path(rel["payload"]).as_uri()})
    text = wait_file(prom, lambda t: 'edgeagent_updates_total{result="committed"} 1.0' in t
                     and 'version="2"' in t and 'trial="false"' in t)
    f = families(text)
    outcomes = {s.labels["result"]: s.value for s in samples(f["edgeagent_updates"], "_total")}
    assert outcomes == {"committed": 1.0, "rolled_back": 0.0, "rejected": 0.0, "manual_rollback": 0.0}
    # the file is replaced whole (rename), never left half-written: no temporary files linger
    assert sorted(p.name for p in prom.parent.iterdir()) == ["edgeagent.prom"]


def test_a_metrics_port_in_use_does_not_stop_the_model_serving(tmp_path, start_daemon):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        d = start_daemon(metrics={"listen": f"127.0.0.1:{busy}"})
        st = d.call("status")
        assert st["daemon"] == "running" and st["model"]["version"] == 1
        assert "metrics: cannot serve on" in d.log()


def test_bad_metrics_config_is_one_line_exit_2(tmp_path):
    import subprocess
    import sys

    from tests.support.daemon import REPO, write_config

    cfg = write_config(tmp_path / "c.toml", {"metrics": {"textfile": str(tmp_path / "x.txt")}})
    r = subprocess.run([sys.executable, "-m", "edgeagent", "-c", str(cfg), "run"], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeagent: config.invalid: ")
    assert "metrics.textfile: must end in .prom" in lines[0]
    # a folder that does not exist: one line at start, not a warning every interval (issue 20, point 7)
    from tests.support.daemon import base_config
    from edgeagent.engine import testmodels

    m = testmodels.write_model(tmp_path / "m.tflite", kind="dense", input_shape=(1, 16), outputs=4, seed=1)
    cfg = write_config(tmp_path / "d.toml", base_config(tmp_path, m, metrics={"textfile": str(tmp_path / "no/x.prom")}))
    r = subprocess.run([sys.executable, "-m", "edgeagent", "-c", str(cfg), "run"], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("edgeagent: ")]
    assert lines == [f"edgeagent: config.invalid: metrics.textfile {tmp_path}/no/x.prom: the folder {tmp_path}/no "
                     f"does not exist"], r.stderr
    assert not (tmp_path / "state" / "state.json").exists()


def test_idle_connections_to_metrics_are_capped_and_timed_out(tmp_path, start_daemon):
    """40 connections that never send a request (slowloris) cost at most a handful of threads,
    are closed after the idle timeout, and /metrics answers again afterwards (issue 19, point 6)."""
    import socket
    import urllib.request

    import psutil

    port = free_port()
    d = start_daemon(metrics={"listen": f"127.0.0.1:{port}"})
    url = f"http://127.0.0.1:{port}/metrics"
    assert b"edgeagent_inferences_total" in urllib.request.urlopen(url, timeout=10).read()
    proc = psutil.Process(d.proc.pid)
    base = proc.num_threads()
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
    try:
        time.sleep(1.0)
        assert proc.num_threads() <= base + 8, (base, proc.num_threads())
        count = d.call("status")["telemetry"]["inference"]["count"]
        time.sleep(7.0)  # past the idle timeout: the held connections are closed by the daemon
        for s in idle:
            s.settimeout(2.0)
            assert s.recv(1) == b""
        assert d.call("status")["telemetry"]["inference"]["count"] > count + 100  # the model kept serving
        assert b"edgeagent_inferences_total" in urllib.request.urlopen(url, timeout=10).read()
    finally:
        for s in idle:
            s.close()
