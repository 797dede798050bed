"""Logging: journald with structured fields when systemd-python is there, else plain stderr.

Under systemd, stderr lands in the journal anyway (JOURNAL_STREAM is set), so the plain format
drops the timestamp the journal adds itself.
"""

from __future__ import annotations

import logging
import os
import sys


def setup(level: str = "info") -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    handler: logging.Handler | None = None
    if os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"):
        try:
            from systemd.journal import JournalHandler  # type: ignore

            handler = JournalHandler(SYSLOG_IDENTIFIER="edgeagent")
        except Exception:  # noqa: BLE001 - the extra is optional
            handler = None
        fmt = "%(levelname)s %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(fmt, "%H:%M:%S"))
    root.addHandler(handler)
    for noisy in ("paho", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
