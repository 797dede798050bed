"""What a rollout's results say, and what the controller should do next: pure functions.

`tally` counts the devices of the current step by their retained results; `decide` applies the
criteria: halt when the failure share of the executed devices is above --max-failure-pct (once
at least --min-executed have a result, or every device of the step has), advance when every
device of the step has a final result or has timed out and the soak has passed, complete at the
last step. A device that timed out counts as failed: a device that does not answer may be one
that does not come back. A result that arrives after the timeout replaces it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgeagent.fleet.rollout_doc import FINAL, DeviceResult, RolloutDoc, is_member


@dataclass(frozen=True)
class Tally:
    members: tuple  # known devices in the current step
    committed: tuple = ()
    refused: tuple = ()
    rolled_back: tuple = ()
    timed_out: tuple = ()
    in_progress: tuple = ()  # started or on trial
    waiting: tuple = ()  # in the step, no result yet
    overdue: tuple = ()  # no final result past the device timeout, not yet marked timed out
    drifted: tuple = ()  # committed, but its first window's class PSI is over --max-drift-psi
    codes: dict = field(default_factory=dict)  # a failed device -> the reason code it gave (update.replay, ...)

    @property
    def executed(self) -> int:
        return len(self.committed) + len(self.failed)  # (drifted devices are not in committed)

    @property
    def failed(self) -> tuple:
        return self.refused + self.rolled_back + self.timed_out + self.drifted

    @property
    def failure_pct(self) -> float:
        return 100.0 * len(self.failed) / self.executed if self.executed else 0.0

    @property
    def settled(self) -> bool:
        return not self.in_progress and not self.waiting and not self.overdue

    def to_json(self) -> dict:
        return {"members": len(self.members), "committed": len(self.committed), "refused": len(self.refused),
                "rolled_back": len(self.rolled_back), "timed_out": len(self.timed_out), "drifted": len(self.drifted),
                "in_progress": len(self.in_progress), "waiting": len(self.waiting), "executed": self.executed,
                "failure_pct": round(self.failure_pct, 1),
                "devices": {"committed": list(self.committed), "refused": list(self.refused),
                            "rolled_back": list(self.rolled_back), "timed_out": list(self.timed_out),
                            "drifted": list(self.drifted),
                            "in_progress": list(self.in_progress), "waiting": list(self.waiting)},
                "codes": dict(self.codes)}

    def named(self, devices: tuple) -> str:
        """`dev1 (update.replay), dev2 (probation.too_slow)`: whom, and why."""
        return ", ".join(f"{d} ({self.codes[d]})" if self.codes.get(d) else d for d in devices) or "none"

    def line(self) -> str:
        drifted = f"{len(self.drifted)} drifted, " if self.drifted else ""
        return (f"{len(self.committed)} committed, {len(self.refused)} refused, {len(self.rolled_back)} rolled back, "
                f"{drifted}{len(self.timed_out)} timed out, {len(self.in_progress)} in progress, "
                f"{len(self.waiting)} waiting (of {len(self.members)})")


def tally(doc: RolloutDoc, group_devices: list[str], results: dict[str, DeviceResult | None], now: float) -> Tally:
    """Count the step's devices: those of the group (their retained status names it) that the hash
    or the canary list puts in or that answered for this rollout, and the listed canaries. An answer from any other device is not
    counted: anyone on the broker can publish a retained `P/rollout` for a device id it makes up,
    and one forged "refused" must not halt a rollout."""
    known = set(group_devices) | set(doc.canary)
    answered = {d for d, r in results.items() if r is not None and r.answers(doc)}
    members = sorted(d for d in known if is_member(doc, d) or d in answered)  # a halt sets the percentage to 0
    out: dict[str, list[str]] = {k: [] for k in ("committed", "refused", "rolled_back", "timed_out", "in_progress",
                                                 "waiting", "overdue", "drifted")}
    max_psi = doc.criteria.max_drift_psi
    late = doc.phase_started_at and now - doc.phase_started_at > doc.criteria.device_timeout_s
    codes: dict[str, str] = {}
    for d in members:
        r = results.get(d)
        r = r if r is not None and r.answers(doc) else None
        psi = (r.quality or {}).get("psi_class") if r is not None else None
        # with --max-drift-psi a commit is final only with its first window's class PSI
        final = r is not None and r.result in FINAL and not (r.result == "committed" and max_psi is not None
                                                             and psi is None)
        if final and r.result == "committed" and max_psi is not None and psi > max_psi:
            out["drifted"].append(d)  # it committed healthy but predicts a different world
            codes[d] = "quality.drift"
        elif final:
            out[r.result].append(d)
            if r.result != "committed":
                codes[d] = r.code or (r.reason or "").split(":", 1)[0].split(" ", 1)[0] or r.result
        elif d in doc.timed_out:
            out["timed_out"].append(d)
        elif late:
            out["overdue"].append(d)
        else:
            out["in_progress" if r is not None else "waiting"].append(d)
    for d in out["timed_out"]:
        codes[d] = "rollout.timed_out"
    return Tally(members=tuple(members), **{k: tuple(v) for k, v in out.items()}, codes=codes)


@dataclass(frozen=True)
class Decision:
    action: str  # wait | advance | halt | complete | time_out
    reason: str = ""
    devices: tuple = field(default=())  # time_out: the devices to mark


def decide(doc: RolloutDoc, t: Tally, now: float, settled_since: float | None) -> Decision:
    c = doc.criteria
    if t.overdue:
        return Decision("time_out", f"no result within {c.device_timeout_s:.0f} s", t.overdue)
    enough = t.executed >= min(c.min_executed, len(t.members))
    if enough and t.executed and t.failure_pct > c.max_failure_pct:
        return Decision("halt", f"{len(t.failed)} of {t.executed} failed ({t.failure_pct:.0f}% > "
                                f"{c.max_failure_pct:g}%): refused {t.named(t.refused)}; rolled back "
                                f"{t.named(t.rolled_back)}; timed out {t.named(t.timed_out)}"
                                + (f"; drifted {t.named(t.drifted)}" if t.drifted else ""))
    if not t.settled or not enough:
        return Decision("wait")
    if settled_since is None or now - settled_since < c.soak_s:
        return Decision("wait", f"soaking {c.soak_s:g} s")
    if doc.phase >= len(doc.plan) - 1:
        return Decision("complete", f"{len(t.committed)} committed, {len(t.failed)} failed")
    return Decision("advance", f"step {doc.phase + 1} done: {t.line()}")
