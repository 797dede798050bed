"""The fetcher against a real HTTP server on loopback (Range, and the ways servers fail), file://
URLs, payload_b64, and the staging directory. Every transport failure must be one
download.failed; bad data its own update.* code; a .part is resumed, a bad file removed."""

from __future__ import annotations

import base64
import hashlib
import http.server
import os
import socket
import stat
import threading

import pytest

from edgeagent.errors import TransportError
from edgeagent.update.errors import UpdateRejected
from edgeagent.update.fetch import fetch_to_staging, write_b64_to_staging
from edgeagent.update.staging import Staging

DATA = os.urandom(2_000_000)
SHA = hashlib.sha256(DATA).hexdigest()
CUT = 300_000  # where the "drop" and "short" modes stop sending


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves DATA with Range support; `mode` picks a way to misbehave."""

    protocol_version = "HTTP/1.1"
    mode = "ok"
    requests: list = []
    release = threading.Event()

    def log_message(self, *a):
        pass

    def do_GET(self):
        rng = self.headers.get("Range")
        Handler.requests.append(rng)
        mode = Handler.mode
        if mode == "drop-once":  # drop this request, serve the next ones
            Handler.mode, mode = "ok", "drop"
        if mode in ("404", "500"):
            self.send_error(int(mode))
            return
        start = int(rng.split("=")[1].rstrip("-")) if rng and mode != "no-range" else 0
        if start >= len(DATA) and rng:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(DATA)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = DATA[start:]
        if mode.startswith("extra"):
            body += b"EXTRA"
        self.send_response(206 if start else 200)
        if start:
            first = start + 7 if mode == "bad-range" else start
            self.send_header("Content-Range", f"bytes {first}-{len(DATA) - 1}/{len(DATA)}")
        if mode == "extra-nolength":  # HTTP/1.0 style: the body ends when the connection closes
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode in ("drop", "short", "stall"):
            self.wfile.write(body[:CUT - start])
            self.wfile.flush()
            if mode == "stall":
                Handler.release.wait(10)
            self.close_connection = True
            if mode == "drop":
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    Handler.mode, Handler.requests = "ok", []
    Handler.release = threading.Event()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/model.bsdiff4"
    Handler.release.set()
    srv.shutdown()
    srv.server_close()
    t.join(5)


@pytest.fixture
def st(tmp_path):
    return Staging(tmp_path / "state")


def fetch(url, st, **kw):
    kw.setdefault("expected_size", len(DATA))
    kw.setdefault("expected_sha256", SHA)
    kw.setdefault("max_bytes", 100_000_000)
    kw.setdefault("retries", 0)
    kw.setdefault("backoff", 0.0)
    return fetch_to_staging(url, dest=st.payload_path(kw["expected_sha256"]), **kw)


def test_interrupted_download_keeps_the_part_and_the_next_fetch_resumes_with_range(server, st):
    Handler.mode = "drop"
    with pytest.raises(TransportError) as ei:
        fetch(server, st)
    assert ei.value.code == "download.failed" and "at 300000 of 2000000 bytes" in ei.value.message
    part = st.part_path(SHA)
    assert part.stat().st_size == CUT and not st.payload_path(SHA).exists()

    Handler.mode = "ok"
    progress = []
    out = fetch(server, st, progress=progress.append, chunk=8192)
    assert out == st.payload_path(SHA) and out.read_bytes() == DATA and not part.exists()
    assert Handler.requests[-1] == f"bytes={CUT}-"
    pcts = [p["percent"] for p in progress]
    assert {p["phase"] for p in progress} == {"download"} and progress[-1]["bytes"] == len(DATA)
    assert pcts == sorted(pcts) and pcts[0] == 15.0 and pcts[-1] == 100.0
    assert max(b - a for a, b in zip(pcts, pcts[1:])) < 2.0  # fine steps
    assert len(pcts) < 120  # but throttled: not one per 8 KiB read


def test_retries_within_one_call_resume_where_the_last_try_stopped(server, st):
    Handler.mode = "drop-once"
    assert fetch(server, st, retries=2).read_bytes() == DATA
    assert Handler.requests == [None, f"bytes={CUT}-"]


def test_short_body_is_a_download_failure_and_resumable(server, st):
    Handler.mode = "short"  # Content-Length says 2 MB, the body stops at 300 kB
    with pytest.raises(TransportError) as ei:
        fetch(server, st)
    assert ei.value.code == "download.failed"
    assert st.part_path(SHA).stat().st_size == CUT
    Handler.mode = "ok"
    assert fetch(server, st).read_bytes() == DATA


def test_server_ignoring_range_restarts_from_zero(server, st):
    st.part_path(SHA).write_bytes(DATA[:1000])
    Handler.mode = "no-range"
    assert fetch(server, st).read_bytes() == DATA
    assert Handler.requests == ["bytes=1000-"]


def test_a_wrong_content_range_is_not_appended(server, st):
    st.part_path(SHA).write_bytes(DATA[:1000])
    Handler.mode = "bad-range"
    with pytest.raises(TransportError) as ei:
        fetch(server, st)
    assert "Content-Range" in ei.value.message and not st.part_path(SHA).exists()
    Handler.mode = "ok"
    assert fetch(server, st).read_bytes() == DATA and Handler.requests[-1] is None


def test_a_part_that_is_already_complete_gets_416_and_is_verified(server, st):
    st.part_path(SHA).write_bytes(DATA)  # a crash between the last byte and the rename
    assert fetch(server, st).read_bytes() == DATA
    assert Handler.requests == [f"bytes={len(DATA)}-"]


def test_a_corrupt_part_is_caught_by_the_hash_and_removed(server, st):
    st.part_path(SHA).write_bytes(b"\0" * 1000)  # resumed, but not the payload's first bytes
    with pytest.raises(UpdateRejected) as ei:
        fetch(server, st)
    assert ei.value.code == "update.payload_hash"
    assert not st.part_path(SHA).exists() and not st.payload_path(SHA).exists()
    assert fetch(server, st).read_bytes() == DATA and Handler.requests[-1] is None  # clean start


def test_wrong_hash_is_refused_and_nothing_is_left(server, st):
    with pytest.raises(UpdateRejected) as ei:
        fetch(server, st, expected_sha256="ab" * 32)
    assert ei.value.code == "update.payload_hash"
    assert list(st.dir.iterdir()) == []


def test_too_large_is_refused_before_any_request(server, st):
    with pytest.raises(UpdateRejected) as ei:
        fetch(server, st, max_bytes=len(DATA) - 1)
    assert ei.value.code == "update.too_large" and str(len(DATA)) in ei.value.message
    assert Handler.requests == [] and list(st.dir.iterdir()) == []


def test_a_server_announcing_more_is_refused_before_writing(server, st):
    Handler.mode = "extra"
    with pytest.raises(UpdateRejected) as ei:
        fetch(server, st)
    assert ei.value.code == "update.payload_size" and list(st.dir.iterdir()) == []


def test_a_server_sending_more_without_a_length_is_cut_off_mid_stream(server, st):
    Handler.mode = "extra-nolength"
    with pytest.raises(UpdateRejected) as ei:
        fetch(server, st)
    assert ei.value.code == "update.payload_size" and list(st.dir.iterdir()) == []


@pytest.mark.parametrize("mode", ["404", "500"])
def test_http_errors_are_download_failed_with_the_status(server, st, mode):
    Handler.mode = mode
    with pytest.raises(TransportError) as ei:
        fetch(server, st, retries=1)
    assert ei.value.code == "download.failed" and f"HTTP {mode}" in ei.value.message
    assert len(Handler.requests) == 2  # retried once


def test_connection_refused_is_download_failed(st):
    with socket.socket() as s:  # bound, never listening: connecting is refused
        s.bind(("127.0.0.1", 0))
        with pytest.raises(TransportError) as ei:
            fetch(f"http://127.0.0.1:{s.getsockname()[1]}/p", st)
    assert ei.value.code == "download.failed" and "refused" in ei.value.message.lower()


def test_a_stalled_server_times_out(server, st):
    Handler.mode = "stall"
    with pytest.raises(TransportError) as ei:
        fetch(server, st, timeout=0.3)
    assert ei.value.code == "download.failed" and "timed out" in ei.value.message
    assert st.part_path(SHA).stat().st_size == CUT  # kept for the resume


def test_disk_full_is_no_space_not_a_download_failure(server, st):
    st.part_path(SHA).symlink_to("/dev/full")  # every write fails with ENOSPC
    with pytest.raises(UpdateRejected) as ei:
        fetch(server, st, retries=2)
    assert ei.value.code == "update.no_space"
    assert len(Handler.requests) == 1  # not retried


def test_file_url_including_resume_and_errors(tmp_path, st):
    src = tmp_path / "payload.bin"
    src.write_bytes(DATA)
    st.part_path(SHA).write_bytes(DATA[:12345])
    assert fetch(src.as_uri(), st).read_bytes() == DATA
    with pytest.raises(TransportError) as ei:
        fetch((tmp_path / "missing").as_uri(), Staging(tmp_path / "s2"))
    assert ei.value.code == "download.failed" and "No such file" in ei.value.message
    src.write_bytes(DATA[:-1])
    with pytest.raises(TransportError):  # shorter than the manifest: a short read
        fetch(src.as_uri(), Staging(tmp_path / "s3"))


def test_unsupported_scheme_is_malformed(st):
    with pytest.raises(UpdateRejected) as ei:
        fetch("ftp://example.com/p", st)
    assert ei.value.code == "update.malformed"


def test_payload_b64(st):
    small = DATA[:5000]
    sha = hashlib.sha256(small).hexdigest()
    kw = dict(dest=st.payload_path(sha), expected_size=len(small), expected_sha256=sha, max_bytes=10_000)
    progress = []
    out = write_b64_to_staging(base64.b64encode(small).decode(), progress=progress.append, **kw)
    assert out.read_bytes() == small and progress[-1]["percent"] == 100.0
    assert not st.part_path(sha).exists()
    codes = {}
    for name, b64, over in [("bad", "not base64!!", {}), ("hash", base64.b64encode(small[::-1]).decode(), {}),
                            ("size", base64.b64encode(small[:-3]).decode(), {}),
                            ("big", base64.b64encode(small).decode(), {"max_bytes": 100}),
                            ("huge", "A" * 100_000, {})]:
        with pytest.raises(UpdateRejected) as ei:
            write_b64_to_staging(b64, **{**kw, "dest": st.dir / f"{name}.payload", **over})
        codes[name] = ei.value.code
    assert codes == {"bad": "update.malformed", "hash": "update.payload_hash", "size": "update.payload_size",
                     "big": "update.too_large", "huge": "update.payload_size"}
    assert sorted(p.name for p in st.dir.iterdir()) == [out.name]


def test_staging_layout_space_and_cleanup(tmp_path):
    st = Staging(tmp_path / "state")
    assert st.dir == tmp_path / "state/staging" and stat.S_IMODE(st.dir.stat().st_mode) == 0o700
    assert st.part_path("ab" * 32).name == "ab" * 32 + ".part"
    assert st.payload_path("ab" * 32).name == "ab" * 32 + ".payload"
    free = st.free_bytes()
    assert free > 0
    st.check_space(1)
    with pytest.raises(UpdateRejected) as ei:
        st.check_space(free * 2)
    assert ei.value.code == "update.no_space" and str(free * 2) in ei.value.message
    for name in ("old.part", "old.payload", "keep.payload", "pending-update.json"):
        (st.dir / name).write_bytes(b"x")
    (st.dir / "transfer-t1").mkdir()
    (st.dir / "transfer-t1/data").write_bytes(b"x")
    st.cleanup(keep={"keep.payload"})
    assert sorted(p.name for p in st.dir.iterdir()) == ["keep.payload", "pending-update.json"]
