"""Issue 9, points 2-6, 9, 11 against a running daemon, a real mosquitto and a real HTTP server:
no message, chunk, URL or file can take the update path (or rollback) away from the operator."""

from __future__ import annotations

import base64
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from edgeagent.errors import EdgeAgentError
from edgeagent.update.transfer import announce
from tests.mqtt.test_mqtt_daemon import P, REPO, broker, bundle, mqtt_cfg, peers, signer  # noqa: F401

pytestmark = [pytest.mark.long(seconds=50), pytest.mark.timeout(180)]


class Trickle(http.server.BaseHTTPRequestHandler):
    """A server that announces the payload and then sends one byte every `gap` seconds."""

    body = b""
    gap = 0.5
    stop = threading.Event()

    def log_message(self, *a):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        for i in range(len(self.body)):
            if Trickle.stop.wait(self.gap):
                return
            try:
                self.wfile.write(self.body[i:i + 1])
                self.wfile.flush()
            except OSError:
                return


class Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


@pytest.fixture
def http_serve():
    servers = []

    def serve(handler, directory: Path | None = None):
        if directory is not None:
            h = lambda *a, **kw: handler(*a, directory=str(directory), **kw)  # noqa: E731
        else:
            h = handler
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), h)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}"

    Trickle.stop.clear()
    yield serve
    Trickle.stop.set()
    for s in servers:
        s.shutdown()
        s.server_close()


def keys_cfg(signer, **kw) -> dict:
    return {"trusted_keys": [str(signer / "edgeagent.pub")], **kw}


def manifest_of(rel) -> dict:
    return json.loads(Path(rel["manifest"]).read_text())


def staging_files(d) -> list[str]:
    st = Path(d.cfg["model"]["state_dir"]) / "staging"
    return sorted(p.name for p in st.iterdir()) if st.exists() else []


def rss_mb(d) -> float:
    return psutil.Process(d.proc.pid).memory_info().rss / 2**20


# -- point 2: chunks have a memory bound ---------------------------------------------------------

def test_a_flood_of_chunks_keeps_memory_bounded(broker, peers, start_daemon):
    d = start_daemon(**mqtt_cfg(broker.port, max_message_bytes=4 << 20), update={"max_chunk_buffer_bytes": 4 << 20})
    peer = peers(broker.port)
    peer.wait(lambda t, b: t == f"{P}/status" and b.get("state") == "online")
    base = rss_mb(d)
    junk = os.urandom(4 << 20)
    for i in range(40):  # 160 MB of chunks for a transfer nobody announced
        peer.c.publish(f"{P}/transfer/junk/{i}", junk, qos=1).wait_for_publish(10)
    assert peer.request("ping", timeout=20)["ok"]
    time.sleep(0.5)
    assert rss_mb(d) - base < 32, f"RSS grew from {base:.0f} to {rss_mb(d):.0f} MiB"


def test_an_announcement_of_millions_of_chunks_is_refused(tmp_path, broker, peers, start_daemon, signer, model_path):
    start_daemon(**mqtt_cfg(broker.port), update=keys_cfg(signer))
    peer = peers(broker.port)
    rel = bundle(tmp_path, signer, model_path, 2)
    r = peer.request("update", {"manifest": manifest_of(rel),
                                "transfer": {"id": "t", "chunks": 52_428_800, "chunk_size": 1024,
                                             "chunk_sha256": ["ab" * 32]}}, timeout=20)
    assert not r["ok"] and r["error"]["code"] == "cmd.bad_args"
    assert peer.request("ping")["ok"]


# -- point 3: a slow URL cannot block updates or rollback ------------------------------------------

def test_a_trickling_server_hits_the_deadline_and_is_not_resumed(tmp_path, broker, peers, start_daemon, signer,
                                                                  model_path, http_serve):
    rel = bundle(tmp_path, signer, model_path, 2)
    Trickle.body, Trickle.gap = Path(rel["payload"]).read_bytes(), 0.5
    url = http_serve(Trickle)
    d = start_daemon(**mqtt_cfg(broker.port),
                     update=keys_cfg(signer, download_stall_s=2.0, download_deadline_s=10.0))
    peer = peers(broker.port)
    t0 = time.monotonic()
    r = peer.request("update", {"manifest": manifest_of(rel), "payload_url": url + "/p"}, timeout=40)
    assert not r["ok"] and r["error"]["code"] == "download.timeout", r
    assert time.monotonic() - t0 < 20
    assert not (Path(d.cfg["model"]["state_dir"]) / "staging" / "pending-update.json").exists()
    assert staging_files(d) == []


def test_cancel_ends_a_download_and_rollback_is_never_blocked(tmp_path, broker, peers, start_daemon, signer,
                                                               model_path, http_serve):
    d = start_daemon(**mqtt_cfg(broker.port), update=keys_cfg(signer, probation_s=0.5, min_inferences=1))
    peer = peers(broker.port)
    rel2 = bundle(tmp_path, signer, model_path, 2)
    r = peer.request("update", {"manifest": manifest_of(rel2),
                                "payload_b64": base64.b64encode(Path(rel2["payload"]).read_bytes()).decode()})
    assert r["ok"], r
    peer.event("update.committed", 30, version=2)
    rel3 = bundle(tmp_path, signer, Path(d.cfg["model"]["state_dir"]) / "slots" / "b" / "model.tflite", 3)
    Trickle.body, Trickle.gap = Path(rel3["payload"]).read_bytes(), 1.0
    url = http_serve(Trickle)
    # a cancel ends the download; the update's own request is answered with update.cancelled
    peer.c.publish(f"{P}/cmd", json.dumps({"id": "u3", "op": "update", "args": {"manifest": manifest_of(rel3),
                                                                             "payload_url": url + "/p"}}), qos=1)
    peer.event("update.received", 20, version=3)
    t0 = time.monotonic()
    c = peer.request("cancel", timeout=20)
    assert c["ok"] and c["result"]["cancelled"] is True and time.monotonic() - t0 < 5
    u3 = peer.wait(lambda t, b: t == f"{P}/cmd/reply" and isinstance(b, dict) and b.get("id") == "u3", 10)
    assert u3["error"]["code"] == "update.cancelled"
    # the same slow update again; a rollback does not wait for it (no update.busy)
    peer.c.publish(f"{P}/cmd", json.dumps({"id": "u3b", "op": "update", "args": {"manifest": manifest_of(rel3),
                                                                              "payload_url": url + "/p"}}), qos=1)
    n = len(peer.msgs)
    peer.event("update.received", 20, start=n, version=3)
    t0 = time.monotonic()
    r = peer.request("rollback", timeout=20)
    assert r["ok"], r
    assert r["result"]["version"] == 1 and time.monotonic() - t0 < 5
    assert d.call("status")["model"]["version"] == 1
    assert staging_files(d) == []


def test_a_fifo_is_not_read_forever(tmp_path, start_daemon, signer, model_path):
    d = start_daemon(update=keys_cfg(signer))
    rel = bundle(tmp_path, signer, model_path, 2)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(EdgeAgentError) as e:  # the local control socket may use file:// ...
        d.call("update", {"manifest": manifest_of(rel), "payload_url": fifo.as_uri()}, timeout=30)
    assert e.value.code == "download.failed" and "not a regular file" in e.value.message
    assert time.monotonic() - t0 < 10


# -- point 4: an injected chunk does not abort a chunked update ------------------------------------

def test_injected_chunks_are_dropped_and_the_update_completes(tmp_path, broker, peers, start_daemon, signer,
                                                              model_path):
    start_daemon(**mqtt_cfg(broker.port), update=keys_cfg(signer, max_latency_factor=10000.0))
    peer = peers(broker.port)
    rel = bundle(tmp_path, signer, None, 2, slow=1)  # a 16 MB full model: 256 chunks
    ann, chunks = announce(Path(rel["payload"]).read_bytes(), "t9", 64 * 1024)
    peer.c.publish(f"{P}/cmd", json.dumps({"id": "c9", "op": "update",
                                           "args": {"manifest": manifest_of(rel), "transfer": ann.to_args()}}), qos=1)
    peer.event("update.received", 20, version=2)
    for topic, junk in ((f"{P}/transfer/t9/99999", b"x"), (f"{P}/transfer/t9/0", b"\0"),
                        (f"{P}/transfer/t9/1", b"\0" * len(chunks[1]))):
        peer.c.publish(topic, junk, qos=1).wait_for_publish(5)
    time.sleep(0.3)
    for i, c in enumerate(chunks):
        peer.c.publish(f"{P}/transfer/t9/{i}", c, qos=1)
    r = peer.wait(lambda t, b: t == f"{P}/cmd/reply" and isinstance(b, dict) and b.get("id") == "c9", 60)
    assert r["ok"], r


# -- points 5 and 6: file:// from the network, staging leaks ---------------------------------------

def test_file_urls_over_mqtt_are_refused_without_touching_the_path(tmp_path, broker, peers, start_daemon, signer,
                                                                    model_path):
    d = start_daemon(**mqtt_cfg(broker.port), update=keys_cfg(signer))
    peer = peers(broker.port)
    rel = bundle(tmp_path, signer, model_path, 2)
    for url in (Path(rel["payload"]).as_uri(), "file:///etc/shadow", "FILE:///etc/shadow"):
        r = peer.request("update", {"manifest": manifest_of(rel), "payload_url": url}, timeout=20)
        assert not r["ok"] and r["error"]["code"] == "update.url_refused", r
        assert "shadow" not in json.dumps(r["error"]) or "root" not in json.dumps(r["error"])
    assert staging_files(d) == []
    # the local control socket keeps file paths
    r = d.call("update", {"manifest": manifest_of(rel), "payload_url": Path(rel["payload"]).as_uri()}, timeout=60)
    assert r["version"] == 2


def test_failed_updates_leave_nothing_in_staging_and_a_restart_cleans_old_leaks(tmp_path, start_daemon, signer,
                                                                                  model_path, http_serve):
    d = start_daemon(update=keys_cfg(signer))
    rel = bundle(tmp_path, signer, model_path, 2, fail_at_invoke=True)  # refused by its health check
    url = http_serve(Files, Path(rel["payload"]).parent)
    with pytest.raises(EdgeAgentError) as e:
        d.call("update", {"manifest": manifest_of(rel), "payload_url": f"{url}/{Path(rel['payload']).name}"},
               timeout=60)
    assert e.value.code == "update.health_failed"
    assert staging_files(d) == []
    # what a killed daemon could have left: a payload, a partial file, health frames, a transfer
    st = Path(d.cfg["model"]["state_dir"]) / "staging"
    assert d.stop() == 0
    for name in ("ab" * 32 + ".payload", "cd" * 32 + ".part", "health-x.npz"):
        (st / name).write_bytes(b"\0" * 4096)
    (st / "transfer-old").mkdir()
    (st / "transfer-old" / "data").write_bytes(b"\0" * 4096)
    d2 = start_daemon(name="again", update=keys_cfg(signer))
    deadline = time.monotonic() + 10
    while staging_files(d2) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert staging_files(d2) == []


# -- point 9: planted symlinks are not followed ----------------------------------------------------

def test_a_symlink_planted_at_the_part_file_is_not_followed(tmp_path, start_daemon, signer, model_path, http_serve):
    d = start_daemon(update=keys_cfg(signer))
    rel = bundle(tmp_path, signer, model_path, 2)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    sha = manifest_of(rel)["signed"]["payload"]["sha256"]
    (Path(d.cfg["model"]["state_dir"]) / "staging" / f"{sha}.part").symlink_to(victim)
    url = http_serve(Files, Path(rel["payload"]).parent)
    r = d.call("update", {"manifest": manifest_of(rel), "payload_url": f"{url}/{Path(rel['payload']).name}"},
               timeout=60)
    assert r["version"] == 2
    assert victim.read_bytes() == b"precious"


# -- point 11: a resumed update answers its request; push survives and explains ------------------

def test_a_transfer_resumed_after_a_restart_answers_the_original_request(tmp_path, broker, peers, start_daemon,
                                                                         signer, model_path):
    cfg = {**mqtt_cfg(broker.port), "update": keys_cfg(signer, max_latency_factor=10000.0)}
    d = start_daemon(**cfg)
    peer = peers(broker.port)
    rel = bundle(tmp_path, signer, None, 2, slow=1)
    ann, chunks = announce(Path(rel["payload"]).read_bytes(), "t11", 64 * 1024)
    r = peer.c.publish  # the request, with an MQTT 5 response topic, as push sends it
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = f"{P}/cmd/reply/orig"
    props.CorrelationData = b"orig"
    r(f"{P}/cmd", json.dumps({"id": "orig", "op": "update",
                              "args": {"manifest": manifest_of(rel), "transfer": ann.to_args()}}),
      qos=1, properties=props)
    half = len(chunks) // 2
    for i in range(half):
        peer.c.publish(f"{P}/transfer/t11/{i}", chunks[i], qos=1).wait_for_publish(5)
    peer.event("update.downloading", 30)
    assert d.stop() == 0
    n = len(peer.msgs)
    start_daemon(name="after", **cfg)
    req = peer.event("update.transfer", 30, start=n, id="t11")
    for i in range(len(chunks)):
        if i in req["missing"] or i >= half:
            peer.c.publish(f"{P}/transfer/t11/{i}", chunks[i], qos=1)
    reply = peer.wait(lambda t, b: t == f"{P}/cmd/reply/orig" and isinstance(b, dict) and b.get("id") == "orig", 60)
    assert reply["ok"] and reply["result"]["version"] == 2


def test_push_through_a_broker_outage(tmp_path, broker, start_daemon, signer, model_path):
    start_daemon(**mqtt_cfg(broker.port), update=keys_cfg(signer, probation_s=1.0, min_inferences=5))
    rel = bundle(tmp_path, signer, model_path, 2)
    push = subprocess.Popen([sys.executable, "-m", "edgeagent", "push", rel["manifest"], "--broker",
                             f"127.0.0.1:{broker.port}", "--device", "test-dev", "--chunk-size", "1024", "--wait",
                             "--timeout", "90"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        time.sleep(1.0)
        broker.stop()
        time.sleep(2.0)
        broker.start()
        out, err = push.communicate(timeout=120)
    finally:
        if push.poll() is None:
            push.kill()
    assert "Traceback" not in err, err
    # the commit may happen while the broker is away (its event is lost): the push asks the device
    # once it is back, instead of waiting out its --timeout
    assert push.returncode == 0, out + err
    assert "device: update.committed" in out, out


def test_push_to_a_broker_that_is_down_is_one_line(tmp_path, signer, model_path):
    rel = bundle(tmp_path, signer, model_path, 2)
    from tests.support.broker import free_port

    r = subprocess.run([sys.executable, "-m", "edgeagent", "push", rel["manifest"], "--broker",
                        f"127.0.0.1:{free_port()}", "--device", "x"], capture_output=True, text=True, cwd=REPO,
                       timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "mqtt.connect_failed" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "edgeagent", "top", "--mqtt", f"127.0.0.1:{free_port()}", "--device",
                        "x", "--plain", "--count", "1"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "mqtt.connect_failed" in r.stderr, r.stderr
