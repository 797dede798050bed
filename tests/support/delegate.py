"""The test delegate (tests/support/delegate/testdelegate.c), built with the system C compiler."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).parent / "delegate" / "testdelegate.c"


def build(out_dir: Path) -> Path:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("a C compiler (gcc) is needed to build the test delegate: apt-get install gcc")
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    lib = out_dir / f"libtestdelegate-{digest}.so"
    if not lib.exists():
        subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(lib), str(SOURCE)], check=True,
                       capture_output=True, text=True)
    return lib


def records(path: Path) -> list[dict]:
    """What the delegate wrote: one JSON object per create / prepare / destroy."""
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []
