"""paho.mqtt.client, imported without loading urllib.request until something uses it.

paho 2.x imports urllib.request at module level for one thing: reading an `mqtt_proxy`
environment variable, which it does only when PySocks is installed (not one of our
dependencies). urllib.request pulls in http.client and the email package: 2.3 MiB of a daemon's
RSS on a board with 512 MiB, for nothing. So before paho is imported, sys.modules gets a stand-in
for urllib.request that imports the real module on its first attribute access (the HTTP
fetcher's first update, or paho's proxy lookup with PySocks) and from then on is a copy of it.
(importlib.util.LazyLoader cannot do this: an `import` statement reads the lazy module's
__spec__, which loads it.) When something already imported urllib.request, nothing changes.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
import urllib

_lock = threading.Lock()


class _Deferred(types.ModuleType):
    """Stands in for a module until an attribute it does not have is read."""

    def __getattr__(self, attr: str) -> object:
        if attr.startswith("__"):  # the import machinery's probes (__path__, __file__...)
            raise AttributeError(attr)
        with _lock:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
            real = importlib.import_module(self.__name__)  # sets the parent package's attribute
            self.__dict__.update({k: v for k, v in vars(real).items() if k not in vars(self)})
        return getattr(real, attr)


def _defer(name: str) -> None:
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None:
        return
    module = _Deferred(name)
    module.__spec__ = spec
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    setattr(sys.modules[parent], child, module)


_defer("urllib.request")

import paho.mqtt.client as mqtt  # noqa: E402 - after the deferral above

__all__ = ["mqtt"]
