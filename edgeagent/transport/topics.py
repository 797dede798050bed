"""Which of the device's topics a message came on, and where a reply may go: pure, total functions.

Everything here takes untrusted strings from the network and returns a typed answer or None; it
cannot raise (a test fuzzes it with hypothesis). A chunk index is at most MAX_INDEX_DIGITS ASCII
digits: `str.isdigit()` accepts '²' and int() of 5000 digits raises, and either used to end the
paho network thread for good.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_INDEX_DIGITS = 9  # 10^9 chunks is far beyond any payload the device accepts
MAX_ID_LEN = 64
_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_DIGITS = frozenset("0123456789")


@dataclass(frozen=True)
class Command:
    topic: str


@dataclass(frozen=True)
class Chunk:
    transfer_id: str
    index: int


@dataclass(frozen=True)
class RolloutDoc:
    group: str


Route = Command | Chunk | RolloutDoc


def transfer_id_ok(s: object) -> bool:
    return isinstance(s, str) and 0 < len(s) <= MAX_ID_LEN and all(c in _ID_CHARS for c in s)


def route(prefix: str, groups: list[str] | tuple[str, ...], topic: object) -> Route | None:
    """The route of a message on `topic`, or None for a topic the device does not serve."""
    if not isinstance(topic, str):
        return None
    if topic == f"{prefix}/cmd" or any(topic == f"edgeagent/group/{g}/cmd" for g in groups):
        return Command(topic)
    for g in groups:
        if topic == f"edgeagent/group/{g}/rollout":
            return RolloutDoc(g)
    head = f"{prefix}/transfer/"
    if not topic.startswith(head):
        return None
    parts = topic[len(head):].split("/")
    if len(parts) != 2:
        return None
    tid, idx = parts
    if not transfer_id_ok(tid) or not 0 < len(idx) <= MAX_INDEX_DIGITS or not all(c in _DIGITS for c in idx):
        return None
    return Chunk(tid, int(idx))


# what a device publishes or reads under its prefix: a reply never lands on another device's
DEVICE_SUBTOPICS = frozenset({"status", "rollout", "telemetry", "events", "output", "update", "cmd", "transfer"})


def reply_topic_ok(prefix: str, topic: object) -> str | None:
    """Why a requested MQTT 5 Response Topic is refused, or None when it may be used.

    A reply may go anywhere outside the device's own prefix (the requester's inbox), and to
    `P/cmd/reply` or below it (`edgeagent push` uses `P/cmd/reply/{request id}`, which an ACL
    that gives the device only its prefix allows); never to another topic of the device's (a reply on `P/status` would replace
    the retained birth, on `P/cmd` it would be run as a command). Wildcards are not topic names."""
    if not isinstance(topic, str) or not topic:
        return "empty"
    if len(topic.encode("utf-8", "surrogatepass")) > 65535:
        return "longer than MQTT allows"
    if any(c in topic for c in "+#\x00"):
        return "contains a wildcard or NUL"
    if topic == f"{prefix}/cmd/reply" or topic.startswith(f"{prefix}/cmd/reply/"):
        return None
    if topic == prefix or topic.startswith(f"{prefix}/") or topic.startswith("edgeagent/group/"):
        return "under the device's own topics"
    # nor onto another device's topics (its retained P/rollout result, its status, its commands)
    root = prefix.split("/", 1)[0]
    parts = topic.split("/")
    if "/" in prefix and len(parts) >= 3 and parts[0] == root and parts[2] in DEVICE_SUBTOPICS:
        return "another device's topic"
    if topic.startswith("$"):
        return "a broker ($) topic"
    return None
