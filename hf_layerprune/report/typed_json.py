"""Typed objects of a JSON file that give back exactly what they read (the sections of ``layerprune.json``:
sections.py, report.py).

A ``Section`` is a dataclass whose fields are the keys it models. ``from_dict`` types every value that fits its
field (nested sections too) and keeps the rest in ``other``; ``to_dict`` writes the keys back in the order read,
nulls included, so that an older or newer file passes through unchanged."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any


@dataclass(kw_only=True)
class Section:
    """A typed object of ``layerprune.json``: every key it knows is a field (None when absent), every other key is
    kept in ``other``, so that ``from_dict`` then ``to_dict`` gives back exactly what was read.

    A value whose JSON type does not fit its field (a hand-edited file) is kept in ``other`` too and the field stays
    None: code reading a field can trust its type. ``key_order`` holds the keys as read (None: built by code), so a
    section read from a file is written back with its keys, nulls and order; one built by code writes its fields in
    declaration order, leaving out None unless the field's metadata says ``null=True``. Fields set with ``but``
    are written even when None."""

    other: dict[str, Any] = field(default_factory=dict, repr=False)
    key_order: tuple[str, ...] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def data_fields(cls) -> dict[str, Any]:
        """{field name: resolved type} of the keys this section models."""
        return _hints(cls)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        kwargs, other = {}, {}
        for key, value in data.items():
            tp = cls.data_fields().get(key)
            fits, loaded = _load(tp, value) if tp is not None else (False, None)
            if fits:
                kwargs[key] = loaded
            else:
                other[key] = value
        return cls(**kwargs, other=other, key_order=tuple(data))

    def to_dict(self) -> dict[str, Any]:
        names = self.data_fields()
        out: dict[str, Any] = {}
        for key in self.key_order or ():
            if key in self.other:
                out[key] = self.other[key]
            elif key in names:
                out[key] = _dump(getattr(self, key))
        for f in dataclasses.fields(self):
            if f.name in names and f.name not in out:
                value = getattr(self, f.name)
                if value is not None or (self.key_order is None and f.metadata.get("null")):
                    out[f.name] = _dump(value)
        out.update({k: v for k, v in self.other.items() if k not in out})
        return out

    def but(self, **changes: Any):
        """A copy with ``changes`` (written even when None: they were set)."""
        new = dataclasses.replace(self, **changes)
        if self.key_order is not None:
            new.key_order = self.key_order + tuple(k for k in changes if k not in self.key_order)
        return new

    def __bool__(self) -> bool:
        """False for a section that holds nothing (an empty object in the file), as the dict it replaces was."""
        return bool(self.key_order or self.other) or any(getattr(self, f) is not None for f in self.data_fields())

    def get(self, key: str, default: Any = None) -> Any:
        """A key's value as written (a field or a kept key): for keys named at run time (``f"{stem}_before"``)."""
        value = getattr(self, key) if key in self.data_fields() else self.other.get(key)
        return default if value is None else value


def _null(default: Any = None) -> Any:
    """A field written as null when it is None (code-built sections; read ones keep what they read)."""
    return field(default=default, metadata={"null": True})


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name not in ("other", "key_order")}
    return _HINTS[cls]


def _load(tp: Any, value: Any) -> tuple[bool, Any]:
    """(whether ``value``, read from JSON, fits type ``tp``; the value with its sections typed)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return type(None) in args, None
        for arm in args:
            fits, loaded = _load(arm, value)
            if fits:
                return True, loaded
        return False, None
    if isinstance(tp, type) and issubclass(tp, (Section, MappingSection)):
        return (True, tp.from_dict(value)) if isinstance(value, dict) else (False, None)
    if origin is list:
        if not isinstance(value, list):
            return False, None
        items = [_load(args[0] if args else Any, v) for v in value]
        return (True, [v for _, v in items]) if all(ok for ok, _ in items) else (False, None)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            return False, None
        items = {k: _load(args[1] if args else Any, v) for k, v in value.items()}
        return (True, {k: v for k, (_, v) in items.items()}) if all(ok for ok, _ in items.values()) else (False, None)
    if tp is float:
        return (not isinstance(value, bool) and isinstance(value, (int, float))), value
    if tp is int:
        return (not isinstance(value, bool) and isinstance(value, int)), value
    return isinstance(value, tp), value


def _dump(value: Any) -> Any:
    if isinstance(value, (Section, MappingSection)):
        return value.to_dict()
    if isinstance(value, list):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


@dataclass(kw_only=True)
class MappingSection:
    """A section that is one mapping of names chosen at run time (library versions, seconds per stage)."""

    items: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return cls(items=dict(data))

    def to_dict(self) -> dict[str, Any]:
        return dict(self.items)


def _typed(cls: type, data: dict[str, Any], keys: tuple[str, ...], other: dict[str, Any]) -> dict[str, Any]:
    """{key: typed value} of the `keys` of `data` that fit their field of dataclass `cls`; the others go to `other`."""
    hints = typing.get_type_hints(cls)
    out = {}
    for key in keys:
        if key in data:
            fits, value = _load(hints[key], data[key])
            if fits:
                out[key] = value
            else:
                other[key] = data[key]
    return out
