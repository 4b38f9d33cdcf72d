//! The order handler: the shop's front door.
//!
//! It takes the PlaceOrder command (`com.example.shop.order.place.v1`), checks it, records
//! the order under `order/{order_id}` with `"status": "placed"`, and announces it as the event
//! `com.example.shop.order.placed.v1` (subject = order id, `partitionkey` = SKU, so that the
//! inventory handler sees the orders for one SKU in order).
//!
//! Placing an order twice is a no-op: a command repeated under a new event id (a client
//! retrying its POST, say) must not sell the same order twice. The host already makes a
//! re-delivery of one event harmless; this check covers a repeated command.

use evhost_sdk::{Event, Handler, HandlerError, emit, state};
use serde::{Deserialize, Serialize};

const PLACE_ORDER: &str = "com.example.shop.order.place.v1";
const ORDER_PLACED: &str = "com.example.shop.order.placed.v1";

/// The PlaceOrder command's data.
#[derive(Debug, Deserialize)]
struct PlaceOrder {
    order_id: String,
    sku: String,
    quantity: u64,
    amount: f64,
}

/// The `order.placed` event's data.
#[derive(Debug, Serialize)]
struct OrderPlaced<'a> {
    order_id: &'a str,
    sku: &'a str,
    quantity: u64,
    amount: f64,
}

/// What `order/{order_id}` holds.
#[derive(Debug, Serialize)]
struct OrderRecord<'a> {
    order_id: &'a str,
    sku: &'a str,
    quantity: u64,
    amount: f64,
    status: &'a str,
}

struct Order;

impl Handler for Order {
    fn handle(event: Event) -> Result<(), HandlerError> {
        match event.ty() {
            PLACE_ORDER => place(&event),
            other => Err(HandlerError::reject(format!(
                "the order handler does not handle `{other}`"
            ))),
        }
    }
}

fn place(event: &Event) -> Result<(), HandlerError> {
    let command: PlaceOrder = event.json()?;
    validate(&command).map_err(|problem| {
        HandlerError::reject(format!(
            "invalid `{PLACE_ORDER}` (id `{}`): {problem}",
            event.id()
        ))
    })?;
    let PlaceOrder {
        order_id,
        sku,
        quantity,
        amount,
    } = &command;

    let key = format!("order/{order_id}");
    if state::get(&key).is_some() {
        evhost_sdk::info!("order {order_id} was already placed; ignoring the repeated command");
        return Ok(());
    }

    let record = OrderRecord {
        order_id,
        sku,
        quantity: *quantity,
        amount: *amount,
        status: "placed",
    };
    state::set_json(&key, &record)?;
    let placed = OrderPlaced {
        order_id,
        sku,
        quantity: *quantity,
        amount: *amount,
    };
    emit::json(ORDER_PLACED, &placed)
        .subject(order_id)
        .partition_key(sku)
        .send()?;
    evhost_sdk::info!("order {order_id} placed: {quantity} x {sku} for {amount}");
    Ok(())
}

/// What serde cannot check: the values make sense.
fn validate(command: &PlaceOrder) -> Result<(), String> {
    if command.order_id.is_empty() {
        return Err("`order_id` must not be empty".to_owned());
    }
    if command.sku.is_empty() {
        return Err("`sku` must not be empty".to_owned());
    }
    if command.quantity == 0 {
        return Err("`quantity` must be at least 1".to_owned());
    }
    if !command.amount.is_finite() || command.amount < 0.0 {
        return Err(format!(
            "`amount` must be zero or more, got {}",
            command.amount
        ));
    }
    Ok(())
}

evhost_sdk::export_handler!(Order);
