"""Why an update is refused: one stable code per reason (CONTRACT section 5).

Each is an `update.rejected` event and an error reply carrying the code. Bad remote data is
RemoteDataError (do not retry the same bundle); a failed download is TransportError
(`download.failed`, retrying may help).
"""

from __future__ import annotations

from edgeagent.errors import RemoteDataError

CODES = {
    "update.malformed": "the manifest (or a payload encoding) does not follow the schema",
    "update.too_deep": "the manifest's JSON nests deeper than the verifier's bound (16 levels)",
    "update.number_range": "the manifest holds a number out of range (beyond 64 bits, NaN or Infinity)",
    "update.url_refused": "a file:// payload URL in an update that came over MQTT (update.allow_file_urls is off)",
    "update.cancelled": "the update was cancelled by a `cancel` (or a `rollback`) command",
    "update.wrong_model": "the manifest is for another model than this device's model.name",
    "update.bad_signature": "a signature claiming a trusted key does not verify",
    "update.unknown_key": "no signature is from a trusted key",
    "update.threshold": "fewer valid signatures from distinct trusted keys than update.threshold",
    "update.expired": "the manifest's expires time has passed",
    "update.clock_unsynced": "the wall clock is below the time this device has already seen (no RTC, no NTP yet) "
                             "and the manifest expired before that time",
    "update.downgrade": "the version is below the highest ever installed (anti-rollback)",
    "update.replay": "the version equals the highest ever installed",
    "update.wrong_base": "the delta's base is not the active model",
    "update.too_large": "the payload is larger than update.max_payload_bytes",
    "update.no_space": "not enough free space in state_dir for the payload and the new model",
    "update.payload_size": "the payload's size differs from the manifest",
    "update.payload_hash": "the payload's sha256 differs from the manifest",
    "update.target_hash": "the patched or copied model's sha256 or size differs from the manifest",
    "update.bad_patch": "bsdiff4 refused the patch",
    "update.health_failed": "the new model failed its health check; the message starts with which: "
                            "health.load_failed, health.io_mismatch, health.invoke_failed, health.nonfinite, "
                            "health.too_slow, health.golden_failed, health.golden_invalid, health.timeout, "
                            "health.crashed, health.out_of_memory",
    "update.busy": "another update is in progress, or a model is on trial",
    "download.failed": "the payload could not be downloaded (transport error; retry)",
}

# Why a trial was rolled back (update.rolled_back `reason` starts with one of these).
PROBATION_CODES = {
    "probation.errors": "the new model raised at invoke",
    "probation.nonfinite": "the new model produced NaN or Inf",
    "probation.too_slow": "paired invoke ratio against the previous model above update.max_latency_factor, "
                          "or p50 above the manifest's max_latency_ms",
    "probation.disagreement": "outputs agreed with the previous model on fewer frames than health.min_agreement_pct",
    "probation.stalled": "the inference loop stayed inside the new model past the stall limit",
    "trial.restart_limit": "the daemon restarted during the trial more than update.max_trial_attempts times",
    "crash_loop": "a committed model ended in a crash, hang or watchdog restart update.max_crash_restarts times "
                  "before it served a whole update.crash_window_s",
}


class UpdateRejected(RemoteDataError):
    code = "update.rejected"
