// The shop's upcaster of `com.example.shop.order.placed.v1` to `v2`, in JavaScript: the same
// step as the Rust one in handlers/shop/order-placed-upcaster, against `wit/upcaster-0.1.0`.
//
// Version 2 of `order.placed` replaces the number `amount` with `total`, the amount with its
// currency: `{"amount": 25, "currency": "EUR"}`. Before v2 the shop priced everything in euros,
// so a v1 order's `total` is its `amount` in `EUR`. Every other field of the data (also those
// the v1 schema does not name), the subject and the extensions stay as they were.
//
// It refuses data that is not a v1 order: not a JSON object, without a number `amount` of zero
// or more, without a non-empty `order_id` and `sku` or a `quantity` of at least 1, or with a
// `total` already (which the upcast would overwrite). The host then dead-letters the
// delivery, naming this step and the reason.
//
// An upcaster imports nothing of the host, so this file does not use `../sdk/evhost.js` (whose
// imports are the handler's). How ComponentizeJS maps the export
// `upcast: func(event) -> result<event, string>`: the returned object is the `ok` event; a
// thrown string is the `err` reason; a thrown `Error` would trap the instance, so every
// failure is caught and thrown again as a string.

const ORDER_PLACED_V1 = 'com.example.shop.order.placed.v1';
/** The currency of every price before v2 made it explicit. */
const CURRENCY_BEFORE_V2 = 'EUR';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A reason this event cannot be upcast: becomes the WIT `err`. */
class Refused extends Error {}

export function upcast(event) {
  try {
    return upcastOrRefuse(event);
  } catch (err) {
    // A string is the `err` payload; anything else thrown would be a trap.
    if (err instanceof Refused) throw err.message;
    throw `upcaster bug: ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`;
  }
}

function upcastOrRefuse(event) {
  if (event.type !== ORDER_PLACED_V1) {
    throw new Refused(`this upcaster turns \`${ORDER_PLACED_V1}\` into v2, and got \`${event.type}\` `
      + `(id \`${event.id}\`)`);
  }
  const notAnOrder = (problem) => new Refused(
    `event \`${ORDER_PLACED_V1}\` (id \`${event.id}\`) is not a v1 order: ${problem}`,
  );
  if (event.data === undefined) {
    throw new Refused(`event \`${event.type}\` (id \`${event.id}\`) has no data`);
  }
  let order;
  try {
    order = JSON.parse(decoder.decode(event.data));
  } catch (err) {
    throw new Refused(`event \`${event.type}\` (id \`${event.id}\`) has invalid data: ${err.message}`);
  }
  if (order === null || typeof order !== 'object' || Array.isArray(order)) {
    throw notAnOrder(`its data is not a JSON object but ${JSON.stringify(order)}`);
  }
  for (const field of ['order_id', 'sku']) {
    if (!(field in order)) throw notAnOrder(`it has no \`${field}\``);
    if (typeof order[field] !== 'string' || order[field] === '') {
      throw notAnOrder(`\`${field}\` must be a non-empty string, got ${JSON.stringify(order[field])}`);
    }
  }
  if (!('quantity' in order)) throw notAnOrder('it has no `quantity`');
  if (!Number.isInteger(order.quantity) || order.quantity < 1) {
    throw notAnOrder(`\`quantity\` must be an integer of at least 1, got ${JSON.stringify(order.quantity)}`);
  }
  if ('total' in order) {
    throw notAnOrder('it has a `total` already, which the upcast to v2 would overwrite');
  }
  if (!('amount' in order)) throw notAnOrder('it has no `amount`');
  const { amount, ...rest } = order;
  if (typeof amount !== 'number' || !(amount >= 0)) {
    throw notAnOrder(`\`amount\` must be a number of zero or more, got ${JSON.stringify(amount)}`);
  }

  const upcast = { ...rest, total: { amount, currency: CURRENCY_BEFORE_V2 } };
  // The host fills id, source, specversion, time, type and dataschema of the result itself;
  // the rest of the event is passed on as it came.
  return { ...event, datacontenttype: 'application/json', data: encoder.encode(JSON.stringify(upcast)) };
}
