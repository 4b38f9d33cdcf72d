//! The notification handler: tells the customer what happened to their order.
//!
//! It subscribes to `order.placed`, `stock.unavailable`, `payment.failed` and
//! `shipment.created`, emits nothing (fire-and-forget), and counts the events of each type
//! under `count/{event type}` (a JSON integer). Here "telling the customer" is a log line.
//!
//! It reads only the event's type and subject (the order id), never its data, so that a
//! change in another handler's data can never make a notification fail.

use evhost_sdk::{Event, Handler, HandlerError, state};

struct Notification;

impl Handler for Notification {
    fn handle(event: Event) -> Result<(), HandlerError> {
        let ty = event.ty();
        let order = event.subject().unwrap_or("(no subject)");
        let key = format!("count/{ty}");
        let count = state::get_json::<u64>(&key)?.unwrap_or(0).saturating_add(1);
        state::set_json(&key, &count)?;
        let message = match ty {
            "com.example.shop.order.placed.v1" => "we have your order",
            "com.example.shop.stock.unavailable.v1" => "sorry, that item is out of stock",
            "com.example.shop.payment.failed.v1" => "your payment was declined",
            "com.example.shop.shipment.created.v1" => "your order is on its way",
            _ => "something happened",
        };
        evhost_sdk::info!("notify order {order}: {message} ({ty} #{count})");
        Ok(())
    }
}

evhost_sdk::export_handler!(Notification);
