"""The notification handler, in Python: tells the customer what happened to their order.

The same handler as handlers/shop/notification (Rust) and handlers/js/notification: it
subscribes to `order.placed`, `stock.unavailable`, `payment.failed` and `shipment.created`,
emits nothing (fire-and-forget), and counts the events of each type under
`count/{event type}` (a JSON integer). Here "telling the customer" is a log line.

It reads only the event's type and subject (the order id), never its data, so that a change
in another handler's data can never make a notification fail.
"""

import evhost
from evhost import Event, state

MESSAGES = {
    "com.example.shop.order.placed.v1": "we have your order",
    "com.example.shop.stock.unavailable.v1": "sorry, that item is out of stock",
    "com.example.shop.payment.failed.v1": "your payment was declined",
    "com.example.shop.shipment.created.v1": "your order is on its way",
}


def handle(event: Event) -> None:
    order = event.subject or "(no subject)"
    key = f"count/{event.type}"
    count = state.get_json(key, 0) + 1
    state.set_json(key, count)
    message = MESSAGES.get(event.type, "something happened")
    evhost.log.info(f"notify order {order}: {message} ({event.type} #{count})")


# componentize-py exports the class of this name from the app module.
WitWorld = evhost.export(handle)
