"""Why an update is refused: one stable code per reason (CONTRACT section 5).

Each is an `update.rejected` event and an error reply carrying the code. Bad remote data is
RemoteDataError (do not retry the same bundle); a failed download is TransportError
(`download.failed`, retrying may help).
"""

from __future__ import annotations

from edgeagent.errors import RemoteDataError

CODES = {
    "update.malformed": "the manifest (or a payload encoding) does not follow the schema",
    "update.wrong_model": "the manifest is for another model than this device's model.name",
    "update.bad_signature": "a signature claiming a trusted key does not verify",
    "update.unknown_key": "no signature is from a trusted key",
    "update.threshold": "fewer valid signatures from distinct trusted keys than update.threshold",
    "update.expired": "the manifest's expires time has passed",
    "update.downgrade": "the version is below the highest ever installed (anti-rollback)",
    "update.replay": "the version equals the highest ever installed",
    "update.wrong_base": "the delta's base is not the active model",
    "update.too_large": "the payload is larger than update.max_payload_bytes",
    "update.no_space": "not enough free space in state_dir for the payload and the new model",
    "update.payload_size": "the payload's size differs from the manifest",
    "update.payload_hash": "the payload's sha256 differs from the manifest",
    "update.target_hash": "the patched or copied model's sha256 or size differs from the manifest",
    "update.bad_patch": "bsdiff4 refused the patch",
    "update.health_failed": "the new model failed its health check (reason says which)",
    "update.busy": "another update is in progress, or a model is on trial",
    "download.failed": "the payload could not be downloaded (transport error; retry)",
}


class UpdateRejected(RemoteDataError):
    code = "update.rejected"
