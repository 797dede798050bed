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

from edgeagent.cli.common import add_json, emit_json
from edgeagent.errors import CommandError, EdgeAgentError, TransportError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("push", help="publish a signed update to a device over MQTT")
    p.add_argument("manifest", help="signed manifest (.json)")
    p.add_argument("--payload", help="payload file (default: the manifest's payload name beside it)")
    p.add_argument("--broker", default="localhost", help="HOST[:PORT] (default localhost:1883)")
    p.add_argument("--device", required=True, help="device id")
    p.add_argument("--topic-prefix", default="edgeagent/{device_id}")
    p.add_argument("--mode", choices=("transfer", "b64", "url"), default="transfer")
    p.add_argument("--url", help="with --mode url: where the device fetches the payload")
    p.add_argument("--chunk-size", type=int, default=64 * 1024)
    p.add_argument("--protocol", choices=("5", "3.1.1"), default="5")
    p.add_argument("--tls-ca"), p.add_argument("--tls-cert"), p.add_argument("--tls-key")
    p.add_argument("--username"), p.add_argument("--password-file")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the device's reply")
    p.add_argument("--wait", action="store_true", help="also wait for update.committed or update.rolled_back")
    add_json(p)
    p.set_defaults(func=cmd_push)


class Publisher:
    """A small paho client: publish, and hand every received message to a queue."""

    def __init__(self, host: str, port: int, protocol: str, args: argparse.Namespace) -> None:
        import paho.mqtt.client as mqtt

        self.mqtt = mqtt
        self.v5 = protocol == "5"
        self.inbox: queue.Queue = queue.Queue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edgeagent-push-{secrets.token_hex(4)}",
                             protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311)
        if args.tls_ca or args.tls_cert:
            self.c.tls_set(ca_certs=args.tls_ca, certfile=args.tls_cert, keyfile=args.tls_key)
        if args.username:
            pw = Path(args.password_file).read_text().strip() if args.password_file else None
            self.c.username_pw_set(args.username, pw)
        self.c.on_message = lambda c, u, msg: self.inbox.put(msg)
        self._connected = queue.Queue()
        self.c.on_connect = lambda c, u, f, rc, p=None: self._connected.put(rc)
        try:
            self.c.connect(host, port, keepalive=30)
        except OSError as e:
            raise TransportError("mqtt.connect_failed", f"{host}:{port}: {e}") from None
        self.c.loop_start()
        try:
            rc = self._connected.get(timeout=15)
        except queue.Empty:
            raise TransportError("mqtt.connect_failed", f"{host}:{port}: no CONNACK in 15 s") from None
        if getattr(rc, "is_failure", False):
            raise TransportError("mqtt.connect_failed", f"{host}:{port}: {rc}")

    def subscribe(self, topic: str) -> None:
        self.c.subscribe(topic, qos=1)

    def publish(self, topic: str, payload: bytes | str, *, props: Any = None, qos: int = 1) -> None:
        info = self.c.publish(topic, payload, qos=qos, properties=props)
        info.wait_for_publish(30)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def cmd_push(args: argparse.Namespace) -> int:
    mpath = Path(args.manifest)
    try:
        envelope = json.loads(mpath.read_text())
    except (OSError, ValueError) as e:
        raise CommandError("cmd.bad_args", f"{mpath}: {e}") from None
    signed = envelope.get("signed") or {}
    version = signed.get("version")
    prefix = args.topic_prefix.replace("{device_id}", args.device).rstrip("/")
    host, _, port = args.broker.partition(":")
    pub = Publisher(host, int(port or 1883), args.protocol, args)
    try:
        return _push(pub, args, envelope, mpath, prefix, version)
    finally:
        pub.close()


def _push(pub: Publisher, args: argparse.Namespace, envelope: dict, mpath: Path, prefix: str, version: Any) -> int:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    tty = sys.stderr.isatty() and not args.json

    def say(text: str) -> None:
        if not args.json:
            print(text, file=sys.stderr if tty else sys.stdout, flush=True)

    rid = f"push-{secrets.token_hex(6)}"
    reply_topic = f"{prefix}/cmd/reply/{rid}" if pub.v5 else f"{prefix}/cmd/reply"
    pub.subscribe(reply_topic)
    pub.subscribe(f"{prefix}/events")
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
            size = max(1024, args.chunk_size)
            chunks = [data[i:i + size] for i in range(0, len(data), size)] or [b""]
            tid = f"{(envelope.get('signed') or {}).get('model', 'm')}-{version}-{secrets.token_hex(3)}"
            cmd_args["transfer"] = {"id": tid, "chunks": len(chunks)}
    props = None
    if pub.v5:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = reply_topic
        props.CorrelationData = rid.encode()
    pub.publish(f"{prefix}/cmd", json.dumps({"id": rid, "op": "update", "args": cmd_args}), props=props)
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
    while time.monotonic() < deadline:
        try:
            msg = pub.inbox.get(timeout=0.5)
        except queue.Empty:
            continue
        try:
            body = json.loads(msg.payload)
        except ValueError:
            continue
        if msg.topic == reply_topic and body.get("id") == rid:
            reply = body
            if not body.get("ok"):
                break
            say(f"device: v{version} installed, on trial in slot {body['result'].get('slot')}")
            if not args.wait:
                break
            continue
        ev = body.get("event")
        if ev == "update.transfer" and chunks and body.get("id") == cmd_args["transfer"]["id"]:
            missing = [i for i in body.get("missing", []) if isinstance(i, int) and 0 <= i < len(chunks)]
            for i in missing:
                pub.publish(f"{prefix}/transfer/{body['id']}/{i}", chunks[i])
            resent += len(missing)
            say(f"device asked again for {len(missing)} chunk(s); re-sent")
        elif ev in ("update.verified", "update.applied", "update.trial"):
            say(f"device: {ev}")
        elif ev in ("update.committed", "update.rolled_back") and reply is not None:
            outcome = body
            say(f"device: {ev}" + (f" ({body.get('reason')})" if ev == "update.rolled_back" else ""))
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
