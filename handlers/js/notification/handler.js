// The notification handler, in JavaScript: tells the customer what happened to their order.
//
// The same handler as handlers/shop/notification (Rust) and handlers/python/notification: it
// subscribes to `order.placed`, `stock.unavailable`, `payment.failed` and `shipment.created`,
// emits nothing (fire-and-forget), and counts the events of each type under
// `count/{event type}` (a JSON integer). Here "telling the customer" is a log line.
//
// It reads only the event's type and subject (the order id), never its data, so that a change
// in another handler's data can never make a notification fail.

import { handler, log, state } from '../sdk/evhost.js';

const MESSAGES = {
  'com.example.shop.order.placed.v1': 'we have your order',
  'com.example.shop.stock.unavailable.v1': 'sorry, that item is out of stock',
  'com.example.shop.payment.failed.v1': 'your payment was declined',
  'com.example.shop.shipment.created.v1': 'your order is on its way',
};

export const handle = handler((event) => {
  const order = event.subject ?? '(no subject)';
  const key = `count/${event.type}`;
  const count = state.getJson(key, 0) + 1;
  state.setJson(key, count);
  const message = MESSAGES[event.type] ?? 'something happened';
  log.info(`notify order ${order}: ${message} (${event.type} #${count})`);
});
