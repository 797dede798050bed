"""Getting payload bytes into staging and building the slot: a real HTTP server on loopback with
Range support and failure modes, the chunk store, and bsdiff4 patches."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import bsdiff4
import pytest

from edgeagent.errors import CommandError, TransportError
from edgeagent.update.errors import UpdateRejected
from edgeagent.update.fetch import fetch_to_staging
from edgeagent.update.patch import apply_delta, copy_full
from edgeagent.update.staging import Staging
from edgeagent.update import transfer as transfer_mod
from edgeagent.update.transfer import Announce, announce

REPO = Path(__file__).resolve().parents[2]
DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    mode = "ok"  # ok | drop | no-range | extra | 404
    requests: list = []

    def log_message(self, *a):
        pass

    def do_GET(self):
        rng = self.headers.get("Range")
        Handler.requests.append(rng)
        if Handler.mode == "404":
            self.send_error(404)
            return
        start = int(rng.split("=")[1].rstrip("-")) if rng and Handler.mode != "no-range" else 0
        body = DATA[start:] + (b"EXTRA" if Handler.mode == "extra" else b"")
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if Handler.mode == "drop" and not start:
            self.wfile.write(body[:100_000])  # then the connection dies
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    Handler.mode, Handler.requests = "ok", []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/payload"
    srv.shutdown()
    srv.server_close()


def fetch(url, dest, **kw):
    kw.setdefault("expected_size", len(DATA))
    kw.setdefault("expected_sha256", SHA)
    kw.setdefault("max_bytes", 10_000_000)
    return fetch_to_staging(url, dest=dest, retries=0, **kw)


def test_resume_after_an_interrupted_download(server, tmp_path):
    st = Staging(tmp_path)
    dest = st.payload_path(SHA)
    Handler.mode = "drop"
    with pytest.raises(TransportError) as ei:
        fetch(server, dest)
    assert ei.value.code == "download.failed"
    part = st.part_path(SHA)
    assert part.exists() and 0 < part.stat().st_size < len(DATA)
    have = part.stat().st_size
    Handler.mode = "ok"
    progress = []
    out = fetch(server, dest, progress=progress.append)
    assert out.read_bytes() == DATA and not part.exists()
    assert Handler.requests[-1] == f"bytes={have}-"  # the second request resumed
    pcts = [p["percent"] for p in progress]
    assert pcts == sorted(pcts) and pcts[-1] == 100.0 and pcts[0] >= 100.0 * have / len(DATA) - 1


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    st = Staging(tmp_path)
    st.part_path(SHA).write_bytes(DATA[:1000])
    Handler.mode = "no-range"
    assert fetch(server, st.payload_path(SHA)).read_bytes() == DATA


def test_wrong_hash_is_refused_and_removed(server, tmp_path):
    st = Staging(tmp_path)
    with pytest.raises(UpdateRejected) as ei:
        fetch(server, st.payload_path("0" * 64), expected_sha256="0" * 64)
    assert ei.value.code == "update.payload_hash"
    assert not list(st.dir.glob("*.part")) and not st.payload_path("0" * 64).exists()


def test_oversize_before_and_during_the_download(server, tmp_path):
    st = Staging(tmp_path)
    with pytest.raises(UpdateRejected) as ei:
        fetch(server, st.payload_path(SHA), max_bytes=1000)
    assert ei.value.code == "update.too_large" and Handler.requests == []
    Handler.mode = "extra"
    with pytest.raises(UpdateRejected) as ei:
        fetch(server, st.payload_path(SHA))
    assert ei.value.code == "update.payload_size"


def test_transport_failures_are_one_error(server, tmp_path):
    st = Staging(tmp_path)
    Handler.mode = "404"
    with pytest.raises(TransportError) as ei:
        fetch(server, st.payload_path(SHA))
    assert "404" in ei.value.message
    with pytest.raises(TransportError):
        fetch("http://127.0.0.1:9/nothing", st.payload_path(SHA))
    with pytest.raises(TransportError):
        fetch((tmp_path / "missing").as_uri(), st.payload_path(SHA))


def test_file_url(tmp_path):
    src = tmp_path / "p.bin"
    src.write_bytes(DATA)
    assert fetch(src.as_uri(), Staging(tmp_path / "s").payload_path(SHA)).read_bytes() == DATA


def test_transfer_chunks_any_order_duplicates_and_resume(tmp_path):
    ann, chunks = announce(DATA, "up-1", 4096)
    t = transfer_mod.begin(tmp_path, ann, len(DATA), SHA)
    order = list(range(len(chunks)))[::-1]
    for i in order[:40]:
        assert t.add(i, chunks[i]) is True
    assert t.add(order[0], chunks[order[0]]) is False  # a duplicate
    t.close()
    # a restart: a new store on the same directory picks up what is there
    t2 = transfer_mod.begin(tmp_path, ann, len(DATA), SHA)
    assert t2.missing_count == len(chunks) - 40 and len(t2.missing(10_000)) == len(chunks) - 40
    for i in t2.missing(10_000):
        t2.add(i, chunks[i])
    dest = tmp_path / "payload"
    assert t2.complete and t2.assemble(dest).read_bytes() == DATA
    assert not (tmp_path / "transfer-up-1").exists()
    with pytest.raises(CommandError):
        Announce.from_args({**ann.to_args(), "id": "../evil"})


def test_a_wrong_chunk_is_dropped_and_asked_for_again_not_fatal(tmp_path):
    ann, chunks = announce(DATA, "x", 4096)
    t = transfer_mod.begin(tmp_path, ann, len(DATA), SHA)
    assert t.add(len(chunks) + 5, b"x") is False  # out of range
    assert t.add(0, b"\0") is False  # a 1-byte chunk 0 does not fix the chunk size
    assert t.add(1, b"\0" * 4096) is False  # the right size, the wrong bytes
    assert t.bad == 3 and t.missing(3) == [0, 1, 2]
    for i, c in enumerate(chunks):
        t.add(i, c)
    assert t.assemble(tmp_path / "p").read_bytes() == DATA


def test_the_announcement_is_checked_against_the_signed_size(tmp_path):
    ann, _ = announce(DATA, "x", 4096)
    ann.check(len(DATA), 1 << 20)
    with pytest.raises(CommandError):  # 52 million chunks for a small payload
        Announce(ann.id, 52_428_800, 4096, ann.chunk_sha256).check(len(DATA), 1 << 20)
    with pytest.raises(CommandError):
        Announce.from_args({"id": "x", "chunks": 3, "chunk_size": 4096, "chunk_sha256": ["ab" * 32] * 2})
    with pytest.raises(CommandError):
        Announce.from_args({"id": "x", "chunks": 1, "chunk_size": 10, "chunk_sha256": ["ab" * 32]})
    with pytest.raises(CommandError):  # chunks larger than an MQTT message may be
        ann.check(len(DATA), 2048)


def test_patch_checks_the_base_first_and_the_result_after(tmp_path):
    old = os.urandom(50_000)
    new = old[:40_000] + os.urandom(10_000)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "patch").write_bytes(bsdiff4.diff(old, new))
    sha = hashlib.sha256(new).hexdigest()
    out = tmp_path / "slot/model.tflite"
    out.parent.mkdir()
    apply_delta(tmp_path / "old", hashlib.sha256(old).hexdigest(), tmp_path / "patch", out,
                target_sha256=sha, target_size=len(new))
    assert out.read_bytes() == new
    # a base that differs by one byte is refused, not patched
    (tmp_path / "old2").write_bytes(old[:-1] + bytes([old[-1] ^ 1]))
    out2 = tmp_path / "slot/other.tflite"
    with pytest.raises(UpdateRejected) as ei:
        apply_delta(tmp_path / "old2", hashlib.sha256(old).hexdigest(), tmp_path / "patch", out2,
                    target_sha256=sha, target_size=len(new))
    assert ei.value.code == "update.wrong_base" and not out2.exists()
    # a tampered patch never lands
    (tmp_path / "bad").write_bytes(b"BSDIFF40" + os.urandom(200))
    with pytest.raises(UpdateRejected) as ei:
        apply_delta(tmp_path / "old", hashlib.sha256(old).hexdigest(), tmp_path / "bad", out2,
                    target_sha256=sha, target_size=len(new))
    assert ei.value.code in ("update.bad_patch", "update.target_hash") and not out2.exists()
    # a patch that builds something else than the manifest's target
    with pytest.raises(UpdateRejected) as ei:
        apply_delta(tmp_path / "old", hashlib.sha256(old).hexdigest(), tmp_path / "patch", out2,
                    target_sha256="0" * 64, target_size=len(new))
    assert ei.value.code == "update.target_hash" and not out2.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp files left
    copy_full(tmp_path / "old", out2, target_sha256=hashlib.sha256(old).hexdigest(), target_size=len(old))
    assert out2.read_bytes() == old


@pytest.mark.parametrize("seed", range(6))
def test_streaming_patch_matches_bsdiff4(tmp_path, seed):
    """The updater applies BSDIFF4 patches as a stream; the result must be bsdiff4.patch's."""
    import random

    rnd = random.Random(seed)
    old = bytes(rnd.getrandbits(8) for _ in range(rnd.choice([0, 1, 5000, 300_000])))
    new = bytearray(old)
    for _ in range(rnd.randint(0, 20)):  # edits, inserts, deletes
        pos = rnd.randint(0, len(new))
        op = rnd.choice(["edit", "insert", "delete"])
        blob = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 3000)))
        if op == "edit":
            new[pos:pos + len(blob)] = blob
        elif op == "insert":
            new[pos:pos] = blob
        else:
            del new[pos:pos + len(blob)]
    new = bytes(new) or b"x"
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "patch").write_bytes(bsdiff4.diff(old, new))
    assert bsdiff4.patch(old, (tmp_path / "patch").read_bytes()) == new
    out = tmp_path / "out"
    apply_delta(tmp_path / "old", hashlib.sha256(old).hexdigest(), tmp_path / "patch", out,
                target_sha256=hashlib.sha256(new).hexdigest(), target_size=len(new))
    assert out.read_bytes() == new


def test_no_space_is_refused(tmp_path):
    st = Staging(tmp_path)
    with pytest.raises(UpdateRejected) as ei:
        st.check_space(st.free_bytes() + 1)
    assert ei.value.code == "update.no_space"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "edgeagent", *args], capture_output=True, text=True, cwd=REPO)


def test_release_and_verify_cli(tmp_path):
    assert cli("keygen", "--out", str(tmp_path / "k")).returncode == 0
    base = os.urandom(100_000)
    (tmp_path / "v1").write_bytes(base)
    (tmp_path / "v2").write_bytes(base[:90_000] + os.urandom(10_000))
    (tmp_path / "v3").write_bytes(os.urandom(100_000))
    rel = lambda t, v, *extra: json.loads(cli("release", "--key", str(tmp_path / "k/edgeagent.key"), "--target",
                                              str(tmp_path / t), "--base", str(tmp_path / "v1"), "--model", "m",
                                              "--version", str(v), "--out", str(tmp_path / "out"), "--json",
                                              *extra).stdout)
    small = rel("v2", 2)
    assert small["kind"] == "delta" and small["payload_size"] < 20_000
    assert rel("v3", 3)["kind"] == "full"  # unrelated bytes: the delta would be bigger
    assert rel("v2", 4, "--full")["kind"] == "full"
    ok = cli("verify", small["manifest"], "--payload", small["payload"], "--base", str(tmp_path / "v1"),
             "--pubkey", str(tmp_path / "k/edgeagent.pub"))
    assert ok.returncode == 0 and ok.stdout.startswith("OK m v2 (delta)")
    cli("keygen", "--out", str(tmp_path / "other"))
    bad = cli("verify", small["manifest"], "--pubkey", str(tmp_path / "other/edgeagent.pub"))
    assert bad.returncode == 1 and bad.stderr.strip() == "edgeagent: update.unknown_key: no signature is from a trusted key"
    wrong_base = cli("verify", small["manifest"], "--payload", small["payload"], "--base", str(tmp_path / "v3"),
                     "--pubkey", str(tmp_path / "k/edgeagent.pub"))
    assert wrong_base.returncode == 1 and "update.wrong_base" in wrong_base.stderr


def test_a_capped_download_keeps_to_the_cap(server, tmp_path):
    """update.max_bytes_per_s (issue 23): the socket is not read faster than the cap; the rate is read
    on every chunk, so a config.set applies to a download under way."""
    import time

    from edgeagent.update.pacing import Pacer

    rate = {"v": 100_000}
    pace = Pacer(lambda: rate["v"])
    t0 = time.monotonic()
    fetch(server, tmp_path / "p.bin", pace=pace)
    took = time.monotonic() - t0
    measured = len(DATA) / took
    assert abs(measured - 100_000) / 100_000 < 0.10, (measured, took)
    assert pace.bytes == len(DATA)
    rate["v"] = 0  # no cap: as fast as the link goes
    t0 = time.monotonic()
    fetch(server, tmp_path / "q.bin", pace=pace)
    assert time.monotonic() - t0 < 0.5 and pace.bytes == 2 * len(DATA)
