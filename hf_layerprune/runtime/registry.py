"""One ``Registry`` type for every pluggable kind (architectures, metrics, healers, calibration sources, the card's
bibliography) and one option syntax.

An entry is any object with a ``name``; the registry reads the facts about it from the entry itself, so that
adding one is one new file (docs/architecture.md, "Registries"):

- ``summary``: one line, what it does (the card's method description, the docs tables);
- ``citations``: keys of ``card/bibliography.json`` (the card's references);
- ``tags``: model-card tags;
- ``capabilities``: a set of words the pipeline selects routes by (``streamable``, ``config_only``,
  ``needs_base``, ``trained``, ...);
- ``options``: a dataclass of the entry's options (defaults, ``name: text`` help lines in its docstring, each
  number's allowed range and each word's choices declared with ``option(...)``), filled from
  ``NAME:key=value,key=value`` by ``build_options``, which checks types and ranges before any work;
  ``option_defaults`` lists them;
- ``aliases``: other names it answers to.

A second entry under a taken name is refused (``ValueError``: a programming error, not user input).
``registered(entry)`` adds one for the duration of a ``with`` block (tests).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any, Generic, Iterator, TypeVar

from hf_layerprune.runtime.errors import ConfigError

T = TypeVar("T")


class Registry(Mapping, Generic[T]):
    """Entries by name, in registration order. ``kind`` names it in errors (``--metric``, ``--heal``, ...);
    ``extra`` are names the flag accepts that are no entry (``none`` for ``--heal``)."""

    def __init__(self, kind: str, flag: str, extra: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.flag = flag
        self.extra = extra
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    # ------------------------------------------------------------------------ registering
    def register(self, entry: T) -> T:
        """Add ``entry`` (also usable as a class decorator); a name or alias that is taken is refused."""
        name = entry_name(entry)
        for key in (name, *getattr(entry, "aliases", ())):
            if key in self._entries or key in self._aliases or key in self.extra:
                raise ValueError(f"{self.kind} {key!r} is already registered")
        self._entries[name] = entry
        for alias in getattr(entry, "aliases", ()):
            self._aliases[alias] = name
        return entry

    def unregister(self, name: str) -> T:
        entry = self._entries.pop(name)
        for alias in [a for a, n in self._aliases.items() if n == name]:
            del self._aliases[alias]
        return entry

    @contextmanager
    def registered(self, entry: T) -> Iterator[T]:
        """``with METRICS.registered(Toy):`` the entry is known inside the block only."""
        self.register(entry)
        try:
            yield entry
        finally:
            self.unregister(entry_name(entry))

    # ------------------------------------------------------------------------ reading
    def __getitem__(self, name: str) -> T:
        return self._entries[self._aliases.get(name, name)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def names(self, *, aliases: bool = False) -> list[str]:
        return [*self._entries, *self._aliases] if aliases else list(self._entries)

    def choices(self) -> list[str]:
        """What the flag accepts, for help texts and errors: the extra names, then the entries."""
        return [*self.extra, *self._entries]

    def get_entry(self, name: str) -> T:
        """The entry called ``name``; a one-line ConfigError naming the valid choices otherwise."""
        if name not in self:
            raise ConfigError(f"unknown {self.flag} {name!r}; use one of {', '.join(self.choices())}")
        return self[name]

    def with_capability(self, capability: str) -> tuple[str, ...]:
        return tuple(n for n, e in self._entries.items() if capability in capabilities(e))

    def has(self, name: str, capability: str) -> bool:
        """Whether the entry named by ``name`` (or a ``NAME:options`` spec) has ``capability``."""
        key = split_spec(name)[0] if isinstance(name, str) else name
        return key in self and capability in capabilities(self[key])

    def parse(self, spec: str) -> tuple[T, Any]:
        """``NAME[:key=value,...]`` -> (entry, its options dataclass filled and checked)."""
        name, raw = split_spec(spec, self.flag)
        entry = self.get_entry(name)
        return entry, build_options(options_of(entry), f"{self.flag} {name}", raw)


def entry_name(entry: Any) -> str:
    name = getattr(entry, "name", None) or getattr(entry, "model_type", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{entry!r} has no name to register under")
    return name


def capabilities(entry: Any) -> frozenset[str]:
    return frozenset(getattr(entry, "capabilities", ()) or ())


def options_of(entry: Any) -> type | None:
    return getattr(entry, "options", None) if dataclasses.is_dataclass(getattr(entry, "options", None)) else None


# ---------------------------------------------------------------------------------------- one option syntax
_SEPARATOR = re.compile(r",|:(?=\s*[A-Za-z_][\w-]*\s*=)")  # `,`, or a `:` that starts the next key=value


def split_spec(spec: str, flag: str = "") -> tuple[str, dict[str, str]]:
    """``distill:temperature=2,alpha=0.5`` -> ("distill", {"temperature": "2", "alpha": "0.5"}).

    One syntax for every registry: ``NAME:key=value,key=value``; ``NAME:key=value:key=value`` (the old metric form)
    is read the same. Dashes in keys become underscores."""
    name, _, rest = str(spec).strip().partition(":")
    raw: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in _SEPARATOR.split(rest))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            where = f" in {flag} {spec!r}" if flag else f" in {spec!r}"
            raise ConfigError(f"cannot read option {item!r}{where}; write NAME:key=value,key=value")
        raw[key.strip().replace("-", "_")] = value.strip()
    return name.strip(), raw


def option_defaults(cls: type | None) -> str:
    """``key=default, ...`` of an options dataclass (the help's list), empty for none."""
    if cls is None or not dataclasses.is_dataclass(cls):
        return ""
    return ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(cls)
                     if f.init and f.default is not dataclasses.MISSING)


# ------------------------------------------------------------------------------ declared ranges of options
@dataclasses.dataclass(frozen=True)
class Bounds:
    """What values an option accepts: numbers within [at_least, at_most] and above `above` / below `below`;
    words among `one_of`. None (for an optional field) is always accepted."""

    at_least: float | None = None
    at_most: float | None = None
    above: float | None = None
    below: float | None = None
    one_of: tuple[str, ...] | None = None

    def refusal(self, value: Any) -> str | None:
        """Why `value` is refused (`must be ...`), or None."""
        if value is None:
            return None
        if self.one_of is not None:
            return None if value in self.one_of else f"must be one of {', '.join(self.one_of)}"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            return "must be a number"
        parts = [(self.at_least, lambda v, b: v >= b, "at least"), (self.above, lambda v, b: v > b, "more than"),
                 (self.at_most, lambda v, b: v <= b, "at most"), (self.below, lambda v, b: v < b, "less than")]
        wanted = [f"{word} {bound:g}" for bound, ok, word in parts if bound is not None]
        if any(bound is not None and not ok(value, bound) for bound, ok, _ in parts) or value in (float("inf"), float("-inf")):
            return "must be " + (" and ".join(wanted) if wanted else "finite")
        return None


def option(default: Any = dataclasses.MISSING, *, at_least: float | None = None, at_most: float | None = None,
           above: float | None = None, below: float | None = None, one_of: tuple[str, ...] | None = None) -> Any:
    """A field of an options dataclass with the values it accepts, checked when the options are built (the
    `--heal` / `--metric` value is read, before any work): ``rank: int = option(8, at_least=1)``."""
    return dataclasses.field(default=default, metadata={"bounds": Bounds(at_least, at_most, above, below, one_of)})


def check_bounds(cls: type, values: dict[str, Any], what: str) -> None:
    """One ConfigError line naming the first field of options dataclass `cls` whose value (given in `values`, else
    its default) lies outside its declared range."""
    for f in dataclasses.fields(cls):
        bounds = f.metadata.get("bounds")
        value = values.get(f.name, f.default)
        why = bounds.refusal(value) if bounds and value is not dataclasses.MISSING else None
        if why:
            raise ConfigError(f"{what}: option {f.name}={value!r} {why}")


def build_options(cls: type | None, what: str, raw: dict[str, Any]) -> Any:
    """An options dataclass from strings (CLI) or values (Python), typed from the field types, with one-line
    ConfigErrors for unknown keys and bad values (``what`` names the flag and entry, e.g. ``--heal distill``).
    ``cls`` None: the entry takes no options."""
    known = [f.name for f in dataclasses.fields(cls) if f.init] if cls is not None else []
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{what} has no option {unknown[0]!r}; it takes: {', '.join(known) or 'none'}")
    if cls is None:
        return None
    hints = typing.get_type_hints(cls)
    values = {k: convert(v, hints[k], what, k) for k, v in raw.items()}
    check_bounds(cls, values, what)  # before __post_init__'s checks of combinations
    return cls(**values)


_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def convert(value: Any, hint: Any, what: str, key: str) -> Any:
    """A CLI string as the field's type: bool (true/false/yes/no/on/off/1/0), int, float, list (``a+b`` or
    ``a b``), ``none`` for optional fields; other values pass through."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if text.lower() in ("none", "null", "") and type(None) in typing.get_args(hint):
        return None
    kind = args[0]
    try:
        if kind is bool:
            if text.lower() not in _WORDS:
                raise ValueError(text)
            return _WORDS[text.lower()]
        if kind is int:
            return int(float(text)) if float(text).is_integer() else int(text)
        if kind is float:
            return float(text)
        if typing.get_origin(kind) is list:
            return [s.strip() for s in text.replace("+", " ").split() if s.strip()]
    except ValueError:
        name = "true or false" if kind is bool else f"a valid {getattr(kind, '__name__', kind)}"
        raise ConfigError(f"{what}: option {key}={value!r} is not {name}") from None
    return text
