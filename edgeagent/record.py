"""A base for the dataclasses that are built on the way to the first frame.

Python 3.11's dataclasses compile every method they generate with exec. A frozen class with
eq gets six, and compiling them was most of the 39 ms that the 32 dataclasses on the way to
READY=1 took (the config's 19 sections among them). A class declared
``@dataclass(frozen=True, eq=False, repr=False)`` on top of Record gets its repr, equality and
hash from the three shared methods below, which behave as the generated ones do. It then
compiles only the three that must be its own: __init__, and the frozen __setattr__ and
__delattr__. A mutable one (``@dataclass(eq=False, repr=False)`` on MutableRecord) is
unhashable, as dataclasses makes it, and compiles its __init__ only. The config's sections share their
__init__ too (KeywordRecord): the 57 compiles left in the config were 44 M of the 567 M CPU
instructions from exec to READY=1, and its 19 __init__s the largest of them; they now share the
frozen __setattr__ and __delattr__ as well (keyword_dataclass) and compile nothing.
"""

from __future__ import annotations

from dataclasses import MISSING, FrozenInstanceError, dataclass, fields
from typing import Any, Callable


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


class MutableRecord(Record):
    """A Record whose fields change (state.json's records): unhashable, as a generated
    dataclass with eq and without frozen is."""

    __slots__ = ()
    __hash__ = None  # type: ignore[assignment]


class KeywordRecord(Record):
    """A frozen Record whose fields all have defaults and are given by keyword (the config's
    sections, built from TOML tables). Declared with ``keyword_dataclass`` (below), it shares
    this __init__ and the frozen __setattr__ and __delattr__, and compiles nothing of its own."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

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


def keyword_dataclass(*, frozen: bool, init: bool, eq: bool, repr: bool) -> Callable[[type], type]:
    """``dataclass(frozen=True, init=False, eq=False, repr=False)`` for a KeywordRecord, which
    config.py uses under that name: type checkers read a frozen dataclass, and at run time the
    class is one without compiling a frozen __setattr__ and __delattr__ of its own (38 exec
    compiles for the 19 sections, 22 M instructions importing the config): KeywordRecord's
    raise the same FrozenInstanceError."""
    if not frozen or init or eq or repr:
        raise TypeError("keyword_dataclass: frozen=True, init=False, eq=False, repr=False only")

    def wrap(cls: type) -> type:
        if not issubclass(cls, KeywordRecord):
            raise TypeError(f"keyword_dataclass: {cls.__qualname__} is not a KeywordRecord")
        cls = dataclass(init=False, eq=False, repr=False)(cls)
        cls.__dataclass_params__.frozen = True  # type: ignore[attr-defined]  # as it behaves
        return cls

    return wrap
