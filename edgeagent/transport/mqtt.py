"""The MQTT transport: one object owns the paho client, its network thread and its reconnects.

Like aiomqtt, the application never touches the connection: it publishes through methods that
never block (the inference loop must not wait on the network), and it gets commands through a
callback that only enqueues (the dispatcher runs them on its own thread, never on this one).
While the broker is away, events and replies wait in a bounded outbox (oldest dropped first,
and counted) and only the newest telemetry is kept; on reconnect the birth message goes first,
then the outbox in order.

Reconnects use capped exponential backoff with full jitter, so a fleet that lost its broker
does not come back in lock-step. Every failed attempt is one clear log line.
"""

from __future__ import annotations

import collections
import json
import logging
import random
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Callable

from edgeagent.transport.paho_lean import mqtt
from edgeagent.config import MqttConfig
from edgeagent.errors import ConfigError
from edgeagent.transport import replies
from edgeagent.transport.replies import takeover_hint
from edgeagent.transport.topics import Chunk, RolloutDoc, route

log = logging.getLogger("edgeagent.mqtt")

# QoS 0 messages (outputs, telemetry) are dropped, and counted, once this many bytes wait for the
# socket: a broker that stops reading must not grow the daemon's memory without bound.
MAX_BACKLOG_BYTES = 4 << 20

OnCommand = Callable[[bytes, Callable[[dict], None]], None]
OnChunk = Callable[[str, int, bytes], None]
OnRollout = Callable[[str, bytes], None]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode()


class MqttTransport:
    def __init__(self, cfg: MqttConfig, *, device_id: str, topic_prefix: str, groups: list[str], agent_version: str,
                 on_command: OnCommand, on_chunk: OnChunk | None = None, on_rollout: OnRollout | None = None,
                 on_connection: Callable[[bool, str], None] | None = None) -> None:
        self.cfg = cfg
        self.prefix = topic_prefix
        self.groups = list(groups)
        self.agent_version = agent_version
        self._on_command = on_command
        self._on_chunk = on_chunk
        self._on_rollout = on_rollout
        self._watches: dict[str, Callable[[bytes], None]] = {}  # exact topics outside the device's own
        self.device_id = device_id
        self._on_connection = on_connection
        self.v5 = cfg.protocol == "5"
        self._lock = threading.Lock()
        self._connected = False
        self._outbox: collections.deque = collections.deque()
        self._telemetry: bytes | None = None
        self._dropped = 0
        self._dropped_total = 0
        self.reconnects = 0
        self.thread_restarts = 0  # the network thread survived an exception (or was restarted)
        self.refused = 0  # messages refused: too large, bad topic, bad reply topic
        self.backlog_dropped = 0  # QoS 0 messages dropped while the socket's backlog was full
        self.last_error: str | None = None
        self._birth_model: dict = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_first = True
        self.client_id = cfg.client_id or f"edgeagent-{device_id}"
        self._connected_at = 0.0
        self._quick_drops: collections.deque = collections.deque(maxlen=3)  # drops soon after connecting
        self._client = self._make_client(device_id)

    # -- setup --------------------------------------------------------------------------------
    def _make_client(self, device_id: str) -> mqtt.Client:
        cfg = self.cfg
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                        protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311)
        # who it is stays in the retained status while it is offline: a fleet view and a rollout
        # controller still count a device that is down as one of its groups'
        c.will_set(f"{self.prefix}/status", _dumps({"state": "offline", "reason": "lost", "device": device_id,
                                                    "groups": self.groups}), qos=1, retain=True)
        if cfg.tls.ca or cfg.tls.cert:
            try:
                c.tls_set(ca_certs=cfg.tls.ca or None, certfile=cfg.tls.cert or None, keyfile=cfg.tls.key or None,
                          cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError, ValueError) as e:
                raise ConfigError("config.invalid", f"mqtt.tls: {e}") from None
        if cfg.username:
            password = None
            if cfg.password_file:
                try:
                    password = Path(cfg.password_file).read_text().rstrip("\r\n")
                except OSError as e:
                    raise ConfigError("config.invalid", f"mqtt.password_file {cfg.password_file}: {e.strerror}") from None
            c.username_pw_set(cfg.username, password)
        c.on_connect = self._handle_connect
        c.on_disconnect = self._handle_disconnect
        c.on_message = self._handle_message
        c.max_queued_messages_set(0)
        # Every socket write on the network thread: without this callback paho writes the socket
        # on whichever thread publishes (we drive loop() ourselves), so a broker that stops
        # reading could stall the publisher. With it, publish only queues and wakes loop().
        c.on_socket_register_write = lambda client, userdata, sock: None
        return c

    def watch(self, topic: str, callback: Callable[[bytes], None]) -> None:
        """Also subscribe to `topic` (exact, set before start) and hand its messages to `callback`,
        which must only enqueue: Home Assistant's birth message, for one."""
        self._watches[topic] = callback

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._thread.start()

    def stop(self, reason: str = "shutdown", timeout: float = 5.0) -> None:
        with self._lock:
            connected = self._connected
        if connected:  # sent by the network thread, which runs until _stop is set below
            try:
                info = self._client.publish(f"{self.prefix}/status", _dumps({"state": "offline", "reason": reason,
                                                                             "device": self.device_id, "groups": self.groups,
                                                                             "ts": round(time.time(), 3)}), qos=1, retain=True)
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as e:
                log.warning("mqtt: could not publish the offline status: %s", e)
        self._stop.set()
        if connected:
            self._client.disconnect()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def connected(self) -> bool:
        return self._connected

    def ensure_running(self) -> bool:
        """Restart the network thread if it has died (it should not: _run catches everything).
        Called from the agent's periodic work; True when it had to restart it."""
        t = self._thread
        if t is None or t.is_alive() or self._stop.is_set():
            return False
        self.thread_restarts += 1
        log.error("mqtt: the network thread had ended; restarted (%d restart(s))", self.thread_restarts)
        self.start()
        return True

    def _run(self) -> None:
        """The supervised network thread: no exception from paho or a handler ends it."""
        while not self._stop.is_set():
            try:
                self._session_loop()
                return
            except Exception:  # noqa: BLE001 - supervised: log, count, reconnect
                self.thread_restarts += 1
                self.last_error = "network thread error"
                log.exception("mqtt: error on the network thread; reconnecting (%d so far)", self.thread_restarts)
                self._set_connected(False, "network thread error")
                try:
                    self._client.disconnect()
                except Exception:  # noqa: BLE001
                    pass
                self._stop.wait(random.uniform(0, self.cfg.reconnect_min_s))

    def _session_loop(self) -> None:
        cfg = self.cfg
        delay = cfg.reconnect_min_s
        first = self._thread_first
        while not self._stop.is_set():
            try:
                if first:
                    self._client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive)
                    first = self._thread_first = False
                else:
                    self._client.reconnect()
            except (OSError, ssl.SSLError, ValueError, mqtt.WebsocketConnectionError) as e:
                wait = random.uniform(0, delay)  # full jitter
                self.last_error = str(e) or type(e).__name__
                log.warning("mqtt: connect to %s:%s failed: %s; retry in %.1f s", cfg.host, cfg.port, self.last_error, wait)
                delay = min(delay * 2, cfg.reconnect_max_s)
                self._stop.wait(wait)
                continue
            # the TCP (and TLS) connection is up; CONNACK and traffic are handled by loop()
            while not self._stop.is_set():
                rc = self._client.loop(timeout=0.2)
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    break
            if self._connected:
                delay = cfg.reconnect_min_s  # we had a working session: start the backoff afresh
            self._set_connected(False, "connection lost")
            if not self._stop.is_set():
                self.reconnects += 1
                wait = random.uniform(0, delay)
                delay = min(delay * 2, cfg.reconnect_max_s)
                self._stop.wait(wait)
        # drain what stop() queued (the offline status) before the thread ends
        for _ in range(10):
            if self._client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS:
                break

    def _set_connected(self, up: bool, why: str) -> None:
        with self._lock:
            changed = self._connected != up
            self._connected = up
        if changed and self._on_connection:
            try:
                self._on_connection(up, why)
            except Exception:  # noqa: BLE001
                log.exception("connection callback failed")

    # -- paho callbacks (network thread) ---------------------------------------------------------
    def _handle_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            self.last_error = f"broker refused the connection: {rc}"
            log.warning("mqtt: %s", self.last_error)
            client.disconnect()
            return
        qos = self.cfg.qos
        topics = [(f"{self.prefix}/cmd", qos), (f"{self.prefix}/transfer/+/+", qos)]
        topics += [(f"edgeagent/group/{g}/cmd", qos) for g in self.groups]
        if self._on_rollout is not None:
            topics += [(f"edgeagent/group/{g}/rollout", 1) for g in self.groups]
        topics += [(t, 1) for t in self._watches]
        client.subscribe(topics)
        client.publish(f"{self.prefix}/status", self._birth(), qos=1, retain=True)
        # Flush the outbox in order. paho is never called under our lock (paho calls us back
        # under its own locks: the other order would deadlock).
        while True:
            with self._lock:
                batch = list(self._outbox)
                self._outbox.clear()
                telemetry, self._telemetry = self._telemetry, None
                if not batch and telemetry is None:
                    self._connected = True
                    break
            for topic, payload, q, retain, props_ in batch:
                client.publish(topic, payload, qos=q, retain=retain, properties=props_)
            if telemetry is not None:
                client.publish(f"{self.prefix}/telemetry", telemetry, qos=0)
        self.last_error = None
        self._connected_at = time.monotonic()
        log.info("mqtt: connected to %s:%s (MQTT %s)", self.cfg.host, self.cfg.port, self.cfg.protocol)
        if self._on_connection:
            try:
                self._on_connection(True, "connected")
            except Exception:  # noqa: BLE001
                log.exception("connection callback failed")

    def _handle_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if not self._stop.is_set():
            log.warning("mqtt: disconnected (%s)%s", rc, takeover_hint(rc, self._connected_at, self._quick_drops,
                                                                        self.client_id))
        self._set_connected(False, str(rc))

    def _handle_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._route_message(msg)
        except Exception:  # noqa: BLE001 - a message must never end the network thread
            self.refused += 1
            log.exception("mqtt: message on %r not handled", getattr(msg, "topic", "?"))

    def _route_message(self, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic  # paho decodes it, and raises on invalid UTF-8
        except UnicodeDecodeError:
            self.refused += 1
            log.warning("mqtt: ignoring a message whose topic is not UTF-8")
            return
        watch = self._watches.get(topic)
        if watch is not None:
            if len(msg.payload) <= 4096:  # birth messages and the like; nothing big is expected
                watch(bytes(msg.payload))  # enqueue only
            return
        r = route(self.prefix, self.groups, topic)
        size = len(msg.payload)
        if isinstance(r, RolloutDoc):
            if self._on_rollout is None or size > self.cfg.max_message_bytes:
                self.refused += 1
                log.warning("mqtt: rollout document of %d bytes on %s dropped", size, topic)
                return
            self._on_rollout(r.group, bytes(msg.payload))  # enqueue only
            return
        if r is None or (isinstance(r, Chunk) and self._on_chunk is None):
            self.refused += 1
            log.debug("mqtt: ignoring %s", topic)
            return
        if isinstance(r, Chunk):
            if size > self.cfg.max_message_bytes:
                self.refused += 1
                log.warning("mqtt: chunk of %d bytes on %s dropped (mqtt.max_message_bytes %d)", size, topic,
                            self.cfg.max_message_bytes)
                return
            self._on_chunk(r.transfer_id, r.index, bytes(msg.payload))  # enqueue only
            return
        reply, why = self._reply_fn(msg)
        if why is not None:
            self.refused += 1
            log.warning("mqtt: command on %s refused: response topic %s", topic, why)
            reply({"id": None, "ok": False, "error": {"code": "cmd.bad_reply_topic",
                                                      "message": f"response topic refused: {why}"}})
            return
        if size > self.cfg.max_message_bytes:
            self.refused += 1
            log.warning("mqtt: command of %d bytes on %s refused (limit %d)", size, topic, self.cfg.max_message_bytes)
            reply({"id": None, "ok": False, "error": {"code": "cmd.too_large",
                                                      "message": f"command is {size} bytes, limit {self.cfg.max_message_bytes}"}})
            return
        self._on_command(bytes(msg.payload), reply)  # enqueue only: the dispatcher works elsewhere

    def _reply_fn(self, msg: mqtt.MQTTMessage) -> tuple[Callable[[dict], None], str | None]:
        """The function that answers this message, and why its Response Topic was refused (if it was)."""
        return replies.for_message(msg, prefix=self.prefix, v5=self.v5, send=self._send_reply)

    def reply_to(self, route_: dict | None) -> Callable[[dict], None] | None:
        """A reply function for a remembered route (a resumed update answers its original request)."""
        return replies.for_route(route_, prefix=self.prefix, v5=self.v5, send=self._send_reply)

    def _send_reply(self, topic: str, obj: dict, props: Any) -> None:
        self._send(topic, _dumps(obj), self.cfg.qos, False, props)

    def _birth(self) -> bytes:
        return _dumps({"state": "online", "device": self.device_id, "groups": self.groups, "agent": self.agent_version,
                       "model": self._birth_model, "ts": round(time.time(), 3)})

    # -- publishing (any thread, never blocks) -------------------------------------------------
    def _send(self, topic: str, payload: bytes, qos: int, retain: bool, props: Any = None) -> None:
        if qos == 0 and not retain and self._backlog_bytes() + len(payload) > MAX_BACKLOG_BYTES:
            self.backlog_dropped += 1  # the broker is not reading: fire-and-forget data waits for nobody
            return
        if self._connected:  # (read without the lock: paho must not be called under it)
            try:
                info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
            except (ValueError, TypeError) as e:  # a topic paho refuses: nothing to queue either
                log.warning("mqtt: cannot publish on %r: %s", topic, e)
                return
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                return
        if qos == 0 and not retain:
            return  # fire-and-forget data (model outputs) is not worth queueing
        with self._lock:
            if len(self._outbox) >= self.cfg.max_queued:
                self._outbox.popleft()
                self._dropped += 1
                self._dropped_total += 1
            self._outbox.append((topic, payload, qos, retain, props))

    def _backlog_bytes(self) -> int:
        """Bytes paho holds for the socket (its queue is only ever appended to and popped)."""
        pending = self._client._out_packet
        if len(pending) < 8:
            return 0
        return sum(p["to_process"] for p in list(pending))

    def publish_topic(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish outside the device's prefix (Home Assistant's discovery topic); never blocks."""
        self._send(topic, payload, qos, retain)

    def set_birth_info(self, model: dict) -> None:
        self._birth_model = dict(model)
        if self._connected:
            self._send(f"{self.prefix}/status", self._birth(), 1, True)

    def publish_event(self, event: dict) -> None:
        self._send(f"{self.prefix}/events", _dumps(event), self.cfg.qos, False)

    def publish_telemetry(self, payload: dict) -> None:
        data = _dumps(payload)
        with self._lock:
            if not self._connected:
                if self._telemetry is not None:
                    self._dropped += 1
                    self._dropped_total += 1
                self._telemetry = data  # while offline only the newest is worth sending
                return
        self._send(f"{self.prefix}/telemetry", data, 0, False)

    def publish(self, subtopic: str, payload: dict | bytes, *, qos: int | None = None, retain: bool = False) -> None:
        data = payload if isinstance(payload, (bytes, bytearray)) else _dumps(payload)
        self._send(f"{self.prefix}/{subtopic}", bytes(data), self.cfg.qos if qos is None else qos, retain)

    def take_dropped(self) -> int:
        with self._lock:
            n, self._dropped = self._dropped, 0
        return n

    def stats(self) -> dict:
        return {"connected": self._connected, "queued": len(self._outbox), "dropped": self._dropped_total,
                "reconnects": self.reconnects, "thread_restarts": self.thread_restarts, "refused": self.refused,
                "backlog_dropped": self.backlog_dropped,
                "last_error": self.last_error}
