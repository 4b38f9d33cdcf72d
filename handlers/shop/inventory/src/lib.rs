//! The inventory handler: units in stock per SKU, and the decision whether an order gets them.
//!
//! - `com.example.shop.stock.added.v1` adds units to `stock/{sku}` (a JSON integer).
//! - `com.example.shop.order.placed.v2` takes the order's units out of stock and emits
//!   `com.example.shop.stock.reserved.v1`, or, when there are not enough, leaves the stock
//!   alone and emits `com.example.shop.stock.unavailable.v1` with the units `available`.
//!
//! It reads version 2 of `order.placed`, whose price is `total: {"amount", "currency"}`, and
//! no longer version 1 (a plain number `amount`): the host upcasts the v1 events in the log
//! for it (`handlers/shop/order-placed-upcaster`, which prices them in `EUR`). What it emits is
//! unchanged: `stock.reserved` and `stock.unavailable` carry the plain `amount`, taken from
//! `total.amount`; the currency goes nowhere downstream yet, only into the log line.
//!
//! Reading the stock and writing it back is a read-modify-write: two orders for the last unit
//! of one SKU must not both see it. The manifest runs this handler with `ordering = "key"` on
//! the `partitionkey` (the SKU, set by the order handler), so the host never runs two events
//! for one SKU at once, while different SKUs run in parallel. Stock-added events should carry
//! the SKU as their partition key too.

use evhost_sdk::{Event, Handler, HandlerError, emit, state};
use serde::{Deserialize, Serialize};

const STOCK_ADDED: &str = "com.example.shop.stock.added.v1";
const ORDER_PLACED: &str = "com.example.shop.order.placed.v2";
const STOCK_RESERVED: &str = "com.example.shop.stock.reserved.v1";
const STOCK_UNAVAILABLE: &str = "com.example.shop.stock.unavailable.v1";

/// The `stock.added` event's data.
#[derive(Debug, Deserialize)]
struct StockAdded {
    sku: String,
    quantity: u64,
}

/// The `order.placed.v2` event's data (the fields this handler reads).
#[derive(Debug, Deserialize)]
struct OrderPlaced {
    order_id: String,
    sku: String,
    quantity: u64,
    total: Total,
}

/// What an order costs, in which currency (an ISO 4217 code, e.g. `EUR`).
#[derive(Debug, Deserialize)]
struct Total {
    amount: f64,
    currency: String,
}

/// The data of `stock.reserved` and `stock.unavailable` (which adds `available`).
#[derive(Debug, Serialize)]
struct StockDecision<'a> {
    order_id: &'a str,
    sku: &'a str,
    quantity: u64,
    amount: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    available: Option<u64>,
}

struct Inventory;

impl Handler for Inventory {
    fn handle(event: Event) -> Result<(), HandlerError> {
        match event.ty() {
            STOCK_ADDED => add_stock(&event),
            ORDER_PLACED => reserve(&event),
            other => Err(HandlerError::reject(format!(
                "the inventory handler does not handle `{other}`"
            ))),
        }
    }
}

fn add_stock(event: &Event) -> Result<(), HandlerError> {
    let added: StockAdded = event.json()?;
    let invalid = |problem: &str| {
        HandlerError::reject(format!(
            "invalid `{STOCK_ADDED}` (id `{}`): {problem}",
            event.id()
        ))
    };
    if added.sku.is_empty() {
        return Err(invalid("`sku` must not be empty"));
    }
    if added.quantity == 0 {
        return Err(invalid("`quantity` must be at least 1"));
    }

    let key = stock_key(&added.sku);
    let before: u64 = state::get_json(&key)?.unwrap_or(0);
    let after = before
        .checked_add(added.quantity)
        .ok_or_else(|| invalid("the stock would overflow"))?;
    state::set_json(&key, &after)?;
    evhost_sdk::info!("stock of {} up by {} to {after}", added.sku, added.quantity);
    Ok(())
}

fn reserve(event: &Event) -> Result<(), HandlerError> {
    let order: OrderPlaced = event.json()?;
    let invalid = |problem: &str| {
        HandlerError::reject(format!(
            "invalid `{ORDER_PLACED}` (id `{}`): {problem}",
            event.id()
        ))
    };
    if order.order_id.is_empty() {
        return Err(invalid("`order_id` must not be empty"));
    }
    if order.sku.is_empty() {
        return Err(invalid("`sku` must not be empty"));
    }
    if order.quantity == 0 {
        return Err(invalid("`quantity` must be at least 1"));
    }

    let key = stock_key(&order.sku);
    let available: u64 = state::get_json(&key)?.unwrap_or(0);
    let mut decision = StockDecision {
        order_id: &order.order_id,
        sku: &order.sku,
        quantity: order.quantity,
        amount: order.total.amount,
        available: None,
    };

    let ty = if let Some(left) = available.checked_sub(order.quantity) {
        state::set_json(&key, &left)?;
        evhost_sdk::info!(
            "order {}: reserved {} x {} for {} {}, {left} left",
            order.order_id,
            order.quantity,
            order.sku,
            order.total.amount,
            order.total.currency
        );
        STOCK_RESERVED
    } else {
        decision.available = Some(available);
        evhost_sdk::info!(
            "order {}: {} x {} unavailable, only {available} in stock",
            order.order_id,
            order.quantity,
            order.sku
        );
        STOCK_UNAVAILABLE
    };
    emit::json(ty, &decision).subject(&order.order_id).send()?;
    Ok(())
}

fn stock_key(sku: &str) -> String {
    format!("stock/{sku}")
}

evhost_sdk::export_handler!(Inventory);
