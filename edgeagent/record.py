"""A base for the dataclasses that are built on the way to the first frame.

Python 3.11's dataclasses compile every method they generate with exec. A frozen class with
eq gets six, and compiling them was most of the 39 ms that the 32 dataclasses on the way to
READY=1 took (the config's 19 sections among them). A class declared
``@dataclass(frozen=True, eq=False, repr=False)`` on top of Record gets its repr, equality and
hash from the three shared methods below, which behave as the generated ones do. It then
compiles only the three that must be its own: __init__, and the frozen __setattr__ and
__delattr__. A mutable one (``@dataclass(eq=False, repr=False)``) sets ``__hash__ = None``,
as dataclasses does for it, and compiles its __init__ only. The config's sections share their
__init__ too (KeywordRecord): the 57 compiles left in the config were 44 M of the 567 M CPU
instructions from exec to READY=1, and its 19 __init__s the largest of them.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any


class Record:
    __slots__ = ()

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr)  # type: ignore[arg-type]
        return f"{type(self).__qualname__}({shown})"

    def __eq__(self, other: Any) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        mine = fields(self)  # type: ignore[arg-type]
        return tuple(getattr(self, f.name) for f in mine if f.compare) == \
            tuple(getattr(other, f.name) for f in mine if f.compare)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, f.name) for f in fields(self)  # type: ignore[arg-type]
                          if (f.compare if f.hash is None else f.hash)))


class KeywordRecord(Record):
    """A frozen Record whose fields all have defaults and are given by keyword (the config's
    sections, built from TOML tables): declared with ``init=False`` too, it shares this __init__
    and compiles only the frozen __setattr__ and __delattr__ of its own."""

    __slots__ = ()

    def __init__(self, **given: Any) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            if f.name in given:
                value = given.pop(f.name)
            elif f.default is not MISSING:
                value = f.default
            else:
                value = f.default_factory()  # type: ignore[misc]
            object.__setattr__(self, f.name, value)
        if given:
            raise TypeError(f"{type(self).__qualname__}.__init__() got an unexpected keyword argument "
                            f"{next(iter(given))!r}")
