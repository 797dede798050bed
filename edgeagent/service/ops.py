"""The daemon's own commands: ping, status, config.get, config.set (the updater registers its own)."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from edgeagent import __version__
from edgeagent import config as config_mod
from edgeagent.config import Config
from edgeagent.control.dispatcher import Dispatcher, require
from edgeagent.errors import ConfigError

log = logging.getLogger("edgeagent")


def register(d: Dispatcher, *, status: Callable[[], dict], get_config: Callable[[], Config],
             set_config: Callable[[Config, str], None]) -> None:
    d.register("ping", lambda args, ctx: {"pong": True, "agent": __version__, "ts": round(time.time(), 3)})
    d.register("status", lambda args, ctx: status())

    def config_get(args: dict, ctx: Any) -> dict:
        key = require(args, "key", str, optional=True)
        cfg = get_config()
        if key is None:
            return {"config": config_mod.to_dict(cfg), "tunable": list(config_mod.RUNTIME_TUNABLE)}
        return {"key": key, "value": config_mod.get_key(cfg, key)}

    def config_set(args: dict, ctx: Any) -> dict:
        key = require(args, "key", str)
        if "value" not in args:
            raise ConfigError("cmd.bad_args", "args.value: required")
        cfg = get_config()
        new = config_mod.with_key(cfg, key, args["value"])
        old_value = config_mod.get_key(cfg, key)
        set_config(new, key)
        value = config_mod.get_key(new, key)
        log.info("config.set %s: %r -> %r (until restart)", key, old_value, value)
        return {"key": key, "value": value, "previous": old_value, "persisted": False}

    d.register("config.get", config_get)
    d.register("config.set", config_set)
