"""The rollout controller: drives one group's phased rollout from the publisher's side.

It keeps no state of its own that the broker does not also hold: the retained rollout document
is the plan and its progress, each device's retained `P/rollout` is its result. A controller
that is killed and started again (`rollout resume ID`) re-reads both and carries on; a local
copy of the document (written atomically) lets it republish a plan that a broker without
persistence lost. It decides with the pure `tally.decide` and only writes the document.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from edgeagent.errors import TransportError
from edgeagent.fleet.rollout_doc import DOC_TOPIC, RolloutDoc, RolloutError, parse, percentage_for
from edgeagent.fleet.tally import Tally, decide, tally
from edgeagent.fleet.view import DEFAULT_PREFIX, FleetView
from edgeagent.state.atomic import atomic_write_json

log = logging.getLogger("edgeagent.rollout")

TICK_S = 0.5
LOST_BROKER_S = 120.0  # give up (the plan stays on the broker: `rollout resume` carries on)
COMMAND_EXPIRY_S = 600  # a rollback queued behind a bridge that long is stale: the operator moved on


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "edgeagent" / "rollouts"


class RolloutController:
    def __init__(self, client: Any, group: str, *, prefix: str = DEFAULT_PREFIX,
                 say: Callable[[str], None] = lambda s: None, chunks: list[bytes] | None = None,
                 local_dir: Path | None = None) -> None:
        self.c = client
        self.group = group
        self.topic = DOC_TOPIC.format(group=group)
        self.view = FleetView(prefix)
        self.say = say
        self.chunks = chunks  # --transfer: served to each device that asks for them
        self.local_dir = local_dir or state_dir()
        self.doc: RolloutDoc | None = None
        self.doc_seen = False
        self.served_chunks = 0
        self._settled_since: float | None = None
        self._last_line = ""
        # the retained topics first, read to their end by load(); telemetry and events after
        client.subscribe_many(self.view.topics(live=False) + [(self.topic, 1)])
        self._live = False

    # -- reading ---------------------------------------------------------------------------
    def load(self) -> None:
        """Everything retained: the document, every device's status and result; then the live
        topics. The step's size is decided on the devices known here (`rollout start` says how many)."""
        self.ingest(self.c.settle())
        if not self._live:
            self._live = True
            self.c.subscribe_many(self.view.topics(events=True, retained=False))

    def ingest(self, msgs: list) -> None:
        for m in msgs:
            if m.topic == self.topic:
                self.doc_seen = True
                if not m.payload:
                    self.doc = None
                    continue
                try:
                    self.doc = parse(m.payload)
                except RolloutError as e:
                    log.warning("ignoring a bad rollout document on %s: %s", self.topic, e)
                continue
            got = self.view.ingest(m.topic, m.payload)
            if got is not None and got[1] == "events" and self.chunks:
                self._serve(got[0].id, got[2])

    def _serve(self, device: str, ev: dict) -> None:
        tr = (self.doc.payload.get("transfer") or {}) if self.doc else {}
        if ev.get("event") != "update.transfer" or not tr or ev.get("id") != tr.get("id"):
            return
        missing = [i for i in ev.get("missing", []) if isinstance(i, int) and 0 <= i < len(self.chunks or [])]
        for i in missing:
            self.c.publish(f"{self.view.prefix_of(device)}/transfer/{tr['id']}/{i}", self.chunks[i])
        self.served_chunks += len(missing)

    def results(self) -> dict:
        return {d.id: d.result for d in self.view.devices.values()}

    def tally(self, now: float | None = None) -> Tally:
        assert self.doc is not None
        return tally(self.doc, self.view.in_group(self.group), self.results(), time.time() if now is None else now)

    # -- writing ---------------------------------------------------------------------------
    def write(self, doc: RolloutDoc) -> RolloutDoc:
        doc = dataclasses.replace(doc, updated_at=round(time.time(), 3))
        self.local_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.local_dir / f"{doc.id}.json", doc.to_json(), mode=0o600)  # before the broker
        self.c.publish(self.topic, doc.dumps(), retain=True)
        self.doc = doc
        return doc

    def step_to(self, phase: int) -> RolloutDoc:
        assert self.doc is not None
        doc = self.doc
        pct = doc.plan[phase]
        eff = percentage_for(doc.id, self.view.in_group(self.group), pct, at_least=doc.criteria.min_executed) \
            if pct > 0 else 0.0
        self._settled_since = None
        return self.write(dataclasses.replace(doc, phase=phase, percentage=round(eff, 9), state="running",
                                              phase_started_at=round(time.time(), 3)))

    def halt(self, reason: str, *, state: str = "halted", rollback: bool | None = None) -> RolloutDoc:
        """Percentage to 0 (no further device starts), and with rollback the devices this rollout
        updated are told to go back (a command with a Message Expiry)."""
        assert self.doc is not None
        doc = self.doc
        rolled: list[str] = []
        if rollback if rollback is not None else doc.criteria.rollback_on_halt:
            t = self.tally()
            results = self.results()
            why = f"rollout {doc.id} {state}: {reason}"[:500]
            for dev in t.committed + t.in_progress:
                r = results.get(dev)
                if dev in doc.rolled_back:
                    continue  # told already (a halt before this abort): a second rollback must not toggle
                if r is not None and r.result == "started":
                    # still downloading or checking: a rollback would cancel it and then switch to
                    # the other slot, an older model; cancelling leaves it on the model it serves
                    self.command(dev, "cancel", {}, f"{doc.id}-cancel")
                    continue
                # conditional: a device no longer serving this version (a redelivery, a repeat) does nothing
                self.command(dev, "rollback", {"reason": why, "leave": doc.version}, f"{doc.id}-rollback")
                rolled.append(dev)
        doc = self.write(dataclasses.replace(doc, state=state, percentage=0.0, reason=reason,
                                             rolled_back=tuple(sorted(set(doc.rolled_back) | set(rolled)))))
        return doc

    def command(self, device: str, op: str, args: dict, rid: str) -> None:
        self.c.publish(f"{self.view.prefix_of(device)}/cmd", json.dumps({"id": rid, "op": op, "args": args}),
                       expiry_s=COMMAND_EXPIRY_S)

    # -- driving ---------------------------------------------------------------------------
    def run(self) -> RolloutDoc:
        """Drive the rollout until it is no longer running (complete, halted, paused, aborted)."""
        lost_at: float | None = None
        while True:
            self.ingest(self.c.drain(TICK_S))
            if self.doc is None:
                raise RolloutError("rollout.not_found", f"the rollout document on {self.topic} was removed")
            if self.doc.state != "running":
                return self.doc
            if not self.c.connected:
                lost_at = lost_at or time.monotonic()
                if time.monotonic() - lost_at > LOST_BROKER_S:
                    raise TransportError("mqtt.disconnected", f"lost the broker for {LOST_BROKER_S:.0f} s; the plan "
                                                              f"is on the broker: `edgeagent rollout resume {self.doc.id}`")
                continue
            lost_at = None
            self.step()

    def step(self, now: float | None = None) -> None:
        assert self.doc is not None
        now = time.time() if now is None else now
        doc = self.doc
        t = self.tally(now)
        if t.settled:
            self._settled_since = self._settled_since or now
        else:
            self._settled_since = None
        line = f"step {doc.phase + 1}/{len(doc.plan)} ({doc.plan[doc.phase]:g}%): {t.line()}"
        if line != self._last_line:
            self._last_line = line
            self.say(line)
        d = decide(doc, t, now, self._settled_since)
        if d.action == "time_out":
            self.say(f"timed out: {', '.join(d.devices)} ({d.reason})")
            self.write(dataclasses.replace(doc, timed_out=tuple(sorted(set(doc.timed_out) | set(d.devices)))))
        elif d.action == "halt":
            self.say(f"halting: {d.reason}")
            self.halt(d.reason)
        elif d.action == "complete":
            self.say(f"complete: {d.reason}")
            self.write(dataclasses.replace(doc, state="complete", reason=d.reason))
        elif d.action == "advance":
            self.step_to(doc.phase + 1)
            self.say(f"advancing to step {doc.phase + 2}/{len(doc.plan)}: {doc.plan[doc.phase + 1]:g}% "
                     f"({self.doc.percentage:.1f}% of the hash space)")

    def summary(self) -> dict:
        assert self.doc is not None
        d = self.doc.to_json()
        d.pop("manifest", None)
        return {"rollout": d, "tally": self.tally().to_json(), "served_chunks": self.served_chunks}


def find(client: Any, rollout_id: str, local_dir: Path | None = None) -> RolloutDoc:
    """The rollout with this id: the broker's retained document, or the local copy when the
    broker lost it (one without persistence that restarted)."""
    client.subscribe(DOC_TOPIC.format(group="+"), 1)
    found: RolloutDoc | None = None
    for m in client.settle():
        try:
            doc = parse(m.payload) if m.payload else None
        except RolloutError:
            continue
        if doc is not None and doc.id == rollout_id:
            found = doc
    local = (local_dir or state_dir()) / f"{rollout_id}.json"
    try:
        mine = parse(local.read_bytes())
    except (OSError, RolloutError):
        mine = None
    if found is None or (mine is not None and mine.updated_at > found.updated_at):
        found = mine
    if found is None:
        raise RolloutError("rollout.not_found", f"no rollout {rollout_id!r} on the broker or in {local.parent}")
    return found
