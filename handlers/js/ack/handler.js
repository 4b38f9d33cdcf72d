// A benchmark fixture, in JavaScript: acknowledges every event and does nothing else.
//
// The same handler as handlers/fixtures/ack (Rust) and handlers/python/ack: no state, no emits,
// no logs, so what an invocation costs is the host's work plus the language runtime's floor.

import { handler } from '../sdk/evhost.js';

export const handle = handler(() => {});
