"""edgeagent: run LiteRT models on edge devices, report true figures, update models safely."""

__version__ = "0.1.0"
