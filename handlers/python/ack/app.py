"""A benchmark fixture, in Python: acknowledges every event and does nothing else.

The same handler as handlers/fixtures/ack (Rust) and handlers/js/ack: no state, no emits, no
logs, so what an invocation costs is the host's work plus the language runtime's floor.
"""

import evhost
from evhost import Event


def handle(event: Event) -> None:
    pass


WitWorld = evhost.export(handle)
