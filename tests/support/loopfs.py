"""A real ext4 filesystem in an image file, attached to a loop device and mounted (root only)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def need_root_and_loop() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: loop devices and mount (CI runs as root)")
    for tool in ("losetup", "mkfs.ext4", "e2fsck", "mount", "umount"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (util-linux, e2fsprogs)")
    if subprocess.run(["losetup", "-f"], capture_output=True).returncode != 0:
        pytest.skip("no free loop device on this machine")


def run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def make_image(path: Path, mb: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(mb << 20)
    run("mkfs.ext4", "-q", "-F", str(path))
    return path


class Mounted:
    """An ext4 image attached to a loop device and mounted."""

    def __init__(self, image: Path, where: Path) -> None:
        self.image, self.where = image, where
        where.mkdir(parents=True, exist_ok=True)
        self.dev = run("losetup", "-f", "--show", str(image))
        try:
            run("mount", "-t", "ext4", self.dev, str(where))
        except subprocess.CalledProcessError:
            run("losetup", "-d", self.dev)
            raise

    def close(self) -> None:
        subprocess.run(["umount", str(self.where)], capture_output=True)
        subprocess.run(["losetup", "-d", self.dev], capture_output=True)


def fill(where: Path) -> Path:
    """Fill the filesystem to the last block; returns the filler file."""
    filler = where / "filler"
    with open(filler, "wb", buffering=0) as f:
        block = b"\0" * (1 << 16)
        try:
            while True:
                f.write(block)
        except OSError:
            pass
        try:
            while True:  # the last partial block
                f.write(b"\0" * 512)
        except OSError:
            pass
    os.sync()
    return filler
