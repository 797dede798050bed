"""The architecture as the README draws it, checked by tools rather than memory."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")
MAX_LINES = 400
EXEMPT = {"edgeagent/engine/testmodels.py"}  # the test-model generator: data, not runtime logic


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([str(LINT), "--config", str(root / "setup.cfg"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_import_contracts_hold_and_fail_on_a_forbidden_import(tmp_path):
    ok = _lint(REPO)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "5 kept, 0 broken" in ok.stdout
    # the same tree with one forbidden import: the manifest verifier reaching for MQTT
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "edgeagent", copy / "edgeagent", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "setup.cfg", copy / "setup.cfg")
    target = copy / "edgeagent" / "update" / "manifest.py"
    target.write_text(target.read_text() + "\nimport paho.mqtt.client  # noqa: E402,F401\n")
    bad = _lint(copy)
    assert bad.returncode != 0
    assert "Only the transport imports paho BROKEN" in bad.stdout
    assert "edgeagent.update.manifest -> paho" in bad.stdout


def test_no_module_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in (REPO / "edgeagent").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert set(long) <= EXEMPT, long


def test_no_part_takes_the_whole_agent():
    """Every part gets the interface it uses (a ModelHost, an update API, readings), never `agent`."""
    offenders = []
    for p in (REPO / "edgeagent").rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = [a.arg for a in node.args.args + node.args.kwonlyargs]
                if "agent" in names:
                    offenders.append(f"{p.relative_to(REPO)}:{node.lineno} {node.name}")
    assert offenders == []


def _python(code: str) -> str:
    """What a fresh interpreter in the checkout prints running `code`."""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_daemon_pays_for_cryptography_only_when_an_update_comes():
    """Everything a running daemon imports (service, updater, follower, MQTT) leaves cryptography
    (about 6.5 MiB of RSS) to the first signature it checks; pyrage to the first encrypted payload."""
    code = ("import sys, edgeagent.service.agent, edgeagent.update.manager, edgeagent.fleet.follower, "
            "edgeagent.transport.mqtt, edgeagent.update.installer; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'cryptography', 'pyrage'}))")
    assert _python(code).strip() == "[]"
    # and a signature check still finds it
    code = ("import sys; from edgeagent.update.keys import generate_keypair; import tempfile; "
            "generate_keypair(tempfile.mkdtemp()); print('cryptography' in sys.modules)")
    assert _python(code).strip() == "True"


def test_the_way_to_the_first_frame_leaves_telemetry_quality_and_sd_notify_libraries_out():
    """What the agent module imports (all of it is on the way to READY=1) holds no telemetry
    collector (glob, subprocess, the hardware discovery it runs), no quality monitor or sample
    store unless [monitor] asks, and not systemd-python (sd_notify is our own socket)."""
    code = ("import sys, edgeagent.service.agent\n"
            "print(sorted({'edgeagent.telemetry.collector', 'edgeagent.runtime.quality', 'edgeagent.runtime.capture', "
            "'edgeagent.state.samples', 'subprocess', 'glob', 'systemd'} & set(sys.modules)))\n")
    assert _python(code).strip() == "[]"


def test_the_daemons_command_line_leaves_what_only_failures_and_updates_use_to_them():
    """`edgeagent run` up to READY=1 imports no shutil (argparse's width lookup would bring bz2,
    lzma and zlib, three shared libraries), no tempfile (the first start's health check), random
    (input retries), concurrent.futures (a model swap) or the probation judge; help still wraps
    to the terminal's width, as argparse's own lookup does."""
    code = ("import sys\n"
            "from edgeagent.cli import main\n"
            "main.build_parser(['run']).parse_args(['run'])\n"
            "import edgeagent.service.agent\n"
            "print(sorted({'shutil', 'bz2', 'lzma', 'zlib', 'tempfile', 'random', 'concurrent.futures', "
            "'edgeagent.update.probation'} & set(sys.modules)))\n")
    assert _python(code).strip() == "[]"
    for cols in (40, 70):
        out = subprocess.run([sys.executable, "-m", "edgeagent", "bench", "--help"], cwd=REPO, capture_output=True,
                             text=True, timeout=60, env=dict(os.environ, COLUMNS=str(cols)))
        options = out.stdout.split("\n\n", 1)[1].splitlines()  # after the usage, whose tokens never break
        assert out.returncode == 0 and cols - 12 < max(map(len, options)) <= cols, out.stdout


def test_the_mqtt_transport_leaves_urllib_request_to_its_first_use():
    """paho imports urllib.request (http.client, email: 2.3 MiB of RSS) only for a proxy lookup
    it makes with PySocks; the daemon's transport defers it, and it still works when used."""
    code = ("import sys, edgeagent.transport.mqtt\n"
            "print(sorted({'http.client', 'email.message'} & set(sys.modules)))\n"
            "import urllib.request\n"
            "print(callable(urllib.request.urlopen), 'http.client' in sys.modules)\n"
            "from edgeagent.update import fetch\n"
            "print(fetch.urllib.request.Request('http://127.0.0.1/').full_url)\n")
    assert _python(code).splitlines() == ["[]", "True True", "http://127.0.0.1/"]


def test_the_command_line_keeps_numpy_to_one_blas_thread_unless_told():
    """A BLAS pool (a thread per core) only spins on the cores the interpreter needs: edgeagent
    sets OPENBLAS_NUM_THREADS=1 before numpy loads, and a unit's own setting wins."""
    code = ("import os, sys\n"
            "from edgeagent.cli import main\n"
            "try:\n    main.main(['--version'])\nexcept SystemExit:\n    pass\n"
            "import numpy\n"
            "print(os.environ['OPENBLAS_NUM_THREADS'], len(os.listdir('/proc/self/task')))\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["1", "1"], out.stdout
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(env, OPENBLAS_NUM_THREADS="2"),
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.split()[-2] == "2", out.stdout
