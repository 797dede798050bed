"""Where a command's reply goes (and why a connection keeps being taken away): the device's `P/cmd/reply`, or the MQTT 5 Response Topic the
publisher asked for (checked: under the device's own prefix), with its Correlation Data.

A route is remembered as plain data ({"topic", "correlation"}) so a resumed update can answer
the request it started from after a restart.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Callable

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeagent.transport.topics import reply_topic_ok

Send = Callable[[str, dict, Any], None]  # (topic, reply object, properties or None)


def for_message(msg: Any, *, prefix: str, v5: bool, send: Send) -> tuple[Callable[[dict], None], str | None]:
    """The function that answers this message, and why its Response Topic was refused (if it was)."""
    topic = f"{prefix}/cmd/reply"
    props = None
    why = None
    p = getattr(msg, "properties", None)
    asked = getattr(p, "ResponseTopic", None) if v5 and p is not None else None
    if asked:
        why = reply_topic_ok(prefix, asked)
        if why is None:
            topic = asked
            props = Properties(PacketTypes.PUBLISH)
            if getattr(p, "CorrelationData", None) is not None:
                props.CorrelationData = p.CorrelationData

    def reply(obj: dict) -> None:
        send(topic, obj, props)

    corr = getattr(props, "CorrelationData", None) if props is not None else None
    reply.route = {"topic": topic, "correlation": bytes(corr).hex() if corr else None}  # type: ignore[attr-defined]
    return reply, why


def for_route(route: dict | None, *, prefix: str, v5: bool, send: Send) -> Callable[[dict], None] | None:
    """A reply function for a remembered route; None when the route is not one we would answer."""
    if not isinstance(route, dict) or not isinstance(route.get("topic"), str):
        return None
    topic = route["topic"]
    if reply_topic_ok(prefix, topic) is not None:
        return None
    props = None
    corr = route.get("correlation")
    if v5 and topic != f"{prefix}/cmd/reply":
        props = Properties(PacketTypes.PUBLISH)
        if isinstance(corr, str):
            try:
                props.CorrelationData = bytes.fromhex(corr)
            except ValueError:
                pass

    def reply(obj: dict) -> None:
        send(topic, obj, props)

    reply.route = dict(route)  # type: ignore[attr-defined]
    return reply


def takeover_hint(rc: Any, connected_at: float, quick_drops: collections.deque, client_id: str) -> str:
    """A broker drops a client when another connects with the same client id: two daemons with
    one device id take the connection from each other in a loop that MQTT 3.1.1 reports only as
    'Unspecified error'. Say so when it is named (MQTT 5: Session taken over) or when the
    connection keeps dropping within seconds of being made (quick_drops: a deque(maxlen=3))."""
    now = time.monotonic()
    if connected_at and now - connected_at < 10:
        quick_drops.append(now)
    repeated = len(quick_drops) >= 2 and now - quick_drops[0] < 120
    if "taken over" in str(rc).lower() or repeated:
        return (f"; another client may be using the client id {client_id!r} (two daemons with the "
                f"same device.id, or mqtt.client_id, take the connection from each other)")
    return ""
