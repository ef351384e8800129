"""Checks at the edges, shared by configs, loaders and entry points: typed dataclass fields, JSON files that name
themselves when they cannot be read, and text that a user typed.

Every check raises ``ValueError`` (``TypeError`` for a wrong Python type passed to the API, ``FileNotFoundError``
for a missing file) with the field, file or argument named, before any work starts.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import types
import typing
from pathlib import Path
from typing import Any


# ---------------------------------------------------------------------------------------------- typed fields
def check_fields(obj: Any, where: str | None = None) -> None:
    """Check every field of the dataclass instance ``obj`` against its annotation; raise ValueError naming the
    first field that does not fit (``where.field must be ..., got ...``).

    Lenient only where JSON cannot say better: an int for a float field becomes a float, a list for a tuple field
    a tuple, a string for an Enum field its member. Floats must be finite. Nested dataclasses are checked in turn.
    """
    where = where or type(obj).__name__
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        ok, fixed = _conform(value, hints[f.name], f"{where}.{f.name}")
        if not ok:
            raise ValueError(f"{where}.{f.name} must be {describe_type(hints[f.name])}, got {shown(value)}")
        if fixed is not value:
            object.__setattr__(obj, f.name, fixed)


def _conform(value: Any, hint: Any, where: str) -> tuple[bool, Any]:
    """(fits, value converted where JSON spells it differently) for one value and its annotation."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, fixed = _conform(value, arg, where)
            if ok:
                return True, fixed
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(value, integer=False):
            return True, float(value) if isinstance(value, int) else value
        return False, value
    if hint is str:
        return isinstance(value, str), value
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        if isinstance(value, hint):
            return True, value
        known = {m.value: m for m in hint}
        return (True, known[value]) if isinstance(value, str) and value in known else (False, value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            check_fields(value, where)
            return True, value
        return False, value
    if origin in (tuple, list):
        return _conform_sequence(value, origin, args, where)
    if origin is dict:
        if not isinstance(value, dict):
            return False, value
        for k, v in value.items():
            if not (_conform(k, args[0], where)[0] and _conform(v, args[1], where)[0]):
                return False, value
        return True, value
    raise TypeError(f"check_fields: unsupported annotation {hint!r} at {where}")


def _conform_sequence(value: Any, origin: type, args: tuple, where: str) -> tuple[bool, Any]:
    if not isinstance(value, (list, tuple)):
        return False, value
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            return False, value
        items = [_conform(v, a, f"{where}.{i}") for i, (v, a) in enumerate(zip(value, args))]
    else:
        items = [_conform(v, args[0] if args else Any, f"{where}.{i}") for i, v in enumerate(value)]
    if not all(ok for ok, _ in items):
        return False, value
    return True, origin(v for _, v in items)


def describe_type(hint: Any) -> str:
    """An annotation in words, for messages: ``int | None`` -> 'an integer or null'."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in args)
    words = {type(None): "null", bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
    if hint in words:
        return words[hint]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return f"an object of {hint.__name__} fields"
    if origin in (tuple, list):
        inner = describe_type(args[0]) if args else "anything"
        if origin is tuple and args[-1] is not Ellipsis:
            return f"a list of {len(args)} items, each {inner}"
        return f"a list, each {inner}"
    if origin is dict:
        return f"an object of {describe_type(args[1])} values"
    return "anything" if hint is Any else str(hint)


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
    integer: bool = False,
) -> Any:
    """``value`` as a number in [low, high] (or > ``above``), finite, an integer when asked; else ValueError naming
    ``name`` and the range. An integer must fit 64 bits (what torch takes), a number a float."""
    kind = "an integer" if integer else "a finite number"
    if above is not None:
        kind += f" > {above}"
    elif low is not None or high is not None:
        kind += f" >= {low}" if high is None else f" <= {high}" if low is None else f" in [{low}, {high}]"
    fits = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not fits or not _finite(value, integer):
        beyond = ", beyond a 64-bit integer" if fits and integer and not isinstance(value, bool) else ""
        raise ValueError(f"{name} must be {kind}, got {shown(value)}{beyond}{_scalar_hint(value, integer)}")
    out_of_range = (low is not None and value < low) or (high is not None and value > high)
    if out_of_range or (above is not None and not value > above):
        raise ValueError(f"{name} must be {kind}, got {shown(value)}")
    return value


def _finite(value: int | float, integer: bool) -> bool:
    """Whether a Python number is one a setting can hold: an int within 64 bits, a number within a float's range
    (math.isfinite alone overflows on a 400-digit int instead of answering)."""
    if integer:
        return -(2**63) <= value < 2**63
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _scalar_hint(value: Any, integer: bool) -> str:
    """How to pass a NumPy or torch scalar, which the API does not take for a Python number (it would reach places
    that test ``isinstance(x, int)``)."""
    library = type(value).__module__.split(".")[0]
    if library in ("numpy", "torch"):
        return f" (a {library} {type(value).__name__}: pass {'int' if integer else 'float'}(x))"
    return ""


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages (a pasted 400-digit number stays readable)."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond Python's digit limit for str()
        return f"an integer of about {value.bit_length() * 0.30103:.0f} digits"
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


# ---------------------------------------------------------------------------------------------- files
def read_text(path: str | Path, what: str = "file") -> str:
    """A UTF-8 text file's content; a missing file, a folder or bytes that are not UTF-8 are named with the file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a {what}")
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except UnicodeDecodeError as err:
        line = err.object.count(b"\n", 0, err.start) + 1
        raise ValueError(
            f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} on line {line}); re-encode it as UTF-8"
        ) from None


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Parse a JSON file; every failure names the file (missing, a folder, not UTF-8, not JSON and where)."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})") from None
    except RecursionError:  # json's decoder recurses once per nesting level
        raise ValueError(f"{path} nests its JSON too deeply to read") from None


def read_json_object(path: str | Path, what: str = "JSON file") -> dict[str, Any]:
    """:func:`read_json` for files whose top level must be an object."""
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a {what} holds a JSON object at the top level, found {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------------- user text
def check_text(text: Any, name: str, *, allow_empty: bool = False) -> str:
    """``text`` as a string a tokenizer can take: a ``str`` (bytes are refused: decode them first), valid
    Unicode (a command line with invalid UTF-8 bytes arrives with lone surrogates), non-empty unless allowed."""
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"{name} is not valid UTF-8 text (an undecodable byte at character {err.start}); re-encode it as UTF-8"
        ) from None
    if not allow_empty and not text.strip():
        raise ValueError(f"{name} is empty")
    return text


def check_flag(name: str, value: Any) -> bool:
    """``value`` as a bool; anything else is refused, since a string such as "false" would read as true."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {shown(value)}")
    return value


def check_draw_args(generator: Any, callback: Any, compile: Any, output_type: Any) -> None:
    """The arguments of an image-drawing call that are not sampling settings, each refused by name."""
    check_generator(generator)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a function of (step, total) or None, got {type(callback).__name__}")
    check_flag("compile", compile)
    if output_type not in ("pil", "latent", "pt"):
        raise ValueError(f"output_type must be 'pil', 'latent' or 'pt', got {shown(output_type)}")


def check_prompts(prompt: Any, num_images_per_prompt: Any, **draw: Any) -> list[str]:
    """The prompts of a ``generate`` call as a list, after checking its arguments (``draw``: output_type,
    generator, callback, compile; checked when given)."""
    if draw:
        check_draw_args(**draw)
    if not isinstance(prompt, (str, list, tuple)):
        raise TypeError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise ValueError("prompt list is empty")
    for i, p in enumerate(prompts):
        check_text(p, "prompt" if isinstance(prompt, str) else f"prompt {i}")
    check_number("num_images_per_prompt", num_images_per_prompt, low=1, integer=True)
    return prompts


def check_generator(generator: Any) -> None:
    """Every random draw goes through a ``torch.Generator``; anything else (a seed number) is refused by name."""
    import torch

    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)) or None, "
            f"got {type(generator).__name__}"
        )
