"""Labels travel with the model (issue 20, point 5): seeded with model.initial, carried by a signed
update that changes the number of classes, switched and rolled back with the model; state,
`P/output`, `edgeagent output` and `top` name the same classes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from edgeagent.engine import testmodels
from edgeagent.update.release import make_release
from tests.mqtt.test_mqtt_daemon import P, mqtt_cfg
from tests.support.daemon import Daemon, base_config

REPO = Path(__file__).resolve().parents[2]
FOUR = ["cat", "dog", "bird", "fish"]
SIX = ["apple", "pear", "plum", "fig", "kiwi", "lime"]


def cli(cfg, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "edgeagent", "-c", str(cfg), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


def outputs_of(peer, version: int, start: int) -> dict:
    return peer.wait(lambda t, b: t == f"{P}/output" and isinstance(b, dict) and b.get("model") == version, 15, start)


def names_in(msg: dict) -> list[str]:
    return [t["label"] for t in msg["outputs"][0]["top"]]


def test_labels_switch_and_roll_back_with_their_model(tmp_path, broker, peers, signer):
    v1 = testmodels.write_model(tmp_path / "v1.tflite", kind="dense", input_shape=(1, 16), outputs=4, seed=1)
    v2 = testmodels.write_model(tmp_path / "v2.tflite", kind="dense", input_shape=(1, 16), outputs=6, seed=2)
    (tmp_path / "four.txt").write_text("\n".join(FOUR) + "\n")
    (tmp_path / "six.txt").write_text("\r\n".join(SIX) + "\r\n")  # a label file from Windows
    peer = peers(broker.port)
    cfg = base_config(tmp_path, v1, **mqtt_cfg(broker.port), model={"labels": str(tmp_path / "four.txt")},
                      output={"top_k": 3}, update={"trusted_keys": [str(signer / "edgeagent.pub")],
                                                    "probation_s": 1.0, "min_inferences": 5})
    d = Daemon(tmp_path, cfg).start()
    try:
        assert d.call("status")["model"]["labels"] == 4
        a = {s["slot"]: s for s in d.call("slots")["slots"]}["a"]
        assert a["labels"] == 4
        assert (tmp_path / "state/slots/a/labels.txt").read_text() == "cat\ndog\nbird\nfish\n"
        msg = outputs_of(peer, 1, 0)
        top = msg["outputs"][0]["top"]
        assert len(top) == 3 and all(FOUR[t["index"]] == t["label"] for t in top)
        assert top[0]["index"] == msg["outputs"][0]["argmax"]
        assert [t["score"] for t in top] == sorted((t["score"] for t in top), reverse=True)
        local = json.loads(cli(d.config_path, "output", "--json").stdout.splitlines()[0])
        assert local["model"] == 1 and set(names_in(local)) <= set(FOUR)
        follow = cli(d.config_path, "output", "--follow", "--count", "3", timeout=30).stdout.splitlines()
        assert len(follow) == 3 and all(ln.startswith("v1 ") and any(f" {n} " in ln for n in FOUR) for ln in follow), follow

        # v2 has six classes: released with its labels, announcing the new outputs
        r = cli(d.config_path, "release", "--key", str(signer / "edgeagent.key"), "--base", str(v1), "--target",
                str(v2), "--model", "testmodel", "--version", "2", "--out", str(tmp_path / "rel"), "--labels",
                str(tmp_path / "six.txt"), "--new-io")
        assert r.returncode == 0, r.stderr
        manifest = tmp_path / "rel/testmodel-2.manifest.json"
        assert json.loads(manifest.read_text())["signed"]["labels"]["names"] == SIX
        mark = len(peer.msgs)
        r = cli(d.config_path, "install", str(manifest), "--payload", str(tmp_path / "rel/testmodel-2.bsdiff4"))
        assert r.returncode == 0, r.stderr
        peer.event("update.committed", start=mark)
        st = d.call("status")
        assert st["model"]["version"] == 2 and st["model"]["labels"] == 6
        msg = outputs_of(peer, 2, mark)
        assert msg["outputs"][0]["shape"] == [1, 6] and set(names_in(msg)) <= set(SIX)
        assert all(SIX[t["index"]] == t["label"] for t in msg["outputs"][0]["top"])
        local = json.loads(cli(d.config_path, "output", "--json").stdout.splitlines()[0])
        assert set(names_in(local)) <= set(SIX)

        # a rollback restores the model and its labels together
        mark = len(peer.msgs)
        assert cli(d.config_path, "rollback").returncode == 0
        st = d.call("status")
        assert st["model"]["version"] == 1 and st["model"]["labels"] == 4
        msg = outputs_of(peer, 1, mark)
        assert msg["outputs"][0]["shape"] == [1, 4] and set(names_in(msg)) <= set(FOUR)
        time.sleep(1.2)  # the latest summary is the restored model's
        top = cli(d.config_path, "top", "--count", "1", "--plain")
        assert " v1 " in top.stdout and any(f"top {n} " in top.stdout for n in FOUR), top.stdout
        assert {s["slot"]: s["labels"] for s in d.call("slots")["slots"]} == {"a": 4, "b": 6}
    finally:
        d.stop()


def test_labels_that_do_not_fit_are_refused(tmp_path, broker, peers, signer):
    v1 = testmodels.write_model(tmp_path / "v1.tflite", kind="dense", input_shape=(1, 16), outputs=4, seed=1)
    v2 = testmodels.write_model(tmp_path / "v2.tflite", kind="dense", input_shape=(1, 16), outputs=4, seed=2)
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    cfg = base_config(tmp_path, v1, model={"labels": str(tmp_path / "three.txt")},
                      update={"trusted_keys": [str(signer / "edgeagent.pub")]})
    d = Daemon(tmp_path, cfg)
    d.start(wait_ready=False)
    assert d.proc.wait(60) == 2
    assert "model.labels_mismatch: model.labels" in d.log() and "3 labels for output 0 of shape [1, 4]" in d.log()
    assert not (tmp_path / "state/state.json").exists()

    # the release tool checks too, and a device refuses a signed manifest whose labels do not fit
    r = cli(d.config_path, "release", "--key", str(signer / "edgeagent.key"), "--target", str(v2), "--model",
            "testmodel", "--version", "2", "--out", str(tmp_path / "rel"), "--labels", str(tmp_path / "three.txt"))
    assert r.returncode != 0 and "release.bad_args: --labels" in r.stderr and "3 labels" in r.stderr
    rel = make_release(keys=[str(signer / "edgeagent.key")], target=v2, base=v1, model="testmodel", version=2,
                       out_dir=tmp_path / "rel2", labels=["a", "b", "c"])
    d2 = Daemon(tmp_path, base_config(tmp_path, v1, update={"trusted_keys": [str(signer / "edgeagent.pub")]}),
                name="second").start()
    try:
        r = cli(d2.config_path, "install", rel["manifest"], "--payload", rel["payload"])
        assert r.returncode == 1 and "update.labels_mismatch" in r.stderr
        assert d2.call("status")["model"]["version"] == 1
        b = {s["slot"]: s for s in d2.call("slots")["slots"]}["b"]
        assert b["status"] == "bad" and "update.labels_mismatch" in b["reason"]
    finally:
        d2.stop()
