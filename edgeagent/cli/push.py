"""`edgeagent push`: the publisher's side of an update over MQTT, for devices that reach only the
broker. Sends the signed manifest with the payload as chunks on P/transfer/{id}/{index} (or
inline base64, or a URL for the device to fetch), re-sends the chunks the device asks for in its
`update.transfer` events, and waits for the reply (and with --wait for the commit or rollback).
Everything it does can be done with mosquitto_pub; this just does the bookkeeping.
"""

from __future__ import annotations

import argparse
import base64
import json
import queue
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from edgeagent.cli.common import add_broker_options, add_json, connect, emit_json
from edgeagent.errors import CommandError, EdgeAgentError, TransportError
from edgeagent.transport.client import MqttClient
from edgeagent.update.transfer import MIN_CHUNK, announce


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("push", help="publish a signed update to a device over MQTT")
    p.add_argument("manifest", help="signed manifest (.json)")
    p.add_argument("--payload", help="payload file (default: the manifest's payload name beside it)")
    add_broker_options(p)
    p.add_argument("--device", required=True, help="device id")
    p.add_argument("--topic-prefix", default="edgeagent/{device_id}")
    p.add_argument("--mode", choices=("transfer", "b64", "url"), default="transfer")
    p.add_argument("--url", help="with --mode url: where the device fetches the payload")
    p.add_argument("--chunk-size", type=int, default=64 * 1024)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the device's reply")
    p.add_argument("--wait", action="store_true", help="also wait for update.committed or update.rolled_back")
    add_json(p)
    p.set_defaults(func=cmd_push)


class _Probation:
    """A line every few seconds while the new model is on probation: how far along, and what the
    device's telemetry says of it (fps, p50, errors)."""

    EVERY_S = 3.0

    def __init__(self, version: int, say) -> None:
        self.version, self.say = version, say
        self.started: float | None = None
        self.length: float | None = None
        self.last_said = 0.0
        self.figures: dict = {}

    def begin(self, trial_event: dict) -> None:
        if self.started is None:
            self.started, self.last_said = time.monotonic(), time.monotonic()
            self.length = trial_event.get("probation_s")

    def tick(self, telemetry: dict | None) -> None:
        if telemetry is not None and (telemetry.get("model") or {}).get("version") == self.version:
            self.figures = telemetry.get("inference") or {}
            if self.started is None and (telemetry.get("model") or {}).get("trial"):
                self.started = self.last_said = time.monotonic()
        now = time.monotonic()
        if self.started is None or now - self.last_said < self.EVERY_S:
            return
        self.last_said = now
        f = self.figures
        p50 = (f.get("latency_ms") or {}).get("p50")
        of = f" of {self.length:.0f}" if isinstance(self.length, (int, float)) else ""
        figures = (f", {f.get('fps')} fps, p50 {p50} ms, {f.get('errors', 0)} errors" if f else "")
        self.say(f"probation: {now - self.started:.0f}{of} s{figures}")


def cmd_push(args: argparse.Namespace) -> int:
    mpath = Path(args.manifest)
    try:
        envelope = json.loads(mpath.read_text())
    except (OSError, ValueError) as e:
        raise CommandError("cmd.bad_args", f"{mpath}: {e}") from None
    signed = envelope.get("signed") or {}
    version = signed.get("version")
    prefix = args.topic_prefix.replace("{device_id}", args.device).rstrip("/")
    pub = connect(args, args.broker, "edgeagent-push")
    try:
        return _push(pub, args, envelope, mpath, prefix, version)
    finally:
        pub.close()


DEVICE_WAIT_S = 3.0  # retained messages arrive at once; this is for a slow bridge


def _device_status(pub: MqttClient, template: str, device: str) -> dict:
    """The device's retained P/status, or push.device_unknown (with the devices that do exist)
    within a few seconds, instead of waiting the whole --timeout for a device that is not there."""
    parts = template.rstrip("/").split("/")
    at = parts.index("{device_id}") if "{device_id}" in parts else None
    mine = "/".join(p.replace("{device_id}", device) for p in parts) + "/status"
    pub.subscribe("/".join("+" if p == "{device_id}" else p for p in parts) + "/status")
    seen: set[str] = set()
    deadline = time.monotonic() + DEVICE_WAIT_S
    while time.monotonic() < deadline:
        try:
            msg = pub.inbox.get(timeout=0.1)
        except queue.Empty:
            continue
        if msg.topic == mine:
            try:
                body = json.loads(msg.payload)
            except (ValueError, RecursionError):
                body = None
            return body if isinstance(body, dict) else {}
        if at is not None and msg.payload:
            seen.add(msg.topic.split("/")[at])
    raise TransportError("push.device_unknown", f"no retained status for {mine.rsplit('/', 1)[0]}; devices seen: "
                                                f"{', '.join(sorted(seen)) or 'none'}")


def _push(pub: MqttClient, args: argparse.Namespace, envelope: dict, mpath: Path, prefix: str, version: Any) -> int:
    tty = sys.stderr.isatty() and not args.json

    def say(text: str) -> None:
        if not args.json:
            print(text, file=sys.stderr if tty else sys.stdout, flush=True)

    status = _device_status(pub, args.topic_prefix, args.device)
    if status.get("state") != "online":
        say(f"device {args.device} is {status.get('state', 'unknown')} ({status.get('reason', '')}): the update "
            f"waits for it, up to --timeout {args.timeout:.0f} s")
    rid = f"push-{secrets.token_hex(6)}"
    reply_topic = f"{prefix}/cmd/reply/{rid}" if pub.v5 else f"{prefix}/cmd/reply"
    pub.subscribe(reply_topic)
    pub.subscribe(f"{prefix}/events")
    if args.wait:
        pub.subscribe(f"{prefix}/telemetry")  # figures for the progress lines during probation
    time.sleep(0.2)  # let the subscriptions land before the device can answer

    cmd_args: dict[str, Any] = {"manifest": envelope}
    chunks: list[bytes] = []
    if args.mode == "url":
        if not args.url:
            raise CommandError("cmd.bad_args", "--mode url needs --url")
        cmd_args["payload_url"] = args.url
    else:
        ppath = Path(args.payload) if args.payload else mpath.parent / str((envelope.get("signed") or {}).get("payload", {}).get("name"))
        data = ppath.read_bytes()
        if args.mode == "b64":
            cmd_args["payload_b64"] = base64.b64encode(data).decode()
        else:
            # at most ~12,000 chunks, so the announcement (a sha256 per chunk) stays well under
            # the device's mqtt.max_message_bytes
            size = max(MIN_CHUNK, args.chunk_size, -(-len(data) // 12_000))
            tid = f"{(envelope.get('signed') or {}).get('model', 'm')}-{version}-{secrets.token_hex(3)}"
            ann, chunks = announce(data, tid, size)
            cmd_args["transfer"] = ann.to_args()
    # a command still queued (a bridge, a session) after the push gave up must not run later
    pub.publish(f"{prefix}/cmd", json.dumps({"id": rid, "op": "update", "args": cmd_args}),
                response_topic=reply_topic if pub.v5 else None, correlation=rid.encode() if pub.v5 else None,
                expiry_s=args.timeout)
    say(f"sent update v{version} to {prefix}/cmd ({args.mode}{f', {len(chunks)} chunks' if chunks else ''})")
    if chunks:
        tid = cmd_args["transfer"]["id"]
        for i, c in enumerate(chunks):
            pub.publish(f"{prefix}/transfer/{tid}/{i}", c)
        say(f"published {len(chunks)} chunks to {prefix}/transfer/{tid}/")

    deadline = time.monotonic() + args.timeout
    reply: dict | None = None
    outcome: dict | None = None
    resent = 0
    said: set[str] = set()  # each step once, whether the reply or the event comes first
    probation = _Probation(version, say)
    connects, status_id = pub.connects, None

    def once(key: str, line: str) -> None:
        if key not in said:
            said.add(key)
            say(line)

    def on_event(body: dict, via: str = "events") -> bool:
        """One event of the device's; True when the wait is over."""
        nonlocal reply, outcome, resent
        ev = body.get("event")
        ours = body.get("version") == version
        if reply is None and ours and ev == "update.rejected":
            # the device said no on its events (its reply may have gone to a connection we lost)
            reply = {"id": rid, "ok": False, "error": {"code": body.get("code"), "message": body.get("reason", "")},
                     "via": via}
            return True
        if reply is None and ours and ev == "update.trial":
            reply = {"id": rid, "ok": True, "result": {"version": version, "slot": body.get("slot"), "state": "trial"},
                     "via": via}
            once("trial", f"device: v{version} installed, on trial in slot {body.get('slot')} (seen on its {via})")
            probation.begin(body)
            return not args.wait
        if ev == "update.transfer" and chunks and body.get("id") == cmd_args["transfer"]["id"]:
            missing = [i for i in body.get("missing", []) if isinstance(i, int) and 0 <= i < len(chunks)]
            for i in missing:
                pub.publish(f"{prefix}/transfer/{body['id']}/{i}", chunks[i])
            resent += len(missing)
            say(f"device asked again for {len(missing)} chunk(s); re-sent")
        elif ev in ("update.verified", "update.applied") and ours:
            once(ev, f"device: {ev}")
        elif ev == "update.trial" and ours:
            once("trial", f"device: v{version} installed, on trial in slot {body.get('slot')}")
            probation.begin(body)
        elif ev in ("update.committed", "update.rolled_back") and reply is not None and ours:
            outcome = body
            say(f"device: {ev}" + (f" ({body.get('reason')})" if ev == "update.rolled_back" else ""))
            return True
        return False

    def on_status(st: dict) -> bool:
        """What happened while the broker was away: the device's recent events from our update's
        start on (its events then went nowhere), or, when they have scrolled off, its model."""
        events = [e for e in st.get("events") or [] if isinstance(e, dict)]
        starts = [i for i, e in enumerate(events) if e.get("event") == "update.received" and e.get("version") == version]
        if starts:
            return any(on_event(e, via="status") for e in events[starts[-1]:])
        model, trial = st.get("model") or {}, st.get("trial")
        if reply is not None and model.get("version") == version and not trial and not st.get("update"):
            return on_event({"event": "update.committed", "version": version, "via": "status"}, via="status")
        return False

    while time.monotonic() < deadline:
        if pub.connects != connects and pub.connected:
            # we were cut off: events the device sent meanwhile are lost, so ask it where it is
            connects, status_id = pub.connects, f"{rid}-status-{pub.connects}"
            say("reconnected to the broker: asking the device where the update stands")
            pub.publish(f"{prefix}/cmd", json.dumps({"id": status_id, "op": "status"}),
                        response_topic=reply_topic if pub.v5 else None,
                        correlation=status_id.encode() if pub.v5 else None, expiry_s=30)
        try:
            msg = pub.inbox.get(timeout=0.5)
        except queue.Empty:
            probation.tick(None)
            continue
        try:
            body = json.loads(msg.payload)
        except (ValueError, RecursionError):
            continue
        if msg.topic.endswith("/telemetry"):
            probation.tick(body if isinstance(body, dict) else None)
            continue
        probation.tick(None)
        if msg.topic == reply_topic and isinstance(body, dict) and body.get("id") == rid:
            reply = body
            if not body.get("ok"):
                break
            once("trial", f"device: v{version} installed, on trial in slot {body['result'].get('slot')}")
            if not args.wait:
                break
            continue
        if msg.topic == reply_topic and isinstance(body, dict) and status_id and body.get("id") == status_id:
            if body.get("ok") and isinstance(body.get("result"), dict) and on_status(body["result"]):
                break
            continue
        if msg.topic == f"{prefix}/events" and isinstance(body, dict) and body.get("event") is not None \
                and on_event(body):
            break
    result = {"reply": reply, "outcome": outcome, "resent_chunks": resent}
    if args.json:
        emit_json(result)
    if reply is None:
        raise TransportError("push.timeout", f"no reply from {args.device} in {args.timeout:.0f} s")
    if not reply.get("ok"):
        err = reply.get("error") or {}
        raise EdgeAgentError(err.get("code", "update.rejected"), err.get("message", ""))
    if args.wait and outcome is None:
        raise TransportError("push.timeout", "no commit or rollback before the timeout")
    if outcome is not None and outcome.get("event") == "update.rolled_back":
        return 1
    return 0
