"""What a handler raises to tell the host what to do with the event."""

from wit_world.imports import types as _types


class HandlerError(Exception):
    """A failure that tells the host what to do with the event; raise a subclass."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def _to_wit(self) -> "_types.HandlerError":
        raise NotImplementedError


class Retry(HandlerError):
    """A transient failure: back off and deliver the event again (WIT ``retry``)."""

    def _to_wit(self) -> "_types.HandlerError":
        return _types.HandlerError_Retry(self.message)


class Reject(HandlerError):
    """A permanent failure: dead-letter the event now, without retrying (WIT ``reject``)."""

    def _to_wit(self) -> "_types.HandlerError":
        return _types.HandlerError_Reject(self.message)
