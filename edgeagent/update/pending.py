"""The unfinished update, remembered on disk so a restart resumes it and answers its request.

`staging/pending-update.json` holds the signed manifest, where the payload comes from, the
request id and reply route, and the wall-clock deadline (a restart does not reset it). It is
written when the manifest has verified and removed when the update ends either way. A file that
does not parse is removed with one log line: it is a hint for resuming, never trusted for a
decision (the manifest is verified again when the update resumes).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeagent.errors import CommandError, EdgeAgentError
from edgeagent.state.atomic import atomic_write_json
from edgeagent.update.source import PayloadSource

log = logging.getLogger("edgeagent.update")


def pending_path(state_dir: str | os.PathLike) -> Path:
    return Path(state_dir) / "staging" / "pending-update.json"


def is_pending(state_dir: str | os.PathLike) -> bool:
    """An update is under way or will resume at the next start (the rollout follower asks)."""
    return pending_path(state_dir).exists()


@dataclass(frozen=True)
class Resumable:
    manifest: dict
    source: PayloadSource
    version: Any
    request: dict | None  # {"id", "source", "route"} of the request to answer
    left_s: float | None  # of the download deadline, None when unknown
    payload_sha256: str  # "" when the manifest does not name a well-formed one


class PendingUpdate:
    def __init__(self, state_dir: str | os.PathLike) -> None:
        self.file = pending_path(state_dir)

    def remember(self, manifest: dict, src: PayloadSource, version: int, request: dict | None,
                 deadline: float) -> None:
        if src.b64 is not None:
            return  # the command itself carries the payload; nothing to resume
        self.file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.file, {"manifest": manifest, "source": src.to_args(), "version": version,
                                      "request": request,
                                      "deadline_at": round(time.time() + deadline - time.monotonic(), 3)},
                          mode=0o600)

    def forget(self) -> None:
        try:
            self.file.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:  # a full or read-only disk: the next start finds it and re-verifies
            log.warning("could not remove %s: %s", self.file, e)

    def load(self) -> Resumable | None:
        """The update to resume, or None (nothing pending, or a file that is not one: removed)."""
        try:
            pending = json.loads(self.file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError) as e:
            log.error("%s unreadable (%s); removed", self.file, e)
            self.forget()
            return None
        try:
            if not isinstance(pending, dict) or not isinstance(pending.get("manifest"), dict) \
                    or not isinstance(pending.get("source"), dict):
                raise CommandError("cmd.bad_args", "expected {manifest, source}")
            src = PayloadSource.from_args(pending["source"])  # allowed when it was accepted
        except EdgeAgentError as e:
            log.error("%s is not a resumable update (%s); removed", self.file, e.message)
            self.forget()
            return None
        deadline_at = pending.get("deadline_at")
        left = (deadline_at - time.time()) if isinstance(deadline_at, (int, float)) else None
        signed = pending["manifest"].get("signed")
        payload = (signed.get("payload") or {}) if isinstance(signed, dict) else {}
        sha = payload.get("sha256") if isinstance(payload, dict) and isinstance(payload.get("sha256"), str) else ""
        req = pending.get("request")
        return Resumable(pending["manifest"], src, pending.get("version"),
                         req if isinstance(req, dict) and isinstance(req.get("id"), str) else None,
                         left, sha if len(sha) == 64 and sha.isalnum() else "")
