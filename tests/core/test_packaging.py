"""The systemd unit and scripts/install.sh, checked with the real tools."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.long(seconds=55)

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


DROPINS = sorted(p.stem for p in (REPO / "systemd/edgeagent.service.d").glob("*.conf"))


@pytest.mark.parametrize("dropin", [None, *DROPINS])
def test_security_exposure_is_low(tmp_path, dropin):
    """The unit alone and with each accelerator's drop-in (issue 21): at most 2.0."""
    unit = _unit_with_real_binary(tmp_path)
    if dropin:
        (tmp_path / "edgeagent.service.d").mkdir()
        shutil.copy(REPO / f"systemd/edgeagent.service.d/{dropin}.conf", tmp_path / "edgeagent.service.d")
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True, text=True)
    m = re.search(r"Overall exposure level for edgeagent.service: ([0-9.]+)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    assert float(m.group(1)) <= 2.0
    if dropin:  # and the drop-in was read: its devices are in the unit's device ACL
        line = next(ln for ln in r.stdout.splitlines() if "DeviceAllow=" in ln)
        first = next(ln.split("=", 1)[1].split()[0] for ln in (REPO / f"systemd/edgeagent.service.d/{dropin}.conf")
                     .read_text().splitlines() if ln.startswith("DeviceAllow="))
        assert first in line, line


def test_systemd_analyze_verify_accepts_each_accelerator_dropin(tmp_path):
    assert set(DROPINS) >= {"coral-usb", "coral-pcie", "arm-gpu"}
    unit = _unit_with_real_binary(tmp_path)
    (tmp_path / "edgeagent.service.d").mkdir()
    for dropin in DROPINS:
        for old in (tmp_path / "edgeagent.service.d").iterdir():
            old.unlink()
        shutil.copy(REPO / f"systemd/edgeagent.service.d/{dropin}.conf", tmp_path / "edgeagent.service.d")
        r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
        assert r.returncode == 0 and "edgeagent" not in r.stderr, (dropin, r.stderr)


def test_install_sh_refuses_an_unknown_accelerator(tmp_path, wheel):
    bad = _install(tmp_path / "other", wheel, "--accelerator", "hailo")
    assert bad.returncode == 2 and "--accelerator hailo: unknown (known: arm-gpu coral-pcie coral-usb" in bad.stderr
    assert not (tmp_path / "other" / "opt").exists()


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
    # no python in the image yet: the venv still names the image's, and says so
    assert _resolve_in(root, "/opt/edgeagent/venv/bin/python3") == root / "usr/bin/python3"
    assert "home = /usr/bin\n" in (venv / "pyvenv.cfg").read_text()
    assert f"has no /usr/bin/python3 yet: the venv expects python{HOST_VER}" in r.stdout
    # and running it again (an upgrade, now with two accelerators) still works with the rewritten
    # scripts, and adds each accelerator's drop-in and its device groups
    again = _install(root, wheel, "--accelerator", "coral-usb", "--accelerator", "arm-gpu")
    assert again.returncode == 0, again.stdout + again.stderr
    assert [l.split(":")[0] for l in (root / "etc/passwd").read_text().splitlines()].count("edgeagent") == 1
    d = root / "etc/systemd/system/edgeagent.service.d"
    assert sorted(p.name for p in d.iterdir()) == ["arm-gpu.conf", "coral-usb.conf"]
    groups = {l.split(":")[0]: l.split(":") for l in (root / "etc/group").read_text().splitlines()}
    for g in ("plugdev", "render", "video"):
        assert "edgeagent" in groups[g][3].split(","), (g, groups.get(g))
    # pip is still in the venv, for `pip install 'edgeagent[camera]'`
    assert (venv / f"lib/python{HOST_VER}/site-packages/pip/__init__.py").is_file()


def _image_python(root: Path, exe: str = "/usr/bin/python3.11") -> str:
    """Put the system's python3 (binary, shared libraries, standard library) into an image root,
    as a Debian image has it; its version "3.11"."""
    ver = Path(exe).name.removeprefix("python")
    libs = re.findall(r"(/\S+\.so[.\d]*) \(", subprocess.run(["ldd", exe], capture_output=True, text=True).stdout)
    for f in [exe, *libs]:
        dst = root / f.lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dst)
    (root / "usr/bin/python3").symlink_to(Path(exe).name)
    shutil.copytree(f"/usr/lib/python{ver}", root / f"usr/lib/python{ver}", symlinks=True,
                    ignore=shutil.ignore_patterns("test", "idlelib", "tkinter", "ensurepip", "__pycache__"))
    return ver


def _resolve_in(root: Path, path: str) -> Path:
    """Follow symlinks the way they resolve once `root` is /."""
    p = Path(path)
    for _ in range(40):
        full = root / str(p).lstrip("/")
        if not full.is_symlink():
            return full
        target = Path(full.readlink())
        p = target if target.is_absolute() else p.parent / target
    raise AssertionError(f"symlink loop at {path}")


HOST_VER = "%d.%d" % sys.version_info[:2]


@pytest.mark.timeout(300)
def test_install_sh_into_a_temporary_root_is_idempotent(tmp_path, wheel):
    """The image's own python runs the venv (in a chroot, as the booted image would): the venv
    names /usr/bin/python3, never the build host's interpreter (issue 20, point 6)."""
    if not Path(f"/usr/bin/python{HOST_VER}").is_file():
        pytest.fail(f"/usr/bin/python{HOST_VER} (Debian's python3) is needed to build an image root like a device's")
    root = tmp_path / "root"
    _fake_root(root)
    _image_python(root, f"/usr/bin/python{HOST_VER}")
    first = _install(root, wheel)
    assert first.returncode == 0, first.stdout + first.stderr
    venv_py = "/opt/edgeagent/venv/bin/python3"
    assert _resolve_in(root, venv_py) == root / f"usr/bin/python{HOST_VER}"
    out = subprocess.run(["chroot", str(root), venv_py, "-c", "import sys, edgeagent; print(sys.prefix, edgeagent.__version__)"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split()[0] == "/opt/edgeagent/venv", out.stdout + out.stderr
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


@pytest.mark.parametrize("name,machine", [("python3.9", 62), (f"python{HOST_VER}", 183)])
def test_install_sh_refuses_an_image_whose_python_is_not_the_hosts(tmp_path, wheel, name, machine):
    """Another minor version, or an arm64 image on an x86-64 host: the wheels pip would pick are
    the host's; one line says to run it inside the image's chroot."""
    root = tmp_path / "img"
    exe = root / "usr/bin" / name
    exe.parent.mkdir(parents=True)
    exe.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(11) + machine.to_bytes(2, "little") + bytes(44))
    (root / "usr/bin/python3").symlink_to(name)
    r = _install(root, wheel)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "run install.sh inside the image's chroot" in lines[0], r.stderr
    arch = {62: "x86_64", 183: "aarch64"}[machine]
    assert f"has {name} for {arch}, this host python{HOST_VER} for" in lines[0]
    assert not (root / "opt").exists() and not (root / "etc").exists()


def test_install_sh_refuses_without_root_or_prefix():
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to run the script as an unprivileged user")
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash",
                        str(REPO / "scripts/install.sh")], capture_output=True, text=True)
    assert r.returncode == 2 and "run as root" in r.stderr
