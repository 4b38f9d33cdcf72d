//! The shipping handler: ships each paid order.
//!
//! On `com.example.shop.payment.confirmed.v1` it creates a shipment, records it under
//! `shipment/{order_id}`, and emits `com.example.shop.shipment.created.v1`. The shipment id is
//! derived from the order id (`ship-{order_id}`), so that whoever holds the order id can find
//! the shipment, and an order never gets two. A second confirmation for an order that already
//! has a shipment is ignored.

use evhost_sdk::{Event, Handler, HandlerError, emit, state};
use serde::{Deserialize, Serialize};

const PAYMENT_CONFIRMED: &str = "com.example.shop.payment.confirmed.v1";
const SHIPMENT_CREATED: &str = "com.example.shop.shipment.created.v1";

/// The `payment.confirmed` event's data.
#[derive(Debug, Deserialize)]
struct PaymentConfirmed {
    order_id: String,
    sku: String,
    quantity: u64,
    amount: f64,
}

/// The `shipment.created` event's data, and what `shipment/{order_id}` holds.
#[derive(Debug, Serialize)]
struct Shipment<'a> {
    shipment_id: &'a str,
    order_id: &'a str,
    sku: &'a str,
    quantity: u64,
    amount: f64,
}

struct Shipping;

impl Handler for Shipping {
    fn handle(event: Event) -> Result<(), HandlerError> {
        match event.ty() {
            PAYMENT_CONFIRMED => ship(&event),
            other => Err(HandlerError::reject(format!(
                "the shipping handler does not handle `{other}`"
            ))),
        }
    }
}

fn ship(event: &Event) -> Result<(), HandlerError> {
    let paid: PaymentConfirmed = event.json()?;
    let invalid = |problem: &str| {
        HandlerError::reject(format!(
            "invalid `{PAYMENT_CONFIRMED}` (id `{}`): {problem}",
            event.id()
        ))
    };
    if paid.order_id.is_empty() {
        return Err(invalid("`order_id` must not be empty"));
    }
    if paid.quantity == 0 {
        return Err(invalid("`quantity` must be at least 1"));
    }

    let order_id = paid.order_id.as_str();
    let key = format!("shipment/{order_id}");
    if state::get(&key).is_some() {
        evhost_sdk::info!("order {order_id} already has a shipment; ignoring the repeated payment");
        return Ok(());
    }

    let shipment_id = format!("ship-{order_id}");
    let shipment = Shipment {
        shipment_id: &shipment_id,
        order_id,
        sku: &paid.sku,
        quantity: paid.quantity,
        amount: paid.amount,
    };
    state::set_json(&key, &shipment)?;
    emit::json(SHIPMENT_CREATED, &shipment)
        .subject(order_id)
        .send()?;
    evhost_sdk::info!(
        "order {order_id}: shipment {shipment_id} created for {} x {}",
        paid.quantity,
        paid.sku
    );
    Ok(())
}

evhost_sdk::export_handler!(Shipping);
