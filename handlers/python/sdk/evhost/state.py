"""The handler's own key-value state: what must outlive one event.

Keys are strings, values bytes; :func:`get_json` and :func:`set_json` keep JSON in them. Reads
see the committed state plus this invocation's own staged writes; writes are staged and
committed with the delivery, or discarded if the handler fails.
"""

import json as _json
from typing import Any, List, Optional, Union

from componentize_py_types import Err as _Err
from wit_world.imports import state as _host

from .errors import Reject

_MISSING = object()


def get(key: str) -> Optional[bytes]:
    """The value under ``key``, if any."""
    return _host.get(key)


def set(key: str, value: Union[bytes, str]) -> None:  # noqa: A001 - mirrors the WIT name
    """Stage ``value`` (``str`` is stored as UTF-8) under ``key``.

    Raises :class:`evhost.Reject` when the host refuses the write (the key is empty or too
    long, or the value too large): the same event would make the same write again.
    """
    data = value.encode() if isinstance(value, str) else value
    try:
        _host.set(key, data)
    except _Err as err:
        raise Reject(f"cannot set state `{key}`: {err.value}") from None


def delete(key: str) -> None:
    """Stage the removal of ``key``; removing a missing key is not an error."""
    _host.delete(key)


def list_keys(prefix: str = "") -> List[str]:
    """The keys that start with ``prefix``, sorted (``""`` lists them all)."""
    return _host.list_keys(prefix)


def get_json(key: str, default: Any = None) -> Any:
    """The value under ``key`` parsed as JSON; ``default`` when the key is absent.

    Raises :class:`evhost.Reject` when the stored value is not JSON.
    """
    raw = _host.get(key)
    if raw is None:
        return default
    try:
        return _json.loads(raw)
    except ValueError as err:
        raise Reject(f"state `{key}` does not hold JSON: {err}") from None


def set_json(key: str, value: Any) -> None:
    """Stage ``value``, serialized as JSON, under ``key``.

    Raises :class:`evhost.Reject` when ``value`` does not serialize or the host refuses it.
    """
    try:
        data = _json.dumps(value, separators=(",", ":")).encode()
    except (TypeError, ValueError) as err:
        raise Reject(f"cannot serialize state `{key}` as JSON: {err}") from None
    set(key, data)
