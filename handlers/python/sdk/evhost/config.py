"""The handler's settings from the manifest (``config = { ... }``), read-only."""

from typing import Callable, Optional, TypeVar

from wit_world.imports import config as _host

from .errors import Retry

T = TypeVar("T")


def get(key: str) -> Optional[str]:
    """The value of setting ``key``, if the manifest sets it."""
    return _host.get(key)


def get_parsed(key: str, parse: Callable[[str], T]) -> Optional[T]:
    """The value of setting ``key`` passed through ``parse`` (``int``, ``float``...).

    Raises :class:`evhost.Retry` when it does not parse: the deployment is at fault, not the
    event, so once the setting is fixed and redeployed the retried event succeeds.
    """
    raw = _host.get(key)
    if raw is None:
        return None
    try:
        return parse(raw)
    except (TypeError, ValueError) as err:
        raise Retry(f"setting `{key}` = {raw!r} is not valid: {err}") from None
