"""`edgeagent rollout start|status|pause|resume|abort`: phased rollouts over MQTT only.

`start` publishes the group's retained rollout document and drives it (RolloutController) until
it completes, halts or is paused; `resume` drives it again (after a pause, or a controller that
was killed); `pause` and `abort` only rewrite the document, so they work from any machine while
a controller runs elsewhere; `status` prints the tally the broker's retained messages give.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from edgeagent.cli.common import add_broker_options, add_json, connect, emit_json
from edgeagent.errors import CommandError
from edgeagent.fleet.controller import RolloutController, find
from edgeagent.fleet.rollout_doc import Criteria, RolloutDoc, RolloutError

_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rollout", help="phased rollout of an update to a group, with abort criteria (over MQTT)")
    rs = p.add_subparsers(dest="rollout_cmd", metavar="ACTION")
    rs.required = True

    s = rs.add_parser("start", help="publish a rollout for a group and drive it phase by phase")
    s.add_argument("manifest", help="signed manifest (.json)")
    s.add_argument("--group", required=True, help="the device group ([device] groups)")
    how = s.add_mutually_exclusive_group(required=True)
    how.add_argument("--payload-url", help="where devices fetch the payload (HTTP or HTTPS)")
    how.add_argument("--transfer", action="store_true",
                     help="send the payload as MQTT chunks to each device that asks (this controller must run)")
    s.add_argument("--payload", help="with --transfer: the payload file (default: beside the manifest)")
    s.add_argument("--chunk-size", type=int, default=64 * 1024)
    s.add_argument("--phases", default="5,25,100", help="percentages of the group, in order (default 5,25,100)")
    s.add_argument("--canary", default="", help="device ids that go first, alone: ID,ID,...")
    s.add_argument("--max-failure-pct", type=float, default=10.0,
                   help="halt when more than this share of the executed devices failed (default 10)")
    s.add_argument("--min-executed", type=int, default=1,
                   help="results needed before the failure share is judged or a phase advances (default 1)")
    s.add_argument("--soak", type=float, default=60.0, help="seconds a finished phase is watched before the next")
    s.add_argument("--device-timeout", type=float, default=900.0,
                   help="seconds a device of a phase has to report a final result (default 900)")
    s.add_argument("--rollback-on-halt", action="store_true", help="on a halt, roll back the devices it updated")
    s.add_argument("--max-drift-psi", type=float,
                   help="a committed device whose first window's class PSI against the manifest's signed reference "
                        "(release --reference) is above this has drifted and counts as failed")
    s.add_argument("--id", help="rollout id (default r-<time>-<random>)")
    s.add_argument("--detach", action="store_true", help="publish and exit; `rollout resume ID` drives it")
    _common(s)
    s.set_defaults(func=cmd_start)

    for name, helptext, fn in (("status", "the rollout's document and tally", cmd_status),
                               ("pause", "stop starting devices (the ones under way finish)", cmd_pause),
                               ("resume", "continue a paused rollout, or drive one whose controller stopped", cmd_resume),
                               ("abort", "end the rollout: no further device starts it", cmd_abort)):
        a = rs.add_parser(name, help=helptext)
        a.add_argument("id", help="rollout id")
        if name == "abort":
            a.add_argument("--rollback", action="store_true", help="also roll back the devices it updated")
        if name == "resume":
            a.add_argument("--payload", help="with a --transfer rollout: the payload file")
        _common(a)
        a.set_defaults(func=fn)


def _common(p: argparse.ArgumentParser) -> None:
    add_broker_options(p)
    p.add_argument("--topic-prefix", default="edgeagent/{device_id}", help="the devices' mqtt.topic_prefix")
    add_json(p)


def _say(args: argparse.Namespace) -> Any:
    def say(text: str) -> None:
        if not args.json:
            print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)
    return say


def _phases(spec: str) -> tuple:
    try:
        ps = tuple(float(x) for x in spec.split(",") if x.strip())
    except ValueError:
        ps = ()
    if not ps or any(not 0 < p <= 100 for p in ps) or list(ps) != sorted(ps) or ps[-1] != 100:
        raise CommandError("cmd.bad_args", f"--phases {spec!r}: rising percentages in (0, 100] ending at 100")
    return ps


def cmd_start(args: argparse.Namespace) -> int:
    mpath = Path(args.manifest)
    try:
        envelope = json.loads(mpath.read_text())
        version = envelope["signed"]["version"]
        if not isinstance(version, int):
            raise ValueError("signed.version is not an integer")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CommandError("cmd.bad_args", f"{mpath}: not a signed manifest ({e})") from None
    rid = args.id or f"r-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"
    if not _ID.match(rid):
        raise CommandError("cmd.bad_args", f"--id {rid!r}: 1-64 of A-Z a-z 0-9 . _ -")
    for name, v, lo in (("--max-failure-pct", args.max_failure_pct, 0), ("--min-executed", args.min_executed, 0),
                        ("--soak", args.soak, 0), ("--device-timeout", args.device_timeout, 1)):
        if not v >= lo or (name == "--max-failure-pct" and v > 100):
            raise CommandError("cmd.bad_args", f"{name} {v}: out of range")
    if args.max_drift_psi is not None:
        if not 0 < args.max_drift_psi <= 1e6:
            raise CommandError("cmd.bad_args", f"--max-drift-psi {args.max_drift_psi}: out of range")
        if "class" not in (envelope["signed"].get("monitor") or {}):
            raise CommandError("cmd.bad_args", "--max-drift-psi needs a manifest with a signed reference of a "
                                               "classifier's classes (edgeagent release --reference DATA)")
    canary = tuple(x.strip() for x in args.canary.split(",") if x.strip())
    chunks = None
    if args.transfer:
        from edgeagent.update.transfer import MIN_CHUNK, announce

        ppath = Path(args.payload) if args.payload else mpath.parent / str(envelope["signed"].get("payload", {}).get("name"))
        try:
            data = ppath.read_bytes()
        except OSError as e:
            raise CommandError("cmd.bad_args", f"payload {ppath}: {e.strerror}") from None
        ann, chunks = announce(data, f"ro-{rid}"[:64], max(MIN_CHUNK, args.chunk_size, -(-len(data) // 12_000)))
        payload = {"transfer": ann.to_args()}
    else:
        payload = {"payload_url": args.payload_url}
    now = round(time.time(), 3)
    doc = RolloutDoc(id=rid, group=args.group, state="running", version=version, manifest=envelope, payload=payload,
                     phases=_phases(args.phases), canary=canary,
                     criteria=Criteria(max_failure_pct=args.max_failure_pct, min_executed=args.min_executed,
                                       soak_s=args.soak, device_timeout_s=args.device_timeout,
                                       rollback_on_halt=args.rollback_on_halt, max_drift_psi=args.max_drift_psi),
                     started_at=now, phase_started_at=now)
    client = connect(args, args.broker, "edgeagent-rollout")
    try:
        ctl = RolloutController(client, args.group, prefix=args.topic_prefix, say=_say(args), chunks=chunks)
        ctl.load()
        if ctl.doc is not None and ctl.doc.state in ("running", "paused"):
            raise RolloutError("rollout.busy", f"rollout {ctl.doc.id} is {ctl.doc.state} in group {args.group}: "
                                               f"abort it first (edgeagent rollout abort {ctl.doc.id})")
        known = ctl.view.in_group(args.group)
        ctl.doc = doc
        ctl.step_to(0)
        ctl.say(f"rollout {rid}: v{version} to group {args.group} ({len(known)} devices known), steps "
                f"{', '.join(f'{p:g}%' for p in doc.plan)}{' after canaries ' + ','.join(canary) if canary else ''}")
        if args.detach:
            return _finish(args, ctl)
        ctl.run()
        return _finish(args, ctl)
    finally:
        client.close()


def _finish(args: argparse.Namespace, ctl: RolloutController) -> int:
    doc = ctl.doc
    assert doc is not None
    failed = RolloutError(f"rollout.{doc.state}", doc.reason or "") if doc.state in ("halted", "aborted") else None
    if args.json:  # one document on stdout, whatever the outcome
        emit_json({"ok": failed is None, **({"error": failed.to_dict()} if failed else {}), **ctl.summary()})
    else:
        print(f"rollout {doc.id}: {doc.state}" + (f" ({doc.reason})" if doc.reason else ""), flush=True)
    if failed is not None:
        print(f"edgeagent: {failed}", file=sys.stderr)
        return failed.exit_code
    return 0


def _open(args: argparse.Namespace) -> tuple[Any, RolloutController]:
    client = connect(args, args.broker, "edgeagent-rollout")
    try:
        doc = find(client, args.id)
        ctl = RolloutController(client, doc.group, prefix=args.topic_prefix, say=_say(args))
        ctl.load()
        if ctl.doc is None or ctl.doc.id != doc.id or ctl.doc.updated_at < doc.updated_at:
            if ctl.doc is not None and ctl.doc.id != doc.id:
                raise RolloutError("rollout.superseded", f"group {doc.group} now runs rollout {ctl.doc.id}")
            ctl.say(f"the broker lost rollout {doc.id}'s document; republished from the local copy")
            ctl.write(doc)
        return client, ctl
    except BaseException:
        client.close()
        raise


def cmd_status(args: argparse.Namespace) -> int:
    client, ctl = _open(args)
    try:
        assert ctl.doc is not None
        doc, t = ctl.doc, ctl.tally()
        if args.json:
            emit_json(ctl.summary())
            return 0
        print(f"rollout {doc.id}: {doc.state}, group {doc.group}, v{doc.version}, step {doc.phase + 1}/{len(doc.plan)} "
              f"({doc.plan[doc.phase]:g}%)" + (f", {doc.reason}" if doc.reason else ""))
        print(f"  {t.line()}; failure {t.failure_pct:.0f}% (max {doc.criteria.max_failure_pct:g}%)")
        for k, v in t.to_json()["devices"].items():
            if v:
                print(f"  {k}: {t.named(tuple(v))}")
        return 0
    finally:
        client.close()


def _rewrite(args: argparse.Namespace, state: str, allowed: tuple, **extra: Any) -> int:
    client, ctl = _open(args)
    try:
        doc = ctl.doc
        assert doc is not None
        if doc.state not in allowed:
            raise RolloutError("rollout.bad_state", f"rollout {doc.id} is {doc.state}")
        if state == "aborted":
            ctl.halt(f"aborted by {_who()}", state="aborted", rollback=args.rollback)
        else:
            ctl.write(dataclasses.replace(doc, state=state, **extra))
        return _finish(args, ctl) if state != "aborted" else _aborted(args, ctl)
    finally:
        client.close()


def _aborted(args: argparse.Namespace, ctl: RolloutController) -> int:
    assert ctl.doc is not None
    if args.json:
        emit_json(ctl.summary())
    else:
        print(f"rollout {ctl.doc.id}: aborted" + (f"; rollback sent to {', '.join(ctl.doc.rolled_back)}"
                                                   if ctl.doc.rolled_back else ""))
    return 0


def _who() -> str:
    import getpass
    import socket

    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:  # noqa: BLE001
        return "the operator"


def cmd_pause(args: argparse.Namespace) -> int:
    return _rewrite(args, "paused", ("running",))


def cmd_abort(args: argparse.Namespace) -> int:
    return _rewrite(args, "aborted", ("running", "paused", "halted"))


def cmd_resume(args: argparse.Namespace) -> int:
    client, ctl = _open(args)
    try:
        doc = ctl.doc
        assert doc is not None
        if doc.state not in ("running", "paused"):
            raise RolloutError("rollout.bad_state", f"rollout {doc.id} is {doc.state}: start a new one")
        if doc.payload.get("transfer"):
            from edgeagent.update.transfer import announce

            if not args.payload:
                raise CommandError("cmd.bad_args", "a --transfer rollout needs --payload FILE to serve its chunks")
            tr = doc.payload["transfer"]
            ann, ctl.chunks = announce(Path(args.payload).read_bytes(), tr["id"], tr["chunk_size"])
            if ann.to_args() != tr:
                raise CommandError("cmd.bad_args", f"{args.payload} is not the payload this rollout announced")
        if doc.state == "paused":
            ctl.write(dataclasses.replace(doc, state="running"))
        ctl.say(f"driving rollout {doc.id}: step {doc.phase + 1}/{len(doc.plan)}")
        ctl.run()
        return _finish(args, ctl)
    finally:
        client.close()
