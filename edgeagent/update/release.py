"""The publisher side: build and sign an update bundle (manifest + payload).

A BSDIFF4 delta from the base (update/delta.py: in place when the layout is unchanged, bsdiff4's
search otherwise) is used only when it is smaller than the full model; otherwise the payload is
the full model. The payload is written to disk as it is built, never held whole in memory.
The manifest is signed by one or more keys (key rotation: sign with the old and the new key
until every device trusts the new one, then retire the old).
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Sequence

from edgeagent.errors import EdgeAgentError
from edgeagent.state import labels as labels_mod
from edgeagent.state.atomic import atomic_write_json, copy_durable, fsync_dir
from edgeagent.update.delta import build_delta
from edgeagent.update.encryption import encrypt_file, recipient_id
from edgeagent.update.keys import load_private_key
from edgeagent.update.manifest import SPEC_VERSION, TYPE, _NAME, parse_signed, sign_envelope

Progress = Callable[[str, float], None]


def _sha256(path: Path, progress: Progress | None, phase: str) -> tuple[str, int]:
    h = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as fh:
        for b in iter(lambda: fh.read(1 << 20), b""):
            h.update(b)
            done += len(b)
            if progress:
                progress(phase, 100.0 * done / max(total, 1))
    return h.hexdigest(), total


def _ts(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def golden_health(npz_path: str | os.PathLike, min_pass_pct: int, tol_e6: int | None = None) -> dict:
    """`signed.health.golden` from an .npz file (`inputs` with `labels` or `outputs`)."""
    import base64

    try:
        raw = Path(npz_path).read_bytes()
    except OSError as e:
        raise EdgeAgentError("release.bad_args", f"--golden {npz_path}: {e.strerror}") from None
    g = {"npz_b64": base64.b64encode(raw).decode(), "min_pass_pct": int(min_pass_pct)}
    if tol_e6 is not None:
        g["tol_e6"] = int(tol_e6)
    return g


def make_release(*, keys: list[str], target: Path, base: Path | None, model: str, version: int, out_dir: Path,
                 force_full: bool = False, expires_days: int = 365, health: dict | None = None,
                 io: dict | None = None, base_version: int | None = None,
                 progress: Progress | None = None, created: datetime | None = None,
                 delta_method: str = "auto", labels: Sequence[str] | None = None, monitor: dict | None = None,
                 requires_delegate: str | None = None, encrypt_to: Sequence[str] | None = None,
                 not_before: datetime | None = None) -> dict:
    """Write the payload and the signed manifest into out_dir; return a summary dict.
    `created` defaults to now; expires is now + expires_days. encrypt_to: age recipients
    (`age1...`): the payload is encrypted to them and the manifest names their ids."""
    if not _NAME.match(model):
        raise EdgeAgentError("release.bad_args", f"--model {model!r}: must match [A-Za-z0-9._-]{{1,64}}")
    if version < 1:
        raise EdgeAgentError("release.bad_args", "--version must be >= 1")
    signers = [load_private_key(k) for k in keys]
    target, out_dir = Path(target), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tsha, tsize = _sha256(target, progress, "hash")
    kind, fmt, method, why = "full", "raw", None, ""
    signed_base = None
    work = out_dir / f".{model}-{version}.payload.tmp-{os.getpid()}"
    delta_path = None
    try:
        if base is not None and not force_full:
            bsha, _ = _sha256(Path(base), progress, "hash base")
            try:
                d = build_delta(Path(base), target, work, method=delta_method, progress=progress)
            except ValueError as e:
                raise EdgeAgentError("release.bad_args", str(e)) from None
            delta_path = d.path
            if d.size < tsize:
                kind, fmt, method, why = "delta", "bsdiff4", d.method, d.why
                signed_base = {"version": base_version if base_version is not None else version - 1, "sha256": bsha}
                if signed_base["version"] < 1:
                    raise EdgeAgentError("release.bad_args", "--base-version must be >= 1")
        name = f"{model}-{version}.{'bsdiff4' if kind == 'delta' else 'tflite'}"
        src = delta_path if kind == "delta" else target
        if progress:
            progress("write", 0.0)
        encryption = None
        if encrypt_to:
            name += ".age"
            payload_path = out_dir / name
            tmp = out_dir / f".{name}.tmp-{os.getpid()}"
            try:
                encrypt_file(src, tmp, list(encrypt_to))
                os.chmod(tmp, 0o644)
                os.replace(tmp, payload_path)
            finally:
                tmp.unlink(missing_ok=True)
            fsync_dir(out_dir)
            psha, psize = _sha256(payload_path, progress, "hash payload")
            encryption = {"format": "age", "size": src.stat().st_size,
                          "recipients": sorted({recipient_id(r) for r in encrypt_to})}
        else:
            payload_path = out_dir / name
            psha, psize = copy_durable(src, payload_path, mode=0o644)
    finally:
        if delta_path is not None and delta_path.exists():
            delta_path.unlink()
    now = datetime.now(timezone.utc).replace(microsecond=0)
    signed = {
        "_type": TYPE, "spec_version": SPEC_VERSION, "model": model, "version": version,
        "created": _ts(created or now), "expires": _ts(now + timedelta(days=expires_days)), "kind": kind,
        "target": {"sha256": tsha, "size": tsize},
        "payload": {"sha256": psha, "size": psize, "format": fmt, "name": name},
    }
    if encryption:
        signed["payload"]["encryption"] = encryption
    if signed_base:
        signed["base"] = signed_base
    if health:
        signed["health"] = health
    if io:
        signed["io"] = io
    if monitor is not None:
        signed["monitor"] = monitor
    if not_before is not None:
        signed["not_before"] = _ts(not_before.astimezone(timezone.utc))
    if requires_delegate:
        signed["requires"] = {"delegate": requires_delegate}
    if labels is not None:
        signed["labels"] = {"names": list(labels), "sha256": labels_mod.digest(labels)}
    try:
        parse_signed(signed)  # never publish what a device would refuse as malformed
    except EdgeAgentError as e:
        raise EdgeAgentError("release.bad_args", e.message) from None
    manifest_path = out_dir / f"{model}-{version}.manifest.json"
    atomic_write_json(manifest_path, sign_envelope(signed, signers))
    if progress:
        progress("write", 100.0)
    return {"manifest": str(manifest_path), "payload": str(payload_path), "kind": kind, "delta_method": method,
            "delta_why": why,
            "payload_size": psize, "target_size": tsize, "encrypted_to": len(encryption["recipients"]) if encryption else 0, "target_sha256": tsha, "version": version,
            "keyids": [s["keyid"] for s in __import__("json").loads(manifest_path.read_text())["signatures"]]}
