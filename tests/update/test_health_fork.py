"""The first start's health check runs in a fork of the daemon (numpy already imported) instead of
a fresh Python: every way that child can end is read as the exec'd child's would be. Each case
runs in a fresh Python, as the daemon's first start does (no interpreter loaded yet); the bodies
that crash or hang are patched in before the fork, so the child really segfaults, really hangs,
really dies with its parent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from edgeagent.update import forked

REPO = Path(__file__).resolve().parents[2]

_CASE = r"""
import json, os, resource, signal, sys, threading, time
from pathlib import Path
from edgeagent.errors import EdgeAgentError
from edgeagent.update import forked, health
from edgeagent.update.cancel import Cancel

model, work = sys.argv[1], Path(sys.argv[2])
req = health.HealthRequest(candidate=model, baseline=None, frames_file="", manifest_io=None,
                           max_latency_factor=3.0, max_latency_ms=None)
kw = dict(timeout_s=60.0, workdir=work, fork=True)
forks = []
real = forked.ForkedChild
def counting(*a, **k):
    child = real(*a, **k)
    forks.append(child.pid)
    return child
forked.ForkedChild = counting
%s
try:
    res = health.check(req, [], **kw)
    out = {"ok": res.ok, "code": res.code, "reason": res.reason, "io": res.io}
except EdgeAgentError as e:
    out = {"raised": e.code}
for pid in forks:
    try:
        os.waitpid(pid, os.WNOHANG)
        out["left"] = pid
    except ChildProcessError:
        pass
out["forked"] = len(forks)
print(json.dumps(out))
"""


def _case(tmp_path: Path, model_path: Path, setup: str = "", timeout: float = 60) -> dict:
    out = subprocess.run([sys.executable, "-c", _CASE % setup, str(model_path), str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_a_forked_check_gives_the_same_answer_as_a_fresh_child(tmp_path, model_path):
    forked_res = _case(tmp_path, model_path)
    fresh_res = _case(tmp_path, model_path, "kw['fork'] = False")
    assert forked_res["forked"] == 1 and fresh_res["forked"] == 0
    assert forked_res["ok"] and fresh_res["ok"] and forked_res["io"] == fresh_res["io"], (forked_res, fresh_res)
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"junk!!")
    res = _case(tmp_path, junk)
    assert res["code"] == "health.load_failed" and "is not a TFLite model" in res["reason"], res


def test_a_process_that_loaded_an_interpreter_does_not_fork(tmp_path, model_path):
    """A fork copies the interpreter's thread pool without its threads (under xdist this
    segfaulted the child): such a process gets a fresh child, and the right answer."""
    setup = ("from edgeagent.engine.model import Model\n"
             "m = Model.load(model)\n"
             "import numpy as np\n"
             "m.preprocess(np.zeros(m.inputs[0].shape, m.inputs[0].dtype)); m.invoke()\n")
    res = _case(tmp_path, model_path, setup)
    assert res["ok"] and res["forked"] == 0, res


def test_a_forked_child_that_segfaults_is_a_crashed_check(tmp_path, model_path):
    setup = ("def segfault(req):\n"
             "    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file left behind\n"
             "    os.kill(os.getpid(), signal.SIGSEGV)\n"
             "health.run_checks = segfault\n")
    res = _case(tmp_path, model_path, setup)
    assert res["forked"] == 1 and res["code"] == "health.crashed" and "SIGSEGV" in res["reason"], res


def test_a_forked_child_that_raises_says_why_in_one_line(tmp_path, model_path):
    setup = ("def boom(req):\n"
             "    raise RuntimeError('the interpreter said no')\n"
             "health.run_checks = boom\n")
    res = _case(tmp_path, model_path, setup)
    assert res["code"] == "health.crashed", res
    assert res["reason"] == "checking process exited 1: RuntimeError: the interpreter said no", res


def test_a_forked_child_that_hangs_times_out_is_killed_and_reaped(tmp_path, model_path):
    res = _case(tmp_path, model_path, "health.run_checks = lambda req: time.sleep(600)\nkw['timeout_s'] = 1.0\n")
    assert res["forked"] == 1 and res["code"] == "health.timeout" and "left" not in res, res


def test_a_cancel_kills_the_forked_child_at_once(tmp_path, model_path):
    setup = ("health.run_checks = lambda req: time.sleep(600)\n"
             "kw['cancel'] = c = Cancel()\n"
             "threading.Timer(0.5, c.cancel, args=('stopping',)).start()\n")
    t = time.monotonic()
    res = _case(tmp_path, model_path, setup)
    assert res["forked"] == 1 and res.get("raised") == "update.cancelled" and "left" not in res, res
    assert time.monotonic() - t < 30


def test_the_forked_child_keeps_none_of_the_parents_descriptors():
    """A client of the control socket sees its connection close when the daemon closes it, and the
    state directory's lock is free when the daemon exits, even while a check runs."""
    r, w = os.pipe()
    child = forked.ForkedChild(lambda: " ".join(sorted(os.listdir("/proc/self/fd"))).encode())
    out, err = child.communicate(timeout=30)
    os.close(r)
    os.close(w)
    assert child.returncode == 0, err
    # 0, 1, 2, the result pipe, and the one listdir opened while listing (this process has more:
    # the pipe above, pytest's own files)
    assert len(out.split()) <= 5, out


def test_the_forked_child_dies_with_its_parent(tmp_path, model_path):
    """PR_SET_PDEATHSIG as for the exec'd child: a daemon killed by SIGKILL leaves no check behind."""
    code = ("import os, sys, time, threading\n"
            "from pathlib import Path\n"
            "from edgeagent.update import health\n"
            "health.run_checks = lambda req: time.sleep(600)\n"
            "req = health.HealthRequest(sys.argv[1], None, '', None, 3.0, None)\n"
            "threading.Thread(target=health.check, args=(req, []), daemon=True,  # an error ends it, no 600 s wait\n"
            "                 kwargs=dict(timeout_s=600, workdir=Path(sys.argv[2]), fork=True)).start()\n"
            "time.sleep(1.0)\n"
            "def parent(pid):  # a process may end between listdir and open (another test's)\n"
            "    try:\n"
            "        return open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[1]\n"
            "    except OSError:\n"
            "        return None\n"
            "print([int(p) for p in os.listdir('/proc') if p.isdigit() and parent(p) == str(os.getpid())], flush=True)\n"
            "time.sleep(600)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(model_path), str(tmp_path)], cwd=REPO,
                         stdout=subprocess.PIPE, text=True)
    try:
        children = json.loads(p.stdout.readline())
        assert len(children) == 1, children
    finally:
        p.kill()
        p.wait()
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{children[0]}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{children[0]}")
