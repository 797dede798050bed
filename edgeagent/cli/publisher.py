"""The publisher's commands: `keygen`, `release`, `verify`."""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any

from edgeagent.cli.common import add_json, emit_json, human_size
from edgeagent.errors import EdgeAgentError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keygen", help="make an Ed25519 signing key pair, or (--device) a device's age identity")
    p.add_argument("--out", required=True, help="directory for edgeagent.key and edgeagent.pub; with --device, "
                                                "the identity file to write (e.g. /etc/edgeagent/identity.age)")
    p.add_argument("--device", action="store_true",
                   help="write the device's age identity (mode 0400) for encrypted payloads and print its "
                        "public key, the line for a publisher's --encrypt-to file")
    p.add_argument("--owner", help="with --device: the user that owns the identity (the service's, edgeagent)")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("release", help="build and sign an update bundle (delta when smaller)")
    p.add_argument("--key", action="append", required=True, help="private key (repeat to sign with several)")
    p.add_argument("--target", required=True, help="the new model (.tflite)")
    p.add_argument("--base", help="the model devices run now, for a delta")
    p.add_argument("--base-version", type=int, help="version of --base (default: version - 1)")
    p.add_argument("--model", required=True, help="model name (devices refuse other names)")
    p.add_argument("--version", type=int, required=True)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--full", action="store_true", help="always ship the full model")
    p.add_argument("--delta", choices=("auto", "inplace", "tensor", "bsdiff4"), default="auto",
                   help="how to build the delta: in place (same size, fast), tensor (buffers matched by tensor "
                        "name and shape: a re-export or an added layer, fast), bsdiff4 (finds moved blocks, slow "
                        "on big models), auto (in place when the layout is unchanged, else tensor when it matches "
                        "most of the target, else bsdiff4; all for small models, the smallest kept)")
    p.add_argument("--expires-days", type=int, default=365)
    p.add_argument("--probation-s", type=int, help="health override: probation seconds")
    p.add_argument("--min-inferences", type=int, help="health override: inferences before commit")
    p.add_argument("--max-latency-ms", type=int, help="health override: latency limit")
    p.add_argument("--min-agreement-pct", type=int,
                   help="probation: roll back when outputs agree with the previous model on fewer live frames")
    p.add_argument("--golden", metavar="FILE.npz",
                   help="golden set checked before the switch: 'inputs' with 'labels' or expected 'outputs'")
    p.add_argument("--min-pass-pct", type=int, default=90, help="golden examples that must pass (default 90)")
    p.add_argument("--tol-e6", type=int, help="golden 'outputs' tolerance in millionths (default 1000)")
    p.add_argument("--labels", metavar="FILE", help="the target's labels, one per line: signed into the manifest, "
                                                    "stored beside the model on the device")
    p.add_argument("--reference", metavar="DATA",
                   help="sign a quality reference: the target run on representative data (a directory of images, an "
                        ".npz with 'inputs', e.g. the golden set, or a CSV recording)")
    p.add_argument("--reference-window", type=int, default=300, help="frames per window the device judges (300)")
    p.add_argument("--warn-psi", type=float, default=0.1, help="PSI under which a drift alarm clears (0.1)")
    p.add_argument("--alarm-psi", type=float, default=0.25, help="PSI over which a window counts toward model.drift (0.25)")
    p.add_argument("--requires-delegate", metavar="NAME",
                   help="only devices whose [model.delegate] is NAME (e.g. edgetpu) take it; others refuse it before "
                        "downloading (update.accelerator_missing)")
    p.add_argument("--not-before", metavar="TIME",
                   help="devices download and check it at once but switch only after TIME (RFC 3339, e.g. "
                        "2026-12-24T02:00:00Z), and inside their update.switch_window")
    p.add_argument("--encrypt-to", metavar="RECIPIENTS",
                   help="encrypt the payload (age) to the public keys in this file, one age1... per line (devices' "
                        "keygen --device, or one fleet key); others refuse it before downloading")
    p.add_argument("--new-io", action="store_true",
                   help="announce the target's inputs and outputs (signed.io): needed when they differ from the "
                        "model it replaces, e.g. another number of classes")
    add_json(p)
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("verify", help="check a bundle offline and say what is wrong")
    p.add_argument("manifest")
    p.add_argument("--payload", help="payload file to check against the manifest")
    p.add_argument("--pubkey", action="append", required=True, help="trusted public key (repeatable)")
    p.add_argument("--threshold", type=int, default=1)
    p.add_argument("--model", help="expected model name (default: the manifest's)")
    p.add_argument("--base", help="for a delta: the base model, to check the patch result too")
    p.add_argument("--identity", help="an age identity that decrypts an encrypted payload (to check the target)")
    add_json(p)
    p.set_defaults(func=cmd_verify)


def cmd_keygen(args: argparse.Namespace) -> int:
    if args.device:
        from edgeagent.update.encryption import generate_identity

        try:
            recipient = generate_identity(args.out, owner=args.owner)
        except FileExistsError:
            raise EdgeAgentError("cmd.bad_args", f"{args.out}: exists; a device keeps its identity (remove it "
                                                 "first to replace it)") from None
        except (OSError, KeyError) as e:
            raise EdgeAgentError("cmd.bad_args", f"{args.out}: {getattr(e, 'strerror', None) or e}") from None
        print(f"wrote {args.out} (mode 0400, keep it on the device)", file=sys.stderr)
        print(recipient)
        return 0
    from edgeagent.update.keys import generate_keypair

    kid = generate_keypair(args.out)
    print(f"wrote {Path(args.out) / 'edgeagent.key'} (keep it secret) and {Path(args.out) / 'edgeagent.pub'}")
    print(f"key id {kid}")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    from edgeagent.update.release import make_release

    from edgeagent.update.release import golden_health

    health = {k: v for k, v in (("probation_s", args.probation_s), ("min_inferences", args.min_inferences),
                                ("max_latency_ms", args.max_latency_ms),
                                ("min_agreement_pct", args.min_agreement_pct)) if v is not None}
    if args.golden:
        health["golden"] = golden_health(args.golden, args.min_pass_pct, args.tol_e6)
    names, io = _labels_and_io(args)
    monitor = _reference(args) if args.reference else None
    progress = None
    if sys.stderr.isatty() and not args.json:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("release", total=100)
        progress = lambda phase, pct: bar.update(task, description=phase, completed=pct)  # noqa: E731
    try:
        r = make_release(keys=args.key, target=Path(args.target), base=Path(args.base) if args.base else None,
                         model=args.model, version=args.version, out_dir=Path(args.out), force_full=args.full,
                         expires_days=args.expires_days, health=health or None, base_version=args.base_version,
                         progress=progress, delta_method=args.delta, labels=names, io=io, monitor=monitor,
                         requires_delegate=args.requires_delegate, encrypt_to=_recipients(args),
                         not_before=_not_before(args.not_before))
    finally:
        if progress:
            bar.stop()
    if args.json:
        emit_json(r)
        return 0
    ratio = 100.0 * r["payload_size"] / r["target_size"]
    how = f" ({r['delta_method']}{': ' + r['delta_why'] if r.get('delta_why') else ''})" if r["delta_method"] else ""
    print(f"{r['kind']}{how} payload {r['payload']} ({human_size(r['payload_size'])}, {ratio:.1f}% of the "
          f"{human_size(r['target_size'])} model)")
    print(f"manifest {r['manifest']} signed by {len(r['keyids'])} key(s)"
          + (f", payload encrypted to {r['encrypted_to']} recipient(s)" if r["encrypted_to"] else ""))
    return 0


def _not_before(text: str | None) -> Any:
    if not text:
        return None
    from datetime import datetime, timezone

    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise EdgeAgentError("release.bad_args", f"--not-before {text!r}: expected RFC 3339, e.g. "
                                                 "2026-12-24T02:00:00Z") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _recipients(args: argparse.Namespace) -> list[str] | None:
    if not args.encrypt_to:
        return None
    from edgeagent.update.encryption import load_recipients

    try:
        return load_recipients(args.encrypt_to)
    except (OSError, UnicodeDecodeError) as e:
        raise EdgeAgentError("release.bad_args", f"--encrypt-to {args.encrypt_to}: {getattr(e, 'strerror', e)}") from None
    except ValueError as e:
        raise EdgeAgentError("release.bad_args", f"--encrypt-to {e}") from None


def _labels_and_io(args: argparse.Namespace) -> tuple[tuple[str, ...] | None, dict | None]:
    """--labels (checked against the target's output 0 when it is a classifier's) and --new-io
    (the target's signature as signed.io); the target is loaded in the interpreter only for these."""
    from edgeagent.state import labels

    if not args.labels and not args.new_io:
        return None, None
    from edgeagent.engine.model import Model
    from edgeagent.errors import ModelError

    names = None
    if args.labels:
        try:
            names = labels.read(args.labels)
        except labels.LabelsError as e:
            raise EdgeAgentError("release.bad_args", f"--labels {e}") from None
    try:
        model = Model.load(args.target, num_threads=1)
    except ModelError as e:
        raise EdgeAgentError("release.bad_args", f"--target {args.target}: {e.message}") from None
    try:
        sig = model.io_signature()
    finally:
        model.close()
    why = labels.mismatch(names, sig["outputs"][0]["shape"]) if names is not None else None
    if why:
        raise EdgeAgentError("release.bad_args", f"--labels {args.labels}: {why} of {args.target}")
    io = {side: [{"name": t["name"], "shape": t["shape"], "dtype": t["dtype"]} for t in sig[side]]
          for side in ("inputs", "outputs")} if args.new_io else None
    return names, io


def _reference(args: argparse.Namespace) -> dict:
    """signed.monitor: the target's histograms on the reference data (runtime/quality.py)."""
    from edgeagent.engine.model import Model
    from edgeagent.errors import ModelError
    from edgeagent.inputs.dataset import frames
    from edgeagent.runtime.quality import reference_from

    if not 0 < args.warn_psi <= args.alarm_psi:
        raise EdgeAgentError("release.bad_args", "--warn-psi must be > 0 and at most --alarm-psi")
    try:
        model = Model.load(args.target, num_threads=1)
    except ModelError as e:
        raise EdgeAgentError("release.bad_args", f"--target {args.target}: {e.message}") from None
    try:
        ref = reference_from(model, frames(args.reference, model.inputs[0]), window=args.reference_window,
                             warn_e6=round(args.warn_psi * 1e6), alarm_e6=round(args.alarm_psi * 1e6))
    except (ValueError, EdgeAgentError) as e:
        raise EdgeAgentError("release.bad_args", f"--reference {args.reference}: {getattr(e, 'message', e)}") from None
    finally:
        model.close()
    return ref.to_json()


def cmd_verify(args: argparse.Namespace) -> int:
    from edgeagent.update.errors import UpdateRejected
    from edgeagent.update.keys import load_trusted_keys
    from edgeagent.update.manifest import load_untrusted, verify_envelope

    mpath = Path(args.manifest)
    try:
        raw = mpath.read_bytes()
    except OSError as e:
        raise EdgeAgentError("cmd.bad_args", f"{mpath}: {e.strerror}") from None
    doc = load_untrusted(raw)  # refuses depth, number range and size with the verifier's codes
    try:
        name = args.model or doc["signed"]["model"]
    except (KeyError, TypeError):
        name = args.model or ""
    m = verify_envelope(raw, trusted=load_trusted_keys(args.pubkey), threshold=args.threshold,
                        model_name=name, highest_version=None)
    checks = ["signatures", "schema", "expiry"]
    if args.payload:
        from edgeagent.state.atomic import sha256_file
        from edgeagent.update.patch import stream_patch

        try:
            psize, psha = Path(args.payload).stat().st_size, sha256_file(args.payload)
        except OSError as e:
            raise EdgeAgentError("cmd.bad_args", f"{args.payload}: {e.strerror}") from None
        if psize != m.payload.size:
            raise UpdateRejected("update.payload_size", f"{args.payload}: {psize} bytes, manifest says {m.payload.size}")
        if psha != m.payload.sha256:
            raise UpdateRejected("update.payload_hash", f"{args.payload}: sha256 differs from the manifest")
        checks.append("payload")
        if args.base and m.kind == "delta":
            try:
                bsha = sha256_file(args.base)
            except OSError as e:
                raise EdgeAgentError("cmd.bad_args", f"{args.base}: {e.strerror}") from None
            if bsha != m.base.sha256:
                raise UpdateRejected("update.wrong_base", f"{args.base}: not the delta's base")
            identity = None
            if m.payload.encryption is not None:
                if not args.identity:
                    raise EdgeAgentError("cmd.bad_args", "the payload is encrypted: give --identity to check the "
                                                         "patch result, or leave out --base")
                from edgeagent.update.encryption import Identity

                identity = Identity.load(args.identity)
            h = hashlib.sha256()

            class _Sink:  # the result is hashed, not kept: memory stays flat for any model size
                def write(self, b: bytes) -> int:
                    return len(b)

            try:
                if identity is None:
                    size = stream_patch(Path(args.base), Path(args.payload), _Sink(), h)
                else:
                    from edgeagent.update.encryption import open_plain

                    size = stream_patch(Path(args.base), Path(args.payload), _Sink(), h,
                                        open_at=open_plain(Path(args.payload), identity),
                                        size=m.payload.encryption.size)
            except UpdateRejected:
                raise
            except (ValueError, OSError, EOFError) as e:
                raise UpdateRejected("update.bad_patch", f"the bsdiff4 patch does not apply: {e}") from None
            if h.hexdigest() != m.target.sha256 or size != m.target.size:
                raise UpdateRejected("update.target_hash", "the patch result differs from the manifest's target")
            checks.append("target")
    result = {"ok": True, "model": m.model, "version": m.version, "kind": m.kind, "expires": m.expires, "checked": checks}
    if args.json:
        emit_json(result)
    else:
        print(f"OK {m.model} v{m.version} ({m.kind}), expires {m.expires}; checked {', '.join(checks)}")
    return 0
