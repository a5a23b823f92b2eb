"""What the msgspec models (ops.toml, the services' env contracts, playbooks) share: a secret string type, the
conversion of the types msgspec does not know, and msgspec's errors turned into a key path and a short message.

msgspec reports the first problem it meets, as ``<message> - at `$.key.path```; a check of a model's
``__post_init__`` raises ``ValueError("<key>: <message>")`` to name the key it concerns inside that model.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import msgspec

ValidationError = msgspec.ValidationError


class SecretStr:
    """A string that never shows in a repr, str or JSON output; ``get_secret_value()`` gives it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "SecretStr('**********')" if self._value else "SecretStr('')"

    def __str__(self) -> str:
        return "**********" if self._value else ""

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretStr) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _dec_hook(tp: type, obj: Any) -> Any:
    if tp is SecretStr:
        if isinstance(obj, str):
            return SecretStr(obj)
        raise ValueError(f"expected a string, got {_kind(obj)}")
    if tp is Path:
        if not isinstance(obj, str):
            raise ValueError(f"expected a path (a string), got {_kind(obj)}")
        if "\0" in obj:
            raise ValueError("a path cannot contain a NUL character")
        return Path(obj)
    raise NotImplementedError(tp)


def convert(data: Any, tp: Any, *, strict: bool = False) -> Any:
    """``data`` (plain dicts, lists, scalars) as ``tp``; lax (``strict=False``) also takes strings for numbers
    and booleans, as an environment variable gives them."""
    return msgspec.convert(data, tp, strict=strict, dec_hook=_dec_hook)


def dump(obj: Any) -> Any:
    """A model as plain data by attribute name: paths as strings, secrets masked."""
    if isinstance(obj, msgspec.Struct):
        return {f: dump(getattr(obj, f)) for f in obj.__struct_fields__}
    if isinstance(obj, dict):
        return {k: dump(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [dump(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, SecretStr):
        return str(obj)
    return obj


_KINDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "a boolean", "array": "a list",
          "object": "a table", "null": "nothing", "Path": "a path", "SecretStr": "a string"}
_AT = re.compile(r"^(?P<msg>.*?)(?: - at (?:`key` in )?`\$(?P<path>[^`]*)`)?$", re.S)
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_KEYED = re.compile(r"^(?P<key>[a-z_][A-Za-z0-9_.]*): (?P<msg>.+)$", re.S)


def _kind(obj: Any) -> str:
    name = {bool: "bool", int: "int", float: "float", str: "str", list: "array", dict: "object",
            type(None): "null"}.get(type(obj), type(obj).__name__)
    return _KINDS.get(name, name)


def _words(msg: str) -> str:
    msg = re.sub(r"`([A-Za-z]+)`", lambda m: _KINDS.get(m.group(1), m.group(1)), msg)
    return msg[:1].lower() + msg[1:]


def _hints(tp: type) -> dict[str, Any]:
    return typing.get_type_hints(tp, include_extras=False) if isinstance(tp, type) else {}


def _strip_optional(tp: Any) -> Any:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


def _walk(tp: Any, data: Any, segments: list[str], strict: bool) -> tuple[list[str | int], Any]:
    """The key path of the error (dict keys named, where msgspec writes ``[...]``) and the type found there."""
    names: list[str | int] = []
    for seg in segments:
        tp = _strip_optional(tp)
        origin = typing.get_origin(tp)
        if seg == "...":  # a dict value: the first that fails on its own is the one
            value_tp = typing.get_args(tp)[1] if origin is dict else Any
            bad = next((k for k, v in (data or {}).items() if not _converts(v, value_tp, strict)), None) \
                if isinstance(data, dict) else None
            names.append(str(bad) if bad is not None else "[...]")
            tp, data = value_tp, (data or {}).get(bad) if isinstance(data, dict) else None
        elif seg.isdigit():
            names.append(int(seg))
            tp = typing.get_args(tp)[0] if origin is list else Any
            data = data[int(seg)] if isinstance(data, list) and int(seg) < len(data) else None
        else:
            attr = seg
            if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
                renamed = dict(zip(tp.__struct_encode_fields__, tp.__struct_fields__, strict=True))
                attr = renamed.get(seg, seg)
            names.append(seg)
            tp = _hints(tp).get(attr, Any)
            data = data.get(seg) if isinstance(data, dict) else None
    return names, tp


def _converts(value: Any, tp: Any, strict: bool) -> bool:
    try:
        convert(value, tp, strict=strict)
    except msgspec.ValidationError:
        return False
    return True


def located(err: msgspec.ValidationError, tp: Any, data: Any, *, strict: bool = False) -> tuple[tuple, str]:
    """(key path: names, and list indices as ints; message) of a conversion error of ``data`` to ``tp``."""
    m = _AT.match(str(err))
    msg, path = m.group("msg"), m.group("path") or ""
    segments = [a or b for a, b in _SEGMENT.findall(path)]
    names, leaf = _walk(tp, data, segments, strict)
    if unknown := re.match(r"Object contains unknown field `(.+)`$", msg):
        return (*names, unknown.group(1)), "unknown key"
    if missing := re.match(r"Object missing required field `(.+)`$", msg):
        return (*names, missing.group(1)), "required"
    if keyed := _KEYED.match(msg):
        return (*names, *keyed.group("key").split(".")), keyed.group("msg")
    if msg.startswith("Invalid enum value") and typing.get_origin(_strip_optional(leaf)) is Literal:
        choices = typing.get_args(_strip_optional(leaf))
        return tuple(names), "must be one of " + ", ".join(repr(c) for c in choices)
    return tuple(names), _words(msg) if msg else "invalid value"


def dotted(names: tuple) -> str:
    """``app.build[0].run``"""
    out = ""
    for n in names:
        out += f"[{n}]" if isinstance(n, int) else (f".{n}" if out else str(n))
    return out or "(root)"


BOOL_WORDS = {**dict.fromkeys(("1", "true", "t", "yes", "y", "on"), True),
              **dict.fromkeys(("0", "false", "f", "no", "n", "off"), False)}  # a boolean written as a word
