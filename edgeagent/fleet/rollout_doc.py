"""The rollout document: one retained message per group, `edgeagent/group/{group}/rollout`.

The broker is the rollout's only store: the controller writes this document (the manifest, how
to get the payload, the current percentage, the state), every device of the group reads it, and
each device decides for itself whether it is in: by an explicit canary list, or by a stable
hash of rollout id and device id against the percentage (Ubuntu's phased updates do the same).
A device that was offline reads the retained document when it comes back. Each device answers
with its own retained result on `P/rollout`, so a restarted controller re-reads the whole tally.

Everything here is pure and takes untrusted bytes: `parse` returns a typed document or raises
RolloutError with a stable code; `bucket` and `is_member` cannot raise.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from edgeagent.errors import EdgeAgentError

DOC_TOPIC = "edgeagent/group/{group}/rollout"
RESULT_SUBTOPIC = "rollout"  # P/rollout: the device's retained result for the last rollout it took
STATES = ("running", "paused", "halted", "aborted", "complete")
# a device takes the rollout in these states; `complete` stays active so that a device which was
# offline throughout still takes it when it comes back
TAKING = ("running", "complete")
# a device's results: the first two are on the way, the rest final
RESULTS = ("started", "staged", "trial", "committed", "refused", "rolled_back")  # staged: in its switch window
FINAL = ("committed", "refused", "rolled_back")
MAX_DOC_BYTES = 1 << 20
_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RolloutError(EdgeAgentError):
    code = "rollout.error"


@dataclass(frozen=True)
class Criteria:
    max_failure_pct: float = 10.0
    min_executed: int = 1
    soak_s: float = 0.0
    device_timeout_s: float = 900.0
    rollback_on_halt: bool = False
    # a committed device whose first window's class PSI (against the manifest's signed reference)
    # is above this has drifted: it counts as failed
    max_drift_psi: float | None = None

    def to_json(self) -> dict:
        return {"max_failure_pct": self.max_failure_pct, "min_executed": self.min_executed, "soak_s": self.soak_s,
                "device_timeout_s": self.device_timeout_s, "rollback_on_halt": self.rollback_on_halt,
                **({"max_drift_psi": self.max_drift_psi} if self.max_drift_psi is not None else {})}


@dataclass(frozen=True)
class RolloutDoc:
    id: str
    group: str
    state: str
    version: int
    manifest: dict
    payload: dict  # {"payload_url": URL} or {"transfer": announcement}: the update command's args
    phases: tuple = (100.0,)
    phase: int = 0  # index into the plan: with canaries, phase 0 is the canaries alone
    percentage: float = 0.0  # what devices compare their bucket against
    canary: tuple = ()
    criteria: Criteria = field(default_factory=Criteria)
    started_at: float = 0.0
    phase_started_at: float = 0.0
    updated_at: float = 0.0
    reason: str | None = None
    timed_out: tuple = ()  # devices the controller stopped waiting for
    rolled_back: tuple = ()  # devices the controller told to roll back on a halt

    @property
    def digest(self) -> str:
        """sha256 of the signed manifest (canonical JSON), first 16 hex digits: what makes a rollout
        the same rollout, beyond its id."""
        return manifest_digest(self.manifest)

    @property
    def plan(self) -> list[float]:
        """The percentage of each step: with canaries, 0 (the canaries alone) comes first."""
        return ([0.0] if self.canary else []) + [float(p) for p in self.phases]

    def to_json(self) -> dict:
        return {"id": self.id, "group": self.group, "state": self.state, "version": self.version,
                "manifest": self.manifest, "payload": self.payload, "phases": list(self.phases),
                "phase": self.phase, "percentage": self.percentage, "canary": list(self.canary),
                "criteria": self.criteria.to_json(), "started_at": self.started_at,
                "phase_started_at": self.phase_started_at, "updated_at": self.updated_at, "reason": self.reason,
                "timed_out": list(self.timed_out), "rolled_back": list(self.rolled_back)}

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()


def bucket(rollout_id: str, device_id: str) -> float:
    """Where the device falls in [0, 100) for this rollout: stable, and independent between
    rollouts (a device is not always among the first)."""
    h = hashlib.sha256(f"{rollout_id}\x00{device_id}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(h[:8], "big") / 2**64 * 100.0


def is_member(doc: RolloutDoc, device_id: str) -> bool:
    """Whether the device is in the rollout's current phase (it decides this itself)."""
    return device_id in doc.canary or bucket(doc.id, device_id) < doc.percentage


def percentage_for(rollout_id: str, known: list[str], pct: float, at_least: int = 1) -> float:
    """The percentage that puts ceil(pct% of the known devices) in, and at least `at_least`: a
    5% phase of a 12-device group holds one device rather than, by the luck of the hash, none.
    Devices the controller does not know still compare against the same number."""
    if pct >= 100.0:
        return 100.0
    if pct <= 0 or not known:
        return max(0.0, pct)
    ranked = sorted(bucket(rollout_id, d) for d in known)
    n = min(len(ranked), max(1, at_least, -(-len(ranked) * pct // 100)))
    return min(100.0, ranked[int(n) - 1] + 1e-9)


def _num(d: dict, key: str, lo: float, hi: float, default: float | None = None) -> float:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise RolloutError("rollout.bad_doc", f"{key}: expected a number in [{lo}, {hi}]")
    return float(v)


def _ids(v: Any, key: str) -> tuple:
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(x, str) and 0 < len(x) <= 256 for x in v) or len(v) > 100_000:
        raise RolloutError("rollout.bad_doc", f"{key}: expected a list of device ids")
    return tuple(v)


def parse(raw: bytes | str) -> RolloutDoc:
    """The typed document, or RolloutError("rollout.bad_doc"): untrusted bytes from the broker.
    The manifest inside is only checked for shape here; the updater verifies its signatures."""
    if len(raw) > MAX_DOC_BYTES:
        raise RolloutError("rollout.bad_doc", f"{len(raw)} bytes, limit {MAX_DOC_BYTES}")
    try:
        d = json.loads(raw)
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        raise RolloutError("rollout.bad_doc", f"not JSON: {e}") from None
    if not isinstance(d, dict):
        raise RolloutError("rollout.bad_doc", "expected a JSON object")
    rid, group, state = d.get("id"), d.get("group"), d.get("state")
    if not isinstance(rid, str) or not _ID.match(rid):
        raise RolloutError("rollout.bad_doc", "id: expected 1-64 of A-Z a-z 0-9 . _ -")
    if not isinstance(group, str) or not group or len(group) > 256:
        raise RolloutError("rollout.bad_doc", "group: expected a string")
    if state not in STATES:
        raise RolloutError("rollout.bad_doc", f"state: expected one of {', '.join(STATES)}")
    version = d.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise RolloutError("rollout.bad_doc", "version: expected a non-negative integer")
    manifest, payload = d.get("manifest"), d.get("payload")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("signed"), dict):
        raise RolloutError("rollout.bad_doc", "manifest: expected the signed envelope")
    if manifest["signed"].get("version") != version:
        raise RolloutError("rollout.bad_doc", "version: differs from the manifest's")
    if not isinstance(payload, dict) or len([k for k in ("payload_url", "transfer") if payload.get(k) is not None]) != 1 \
            or set(payload) - {"payload_url", "transfer"}:
        raise RolloutError("rollout.bad_doc", "payload: expected {payload_url} or {transfer}")
    phases = d.get("phases", [100])
    if not isinstance(phases, list) or not phases or len(phases) > 100 \
            or any(isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 100 for p in phases):
        raise RolloutError("rollout.bad_doc", "phases: expected percentages in (0, 100]")
    c = d.get("criteria") or {}
    if not isinstance(c, dict):
        raise RolloutError("rollout.bad_doc", "criteria: expected an object")
    criteria = Criteria(max_failure_pct=_num(c, "max_failure_pct", 0, 100, 10.0),
                        min_executed=int(_num(c, "min_executed", 0, 1e9, 1)),
                        soak_s=_num(c, "soak_s", 0, 1e9, 0.0),
                        device_timeout_s=_num(c, "device_timeout_s", 0, 1e9, 900.0),
                        rollback_on_halt=bool(c.get("rollback_on_halt", False)),
                        max_drift_psi=_num(c, "max_drift_psi", 0, 1e6, 0.0) if "max_drift_psi" in c else None)
    canary = _ids(d.get("canary"), "canary")
    n_steps = len(phases) + (1 if canary else 0)
    phase = d.get("phase", 0)
    if isinstance(phase, bool) or not isinstance(phase, int) or not 0 <= phase < n_steps:
        raise RolloutError("rollout.bad_doc", f"phase: expected 0..{n_steps - 1}")
    reason = d.get("reason")
    return RolloutDoc(
        id=rid, group=group, state=state, version=version, manifest=manifest, payload=payload,
        phases=tuple(float(p) for p in phases), phase=phase, percentage=_num(d, "percentage", 0, 100, 0.0),
        canary=canary, criteria=criteria, started_at=_num(d, "started_at", 0, 1e12, 0.0),
        phase_started_at=_num(d, "phase_started_at", 0, 1e12, 0.0), updated_at=_num(d, "updated_at", 0, 1e12, 0.0),
        reason=reason if isinstance(reason, str) else None,
        timed_out=_ids(d.get("timed_out"), "timed_out"), rolled_back=_ids(d.get("rolled_back"), "rolled_back"))


def manifest_digest(manifest: dict) -> str:
    signed = manifest.get("signed") if isinstance(manifest, dict) else None
    data = json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass(frozen=True)
class DeviceResult:
    """A device's retained answer on P/rollout."""

    device: str
    rollout: str
    version: int | None
    result: str
    code: str | None = None
    reason: str | None = None
    ts: float = 0.0
    manifest: str | None = None  # the digest of the manifest it answered for (older devices: None)
    quality: dict | None = None  # committed: its first window's PSIs against the model's reference

    def answers(self, doc: "RolloutDoc") -> bool:
        """This result is for this rollout: its id, and (when the device says) its manifest. A
        document that reuses an id with another manifest is another rollout."""
        return self.rollout == doc.id and (self.manifest is None or self.manifest == doc.digest)


def parse_result(device: str, raw: bytes | str) -> DeviceResult | None:
    """A device's result, or None for anything that is not one (an empty retained message clears)."""
    try:
        d = json.loads(raw) if raw else None
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None
    if not isinstance(d, dict) or not isinstance(d.get("rollout"), str) or d.get("result") not in RESULTS:
        return None
    v = d.get("version")
    ts = d.get("ts")
    return DeviceResult(device=device, rollout=d["rollout"], version=v if isinstance(v, int) else None,
                        result=d["result"], code=d.get("code") if isinstance(d.get("code"), str) else None,
                        reason=d.get("reason") if isinstance(d.get("reason"), str) else None,
                        ts=float(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) else 0.0,
                        manifest=d.get("manifest") if isinstance(d.get("manifest"), str) else None,
                        quality=_quality(d.get("quality")))


def _quality(q: Any) -> dict | None:
    if not isinstance(q, dict):
        return None
    out = {k: float(v) for k, v in q.items() if k.startswith("psi_") and isinstance(v, (int, float))
           and not isinstance(v, bool) and v == v}
    return {**out, "reference": q.get("reference") if isinstance(q.get("reference"), str) else None}
