"""Publishing new events.

Emitted events are staged: the host publishes them, routed exactly like events posted over
HTTP, only if the invocation succeeds. The host fills ``id`` (derived from the event being
handled, the handler and the emit index, so a re-run cannot duplicate it), ``source``,
``specversion``, ``time`` and the ``causationid`` / ``correlationid`` extensions. Each function
returns the id the host gave the event.
"""

import builtins as _builtins
import json as _json
from typing import Any, Iterable, Optional, Tuple

from componentize_py_types import Err as _Err
from wit_world.imports import emit as _host

from .errors import Reject


def json(
    type: str,
    data: Any,
    *,
    subject: Optional[str] = None,
    partitionkey: Optional[str] = None,
    extensions: Iterable[Tuple[str, str]] = (),
) -> str:
    """Emit an event of ``type`` whose data is ``data`` serialized as JSON."""
    try:
        payload = _json.dumps(data, separators=(",", ":")).encode()
    except (TypeError, ValueError) as err:
        raise Reject(f"cannot serialize the data of `{type}` as JSON: {err}") from None
    return _publish(type, payload, "application/json", subject, partitionkey, extensions)


def bytes(
    type: str,
    data: "_builtins.bytes",
    content_type: str,
    *,
    subject: Optional[str] = None,
    partitionkey: Optional[str] = None,
    extensions: Iterable[Tuple[str, str]] = (),
) -> str:
    """Emit an event of ``type`` whose data is ``data``, of media type ``content_type``."""
    return _publish(type, data, content_type, subject, partitionkey, extensions)


def empty(
    type: str,
    *,
    subject: Optional[str] = None,
    partitionkey: Optional[str] = None,
    extensions: Iterable[Tuple[str, str]] = (),
) -> str:
    """Emit an event of ``type`` with no data."""
    return _publish(type, None, None, subject, partitionkey, extensions)


def _publish(type, data, content_type, subject, partitionkey, extensions) -> str:
    event = _host.OutgoingEvent(
        type=type,
        data=data,
        datacontenttype=content_type,
        subject=subject,
        partitionkey=partitionkey,
        extensions=[(name, value) for name, value in extensions],
    )
    try:
        return _host.publish(event)
    except _Err as err:
        # Empty type, bad extension name, too many emits: the same event would fail again.
        raise Reject(f"cannot emit `{type}`: {err.value}") from None
