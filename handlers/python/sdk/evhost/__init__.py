"""Write evhost event handlers in Python.

A handler is a function that takes an :class:`Event` and returns ``None``. Export it under the
name componentize-py looks for, ``WitWorld``, and build the module with ``build.py``::

    import evhost
    from evhost import Event, emit, state

    def handle(event: Event) -> None:
        greeting = event.json()                      # bad JSON: Reject, never retried
        greeted = state.get_json("greeted", 0)
        state.set_json("greeted", greeted + 1)
        emit.json("com.example.greeted.v1", greeting, subject=greeting["name"])
        evhost.log.info(f"greeted {greeting['name']} ({greeted + 1} so far)")

    WitWorld = evhost.export(handle)

This package is a thin layer over the bindings componentize-py generates from
``wit/0.1.0`` (module ``wit_world``); the WIT is the contract, and the raw bindings remain
usable beside it. What the host does with a handler's effects, and what ``Retry`` and
``Reject`` mean, is stated once for every language in ``handlers/python/README.md``.

Failing:

- ``raise evhost.Retry(reason)``: a transient failure; the host backs off and delivers the
  event again, up to the handler's ``max_attempts``, then dead-letters it.
- ``raise evhost.Reject(reason)``: a permanent failure; the host dead-letters the event now.
- any other exception is a bug in the handler, like a Rust panic: its traceback is logged at
  error level through the host's log, and the host is told to *retry* (the contract counts a
  trap as a retryable failure), with the exception as the reason.

The helpers that can fail pick the variant by one rule, *would delivering the same event again
help?*: bad event data, a state write or an emit the host refuses: ``Reject``; a manifest
setting that does not parse (the deployment's fault, fixed by a redeploy): ``Retry``.

Import every module you need at the top of your files: componentize-py runs the top level at
build time and snapshots the interpreter; the component has no filesystem to import from later.
"""

import json as _json
import traceback as _traceback
from typing import Any, Callable, List, Optional, Tuple

import wit_world as _wit_world
from componentize_py_types import Err as _Err
from wit_world.imports import types as _types

from . import config, emit, log, state
from .errors import HandlerError, Reject, Retry

__all__ = [
    "Event",
    "HandlerError",
    "Retry",
    "Reject",
    "export",
    "config",
    "emit",
    "log",
    "state",
]


class Event:
    """One CloudEvent (CloudEvents 1.0), as the host stored it.

    The attributes are those of the WIT record ``event``; ``data`` is ``bytes`` or ``None``.
    """

    __slots__ = ("_raw",)

    def __init__(self, raw: "_types.Event") -> None:
        self._raw = raw

    @property
    def id(self) -> str:
        return self._raw.id

    @property
    def source(self) -> str:
        return self._raw.source

    @property
    def specversion(self) -> str:
        return self._raw.specversion

    @property
    def type(self) -> str:
        return self._raw.type

    @property
    def datacontenttype(self) -> Optional[str]:
        return self._raw.datacontenttype

    @property
    def dataschema(self) -> Optional[str]:
        return self._raw.dataschema

    @property
    def subject(self) -> Optional[str]:
        return self._raw.subject

    @property
    def time(self) -> Optional[str]:
        return self._raw.time

    @property
    def data(self) -> Optional[bytes]:
        return self._raw.data

    @property
    def extensions(self) -> List[Tuple[str, str]]:
        """Extension attributes as ``(name, value)``, sorted by name."""
        return self._raw.extensions

    def extension(self, name: str) -> Optional[str]:
        """The extension attribute ``name`` (e.g. ``causationid``), if present."""
        for key, value in self._raw.extensions:
            if key == name:
                return value
        return None

    @property
    def partitionkey(self) -> Optional[str]:
        """The ``partitionkey`` extension, which ``ordering = "key"`` orders by."""
        return self.extension("partitionkey")

    def json(self) -> Any:
        """The data parsed as JSON.

        Raises :class:`Reject` when the event has no data or it is not JSON: a bad event never
        heals by retrying.
        """
        if self._raw.data is None:
            raise Reject(f"event `{self.type}` (id `{self.id}`) has no data")
        try:
            return _json.loads(self._raw.data)
        except ValueError as err:
            raise Reject(f"event `{self.type}` (id `{self.id}`) has invalid data: {err}") from None

    def __repr__(self) -> str:
        return f"Event(id={self.id!r}, source={self.source!r}, type={self.type!r})"


def export(handle: Callable[[Event], None]) -> type:
    """The class componentize-py exports: assign it to ``WitWorld`` in the app module.

    ``handle`` returning normally commits what it staged; :class:`Retry` and :class:`Reject`
    become the WIT ``handler-error``; any other exception is logged with its traceback and
    reported as ``retry``.
    """

    class WitWorld(_wit_world.WitWorld):
        def handle(self, event: "_types.Event") -> None:
            _dispatch(handle, event)

    WitWorld.__doc__ = handle.__doc__
    return WitWorld


def _dispatch(handle: Callable[[Event], None], raw: "_types.Event") -> None:
    try:
        handle(Event(raw))
    except HandlerError as err:
        raise _Err(err._to_wit()) from None
    except _Err:
        # The raw bindings' way of failing, `raise Err(HandlerError_Retry(...))`: pass it on.
        raise
    except Exception as err:  # a bug in the handler: the Python analogue of a panic
        reason = f"uncaught {type(err).__name__}: {err}"
        log.error(f"handler raised {reason}\n{_traceback.format_exc().rstrip()}")
        raise _Err(_types.HandlerError_Retry(reason)) from None
