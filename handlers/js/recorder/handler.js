// A test fixture, in JavaScript: records every event it gets, and fails, emits or throws on
// request.
//
// The JavaScript twin of handlers/fixtures/recorder (Rust) and handlers/python/recorder. For
// each event it:
//
// 1. logs one info line (id, type, subject);
// 2. busy-waits `sleep_ms` milliseconds of wall-clock time, if the data asks;
// 3. appends the event id to the JSON array in state `seen/{subject}` (`seen/_` when the event
//    has no subject) and increments the JSON integer in state `count`, then reads `count` back
//    and rejects the event if the read does not see the write (reads see staged writes); and
//    records its `label` setting, if any, under `handled/{event id}`;
// 4. emits one event, if the data asks;
// 5. fails, if the data asks: `"fail": "retry"` or `"reject"` through the contract's
//    `handler-error`, `"throw"` with an uncaught exception (a bug, retried like a trap). Steps 3
//    and 4 were only staged, so a failed event leaves no trace in `seen/...`, `count` or the
//    event log.
//
// The data asks with a JSON object; any field may be left out, other fields are ignored, and
// data that is absent or not a JSON object asks for nothing:
//
//     {"sleep_ms": 50,
//      "emit": {"type": "com.example.test.next.v1", "data": {"n": 1}, "subject": "k-1",
//               "partitionkey": "k-1"},
//      "fail": "retry"}

import { Reject, Retry, config, emit, handler, log, state } from '../sdk/evhost.js';

export const handle = handler((event) => {
  const subject = event.subject ?? '_';
  log.info(`recording event ${event.id} (type ${event.type}, subject ${subject})`);
  const asked = instructions(event);

  if (asked.sleep_ms) busyWait(asked.sleep_ms);

  const seenKey = `seen/${subject}`;
  const seen = state.getJson(seenKey, []);
  seen.push(event.id);
  state.setJson(seenKey, seen);
  const count = state.getJson('count', 0) + 1;
  state.setJson('count', count);
  if (state.getJson('count') !== count) {
    throw new Reject(`event ${event.id}: a state read did not see this invocation's write`);
  }
  // Which deployment handled it: the `label` setting, when one is set.
  const label = config.get('label');
  if (label !== undefined) state.setJson(`handled/${event.id}`, label);

  const request = asked.emit;
  if (request !== undefined) {
    if (request === null || typeof request !== 'object' || typeof request.type !== 'string') {
      throw new Reject(`event ${event.id} has a malformed emit request`);
    }
    const options = { subject: request.subject, partitionKey: request.partitionkey };
    const id = 'data' in request
      ? emit.json(request.type, request.data, options)
      : emit.empty(request.type, options);
    log.info(`event ${event.id}: emitted ${id}`);
  }

  switch (asked.fail) {
    case undefined:
      return;
    case 'retry':
      throw new Retry(`event ${event.id} asked for a retry`);
    case 'reject':
      throw new Reject(`event ${event.id} asked to be rejected`);
    case 'throw':
      throw new TypeError(`event ${event.id} asked for an exception`);
    default:
      throw new Reject(`event ${event.id} has malformed recorder instructions: fail = ${JSON.stringify(asked.fail)}`);
  }
});

/** The instructions in the event's data; none unless the data is a JSON object. */
function instructions(event) {
  try {
    const value = JSON.parse(event.text() ?? '');
    return value !== null && typeof value === 'object' && !Array.isArray(value) ? value : {};
  } catch {
    return {};
  }
}

/** Spend `ms` milliseconds of wall-clock time on the CPU, as a slow handler would. */
function busyWait(ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    // spin
  }
}
