"""Placeholder until the update orchestrator lands: the daemon runs, updates are refused."""

from __future__ import annotations

from typing import Any

from edgeagent.errors import StateError


class UpdateManager:
    def __init__(self, agent: Any) -> None:
        self.agent = agent

    def register(self, dispatcher: Any) -> None:
        dispatcher.register("slots", lambda args, ctx: self.agent.store.slots_table())

    def resume(self, plan: Any) -> None:
        pass

    def trial_status(self) -> dict | None:
        st = self.agent.store.state()
        return st.trial if st else None

    def progress(self) -> dict | None:
        return None

    def on_chunk(self, transfer_id: str, index: int, data: bytes) -> None:
        raise StateError("update.unsupported", "updates are not available yet")

    def stop(self) -> None:
        pass
