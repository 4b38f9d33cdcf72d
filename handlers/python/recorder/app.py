"""A test fixture, in Python: records every event it gets, and fails, emits or throws on request.

The Python twin of handlers/fixtures/recorder (Rust) and handlers/js/recorder. For each event
it:

1. logs one info line (id, type, subject);
2. busy-waits `sleep_ms` milliseconds of wall-clock time, if the data asks;
3. appends the event id to the JSON array in state `seen/{subject}` (`seen/_` when the event
   has no subject) and increments the JSON integer in state `count`, then reads `count` back
   and rejects the event if the read does not see the write (reads see staged writes); and
   records its `label` setting, if any, under `handled/{event id}`;
4. emits one event, if the data asks;
5. fails, if the data asks: `"fail": "retry"` or `"reject"` through the contract's
   `handler-error`, `"throw"` with an uncaught exception (a bug, retried like a trap). Steps 3
   and 4 were only staged, so a failed event leaves no trace in `seen/...`, `count` or the
   event log.

The data asks with a JSON object; any field may be left out, other fields are ignored, and
data that is absent or not a JSON object asks for nothing:

    {"sleep_ms": 50,
     "emit": {"type": "com.example.test.next.v1", "data": {"n": 1}, "subject": "k-1",
              "partitionkey": "k-1"},
     "fail": "retry"}
"""

import json
import time

import evhost
from evhost import Event, Reject, Retry, emit, state


def handle(event: Event) -> None:
    subject = event.subject or "_"
    evhost.log.info(f"recording event {event.id} (type {event.type}, subject {subject})")
    asked = instructions(event)

    sleep_ms = asked.get("sleep_ms")
    if sleep_ms:
        busy_wait(sleep_ms / 1000)

    seen_key = f"seen/{subject}"
    seen = state.get_json(seen_key, [])
    seen.append(event.id)
    state.set_json(seen_key, seen)
    count = state.get_json("count", 0) + 1
    state.set_json("count", count)
    if state.get_json("count") != count:
        raise Reject(f"event {event.id}: a state read did not see this invocation's write")
    # Which deployment handled it: the `label` setting, when one is set.
    label = evhost.config.get("label")
    if label is not None:
        state.set_json(f"handled/{event.id}", label)

    request = asked.get("emit")
    if request is not None:
        if not isinstance(request, dict) or not isinstance(request.get("type"), str):
            raise Reject(f"event {event.id} has a malformed emit request")
        options = {
            "subject": request.get("subject"),
            "partitionkey": request.get("partitionkey"),
        }
        if "data" in request:
            emitted = emit.json(request["type"], request["data"], **options)
        else:
            emitted = emit.empty(request["type"], **options)
        evhost.log.info(f"event {event.id}: emitted {emitted}")

    fail = asked.get("fail")
    if fail is None:
        return
    if fail == "retry":
        raise Retry(f"event {event.id} asked for a retry")
    if fail == "reject":
        raise Reject(f"event {event.id} asked to be rejected")
    if fail == "throw":
        raise RuntimeError(f"event {event.id} asked for an exception")
    raise Reject(f"event {event.id} has malformed recorder instructions: fail = {fail!r}")


def instructions(event: Event) -> dict:
    """The instructions in the event's data; none unless the data is a JSON object."""
    try:
        value = json.loads(event.data or b"")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def busy_wait(seconds: float) -> None:
    """Spend `seconds` of wall-clock time on the CPU, as a slow handler would."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


WitWorld = evhost.export(handle)
