"""Error types with stable codes.

Every error a user can see carries a stable dotted code (``domain.reason``) so scripts and
dashboards can match on it, and a one-line message that names the key, file or field at fault.
The split follows python-tuf: bad remote data (``RemoteDataError``), a transport failure
(``TransportError``) and bad local input (``ConfigError``, ``CommandError``) are different
faults with different remedies.
"""

from __future__ import annotations


class EdgeAgentError(Exception):
    """Base of all errors the agent reports to users."""

    code: str = "agent.error"
    exit_code: int = 1  # the CLI's: 1 refused or failed, 2 the configuration is at fault

    def __init__(self, code: str | None = None, message: str = "", *, exit_code: int | None = None) -> None:
        if code:
            self.code = code
        if exit_code is not None:
            self.exit_code = exit_code
        self.message = message
        super().__init__(f"{self.code}: {message}" if message else self.code)

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message}


class ConfigError(EdgeAgentError):
    """The configuration file or a config.set value is invalid (user's fault, exit code 2)."""

    code = "config.invalid"
    exit_code = 2


class ModelError(EdgeAgentError):
    """A model file cannot be loaded or run."""

    code = "model.invalid"


class SourceError(EdgeAgentError):
    """An input source failed (camera unplugged, file gone, bad sensor data)."""

    code = "input.failed"


class CommandError(EdgeAgentError):
    """A command (MQTT or control socket) is malformed or cannot be carried out."""

    code = "cmd.failed"


class RemoteDataError(EdgeAgentError):
    """Data received from outside (manifest, payload, model) failed verification."""

    code = "update.rejected"


class TransportError(EdgeAgentError):
    """A download or connection failed; retrying later may help."""

    code = "download.failed"


class StateError(EdgeAgentError):
    """The on-disk state refuses an operation (e.g. nothing to roll back to)."""

    code = "state.refused"
