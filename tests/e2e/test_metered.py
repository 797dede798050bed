"""Updates on metered links (issue 23, the cap and the counts): `update.max_bytes_per_s`, set at
run time with config.set, paces an HTTP download from a real server on loopback; every update
event that fetched bytes says how many, and so do telemetry and Prometheus."""

from __future__ import annotations

import functools
import http.server
import json
import threading
import time
from pathlib import Path

from edgeagent.engine import testmodels
from edgeagent.update.keys import generate_keypair
from edgeagent.update.release import make_release
from tests.e2e.test_update import trusted, wait_until


def test_a_capped_update_download_keeps_to_the_cap_and_is_counted(tmp_path, start_daemon):
    generate_keypair(tmp_path / "k1")
    v1 = testmodels.write_model(tmp_path / "v1.tflite", kind="dense", input_shape=(1, 2048), outputs=64, seed=1)
    v2 = testmodels.write_model(tmp_path / "v2.tflite", kind="dense", input_shape=(1, 2048), outputs=64, seed=1,
                                version_tag=2)
    rel = make_release(keys=[str(tmp_path / "k1/edgeagent.key")], target=v2, base=None, model="testmodel", version=2,
                       out_dir=tmp_path / "rel", force_full=True)
    size = Path(rel["payload"]).stat().st_size
    assert size > 400_000
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "rel"))
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        d = start_daemon(model_file=v1, update={**trusted(tmp_path, "k1"), "probation_s": 1.0},
                         metrics={"textfile": str(tmp_path / "m.prom")})
        cap = 200_000
        assert d.call("config.set", {"key": "update.max_bytes_per_s", "value": cap})["value"] == cap
        manifest = json.loads(Path(rel["manifest"]).read_text())
        url = f"http://127.0.0.1:{srv.server_address[1]}/{Path(rel['payload']).name}"
        seen: list[dict] = []

        def follow() -> None:
            from edgeagent.control.client import ControlClient

            with ControlClient(d.socket_path, timeout=None) as c:
                for e in c.events(timeout=30):
                    seen.append(e)
                    if e.get("event") == "update.trial":
                        return

        t = threading.Thread(target=follow, daemon=True)
        t.start()
        time.sleep(0.3)  # subscribed before the update starts
        r = d.call("update", {"manifest": manifest, "payload_url": url}, timeout=60)
        assert r["state"] == "trial"
        t.join(10)
        ev = {e["event"]: e for e in seen}
        took = ev["update.verified"]["ts"] - ev["update.received"]["ts"]
        measured = size / took
        assert abs(measured - cap) / cap < 0.10, (measured, took)
        assert ev["update.verified"]["bytes_fetched"] == size
        tel = wait_until(lambda: (lambda t: t if t and t.get("update_bytes") else None)(d.call("status")["telemetry"]))
        assert tel["update_bytes"] == size
        prom = wait_until(lambda: (lambda t: t if "edgeagent_update_bytes_total" in t else None)(
            (tmp_path / "m.prom").read_text() if (tmp_path / "m.prom").exists() else ""))
        assert f"edgeagent_update_bytes_total {float(size)}" in prom
    finally:
        srv.shutdown()
        srv.server_close()
