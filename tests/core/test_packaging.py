"""The systemd unit and scripts/install.sh, checked with the real tools."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "edgeagent.service"


def _unit_with_real_binary(tmp_path: Path) -> Path:
    exe = Path(sys.executable).parent / "edgeagent"
    text = UNIT.read_text().replace("/opt/edgeagent/venv/bin/edgeagent", str(exe))
    p = tmp_path / "edgeagent.service"
    p.write_text(text)
    return p


def test_unit_declares_the_contract():
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "StateDirectory=edgeagent",
                 "RuntimeDirectory=edgeagent", "ConfigurationDirectory=edgeagent", "User=edgeagent",
                 "RestartPreventExitStatus=2", "After=network-online.target time-sync.target"):
        assert line in text


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    unit = _unit_with_real_binary(tmp_path)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "edgeagent.service" not in r.stderr, r.stderr  # no warnings about our unit


def test_security_exposure_is_low(tmp_path):
    unit = _unit_with_real_binary(tmp_path)
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True, text=True)
    m = re.search(r"Overall exposure level for edgeagent.service: ([0-9.]+)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    assert float(m.group(1)) <= 2.0


def _fake_root(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\nvideo:x:44:\ndialout:x:20:\n")
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (root / "etc/gshadow").write_text("root:*::\nvideo:!::\ndialout:!::\n")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    wheels = tmp_path_factory.mktemp("wheels")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(REPO)], check=True, capture_output=True)
    return next(wheels.glob("edgeagent-*.whl"))


def _install(root: Path, wheel: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts/install.sh"), "--prefix", str(root), "--extras", "",
                           "--package", str(wheel), "--pip-args", "--no-deps --no-index", *extra],
                          capture_output=True, text=True)


@pytest.mark.timeout(300)
def test_install_sh_into_an_empty_directory_builds_a_correct_image(tmp_path, wheel):
    """An image root with nothing in it: users and groups inside it, ownership by its numeric
    ids, and venv scripts that name the path the venv will have once the root is /."""
    root = tmp_path / "img"
    root.mkdir()
    r = _install(root, wheel, "--system-site-packages")
    assert r.returncode == 0, r.stdout + r.stderr
    passwd = (root / "etc/passwd").read_text()
    m = re.search(r"^edgeagent:x:(\d+):(\d+):.*:/var/lib/edgeagent:/usr/sbin/nologin$", passwd, re.M)
    assert m, passwd
    uid, gid = int(m.group(1)), int(m.group(2))
    groups = {l.split(":")[0]: l.split(":") for l in (root / "etc/group").read_text().splitlines()}
    assert int(groups["edgeagent"][2]) == gid and uid < 1000 and gid < 1000
    assert "edgeagent" in groups["video"][3].split(",") and "edgeagent" in groups["dialout"][3].split(",")
    assert "edgeagent:" in (root / "etc/shadow").read_text() and "edgeagent:" in (root / "etc/gshadow").read_text()
    # the config: group-readable by the service user's gid, the directory too
    etc, cfg = root / "etc/edgeagent", root / "etc/edgeagent/config.toml"
    assert etc.stat().st_gid == gid and etc.stat().st_mode & 0o050 == 0o050
    assert cfg.stat().st_gid == gid and cfg.stat().st_mode & 0o777 == 0o640
    assert (root / "var/lib/edgeagent").stat().st_uid == uid
    # every script of the venv names /opt/edgeagent/venv, none the build root
    venv = root / "opt/edgeagent/venv"
    exe = (venv / "bin/edgeagent").read_text().splitlines()[0]
    assert exe == "#!/opt/edgeagent/venv/bin/python", exe
    for f in (venv / "bin").iterdir():
        if f.is_file() and not f.is_symlink():
            assert str(root) not in f.read_text(errors="replace"), f
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    # and running it again (an upgrade) still works with the rewritten scripts
    again = _install(root, wheel)
    assert again.returncode == 0, again.stdout + again.stderr
    assert [l.split(":")[0] for l in (root / "etc/passwd").read_text().splitlines()].count("edgeagent") == 1


@pytest.mark.timeout(300)
def test_install_sh_into_a_temporary_root_is_idempotent(tmp_path, wheel):
    root = tmp_path / "root"
    _fake_root(root)
    first = _install(root, wheel)
    assert first.returncode == 0, first.stdout + first.stderr
    venv_py = root / "opt/edgeagent/venv/bin/python"
    out = subprocess.run([str(venv_py), "-c", "import edgeagent; print(edgeagent.__version__)"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip()
    assert (root / "opt/edgeagent/venv/bin/edgeagent").exists()
    assert (root / "etc/systemd/system/edgeagent.service").read_text() == UNIT.read_text()
    cfg = root / "etc/edgeagent/config.toml"
    assert cfg.exists() and (cfg.stat().st_mode & 0o777) == 0o640
    assert (root / "var/lib/edgeagent").is_dir()
    passwd = (root / "etc/passwd").read_text()
    assert re.search(r"^edgeagent:x:\d+:\d+:.*:/var/lib/edgeagent:/usr/sbin/nologin$", passwd, re.M)
    assert "edgeagent" in [l for l in (root / "etc/group").read_text().splitlines() if l.startswith("video:")][0]

    # operator edits survive a second run; nothing is duplicated
    cfg.write_text("[model]\nname = \"mine\"\n")
    second = _install(root, wheel)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "kept existing" in second.stdout
    assert cfg.read_text() == "[model]\nname = \"mine\"\n"
    assert (root / "etc/passwd").read_text().count("\nedgeagent:") == 1
    assert (root / "etc/group").read_text().count("\nedgeagent:") == 1


def test_install_sh_refuses_without_root_or_prefix():
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to run the script as an unprivileged user")
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash",
                        str(REPO / "scripts/install.sh")], capture_output=True, text=True)
    assert r.returncode == 2 and "run as root" in r.stderr
