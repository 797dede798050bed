"""Slot decisions as pure functions of the state: where a rollback goes, what a trial records,
when restarts count against a model.

The daemon (live commands, probation verdicts, boot) and the offline CLI decide through these
same functions, so a live and an offline rollback cannot pick different slots and two writers of
the trial record cannot drift apart. Nothing here reads or writes a file: the store hashes the
slot files and persists what these functions decided.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeagent.errors import StateError
from edgeagent.record import Record
from edgeagent.state.model import SlotInfo, State, now_rfc3339, other


@dataclass(frozen=True, eq=False, repr=False)
class TrialTerms(Record):
    """What a trial is judged by, fixed when it begins and kept in state.json so a restart
    resumes the same probation. `before` holds the replaced model's figures measured in the
    same process ({"invoke_p50_ms", "rss_mb"}); an offline install has none (null values)."""

    probation_s: float
    min_inferences: int
    version: int | None = None
    max_latency_ms: float | None = None
    min_agreement_pct: float | None = None
    expected_ms: float | None = None
    before: dict | None = None
    created: str | None = None  # the manifest's signed `created`: the time floor rises to it at commit


def trial_record(slot: str, frm: str, terms: TrialTerms) -> dict:
    """The one builder of `state.json` `trial` (live switch and offline install alike)."""
    return {"slot": slot, "from": frm, "started_at": now_rfc3339(), "attempts": 0,
            "probation_s": terms.probation_s, "min_inferences": terms.min_inferences,
            "before": dict(terms.before) if terms.before else {"invoke_p50_ms": None, "rss_mb": None},
            "max_latency_ms": terms.max_latency_ms, "min_agreement_pct": terms.min_agreement_pct,
            "expected_ms": terms.expected_ms, "version": terms.version, "created": terms.created}


def before_of(trial: dict) -> dict:
    """The trial's `before` figures; records written by v0.2's offline install had `baseline_ms`."""
    b = trial.get("before")
    return dict(b) if isinstance(b, dict) else {"invoke_p50_ms": trial.get("baseline_ms"), "rss_mb": None}


def rollback_target(st: State) -> str:
    """The slot a rollback returns to: the trial's origin during a trial, otherwise the other
    slot; it must hold a model marked good (the caller verifies its hash before switching)."""
    to = st.trial["from"] if st.trial else other(st.active)
    info = st.slots.get(to)
    if info is None or info.status != "good":
        why = "empty" if info is None else (f"{info.status}: {info.reason}" if info.reason else info.status)
        raise StateError("state.no_rollback_target", f"slot {to} holds no good model ({why})")
    return to


def apply_rollback(st: State, to: str, reason: str, *, mark_bad: bool) -> str:
    """Make `to` active; the slot left becomes bad with the reason when asked or when it was on
    trial. Returns the slot left."""
    frm = st.active
    cur = st.slots.get(frm)
    if cur is not None and (mark_bad or st.trial):
        cur.status, cur.reason = "bad", reason
    st.trial = None
    st.active = to
    st.last_rollback = {"from": frm, "to": to, "reason": reason, "at": now_rfc3339()}
    st.boots = {"slot": to, "sha256": st.slots[to].sha256, "count": 1}
    return frm


def stage(st: State, slot: str, record: dict) -> None:
    """The installed slot waits for its switch window (status staged): still not the rollback
    target, never booted; a newer update replaces it (unstage, as prepare_target does)."""
    info = st.slots.get(slot)
    if info is None or not info.sha256 or slot == st.active:
        raise StateError("state.slot_empty", f"slot {slot} holds no installed model to stage")
    unstage(st)
    info.status, info.reason = "staged", None
    st.staged = {"slot": slot, **record}


def unstage(st: State, reason: str | None = None) -> None:
    """Forget the staged update; its slot becomes bad with `reason` (it is being replaced, or
    does not verify), so nothing ever boots or rolls back to it."""
    if st.staged is None:
        return
    info = st.slots.get(st.staged["slot"])
    if info is not None and info.status == "staged":
        info.status, info.reason = "bad", reason or "staged update replaced"
    st.staged = None


def begin_trial(st: State, slot: str, terms: TrialTerms) -> None:
    """The slot becomes active on trial. The high-water version rises here, so a replayed older
    manifest is refused while the new model is on trial."""
    info = st.slots.get(slot)
    if info is None or not info.sha256:
        raise StateError("state.slot_empty", f"slot {slot} holds no installed model")
    if slot == st.active:
        raise StateError("state.slot_active", f"slot {slot} is already active")
    st.trial = trial_record(slot, st.active, terms)
    st.staged = None  # a staged update switches by beginning its trial
    info.status, info.reason = "trial", None
    st.active = slot
    st.boots = {"slot": slot, "sha256": info.sha256, "count": 1}  # this run is the model's first start
    if info.model and info.version is not None:
        st.high_water[info.model] = max(int(st.high_water.get(info.model, 0)), int(info.version))


def count_trial_start(st: State, max_attempts: int) -> dict | None:
    """A start during a trial is an attempt (Mender's rule: an unexpected restart is a failed
    trial); past `max_attempts` the trial is rolled back. Returns the rollback event, if any."""
    t = st.trial
    assert t is not None
    t["attempts"] = int(t.get("attempts", 0)) + 1
    if t["attempts"] <= max_attempts:
        return None
    bad = st.slots.get(t["slot"])
    reason = f"trial.restart_limit: {t['attempts'] - 1} restart(s) during probation"
    if bad is not None:
        bad.status, bad.reason = "bad", reason
    st.active = t["from"]
    st.trial = None
    st.last_rollback = {"from": t["slot"], "to": st.active, "reason": reason, "at": now_rfc3339()}
    return {"event": "update.rolled_back", "version": bad.version if bad else None, "reason": reason,
            "slot": st.active}


def count_boot(st: State, max_crashes: int, *, alt_verifies: bool, counts: bool = True) -> tuple[dict | None, bool]:
    """A committed model that keeps ending in a crash or a watchdog restart is rolled back while
    the other slot still holds the good model it replaced (RAUC's boot attempts). A start counts
    until the model has served a whole crash window or stopped cleanly; `counts=False` for a start
    that is not evidence against the model (the system rebooted: a power loss, not a crash).
    Returns (the rollback event or None, whether the limit was reached with nowhere to go)."""
    cur = st.slots.get(st.active)
    b = st.boots or {}
    same = b.get("slot") == st.active and cur is not None and b.get("sha256") == cur.sha256
    prior = int(b.get("count", 0)) if same else 0
    count = prior + 1 if counts or not same else max(prior, 1)
    crashes = count - 1
    alt = other(st.active)
    alt_info = st.slots.get(alt)
    event = None
    stuck = False
    if crashes >= max_crashes and cur is not None and alt_info is not None and alt_info.status == "good" \
            and alt_verifies:
        reason = f"crash_loop: {crashes} unclean restart(s) of this model before it served a whole crash window"
        frm = st.active
        cur.status, cur.reason = "bad", reason
        st.active = alt
        st.last_rollback = {"from": frm, "to": alt, "reason": reason, "at": now_rfc3339()}
        event = {"event": "update.rolled_back", "version": cur.version, "to_version": alt_info.version,
                 "slot": alt, "reason": reason, "automatic": True}
        count = 1
    elif crashes >= max_crashes:
        stuck = True
    st.boots = {"slot": st.active, "sha256": (st.slots.get(st.active) or SlotInfo()).sha256, "count": count}
    return event, stuck


def matches(info: SlotInfo | None, ref: object) -> bool:
    """`ref` names this slot's model: its version (an integer) or its sha256 (or a prefix of at
    least 12 hex digits)."""
    if info is None:
        return False
    if isinstance(ref, int) and not isinstance(ref, bool):
        return info.version == ref
    return isinstance(ref, str) and len(ref) >= 12 and bool(info.sha256) and info.sha256.startswith(ref.lower())


def rollback_needed(st: State, *, leave: object = None, to: object = None) -> str | None:
    """Why a conditional rollback has nothing to do (None: it must roll back). A repeated
    `rollback {"leave": 3}` (a QoS 1 redelivery, a second press, a controller's retry) finds v3
    no longer serving and does nothing, instead of toggling back to it."""
    active = st.slots.get(st.active)
    if leave is not None and not matches(active, leave):
        return f"the model to leave ({leave}) is not serving; v{active.version if active else '?'} is"
    if to is not None and matches(active, to):
        return f"v{active.version if active else '?'} ({to}) is already serving"
    return None
