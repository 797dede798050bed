"""The publisher-side MQTT client shared by the CLI's network commands (push, top, fleet, rollout).

One small object: connect (one-line TransportError when the broker is down), keep its
subscriptions across reconnects, hand every message to a queue (no work on paho's thread), and
publish with a wait that survives a short broker outage: a publish that fails because the
connection dropped waits for paho's automatic reconnect and is sent again, and only then
becomes `mqtt.disconnected`.
"""

from __future__ import annotations

import queue
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from edgeagent.errors import TransportError

RECONNECT_WAIT_S = 30.0


def split_broker(spec: str) -> tuple[str, int]:
    host, _, port = spec.rpartition(":") if spec.count(":") == 1 else (spec, "", "")
    try:
        return (host or "localhost"), int(port or 1883)
    except ValueError:
        raise TransportError("mqtt.connect_failed", f"--broker {spec!r}: expected HOST[:PORT]") from None


class MqttClient:
    def __init__(self, host: str, port: int, *, protocol: str = "5", client_prefix: str = "edgeagent-cli",
                 tls_ca: str | None = None, tls_cert: str | None = None, tls_key: str | None = None,
                 username: str | None = None, password_file: str | None = None, connect_timeout: float = 15.0) -> None:
        import paho.mqtt.client as mqtt

        self.mqtt = mqtt
        self.host, self.port = host, port
        self.v5 = protocol == "5"
        self.inbox: queue.Queue = queue.Queue()
        self._subs: list[tuple[str, int]] = []
        self._up = threading.Event()
        self._first: queue.Queue = queue.Queue()
        self.client_id = f"{client_prefix}-{secrets.token_hex(4)}"
        self.settled_by_marker = False  # how the last settle() ended (the marker, or quiet)
        self.connects = 0  # successful connections so far: a caller sees that a reconnect happened
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311)
        try:
            if tls_ca or tls_cert:
                self.c.tls_set(ca_certs=tls_ca, certfile=tls_cert, keyfile=tls_key)
            if username:
                pw = Path(password_file).read_text().strip() if password_file else None
                self.c.username_pw_set(username, pw)
        except (OSError, ValueError) as e:
            raise TransportError("mqtt.connect_failed", f"TLS or credentials: {e}") from None
        self.c.reconnect_delay_set(0.5, 4)
        self.c.on_message = lambda c, u, msg: self.inbox.put(msg)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda c, u, f, rc, p=None: self._up.clear()
        try:
            self.c.connect(host, port, keepalive=30)
        except (OSError, ValueError) as e:
            raise TransportError("mqtt.connect_failed", f"{host}:{port}: {getattr(e, 'strerror', None) or e}") from None
        self.c.loop_start()
        try:
            rc = self._first.get(timeout=connect_timeout)
        except queue.Empty:
            self.close()
            raise TransportError("mqtt.connect_failed", f"{host}:{port}: no CONNACK in {connect_timeout:.0f} s") from None
        if getattr(rc, "is_failure", False):
            self.close()
            raise TransportError("mqtt.connect_failed", f"{host}:{port}: {rc}")

    def _on_connect(self, c: Any, u: Any, f: Any, rc: Any, p: Any = None) -> None:
        if not getattr(rc, "is_failure", False):
            if self._subs:
                c.subscribe(list(self._subs))  # a clean session forgot them
            self.connects += 1
            self._up.set()
        self._first.put(rc)

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self._subs.append((topic, qos))
        self.c.subscribe(topic, qos=qos)

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False,
                expiry_s: float | None = None, response_topic: str | None = None,
                correlation: bytes | None = None, timeout: float = 30.0) -> None:
        """Publish and wait until the broker has it; across one reconnect at most.

        MQTT 5 properties (ignored on 3.1.1): expiry_s is Message Expiry, so a command waiting in
        a bridge's or a session's queue is dropped by the broker once it is older than this
        instead of being run on reconnect; response_topic and correlation route the reply."""
        props = None
        if self.v5 and (expiry_s is not None or response_topic or correlation is not None):
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.PUBLISH)
            if expiry_s is not None:
                props.MessageExpiryInterval = max(1, int(expiry_s))
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation is not None:
                props.CorrelationData = correlation
        for attempt in (1, 2):
            try:
                info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=props)
                info.wait_for_publish(timeout)
                if info.is_published() or qos == 0:
                    return
            except (RuntimeError, ValueError):
                pass
            if attempt == 1:
                time.sleep(0.5)  # let paho notice the drop before asking whether it is back
                if self._up.wait(RECONNECT_WAIT_S):
                    continue
        raise TransportError("mqtt.disconnected", f"{self.host}:{self.port}: the broker went away and did not come "
                                                  f"back within {RECONNECT_WAIT_S:.0f} s")

    def subscribe_many(self, topics: list[tuple[str, int]]) -> None:
        for t, q in topics:
            self.subscribe(t, q)

    def drain(self, timeout: float) -> list:
        """Every message that arrives within `timeout` (the first wait is the whole timeout)."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                out.append(self.inbox.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                return out

    def settle(self, quiet: float = 0.5, limit: float = 10.0) -> list:
        """The retained messages of the subscriptions made so far, and what came with them.

        A broker sends a subscription's retained messages as it takes the SUBSCRIBE, ahead of
        anything it takes from this client afterwards; so a marker published after the
        subscriptions, to a topic of our own, comes back after the last of them, however busy
        the topics are (400 devices' telemetry is never 0.5 s quiet) and however many there are.
        Where the marker cannot come back (an ACL forbids the topic), the read ends after `quiet`
        seconds without a message, as before; `limit` bounds it either way."""
        marker = f"edgeagent-cli/{self.client_id}/settled/{secrets.token_hex(4)}"
        got_marker = False
        try:
            self.c.subscribe(marker, qos=1)
            self.c.publish(marker, b"1", qos=1)
        except (RuntimeError, ValueError):
            pass
        out: list = []
        start = time.monotonic()
        deadline = start + limit
        last = start
        while True:
            now = time.monotonic()
            wait = deadline - now
            if now - start > 1.0:  # no marker by now: perhaps none will come; fall back on quiet
                wait = min(wait, quiet - (now - last))
            if wait <= 0:
                break
            try:
                msg = self.inbox.get(timeout=wait)
            except queue.Empty:
                break
            if msg.topic == marker:
                got_marker = True
                break
            out.append(msg)
            last = time.monotonic()
        try:
            self.c.unsubscribe(marker)
        except (RuntimeError, ValueError):
            pass
        self.settled_by_marker = got_marker
        return out

    def close(self) -> None:
        try:
            self.c.disconnect()
        finally:
            self.c.loop_stop()
