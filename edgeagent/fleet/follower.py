"""The device's side of a phased rollout: follow the group's retained rollout document.

The follower reads `edgeagent/group/{g}/rollout` for each of the device's groups, decides by
itself whether the device is in the current phase (rollout_doc.is_member), and when it is,
starts the update the document names through the updater's public `start_update`, as strict as
any `update` command over MQTT (the same verification, health check, trial and rollback). It remembers, durably, which
rollouts it has taken and how they ended, so a restart neither repeats a finished rollout nor
forgets one under way, and answers on its own retained `P/rollout` so the controller can tally
without having been connected at the time. Events of the update carry the rollout id.

All the work runs on the follower's thread: the transport only enqueues documents, the event
bus only enqueues results.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from edgeagent.errors import EdgeAgentError
from edgeagent.fleet.rollout_doc import FINAL, RESULT_SUBTOPIC, TAKING, RolloutDoc, RolloutError, is_member, parse
from edgeagent.state.atomic import atomic_write_json
from edgeagent.state.model import State
from edgeagent.update.pending import is_pending

log = logging.getLogger("edgeagent.rollout")

RETRY_S = 2.0  # a document the device could not act on yet (an update or trial under way)
KEEP_DONE = 50  # finished rollouts remembered (so a retained document is not taken twice)
# a slot marked bad for these reasons was never judged: an install under way, or one the update
# had written and not switched to yet when the daemon stopped
NOT_FAILURES = ("installing", "installed, not switched to yet")
_VERDICTS = {"update.staged": "staged", "update.trial": "trial", "update.committed": "committed", "update.rolled_back": "rolled_back",
             "update.rejected": "refused"}


class Updates(Protocol):
    """The updater as the follower uses it (update.manager.UpdateManager)."""

    @property
    def busy(self) -> bool: ...

    def start_update(self, args: dict, reply: Callable[[dict], None], *, request_id: str,
                     source: str = "mqtt") -> None: ...


class Bus(Protocol):
    def emit(self, name: str, **fields: Any) -> dict: ...

    def subscribe(self, sink: Callable[[dict], None]) -> Callable[[], None]: ...

    def set_tag(self, version: object, fields: dict | None) -> None: ...


class RolloutFollower:
    def __init__(self, *, device_id: str, state_dir: str | os.PathLike, slots: Callable[[], State | None],
                 events: Bus, updates: Updates, model_info: Callable[[], dict],
                 publish: Callable[[str, dict], None]) -> None:
        self.device_id = device_id
        self._state_dir = Path(state_dir)
        self._slots = slots
        self._events = events
        self._updates = updates
        self._model_info = model_info
        self._publish_result = publish  # (subtopic, payload): retained, QoS 1; a no-op while offline
        self._file = self._state_dir / "rollout.json"
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._docs: dict[str, RolloutDoc] = {}  # group -> its latest valid document
        self._bad: dict[str, str] = {}  # group -> the last refusal logged (not once per reconnect)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = self._load()
        self._reconcile()
        events.subscribe(self._on_event)

    # -- persistence ------------------------------------------------------------------------
    def _load(self) -> dict:
        try:
            d = json.loads(self._file.read_text())
            if isinstance(d, dict) and isinstance(d.get("done"), dict):
                cur = d.get("current")
                return {"current": cur if isinstance(cur, dict) and isinstance(cur.get("rollout"), str) else None,
                        "done": {k: v for k, v in d["done"].items() if isinstance(v, dict)}}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, RecursionError) as e:
            log.error("%s unreadable (%s); starting afresh", self._file, e)
        return {"current": None, "done": {}}

    def _save(self) -> None:
        done = self._state["done"]
        if len(done) > KEEP_DONE:
            for k in sorted(done, key=lambda k: done[k].get("ts", 0))[:-KEEP_DONE]:
                del done[k]
        try:
            atomic_write_json(self._file, self._state)
        except OSError as e:
            log.error("could not save %s: %s", self._file, e)

    def _reconcile(self) -> None:
        """After a restart: what became of the rollout that was under way (the slots say)."""
        cur = self._state["current"]
        if cur is None or cur.get("result") in FINAL:
            return
        st = self._slots()
        v = cur.get("version")
        slots = {k: s for k, s in (st.slots.items() if st else []) if s is not None}
        if st is not None and st.trial and slots.get(st.active) and slots[st.active].version == v:
            self._set_result("trial")
        elif st is not None and slots.get(st.active) and slots[st.active].version == v \
                and slots[st.active].status == "good":
            self._set_result("committed")
        elif st is not None and st.staged and st.staged.get("version") == v:
            self._set_result("staged")  # its switch window will switch it
        elif is_pending(self._state_dir):
            pass  # the updater resumes it (an install not switched to yet included); its events finish the story
        elif (bad := next((s for s in slots.values() if s.version == v and s.status == "bad"
                           and s.reason not in NOT_FAILURES), None)) is not None:
            self._set_result("rolled_back", reason=bad.reason)
        else:
            log.info("rollout %s was interrupted before its update started; taking it again", cur["rollout"])
            self._state["current"] = None
            self._save()
            return
        self._tag()

    def _tag(self) -> None:
        cur = self._state["current"]
        live = cur is not None and cur.get("result") not in FINAL
        self._events.set_tag(cur.get("version") if live else None, {"rollout": cur["rollout"]} if live else None)

    # -- inputs (other threads: enqueue only) -----------------------------------------------
    def on_doc(self, group: str, payload: bytes) -> None:
        self._q.put(("doc", group, payload))

    def on_connected(self) -> None:
        self._q.put(("publish", None, None))

    def _on_event(self, ev: dict) -> None:
        if ev.get("event") in _VERDICTS or ev.get("event") == "model.quality":
            self._q.put(("event", None, ev))
        elif ev.get("event") == "rollback" and ev.get("from_version") is not None:
            # a rollback after the commit (a halt's rollback, a button): P/rollout says so
            self._q.put(("event", None, {"event": "update.rolled_back", "version": ev["from_version"],
                                         "reason": ev.get("reason"), "after_commit": True}))

    # -- the follower's thread --------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rollout", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._q.put(("stop", None, None))
        if self._thread is not None:
            self._thread.join(3.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                kind, group, body = self._q.get(timeout=RETRY_S)
            except queue.Empty:
                kind, group, body = "retry", None, None
            try:
                if kind == "stop":
                    return
                if kind == "doc":
                    self._on_doc(group, body)
                elif kind == "event":
                    self._on_verdict(body)
                elif kind == "publish":
                    self._publish()
                for doc in list(self._docs.values()):
                    self._consider(doc)
            except Exception:  # noqa: BLE001 - the follower must outlive any one document
                log.exception("rollout follower: %s not handled", kind)

    def _on_doc(self, group: str, payload: bytes) -> None:
        if not payload:
            self._docs.pop(group, None)  # the retained document was cleared
            return
        try:
            doc = parse(payload)
            if doc.group != group:
                raise RolloutError("rollout.bad_doc", f"group {doc.group!r} published on group {group!r}'s topic")
        except RolloutError as e:
            if self._bad.get(group) != e.message:
                self._bad[group] = e.message
                log.warning("rollout document for group %s refused: %s", group, e)
                self._events.emit("rollout.refused", group=group, code=e.code, reason=e.message)
            return
        self._bad.pop(group, None)
        self._docs[group] = doc

    def _consider(self, doc: RolloutDoc) -> None:
        if doc.state not in TAKING or not is_member(doc, self.device_id):
            return
        cur = self._state["current"]
        if self._same(self._state["done"].get(doc.id), doc) or self._same(cur, doc):
            return
        if cur is not None and cur.get("result") not in FINAL:
            return  # another rollout's update is under way: this one waits for it
        info = self._model_info()
        if info.get("version") == doc.version and not info.get("trial"):
            self._begin(doc)
            self._set_result("committed", reason="already serving this version")
            return
        if self._updates.busy:
            return  # retried every RETRY_S
        self._begin(doc)
        args = {"manifest": doc.manifest, **doc.payload}
        log.info("rollout %s (group %s, phase %d at %.1f%%): taking v%d", doc.id, doc.group, doc.phase,
                 doc.percentage, doc.version)
        try:
            self._updates.start_update(args, self._on_reply, request_id=f"rollout-{doc.id}", source="mqtt")
        except EdgeAgentError as e:
            if e.code == "update.busy":  # something started in between: try again later
                self._state["current"] = None
                self._save()
                self._tag()
                return
            self._set_result("refused", code=e.code, reason=e.message)

    @staticmethod
    def _same(rec: dict | None, doc: RolloutDoc) -> bool:
        """The record is of this rollout: its id and its manifest (a record from before manifests
        were recorded matches by id). A document that reuses an id with another manifest, a junk
        document squatting the id first, is another rollout."""
        return rec is not None and rec.get("rollout") == doc.id and rec.get("manifest", doc.digest) == doc.digest

    def _begin(self, doc: RolloutDoc) -> None:
        self._state["current"] = {"rollout": doc.id, "group": doc.group, "version": doc.version, "result": "started",
                                  "manifest": doc.digest, "ts": round(time.time(), 3)}
        self._save()
        self._tag()
        self._publish()

    def _on_reply(self, msg: dict) -> None:
        if not msg.get("ok"):
            err = msg.get("error") or {}
            self._q.put(("event", None, {"event": "update.rejected", "version": self._version(),
                                         "code": err.get("code"), "reason": err.get("message")}))

    def _version(self) -> Any:
        cur = self._state["current"]
        return cur.get("version") if cur else None

    def _on_verdict(self, ev: dict) -> None:
        cur = self._state["current"]
        if cur is None or ev.get("version") != cur.get("version"):
            return
        if ev["event"] == "model.quality":  # the committed model's first window: for --max-drift-psi
            if cur.get("result") == "committed" and "quality" not in cur:
                cur["quality"] = {k: ev.get(k) for k in ("psi_class", "psi_confidence", "psi_input", "reference")}
                self._save()
                self._publish()
            return
        if ev.get("after_commit"):
            if cur.get("result") != "committed":
                return
            self._set_result("rolled_back", reason=ev.get("reason"))
            return
        if cur.get("result") in FINAL:
            return
        self._set_result(_VERDICTS[ev["event"]], code=ev.get("code"), reason=ev.get("reason"))

    def _set_result(self, result: str, *, code: str | None = None, reason: str | None = None) -> None:
        cur = self._state["current"]
        assert cur is not None
        cur.update(result=result, ts=round(time.time(), 3))
        for k, v in (("code", code), ("reason", reason)):
            if v is not None:
                cur[k] = v
        if result in FINAL:
            self._state["done"][cur["rollout"]] = dict(cur)
            log.info("rollout %s: %s v%s%s", cur["rollout"], result, cur.get("version"),
                     f" ({code or ''} {reason or ''})" if result != "committed" else "")
        self._save()
        self._tag()
        self._publish()

    def _publish(self) -> None:
        cur = self._state["current"]
        if cur is not None:
            self._publish_result(RESULT_SUBTOPIC, {**cur, "device": self.device_id})

    def current(self) -> dict | None:
        cur = self._state["current"]
        return dict(cur) if cur else None
