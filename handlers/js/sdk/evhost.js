// Write evhost event handlers in JavaScript.
//
// A handler is a function that takes an `Event` and returns nothing (or a promise of nothing).
// Wrap it with `handler()` and export it as `handle`, the name of the WIT export, then build the
// file with `node build.mjs`:
//
//     import { handler, state, emit, log } from '../sdk/evhost.js';
//
//     export const handle = handler((event) => {
//       const greeting = event.json();                 // bad JSON: Reject, never retried
//       const greeted = state.getJson('greeted', 0);
//       state.setJson('greeted', greeted + 1);
//       emit.json('com.example.greeted.v1', greeting, { subject: greeting.name });
//       log.info(`greeted ${greeting.name} (${greeted + 1} so far)`);
//     });
//
// This module is a thin layer over the bindings ComponentizeJS generates from `wit/0.1.0`: each
// WIT interface is an ES module named `evhost:handler/NAME@0.1.0`, and the WIT is the
// contract. What the host does with a handler's effects, and what `Retry` and `Reject` mean,
// is stated once for every language in `handlers/python/README.md`.
//
// Failing:
//
// - `throw new Retry(reason)`: a transient failure; the host backs off and delivers the event
//   again, up to the handler's `max_attempts`, then dead-letters it.
// - `throw new Reject(reason)`: a permanent failure; the host dead-letters the event now.
// - anything else thrown is a bug in the handler, like a Rust panic: its stack is logged at
//   error level through the host's log, and the host is told to *retry* (the contract counts a
//   trap as a retryable failure), with the exception as the reason.
//
// The helpers that can fail pick the variant by one rule, *would delivering the same event
// again help?*: bad event data, a state write or an emit the host refuses: `Reject`; a
// manifest setting that does not parse (the deployment's fault, fixed by a redeploy): `Retry`.

import * as hostState from 'evhost:handler/state@0.1.0';
import * as hostEmit from 'evhost:handler/emit@0.1.0';
import * as hostLog from 'evhost:handler/log@0.1.0';
import * as hostConfig from 'evhost:handler/config@0.1.0';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A failure that tells the host what to do with the event; throw a subclass. */
export class HandlerError extends Error {}

/** A transient failure: back off and deliver the event again (WIT `retry`). */
export class Retry extends HandlerError {
  get name() {
    return 'Retry';
  }
}

/** A permanent failure: dead-letter the event now, without retrying (WIT `reject`). */
export class Reject extends HandlerError {
  get name() {
    return 'Reject';
  }
}

/**
 * One CloudEvent (CloudEvents 1.0), as the host stored it: the fields of the WIT record
 * `event`, with `data` a `Uint8Array` or `undefined` and `extensions` an array of
 * `[name, value]` pairs sorted by name.
 */
export class Event {
  constructor(raw) {
    this.id = raw.id;
    this.source = raw.source;
    this.specversion = raw.specversion;
    this.type = raw.type;
    this.datacontenttype = raw.datacontenttype;
    this.dataschema = raw.dataschema;
    this.subject = raw.subject;
    this.time = raw.time;
    this.extensions = raw.extensions;
    this.data = raw.data;
  }

  /** The extension attribute `name` (e.g. `causationid`), or `undefined`. */
  extension(name) {
    const found = this.extensions.find(([key]) => key === name);
    return found === undefined ? undefined : found[1];
  }

  /** The `partitionkey` extension, which `ordering = "key"` orders by. */
  get partitionKey() {
    return this.extension('partitionkey');
  }

  /** The data as text (UTF-8), or `undefined` when the event has none. */
  text() {
    return this.data === undefined ? undefined : decoder.decode(this.data);
  }

  /**
   * The data parsed as JSON. Throws `Reject` when the event has no data or it is not JSON: a
   * bad event never heals by retrying.
   */
  json() {
    if (this.data === undefined) {
      throw new Reject(`event \`${this.type}\` (id \`${this.id}\`) has no data`);
    }
    try {
      return JSON.parse(decoder.decode(this.data));
    } catch (err) {
      throw new Reject(`event \`${this.type}\` (id \`${this.id}\`) has invalid data: ${err.message}`);
    }
  }
}

/**
 * The function to export as `handle`: calls `fn(event)` and maps what it throws to the WIT
 * `handler-error`. `fn` may be async; ComponentizeJS runs the event loop until it settles.
 */
export function handler(fn) {
  return async function handle(raw) {
    try {
      await fn(new Event(raw));
    } catch (err) {
      // ComponentizeJS turns a thrown plain object into the `err` of the result: the WIT
      // variant as `{ tag, val }`.
      if (err instanceof Retry) throw { tag: 'retry', val: err.message };
      if (err instanceof Reject) throw { tag: 'reject', val: err.message };
      const reason = `uncaught ${describe(err)}`;
      log.error(`handler threw ${reason}${err && err.stack ? `\n${err.stack.trimEnd()}` : ''}`);
      throw { tag: 'retry', val: reason };
    }
  };
}

function describe(err) {
  if (err instanceof Error) return `${err.name}: ${err.message}`;
  try {
    return `value ${JSON.stringify(err)}`;
  } catch {
    return `value ${String(err)}`;
  }
}

/**
 * The handler's own key-value state: what must outlive one event. Reads see the committed
 * state plus this invocation's own staged writes; writes are staged and committed with the
 * delivery, or discarded if the handler fails.
 */
export const state = {
  /** The value under `key` as a `Uint8Array`, or `undefined`. */
  get(key) {
    return hostState.get(key);
  },

  /**
   * Stage `value` (a `Uint8Array`, or a string stored as UTF-8) under `key`. Throws `Reject`
   * when the host refuses the write (the key is empty or too long, or the value too large).
   */
  set(key, value) {
    const bytes = typeof value === 'string' ? encoder.encode(value) : value;
    try {
      hostState.set(key, bytes);
    } catch (err) {
      throw new Reject(`cannot set state \`${key}\`: ${payload(err)}`);
    }
  },

  /** Stage the removal of `key`; removing a missing key is not an error. */
  delete(key) {
    hostState.delete(key);
  },

  /** The keys that start with `prefix`, sorted (`''` lists them all). */
  listKeys(prefix = '') {
    return hostState.listKeys(prefix);
  },

  /** The value under `key` parsed as JSON; `fallback` when absent. Throws `Reject` if not JSON. */
  getJson(key, fallback = undefined) {
    const bytes = hostState.get(key);
    if (bytes === undefined) return fallback;
    try {
      return JSON.parse(decoder.decode(bytes));
    } catch (err) {
      throw new Reject(`state \`${key}\` does not hold JSON: ${err.message}`);
    }
  },

  /** Stage `value`, serialized as JSON, under `key`. */
  setJson(key, value) {
    const text = JSON.stringify(value);
    if (text === undefined) throw new Reject(`cannot serialize state \`${key}\` as JSON`);
    state.set(key, text);
  },
};

/**
 * Publishing new events. Emitted events are staged: the host publishes them, routed exactly
 * like events posted over HTTP, only if the invocation succeeds. The host fills `id` (derived
 * from the event being handled, the handler and the emit index, so a re-run cannot duplicate
 * it), `source`, `specversion`, `time` and the `causationid` / `correlationid` extensions.
 * Each function returns the id the host gave the event, and throws `Reject` when the host
 * refuses it (empty type, bad extension name, too many emits).
 *
 * `options`: `{ subject, partitionKey, extensions: [[name, value], ...] }`, all optional.
 */
export const emit = {
  /** An event of `type` whose data is `data` serialized as JSON. */
  json(type, data, options = {}) {
    const text = JSON.stringify(data);
    if (text === undefined) throw new Reject(`cannot serialize the data of \`${type}\` as JSON`);
    return publish(type, encoder.encode(text), 'application/json', options);
  },

  /** An event of `type` whose data is `data` (a `Uint8Array`) of media type `contentType`. */
  bytes(type, data, contentType, options = {}) {
    return publish(type, data, contentType, options);
  },

  /** An event of `type` with no data. */
  empty(type, options = {}) {
    return publish(type, undefined, undefined, options);
  },
};

function publish(type, data, datacontenttype, { subject, partitionKey, extensions = [] }) {
  try {
    return hostEmit.publish({
      type,
      data,
      datacontenttype,
      subject,
      partitionkey: partitionKey,
      extensions,
    });
  } catch (err) {
    throw new Reject(`cannot emit \`${type}\`: ${payload(err)}`);
  }
}

/**
 * Log lines, captured by the host with the handler's name and the event's id. `console.log`
 * works too (the host captures stdout and stderr), but only at info level.
 */
export const log = {
  trace: (message) => hostLog.write('trace', String(message)),
  debug: (message) => hostLog.write('debug', String(message)),
  info: (message) => hostLog.write('info', String(message)),
  warn: (message) => hostLog.write('warn', String(message)),
  error: (message) => hostLog.write('error', String(message)),
};

/** The handler's settings from the manifest (`config = { ... }`), read-only. */
export const config = {
  /** The value of setting `key`, or `undefined`. */
  get(key) {
    return hostConfig.get(key);
  },

  /**
   * The value of setting `key` passed through `parse`; `undefined` when unset. Throws `Retry`
   * when `parse` throws or returns NaN: the deployment is at fault, not the event, so once the
   * setting is fixed and redeployed the retried event succeeds.
   */
  getParsed(key, parse) {
    const raw = hostConfig.get(key);
    if (raw === undefined) return undefined;
    let value;
    try {
      value = parse(raw);
    } catch (err) {
      throw new Retry(`setting \`${key}\` = ${JSON.stringify(raw)} is not valid: ${err.message}`);
    }
    if (Number.isNaN(value)) {
      throw new Retry(`setting \`${key}\` = ${JSON.stringify(raw)} is not valid`);
    }
    return value;
  },
};

/** The message of an import's `err` (ComponentizeJS throws it with the value in `payload`). */
function payload(err) {
  return err && Object.prototype.hasOwnProperty.call(err, 'payload') ? err.payload : String(err);
}
