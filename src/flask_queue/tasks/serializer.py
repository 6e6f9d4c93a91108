"""How a job's arguments and result are turned into text for a backend, and back.

JSON is the only serializer built in. Pickle is not offered as a default on purpose: whoever can write to a
shared backend could then run code in every worker. A ``Serializer`` is anything with the two methods
below; pass one as ``TaskQueue(serializer=...)`` to carry other types (and own the risk).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

__all__ = ["JSONSerializer", "Serializer"]

# One encoder for every call: json.dumps with any non-default option builds a new encoder each time.
_encode = json.JSONEncoder(separators=(",", ":")).encode


class Serializer(Protocol):
    def dumps_call(self, task: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        """The text of a call's arguments. Raises ``TypeError`` naming the argument that cannot be carried."""
        ...

    def loads_call(self, payload: str) -> tuple[list[Any], dict[str, Any]]:
        """``(args, kwargs)`` back from ``dumps_call``'s text. Raises ``ValueError`` if the text is corrupt."""
        ...

    def dumps_result(self, value: Any) -> str:
        """The text of a task's return value. Raises ``TypeError`` if it cannot be carried."""
        ...


class JSONSerializer:
    """Arguments and results as JSON: ``str``, ``int``, ``float``, ``bool``, ``None``, lists and dicts with
    string keys. Tuples arrive as lists. Anything else raises ``TypeError`` at enqueue, in the caller."""

    def dumps_call(self, task: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        for key in kwargs:
            if not isinstance(key, str):
                raise TypeError(f"{task}: keyword argument names must be strings, not {key!r}")
        try:
            text = _encode({"args": list(args), "kwargs": dict(kwargs)})
        except (TypeError, ValueError, RecursionError) as exc:
            raise _name_the_argument(task, args, kwargs) from exc
        if _has_non_string_key(args) or _has_non_string_key(kwargs.values()):
            raise _name_the_argument(task, args, kwargs)
        return text

    def loads_call(self, payload: str) -> tuple[list[Any], dict[str, Any]]:
        try:
            data = json.loads(payload)
        except ValueError as exc:
            raise ValueError(f"the job's arguments are not valid JSON: {exc}") from None
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("args"), list)
            or not isinstance(data.get("kwargs"), dict)
        ):
            raise ValueError("the job's arguments are not an object with 'args' (list) and 'kwargs' (object)")
        return data["args"], data["kwargs"]

    def dumps_result(self, value: Any) -> str:
        try:
            text = _encode(value)
        except (TypeError, ValueError, RecursionError) as exc:
            raise TypeError(
                f"the task returned {type(value).__name__}, which JSON cannot carry: {_why(exc)}; return plain data"
            ) from None
        key = _non_string_key(value)
        if key is not _NONE:
            raise TypeError(
                f"the task returned {type(value).__name__} with the dict key {key!r}, which JSON turns into"
                f" {str(key)!r}; return string keys"
            )
        return text


def _name_the_argument(task: str, args: Sequence[Any], kwargs: Mapping[Any, Any]) -> TypeError:
    """The ``TypeError`` to raise: which argument of which task JSON could not carry, and why."""
    for index, value in enumerate(args):
        problem = _problem(value)
        if problem:
            return TypeError(f"{task}: positional argument {index} {problem}")
    for name, value in kwargs.items():
        problem = _problem(value)
        if problem:
            return TypeError(f"{task}: argument {name!r} {problem}")
    return TypeError(f"{task}: the arguments cannot be serialized as JSON")


def _problem(value: Any) -> str:
    try:
        json.dumps(value)
    except (TypeError, ValueError, RecursionError) as exc:
        return (
            f"({type(value).__name__}) cannot be serialized as JSON: {_why(exc)}; pass plain data (or an id)"
        )
    key = _non_string_key(value)
    if key is not _NONE:
        return (
            f"({type(value).__name__}) has the dict key {key!r} ({type(key).__name__}), which JSON would turn"
            f" into the string {str(key)!r}: use string keys"
        )
    return ""


def _why(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "it is nested too deeply"
    return str(exc)


_NONE: Any = object()
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _non_string_key(value: Any) -> Any:
    """The first dict key anywhere in ``value`` that is not a ``str`` (JSON would make it one, silently), or
    ``_NONE``. Iterative: ``value`` may be nested as deeply as JSON allows."""
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) in _SCALARS:
            continue
        if isinstance(item, dict):
            for key in item:
                if not isinstance(key, str):
                    return key
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return _NONE


def _has_non_string_key(values: Any) -> bool:
    return any(type(value) not in _SCALARS and _non_string_key(value) is not _NONE for value in values)
