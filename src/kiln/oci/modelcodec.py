"""JSON to dataclass and back, for kiln.oci.models: field aliases, unknown fields kept, errors with paths.

A model is a ``kw_only`` dataclass with an ``extras`` dict. A field's JSON name is its
``alias(...)`` or else its Python name. Decoding checks each value against the field's type
(str, int, bool, Any, ``X | None``, ``list[X]``, ``dict[str, X]`` and nested models) and is as
lenient as the formats' readers are in practice: an integer may arrive as ``12.0`` or ``"12"``.
Encoding leaves out fields and unknown fields whose value is None, as the formats expect.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field
from typing import Any, TypeVar

Loc = tuple[str | int, ...]
_T = TypeVar("_T")
_Decode = Callable[[Any, Loc], Any]
_INT = re.compile(r"[+-]?\d+")
_TRUE = frozenset({"true", "1", "yes", "on", "t", "y"})
_FALSE = frozenset({"false", "0", "no", "off", "f", "n"})


class Invalid(ValueError):
    """A value that does not fit its field; ``loc`` is the path of JSON names and list indexes."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message

    def __str__(self) -> str:
        return f"field {'.'.join(str(p) for p in self.loc) or '(root)'}: {self.message}"

    def under(self, prefix: Loc) -> Invalid:
        return Invalid(prefix + self.loc, self.message)


def alias(name: str, default: Any = MISSING) -> Any:
    """A field whose JSON name is ``name`` (required unless ``default`` is given)."""
    if default is MISSING:
        return field(metadata={"alias": name})
    return field(default=default, metadata={"alias": name})


@dataclass(frozen=True)
class _Field:
    name: str
    key: str
    decode: _Decode
    required: bool


_FIELDS: dict[type, tuple[_Field, ...]] = {}


def _fields(cls: type) -> tuple[_Field, ...]:
    found = _FIELDS.get(cls)
    if found is None:
        found = _FIELDS[cls] = _fields_of(cls)  # racing threads compute the same tuple: harmless
    return found


def _fields_of(cls: type) -> tuple[_Field, ...]:
    hints = typing.get_type_hints(cls)
    return tuple(
        _Field(f.name, f.metadata.get("alias", f.name), _decoder(hints[f.name]), f.default is MISSING and f.default_factory is MISSING)
        for f in dataclasses.fields(cls)
        if f.name != "extras"
    )  # fmt: skip


def decode(cls: type[_T], obj: Any, loc: Loc = ()) -> _T:
    if not isinstance(obj, dict):
        raise Invalid(loc, f"expected an object ({cls.__name__})")
    kwargs: dict[str, Any] = {}
    for f in _fields(cls):
        if f.key in obj:
            kwargs[f.name] = f.decode(obj[f.key], (*loc, f.key))
        elif f.required:
            raise Invalid((*loc, f.key), "field required")
    known = {f.key for f in _fields(cls)}
    try:
        make: Callable[..., _T] = cls
        return make(**kwargs, extras={k: v for k, v in obj.items() if k not in known})
    except Invalid as e:  # a model's own check (__post_init__), named by field
        raise e.under(loc) from None


def encode(model: Any) -> dict[str, Any]:
    out = {f.key: _encode(v) for f in _fields(type(model)) if (v := getattr(model, f.name)) is not None}
    out.update((k, _encode(v)) for k, v in model.extras.items() if v is not None)
    return out


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return encode(value)
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _decoder(tp: Any) -> _Decode:
    if tp is Any:
        return lambda v, _loc: v
    if tp is str:
        return _str
    if tp is bool:
        return _bool
    if tp is int:
        return _int
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        decode_inner = _decoder(inner)
        return lambda v, loc: None if v is None else decode_inner(v, loc)
    if origin is list:
        decode_item = _decoder(args[0])

        def a_list(v: Any, loc: Loc) -> list[Any]:
            if not isinstance(v, list | tuple):
                raise Invalid(loc, "expected a list")
            return [decode_item(item, (*loc, i)) for i, item in enumerate(v)]

        return a_list
    if origin is dict:
        decode_value = _decoder(args[1])

        def a_dict(v: Any, loc: Loc) -> dict[str, Any]:
            if not isinstance(v, dict):
                raise Invalid(loc, "expected an object")
            return {k: decode_value(item, (*loc, k)) for k, item in v.items()}

        return a_dict
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        model: type = tp
        return lambda v, loc: decode(model, v, loc)
    raise TypeError(f"no decoder for {tp!r}")  # a model declared a type this codec does not know


def _str(v: Any, loc: Loc) -> str:
    if not isinstance(v, str):
        raise Invalid(loc, "expected a string")
    return v


def _int(v: Any, loc: Loc) -> int:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and _INT.fullmatch(v.strip()):
        return int(v)
    raise Invalid(loc, "expected an integer")


def _bool(v: Any, loc: Loc) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    raise Invalid(loc, "expected a boolean")
