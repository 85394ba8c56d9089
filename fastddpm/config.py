"""The one base for fastddpm's settings: frozen dataclasses with a checked dict/JSON round-trip.

    @dataclasses.dataclass(frozen=True)
    class UnetConfig(FrozenConfig):
        dim: int
        dim_mults: tuple[int, ...] = (1, 2, 4, 8)

``to_dict`` gives plain JSON values (tuples become lists, nested configs their own ``to_dict``);
``from_dict`` refuses a non-dict, unknown fields and missing required fields with a :class:`ConfigError`
naming them, turns lists back into tuples where the field's type is a tuple and dicts into the nested
config a field's type names, then calls the constructor (so each class's ``__post_init__`` validation
runs on what was read exactly as on what was built). ``to_json``/``from_json`` wrap those; JSON that
does not parse is a :class:`ConfigError` too. Every ``ConfigError`` is a ``ValueError``.

A subclass chooses its JSON layout with class keywords, ``class Fit(FrozenConfig, json_indent=1,
json_sort_keys=False)``; the default is one line with sorted keys.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from typing import Any, ClassVar, TypeVar

__all__ = ["ConfigError", "FrozenConfig"]

C = TypeVar("C", bound="FrozenConfig")


class ConfigError(ValueError):
    """A dict or JSON text that is not the fields of the config it was read as (the message names them)."""


@dataclasses.dataclass(frozen=True)
class FrozenConfig:
    """Base of fastddpm's frozen settings classes (it has no fields; subclasses must be frozen dataclasses)."""

    _json_indent: ClassVar[int | None] = None
    _json_sort_keys: ClassVar[bool] = True

    def __init_subclass__(cls, *, json_indent: int | None = None, json_sort_keys: bool | None = None, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if json_indent is not None:  # otherwise inherited
            cls._json_indent = json_indent
        if json_sort_keys is not None:
            cls._json_sort_keys = json_sort_keys

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON values, in declaration order."""
        return {f.name: _to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], d: Any) -> C:
        """The config whose fields ``d`` holds; a :class:`ConfigError` names unknown or missing fields."""
        name = cls.__name__
        if not isinstance(d, dict):
            raise ConfigError(f"a {name} is read from a dict/JSON object of its fields, got {type(d).__name__}")
        fields = dataclasses.fields(cls)
        known = [f.name for f in fields]
        unknown = sorted(set(d) - set(known), key=str)
        if unknown:
            raise ConfigError(f"unknown {name} field(s) {unknown}; expected a subset of {known}")
        required = [f.name for f in fields if _required(f)]
        missing = [key for key in required if key not in d]
        if missing:
            raise ConfigError(f"missing {name} field(s) {missing}; required: {required}")
        hints = _type_hints(cls)
        return cls(**{key: _from_plain(hints[key], value) for key, value in d.items()})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=self._json_indent, sort_keys=self._json_sort_keys)

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError; deep nesting recurses
            raise ConfigError(f"a {cls.__name__} must be JSON: {type(exc).__name__}: {exc}") from None
        return cls.from_dict(data)


@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> dict[str, Any]:
    """The resolved field types of a config class, once per class: resolving the string annotations compiles
    each one (~30 ms a class, measured: a third of loading the bundled model on the Zen 3 machine)."""
    return typing.get_type_hints(cls)


def _required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _to_plain(value: Any) -> Any:
    if isinstance(value, FrozenConfig):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_to_plain(v) for v in value]
    return value


def _from_plain(hint: Any, value: Any) -> Any:
    """``value`` read from JSON, given the field type ``hint``: lists to tuples, dicts to nested configs."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):  # the first member of the union the value's JSON shape fits
            if _fits(arg, value):
                return _from_plain(arg, value)
        return value
    if isinstance(hint, type) and issubclass(hint, FrozenConfig) and isinstance(value, dict):
        return hint.from_dict(value)
    if not isinstance(value, list):
        return value
    args = typing.get_args(hint)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_plain(args[0], v) for v in value)
        if args and len(args) == len(value):
            return tuple(_from_plain(a, v) for a, v in zip(args, value))
        return tuple(value)
    if origin is list and args:
        return [_from_plain(args[0], v) for v in value]
    return value


def _fits(hint: Any, value: Any) -> bool:
    origin = typing.get_origin(hint) or hint
    if isinstance(value, list):
        return origin in (tuple, list)
    if isinstance(value, dict):
        return isinstance(origin, type) and issubclass(origin, FrozenConfig)
    return False
