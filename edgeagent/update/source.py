"""Where an update's payload comes from: one interface for a URL (http, https, file), an inline
base64 payload and a chunked MQTT transfer.

`PayloadSource` is the parsed, allowed request; `TransferReceiver` owns chunk delivery for the
MQTT transfer (the transport enqueues chunks here; the installer's fetch step waits on them), so
the update manager never sees a chunk.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgeagent.errors import CommandError, TransportError
from edgeagent.update import transfer as transfer_mod
from edgeagent.update.cancel import Cancel
from edgeagent.update.errors import UpdateRejected
from edgeagent.update.staging import Staging
from edgeagent.update.pacing import Pacer
from edgeagent.update.transfer import Announce

log = logging.getLogger("edgeagent.update")

TRANSFER_REREQUEST_S = 2.0


@dataclass(frozen=True)
class PayloadSource:
    """Where the payload comes from: exactly one of url, b64, transfer."""

    url: str | None = None
    b64: str | None = None
    transfer: Announce | None = None

    @classmethod
    def from_args(cls, args: dict, *, allow_file: bool = True) -> "PayloadSource":
        """allow_file: False for updates that came over MQTT (unless update.allow_file_urls), so no
        message can make the daemon open a local path."""
        given = [k for k in ("payload_url", "payload_b64", "transfer") if args.get(k) is not None]
        if len(given) != 1:
            raise CommandError("cmd.bad_args", "args: give exactly one of payload_url, payload_b64, transfer")
        if given[0] == "payload_url":
            url = args["payload_url"]
            scheme = url.split(":", 1)[0].lower() if isinstance(url, str) else None
            if scheme not in ("http", "https", "file") or len(url) > 8192:
                raise CommandError("cmd.bad_args", "args.payload_url: must be an http, https or file URL")
            if scheme == "file" and not allow_file:
                raise UpdateRejected("update.url_refused", "args.payload_url: file:// URLs are not accepted over MQTT "
                                                           "(update.allow_file_urls = false)")
            return cls(url=url)
        if given[0] == "payload_b64":
            if not isinstance(args["payload_b64"], str):
                raise CommandError("cmd.bad_args", "args.payload_b64: must be a base64 string")
            return cls(b64=args["payload_b64"])
        return cls(transfer=Announce.from_args(args["transfer"]))

    @property
    def transfer_id(self) -> str | None:
        return self.transfer.id if self.transfer else None

    def to_args(self) -> dict:
        if self.url:
            return {"payload_url": self.url}
        if self.b64 is not None:
            return {"payload_b64": self.b64}
        assert self.transfer is not None
        return {"transfer": self.transfer.to_args()}


class TransferReceiver:
    """Chunks of the announced MQTT transfer, from the transport's thread to the fetch step.

    `on_chunk` only enqueues, bounded in bytes (what does not fit is dropped and asked for
    again); `receive` assembles the payload in staging, re-requesting what is missing."""

    def __init__(self, max_buffer_bytes: int, *, stop: threading.Event) -> None:
        self._inbox = transfer_mod.ChunkInbox(max_buffer_bytes)
        self._stop = stop

    def on_chunk(self, transfer_id: str, index: int, data: bytes) -> None:
        self._inbox.put(transfer_id, index, data)

    def expect(self, transfer_id: str | None) -> None:
        """Keep the chunks of this transfer from now on (they may come while the manifest is
        checked); None: keep none."""
        self._inbox.activate(transfer_id)

    def receive(self, ann: Announce, m: Any, *, staging: Staging, max_chunk: int, stall_s: float, cancel: Cancel,
                deadline: float, emit: Callable[..., Any], progress: Callable[[dict], None],
                pace: Pacer | None = None) -> Path:
        ann.check(m.payload.size, max_chunk)
        dest = staging.payload_path(m.payload.sha256)
        tr = transfer_mod.begin(staging.dir, ann, m.payload.size, m.payload.sha256)
        self._inbox.activate(ann.id)
        try:
            last_progress = time.monotonic()
            last_request = 0.0
            last_pct = -1.0
            bad_seen = 0
            while not tr.complete:
                cancel.check()
                if self._stop.is_set():
                    raise TransportError("download.failed", "stopped while waiting for chunks")
                item = self._inbox.get(timeout=0.2)
                now = time.monotonic()
                if item is not None and tr.add(*item):
                    last_progress = now
                    if pace is not None:
                        pace.count(len(item[1]))
                    p = tr.progress()
                    if p["percent"] - last_pct >= 1.0 or tr.complete:
                        last_pct = p["percent"]
                        progress(p)
                        emit("update.downloading", version=m.version, percent=p["percent"], bytes=p["bytes"],
                             transfer=ann.id)
                if tr.bad > bad_seen:
                    log.warning("transfer %s: %d chunk(s) dropped (wrong index, size or sha256)", ann.id,
                                tr.bad - bad_seen)
                    bad_seen = tr.bad
                if not tr.complete and now - max(last_progress, last_request) >= TRANSFER_REREQUEST_S:
                    last_request = now
                    # with update.max_bytes_per_s, ask again for no more than the cap allows until the next ask
                    ask = 512 if pace is None or not pace.rate else \
                        max(1, min(512, int(pace.rate * TRANSFER_REREQUEST_S) // ann.chunk_size))
                    emit("update.transfer", id=ann.id, missing=tr.missing(ask), missing_count=tr.missing_count,
                         chunks=ann.chunks, bad_chunks=tr.bad)
                if now - last_progress > stall_s:
                    raise TransportError("download.failed", f"transfer {ann.id}: no chunk for {stall_s:.0f} s")
                if now > deadline:
                    raise TransportError("download.timeout", f"transfer {ann.id}: not complete by the download deadline")
            return tr.assemble(dest)
        finally:
            self._inbox.activate(None)
            tr.close()
