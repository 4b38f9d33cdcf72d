"""Log lines, captured by the host with the handler's name and the event's id.

``print`` works too (the host captures stdout and stderr), but only at info level and without
a level of its own.
"""

from wit_world.imports import log as _host


def trace(message: str) -> None:
    _host.write(_host.Level.TRACE, message)


def debug(message: str) -> None:
    _host.write(_host.Level.DEBUG, message)


def info(message: str) -> None:
    _host.write(_host.Level.INFO, message)


def warn(message: str) -> None:
    _host.write(_host.Level.WARN, message)


def error(message: str) -> None:
    _host.write(_host.Level.ERROR, message)
