//! The payment handler: charges an order once its stock is reserved.
//!
//! On `com.example.shop.stock.reserved.v1` it declines amounts over the `decline_over`
//! setting (default 1000) with `com.example.shop.payment.failed.v1`, and confirms the rest
//! with `com.example.shop.payment.confirmed.v1`. It records the outcome under
//! `payment/{order_id}` as `{"status": "confirmed" | "failed", "amount": ...}`.
//!
//! An order is charged at most once: when `payment/{order_id}` already holds an outcome, a
//! second reservation for the same order is ignored.

use evhost_sdk::{Event, Handler, HandlerError, config, emit, state};
use serde::{Deserialize, Serialize};

const STOCK_RESERVED: &str = "com.example.shop.stock.reserved.v1";
const PAYMENT_CONFIRMED: &str = "com.example.shop.payment.confirmed.v1";
const PAYMENT_FAILED: &str = "com.example.shop.payment.failed.v1";

/// Amounts above this are declined, unless the `decline_over` setting says otherwise.
const DEFAULT_DECLINE_OVER: f64 = 1000.0;

/// The `stock.reserved` event's data.
#[derive(Debug, Deserialize)]
struct StockReserved {
    order_id: String,
    sku: String,
    quantity: u64,
    amount: f64,
}

/// The data of `payment.confirmed` and `payment.failed` (which adds `reason`).
#[derive(Debug, Serialize)]
struct PaymentOutcome<'a> {
    order_id: &'a str,
    sku: &'a str,
    quantity: u64,
    amount: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// What `payment/{order_id}` holds.
#[derive(Debug, Serialize)]
struct PaymentRecord<'a> {
    status: &'a str,
    amount: f64,
}

struct Payment;

impl Handler for Payment {
    fn handle(event: Event) -> Result<(), HandlerError> {
        match event.ty() {
            STOCK_RESERVED => charge(&event),
            other => Err(HandlerError::reject(format!(
                "the payment handler does not handle `{other}`"
            ))),
        }
    }
}

fn charge(event: &Event) -> Result<(), HandlerError> {
    let reserved: StockReserved = event.json()?;
    let invalid = |problem: String| {
        HandlerError::reject(format!(
            "invalid `{STOCK_RESERVED}` (id `{}`): {problem}",
            event.id()
        ))
    };
    if reserved.order_id.is_empty() {
        return Err(invalid("`order_id` must not be empty".to_owned()));
    }
    if !reserved.amount.is_finite() || reserved.amount < 0.0 {
        return Err(invalid(format!(
            "`amount` must be zero or more, got {}",
            reserved.amount
        )));
    }

    let order_id = reserved.order_id.as_str();
    let key = format!("payment/{order_id}");
    if state::get(&key).is_some() {
        evhost_sdk::info!(
            "order {order_id} was already charged; ignoring the repeated reservation"
        );
        return Ok(());
    }

    let decline_over = config::get_parsed::<f64>("decline_over")?.unwrap_or(DEFAULT_DECLINE_OVER);
    let amount = reserved.amount;
    let reason = (amount > decline_over)
        .then(|| format!("amount {amount} is over the limit of {decline_over}"));
    let (status, ty) = match reason {
        None => ("confirmed", PAYMENT_CONFIRMED),
        Some(_) => ("failed", PAYMENT_FAILED),
    };

    state::set_json(&key, &PaymentRecord { status, amount })?;
    match &reason {
        None => evhost_sdk::info!("order {order_id}: payment of {amount} confirmed"),
        Some(reason) => evhost_sdk::info!("order {order_id}: payment declined, {reason}"),
    }
    let outcome = PaymentOutcome {
        order_id,
        sku: &reserved.sku,
        quantity: reserved.quantity,
        amount,
        reason,
    };
    emit::json(ty, &outcome).subject(order_id).send()?;
    Ok(())
}

evhost_sdk::export_handler!(Payment);
