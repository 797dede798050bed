"""The install pipeline, as RAUC's named steps: check, plan, fetch, write and verify, health.

Shared by the live daemon (an `update` command over MQTT or the control socket) and the offline
CLI (`edgeagent install` with no daemon): both call `check` once and then `run`, so a factory
provisioning run exercises the exact code a fleet update does. Nothing is written to a slot
before the manifest and the payload verify, and never to the active slot; the target slot is
marked bad ("installing") before the first byte lands (RAUC: mark the target bad first).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeagent.config import Config
from edgeagent.engine.spec import DelegateSpec
from edgeagent.errors import CommandError
from edgeagent.state import labels, reference
from edgeagent.state.atomic import atomic_write_json
from edgeagent.state.timefloor import TimeFloor, released, utcnow
from edgeagent.update import health as health_mod
from edgeagent.update.encryption import Identity
from edgeagent.update.errors import UpdateRejected
from edgeagent.update.cancel import NEVER, Cancel
from edgeagent.update.keys import load_trusted_keys
from edgeagent.update.manifest import Manifest, verify_envelope
from edgeagent.update.pacing import Pacer
from edgeagent.update.patch import apply_delta, copy_full
from edgeagent.update.source import PayloadSource, TransferReceiver
from edgeagent.update.staging import Staging

log = logging.getLogger("edgeagent.update")
IN_PROCESS_MARK = "health-in-process.json"  # state_dir: an in-process health check under way

Emit = Callable[..., Any]


@dataclass(frozen=True)
class Plan:
    """Where the update goes and what it needs: the target slot (never the active one) and the
    bytes it will write (payload in staging, target in the slot, the health check's frames)."""

    slot: str
    need_bytes: int


@dataclass
class Installed:
    manifest: Manifest
    slot: str
    path: Path
    health: dict


class Installer:
    def __init__(
        self,
        cfg: Config,
        store: Any,
        *,
        emit: Emit,
        progress: Callable[[dict], None] | None = None,
        receiver: TransferReceiver | None = None,
        clock: Callable[[], Any] = utcnow,
        cancel: Cancel = NEVER,
        deadline: float | None = None,
        rate: Callable[[], int] | None = None,
    ) -> None:
        self.cancel = cancel
        self.deadline = deadline  # monotonic; None: update.download_deadline_s from the fetch's start
        self.cfg = cfg
        self.clock = clock
        self.time_floor = TimeFloor(cfg.state_dir)
        self.store = store
        self.staging = Staging(cfg.state_dir)
        self.emit = emit
        self._progress = progress or (lambda p: None)
        self._receiver = receiver
        # update.max_bytes_per_s, read on every chunk (config.set applies to a download under way)
        self.pace = Pacer(rate or (lambda: cfg.update.max_bytes_per_s))
        self.identity: Identity | None = None  # set by check() for an encrypted payload

    def phase(self, phase: str, percent: float | None = None, **extra: Any) -> None:
        p = {"phase": phase, **({"percent": round(percent, 1)} if percent is not None else {}), **extra}
        self._progress(p)

    # -- step 1: check (once: the manifest is verified here and nowhere else) -----------------
    def check(self, envelope: Any) -> Manifest:
        ucfg = self.cfg.update
        trusted = load_trusted_keys(list(ucfg.trusted_keys))
        st = self.store.state()
        highest = (st.high_water or {}).get(self.cfg.model.name) if st else None
        now = self.clock()
        floor = self.time_floor.get()
        m = verify_envelope(envelope, trusted=trusted, threshold=ucfg.threshold,
                            model_name=self.cfg.model.name, highest_version=highest, now=now, time_floor=floor)
        # the wall clock, where it is plausible, keeps the floor near now; the manifest's `created`
        # raises it only when the update commits (a refused manifest never moves it)
        self.time_floor.observe_wall_clock(now, released=released(), max_ahead=timedelta(days=ucfg.clock_max_ahead_days))
        active = st.slots.get(st.active) if st else None
        if m.kind == "delta":
            if active is None or m.base.sha256 != active.sha256:
                have = active.sha256[:12] if active else "nothing"
                raise UpdateRejected("update.wrong_base",
                                     f"delta base {m.base.sha256[:12]} (v{m.base.version}) is not the active model ({have})")
        need = (m.requires or {}).get("delegate")
        spec = DelegateSpec.of(self.cfg.model.delegate)
        if need and (spec is None or spec.name != need):  # before any byte is downloaded
            have = f"this device's is {spec.name!r}" if spec is not None else "this device has none configured"
            raise UpdateRejected("update.accelerator_missing", f"v{m.version} requires the delegate {need!r}; {have}")
        if m.payload.size > ucfg.max_payload_bytes:
            raise UpdateRejected("update.too_large", f"payload {m.payload.size} bytes > max_payload_bytes {ucfg.max_payload_bytes}")
        self.identity = self._identity_for(m)  # before any byte is downloaded
        return m

    def _identity_for(self, m: Manifest) -> Identity | None:
        """An encrypted payload: this device's identity, which must be among its recipients."""
        enc = m.payload.encryption
        if enc is None:
            return None
        path = self.cfg.update.identity
        if not path:
            raise UpdateRejected("update.not_for_this_device", f"v{m.version} is encrypted and this device has no "
                                                               "[update] identity")
        ident = Identity.load(path)
        if ident.id not in enc.recipients:
            raise UpdateRejected("update.not_for_this_device", f"v{m.version} is encrypted to {len(enc.recipients)} "
                                                               f"recipient(s), not to this device ({ident.id})")
        return ident

    # -- step 2: plan -------------------------------------------------------------------------
    def plan(self, m: Manifest, frames: list[np.ndarray]) -> Plan:
        """The target slot and room for everything the update writes: the payload in staging
        (less what a resumed download already holds), the target in the slot, the health check's
        frames file, with 1 MiB to spare."""
        held = 0
        for p in (self.staging.part_path(m.payload.sha256), self.staging.payload_path(m.payload.sha256)):
            try:
                held += p.lstat().st_size
            except OSError:
                pass
        need = max(0, m.payload.size - held) + m.target.size + health_mod.frames_file_bytes(frames) + (1 << 20)
        self.staging.check_space(need)
        return Plan(self.store.inactive_slot(), need)

    # -- step 3: fetch ----------------------------------------------------------------------
    def fetch(self, m: Manifest, src: PayloadSource) -> Path:
        dest = self.staging.payload_path(m.payload.sha256)
        if dest.exists():
            return dest  # verified earlier (a resumed update)
        if src.url:
            def prog(p: dict) -> None:
                self.phase("download", p.get("percent"), bytes=p.get("bytes"), total=p.get("total"))
                self.emit("update.downloading", version=m.version, percent=p.get("percent"), bytes=p.get("bytes"))

            u = self.cfg.update
            from edgeagent.update.fetch import fetch_to_staging  # http.client and ssl: with the first URL

            return fetch_to_staging(src.url, dest=dest, expected_size=m.payload.size,
                                    expected_sha256=m.payload.sha256, max_bytes=u.max_payload_bytes,
                                    progress=prog, stall_s=u.download_stall_s, deadline_s=u.download_deadline_s,
                                    deadline=self.deadline, cancel=self.cancel, pace=self.pace)
        if src.b64 is not None:
            if len(src.b64) > 4 * (m.payload.size // 3 + 1) + 4096:  # don't decode far more than announced
                raise UpdateRejected("update.payload_size", f"payload_b64: {len(src.b64)} characters for "
                                                            f"{m.payload.size} bytes")
            try:
                data = base64.b64decode(src.b64, validate=True)
            except (binascii.Error, ValueError):
                raise UpdateRejected("update.malformed", "payload_b64: not valid base64") from None
            return self.staging.store_bytes(data, expected_size=m.payload.size, expected_sha256=m.payload.sha256)
        if self._receiver is None or src.transfer is None:
            raise CommandError("cmd.bad_args", "args.transfer: chunked transfer needs the MQTT transport")
        u = self.cfg.update
        return self._receiver.receive(src.transfer, m, staging=self.staging, max_chunk=self.cfg.mqtt.max_message_bytes,
                                      stall_s=u.download_stall_s, cancel=self.cancel,
                                      deadline=self.deadline if self.deadline is not None
                                      else time.monotonic() + u.download_deadline_s,
                                      emit=self.emit, progress=self._progress, pace=self.pace)

    # -- steps 4-5: write and verify, health --------------------------------------------------
    def write(self, m: Manifest, plan: Plan, payload: Path) -> tuple[str, Path]:
        st = self.store.state()
        slot = plan.slot
        target = self.store.prepare_target(slot)  # marks the slot bad("installing") first
        self.phase("write", 0.0, slot=slot)
        if m.kind == "delta":
            base = self.store.slot_path(st.active)
            apply_delta(base, m.base.sha256, payload, target, target_sha256=m.target.sha256, target_size=m.target.size,
                        check=self.cancel.check, identity=self.identity,
                        plain_size=m.payload.encryption.size if m.payload.encryption else None)
        else:
            copy_full(payload, target, target_sha256=m.target.sha256, target_size=m.target.size,
                      check=self.cancel.check, identity=self.identity)
        self.phase("write", 100.0, slot=slot)
        return slot, target

    def health(self, m: Manifest, target: Path, frames: list[np.ndarray]) -> health_mod.HealthResult:
        self.phase("health")
        mc = self.cfg.model
        st = self.store.state()
        baseline = str(self.store.slot_path(st.active)) if st and st.slots.get(st.active) else None
        req = health_mod.HealthRequest(
            candidate=str(target), baseline=baseline, frames_file="",
            manifest_io=m.io, max_latency_factor=self.cfg.update.max_latency_factor,
            max_latency_ms=(m.health.max_latency_ms if m.health else None),
            golden=(m.health.golden.to_dict() if m.health and m.health.golden else None),
            backend=mc.backend, num_threads=mc.num_threads, input_mean=mc.input_mean, input_std=mc.input_std,
            delegate=spec.to_dict() if (spec := DelegateSpec.of(mc.delegate)) is not None else None,
        )
        run = lambda: health_mod.check(req, frames, timeout_s=self.cfg.update.health_timeout_s,  # noqa: E731
                                       workdir=self.staging.dir, cancel=self.cancel)  # (in process when exclusive)
        if not (req.delegate and req.delegate.get("exclusive")):
            return run()
        # in the daemon (an exclusive accelerator): a model that crashes the check ends the daemon;
        # the mark says so at the next start, and the resumed update is refused, not retried forever
        mark = Path(self.cfg.state_dir) / IN_PROCESS_MARK
        try:
            if json.loads(mark.read_text()).get("target") == m.target.sha256:
                mark.unlink()
                return health_mod.HealthResult(False, "health.crashed", "the daemon ended during the in-process "
                                                                        "health check of this model (exclusive accelerator)")
        except (OSError, ValueError, AttributeError):
            pass
        atomic_write_json(mark, {"target": m.target.sha256, "version": m.version})
        try:
            return run()
        finally:
            mark.unlink(missing_ok=True)

    def labels_for(self, m: Manifest, res: health_mod.HealthResult) -> tuple[str, ...] | None:
        """The labels that go beside the new model: the manifest's (which must fit its output 0),
        else the serving model's while they still fit (a retrain with the same classes keeps them)."""
        outs = (res.io or {}).get("outputs") or []
        shape = outs[0]["shape"] if outs else []
        if m.labels is not None:
            why = labels.mismatch(m.labels, shape)
            if why:
                raise UpdateRejected("update.labels_mismatch", f"signed.labels: {why}")
            return m.labels
        st = self.store.state()
        names = labels.load_beside(self.store.slot_path(st.active)) if st and st.slots.get(st.active) else None
        if names is not None and labels.mismatch(names, shape):
            log.warning("v%s carries no labels and the serving model's %d do not fit its output 0 %s: it serves "
                        "without labels", m.version, len(names), shape)
            return None
        return names

    def run(self, m: Manifest, src: PayloadSource, frames: list[np.ndarray]) -> Installed:
        """plan -> fetch (verified) -> write and verify the target -> health, for a manifest that
        `check` verified. Raises on refusal."""
        t0 = time.monotonic()
        plan = self.plan(m, frames)
        self.emit("update.received", version=m.version, kind=m.kind, payload_size=m.payload.size)
        self.cancel.check()
        payload = self.fetch(m, src)
        self.cancel.check()
        self.emit("update.verified", version=m.version, sha256=m.payload.sha256, bytes_fetched=self.pace.bytes)
        slot, target = self.write(m, plan, payload)
        self.emit("update.applied", version=m.version, slot=slot, sha256=m.target.sha256)
        self.cancel.check()
        res = self.health(m, target, frames)
        hdict = res.to_dict()
        if not res.ok:
            self.store.mark_bad(slot, f"{res.code}: {res.reason}")
            self.store.set_health(slot, hdict)
            raise UpdateRejected("update.health_failed", f"{res.code}: {res.reason}")
        try:
            names = self.labels_for(m, res)
        except UpdateRejected as e:
            self.store.mark_bad(slot, f"{e.code}: {e.message}")
            raise
        digest = self.store.write_labels(slot, names)  # the slot is still marked bad: a cut here is safe
        reference.write_beside(target, m.monitor)  # no signed reference: the device learns one after the commit
        self.store.record_installed(slot, model=m.model, version=m.version, sha256=m.target.sha256,
                                    size=m.target.size, health=hdict, labels_sha256=digest)
        self.staging.cleanup()
        log.info("v%s installed in slot %s in %.1f s (health: %s ms vs %s ms)", m.version, slot,
                 time.monotonic() - t0, res.latency_ms, res.baseline_ms)
        return Installed(m, slot, target, hdict)
