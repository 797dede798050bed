"""The on-disk chunk store behind MQTT chunked transfer: any order, duplicates, what is missing,
consistent chunk sizes, and resuming after the daemon is killed (a real SIGKILLed process)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edgeagent.errors import CommandError, TransportError
from edgeagent.update.errors import UpdateRejected
from edgeagent.update.transfer import TransferStore

REPO = Path(__file__).resolve().parents[2]
DATA = os.urandom(300_000 + 123)
SHA = hashlib.sha256(DATA).hexdigest()
CS = 4096
CHUNKS = [DATA[i:i + CS] for i in range(0, len(DATA), CS)]
N = len(CHUNKS)


def begin(d, tid="up-1", chunks=N, size=len(DATA), sha=SHA):
    return TransferStore(d).begin(tid, chunks, size, sha)


def test_out_of_order_duplicates_missing_and_assemble(tmp_path):
    t = begin(tmp_path)
    assert t.missing() == list(range(N)) and not t.complete
    odd_first = list(range(1, N, 2))[::-1] + list(range(0, N, 2))
    for i in odd_first[:-5]:
        assert t.add(i, CHUNKS[i]) is True
    assert t.add(odd_first[0], CHUNKS[odd_first[0]]) is False  # a duplicate is ignored
    assert t.missing() == sorted(odd_first[-5:])
    p = t.progress()
    assert p["phase"] == "download" and p["chunks"] == N - 5 and p["of"] == N and p["percent"] == round(100 * (N - 5) / N, 1)
    for i in t.missing():
        t.add(i, CHUNKS[i])
    assert t.complete and t.progress()["percent"] == 100.0 and t.progress()["bytes"] == len(DATA)
    out = t.assemble()
    assert out == tmp_path / f"{SHA}.payload" and out.read_bytes() == DATA
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # the transfer directory is gone


def test_resume_from_a_new_store_after_a_clean_stop(tmp_path):
    with begin(tmp_path) as t:
        for i in range(0, N, 3):
            t.add(i, CHUNKS[i])
    t2 = begin(tmp_path)
    assert t2.missing() == [i for i in range(N) if i % 3]
    for i in t2.missing():
        t2.add(i, CHUNKS[i])
    assert t2.assemble().read_bytes() == DATA


CHILD = """
import os, signal, sys
from pathlib import Path
from edgeagent.update.transfer import TransferStore
d, sha, size, n, cs = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
data = Path(sys.argv[6]).read_bytes()
t = TransferStore(d).begin("crash", n, size, sha)
for i in range(n - 1, n - 51, -1):
    t.add(i, data[i * cs:(i + 1) * cs])
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_resume_after_the_process_is_killed(tmp_path):
    (tmp_path / "src").write_bytes(DATA)
    staging = tmp_path / "staging"
    r = subprocess.run([sys.executable, "-c", CHILD, str(staging), SHA, str(len(DATA)), str(N), str(CS),
                        str(tmp_path / "src")], cwd=REPO, capture_output=True)
    assert r.returncode == -signal.SIGKILL, r.stderr
    t = begin(staging, "crash")
    missing = t.missing()
    sent = set(range(N - 50, N))
    assert set(range(N - 50)) <= set(missing)  # never claims a chunk that was not sent
    assert len(sent - set(missing)) >= 32  # what was saved before the kill is kept
    for i in missing:
        t.add(i, CHUNKS[i])
    assert t.assemble().read_bytes() == DATA


def test_chunk_sizes_must_be_consistent(tmp_path):
    with begin(tmp_path) as t:
        with pytest.raises(UpdateRejected) as ei:
            t.add(0, b"x" * (len(DATA) + 1))  # a first chunk that cannot fit: refused, and it fixes nothing
        assert ei.value.code == "update.malformed"
        assert t.add(3, CHUNKS[3]) is True
        for i, data in [(4, CHUNKS[4][:-1]), (5, CHUNKS[5] + b"!"), (N - 1, CHUNKS[-1] + b"!")]:
            with pytest.raises(UpdateRejected) as ei:
                t.add(i, data)
            assert ei.value.code == "update.malformed" and f"chunk {i}" in ei.value.message
        assert t.missing() == [i for i in range(N) if i != 3]


def test_the_last_chunk_first_sets_the_chunk_size(tmp_path):
    t = begin(tmp_path)
    assert t.add(N - 1, CHUNKS[-1])
    with pytest.raises(UpdateRejected):
        t.add(0, CHUNKS[0][:-1])
    for i in range(N - 1):
        t.add(i, CHUNKS[i])
    assert t.assemble().read_bytes() == DATA


@pytest.mark.parametrize("index", [-1, N, N + 100, True, "1"])
def test_out_of_range_index_is_refused(tmp_path, index):
    with begin(tmp_path) as t:
        with pytest.raises(UpdateRejected) as ei:
            t.add(index, CHUNKS[0])
        assert ei.value.code == "update.malformed"


@pytest.mark.parametrize("tid", ["../evil", "a/b", "", "x" * 65, "sp ace", 7])
def test_bad_ids_and_counts_are_bad_args(tmp_path, tid):
    with pytest.raises(CommandError) as ei:
        TransferStore(tmp_path).begin(tid, 2, 10, SHA)
    assert ei.value.code == "cmd.bad_args"
    with pytest.raises(CommandError):
        TransferStore(tmp_path).begin("ok", 11, 10, SHA)  # more chunks than bytes
    with pytest.raises(CommandError):
        TransferStore(tmp_path).begin("ok", 0, 10, SHA)
    assert list(tmp_path.iterdir()) == []


def test_assemble_before_complete_loses_nothing(tmp_path):
    t = begin(tmp_path)
    for i in range(N - 1):
        t.add(i, CHUNKS[i])
    with pytest.raises(TransportError) as ei:
        t.assemble()
    assert ei.value.code == "download.failed" and "1 of" in ei.value.message
    t.add(N - 1, CHUNKS[-1])
    assert t.assemble().read_bytes() == DATA


def test_wrong_content_is_refused_and_removed(tmp_path):
    t = begin(tmp_path, "x", 2, 8, hashlib.sha256(b"abcdefgh").hexdigest())
    t.add(0, b"abcd")
    t.add(1, b"WXYZ")
    with pytest.raises(UpdateRejected) as ei:
        t.assemble()
    assert ei.value.code == "update.payload_hash"
    assert not (tmp_path / "transfer-x/data").exists()


def test_same_id_with_other_parameters_starts_over(tmp_path):
    with begin(tmp_path) as t:
        for i in range(10):
            t.add(i, CHUNKS[i])
    other = DATA[::-1]
    t2 = begin(tmp_path, chunks=N, size=len(other), sha=hashlib.sha256(other).hexdigest())
    assert t2.missing() == list(range(N))
    state = json.loads((tmp_path / "transfer-up-1/state.json").read_text())
    assert state["have"] == [] and state["sha256"] == hashlib.sha256(other).hexdigest()
    for i in range(N):
        t2.add(i, other[i * CS:(i + 1) * CS])
    assert t2.assemble().read_bytes() == other


def test_the_data_file_is_preallocated(tmp_path):
    with begin(tmp_path):
        st = os.stat(tmp_path / "transfer-up-1/data")
    assert st.st_size == len(DATA) and st.st_blocks * 512 >= len(DATA)  # blocks reserved, not sparse
