"""edgeagent: run LiteRT models on edge devices, report true figures, update models safely."""

__version__ = "0.1.0"
# when this version was made: a time every device running it knows has passed (the time floor
# persists no wall clock far beyond it or beyond the newest committed update)
RELEASED = "2026-12-01T00:00:00Z"
